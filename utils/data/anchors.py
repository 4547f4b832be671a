"""Anchor boxes from a dataset's label files: k-means on box (width, height) with 1 - IoU as the distance.

Boxes and anchors are compared as if they shared a centre, so only their sizes matter: IoU = overlap / union with
overlap = min(w1, w2) * min(h1, h2). Yolo-FastestV2 runs Lloyd's algorithm once from random boxes with mean centres;
here, with numpy throughout: k-means++ seeding, several restarts with median centres, keep the run with the best
mean IoU, then polish it by moving each centre to the size that maximises its cluster's summed IoU.
The restarts run on a random sample of at most `RESTART_SAMPLE` boxes, the polish on at most `POLISH_SAMPLE`; only
the final mean IoU is computed on all boxes, so most of the work does not grow with the data set (timings on a
COCO-sized set: bench/anchors.py, docs/benchmarks.md).
"""
from __future__ import annotations

import os
import re
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from utils.data.dataset import DatasetError, label_candidates, list_images
from utils.data.label_reader import read_label_files

RESTART_SAMPLE = 20_000   # boxes the k-means restarts run on: enough to tell a good start from a bad one
POLISH_SAMPLE = 50_000    # boxes the winner is polished on: more change the anchors by well under a pixel
GRID_BLOCK = 1024         # boxes per step of the polish's grid search: its temporaries stay in the CPU cache


def mean_best_iou(boxes_wh: np.ndarray, anchors_wh: np.ndarray) -> float:
    """Mean over boxes of the IoU with their best anchor: the figure k-means anchors are judged by."""
    return float(_iou_table(_columns(boxes_wh), anchors_wh).max(0).mean())


# The k-means works on boxes as columns (w, h, w * h) and on IoU tables laid out (anchors, boxes): numpy is fast along
# the long box axis, and slow on (boxes, k) arrays, whose rows are only k long. The figures are those of
# utils/boxes.wh_iou, operation for operation.

def _columns(boxes_wh: np.ndarray) -> tuple:
    width, height = np.ascontiguousarray(boxes_wh[:, 0]), np.ascontiguousarray(boxes_wh[:, 1])
    return width, height, width * height


def _iou_table(columns: tuple, anchors_wh: np.ndarray) -> np.ndarray:
    """(k, n) IoU of each anchor with each box, both on a common centre."""
    width, height, area = columns
    table = np.empty((len(anchors_wh), len(width)), np.result_type(width, anchors_wh))
    anchor_areas = anchors_wh[:, 0] * anchors_wh[:, 1]
    for row, (anchor_w, anchor_h), anchor_area in zip(table, anchors_wh, anchor_areas):
        np.minimum(width, anchor_w, out=row)
        row *= np.minimum(height, anchor_h)
        union = area + anchor_area
        union -= row
        row /= union
    return table


def _seed_kmeans_plus_plus(columns: tuple, k: int, rng: np.random.Generator) -> np.ndarray:
    """k-means++: each new centre is a box drawn with probability proportional to its squared distance to the
    nearest centre so far, which spreads the start over the size range."""
    boxes_wh = np.stack(columns[:2], 1)
    n = len(boxes_wh)
    centres = [boxes_wh[rng.integers(n)]]
    distance = 1 - _iou_table(columns, np.array(centres))[0]
    for _ in range(1, k):
        weights = distance ** 2
        total = weights.sum()
        index = rng.choice(n, p=weights / total) if total > 0 else rng.integers(n)
        centres.append(boxes_wh[index])
        distance = np.minimum(distance, 1 - _iou_table(columns, boxes_wh[index][None])[0])
    return np.array(centres, dtype=boxes_wh.dtype)


def _assign(columns: tuple, centres: np.ndarray) -> np.ndarray:
    """Index of each box's best-IoU centre (the first of equals); an empty cluster takes over the worst-covered box,
    so none stays empty."""
    iou = _iou_table(columns, centres)
    best = iou.max(0)
    # argmax along the short axis, without numpy's copy to a (boxes, k) layout: last centre first, so the first wins
    assignment = np.full(len(best), len(centres) - 1)
    for j in range(len(centres) - 2, -1, -1):
        np.putmask(assignment, iou[j] == best, j)
    empties = np.flatnonzero(np.bincount(assignment, minlength=len(centres)) == 0)
    for empty in empties:
        worst = int(best.argmin())
        assignment[worst] = empty
        best[worst] = 2.0   # taken
    return assignment


def _clusters(columns: tuple, assignment: np.ndarray) -> list:
    """The columns of each cluster's boxes, cluster by cluster (every cluster has boxes: see _assign)."""
    order = np.argsort(assignment.astype(np.int16), kind='stable')   # a radix sort for 16-bit integers
    cuts = np.cumsum(np.bincount(assignment))[:-1]
    return list(zip(*(np.split(column[order], cuts) for column in columns)))


