"""data/convert.py: VOC and COCO datasets written from coco128's Darknet labels convert back to the same boxes,
classes and class order, and score the same with the released weights; what must be left out is left out,
counted and named; a second run writes the same bytes and nothing is replaced without --overwrite."""
import json
import os
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import REPO, shared_path

from utils.cli import run
from utils.data.dataset import load_split
from utils.errors import DatasetError

sys.path.insert(0, str(REPO / 'data'))
import convert  # noqa: E402

COCO128 = 'datasets/coco128'
RELEASED_WEIGHTS = 'weights/yolo-fastestv2/coco2017-0.241078ap-model.pth'
COCO_NAMES = (REPO / 'data' / 'coco.names').read_text().split('\n')[:80]
# COCO 2017's category ids of Darknet's 80 classes, in class order
COCO_IDS = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 27, 28, 31, 32,
            33, 34, 35, 36, 37, 38, 39, 40, 41, 42, 43, 44, 46, 47, 48, 49, 50, 51, 52, 53, 54, 55, 56, 57, 58, 59,
            60, 61, 62, 63, 64, 65, 67, 70, 72, 73, 74, 75, 76, 77, 78, 79, 80, 81, 82, 84, 85, 86, 87, 88, 89, 90]
TRAIN, VAL = slice(0, 8), slice(8, 32)   # of the first 32 val2017 images: train-only ones carry the odd cases


class Image:
    def __init__(self, path: Path):
        self.path, self.stem = path, path.stem
        self.height, self.width = cv2.imread(str(path)).shape[:2]
        label = path.parents[2] / 'labels' / path.parent.name / f'{path.stem}.txt'
        self.labels = np.array([line.split() for line in label.read_text().splitlines()], np.float64).reshape(-1, 5)

    def boxes_xyxy_px(self) -> np.ndarray:
        cx, cy, w, h = self.labels[:, 1:].T
        return np.stack(((cx - w / 2) * self.width, (cy - h / 2) * self.height,
                         (cx + w / 2) * self.width, (cy + h / 2) * self.height), 1)


@pytest.fixture(scope='module')
def coco128_images() -> list:
    folder = shared_path(f'{COCO128}/images/val2017')
    return [Image(p) for p in sorted(folder.glob('*.jpg'))[:32]]


# -------------------------------------------------------------------------------------------- writing the sources

def voc_object(name: str, corners_px, difficult: int = 0) -> str:
    """A VOC <object>: corner pixels -> 1-based inclusive indices (x1 + 1 .. x2), written in full precision."""
    x1, y1, x2, y2 = (float(v) for v in corners_px)
    return (f'<object><name>{name}</name><truncated>1</truncated><difficult>{difficult}</difficult><bndbox>'
            f'<xmin>{x1 + 1!r}</xmin><ymin>{y1 + 1!r}</ymin><xmax>{x2!r}</xmax><ymax>{y2!r}</ymax></bndbox></object>')


def voc_xml(image: Image, extra: str = '', size: bool = True) -> str:
    objects = ''.join(voc_object(COCO_NAMES[int(c)], box) for c, box in zip(image.labels[:, 0], image.boxes_xyxy_px()))
    size_xml = f'<size><width>{image.width}</width><height>{image.height}</height><depth>3</depth></size>'
    return (f'<annotation><folder>VOC2007</folder><filename>{image.path.name}</filename>'
            f'{size_xml if size else ""}{objects}{extra}</annotation>')


