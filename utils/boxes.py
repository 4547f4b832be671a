"""Box geometry in one place: IoU (pairwise-broadcast, centre-aligned sizes, complete IoU) and format changes.

Formats are in the names: `xyxy` corners, `cxcywh` centre and size; `_px` pixels, `_norm` fractions of the image.
Every function but `ciou` takes numpy arrays or torch tensors alike and returns the same kind; torch is never
imported here, so numpy-only callers (genanchors.py) start fast.
"""
from __future__ import annotations

import math

import numpy as np

EPS = 1e-9


def _xp(array):
    """The array library `array` belongs to: numpy, or torch for a tensor."""
    if isinstance(array, np.ndarray):
        return np
    import torch  # only a tensor gets here, so torch is loaded already
    return torch


def box_iou(boxes1_xyxy, boxes2_xyxy, eps: float = EPS):
    """IoU of boxes that broadcast against each other, (..., 4) -> (...).
    All pairs of two sets: `box_iou(a[:, None], b[None])` -> (len(a), len(b))."""
    xp = _xp(boxes1_xyxy)
    top_left = xp.maximum(boxes1_xyxy[..., :2], boxes2_xyxy[..., :2])
    bottom_right = xp.minimum(boxes1_xyxy[..., 2:], boxes2_xyxy[..., 2:])
    inter = (bottom_right - top_left).clip(min=0).prod(-1)
    area1 = (boxes1_xyxy[..., 2:] - boxes1_xyxy[..., :2]).clip(min=0).prod(-1)
    area2 = (boxes2_xyxy[..., 2:] - boxes2_xyxy[..., :2]).clip(min=0).prod(-1)
    return inter / (area1 + area2 - inter + eps)


def wh_iou(boxes_wh, anchors_wh):
    """(n, 2) sizes vs (k, 2) sizes -> (n, k) IoU of the boxes placed on a common centre (k-means anchors)."""
    xp = _xp(boxes_wh)
    # In place: k-means runs this hundreds of times on (50k, k) arrays, where every temporary costs time.
    overlap = xp.minimum(boxes_wh[:, None, 0], anchors_wh[None, :, 0])
    overlap *= xp.minimum(boxes_wh[:, None, 1], anchors_wh[None, :, 1])
    union = (boxes_wh[:, 0] * boxes_wh[:, 1])[:, None] + (anchors_wh[:, 0] * anchors_wh[:, 1])[None, :]
    union -= overlap
    overlap /= union
    return overlap


def ciou(boxes1_cxcywh, boxes2_cxcywh, eps: float = 1e-7):
    """Complete IoU (Zheng et al. 2020) of matching rows of two torch tensors (..., 4):
    IoU - centre distance^2 / enclosing diagonal^2 - alpha * v, alpha held constant for the gradient."""
    (x1, y1, w1, h1), (x2, y2, w2, h2) = boxes1_cxcywh.unbind(-1), boxes2_cxcywh.unbind(-1)
    inter_w = ((x1 + w1 / 2).minimum(x2 + w2 / 2) - (x1 - w1 / 2).maximum(x2 - w2 / 2)).clamp(min=0)
    inter_h = ((y1 + h1 / 2).minimum(y2 + h2 / 2) - (y1 - h1 / 2).maximum(y2 - h2 / 2)).clamp(min=0)
    inter = inter_w * inter_h
    iou = inter / (w1 * h1 + w2 * h2 - inter + eps)
    enclose_w = (x1 + w1 / 2).maximum(x2 + w2 / 2) - (x1 - w1 / 2).minimum(x2 - w2 / 2)
    enclose_h = (y1 + h1 / 2).maximum(y2 + h2 / 2) - (y1 - h1 / 2).minimum(y2 - h2 / 2)
    diagonal2 = enclose_w ** 2 + enclose_h ** 2 + eps
    centre2 = (x2 - x1) ** 2 + (y2 - y1) ** 2
    v = (4 / math.pi ** 2) * ((w2 / (h2 + eps)).atan() - (w1 / (h1 + eps)).atan()) ** 2
    alpha = (v / (v - iou + (1 + eps))).detach()
    return iou - centre2 / diagonal2 - alpha * v


def xyxy_to_cxcywh(boxes_xyxy):
    xp = _xp(boxes_xyxy)
    return xp.concatenate(((boxes_xyxy[..., :2] + boxes_xyxy[..., 2:]) / 2, boxes_xyxy[..., 2:] - boxes_xyxy[..., :2]),
                          axis=-1)


def cxcywh_to_xyxy(boxes_cxcywh):
    xp = _xp(boxes_cxcywh)
    half = boxes_cxcywh[..., 2:] / 2
    return xp.concatenate((boxes_cxcywh[..., :2] - half, boxes_cxcywh[..., :2] + half), axis=-1)


def _xyxy_scale(boxes, width: float, height: float):
    scale = [width, height, width, height]
    return np.asarray(scale, boxes.dtype) if isinstance(boxes, np.ndarray) else boxes.new_tensor(scale)


def norm_to_px(boxes_norm, width: float, height: float):
    """Boxes (..., 4) in fractions of the image (either format) -> pixels of a width x height image."""
    return boxes_norm * _xyxy_scale(boxes_norm, width, height)


def px_to_norm(boxes_px, width: float, height: float):
    """The inverse of `norm_to_px`."""
    return boxes_px / _xyxy_scale(boxes_px, width, height)
