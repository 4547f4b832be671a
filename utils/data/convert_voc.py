"""Pascal VOC XML annotations -> the images and labels of a Darknet dataset (written by convert_output.py).

Where the annotations are, for a source folder SRC:
- a VOC folder: SRC/Annotations/*.xml, SRC/JPEGImages/, SRC/ImageSets/Main/<set>.txt (VOC2007, VOC2012, CVAT's
  "Pascal VOC" export);
- a VOCdevkit: SRC/VOC2007, SRC/VOC2012, ... each a VOC folder; the output keeps them apart (images/train/VOC2007/);
- anything else is a flat folder: every .xml under SRC with its image beside it, same name (labelImg).
The train and val splits are the image sets named by `train_sets` and `val_sets` (the ids in
ImageSets/Main/<set>.txt of every VOC folder that has that list; VOC2007+2012's usual protocol is train =
trainval, val = test). Where there are no ImageSets lists (a flat folder), a `val_fraction` of the images, chosen
by a hash of their paths (convert_output.split_off_val), is the val split.

An image is found by the annotation file's name (x.xml -> x.jpg, or any suffix of IMAGE_SUFFIXES), else by the
XML's <filename>.

Coordinates: VOC's xmin, ymin, xmax, ymax are 1-based pixel indices, both ends inclusive (the devkit's own
evaluation adds 1 to xmax - xmin for a width), so a box covering a whole W x H image is (1, 1, W, H). In corner
coordinates, where that box is (0, 0, W, H), a VOC box is (xmin - 1, ymin - 1, xmax, ymax); Detectron2 reads VOC
this way. Darknet's scripts/voc_label.py (and Ultralytics' VOC.yaml after it) take the centre as
(xmin + xmax) / 2 - 1 and the width as xmax - xmin: half a pixel left of and one pixel narrower than this reading.

Objects: `difficult` ones are left out unless `keep_difficult` (as voc_label.py does), and counted; `truncated`
ones are kept. A box reaching outside the image is clipped, one with no area left is left out. The class names are
`class_names` when given (objects of other classes left out and counted), else the sorted names of all objects
found. An annotation file without <size> (or with a zero size) gets its image's size from the image itself. A file
that cannot be parsed, or with an object missing its name or a coordinate, is left out whole: keeping its other
objects would train the missing one as background.
"""
from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

from utils.data.convert_output import ImageLabels, Report, darknet_labels, split_off_val
from utils.data.dataset import IMAGE_SUFFIXES, read_image
from utils.errors import DatasetError

_SUFFIXES = tuple(dict.fromkeys(IMAGE_SUFFIXES + tuple(s.upper() for s in IMAGE_SUFFIXES)))
_CORNERS = ('xmin', 'ymin', 'xmax', 'ymax')


@dataclass(frozen=True)
class _Entry:
    """One annotation file to convert, and where to look for its image."""
    xml_path: Path
    image_folder: Path
    image_stem: str     # the image's path in image_folder without suffix ('/'-separated)
    prefix: str         # output sub-folder ('VOC2007/' in a VOCdevkit with several years, else '')


@dataclass
class _Annotation:
    width: float
    height: float
    image_path: Path
    objects: list       # (name, difficult, (xmin, ymin, xmax, ymax)) as in the file


class _BadFile(Exception):
    """An annotation file that cannot be used; the message says why."""


