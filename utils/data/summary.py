"""Warnings about a split's labels: the patterns that usually mean a labelling mistake rather than a hard dataset.

Printed with a split's summary (utils/data/dataset.check_split), one line each, counted, with an example:
    a class with no boxes                     the class list or the class ids are off (a .names file of another
                                              dataset, ids counted from 1), or the class is missing from the data
    boxes smaller than 2 x 2 input pixels     a stray click in the labelling tool, or coordinates in the wrong unit
    more than 30 % background images          label files in the wrong folder, so their images count as empty
    label files whose every box lies outside  pixel coordinates written where normalised ones belong; such a file
    the image (beyond 0..1)                   breaks the label rules and its image is left out (parse_labels gives
                                              it the reason `ALL_OUTSIDE_RULE`), this counts them

Box sizes in input pixels assume the stretch resize (`letterbox = 0`): letterboxing makes boxes smaller still, so with
letterbox the count of tiny boxes is a lower bound.
"""
from __future__ import annotations

import numpy as np

TINY_BOX_PX = 2.0                  # a box narrower AND lower than this at the input size is too small to be real
MAX_BACKGROUND_SHARE = 0.3         # more background images than this share usually means labels went missing
ALL_OUTSIDE_RULE = 'every box lies outside the image'
NAMES_SHOWN = 10                   # how many empty classes a warning names


def boxes_outside(boxes_cxcywh_norm: np.ndarray, tolerance: float) -> np.ndarray:
    """(n,) bool: whether each box misses the image [0, 1] x [0, 1] entirely, by more than `tolerance`."""
    centres, half_sizes = boxes_cxcywh_norm[:, :2], np.abs(boxes_cxcywh_norm[:, 2:]) / 2
    return ((centres - half_sizes >= 1 + tolerance) | (centres + half_sizes <= -tolerance)).any(1)


def label_warnings(image_paths: list, label_paths: list, labels: list, left_out: list, classes: int | None,
                   class_names=(), input_size: tuple | None = None) -> list:
    """The warning lines (without a 'warning:' prefix) for a checked split.

    image_paths, label_paths (str or None: no label file), labels: per usable image; left_out: the
    'file[:line]: reason' lines of the images left out; classes None skips the empty-class check, input_size
    (width, height) None the tiny-box check.
    """
    counts = np.array([len(x) for x in labels], dtype=np.int64)
    boxes = np.concatenate(labels).reshape(-1, 5) if labels else np.zeros((0, 5), np.float32)
    warnings = []
    if classes is not None:
        warnings += _empty_classes(boxes, classes, class_names)
    if input_size is not None:
        warnings += _tiny_boxes(boxes, counts, image_paths, label_paths, input_size)
    warnings += _many_backgrounds(counts, image_paths, label_paths)
    warnings += _all_outside(left_out)
    return warnings


def _empty_classes(boxes: np.ndarray, classes: int, class_names) -> list:
    per_class = np.bincount(boxes[:, 0].astype(np.int64), minlength=classes)
    empty = np.flatnonzero(per_class[:classes] == 0).tolist()
    if not empty:
        return []
    named = [f'{c} "{class_names[c]}"' if c < len(class_names) else str(c) for c in empty[:NAMES_SHOWN]]
    more = f' and {len(empty) - NAMES_SHOWN} more' if len(empty) > NAMES_SHOWN else ''
    return [f'classes with no boxes: {len(empty)} of {classes}: {", ".join(named)}{more}']


def _tiny_boxes(boxes: np.ndarray, counts: np.ndarray, image_paths: list, label_paths: list,
                input_size: tuple) -> list:
    width, height = input_size
    sizes_px = boxes[:, 3:5] * np.array([width, height], dtype=np.float32)
    tiny = np.flatnonzero((sizes_px < TINY_BOX_PX).all(1))
    if not len(tiny):
        return []
    image = int(np.searchsorted(np.cumsum(counts), tiny[0], side='right'))   # the image that holds the first one
    w, h = sizes_px[tiny[0]]
    return [f'boxes smaller than {TINY_BOX_PX:g}x{TINY_BOX_PX:g} px at the {width}x{height} input: {len(tiny)} of '
            f'{len(boxes)}, e.g. {label_paths[image] or image_paths[image]}: {w:.2f}x{h:.2f} px']


def _many_backgrounds(counts: np.ndarray, image_paths: list, label_paths: list) -> list:
    backgrounds = np.flatnonzero(counts == 0)
    if not len(counts) or len(backgrounds) <= MAX_BACKGROUND_SHARE * len(counts):
        return []
    without_file = [i for i in backgrounds if label_paths[i] is None]
    text = (f'background images (no boxes): {len(backgrounds)} of {len(counts)} '
            f'({len(backgrounds) / len(counts):.0%}, more than {MAX_BACKGROUND_SHARE:.0%}); ')
    if without_file:
        return [text + f'{len(without_file)} have no label file (looked for in the mirror "labels" folder, then '
                       f'beside the image), e.g. {image_paths[without_file[0]]}']
    return [text + f'all have a label file, e.g. {label_paths[backgrounds[0]]} is empty']


def _all_outside(left_out: list) -> list:
    # a left-out line reads 'label file:line: ALL_OUTSIDE_RULE ...': the part before the rule names the file
    marker = f': {ALL_OUTSIDE_RULE}'
    files = [line[:line.rfind(marker)] for line in left_out if marker in line]
    if not files:
        return []
    return [f'label files with every box outside the image (coordinates beyond 0..1: pixels, not normalised?): '
            f'{len(files)}, their images left out, e.g. {files[0]}']