def _median(values: np.ndarray):
    """np.median of a 1-d array (the mean of the two middle values for an even count), without its overhead."""
    middle = len(values) // 2
    if len(values) % 2:
        return np.partition(values, middle)[middle]
    low, high = np.partition(values, [middle - 1, middle])[middle - 1:middle + 1]
    return (low + high) / 2


def _median_kmeans(columns: tuple, centres: np.ndarray, max_iterations: int) -> np.ndarray:
    """Lloyd's algorithm with median centres: assign boxes to their best-IoU centre, move each centre to the median
    size of its boxes, until (almost) no box changes cluster. The median is less pulled by the few huge boxes than
    the mean, and gives anchors of higher mean IoU on COCO-like boxes."""
    assignment = None
    for _ in range(max_iterations):
        new_assignment = _assign(columns, centres)
        # Stop when (almost) no box changes cluster: the long tail of tiny moves is left to the polish.
        if assignment is not None and (new_assignment != assignment).sum() <= len(new_assignment) // 2000:
            break
        assignment = new_assignment
        centres = np.array([[_median(width), _median(height)] for width, height, _ in _clusters(columns, assignment)],
                           dtype=centres.dtype)
    return centres


def _best_iou_centre(columns: tuple, start_wh: np.ndarray, rounds: int = 4) -> np.ndarray:
    """The size with the highest summed IoU over the boxes, by a 9 x 9 grid search in log space around `start_wh`,
    narrowed three times per round (final step about 0.4 %)."""
    width, height, area = (c.astype(np.float64) for c in columns)
    log_centre, span = np.log(start_wh), 0.5
    for _ in range(rounds):
        offsets = np.linspace(-span, span, 9)
        widths, heights = np.exp(log_centre[0] + offsets), np.exp(log_centre[1] + offsets)
        best = int(_summed_grid_iou(width, height, area, widths, heights).argmax())
        log_centre = np.log([widths[best % 9], heights[best // 9]])
        span /= 3
    return np.exp(log_centre)


def _summed_grid_iou(width, height, area, widths, heights) -> np.ndarray:
    """(81,) summed IoU over the boxes of each candidate (widths[j], heights[i]), candidate 9 * i + j. The boxes
    go in blocks whose (81, block) tables stay in the CPU cache."""
    areas = (heights[:, None] * widths[None, :]).reshape(81, 1)
    sums = np.zeros(81)
    for begin in range(0, len(width), GRID_BLOCK):
        block = slice(begin, begin + GRID_BLOCK)
        # a candidate's overlap with a box is the product of the two minima
        overlap = (np.minimum(height[block], heights[:, None])[:, None, :]
                   * np.minimum(width[block], widths[:, None])[None, :, :]).reshape(81, -1)
        union = area[block] + areas
        union -= overlap
        overlap /= union
        sums += overlap.sum(1)
    return sums


def _polish(columns: tuple, centres: np.ndarray, max_iterations: int = 30) -> np.ndarray:
    """Alternate best-IoU assignment and the IoU-maximising centre of each cluster. Each step can only raise the
    mean best IoU (the figure anchors are judged by), which neither mean nor median centres guarantee."""
    for _ in range(max_iterations):
        assignment = _assign(columns, centres)
        moved = np.stack([_best_iou_centre(cluster, centre)
                          for cluster, centre in zip(_clusters(columns, assignment), centres)])
        if np.allclose(moved, centres, rtol=1e-4):
            return moved
        centres = moved
    return centres


def kmeans_anchors(boxes_wh: np.ndarray, k: int, restarts: int = 10, seed: int = 0,
                   max_iterations: int = 300) -> tuple[np.ndarray, float]:
    """Best of `restarts` k-means++ runs, polished. Returns (anchors (k, 2) in the units of `boxes_wh`, sorted by
    area, mean best IoU over all boxes)."""
    boxes_wh = np.asarray(boxes_wh, dtype=np.float64)
    if boxes_wh.ndim != 2 or boxes_wh.shape[1] != 2 or not (boxes_wh > 0).all():
        raise ValueError('boxes_wh must be an (n, 2) array of positive widths and heights')
    if len(boxes_wh) < k:
        raise ValueError(f'{len(boxes_wh)} boxes cannot make {k} anchors')
    rng = np.random.default_rng(seed)
    # float32 halves the memory traffic and is ample for IoU; the restart sample is the start of the polish sample
    sample = _columns(boxes_wh[rng.permutation(len(boxes_wh))[:POLISH_SAMPLE]].astype(np.float32))
    restart_sample = tuple(c[:RESTART_SAMPLE] for c in sample)
    seeds = [_seed_kmeans_plus_plus(restart_sample, k, rng) for _ in range(restarts)]

    def restart(seed_centres):
        centres = _median_kmeans(restart_sample, seed_centres, max_iterations)
        return centres, float(_iou_table(restart_sample, centres).max(0).mean())

    # the restarts are independent numpy work (which releases the GIL): one thread per core
    with ThreadPoolExecutor(max(1, min(restarts, os.cpu_count() or 1))) as pool:
        results = list(pool.map(restart, seeds))
    best, best_iou = None, -1.0
    for centres, score in results:   # in restart order: the first of equal scores wins
        if score > best_iou:
            best, best_iou = centres, score
    best = _polish(sample, best).astype(np.float64)
    best = best[np.argsort(best[:, 0] * best[:, 1], kind='stable')]
    return best, mean_best_iou(boxes_wh, best)


def anchor_fitness(boxes_wh_px: np.ndarray, anchors_px: np.ndarray) -> dict:
    """How well anchors cover boxes (both in input pixels):
    mean_iou: mean over boxes of the best anchor IoU;
    recall_iou50: share of boxes whose best anchor IoU is above 0.5 (best possible recall at IoU 0.5);
    recall_ratio4: YOLOv5's check, share of boxes with an anchor within a factor 4 in both width and height."""
    columns = _columns(boxes_wh_px)
    iou = _iou_table(columns, anchors_px).max(0)
    width, height, _ = columns
    best_side = np.zeros(len(width))   # per box, over anchors: the worse of the two side ratios (<= 1) at its best
    for anchor_w, anchor_h in anchors_px:
        width_ratio, height_ratio = width / anchor_w, height / anchor_h
        worst_side = np.minimum(np.minimum(width_ratio, 1 / width_ratio), np.minimum(height_ratio, 1 / height_ratio))
        np.maximum(best_side, worst_side, out=best_side)
    return {'mean_iou': float(iou.mean()), 'recall_iou50': float((iou > 0.5).mean()),
            'recall_ratio4': float((best_side > 0.25).mean())}


# ------------------------------------------------------------------------------------------------------ reading

def read_box_sizes(source: Path, classes: int | None = None) -> tuple[np.ndarray, str]:
    """Normalised (w, h) of every box in the label files of a split's images (the images need not exist).

    Returns (float64 (n, 2), a one-paragraph report). A label file that breaks a rule is left out and reported.
    """
    image_paths = list_images(source)
    label_paths = [next((p for p in label_candidates(image) if os.path.isfile(p)), None) for image in image_paths]
    found = [p for p in label_paths if p is not None]
    labels, _, problems = read_label_files(found, classes)
    boxes_wh = labels[:, 3:5].astype(np.float64)
    without_labels = len(label_paths) - len(found)
    report = (f'{source}: {len(image_paths)} images, {len(boxes_wh)} boxes, {without_labels} without a label file, '
              f'{len(problems)} label files left out')
    report += ''.join(f'\n  left out: {p}' for p in problems[:5])
    if len(boxes_wh) == 0:
        raise DatasetError(f'{source}: no boxes to cluster ({len(image_paths)} images, {without_labels} without a '
                           f'label file, {len(problems)} label files left out'
                           + (f'; the first problem: {problems[0]}' if problems else '') + ')')
    return boxes_wh, report


# ------------------------------------------------------------------------------------------------------ writing

def format_anchors(anchors_px: np.ndarray) -> str:
    """'w,h, w,h, ...' with two decimals: the form of the .data key `anchors` and of anchors{k}.txt."""
    return ', '.join(f'{w:.2f},{h:.2f}' for w, h in anchors_px)


def write_anchor_file(folder: Path, anchors_px: np.ndarray, mean_iou: float) -> Path:
    """Yolo-FastestV2's anchors{k}.txt: the anchors on line 1, the mean IoU on line 2."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f'anchors{len(anchors_px)}.txt'
    path.write_text(f'{format_anchors(anchors_px)}\n{mean_iou:f}\n')
    return path


def update_data_file(path: Path, anchors_px: np.ndarray, after_key: str = 'anchor_num') -> None:
    """Set `anchors = ...` in a .data file, leaving every other byte as it was (line endings and comments included).

    Without an `anchors` line, one is added after the `after_key` line (or at the end of the file).
    """
    path = Path(path)
    raw = path.read_bytes()
    bom = b'\xef\xbb\xbf' if raw.startswith(b'\xef\xbb\xbf') else b''
    lines = raw[len(bom):].decode('utf-8').splitlines(keepends=True)
    value = format_anchors(anchors_px)
    for i, line in enumerate(lines):
        # key = value [# comment] [line end]: keep all but the value
        match = re.match(r'^(\s*anchors\s*=\s*)(.*?)(\s*#.*)?(\r\n|\n|\r)?$', line, re.S)
        if match:
            lines[i] = match.group(1) + value + (match.group(3) or '') + (match.group(4) or '')
            break
    else:
        newline = '\r\n' if any(line.endswith('\r\n') for line in lines) else '\n'
        position = next((i + 1 for i, line in enumerate(lines) if re.match(rf'^\s*{after_key}\s*=', line)),
                        len(lines))
        if position == len(lines) and lines and not lines[-1].endswith(('\n', '\r')):
            lines[-1] += newline
        lines.insert(position, f'anchors={value}{newline}')
    path.write_bytes(bom + ''.join(lines).encode('utf-8'))