def write_voc(root: Path, images: list) -> Path:
    """A VOC2007 folder: train = images 0-7, val = 8-31. Image 0 has a difficult object, one box partly and one
    wholly outside the image; image 1 has no <size>; a listed file is malformed."""
    voc = root / 'VOCdevkit' / 'VOC2007'
    for folder in ('Annotations', 'JPEGImages', 'ImageSets/Main'):
        (voc / folder).mkdir(parents=True)
    for i, image in enumerate(images):
        (voc / 'JPEGImages' / image.path.name).symlink_to(image.path)
        extra = ''
        if i == 0:
            w = image.width
            extra = (voc_object('person', (10, 10, 50, 60), difficult=1) + voc_object('dog', (w - 20, 5, w + 30, 40))
                     + voc_object('cat', (w + 5, 0, w + 40, 20)))
        (voc / 'Annotations' / f'{image.stem}.xml').write_text(voc_xml(image, extra, size=i != 1))
    (voc / 'Annotations' / 'broken.xml').write_text('<annotation><object><name>dog</name></annotation>')
    (voc / 'JPEGImages' / 'broken.jpg').symlink_to(images[0].path)
    stems = [image.stem for image in images]
    (voc / 'ImageSets' / 'Main' / 'train.txt').write_text('\n'.join(stems[TRAIN] + ['broken']) + '\n')
    (voc / 'ImageSets' / 'Main' / 'val.txt').write_text('\n'.join(stems[VAL]) + '\n')
    return root / 'VOCdevkit'


def write_coco(root: Path, images: list) -> tuple[Path, Path]:
    """train.json (images 0-7 under sub-folders, plus a crowd box, a background image, an annotation of an unknown
    image id and an image whose file is missing) and val.json (images 8-31); categories listed in shuffled order
    with COCO's ids."""
    image_dir = root / 'images'
    rng = np.random.default_rng(0)
    categories = [{'id': cid, 'name': name, 'supercategory': 'x'} for cid, name in zip(COCO_IDS, COCO_NAMES)]
    categories = [categories[i] for i in rng.permutation(80)]
    paths = []
    for split, chosen in (('train', images[TRAIN]), ('val', images[VAL])):
        entries, annotations = [], []
        for image in chosen:
            file_name = f'part{int(image.stem) % 3}/{image.path.name}'
            (image_dir / file_name).parent.mkdir(parents=True, exist_ok=True)
            (image_dir / file_name).symlink_to(image.path)
            image_id = int(image.stem)
            entries.append({'id': image_id, 'file_name': file_name, 'width': image.width, 'height': image.height})
            for c, (x1, y1, x2, y2) in zip(image.labels[:, 0], image.boxes_xyxy_px()):
                annotations.append({'id': len(annotations) + 1, 'image_id': image_id, 'category_id': COCO_IDS[int(c)],
                                    'bbox': [x1, y1, x2 - x1, y2 - y1], 'area': 1.0, 'iscrowd': 0})
        if split == 'train':
            first = entries[0]['id']
            annotations.append({'id': 9001, 'image_id': first, 'category_id': 1, 'bbox': [0, 0, 100, 100],
                                'iscrowd': 1})
            annotations.append({'id': 9002, 'image_id': 424242, 'category_id': 1, 'bbox': [0, 0, 10, 10],
                                'iscrowd': 0})
            (image_dir / 'empty.jpg').symlink_to(images[0].path)
            entries.append({'id': 1, 'file_name': 'empty.jpg', 'width': images[0].width, 'height': images[0].height})
            entries.append({'id': 2, 'file_name': 'gone.jpg', 'width': 640, 'height': 480})
            annotations.append({'id': 9003, 'image_id': 2, 'category_id': 1, 'bbox': [0, 0, 10, 10], 'iscrowd': 0})
        path = root / f'{split}.json'
        path.write_text(json.dumps({'images': entries, 'annotations': annotations, 'categories': categories}))
        paths.append(path)
    return paths[0], image_dir


# ---------------------------------------------------------------------------------------------------- reading back

def read_labels(out: Path, split: str) -> dict:
    """{image stem: (n, 5) labels} of a converted split, found the way training finds them."""
    listed = (out / f'{split}.txt').read_text().split()
    result = {}
    for line in listed:
        image_path = out / line
        label = out / 'labels' / Path(line).relative_to('images').with_suffix('.txt')
        assert image_path.is_file() and label.is_file(), line
        rows = [line.split() for line in label.read_text().splitlines()]
        result[image_path.stem] = np.array(rows, dtype=np.float64).reshape(-1, 5)
    return result


