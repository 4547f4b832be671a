"""Resize an image to the network input, the one way training, evaluation and every backend do it.

Two modes, chosen by the .data key `letterbox`:
* stretch (letterbox = 0): resize to width x height, aspect ratio not kept. Yolo-FastestV2's released weights
  were trained this way.
* letterbox (letterbox = 1): scale by min(width/w, height/h), centre, pad with `pad_value`.

`ResizeInfo` remembers the mapping so boxes can go back to original pixels:
    x_input = x_orig * ratio_x + pad_x      (and the same for y)
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

# The grey of letterbox padding and of the borders augmentation uncovers (YOLOv5's; the released LeYOLO weights
# were trained and evaluated with it).
PAD_VALUE = 114


@dataclass(frozen=True)
class ResizeInfo:
    ratio_x: float
    ratio_y: float
    pad_x: float
    pad_y: float
    orig_width: int
    orig_height: int


def resize_image(image_bgr: np.ndarray, width: int, height: int, letterbox: bool,
                 pad_value: int = PAD_VALUE) -> tuple[np.ndarray, ResizeInfo]:
    """Return the (height, width, 3) uint8 network input and how it maps to the original pixels."""
    h0, w0 = image_bgr.shape[:2]
    if not letterbox:
        resized = image_bgr if (w0, h0) == (width, height) else \
            cv2.resize(image_bgr, (width, height), interpolation=cv2.INTER_LINEAR)
        return resized, ResizeInfo(width / w0, height / h0, 0.0, 0.0, w0, h0)
    ratio = min(width / w0, height / h0)
    new_w, new_h = round(w0 * ratio), round(h0 * ratio)
    if (new_w, new_h) != (w0, h0):
        image_bgr = cv2.resize(image_bgr, (new_w, new_h), interpolation=cv2.INTER_LINEAR)
    padded, left, top = pad_centred(image_bgr, width, height, pad_value)
    return padded, ResizeInfo(ratio, ratio, float(left), float(top), w0, h0)


def pad_centred(image_bgr: np.ndarray, width: int, height: int,
                pad_value: int = PAD_VALUE) -> tuple[np.ndarray, int, int]:
    """The image centred in width x height px of grey; returns (padded image, left pad px, top pad px)."""
    h, w = image_bgr.shape[:2]
    # Split odd padding the way Ultralytics does (the extra pixel at the bottom / right), so LeYOLO's published
    # numbers reproduce.
    dw, dh = (width - w) / 2, (height - h) / 2
    top, bottom = round(dh - 0.1), round(dh + 0.1)
    left, right = round(dw - 0.1), round(dw + 0.1)
    padded = cv2.copyMakeBorder(image_bgr, top, bottom, left, right, cv2.BORDER_CONSTANT,
                                value=(pad_value, pad_value, pad_value))
    return padded, left, top


def boxes_to_original(boxes_xyxy_input: np.ndarray, info: ResizeInfo) -> np.ndarray:
    """Map (N, 4) boxes from network-input pixels back to original-image pixels, clipped to the image."""
    boxes = np.asarray(boxes_xyxy_input, dtype=np.float32).copy()
    boxes[:, [0, 2]] = (boxes[:, [0, 2]] - info.pad_x) / info.ratio_x
    boxes[:, [1, 3]] = (boxes[:, [1, 3]] - info.pad_y) / info.ratio_y
    boxes[:, [0, 2]] = boxes[:, [0, 2]].clip(0, info.orig_width)
    boxes[:, [1, 3]] = boxes[:, [1, 3]].clip(0, info.orig_height)
    return boxes


def to_input_tensor(images_hwc_bgr: list[np.ndarray]) -> np.ndarray:
    """Stack (H, W, 3) uint8 BGR images into the deployment input: float32 NCHW, BGR, scaled to 0..1."""
    batch = np.stack(images_hwc_bgr).transpose(0, 3, 1, 2)
    return np.ascontiguousarray(batch, dtype=np.float32) / 255.0
