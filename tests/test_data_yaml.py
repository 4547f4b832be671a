"""Ultralytics' and Roboflow's data.yaml wherever a .data is accepted: the same splits, labels and mAP as the
equivalent .data on coco128, Roboflow's layout, our keys written into the YAML, one file:line error per mistake, and
set_key (genanchors --update) changing nothing but the value."""
import os
import re
from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import REPO, shared_path

from utils.config import ConfigError, load_config, read_data_file
from utils.data.dataset import load_split
from utils.data_yaml import set_key

YFV2_WEIGHTS = 'weights/yolo-fastestv2/coco2017-0.241078ap-model.pth'
COCO_NAMES = [n for n in (REPO / 'data' / 'coco.names').read_text().splitlines() if n.strip()]


def coco128_yaml(folder: Path, val: str = 'images/val2017') -> Path:
    """coco128.yaml as Ultralytics ships it: `path` relative to the working folder, splits under it, a names mapping."""
    root = shared_path('datasets/coco128')
    names = ''.join(f'  {i}: {name}\n' for i, name in enumerate(COCO_NAMES))
    path = folder / 'coco128.yaml'
    path.write_text(f'# COCO128 from Ultralytics\npath: {os.path.relpath(root, REPO)}  # dataset root dir\n'
                    f'train: images/train2017  # 128 images\nval: {val}\ntest:  # optional\n\n# Classes\n'
                    f'names:\n{names}\n# Download script/URL (optional)\n'
                    f'download: https://github.com/ultralytics/assets/releases/download/v0.0.0/coco128.zip\n')
    return path


def coco128_data(folder: Path, val: str) -> Path:
    root = shared_path('datasets/coco128')
    path = folder / 'coco128.data'
    path.write_text(f'classes=80\ntrain={root}/images/train2017\nval={val}\nnames={REPO / "data" / "coco.names"}\n')
    return path


def test_coco128_yaml_gives_the_splits_of_the_equivalent_data_file(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(REPO)   # Ultralytics takes a relative `path` from the working folder
    root = shared_path('datasets/coco128')
    from_yaml = load_config(coco128_yaml(tmp_path))
    from_data = load_config(coco128_data(tmp_path, f'{root}/images/val2017'))
    assert from_yaml.train == (root / 'images' / 'train2017').resolve() and from_yaml.names is None
    assert from_yaml.class_names == from_data.class_names and from_yaml.classes == 80
    # the unused keys are said once, in one line
    assert capsys.readouterr().err.splitlines() == [f'{tmp_path / "coco128.yaml"}: not used by tinydet, ignored: '
                                                    f'download, test']
    for which in ('train', 'val'):
        a, b = load_split(from_yaml, which, verbose=False), load_split(from_data, which, verbose=False)
        assert [p.resolve() for p in a.image_paths] == [p.resolve() for p in b.image_paths]
        assert len(a.image_paths) == 128 and all(np.array_equal(x, y) for x, y in zip(a.labels, b.labels))
    # and the labels are the files in labels/, Darknet's mirror of images/
    first = a.image_paths[0]
    text = (root / 'labels' / 'val2017' / f'{first.stem}.txt').read_text().split()
    assert np.allclose(a.labels[0].ravel(), np.array(text, dtype=np.float32))


def mean_ap_line(capsys) -> str:
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith('mAP@0.5:0.95')]
    assert len(lines) == 1
    return re.sub(r'\(.*\)', '', lines[0])   # the numbers, without the timings


def test_evaluation_gives_the_same_map_with_the_yaml(tmp_path, monkeypatch, capsys):
    import evaluation
    monkeypatch.chdir(REPO)
    weights = shared_path(YFV2_WEIGHTS)
    images = sorted(shared_path('datasets/coco128/images/val2017').glob('*.jpg'))[:16]
    (tmp_path / 'val16.txt').write_text(''.join(f'{p}\n' for p in images))
    yaml_file, data_file = coco128_yaml(tmp_path, str(tmp_path / 'val16.txt')), coco128_data(tmp_path, 'val16.txt')
    maps = []
    for data in (data_file, yaml_file):
        assert evaluation.main(['--data', str(data), '--weights', str(weights), '--no-per-class',
                                '--workers', '0']) == 0
        maps.append(mean_ap_line(capsys))
    assert maps[0] == maps[1] and float(maps[0].split()[1]) > 0.05, maps


def write_image(path: Path, labels: str | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), np.full((32, 48, 3), 100, np.uint8))
    if labels is not None:
        label = path.parents[1] / 'labels' / f'{path.stem}.txt'
        label.parent.mkdir(parents=True, exist_ok=True)
        label.write_text(labels)