def assert_boxes_match(converted: np.ndarray, image: Image, atol_px: float = 0.01) -> None:
    assert converted.shape == image.labels.shape
    np.testing.assert_array_equal(converted[:, 0], image.labels[:, 0])
    scale = np.array([image.width, image.height, image.width, image.height])
    np.testing.assert_allclose(converted[:, 1:] * scale, image.labels[:, 1:] * scale, atol=atol_px)


def all_files(folder: Path) -> dict:
    """{relative path: bytes, or the link's target for a link} of everything under `folder`."""
    return {p.relative_to(folder).as_posix(): (os.readlink(p) if p.is_symlink() else p.read_bytes())
            for p in sorted(folder.rglob('*')) if p.is_symlink() or p.is_file()}


# ------------------------------------------------------------------------------------------------------------ tests

def test_voc_converts_back_to_the_darknet_labels(tmp_path, coco128_images, capsys):
    source = write_voc(tmp_path, coco128_images)
    out = tmp_path / 'voc'
    assert convert.main(['voc', str(source), '--out', str(out), '--names-file', str(REPO / 'data/coco.names')]) == 0
    printed = capsys.readouterr().out
    report = (out / 'convert_report.txt').read_text()
    assert printed.startswith(report.split('left out:')[0])

    train, val = read_labels(out, 'train'), read_labels(out, 'val')
    assert sorted(val) == [image.stem for image in coco128_images[VAL]]
    assert sorted(train) == [image.stem for image in coco128_images[TRAIN]]   # the malformed file is not
    for image in coco128_images[VAL]:
        assert_boxes_match(val[image.stem], image)
    for image in coco128_images[2:8]:
        assert_boxes_match(train[image.stem], image)

    # image 0: its own boxes, then the dog box clipped to the image (x from w - 20 to w); the difficult person and
    # the cat wholly outside the image are left out
    first = coco128_images[0]
    assert_boxes_match(train[first.stem][:-1], first)
    w, h = first.width, first.height
    np.testing.assert_allclose(train[first.stem][-1], [16, (w - 10) / w, 22.5 / h, 20 / w, 35 / h], atol=1e-6)
    assert 'difficult object (--keep-difficult keeps them): 1' in report
    assert f'{first.stem}.xml: object {len(first.labels) + 1} "person"' in report
    assert 'box with no area inside the image: 1' in report and 'box clipped to the image: 1' in report
    # image 1 has no <size>: read from the image, and said
    assert_boxes_match(train[coco128_images[1].stem], coco128_images[1])
    assert 'size missing from the annotation, read from the image: 1' in report
    assert f'{coco128_images[1].stem}.xml: {coco128_images[1].path.name} is ' \
           f'{coco128_images[1].width} x {coco128_images[1].height}' in report
    assert 'annotation file unreadable or malformed: 1' in report and 'broken.xml: malformed XML' in report

    assert (out / 'voc.names').read_text().split('\n')[:80] == COCO_NAMES
    assert 'classes (80, as given): 0 person, 1 bicycle' in report
    assert 'train=train.txt' in (out / 'voc.data').read_text()
    assert os.path.islink(out / 'images' / 'val' / coco128_images[8].path.name)

    # --keep-difficult keeps the person (class 0) after image 0's own boxes
    out2 = tmp_path / 'voc-difficult'
    convert.main(['voc', str(source), '--out', str(out2), '--names-file', str(REPO / 'data/coco.names'),
                  '--keep-difficult', '--val-sets', 'val'])
    kept = read_labels(out2, 'train')[first.stem]
    assert len(kept) == len(first.labels) + 2 and kept[-2][0] == 0