def read_voc(source: Path, class_names: list | None = None, keep_difficult: bool = False,
             train_sets: tuple = ('train',), val_sets: tuple = ('val',),
             val_fraction: float = 0.1) -> tuple[dict, list, Report]:
    """Read a VOC dataset (the module docstring says which layouts). Returns ({'train': [ImageLabels], 'val':
    [...]}, the class names, the report so far)."""
    source = Path(source)
    if not source.is_dir():
        raise DatasetError(f'{source}: not a folder (give a VOCdevkit, a VOC20xx folder or a folder of .xml files)')
    report = Report(f'data/convert.py voc: {source.resolve()}')
    entries = _entries_by_split(source, train_sets, val_sets, val_fraction, report)

    annotations = {}   # xml path -> _Annotation, each file read once even when in both splits
    for entry in dict.fromkeys(e for split in entries.values() for e in split):
        annotation = _read_entry(entry, report)
        if annotation is not None:
            annotations[entry] = annotation
    found = sorted({name for a in annotations.values() for name, _, _ in a.objects})
    if class_names is None:
        class_names = found
        report.facts.append(f'classes ({len(found)}, the sorted names of the objects in the annotations): '
                            + ', '.join(f'{i} {name}' for i, name in enumerate(found)))
    else:
        report.facts.append(f'classes ({len(class_names)}, as given): '
                            + ', '.join(f'{i} {name}' for i, name in enumerate(class_names)))
    if not class_names:
        raise DatasetError(f'{source}: the annotations hold no objects, so there are no class names')

    converted = {entry: _labels(entry, annotation, class_names, keep_difficult, report)
                 for entry, annotation in annotations.items()}
    splits = {split: [converted[e] for e in split_entries if e in converted]
              for split, split_entries in entries.items()}
    both = {image.relative for image in splits['train']} & {image.relative for image in splits['val']}
    if both:
        report.facts.append(f'{len(both)} images are in both train and val')
    return splits, class_names, report


# ---------------------------------------------------------------------------------------------------------- finding

def _entries_by_split(source: Path, train_sets: tuple, val_sets: tuple, val_fraction: float,
                      report: Report) -> dict:
    if (source / 'Annotations').is_dir():
        folders = [source]
    else:
        folders = sorted(p for p in source.iterdir() if (p / 'Annotations').is_dir())
    if not folders:
        xml_paths = sorted(source.rglob('*.xml'))
        if not xml_paths:
            raise DatasetError(f'{source}: no VOC annotations here (no Annotations folder, no .xml files)')
        entries = [_Entry(p, source, p.relative_to(source).with_suffix('').as_posix(), '') for p in xml_paths]
        report.facts.append(f'layout: a folder of {len(entries)} .xml files with their images beside them')
        return _split_by_hash(entries, val_fraction, report)

    def prefix(folder: Path) -> str:
        return f'{folder.name}/' if len(folders) > 1 else ''

    report.facts.append('layout: VOC folders ' + ', '.join(str(f.resolve()) for f in folders))
    if not any((f / 'ImageSets' / 'Main').is_dir() for f in folders):
        entries = [_Entry(p, f / 'JPEGImages', p.relative_to(f / 'Annotations').with_suffix('').as_posix(),
                          prefix(f)) for f in folders for p in sorted((f / 'Annotations').rglob('*.xml'))]
        return _split_by_hash(entries, val_fraction, report)

    entries = {}
    for split, sets in (('train', train_sets), ('val', val_sets)):
        entries[split], used, missing = [], [], []
        for folder in folders:
            for name in sets:
                list_path = folder / 'ImageSets' / 'Main' / f'{name}.txt'
                if not list_path.is_file():
                    missing.append(f'{prefix(folder)}{name}')
                    continue
                used.append(f'{prefix(folder)}{name}')
                ids = [line.split()[0] for line in list_path.read_text('utf-8-sig').splitlines() if line.strip()]
                entries[split] += [_Entry(folder / 'Annotations' / f'{image_id}.xml', folder / 'JPEGImages',
                                          image_id, prefix(folder)) for image_id in ids]
        if not used:
            available = sorted({p.stem for f in folders for p in (f / 'ImageSets' / 'Main').glob('*.txt')
                                if '_' not in p.stem})
            raise DatasetError(f'{source}: no ImageSets/Main list for the {split} split ({", ".join(sets)}); '
                               f'lists there: {", ".join(available) or "none"} (choose with --{split}-sets)')
        report.facts.append(f'{split} = image sets {", ".join(used)}'
                            + (f' (not there: {", ".join(missing)})' if missing else ''))
        entries[split] = list(dict.fromkeys(entries[split]))
    return entries


def _split_by_hash(entries: list, val_fraction: float, report: Report) -> dict:
    val = split_off_val([e.prefix + e.image_stem for e in entries], val_fraction)
    report.facts.append(f'no ImageSets lists: val = {len(val)} of {len(entries)} images (--val-fraction '
                        f'{val_fraction:g}, chosen by a hash of the path), train = the others')
    return {'train': [e for e in entries if e.prefix + e.image_stem not in val],
            'val': [e for e in entries if e.prefix + e.image_stem in val]}


