"""labels.png and batch0.jpg (utils/data/plots.py): written, real images of the expected size, the class counts
they show, the first batch being the trainer's, and each drawn box where its target says."""
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from conftest import REPO, shared_path
from torch.utils.data import DataLoader

from utils.config import load_config
from utils.data.dataset import load_split
from utils.data.plots import (
    MAX_SCATTER,
    TILE_GAP_PX,
    anchor_sets_of,
    batch_mosaic,
    first_batch,
    plot_labels,
    plot_training_data,
)
from utils.data.train_data import EpochSampler, TrainDataset, collate
from utils.draw import class_colour
from utils.errors import CheckpointError
from utils.train.schedule import epoch_indices

COCO_ANCHORS = '12.64,19.39, 37.88,51.48, 55.71,138.31, 126.91,78.23, 131.57,214.55, 279.92,258.87'


def write_coco128_data(folder: Path, extra: str = '') -> Path:
    """A .data file for coco128's train2017 at 352x352 (no RAM cache: the tests read one batch)."""
    train = shared_path('datasets/coco128/images/train2017')
    path = folder / 'coco128.data'
    path.write_text(f'[train-configure]\nbatch_size=16\n[model-configure]\nclasses=80\nwidth=352\nheight=352\n'
                    f'anchor_num=3\nanchors={COCO_ANCHORS}\n{extra}[data-configure]\ntrain={train}\nval={train}\n'
                    f'names={REPO / "data" / "coco.names"}\ncache=none\n')
    return path


def numpy_class_counts(images_folder: Path) -> np.ndarray:
    """Boxes per class from the label file of each image that exists, read with numpy's own text reader."""
    labels_folder = images_folder.parents[1] / 'labels' / images_folder.name
    counts = np.zeros(80, np.int64)
    for image in images_folder.glob('*.jpg'):
        label = labels_folder / f'{image.stem}.txt'
        if label.exists():
            for cls in np.loadtxt(label, ndmin=2)[:, 0].astype(int):
                counts[cls] += 1
    return counts


def outline_share(mosaic: np.ndarray, targets: np.ndarray, width: int, height: int, columns: int) -> float:
    """The share of boxes whose four edges, in the tile of their image, are each drawn in the box's class colour
    over at least half their length (a line one pixel either side counts too: rounding). Independent of the
    plotting code: the tile positions follow the documented layout, the edges come straight from the target."""
    hits = 0
    for image, cls, cx, cy, w, h in targets.tolist():
        left = int(image) % columns * (width + TILE_GAP_PX)
        top = int(image) // columns * (height + TILE_GAP_PX)
        tile = mosaic[top:top + height, left:left + width]
        x1, x2 = round((cx - w / 2) * width), round((cx + w / 2) * width)
        y1, y2 = round((cy - h / 2) * height), round((cy + h / 2) * height)
        is_colour = (tile == np.array(class_colour(int(cls)))).all(2)
        rows = [max(is_colour[y, x1:x2].mean() for y in (row - 1, row, row + 1) if 0 <= y < height)
                for row in (y1, y2 - 1)]
        cols = [max(is_colour[y1:y2, x].mean() for x in (col - 1, col, col + 1) if 0 <= x < width)
                for col in (x1, x2 - 1)]
        hits += min(rows + cols) >= 0.5
    return hits / len(targets)


# ---------------------------------------------------------------------------------------------------- coco128

@pytest.fixture(scope='module')
def coco128(tmp_path_factory):
    cfg = load_config(write_coco128_data(tmp_path_factory.mktemp('coco128')))
    return cfg, TrainDataset(load_split(cfg, 'train', verbose=False), cfg, augment=True, seed=0)


def test_coco128_plots_are_written_and_labels_png_counts_what_the_label_files_hold(coco128, tmp_path):
    cfg, dataset = coco128
    first = epoch_indices(len(dataset), 0, 0, 0, 1)[:16]
    shown = plot_training_data(cfg, dataset, first, tmp_path / 'out')
    assert (shown['path'], shown['batch_path']) == (tmp_path / 'out' / 'labels.png', tmp_path / 'out' / 'batch0.jpg')
    labels_png, batch_jpg = cv2.imread(str(shown['path'])), cv2.imread(str(shown['batch_path']))
    assert labels_png.shape == (900, 1200, 3) and labels_png.std() > 20   # a real figure, not a blank page
    assert batch_jpg.shape == (4 * 352 + 3 * TILE_GAP_PX,) * 2 + (3,)     # 16 tiles of 352 px, 4 x 4
    expected = numpy_class_counts(shared_path('datasets/coco128/images/train2017'))
    np.testing.assert_array_equal(shown['class_counts'], expected)
    assert (shown['boxes'], shown['boxes_drawn']) == (929, 929)


def test_batch0_is_the_trainers_first_batch_and_its_boxes_are_drawn_where_the_targets_say(coco128):
    cfg, dataset = coco128
    first = epoch_indices(len(dataset), 0, 0, 0, 1)[:16]
    images, targets = first_batch(dataset, first)
    # the trainer's loader, as utils/train/trainer.py builds it, yields the same batch
    sampler = EpochSampler()
    sampler.set_epoch(0, first)
    loader_images, loader_targets = next(iter(DataLoader(dataset, batch_size=16, sampler=sampler, collate_fn=collate)))
    assert torch.equal(images, loader_images) and torch.equal(targets, loader_targets)
    assert len(targets) > 50   # a mosaic-heavy COCO batch: plenty of boxes to check
    before = images.clone()
    mosaic = batch_mosaic(images.numpy(), targets.numpy(), cfg.class_names)
    assert torch.equal(images, before)   # drawn on copies: the batch itself is untouched
    # crowded tiles: another box's outline or name tag covers some edges
    assert outline_share(mosaic, targets.numpy(), 352, 352, columns=4) > 0.8
    # the check fails on boxes drawn 3 px too low, on x and y swapped, and on an undrawn batch
    shifted, swapped = targets.clone(), targets.clone()
    shifted[:, 3] += 3 / 352
    swapped[:, 2:] = targets[:, [3, 2, 5, 4]]
    for wrong in (shifted, swapped, targets[:0]):
        drawn = batch_mosaic(images.numpy(), wrong.numpy(), cfg.class_names)
        assert outline_share(drawn, targets.numpy(), 352, 352, columns=4) < 0.15