ROBOFLOW = """train: ../train/images
val: ../valid/images
test: ../test/images

nc: 2
names: ['cat', 'dog']

roboflow:
  workspace: someone
  project: pets
  version: 3
  license: CC BY 4.0
  url: https://universe.roboflow.com/someone/pets/dataset/3
"""


def roboflow_export(folder: Path) -> Path:
    """The layout of a Roboflow 'YOLOv8' export: split/images, split/labels, data.yaml at the root."""
    write_image(folder / 'train' / 'images' / 'a.jpg', '0 0.5 0.5 0.2 0.3\n1 0.25 0.25 0.1 0.1\n')
    write_image(folder / 'train' / 'images' / 'b.jpg', '')
    write_image(folder / 'valid' / 'images' / 'c.jpg', '1 0.5 0.5 0.5 0.5\n')
    write_image(folder / 'test' / 'images' / 'd.jpg', '0 0.5 0.5 0.5 0.5\n')
    (folder / 'data.yaml').write_text(ROBOFLOW)
    return folder / 'data.yaml'


def test_roboflow_export_loads_with_its_labels(tmp_path, capsys):
    cfg = load_config(roboflow_export(tmp_path / 'pets'))
    assert cfg.train == tmp_path / 'pets' / 'train' / 'images' and cfg.val == tmp_path / 'pets' / 'valid' / 'images'
    assert cfg.class_names == ('cat', 'dog') and cfg.classes == 2 and cfg.where('classes').endswith('data.yaml:5')
    assert 'ignored: roboflow, test' in capsys.readouterr().err
    train = load_split(cfg, 'train', verbose=False)
    assert [p.name for p in train.image_paths] == ['a.jpg', 'b.jpg']
    assert np.allclose(train.labels[0], [[0, 0.5, 0.5, 0.2, 0.3], [1, 0.25, 0.25, 0.1, 0.1]])
    assert train.labels[1].shape == (0, 5)


def test_our_keys_in_the_yaml_are_read_as_in_a_data_file(tmp_path):
    path = roboflow_export(tmp_path)
    path.write_text(ROBOFLOW + 'model: leyolo-nano\nhead: anchor\nwidth: 320\nheight: 256\nepochs: 12\n'
                               'steps: [8, 10]\nlearning_rate: 1e-3\nema: false\npre_weights: null\n'
                               'anchors:\n  - [10, 13, 20, 20, 20, 20]\n' + '  - [20, 20, 20, 20, 20, 20]\n' * 2 +
                  'imgsz: 640\n')
    cfg = load_config(path)
    assert (cfg.model, cfg.width, cfg.height, cfg.epochs, cfg.steps) == ('leyolo-nano', 320, 256, 12, (8, 10))
    assert cfg.learning_rate == 0.001 and cfg.ema is False and cfg.pre_weights is None
    assert cfg.anchors[:3] == (10.0, 13.0, 20.0) and len(cfg.anchors) == 18
    assert cfg.where('width').endswith('data.yaml:16')
    assert read_data_file(path)[0]['model'] == 'leyolo-nano'   # what genanchors reads to refuse a leyolo head


def test_names_as_list_or_mapping(tmp_path):
    path = roboflow_export(tmp_path)
    by_list = load_config(path).class_names
    path.write_text(ROBOFLOW.replace("names: ['cat', 'dog']", 'names:\n  1: dog\n  "0": cat'))
    assert load_config(path).class_names == by_list == ('cat', 'dog')
    path.write_text(ROBOFLOW.replace("names: ['cat', 'dog']\n", '').replace('nc: 2', 'nc: 3'))
    assert load_config(path).class_names == ('class_0', 'class_1', 'class_2')   # Ultralytics' names for nc alone


def test_the_root_resolves_as_ultralytics_does(tmp_path, monkeypatch):
    roboflow_export(tmp_path / 'sets' / 'pets')
    roboflow_export(tmp_path / 'conf' / 'pets')
    data = tmp_path / 'conf' / 'pets.yaml'
    data.write_text('path: pets\ntrain: train/images\nval: [valid/images]\nnames: [cat, dog]\n')
    monkeypatch.chdir(tmp_path / 'sets')   # a relative root that exists from the working folder is taken from there
    assert load_config(data).train == tmp_path / 'sets' / 'pets' / 'train' / 'images'
    monkeypatch.chdir(tmp_path)   # and from the YAML's folder where it does not
    assert load_config(data).val == tmp_path / 'conf' / 'pets' / 'valid' / 'images'
    data.write_text('train: pets/train/images\nval: pets/valid/images\nnames: [cat, dog]\n')
    assert load_config(data).train == tmp_path / 'conf' / 'pets' / 'train' / 'images'   # no root: the YAML's folder


