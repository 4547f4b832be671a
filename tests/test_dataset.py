"""The Darknet dataset: label lookup, every label rule, reporting, strict mode, the cache, image formats, coco128."""
import os
from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import shared_path

from utils.config import load_config
from utils.data.dataset import (
    DatasetError,
    EvalDataset,
    check_split,
    collate_eval,
    label_candidates,
    list_images,
    load_split,
    read_image,
)
from utils.preprocess import resize_image


def make_image(path: Path, value: int = 100, size=(40, 30)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    image = np.full((size[1], size[0], 3), value, np.uint8)
    assert cv2.imwrite(str(path), image)
    return path


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(text.encode())
    return path


def write_list(path: Path, image_paths, newline='\n') -> Path:
    return write(path, newline.join(str(p) for p in image_paths) + newline)


# ---------------------------------------------------------------------------------------------------- label lookup

def test_label_beside_the_image_with_dotted_folders(tmp_path):
    image = make_image(tmp_path / 'my.set.v2' / 'img.001.jpg')
    write(tmp_path / 'my.set.v2' / 'img.001.txt', '1 0.5 0.5 0.2 0.4\n')
    split = check_split(write_list(tmp_path / 'train.txt', [image]), classes=3)
    assert split.image_paths == [image]
    np.testing.assert_allclose(split.labels[0], [[1, 0.5, 0.5, 0.2, 0.4]])


def test_label_in_the_mirror_layout_uses_the_last_images_folder(tmp_path):
    # .../images/data.v1/images/train/x.jpg -> .../images/data.v1/labels/train/x.txt
    image = make_image(tmp_path / 'images' / 'data.v1' / 'images' / 'train' / 'x.png')
    label = write(tmp_path / 'images' / 'data.v1' / 'labels' / 'train' / 'x.txt', '2 0.1 0.2 0.1 0.1\n')
    assert label_candidates(image)[0] == str(label)
    split = check_split(write_list(tmp_path / 'train.txt', [image]), classes=3)
    np.testing.assert_allclose(split.labels[0], [[2, 0.1, 0.2, 0.1, 0.1]])


def test_mirror_is_preferred_to_beside_and_a_file_named_images_is_not_a_folder(tmp_path):
    image = make_image(tmp_path / 'images' / 'a.jpg')
    write(tmp_path / 'images' / 'a.txt', '0 0.5 0.5 0.5 0.5\n')
    write(tmp_path / 'labels' / 'a.txt', '1 0.5 0.5 0.5 0.5\n')
    assert check_split(write_list(tmp_path / 'l.txt', [image]), classes=2).labels[0][0, 0] == 1
    assert label_candidates(Path('/x/images.jpg')) == ['/x/images.txt']
    assert label_candidates('/d.v1/images/a.b.png') == ['/d.v1/labels/a.b.txt', '/d.v1/images/a.b.txt']


def test_list_file_relative_paths_crlf_blank_lines_and_folders(tmp_path):
    a = make_image(tmp_path / 'data' / 'images' / 'a.jpg')
    b = make_image(tmp_path / 'data' / 'images' / 'sub' / 'b.jpg')
    write(tmp_path / 'data' / 'labels' / 'a.txt', '0 0.5 0.5 0.5 0.5\r\n\r\n0 0.2 0.2 0.1 0.1\r\n')
    listing = write(tmp_path / 'data' / 'train.txt', '\r\nimages/a.jpg\r\n\r\n' + str(b).replace('/', '\\') + '\r\n')
    split = check_split(listing, classes=1)
    assert [p.resolve() for p in split.image_paths] == [a, b]
    assert [len(x) for x in split.labels] == [2, 0]
    assert list_images(tmp_path / 'data' / 'images') == [a, b]   # a folder split: recursive, sorted


# ------------------------------------------------------------------------------------------------------ label rules

BAD_LINES = [
    ('0 0.5 0.5 0.2', 'expected 5 fields'),
    ('0 0.5 0.5 0.2 0.2 0.9', 'expected 5 fields'),
    ('0 0.5 abc 0.2 0.2', '"abc" is not a number'),
    ('1.5 0.5 0.5 0.2 0.2', 'class must be an integer'),
    ('3 0.5 0.5 0.2 0.2', 'class must be in [0, 3)'),
    ('-1 0.5 0.5 0.2 0.2', 'class must be in [0, 3)'),
    ('0 0.5 0.5 0 0.2', 'width and height must be in (0, 1]'),
    ('0 0.5 0.5 0.2 -0.1', 'width and height must be in (0, 1]'),
    ('0 0.5 0.5 1.01 0.2', 'width and height must be in (0, 1]'),
    ('0 1.2 0.5 0.2 0.2', 'centre must be in [0, 1]'),
    ('0 0.5 -0.01 0.2 0.2', 'centre must be in [0, 1]'),
    ('0 nan 0.5 0.2 0.2', 'values must be finite'),
]


@pytest.mark.parametrize('bad_line, rule', BAD_LINES)
def test_each_label_rule_leaves_the_image_out_naming_file_line_and_rule(tmp_path, capsys, bad_line, rule):
    good = make_image(tmp_path / 'good.jpg')
    write(tmp_path / 'good.txt', '0 0.5 0.5 0.2 0.2\n')
    bad = make_image(tmp_path / 'bad.jpg')
    write(tmp_path / 'bad.txt', f'0 0.5 0.5 0.2 0.2\n\n{bad_line}\n')
    split = check_split(write_list(tmp_path / 'l.txt', [good, bad]), classes=3, name='train')
    assert split.image_paths == [good]
    assert len(split.left_out) == 1
    assert split.left_out[0].startswith(f'{tmp_path / "bad.txt"}:3: ') and rule in split.left_out[0]
    assert rule in capsys.readouterr().out


def test_tiny_overshoot_is_clipped_not_rejected(tmp_path):
    image = make_image(tmp_path / 'a.jpg')
    write(tmp_path / 'a.txt', '0 1.0005 -0.0004 1.0009 0.3\n2.0 0.5 0.5 0.5 0.5\n')
    split = check_split(write_list(tmp_path / 'l.txt', [image]), classes=3)
    np.testing.assert_allclose(split.labels[0], [[0, 1, 0, 1, 0.3], [2, 0.5, 0.5, 0.5, 0.5]], atol=1e-7)
    assert split.labels[0].dtype == np.float32


def test_backgrounds_bad_images_and_the_printed_report(tmp_path, capsys):
    images = [make_image(tmp_path / f'{i}.jpg') for i in range(4)]
    write(tmp_path / '0.txt', '0 0.5 0.5 0.2 0.2\n1 0.5 0.5 0.2 0.2\n')
    write(tmp_path / '1.txt', '\n')          # empty label file: background
    write(tmp_path / '3.txt', '5 0.5 0.5 0.2 0.2\n')   # class out of range
    not_image = write(tmp_path / 'text.jpg', 'this is not an image')
    empty = write(tmp_path / 'empty.png', '')
    missing = tmp_path / 'missing.jpg'
    split = check_split(write_list(tmp_path / 'l.txt', images + [not_image, empty, missing]), classes=2, name='val')
    assert split.image_paths == images[:3]
    assert (len(split), split.num_boxes, split.num_backgrounds) == (3, 2, 2)
    assert split.left_out == [f'{tmp_path / "3.txt"}:1: class must be in [0, 2) (classes = 2 in the .data): '
                              f'"5 0.5 0.5 0.2 0.2"',
                              f'{not_image}: not an image OpenCV can decode (file starts with b\'this is \')',
                              f'{empty}: image file is empty',
                              f'{missing}: image file not found']
    out = capsys.readouterr().out
    assert f'val: {tmp_path / "l.txt"}: 3 images, 2 boxes, 2 backgrounds, 4 left out' in out
    assert out.count('left out: ') == 4


def test_strict_mode_and_empty_splits_are_errors(tmp_path):
    good = make_image(tmp_path / 'good.jpg')
    bad = make_image(tmp_path / 'bad.jpg')
    write(tmp_path / 'bad.txt', '0 0.5 0.5 0.2\n')
    listing = write_list(tmp_path / 'l.txt', [good, bad])
    with pytest.raises(DatasetError, match=r'1 of 2 images have problems \(strict_labels is on\):\n  .*bad.txt:1: '):
        check_split(listing, classes=1, strict=True)
    with pytest.raises(DatasetError, match='no usable image'):
        check_split(write_list(tmp_path / 'only_bad.txt', [bad]), classes=1)
    with pytest.raises(DatasetError, match='list file holds no image paths'):
        check_split(write(tmp_path / 'blank.txt', '\n\n'), classes=1)


def test_load_split_reads_the_data_file_and_strict_labels(tmp_path):
    image = make_image(tmp_path / 'images' / 'a.jpg')
    bad = make_image(tmp_path / 'images' / 'b.jpg')
    write(tmp_path / 'labels' / 'a.txt', '0 0.5 0.5 0.2 0.2\n')
    write(tmp_path / 'labels' / 'b.txt', '7 0.5 0.5 0.2 0.2\n')
    write_list(tmp_path / 'train.txt', ['images/a.jpg', 'images/b.jpg'])
    write(tmp_path / 'obj.names', 'a\nb\n')
    text = 'classes=2\ntrain=train.txt\nvalid=images\nnames=obj.names\n'
    cfg = load_config(write(tmp_path / 'x.data', text))
    train, val = load_split(cfg, 'train'), load_split(cfg, 'val')
    assert (len(train), len(train.left_out), len(val)) == (1, 1, 1)
    cfg = load_config(write(tmp_path / 'strict.data', text + 'strict_labels=1\n'))
    with pytest.raises(DatasetError, match=r'class must be in \[0, 2\)(.|\n)*strict.data:2'):
        load_split(cfg, 'train')


# ------------------------------------------------------------------------------------------------------------ cache

def test_cache_is_reused_and_a_changed_label_file_is_checked_again(tmp_path, capsys):
    images = [make_image(tmp_path / 'images' / f'{i}.jpg') for i in range(3)]
    for i in range(2):
        write(tmp_path / 'labels' / f'{i}.txt', f'{i} 0.5 0.5 0.2 0.2\n')
    listing = write_list(tmp_path / 'train.txt', images)
    check_split(listing, classes=3)
    assert 'cache written' in capsys.readouterr().out and (tmp_path / 'train.txt.cache').is_file()
    check_split(listing, classes=3)
    assert 'all 3 from cache' in capsys.readouterr().out

    label = write(tmp_path / 'labels' / '1.txt', '2 0.5 0.5 0.2 0.2\n2 0.1 0.1 0.1 0.1\n')   # same size would do:
    os.utime(label, ns=(os.stat(label).st_atime_ns, os.stat(label).st_mtime_ns + 10**9))     # mtime is in the key
    write(tmp_path / 'labels' / '2.txt', '9 0.5 0.5 0.2 0.2\n')   # a background gets a (bad) label file
    split = check_split(listing, classes=3)
    assert [x[:, 0].tolist() for x in split.labels] == [[0], [2, 2]]
    assert len(split.left_out) == 1 and '2.txt:1: class' in split.left_out[0]
    check_split(listing, classes=3)
    assert 'all 3 from cache' in capsys.readouterr().out.split('\n', 3)[-1]
    # Another class count changes which lines are valid, so everything is checked again.
    assert check_split(listing, classes=10).num_boxes == 4


def test_a_read_only_folder_gets_no_cache(tmp_path, capsys):
    folder = tmp_path / 'ro'
    image = make_image(folder / 'a.jpg')
    listing = write_list(folder / 'l.txt', [image])
    folder.chmod(0o555)
    try:
        assert len(check_split(listing, classes=1)) == 1
    finally:
        folder.chmod(0o755)
    assert f'cache not written: {folder} is not writable' in capsys.readouterr().out
    assert not (folder / 'l.txt.cache').exists()


# ----------------------------------------------------------------------------------------------------------- images

def test_read_image_converts_grey_alpha_and_16_bit_to_bgr_8_bit(tmp_path):
    grey = np.random.default_rng(0).integers(0, 256, (20, 30), dtype=np.uint8)
    bgra = np.dstack([grey, 255 - grey, grey // 2, np.full_like(grey, 9)])
    deep = np.random.default_rng(1).integers(0, 65536, (20, 30), dtype=np.uint16)
    cv2.imwrite(str(tmp_path / 'grey.png'), grey)
    cv2.imwrite(str(tmp_path / 'bgra.png'), bgra)
    cv2.imwrite(str(tmp_path / 'deep.png'), deep)
    cv2.imwrite(str(tmp_path / 'deep3.tif'), np.dstack([deep, deep, deep]))
    # 16-bit to 8-bit is a rescale 0..65535 -> 0..255; OpenCV's PNG and TIFF readers round differently, within 1.
    deep_as_8_bit = np.dstack([np.round(deep / 257.0)] * 3)
    for name, expected, tolerance in [('grey.png', np.dstack([grey] * 3), 0), ('bgra.png', bgra[:, :, :3], 0),
                                      ('deep.png', deep_as_8_bit, 1), ('deep3.tif', deep_as_8_bit, 1)]:
        image = read_image(tmp_path / name)
        assert image.dtype == np.uint8 and image.shape == (20, 30, 3), name
        assert np.abs(image.astype(int) - expected).max() <= tolerance, name
    with pytest.raises(DatasetError, match='file not found'):
        read_image(tmp_path / 'nope.jpg')
    with pytest.raises(DatasetError, match='cannot decode'):
        read_image(write(tmp_path / 'broken.png', '\x89PNG\r\n\x1a\n garbage'))


def test_eval_dataset_yields_resized_chw_bgr_and_the_resize_info(tmp_path):
    image = make_image(tmp_path / 'a.jpg', size=(64, 32))
    image2 = make_image(tmp_path / 'b.jpg', value=200, size=(20, 40))
    write(tmp_path / 'n.names', 'a\n')
    write_list(tmp_path / 'l.txt', [image, image2])
    cfg = load_config(write(tmp_path / 'x.data', 'classes=1\ntrain=l.txt\nval=l.txt\nnames=n.names\n'
                                                 'width=64\nheight=32\nletterbox=1\n'))
    dataset = EvalDataset(load_split(cfg, 'val'), cfg)
    images, infos, indices = collate_eval([dataset[0], dataset[1]])
    assert images.shape == (2, 3, 32, 64) and str(images.dtype) == 'torch.uint8' and indices == [0, 1]
    expected, info = resize_image(cv2.imread(str(image2)), 64, 32, True)
    np.testing.assert_array_equal(images[1].numpy().transpose(1, 2, 0), expected)
    assert infos[1] == info and (info.orig_width, info.orig_height) == (20, 40)


# ------------------------------------------------------------------------------------------------------ real: coco128

@pytest.mark.parametrize('split_name', ['train2017', 'val2017'])
def test_coco128_loads_every_box(tmp_path, split_name):
    images_folder = shared_path(f'datasets/coco128/images/{split_name}')
    labels_folder = shared_path(f'datasets/coco128/labels/{split_name}')
    # Independent count: numpy's own text reader on the label file of each image that exists.
    expected = {}
    for image in sorted(images_folder.glob('*.jpg')):
        label = labels_folder / (image.stem + '.txt')
        expected[image] = np.loadtxt(label, ndmin=2).reshape(-1, 5) if label.exists() else np.zeros((0, 5))
    listing = write_list(tmp_path / 'list.txt', expected)   # the cache goes beside this list, not into ../shared
    split = check_split(listing, classes=80)
    assert split.left_out == [] and split.image_paths == list(expected)
    assert split.num_boxes == sum(len(v) for v in expected.values())
    assert split.num_backgrounds == sum(len(v) == 0 for v in expected.values())
    for got, want in zip(split.labels, expected.values()):
        np.testing.assert_allclose(got, want, atol=1e-6)
    # coco128's train2017 is Ultralytics' set: 929 boxes in 128 images, 2 without labels.
    if split_name == 'train2017':
        assert (len(split), split.num_boxes, split.num_backgrounds) == (128, 929, 2)
    # The folder split gives the same result and writes nothing into the read-only shared folder.
    before = sorted(os.listdir(images_folder.parent))
    assert check_split(images_folder, classes=80).num_boxes == split.num_boxes
    assert sorted(os.listdir(images_folder.parent)) == before


def test_coco_data_file_works_on_a_darknet_coco_layout(tmp_path, repo):
    # data/coco.data, unchanged, beside a coco/ folder laid out as its comment says (coco128 standing in for COCO).
    coco128 = shared_path('datasets/coco128')
    data = tmp_path / 'data'
    (data / 'coco' / 'images').mkdir(parents=True)
    (data / 'coco' / 'labels').mkdir()
    for split in ('train2017', 'val2017'):
        (data / 'coco' / 'images' / split).symlink_to(coco128 / 'images' / split)
        (data / 'coco' / 'labels' / split).symlink_to(coco128 / 'labels' / split)
        names = sorted(p.name for p in (coco128 / 'images' / split).glob('*.jpg'))
        write(data / 'coco' / f'{split}.txt', ''.join(f'./images/{split}/{n}\n' for n in names))
    for name in ('coco.data', 'coco.names'):
        (data / name).write_bytes((repo / 'data' / name).read_bytes())
    cfg = load_config(data / 'coco.data')
    assert (cfg.classes, cfg.width, cfg.height, cfg.model) == (80, 352, 352, 'yolo-fastestv2')
    assert load_split(cfg, 'train').num_boxes == 929
    # The class names are COCO's own, as the LeYOLO release (an Ultralytics checkpoint) lists them: read its
    # pickle's strings without unpickling it.
    import pickletools
    import zipfile
    with zipfile.ZipFile(shared_path('weights/leyolo/LeYOLONano.pt')) as archive:
        pickle = archive.read(next(n for n in archive.namelist() if n.endswith('data.pkl')))
    strings = [arg for op, arg, _ in pickletools.genops(pickle) if op.name in ('SHORT_BINUNICODE', 'BINUNICODE')]
    start = strings.index('person')
    assert cfg.class_names == tuple(strings[start:start + 80])
