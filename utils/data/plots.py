"""Pictures of the training data, drawn before training so that a labelling mistake shows before it costs a run:

    labels.png   instances per class; where box centres lie; box width x height in input pixels against the anchors
    batch0.jpg   the first augmented training batch, as the model gets it, with its boxes and class names

(Ultralytics' labels.jpg and train_batch0.jpg.) Labels shifted, swapped (x for y) or in the wrong unit show at once:
boxes beside their objects in batch0.jpg, centres piled on an edge or sizes far from every anchor in labels.png.
The trainer writes both into its output folder at the start of a new run; `genanchors.py --plots DIR` on demand.

Box sizes in pixels assume the stretch resize (`letterbox = 0`), as genanchors.py does; with letterbox they are an
upper bound. matplotlib runs on the Agg backend, so plots work on servers without a display.
"""
from __future__ import annotations

import io
import math
from pathlib import Path

import cv2
import matplotlib

matplotlib.use('Agg')
import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen before pyplot is imported)
import numpy as np  # noqa: E402

from utils.data.train_data import collate  # noqa: E402
from utils.draw import class_colour  # noqa: E402
from utils.errors import CheckpointError  # noqa: E402

MAX_SCATTER = 50_000        # boxes drawn in the size scatter; more are sampled down to this (the title says so)
MAX_BATCH_IMAGES = 16       # images of the first batch drawn in batch0.jpg
MAX_MOSAIC_SIDE = 1920      # batch0.jpg's tiles are scaled down to keep its sides within this many pixels
TILE_GAP_PX = 4             # white gap between the tiles of batch0.jpg
JPEG_QUALITY = 90


def plot_training_data(cfg, dataset, first_batch_indices: list, out_dir, anchor_sets: dict | None = None) -> dict:
    """Write out_dir/labels.png and out_dir/batch0.jpg for a TrainDataset (utils/data/train_data.py).

    first_batch_indices: the dataset indices of the first batch of epoch 0 (the trainer's order, see
    utils/train/schedule.epoch_indices); anchor_sets: {legend label: (k, 2) anchors in input pixels}, by default the
    .data's anchors (none for the anchor-free leyolo head). Returns what plot_labels returns, with 'batch_path'.
    """
    out_dir = Path(out_dir)
    note = ''
    if anchor_sets is None:
        anchor_sets, note = anchor_sets_of(cfg)
    shown = plot_labels(dataset.labels, cfg.class_names, (cfg.width, cfg.height), out_dir / 'labels.png',
                        anchor_sets, note, letterbox=cfg.letterbox)
    images, targets = first_batch(dataset, first_batch_indices[:MAX_BATCH_IMAGES])
    shown['batch_path'] = write_jpeg(out_dir / 'batch0.jpg', batch_mosaic(images, targets, cfg.class_names))
    return shown


def anchor_sets_of(cfg) -> tuple[dict, str]:
    """({legend label: anchors (k, 2) in input pixels}, a note for the figure) for the model of a Config."""
    if cfg.head == 'anchor':
        return {'anchors in the .data': np.reshape(cfg.anchors, (-1, 2))}, ''
    return {}, f'no anchors: head = {cfg.head} is anchor-free'


# ------------------------------------------------------------------------------------------------------ labels.png