def _find_image(entry: _Entry, filename: str | None) -> Path | None:
    for suffix in _SUFFIXES:
        candidate = entry.image_folder / f'{entry.image_stem}{suffix}'
        if candidate.is_file():
            return candidate
    if filename:
        candidate = entry.image_folder / Path(entry.image_stem).parent / Path(filename).name
        if candidate.is_file():
            return candidate
    return None


# ---------------------------------------------------------------------------------------------------------- reading

def _read_entry(entry: _Entry, report: Report) -> _Annotation | None:
    """The file's size, image and objects, or None with the reason in the report."""
    if not entry.xml_path.is_file():
        report.leave_out('annotation file listed but not found', str(entry.xml_path))
        return None
    try:
        width, height, filename, objects = _parse(entry.xml_path)
    except _BadFile as error:
        report.leave_out('annotation file unreadable or malformed', f'{entry.xml_path}: {error}')
        return None
    image_path = _find_image(entry, filename)
    if image_path is None:
        report.leave_out('image not found', f'{entry.xml_path}: no {entry.image_folder / entry.image_stem}.* '
                                            f'({filename or "no <filename>"})')
        return None
    if not (width > 0 and height > 0):
        try:
            height, width = read_image(image_path).shape[:2]
        except DatasetError as error:
            report.leave_out('image without <size> that cannot be read', f'{entry.xml_path}: {error}')
            return None
        report.change('size missing from the annotation, read from the image',
                      f'{entry.xml_path}: {image_path.name} is {width} x {height}')
    return _Annotation(float(width), float(height), image_path, objects)


def _parse(xml_path: Path) -> tuple[float, float, str | None, list]:
    """(width or 0, height or 0, <filename> or None, [(name, difficult, (xmin, ymin, xmax, ymax))])."""
    try:
        root = ET.parse(xml_path).getroot()
    except ET.ParseError as error:
        raise _BadFile(f'malformed XML ({error})') from None
    except OSError as error:
        raise _BadFile(f'cannot be read ({error.strerror})') from None
    if root.tag != 'annotation':
        raise _BadFile(f'root element is <{root.tag}>, not <annotation>')
    width, height = (_size(root.findtext(f'size/{key}')) for key in ('width', 'height'))
    objects = []
    for number, obj in enumerate(root.iter('object'), 1):
        name = (obj.findtext('name') or '').strip()
        if not name:
            raise _BadFile(f'object {number} has no <name>')
        box = obj.find('bndbox')
        if box is None:
            raise _BadFile(f'object {number} ("{name}") has no <bndbox>')
        corners = []
        for key in _CORNERS:
            text = (box.findtext(key) or '').strip()
            try:
                corners.append(float(text))
            except ValueError:
                raise _BadFile(f'object {number} ("{name}"): <{key}> "{text}" is not a number') from None
        difficult = (obj.findtext('difficult') or '0').strip().lower() not in ('0', '', 'false')
        objects.append((name, difficult, tuple(corners)))
    filename = (root.findtext('filename') or '').strip() or None
    return width, height, filename, objects


def _size(text: str | None) -> float:
    try:
        return float(text)
    except (TypeError, ValueError):
        return 0.0


def _labels(entry: _Entry, annotation: _Annotation, class_names: list, keep_difficult: bool,
            report: Report) -> ImageLabels:
    class_index = {name: i for i, name in enumerate(class_names)}
    classes, boxes_xyxy_px, where = [], [], []
    for number, (name, difficult, (xmin, ymin, xmax, ymax)) in enumerate(annotation.objects, 1):
        item = f'{entry.xml_path}: object {number} "{name}"'
        if name not in class_index:
            report.leave_out(f'object of a class not in the class names ("{name}")', item)
        elif difficult and not keep_difficult:
            report.leave_out('difficult object (--keep-difficult keeps them)', item)
        else:
            classes.append(class_index[name])
            boxes_xyxy_px.append((xmin - 1, ymin - 1, xmax, ymax))   # 1-based inclusive -> corners
            where.append(item)
    labels = darknet_labels(classes, boxes_xyxy_px, annotation.width, annotation.height, report, where)
    relative = entry.prefix + (Path(entry.image_stem).parent / annotation.image_path.name).as_posix()
    return ImageLabels(annotation.image_path, relative, labels)