def test_coco_converts_back_and_names_what_it_leaves_out(tmp_path, coco128_images):
    train_json, image_dir = write_coco(tmp_path, coco128_images)
    out = tmp_path / 'coco'
    assert convert.main(['coco', '--train', str(train_json), '--train-images', str(image_dir),
                         '--val', str(tmp_path / 'val.json'), '--val-images', str(image_dir), '--out', str(out)]) == 0
    report = (out / 'convert_report.txt').read_text()
    train, val = read_labels(out, 'train'), read_labels(out, 'val')
    for split, chosen in ((train, coco128_images[TRAIN]), (val, coco128_images[VAL])):
        for image in chosen:
            assert_boxes_match(split[image.stem], image)
    # sub-folders of file_name kept
    assert f'images/val/part{int(coco128_images[8].stem) % 3}/{coco128_images[8].path.name}' in \
        (out / 'val.txt').read_text().split()
    # categories sorted by id: COCO's order; the mapping in the report
    assert (out / 'coco.names').read_text().split('\n')[:80] == COCO_NAMES
    assert '1 person -> 0, 2 bicycle -> 1' in report and '90 toothbrush -> 79' in report
    # the background image kept, with an empty label file
    assert train['empty'].shape == (0, 5) and (out / 'labels/train/empty.txt').read_bytes() == b''
    assert 'split train: 9 images (1 of them backgrounds, without boxes)' in report
    assert 'crowd region (iscrowd 1): 1' in report and 'annotation id 9001' in report
    assert 'annotation of an image id not in "images": 1' in report and 'annotation id 9002: image_id 424242' in report
    assert 'image file not found (its annotations too): 1' in report and 'images/gone.jpg (1 annotations)' in report


def test_converted_sets_score_as_the_darknet_original(tmp_path, coco128_images):
    import torch

    from utils.config import load_config
    from utils.evaluator import evaluate
    from utils.runtimes import load_runtime

    weights = shared_path(RELEASED_WEIGHTS)
    original = tmp_path / 'original.txt'
    original.write_text(''.join(f'{image.path}\n' for image in coco128_images[VAL]))
    voc_out, coco_out = tmp_path / 'voc', tmp_path / 'coco'
    convert.main(['voc', str(write_voc(tmp_path, coco128_images)), '--out', str(voc_out), '--names-file',
                  str(REPO / 'data/coco.names')])
    train_json, image_dir = write_coco(tmp_path, coco128_images)
    convert.main(['coco', '--train', str(train_json), '--train-images', str(image_dir), '--val',
                  str(tmp_path / 'val.json'), '--val-images', str(image_dir), '--out', str(coco_out)])

    threads = torch.get_num_threads()
    torch.set_num_threads(1)   # the machine is shared
    try:
        scores = []
        for val, names in ((original, REPO / 'data/coco.names'), (voc_out / 'val.txt', voc_out / 'voc.names'),
                           (coco_out / 'val.txt', coco_out / 'coco.names')):
            # data/coco.data's model keys (COCO's class order), the split swapped in
            cfg = load_config(REPO / 'data' / 'coco.data', train=val, val=val, names=names)
            result = evaluate(load_runtime('torch', cfg, weights), cfg, progress=False, workers=0, batch_size=8)
            scores.append((result.num_images, result.num_gt, result.map50, result.map50_95))
    finally:
        torch.set_num_threads(threads)
    print(scores)
    assert scores[0][0] == 24 and scores[0][2] > 0.1
    assert scores[1] == pytest.approx(scores[0], abs=1e-4)
    assert scores[2] == pytest.approx(scores[0], abs=1e-4)


