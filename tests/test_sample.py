"""The sample dataset generator: deterministic, loads cleanly, boxes fit the drawn shapes, committed .data agrees,
and its settings let the class branch learn."""
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from conftest import REPO

from model.build import build_model
from utils.config import load_config
from utils.data.anchors import kmeans_anchors, mean_best_iou
from utils.data.dataset import load_split
from utils.data.train_data import TrainDataset, collate
from utils.loss import build_loss
from utils.train.schedule import build_optimizer

sys.path.insert(0, str(REPO / 'data'))
from make_sample import data_file_text, generate  # noqa: E402


def text_files(folder: Path) -> dict:
    return {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob('*')) if p.suffix in ('.txt', '.data',
                                                                                                   '.names')}


@pytest.fixture(scope='module')
def sample(tmp_path_factory) -> Path:
    """The default sample, made by the command line as users run it."""
    out = tmp_path_factory.mktemp('sample')
    subprocess.run([sys.executable, str(REPO / 'data' / 'make_sample.py'), '--out', str(out)], check=True,
                   capture_output=True)
    return out


def test_same_seed_same_bytes_other_seed_other_labels(tmp_path):
    generate(tmp_path / 'a', seed=3, train=20, val=5)
    generate(tmp_path / 'b', seed=3, train=20, val=5)
    generate(tmp_path / 'c', seed=4, train=20, val=5)
    a, b, c = (text_files(tmp_path / x) for x in 'abc')
    assert len(a) == 20 + 5 + 4   # labels, train.txt, val.txt, sample.names, sample.data
    assert a == b
    assert a.keys() == c.keys() and a != c
    for name in ('images/train/000007.jpg', 'images/val/000002.jpg'):
        assert (tmp_path / 'a' / name).read_bytes() == (tmp_path / 'b' / name).read_bytes()


def test_sample_loads_through_the_data_file_without_problems(sample):
    cfg = load_config(sample / 'sample.data')
    assert (cfg.model, cfg.classes, cfg.width, cfg.height) == ('yolo-fastestv2', 4, 160, 160)
    assert cfg.class_names == ('circle', 'square', 'triangle', 'cross')
    train, val = load_split(cfg, 'train'), load_split(cfg, 'val')
    assert (len(train), len(val)) == (300, 100) and not train.left_out and not val.left_out
    # Every class appears often, some images are backgrounds, boxes are 14..64 px.
    classes = np.concatenate(train.labels)[:, 0]
    assert np.bincount(classes.astype(int), minlength=4).min() > 100
    assert 0 < train.num_backgrounds < 40
    sizes_px = np.concatenate(train.labels)[:, 3:5] * 160
    assert sizes_px.min() >= 9 and sizes_px.max() <= 90
    # The anchors in the .data are k-means anchors of these boxes: recomputing them independently of the file
    # (another seed) gives the same mean IoU within a hair.
    boxes_wh = np.concatenate(train.labels)[:, 3:5].astype(np.float64)
    file_iou = mean_best_iou(boxes_wh, np.array(cfg.anchors).reshape(-1, 2) / 160)
    _, fresh_iou = kmeans_anchors(boxes_wh, 6, seed=11)
    assert file_iou > 0.7 and abs(file_iou - fresh_iou) < 0.01


def test_boxes_enclose_the_drawn_shapes(sample):
    # Independent of how the generator computes labels: find the shape in the pixels (the connected region of the
    # colour at the box centre, which lies inside every shape), looking 4 px around the box.
    cfg = load_config(sample / 'sample.data')
    split = load_split(cfg, 'val', verbose=False)
    errors_px = []
    for path, labels in zip(split.image_paths[:40], split.labels[:40]):
        image = cv2.imread(str(path)).astype(np.int32)
        for _, cx, cy, w, h in labels * np.array([1, 160, 160, 160, 160]):
            x1, y1, x2, y2 = (int(round(v)) for v in (cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2))
            left, top = max(x1 - 4, 0), max(y1 - 4, 0)
            window = image[top:y2 + 4, left:x2 + 4]
            mask = (np.abs(window - image[int(cy), int(cx)]).sum(2) < 60).astype(np.uint8)
            _, components = cv2.connectedComponents(mask)
            ys, xs = np.nonzero(components == components[int(cy) - top, int(cx) - left])
            xs, ys = xs + left, ys + top
            # Nearly all of the shape is inside its box (a stray line of the same colour may touch it) ...
            assert ((xs >= x1 - 1) & (xs < x2 + 1) & (ys >= y1 - 1) & (ys < y2 + 1)).mean() > 0.95, path
            # ... and it reaches every side of the box.
            errors_px.append(max(abs(xs.min() - x1), abs(ys.min() - y1),
                                 abs(xs.max() + 1 - x2), abs(ys.max() + 1 - y2)))
    # JPEG blur moves a border by a pixel or two and a triangle's one-pixel apex may fade by three; now and then a
    # stray line of the shape's colour touches it and stretches the region found.
    errors_px = np.array(errors_px)
    assert len(errors_px) > 50 and np.median(errors_px) <= 1 and (errors_px <= 3).mean() > 0.95, errors_px


def test_committed_sample_data_matches_the_generator(sample):
    generated = load_config(sample / 'sample.data')
    expected = data_file_text(np.array(generated.anchors).reshape(-1, 2), 160, 0, prefix='sample/')
    assert (REPO / 'data' / 'sample.data').read_text() == expected


def test_class_branch_learns_at_the_sample_settings(sample):
    # The class term shares its tower with objectness; at the default class gain (0.005) it sends that tower about a
    # tenth of objectness's gradient and the classes hardly move: 20 SGD steps on 16 fixed images leave the class
    # cross-entropy at 2.6, near chance (2 scales x ln 4 = 2.77). The sample's gain brings it to about 0.2.
    cfg = load_config(sample / 'sample.data')
    torch.manual_seed(0)
    model = build_model(cfg)
    loss_fn = build_loss(model, cfg)
    optimizer = build_optimizer(model, cfg)
    dataset = TrainDataset(load_split(cfg, 'train', verbose=False), cfg, augment=False)
    images, targets = collate([dataset[(0, i)] for i in range(16)])
    first = None
    for _ in range(20):
        loss, parts = loss_fn(model(images), targets)
        first = first or parts
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert abs(first['cls'] - 2 * np.log(4)) < 0.5   # starts at chance
    assert parts['cls'] < 1.0, parts