def plot_labels(labels_list: list, class_names, input_size: tuple, path, anchor_sets: dict, anchors_note: str = '',
                letterbox: bool = False, seed: int = 0) -> dict:
    """labels.png: instances per class (bars), box centres (2-D histogram, normalised, y down as in the image) and
    box width x height in input pixels (log-log, at most MAX_SCATTER boxes) with each anchor set as marked points.
    Returns {'path', 'class_counts', 'boxes', 'boxes_drawn', 'sizes_title'} (what the figure shows)."""
    path = Path(path)
    width, height = input_size
    boxes = (np.concatenate([np.reshape(x, (-1, 5)) for x in labels_list]).astype(np.float64) if labels_list
             else np.zeros((0, 5)))
    classes = len(class_names) or (int(boxes[:, 0].max()) + 1 if len(boxes) else 0)
    counts = np.bincount(boxes[:, 0].astype(np.int64), minlength=classes)
    names = [class_names[c] if c < len(class_names) else str(c) for c in range(classes)]

    figure = plt.figure(figsize=(12, 9), dpi=100)
    grid = figure.add_gridspec(2, 2, height_ratios=(1, 1.2))
    bars = figure.add_subplot(grid[0, :])
    bars.bar(range(classes), counts, color=[_rgb(class_colour(c)) for c in range(classes)], edgecolor='black',
             linewidth=0.3)
    bars.set_xticks(range(classes), names, rotation=90, fontsize=max(5, min(9, 400 // max(classes, 1))))
    bars.set_xlim(-0.6, classes - 0.4)
    empty = int((counts == 0).sum())
    bars.set(ylabel='boxes', title=f'instances per class: {len(boxes):,} boxes in {len(labels_list):,} images'
                                   + (f', {empty} classes without boxes' if empty else ''))

    centres = figure.add_subplot(grid[1, 0])
    histogram, _, _ = np.histogram2d(boxes[:, 2], boxes[:, 1], bins=50, range=((0, 1), (0, 1)))   # rows: y
    shown = centres.imshow(histogram, extent=(0, 1, 1, 0), cmap='Blues', interpolation='nearest', aspect='equal')
    figure.colorbar(shown, ax=centres, fraction=0.046, pad=0.04, label='boxes')
    centres.set(xlabel='centre x (normalised)', ylabel='centre y (normalised)', title='box centres (all boxes)')

    sizes = figure.add_subplot(grid[1, 1])
    sizes_px = boxes[:, 3:5] * [width, height]
    drawn = sizes_px
    if len(sizes_px) > MAX_SCATTER:
        drawn = sizes_px[np.random.default_rng(seed).choice(len(sizes_px), MAX_SCATTER, replace=False)]
    # the more points, the fainter each, so that dense regions still show their density
    sizes.scatter(drawn[:, 0], drawn[:, 1], s=4, alpha=float(np.clip(2000 / max(len(drawn), 1), 0.05, 0.6)),
                  color='tab:blue', linewidths=0, rasterized=True, label='boxes')
    for (label, anchors), marker, colour in zip(anchor_sets.items(), ('X', '*', 'P', 'D'),
                                                ('tab:red', 'tab:green', 'tab:orange', 'tab:purple')):
        anchors = np.reshape(anchors, (-1, 2))
        sizes.scatter(anchors[:, 0], anchors[:, 1], s=140, marker=marker, color=colour, edgecolors='black',
                      linewidths=0.8, zorder=3, label=f'{label} ({len(anchors)})')
    if len(sizes_px):
        sizes.set(xscale='log', yscale='log')
    sample = (f'{len(drawn):,} of {len(sizes_px):,} boxes, a random sample' if len(drawn) < len(sizes_px)
              else f'{len(sizes_px):,} boxes')
    title = f'box sizes at {width}x{height}' + (' as if stretched (letterbox: smaller)' if letterbox else '')
    title += f'\n{sample}'
    if anchors_note:
        title += f'\n{anchors_note}'
    sizes.set(xlabel='width (input px)', ylabel='height (input px)', title=title)
    sizes.grid(alpha=0.3)
    sizes.legend(loc='upper left', fontsize=8)

    figure.tight_layout()
    png = io.BytesIO()
    figure.savefig(png, format='png')
    plt.close(figure)
    write_file(path, png.getvalue())
    return {'path': path, 'class_counts': counts, 'boxes': len(boxes), 'boxes_drawn': len(drawn),
            'sizes_title': title}


def _rgb(colour_bgr: tuple) -> tuple:
    return tuple(v / 255 for v in colour_bgr[::-1])


# ------------------------------------------------------------------------------------------------------ batch0.jpg

def first_batch(dataset, indices: list, epoch: int = 0) -> tuple:
    """The collated batch (images uint8 (N, 3, H, W), targets (M, 6)) of these indices, augmented as in `epoch`:
    items depend only on (seed, epoch, index), so this is the batch the trainer's loader yields."""
    return collate([dataset[(epoch, index)] for index in indices])


def mosaic_layout(num_images: int, width: int, height: int) -> tuple:
    """(columns, rows, tile width, tile height) of batch0.jpg: a near-square grid whose sides stay within
    MAX_MOSAIC_SIDE; tile (column c, row r) starts at (c * (tile width + TILE_GAP_PX), r * (tile height + gap))."""
    columns = math.ceil(math.sqrt(num_images))
    rows = math.ceil(num_images / columns)
    scale = min(1.0, (MAX_MOSAIC_SIDE - TILE_GAP_PX * (columns - 1)) / (columns * width),
                (MAX_MOSAIC_SIDE - TILE_GAP_PX * (rows - 1)) / (rows * height))
    return columns, rows, max(1, round(width * scale)), max(1, round(height * scale))


def batch_mosaic(images, targets, class_names) -> np.ndarray:
    """The batch's images (at most MAX_BATCH_IMAGES) in a grid (mosaic_layout), each box of `targets`
    [image, class, cx, cy, w, h] (normalised) drawn on its image in its class colour with the class name.
    Returns the BGR uint8 picture."""
    images = np.asarray(images)[:MAX_BATCH_IMAGES]
    targets = np.asarray(targets, dtype=np.float64).reshape(-1, 6)
    num, _, height, width = images.shape
    columns, rows, tile_w, tile_h = mosaic_layout(num, width, height)
    canvas = np.full((rows * tile_h + (rows - 1) * TILE_GAP_PX, columns * tile_w + (columns - 1) * TILE_GAP_PX, 3),
                     255, np.uint8)
    for i in range(num):
        tile = images[i].transpose(1, 2, 0)   # a channels-last batch gives a view of its pixels: draw on a copy
        tile = (cv2.resize(np.ascontiguousarray(tile), (tile_w, tile_h), interpolation=cv2.INTER_AREA)
                if (tile_w, tile_h) != (width, height) else tile.copy())
        mine = targets[targets[:, 0] == i]
        draw_boxes(tile, mine[:, 1].astype(np.int64), mine[:, 2:] * [tile_w, tile_h, tile_w, tile_h], class_names)
        top, left = (i // columns) * (tile_h + TILE_GAP_PX), (i % columns) * (tile_w + TILE_GAP_PX)
        canvas[top:top + tile_h, left:left + tile_w] = tile
    return canvas


def draw_boxes(image_bgr: np.ndarray, classes: np.ndarray, boxes_cxcywh_px: np.ndarray, class_names) -> None:
    """Draw labelled boxes in place: a 1-px outline in the class colour (no anti-aliasing: the outline's pixels
    are exactly that colour) and the class name on a tag of that colour above the box (inside it at the top)."""
    height, width = image_bgr.shape[:2]
    font_scale = 0.35
    for cls, (cx, cy, w, h) in zip(classes.tolist(), boxes_cxcywh_px.tolist()):
        colour = class_colour(cls)
        x1, x2 = _covered_pixels(cx - w / 2, cx + w / 2, width)
        y1, y2 = _covered_pixels(cy - h / 2, cy + h / 2, height)
        cv2.rectangle(image_bgr, (x1, y1), (x2, y2), colour, 1, cv2.LINE_8)
        name = class_names[cls] if cls < len(class_names) else str(cls)
        (text_w, text_h), baseline = cv2.getTextSize(name, cv2.FONT_HERSHEY_SIMPLEX, font_scale, 1)
        tag_w, tag_h = text_w + 2, text_h + baseline + 1   # the text with a pixel of margin around it
        tag_y = y1 - tag_h if y1 - tag_h >= 0 else y1 + 1
        tag_x = min(x1, max(width - tag_w, 0))
        cv2.rectangle(image_bgr, (tag_x, tag_y), (tag_x + tag_w - 1, tag_y + tag_h - 1), colour, -1)
        luminance = 0.114 * colour[0] + 0.587 * colour[1] + 0.299 * colour[2]
        cv2.putText(image_bgr, name, (tag_x + 1, tag_y + text_h), cv2.FONT_HERSHEY_SIMPLEX, font_scale,
                    (0, 0, 0) if luminance > 128 else (255, 255, 255), 1, cv2.LINE_AA)


def _covered_pixels(start: float, end: float, size: int) -> tuple[int, int]:
    """The first and last pixel a box side [start, end) covers (pixel i covers [i, i + 1)), inside 0..size-1."""
    first = min(max(math.floor(start), 0), size - 1)
    return first, min(max(math.ceil(end) - 1, first), size - 1)


def write_jpeg(path, image_bgr: np.ndarray) -> Path:
    ok, data = cv2.imencode('.jpg', image_bgr, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
    if not ok:
        raise ValueError(f'{path}: OpenCV could not encode a {image_bgr.shape} image as JPEG')
    return write_file(path, data.tobytes())


def write_file(path, data: bytes) -> Path:
    """Write a picture; a folder that cannot be made or a full disk is one line, as for the trainer's other outputs."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    except OSError as error:
        raise CheckpointError(f'{path}: cannot write it ({error.strerror})') from None
    return path
