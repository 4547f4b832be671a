"""Training augmentations that move the boxes with the pixels, exactly.

Every geometric transform here is an axis-aligned scale + shift (no rotation or shear), so a box maps to a box
without approximation: transform its two corners. Boxes travel as `boxes_xyxy_px` (n, 4) float32 in the pixels
of the image they belong to, with their `classes` (n,) beside them; `labels_to_px` / `px_to_labels` convert from
and to the dataset's normalised [class, cx, cy, w, h] rows.

After a transform crops the image, boxes are clipped to it and a leftover is dropped when it is thinner than
`MIN_SIDE_PX` or keeps less than `MIN_AREA_KEPT` of its area: a sliver of an object teaches the detector noise.

The pipeline (used by utils/data/train_data.py), as in YOLOv5:
    mosaic of 4 images (probability `mosaic`) or one image resized to the input (stretch or letterbox)
    -> random scale + translate (`scale`, `translate`) -> HSV jitter (`hsv_h/s/v`) -> horizontal flip (`flip_lr`)
"""
from __future__ import annotations

import cv2
import numpy as np

from utils.boxes import cxcywh_to_xyxy, norm_to_px, px_to_norm, xyxy_to_cxcywh
from utils.preprocess import PAD_VALUE, resize_image

MIN_SIDE_PX = 2.0        # a clipped box thinner than this (in output pixels) is dropped
MIN_AREA_KEPT = 0.1      # a clipped box keeping less than this fraction of its area is dropped