# ---------------------------------------------------------------------------------------------------- hand-made

def test_known_boxes_are_drawn_on_exactly_their_pixels():
    # two black 160 x 100 images side by side; a box on each, in pixels: image 0 x 48..112, y 45..75 (class 2);
    # image 1 x 24..56, y 40..60 (class 0), in the tile that starts at 160 + gap
    images = np.zeros((2, 3, 100, 160), np.uint8)
    targets = np.array([[0, 2, 0.5, 0.6, 0.4, 0.3], [1, 0, 0.25, 0.5, 0.2, 0.2]])
    mosaic = batch_mosaic(images, targets, ['a', 'b', 'c'])
    assert mosaic.shape == (100, 2 * 160 + TILE_GAP_PX, 3)
    second = 160 + TILE_GAP_PX
    for (x1, y1, x2, y2), cls in (((48, 45, 112, 75), 2), ((second + 24, 40, second + 56, 60), 0)):
        colour = class_colour(cls)
        for edge in (mosaic[y1:y2, x1], mosaic[y1:y2, x2 - 1], mosaic[y2 - 1, x1:x2], mosaic[y1, x1:x2]):
            assert (edge == colour).all()
        # one pixel outside each edge and the inside stay black (the name tag sits above the box)
        inside = mosaic[y1 + 1:y2 - 1, x1 + 1:x2 - 1]
        for outside in (mosaic[y1:y2, x1 - 1], mosaic[y1:y2, x2], mosaic[y2, x1:x2], inside):
            assert (outside == 0).all()
        assert (mosaic[y1 - 1, x1:x1 + 4] == colour).all()   # the name tag's lowest row, below the letter


def test_a_batch_of_large_images_is_scaled_down_with_its_boxes():
    # 16 images of 640 x 480 in a 4 x 4 grid would be 2572 px wide: the tiles shrink to 477 x 358 to fit 1920
    rng = np.random.default_rng(0)
    images = np.zeros((16, 3, 480, 640), np.uint8)
    targets = np.column_stack([np.arange(16), rng.integers(0, 5, 16), rng.uniform(0.3, 0.7, (16, 2)),
                               rng.uniform(0.2, 0.5, (16, 2))])
    mosaic = batch_mosaic(images, targets, 'abcde')
    assert mosaic.shape == (4 * 358 + 3 * TILE_GAP_PX, 4 * 477 + 3 * TILE_GAP_PX, 3) and max(mosaic.shape) <= 1920
    assert outline_share(mosaic, targets, 477, 358, columns=4) == 1.0


def test_labels_png_samples_a_coco_sized_split_and_stays_fast(tmp_path):
    rng = np.random.default_rng(0)
    labels = [np.column_stack([rng.integers(0, 3, 12), rng.uniform(0.2, 0.8, (12, 4))]) for _ in range(10_000)]
    started = time.perf_counter()
    shown = plot_labels(labels, ['a', 'b', 'c'], (320, 192), tmp_path / 'labels.png', {}, 'no anchors')
    assert time.perf_counter() - started < 20   # about 2 s on a quiet core
    assert (shown['boxes'], shown['boxes_drawn']) == (120_000, MAX_SCATTER)
    np.testing.assert_array_equal(shown['class_counts'], np.bincount(np.concatenate(labels)[:, 0].astype(int)))
    assert cv2.imread(str(tmp_path / 'labels.png')).shape == (900, 1200, 3)


def test_anchors_drawn_are_the_data_files_and_an_anchor_free_model_says_it_has_none(coco128, tmp_path):
    cfg, dataset = coco128
    sets, note = anchor_sets_of(cfg)
    np.testing.assert_allclose(sets['anchors in the .data'],
                               np.array(COCO_ANCHORS.replace(' ', '').split(','), float).reshape(6, 2))
    assert note == ''
    leyolo = load_config(write_coco128_data(tmp_path, extra='model=leyolo-nano\nhead=leyolo\n'))
    sets, note = anchor_sets_of(leyolo)
    assert sets == {} and note == 'no anchors: head = leyolo is anchor-free'
    shown = plot_training_data(leyolo, dataset, [0, 1], tmp_path)
    assert shown['sizes_title'].endswith('\nno anchors: head = leyolo is anchor-free')
    assert cv2.imread(str(shown['batch_path'])).shape == (352, 2 * 352 + TILE_GAP_PX, 3)   # 2 tiles


def test_a_folder_that_cannot_be_written_is_one_error_line(tmp_path):
    (tmp_path / 'taken').write_text('a file where the output folder should be')
    with pytest.raises(CheckpointError, match=f'^{tmp_path / "taken" / "labels.png"}: cannot write it'):
        plot_labels([np.array([[0, 0.5, 0.5, 0.2, 0.2]])], ['a'], (64, 64), tmp_path / 'taken' / 'labels.png', {})
