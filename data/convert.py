"""Convert a Pascal VOC or COCO dataset into a Darknet one, with the list files, .names and .data train.py reads.

    python3 data/convert.py voc SRC --out DIR [--names a,b,c | --names-file F] [--keep-difficult]
        [--train-sets train] [--val-sets val] [--val-fraction 0.1] [--name NAME] [--copy] [--overwrite]
    python3 data/convert.py coco --train A.json [--train-images DIR] [--val B.json] [--val-images DIR] --out DIR
        [--val-fraction 0.1] [--name NAME] [--copy] [--overwrite]

Writes DIR/images/<split>/ (links to the images, or copies with --copy), DIR/labels/<split>/, DIR/train.txt,
DIR/val.txt, DIR/NAME.names, DIR/NAME.data and DIR/convert_report.txt, the report it prints: images, boxes and
classes per split, and everything left out, with the reason and the file. Then:

    python3 genanchors.py --data DIR/NAME.data --update
    python3 train.py --data DIR/NAME.data

What each format's fields become: utils/data/convert_voc.py and utils/data/convert_coco.py.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from utils.cli import probability, run  # noqa: E402
from utils.data.convert_coco import read_coco  # noqa: E402
from utils.data.convert_output import ITEMS_PRINTED, REPORT_NAME, write_darknet  # noqa: E402
from utils.data.convert_voc import read_voc  # noqa: E402
from utils.errors import DatasetError  # noqa: E402


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    formats = parser.add_subparsers(dest='format', required=True, metavar='{voc,coco}')

    voc = formats.add_parser('voc', help='Pascal VOC XML: a VOCdevkit, a VOC20xx folder or a folder of .xml files',
                             description='Pascal VOC XML -> Darknet. SRC: a VOCdevkit (VOC2007, VOC2012, ...), one '
                             'VOC folder (Annotations, JPEGImages, ImageSets/Main) or a folder of .xml files with '
                             'their images beside them (labelImg). VOC coordinates are 1-based and inclusive: '
                             '(xmin, ymin, xmax, ymax) is the box from xmin - 1 to xmax in pixel corners.')
    voc.add_argument('source', type=Path, metavar='SRC')
    names = voc.add_mutually_exclusive_group()
    names.add_argument('--names', metavar='A,B,C', help='class names in class order, comma-separated; objects of '
                       'other classes are left out (default: the sorted names found in the annotations)')
    names.add_argument('--names-file', type=Path, metavar='F', help='the class names, one a line')
    voc.add_argument('--keep-difficult', action='store_true', help='keep objects marked difficult (left out and '
                     'counted by default)')
    voc.add_argument('--train-sets', default='train', metavar='SETS', help='ImageSets/Main lists that make the '
                     'train split, comma-separated (default: train; VOC2007+2012: trainval)')
    voc.add_argument('--val-sets', default='val', metavar='SETS', help='lists that make the val split (default: '
                     'val; VOC2007: test)')

    coco = formats.add_parser('coco', help='COCO detection JSON, one file per split',
                              description='COCO detection JSON -> Darknet. Categories sorted by id become classes '
                              '0..N-1; crowd regions are left out; images without annotations are backgrounds.')
    coco.add_argument('--train', type=Path, required=True, metavar='JSON', help='the train split\'s annotations')
    coco.add_argument('--train-images', type=Path, metavar='DIR', help='the folder its file_names are relative to '
                      '(default: the JSON file\'s folder)')
    coco.add_argument('--val', type=Path, metavar='JSON', help='the val split\'s annotations')
    coco.add_argument('--val-images', type=Path, metavar='DIR', help='the folder of its images (default: the JSON '
                      'file\'s folder)')

    for sub in (voc, coco):
        sub.add_argument('--out', type=Path, required=True, metavar='DIR', help='the Darknet dataset\'s folder')
        sub.add_argument('--name', help='name of the .names and .data files and model_name (default: DIR\'s name)')
        sub.add_argument('--val-fraction', type=probability, default=0.1, metavar='F', help='where the source '
                         'names no val split: this fraction of the images, chosen by a hash of their paths '
                         '(default: 0.1)')
        sub.add_argument('--copy', action='store_true', help='copy the images (default: symbolic links to them)')
        sub.add_argument('--overwrite', action='store_true', help='replace existing label, list, .names, .data and '
                         'image files that differ (default: stop, writing nothing)')
    args = parser.parse_args(argv)
    if args.format == 'coco' and args.val_images is not None and args.val is None:
        parser.error('--val-images needs --val')
    return args


def class_names_from(args) -> list | None:
    """The class names --names or --names-file give, or None."""
    if getattr(args, 'names', None):
        where, names = '--names', [name.strip() for name in args.names.split(',') if name.strip()]
    elif getattr(args, 'names_file', None):
        try:
            text = args.names_file.read_text('utf-8-sig')
        except OSError as error:
            raise DatasetError(f'{args.names_file}: cannot be read ({error.strerror})') from None
        where, names = str(args.names_file), [line.strip() for line in text.splitlines() if line.strip()]
    else:
        return None
    twice = sorted({name for name in names if names.count(name) > 1})
    if not names or twice:
        raise DatasetError(f'{where}: ' + (f'class names given twice: {", ".join(twice)}' if twice else 'no names'))
    return names


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.format == 'voc':
        splits, class_names, report = read_voc(
            args.source, class_names_from(args), args.keep_difficult, tuple(args.train_sets.split(',')),
            tuple(args.val_sets.split(',')), args.val_fraction)
        source_text = str(args.source.resolve())
    else:
        splits, class_names, report = read_coco(args.train, args.train_images, args.val, args.val_images,
                                                args.val_fraction)
        source_text = ', '.join(str(p.resolve()) for p in (args.train, args.val) if p is not None)
    name = args.name or args.out.resolve().name
    if not name or '/' in name or '\\' in name:
        raise DatasetError(f'--name "{name}": give a file name without folders')
    _, files_line = write_darknet(args.out, splits, class_names, report, name, source_text, args.copy,
                                  args.overwrite)
    print(report.text(ITEMS_PRINTED), end='')
    print(f'{files_line}; the whole report: {args.out.resolve() / REPORT_NAME}')
    return 0


if __name__ == '__main__':
    sys.exit(run(main))