def labels_to_px(labels: np.ndarray, width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
    """(n, 5) [class, cx, cy, w, h] normalised -> (classes (n,), boxes_xyxy_px (n, 4)) for a width x height image."""
    labels = np.asarray(labels, dtype=np.float32).reshape(-1, 5)
    return labels[:, 0].copy(), cxcywh_to_xyxy(norm_to_px(labels[:, 1:], width, height))


def px_to_labels(classes: np.ndarray, boxes_xyxy_px: np.ndarray, width: int, height: int) -> np.ndarray:
    """The inverse of `labels_to_px`: (n, 5) float32 [class, cx, cy, w, h] normalised to the image size."""
    boxes = np.asarray(boxes_xyxy_px, dtype=np.float32).reshape(-1, 4)
    labels = np.empty((len(boxes), 5), dtype=np.float32)
    labels[:, 0] = classes
    labels[:, 1:] = px_to_norm(xyxy_to_cxcywh(boxes), width, height)
    return labels


def clip_and_filter(classes: np.ndarray, boxes_xyxy_px: np.ndarray, x0: float, y0: float, x1: float, y1: float
                    ) -> tuple[np.ndarray, np.ndarray]:
    """Clip boxes to the window [x0, x1] x [y0, y1]; drop leftovers that are too thin or lost most of their area."""
    boxes = boxes_xyxy_px.reshape(-1, 4)
    clipped = boxes.copy()
    clipped[:, [0, 2]] = clipped[:, [0, 2]].clip(x0, x1)
    clipped[:, [1, 3]] = clipped[:, [1, 3]].clip(y0, y1)
    w, h = clipped[:, 2] - clipped[:, 0], clipped[:, 3] - clipped[:, 1]
    area_before = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    keep = (w >= MIN_SIDE_PX) & (h >= MIN_SIDE_PX) & (w * h >= MIN_AREA_KEPT * np.maximum(area_before, 1e-9))
    return classes[keep], clipped[keep]


def resize_to_fit(image_bgr: np.ndarray, width: int, height: int, letterbox: bool) -> np.ndarray:
    """The image at training scale, without padding: stretched to width x height, or (letterbox) scaled to fit
    inside it keeping the aspect ratio. Box coordinates normalised to the image are unchanged by this."""
    h0, w0 = image_bgr.shape[:2]
    if letterbox:
        ratio = min(width / w0, height / h0)
        size = (max(1, round(w0 * ratio)), max(1, round(h0 * ratio)))
    else:
        size = (width, height)
    if size == (w0, h0):
        return image_bgr
    return cv2.resize(image_bgr, size, interpolation=cv2.INTER_LINEAR)


def to_input_size(image_bgr: np.ndarray, labels: np.ndarray, width: int, height: int, letterbox: bool
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One image to the network input exactly as evaluation does it (utils/preprocess.resize_image).
    Returns (image width x height, classes, boxes_xyxy_px in that image)."""
    resized, info = resize_image(image_bgr, width, height, letterbox, PAD_VALUE)
    classes, boxes = labels_to_px(labels, info.orig_width, info.orig_height)
    boxes[:, [0, 2]] = boxes[:, [0, 2]] * info.ratio_x + info.pad_x
    boxes[:, [1, 3]] = boxes[:, [1, 3]] * info.ratio_y + info.pad_y
    return resized, classes, boxes


def mosaic4(tiles: list, width: int, height: int, rng: np.random.Generator
            ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Four (image, labels) pairs -> one (2*height, 2*width) canvas, a tile in each quadrant around a random centre.

    Each tile is placed with one corner on the centre and cropped only where it leaves the canvas, so a box needs
    only a shift and a clip to that tile's visible window. Returns (canvas, classes, boxes_xyxy_px on the canvas).
    """
    canvas = np.full((2 * height, 2 * width, 3), PAD_VALUE, dtype=np.uint8)
    xc = int(rng.uniform(0.5 * width, 1.5 * width))
    yc = int(rng.uniform(0.5 * height, 1.5 * height))
    all_classes, all_boxes = [], []
    for quadrant, (image, labels) in enumerate(tiles):
        h, w = image.shape[:2]
        # the tile's window on the canvas: it touches the centre with its inner corner
        left = xc - w if quadrant in (0, 2) else xc
        top = yc - h if quadrant in (0, 1) else yc
        x0, y0 = max(left, 0), max(top, 0)
        x1, y1 = min(left + w, 2 * width), min(top + h, 2 * height)
        canvas[y0:y1, x0:x1] = image[y0 - top:y1 - top, x0 - left:x1 - left]
        classes, boxes = labels_to_px(labels, w, h)
        boxes += np.array([left, top, left, top], dtype=np.float32)
        classes, boxes = clip_and_filter(classes, boxes, x0, y0, x1, y1)
        all_classes.append(classes)
        all_boxes.append(boxes)
    return canvas, np.concatenate(all_classes), np.concatenate(all_boxes).reshape(-1, 4)


def random_scale_translate(image: np.ndarray, classes: np.ndarray, boxes_xyxy_px: np.ndarray, width: int,
                           height: int, scale: float, translate: float, rng: np.random.Generator
                           ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Scale about the image centre by a factor in [1 - scale, 1 + scale], shift by up to `translate` of the output
    size, and cut a width x height output whose centre is the input's centre (so a 2x mosaic canvas is cropped to
    its middle). Pixels and boxes go through the same 2x3 matrix; boxes are then clipped and filtered."""
    in_h, in_w = image.shape[:2]
    s = rng.uniform(1 - scale, 1 + scale)
    shift_x = rng.uniform(-translate, translate) * width
    shift_y = rng.uniform(-translate, translate) * height
    # x_out = s * (x_in - in_w / 2) + width / 2 + shift_x  (and the same for y)
    matrix = np.array([[s, 0, width / 2 + shift_x - s * in_w / 2],
                       [0, s, height / 2 + shift_y - s * in_h / 2]], dtype=np.float64)
    if np.allclose(matrix, [[1, 0, 0], [0, 1, 0]]):
        out = image
    else:
        # warpAffine maps pixel indices (pixel centres at i + 0.5 in box coordinates): shift by (s - 1) / 2
        # so the pixels land exactly where the boxes do.
        matrix_idx = matrix.copy()
        matrix_idx[:, 2] += (s - 1) / 2
        out = cv2.warpAffine(image, matrix_idx, (width, height), flags=cv2.INTER_LINEAR,
                             borderMode=cv2.BORDER_CONSTANT, borderValue=(PAD_VALUE,) * 3)
    boxes = boxes_xyxy_px.reshape(-1, 4).astype(np.float64) * s
    boxes[:, [0, 2]] += matrix[0, 2]
    boxes[:, [1, 3]] += matrix[1, 2]
    classes, boxes = clip_and_filter(classes, boxes.astype(np.float32), 0, 0, width, height)
    return out, classes, boxes


def hsv_jitter(image_bgr: np.ndarray, gain_h: float, gain_s: float, gain_v: float, rng: np.random.Generator
               ) -> np.ndarray:
    """Random hue shift and saturation / value gains (YOLOv5's recipe), through lookup tables. Moves no pixel."""
    if not (gain_h or gain_s or gain_v):
        return image_bgr
    r = rng.uniform(-1, 1, 3) * np.array([gain_h, gain_s, gain_v]) + 1
    hue, sat, val = cv2.split(cv2.cvtColor(image_bgr, cv2.COLOR_BGR2HSV))
    x = np.arange(256, dtype=np.float32)
    lut_hue = ((x * r[0]) % 180).astype(np.uint8)          # OpenCV's 8-bit hue runs 0..179
    lut_sat = np.clip(x * r[1], 0, 255).astype(np.uint8)
    lut_val = np.clip(x * r[2], 0, 255).astype(np.uint8)
    hsv = cv2.merge((cv2.LUT(hue, lut_hue), cv2.LUT(sat, lut_sat), cv2.LUT(val, lut_val)))
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR)


def flip_lr(image: np.ndarray, boxes_xyxy_px: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mirror left-right: pixel column x goes to width - 1 - x, so a box edge at x goes to width - x."""
    width = image.shape[1]
    boxes = boxes_xyxy_px.copy()
    boxes[:, [0, 2]] = width - boxes_xyxy_px[:, [2, 0]]
    return np.ascontiguousarray(image[:, ::-1]), boxes
