"""The Darknet dataset: label lookup, every label rule, reporting, strict mode, the cache and where it goes, image
formats, images cut short, coco128."""
import hashlib
import os
from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import shared_path

from utils.config import load_config
from utils.data.dataset import DatasetError, check_split, label_candidates, list_images, load_split, read_image
from utils.data.eval_data import EvalDataset, collate_eval
from utils.preprocess import resize_image


@pytest.fixture(autouse=True)
def split_cache(tmp_path_factory, monkeypatch) -> Path:
    """Each test's split caches go to a fresh folder of their own, outside the test's dataset folders."""
    folder = tmp_path_factory.mktemp('split-cache')
    monkeypatch.setenv('TINYDET_SPLIT_CACHE', str(folder))
    return folder


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


def tree(folder: Path) -> list:
    """Every file and folder under `folder` with its size and modification time, to show that nothing changed."""
    return sorted((str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in Path(folder).rglob('*'))


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
    with pytest.raises(DatasetError, match=r'1 of 2 images have problems \(strict_labels is on\); the first: '
                                           r'.*bad.txt:1: '):
        check_split(listing, classes=1, strict=True)
    with pytest.raises(DatasetError, match='no usable image'):
        check_split(write_list(tmp_path / 'only_bad.txt', [bad]), classes=1)
    with pytest.raises(DatasetError, match='list file holds no image paths'):
        check_split(write(tmp_path / 'blank.txt', '\n\n'), classes=1)


def test_load_split_reads_the_data_file_and_strict_labels(tmp_path):
    make_image(tmp_path / 'images' / 'a.jpg')
    make_image(tmp_path / 'images' / 'b.jpg')
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


# --------------------------------------------------------------------------------------------------------- warnings

def labelled_set(folder: Path, label_texts: list) -> Path:
    """Images 0.jpg, 1.jpg, ... with the label file text given for each beside it (None: no label file)."""
    images = []
    for i, text in enumerate(label_texts):
        images.append(make_image(folder / f'{i}.jpg'))
        if text is not None:
            write(folder / f'{i}.txt', text)
    return write_list(folder / 'train.txt', images)


def test_a_class_without_boxes_is_named(tmp_path, capsys):
    listing = labelled_set(tmp_path, ['0 0.5 0.5 0.2 0.2\n', '2 0.5 0.5 0.3 0.3\n0 0.2 0.2 0.1 0.1\n'])
    split = check_split(listing, classes=4, class_names=('cat', 'dog', 'bird', 'fish'))
    assert split.warnings == ['classes with no boxes: 2 of 4: 1 "dog", 3 "fish"']
    assert '\n  warning: classes with no boxes: 2 of 4: 1 "dog", 3 "fish"\n' in capsys.readouterr().out
    assert check_split(listing, classes=3).warnings == ['classes with no boxes: 1 of 3: 1']   # no names: numbers
    assert check_split(listing, classes=None).warnings == []   # genanchors without a .data: no class count


def test_boxes_smaller_than_2x2_input_pixels_are_counted_with_an_example(tmp_path):
    # at 352 x 352: 1.76 x 1.41 px is tiny; 1.76 x 176 px (thin, not small) and 2.11 x 1.41 px are not
    listing = labelled_set(tmp_path, ['0 0.5 0.5 0.2 0.2\n0 0.5 0.5 0.005 0.5\n',
                                      '0 0.5 0.5 0.006 0.004\n0 0.2 0.2 0.005 0.004\n0 0.5 0.5 0.005 0.004\n'])
    split = check_split(listing, classes=1, input_size=(352, 352))
    assert split.warnings == [f'boxes smaller than 2x2 px at the 352x352 input: 2 of 5, e.g. {tmp_path / "1.txt"}: '
                              f'1.76x1.41 px']
    assert check_split(listing, classes=1, input_size=(704, 704)).warnings == []   # 3.5 x 2.8 px at 704
    assert check_split(listing, classes=1).warnings == []                          # no input size, no count


def test_more_than_30_percent_backgrounds_say_how_many_lack_a_label_file(tmp_path):
    box = '0 0.5 0.5 0.2 0.2\n'
    split = check_split(labelled_set(tmp_path / 'a', [box] * 3 + [None] * 4 + [''] * 3), classes=1)
    assert split.warnings == [f'background images (no boxes): 7 of 10 (70%, more than 30%); 4 have no label file '
                              f'(looked for in the mirror "labels" folder, then beside the image), e.g. '
                              f'{tmp_path / "a" / "3.jpg"}']
    split = check_split(labelled_set(tmp_path / 'b', [box] * 3 + ['\n'] * 2), classes=1)
    assert split.warnings == [f'background images (no boxes): 2 of 5 (40%, more than 30%); all have a label file, '
                              f'e.g. {tmp_path / "b" / "3.txt"} is empty']
    assert check_split(labelled_set(tmp_path / 'c', [box] * 7 + [None] * 3), classes=1).warnings == []   # 30 %


def test_label_files_whose_every_box_lies_outside_the_image_are_counted(tmp_path, capsys):
    # pixel coordinates instead of normalised ones: every box lies beyond 0..1 (the first field is the class)
    listing = labelled_set(tmp_path, ['0 0.5 0.5 0.2 0.2\n1 0.2 0.2 0.1 0.1\n', '0 320 240 50 60\n\n1 100.5 80 20 20\n',
                                      '1 -0.3 0.5 0.2 0.2\n', '0 0.5 0.5 0.2 0.2\n0 1.4 0.5 0.2 0.2\n'])
    split = check_split(listing, classes=2)
    assert split.image_paths == [tmp_path / '0.jpg']
    assert split.left_out[:2] == [
        f'{tmp_path / "1.txt"}:1: every box lies outside the image (coordinates beyond 0..1: pixels, not '
        f'normalised?): "0 320 240 50 60"',
        f'{tmp_path / "2.txt"}:1: every box lies outside the image (coordinates beyond 0..1: pixels, not '
        f'normalised?): "1 -0.3 0.5 0.2 0.2"']
    assert 'centre must be in [0, 1]' in split.left_out[2]   # one box outside among good ones: a plain bad line
    assert split.warnings == [f'label files with every box outside the image (coordinates beyond 0..1: pixels, not '
                              f'normalised?): 2, their images left out, e.g. {tmp_path / "1.txt"}:1']
    assert capsys.readouterr().out.count('\n  warning: ') == 1


def test_a_clean_split_warns_of_nothing(tmp_path, capsys):
    listing = labelled_set(tmp_path, ['0 0.5 0.5 0.2 0.2\n1 0.99 0.01 0.02 0.02\n', '1 0.5 0.5 0.9 0.9\n', '',
                                      '0 0.5 0.5 0.006 0.5\n'])   # a box 2.1 x 176 px, one 7 x 7 px, 25 % backgrounds
    split = check_split(listing, classes=2, class_names=('a', 'b'), input_size=(352, 352))
    assert (split.num_backgrounds, split.warnings) == (1, [])
    assert 'warning' not in capsys.readouterr().out


@pytest.mark.parametrize('split_name', ['train2017', 'val2017'])
def test_coco128_warnings_are_the_ones_its_labels_call_for(tmp_path, split_name, repo):
    # Independently, with numpy: the classes without a box, the boxes under 2 x 2 px at 352 x 352.
    images_folder = shared_path(f'datasets/coco128/images/{split_name}')
    labels = [np.loadtxt(p, ndmin=2).reshape(-1, 5) for p in sorted(
        (images_folder.parents[1] / 'labels' / split_name).glob('*.txt')) if (images_folder / f'{p.stem}.jpg').exists()]
    boxes = np.concatenate(labels)
    names = (repo / 'data' / 'coco.names').read_text().splitlines()
    empty = sorted(set(range(80)) - set(boxes[:, 0].astype(int)))
    tiny = int(((boxes[:, 3] * 352 < 2) & (boxes[:, 4] * 352 < 2)).sum())
    data = write(tmp_path / 'coco128.data', f'classes=80\nwidth=352\nheight=352\ntrain={images_folder}\n'
                                            f'valid={images_folder}\nnames={repo / "data" / "coco.names"}\n')
    split = load_split(load_config(data), 'train', verbose=False)
    # coco128 lacks some COCO classes; train2017 holds one box of 1.0 x 1.6 px at 352; under 2 % are backgrounds
    # and no label file lies outside its image, so those two stay silent.
    assert (len(empty), tiny) == ((9, 1) if split_name == 'train2017' else (7, 0))
    expected = [f'classes with no boxes: {len(empty)} of 80: ' + ', '.join(f'{c} "{names[c]}"' for c in empty)]
    assert split.warnings[0] == expected[0]
    assert len(split.warnings) == 1 + (tiny > 0)
    if tiny:
        assert split.warnings[1].startswith(f'boxes smaller than 2x2 px at the 352x352 input: {tiny} of {len(boxes)}')


# ------------------------------------------------------------------------------------------------------------ cache

def test_cache_is_reused_and_a_changed_label_file_is_checked_again(tmp_path, capsys, split_cache):
    images = [make_image(tmp_path / 'images' / f'{i}.jpg') for i in range(3)]
    for i in range(2):
        write(tmp_path / 'labels' / f'{i}.txt', f'{i} 0.5 0.5 0.2 0.2\n')
    listing = write_list(tmp_path / 'train.txt', images)
    check_split(listing, classes=3)
    cache_file = split_cache / f'train.txt-{hashlib.sha1(str(listing.resolve()).encode()).hexdigest()[:16]}.cache'
    assert f'cache written: {cache_file}' in capsys.readouterr().out and cache_file.is_file()
    check_split(listing, classes=3)
    assert f'all 3 from cache {cache_file}' in capsys.readouterr().out

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
    assert os.listdir(split_cache) == [cache_file.name]


def test_loading_writes_nothing_into_the_dataset_folders(tmp_path, capsys, split_cache):
    # Two datasets with a train.txt each, a list split and a folder split: each gets its own cache, in the cache
    # folder, and no dataset folder changes.
    for name in ('a', 'b'):
        image = make_image(tmp_path / name / 'images' / 'x.jpg')
        write(tmp_path / name / 'labels' / 'x.txt', '0 0.5 0.5 0.2 0.2\n')
        write_list(tmp_path / name / 'train.txt', [image])
    before = tree(tmp_path)
    for source in (tmp_path / 'a' / 'train.txt', tmp_path / 'b' / 'train.txt', tmp_path / 'a' / 'images'):
        assert check_split(source, classes=1).num_boxes == 1
        assert f'cache written: {split_cache}{os.sep}' in capsys.readouterr().out
        assert check_split(source, classes=1).num_boxes == 1
        assert f'all 1 from cache {split_cache}{os.sep}' in capsys.readouterr().out
    assert tree(tmp_path) == before
    assert len([name for name in os.listdir(split_cache) if name.startswith('train.txt-')]) == 2
    assert len([name for name in os.listdir(split_cache) if name.startswith('images-')]) == 1


def test_the_cache_folder_comes_from_the_environment(tmp_path, monkeypatch, capsys):
    image = make_image(tmp_path / 'data' / 'a.jpg')
    listing = write_list(tmp_path / 'data' / 'l.txt', [image])
    home, xdg, root = tmp_path / 'home', tmp_path / 'xdg', tmp_path / 'root'
    monkeypatch.delenv('TINYDET_SPLIT_CACHE')
    monkeypatch.delenv('TINYDET_CACHE', raising=False)
    monkeypatch.delenv('XDG_CACHE_HOME', raising=False)
    monkeypatch.setenv('HOME', str(home))
    for variable, value, folder in [(None, None, home / '.cache' / 'tinydet' / 'splits'),
                                    ('XDG_CACHE_HOME', xdg, xdg / 'tinydet' / 'splits'),
                                    ('TINYDET_CACHE', root, root / 'splits'),
                                    ('TINYDET_SPLIT_CACHE', tmp_path / 'splits', tmp_path / 'splits')]:
        if variable:
            monkeypatch.setenv(variable, str(value))
        check_split(listing, classes=1)
        assert f'cache written: {folder}{os.sep}l.txt-' in capsys.readouterr().out
        assert len(list(folder.glob('l.txt-*.cache'))) == 1


def test_a_cache_folder_that_cannot_be_made_costs_only_the_cache(tmp_path, monkeypatch, capsys):
    # A file where the cache folder should be: no permission bits involved, so this holds for root too.
    monkeypatch.setenv('TINYDET_SPLIT_CACHE', str(write(tmp_path / 'taken', 'a file, not a folder')))
    image = make_image(tmp_path / 'data' / 'a.jpg')
    listing = write_list(tmp_path / 'data' / 'l.txt', [image])
    for _ in range(2):
        assert len(check_split(listing, classes=1)) == 1
        assert f'cache not written: cannot make the cache folder {tmp_path / "taken"}' in capsys.readouterr().out
    assert sorted(os.listdir(tmp_path / 'data')) == ['a.jpg', 'l.txt']


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


# ------------------------------------------------------------------------------------------------- images cut short

JPEG_CUT_SHORT = 'JPEG file is cut short: its image data stops without the end marker (FF D9)'
PNG_CUT_SHORT = 'PNG file is cut short: it does not end with an IEND chunk'


def test_images_cut_short_are_left_out_and_whole_ones_kept(tmp_path, capfd, monkeypatch):
    first, second = sorted(shared_path('datasets/coco128/images/train2017').glob('*.jpg'))[:2]
    jpeg = first.read_bytes()
    pixels = cv2.imread(str(first))
    progressive = cv2.imencode('.jpg', pixels, [cv2.IMWRITE_JPEG_PROGRESSIVE, 1])[1].tobytes()
    png = cv2.imencode('.png', pixels)[1].tobytes()
    cut = {   # file name: (bytes, the reason expected)
        'half.jpg': (jpeg[:len(jpeg) // 2], JPEG_CUT_SHORT),
        'end_marker_only.jpg': (jpeg[:-2], JPEG_CUT_SHORT),
        # an interrupted download into a file made full-size beforehand: the rest is zeros
        'zero_filled.jpg': (jpeg[:len(jpeg) * 6 // 10].ljust(len(jpeg), b'\0'), JPEG_CUT_SHORT),
        'in_headers.jpg': (jpeg[:300], JPEG_CUT_SHORT),
        'progressive.jpg': (progressive[:len(progressive) * 7 // 10], JPEG_CUT_SHORT),
        'half.png': (png[:len(png) // 2], PNG_CUT_SHORT),
        'iend_only.png': (png[:-12], PNG_CUT_SHORT),
    }
    whole = {   # file name: (bytes, the untouched image they hold)
        'copy.jpg': (jpeg, jpeg),
        'padded.jpg': (jpeg + b'\0' * 7, jpeg),                 # padding after the end marker, as cameras write
        'long_padding.jpg': (jpeg + b'\xff' * 10000, jpeg),
        # data of another kind after the image, like a phone's motion-photo video
        'trailer.jpg': (jpeg + np.random.default_rng(0).bytes(100_000), jpeg),
        'appended.jpg': (jpeg + second.read_bytes(), jpeg),
        'text_trailer.jpg': (jpeg + b'metadata of another tool, ' * 400, jpeg),   # over 4 KB without FF bytes
        'progressive_whole.jpg': (progressive, progressive),
        'copy.png': (png, png),
    }
    paths = {}
    for name, (data, _) in {**cut, **whole}.items():
        paths[name] = tmp_path / name
        paths[name].write_bytes(data)

    # Independently of the check, OpenCV's decoders say which files are cut short: libjpeg warns of the premature
    # end (and fills the rest grey), libpng fails; the whole files decode without a word to their images' pixels.
    capfd.readouterr()
    for name in cut:
        image = cv2.imread(str(paths[name]))
        warnings = capfd.readouterr().err
        assert image is None or 'Premature end of JPEG file' in warnings, name
    for name, (_, untouched) in whole.items():
        image = cv2.imread(str(paths[name]))
        assert capfd.readouterr().err == '', name
        np.testing.assert_array_equal(image, cv2.imdecode(np.frombuffer(untouched, np.uint8), cv2.IMREAD_COLOR))

    # The check finds them without decoding any image.
    def no_decoding(*args):
        raise AssertionError('the check decoded an image')
    monkeypatch.setattr(cv2, 'imread', no_decoding)
    listing = write_list(tmp_path / 'l.txt', paths.values())
    split = check_split(listing, classes=1, name='train')
    assert split.image_paths == [paths[name] for name in whole]
    assert split.left_out == [f'{paths[name]}: {reason}' for name, (_, reason) in cut.items()]
    assert f'{len(whole)} images, 0 boxes, {len(whole)} backgrounds, {len(cut)} left out' in capfd.readouterr().out
    with pytest.raises(DatasetError, match=f'{len(cut)} of {len(paths)} images have problems'):
        check_split(listing, classes=1, strict=True)


# ------------------------------------------------------------------------------------------------------ real: coco128

@pytest.mark.parametrize('split_name', ['train2017', 'val2017'])
def test_coco128_loads_every_box(tmp_path, split_name, capsys, split_cache):
    images_folder = shared_path(f'datasets/coco128/images/{split_name}')
    labels_folder = shared_path(f'datasets/coco128/labels/{split_name}')
    # Independent count: numpy's own text reader on the label file of each image that exists.
    expected = {}
    for image in sorted(images_folder.glob('*.jpg')):
        label = labels_folder / (image.stem + '.txt')
        expected[image] = np.loadtxt(label, ndmin=2).reshape(-1, 5) if label.exists() else np.zeros((0, 5))
    listing = write_list(tmp_path / 'list.txt', expected)
    coco128 = images_folder.parents[1]
    before = tree(coco128)
    split = check_split(listing, classes=80)
    assert split.left_out == [] and split.image_paths == list(expected)
    assert split.num_boxes == sum(len(v) for v in expected.values())
    assert split.num_backgrounds == sum(len(v) == 0 for v in expected.values())
    for got, want in zip(split.labels, expected.values()):
        np.testing.assert_allclose(got, want, atol=1e-6)
    # coco128's train2017 is Ultralytics' set: 929 boxes in 128 images, 2 without labels.
    if split_name == 'train2017':
        assert (len(split), split.num_boxes, split.num_backgrounds) == (128, 929, 2)
    # The folder split gives the same result, the second time from its cache, and loading never writes into
    # coco128's folders, whether or not this user may write there.
    for _ in range(2):
        assert check_split(images_folder, classes=80).num_boxes == split.num_boxes
    assert f'all {len(split)} from cache {split_cache}{os.sep}{split_name}-' in capsys.readouterr().out
    assert tree(coco128) == before


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