def test_a_yaml_list_of_sources_is_combined_outside_the_dataset(tmp_path, split_cache_folder):
    path = roboflow_export(tmp_path / 'pets')
    path.write_text(ROBOFLOW.replace('train: ../train/images', 'train:\n  - train/images\n  - test/images'))
    before = sorted(p for p in (tmp_path / 'pets').rglob('*'))
    cfg = load_config(path)
    assert cfg.train.parent == split_cache_folder
    assert [p.name for p in load_split(cfg, 'train', verbose=False).image_paths] == ['a.jpg', 'b.jpg', 'd.jpg']
    assert sorted(p for p in (tmp_path / 'pets').rglob('*')) == before   # nothing written into the dataset
    path.write_text(ROBOFLOW.replace('train: ../train/images', 'train: [gone/images, test/images]'))
    assert load_config(path, splits=False).classes == 2   # to run a model only, the splits need not exist


@pytest.mark.parametrize('edit, pattern', [
    (lambda t: t.replace('nc: 2', 'nc: 3'), r'data\.yaml:5: key "nc": nc = 3 but "names" \(line 6\) lists 2 names'),
    (lambda t: t.replace("names: ['cat', 'dog']", "names: ['cat', 'dog'"), r'data\.yaml:8: not valid YAML: '
                                                                             r"expected ',' or '\]'"),
    (lambda t: t.replace("names: ['cat', 'dog']", 'names:\n  0: cat\n  2: dog'),
     r'data\.yaml:8: key "names": class 2 given but class 1 is missing \(indices must be 0\.\.1\)'),
    (lambda t: t.replace("names: ['cat', 'dog']", 'names:\n  0: cat\n  first: dog'),
     r'data\.yaml:8: key "names": "first" is not a class index'),
    (lambda t: t.replace("names: ['cat', 'dog']", 'names: pets.names'), r'data\.yaml:6: key "names": expected a list'),
    (lambda t: t + 'widht: 320\n', r'data\.yaml:14: unknown key "widht" \(did you mean "width"\?\)'),
    (lambda t: t + 'epochs: many\n', r'data\.yaml:14: key "epochs": expected int, got "many"'),
    (lambda t: t + 'width: 350\n', r'data\.yaml:14: key "width": must be a multiple of 32'),
    (lambda t: t + 'classes: 3\n', r'data\.yaml:14: key "classes": classes = 3 but .*data\.yaml:6 lists 2 names'),
    (lambda t: t + 'nc: 2\n', r'data\.yaml:14: key "nc" given twice \(first on line 5\)'),
    (lambda t: t.replace('val: ../valid/images', 'validation: ../nowhere'), r'data\.yaml:2: key "val": list file or '
                                                                             r'image folder not found: .*nowhere'),
    (lambda t: t.replace('val: ../valid/images\n', ''), r'data\.yaml: required key "val" is missing'),
    (lambda t: '- a\n- b\n', r'data\.yaml: expected keys \(train: \.\.\., val: \.\.\., names: \.\.\.\), got a list'),
])
def test_each_mistake_gets_one_line_with_file_and_line(tmp_path, edit, pattern):
    path = roboflow_export(tmp_path)
    path.write_text(edit(ROBOFLOW))
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert str(path) in message and '\n' not in message and re.search(pattern, message), message


ANCHORS = '12.64,19.39, 37.88,51.48, 55.71,138.31, 126.91,78.23, 131.57,214.55, 279.92,258.87'


@pytest.mark.parametrize('before, after', [
    ('anchors: 1,2, 3,4  # k-means\r\nwidth: 352\r\n', f'anchors: {ANCHORS}  # k-means\r\nwidth: 352\r\n'),
    ('anchors:\n- 1\n- 2\n# from genanchors\nwidth: 352\n', f'anchors: {ANCHORS}\n# from genanchors\nwidth: 352\n'),
    ('anchors: [1, 2]\n', f'anchors: {ANCHORS}\n'),
    ('anchors:   # none yet\n', f'anchors: {ANCHORS}   # none yet\n'),
    ('width: 352', f'width: 352\nanchors: {ANCHORS}\n'),
])
def test_set_key_changes_only_the_value(tmp_path, before, after):
    path = roboflow_export(tmp_path)
    head = '\ufeff' + ROBOFLOW.replace('\n', '\r\n' if '\r\n' in before else '\n')
    path.write_bytes((head + before).encode('utf-8'))
    set_key(path, 'anchors', ANCHORS)
    assert path.read_bytes() == (head + after).encode('utf-8')
    assert load_config(path).anchors == tuple(float(v) for v in ANCHORS.split(','))