def test_second_run_writes_the_same_bytes_and_nothing_is_replaced_without_overwrite(tmp_path, coco128_images):
    source = write_voc(tmp_path, coco128_images[:12])
    out = tmp_path / 'out'
    args = ['voc', str(source), '--out', str(out), '--names-file', str(REPO / 'data/coco.names')]
    assert convert.main(args) == 0
    first = all_files(out)
    assert convert.main(args) == 0
    assert all_files(out) == first

    # genanchors.py --update edits the .data: a rerun keeps it
    data = out / 'out.data'
    anchors = 'anchors=1,2, 3,4, 5,6, 7,8, 9,10, 11,12\n'
    data.write_text(data.read_text().replace('anchor_num=3\n', 'anchor_num=3\n' + anchors))
    assert convert.main(args) == 0 and 'anchors=1,2' in data.read_text()

    # a changed annotation: without --overwrite, an error naming the label file and nothing written
    stem = coco128_images[9].stem
    xml = source / 'VOC2007' / 'Annotations' / f'{stem}.xml'
    xml.write_text(xml.read_text().replace('<name>', '<name>x', 1).replace('<name>x', '<name>', 1)
                   .replace('<difficult>0</difficult>', '<difficult>1</difficult>', 1))
    label = out / 'labels' / 'val' / f'{stem}.txt'
    before = label.read_bytes()
    assert run(convert.main, args) == 1
    assert label.read_bytes() == before
    with pytest.raises(DatasetError, match=f'{label}: exists with other content.*--overwrite'):
        convert.main(args)
    assert convert.main(args + ['--overwrite']) == 0
    assert label.read_bytes() == before.split(b'\n', 1)[1]   # the first box, now difficult, left out


def make_image(path: Path, width: int, height: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), np.full((height, width, 3), 127, np.uint8))


def test_flat_folder_class_names_from_the_files_val_by_hash_and_copies(tmp_path):
    source = tmp_path / 'labelimg'
    objects = {'a': ['zebra', 'cat'], 'b': ['cat'], 'sub/c': ['dog', 'zebra'], 'd': []}
    for stem, names in objects.items():
        make_image(source / f'{stem}.png', 40, 30)
        xml = ''.join(f'<object><name>{n}</name><bndbox><xmin>1</xmin><ymin>1</ymin><xmax>40</xmax><ymax>15</ymax>'
                      f'</bndbox></object>' for n in names)
        (source / f'{stem}.xml').write_text(f'<annotation><size><width>40</width><height>30</height></size>{xml}'
                                            f'</annotation>')
    out = tmp_path / 'flat'
    assert convert.main(['voc', str(source), '--out', str(out), '--copy', '--val-fraction', '0.5']) == 0
    assert (out / 'flat.names').read_text() == 'cat\ndog\nzebra\n'
    train, val = read_labels(out, 'train'), read_labels(out, 'val')
    assert sorted(train) + sorted(val) != [] and sorted([*train, *val]) == ['a', 'b', 'c', 'd']
    assert len(val) >= 1 and not os.path.islink(out / 'images' / 'val' / f'{next(iter(val))}.png')
    every = {**train, **val}
    # the whole-width box (1..40 inclusive) is the whole width; classes in sorted order
    np.testing.assert_allclose(every['a'], [[2, 0.5, 0.25, 1, 0.5], [0, 0.5, 0.25, 1, 0.5]], atol=1e-6)
    assert every['c'][:, 0].tolist() == [1, 2] and every['d'].shape == (0, 5)
    # the converted set passes the dataset checks
    from utils.config import load_config
    cfg = load_config(out / 'flat.data')
    split = load_split(cfg, 'train', verbose=False)
    assert len(split) == len(train) and split.left_out == []

    # a given list leaves the other classes out, counted per class
    out2 = tmp_path / 'given'
    convert.main(['voc', str(source), '--out', str(out2), '--names', 'zebra,cat'])
    report = (out2 / 'convert_report.txt').read_text()
    assert 'object of a class not in the class names ("dog"): 1' in report
    assert 'classes (2, as given): 0 zebra, 1 cat' in report


def test_bad_input_is_one_line_naming_the_file(tmp_path, capsys):
    bad = tmp_path / 'bad.json'
    bad.write_text('{"images": [], \n "annotations": [,]}')
    assert run(convert.main, ['coco', '--train', str(bad), '--out', str(tmp_path / 'o')]) == 1
    assert capsys.readouterr().err == f'error: {bad}:2: not valid JSON (Expecting value)\n'
    folder = tmp_path / 'nothing'
    folder.mkdir()
    assert run(convert.main, ['voc', str(folder), '--out', str(tmp_path / 'o')]) == 1
    assert 'no VOC annotations here' in capsys.readouterr().err
    assert not (tmp_path / 'o').exists()


