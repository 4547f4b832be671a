"""Evaluation datasets: the split's images resized for the network, each item (uint8 CHW BGR tensor, ResizeInfo,
split index), batched by `collate_eval`.

`EvalDataset` resizes every image as the .data file says (utils/preprocess.resize_image: stretch or square
letterbox). `RectEvalDataset` gives Ultralytics' rectangular batches instead, its validation pipeline under which
LeYOLO's figures were published.

Rectangular batches. The square letterbox pads every image to width x height; rectangular batches pad less:

1. The split's images are sorted by aspect ratio (height / width) and cut, in that order, into batches of
   `batch_size`, so a batch holds images of similar shape.
2. Each batch gets one input shape, just big enough for its most extreme image plus `pad` strides, rounded up to
   a multiple of `stride` (the model's largest stride):
       every image landscape (h/w < 1):  height = ceil(max(h/w) * side / stride + pad) * stride,
                                         width  = ceil(side / stride + pad) * stride
       every image portrait (h/w > 1):   height = ceil(side / stride + pad) * stride,
                                         width  = ceil(max(w/h) * side / stride + pad) * stride
       a mix, or square images:          both = ceil(side / stride + pad) * stride
   With pad 0.5 even the long side gets half a stride of padding (side 320 -> 352).
3. Each image: the long side resized to `side` and the short side rounded up (at most `side`), INTER_LINEAR; then
   centred in its batch's shape with grey (114) padding, split as the square letterbox splits it. An image that
   would not fit (a header size that disagrees with the decoded image) is shrunk to fit, never enlarged, with a
   warning that names the file.

Ultralytics' `val` uses pad 0.5 and, for the LeYOLO figures, batch 32: the batch size changes the shapes, and so
the mAP (slightly). Boxes go back with per-axis ratios (new size / original size): exact, where Ultralytics
divides both axes by the height ratio.
"""
from __future__ import annotations

import math
import warnings

import cv2
import numpy as np
import torch

from utils.data.dataset import Split, read_image
from utils.preprocess import ResizeInfo, pad_centred, resize_image

RECT_PAD = 0.5          # strides of padding beyond the tightest shape (Ultralytics' val)
RECT_BATCH_SIZE = 32    # Ultralytics' val batch for LeYOLO's published figures
EXIF_ORIENTATION = 0x0112


def to_chw_tensor(image_hwc: np.ndarray) -> torch.Tensor:
    """An HWC uint8 image as a contiguous CHW tensor, the evaluation datasets' item."""
    return torch.from_numpy(np.ascontiguousarray(image_hwc.transpose(2, 0, 1)))


class EvalDataset(torch.utils.data.Dataset):
    """Images of a split resized for the network, for evaluation: yields (uint8 CHW BGR tensor, ResizeInfo, index)."""

    def __init__(self, split: Split, cfg):
        self.split = split
        self.width, self.height, self.letterbox = cfg.width, cfg.height, cfg.letterbox

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, index: int):
        image, info = resize_image(read_image(self.split.image_paths[index]), self.width, self.height, self.letterbox)
        return to_chw_tensor(image), info, index


def collate_eval(batch: list):
    """Items of either evaluation dataset -> (uint8 NCHW tensor, list of ResizeInfo, list of split indices)."""
    images, infos, indices = zip(*batch)
    return torch.stack(images), list(infos), list(indices)


# ---------------------------------------------------------------------------------------------- rectangular batches

def image_sizes(paths: list) -> list[tuple[int, int]]:
    """(width, height) of each image as read_image will return it, from the file header where possible.

    Reading the header (Pillow, which matplotlib brings) is far cheaper than decoding the image. EXIF
    orientations 5-8 turn the image a quarter, and OpenCV applies them, so those swap width and height.
    """
    try:
        from PIL import Image
    except ImportError:
        Image = None
    sizes = []
    for path in paths:
        size = None
        if Image is not None:
            try:
                with Image.open(path) as image:
                    width, height = image.size
                    rotated = image.getexif().get(EXIF_ORIENTATION, 1) in (5, 6, 7, 8)
                size = (height, width) if rotated else (width, height)
            except Exception:   # a format Pillow does not know: decode it below
                pass
        if size is None:
            height, width = read_image(path).shape[:2]
            size = (width, height)
        sizes.append(size)
    return sizes


def plan_batches(sizes_wh: list, side: int, stride: int, batch_size: int,
                 pad: float = RECT_PAD) -> list[tuple[list, tuple[int, int]]]:
    """[(image indices, (input height, input width) px)] per batch, batches in aspect-ratio order."""
    if batch_size <= 0:
        raise ValueError(f'batch_size must be positive, got {batch_size}')
    aspect = np.array([h / w for w, h in sizes_wh], dtype=np.float64)
    order = np.argsort(aspect, kind='stable')
    plan = []
    for start in range(0, len(order), batch_size):
        members = order[start:start + batch_size]
        lowest, highest = aspect[members].min(), aspect[members].max()
        shape = (1.0, 1.0)                       # (height, width) relative to side
        if highest < 1:
            shape = (highest, 1.0)
        elif lowest > 1:
            shape = (1.0, 1.0 / lowest)
        height, width = (int(math.ceil(s * side / stride + pad)) * stride for s in shape)
        plan.append(([int(i) for i in members], (height, width)))
    return plan


def resize_long_side(image_bgr: np.ndarray, side: int) -> np.ndarray:
    """Long side to `side`, the short side rounded up (never past `side`), aspect ratio kept."""
    h0, w0 = image_bgr.shape[:2]
    ratio = side / max(h0, w0)
    if ratio == 1:
        return image_bgr
    width, height = min(math.ceil(w0 * ratio), side), min(math.ceil(h0 * ratio), side)
    return cv2.resize(image_bgr, (width, height), interpolation=cv2.INTER_LINEAR)


def pad_into(image_bgr: np.ndarray, width: int, height: int) -> tuple[np.ndarray, tuple[int, int, int, int]]:
    """Centre the image in width x height with grey padding, shrinking it first if it does not fit.
    Returns (padded image, (left pad, top pad, image width, image height) px)."""
    h, w = image_bgr.shape[:2]
    ratio = min(width / w, height / h, 1.0)
    if ratio < 1:
        w, h = round(w * ratio), round(h * ratio)
        image_bgr = cv2.resize(image_bgr, (w, h), interpolation=cv2.INTER_LINEAR)
    padded, left, top = pad_centred(image_bgr, width, height)
    return padded, (left, top, w, h)


class RectEvalDataset(torch.utils.data.Dataset):
    """Yields (uint8 CHW BGR tensor, ResizeInfo, index) like EvalDataset, each image in the shape of its batch.
    Load it with `batch_sampler=[indices for indices, _ in plan]` of the same plan."""

    def __init__(self, split, plan: list, side: int):
        self.split, self.side = split, side
        self.shape_of = {index: shape for indices, shape in plan for index in indices}

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, index: int):
        path = self.split.image_paths[index]
        original = read_image(path)
        h0, w0 = original.shape[:2]
        height, width = self.shape_of[index]
        resized = resize_long_side(original, self.side)
        if resized.shape[0] > height or resized.shape[1] > width:
            warnings.warn(f'{path}: decodes to {w0}x{h0}, which its header did not say when the batches were '
                          f'planned; shrunk to fit its batch\'s {width}x{height} input')
        image, (left, top, w, h) = pad_into(resized, width, height)
        info = ResizeInfo(w / w0, h / h0, float(left), float(top), w0, h0)
        return to_chw_tensor(image), info, index