def write_year(devkit: Path, year: str, stems: list, sets: dict) -> None:
    """A generated VOC folder: 40 x 30 grey images, one 'cat' box each."""
    voc = devkit / year
    (voc / 'ImageSets' / 'Main').mkdir(parents=True)
    for stem in stems:
        make_image(voc / 'JPEGImages' / f'{stem}.jpg', 40, 30)
        (voc / 'Annotations').mkdir(exist_ok=True)
        (voc / 'Annotations' / f'{stem}.xml').write_text(
            '<annotation><size><width>40</width><height>30</height></size><object><name>cat</name><bndbox>'
            '<xmin>11</xmin><ymin>6</ymin><xmax>30</xmax><ymax>25</ymax></bndbox></object></annotation>')
    for name, chosen in sets.items():
        (voc / 'ImageSets' / 'Main' / f'{name}.txt').write_text(''.join(f'{stem}\n' for stem in chosen))


def test_vocdevkit_years_kept_apart_and_image_sets_chosen(tmp_path, monkeypatch, capsys):
    devkit = tmp_path / 'VOCdevkit'
    write_year(devkit, 'VOC2007', ['000001', '000002', '000003'], {'trainval': ['000001', '000002'],
                                                                   'test': ['000003'], 'aeroplane_test': []})
    write_year(devkit, 'VOC2012', ['2008_000001'], {'trainval': ['2008_000001']})
    # a file system without symbolic links: the images are copied, and the report says so
    def no_links(self, target):
        raise OSError(1, 'Operation not permitted')
    monkeypatch.setattr(Path, 'symlink_to', no_links)
    out = tmp_path / 'out'
    assert convert.main(['voc', str(devkit), '--out', str(out), '--train-sets', 'trainval', '--val-sets', 'test']) == 0
    assert (out / 'train.txt').read_text() == ('images/train/VOC2007/000001.jpg\nimages/train/VOC2007/000002.jpg\n'
                                               'images/train/VOC2012/2008_000001.jpg\n')
    assert (out / 'val.txt').read_text() == 'images/val/VOC2007/000003.jpg\n'
    # 1-based inclusive 11..30 x 6..25 = corners 10..30 x 5..25
    assert (out / 'labels/val/VOC2007/000003.txt').read_text() == '0 0.500000 0.500000 0.500000 0.666667\n'
    report = (out / 'convert_report.txt').read_text()
    assert 'val = image sets VOC2007/test (not there: VOC2012/test)' in report
    assert 'copied (symbolic links cannot be made here: Operation not permitted)' in report
    assert not (out / 'images/val/VOC2007/000003.jpg').is_symlink()

    # a set no folder has: one line naming the lists there
    assert run(convert.main, ['voc', str(devkit), '--out', str(tmp_path / 'o2'), '--val-sets', 'val']) == 1
    assert capsys.readouterr().err == (f'error: {devkit}: no ImageSets/Main list for the train split (train); lists '
                                       f'there: test, trainval (choose with --train-sets)\n')
    assert run(convert.main, ['voc', str(devkit), '--out', str(tmp_path / 'o3'), '--names', 'cat,dog,cat']) == 1
    assert capsys.readouterr().err == 'error: --names: class names given twice: cat\n'


def test_help_explains_both_formats(capsys):
    for args in (['--help'], ['voc', '--help'], ['coco', '--help']):
        with pytest.raises(SystemExit):
            convert.parse_args(args)
    text = ' '.join(capsys.readouterr().out.split())
    assert 'genanchors.py --data DIR/NAME.data --update' in text and '1-based and inclusive' in text
    assert 'Categories sorted by id become classes' in text


def test_xml_written_here_is_what_voc_files_look_like(tmp_path):
    """The test's own VOC writer: a whole-image box of a W x H image is (1, 1, W, H)."""
    root = ET.fromstring(f'<a>{voc_object("x", (0, 0, 640, 480))}</a>')
    assert [float(root.findtext(f'object/bndbox/{k}')) for k in ('xmin', 'ymin', 'xmax', 'ymax')] == [1, 1, 640, 480]
