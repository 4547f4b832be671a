"""The training dataset: images with augmentation (utils/data/augment.py) and the batch collate function.

Each item is (image uint8 (3, H, W) BGR, labels float32 (n, 5) [class, cx, cy, w, h] normalised). Images stay uint8
all the way into the model (it divides by 255 itself), which keeps worker -> main process transfers 4x smaller.

Items are asked for as (epoch, index) pairs, which `EpochSampler` yields: the DataLoader's workers persist across
epochs, so the epoch must travel with each request. Randomness is drawn from a generator seeded by
(seed, epoch, index), not from the worker's global state, so a resumed run sees the same augmentations as an
uninterrupted one, whatever the number of workers.
"""
from __future__ import annotations

import os

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler
from tqdm import tqdm

from utils.data.augment import (
    flip_lr,
    hsv_jitter,
    mosaic4,
    px_to_labels,
    random_scale_translate,
    resize_to_fit,
    to_input_size,
)
from utils.data.dataset import read_image
from utils.errors import DatasetError


class TrainDataset(Dataset):
    def __init__(self, split, cfg, augment: bool = True, seed: int = 0):
        self.image_paths = list(split.image_paths)
        self.labels = [np.asarray(labels, dtype=np.float32).reshape(-1, 5) for labels in split.labels]
        if not self.image_paths:
            raise DatasetError(f'{cfg.where("train")}: the training split has no images')
        self.width, self.height, self.letterbox = cfg.width, cfg.height, cfg.letterbox
        self.augment = augment
        self.hsv_gains = (cfg.hsv_h, cfg.hsv_s, cfg.hsv_v)
        self.flip_prob, self.scale, self.translate = cfg.flip_lr, cfg.scale, cfg.translate
        self.mosaic_prob = cfg.mosaic if augment else 0.0
        self.epochs, self.close_mosaic = cfg.epochs, cfg.close_mosaic
        self.seed = seed
        # RAM cache of images already resized to training scale. Filled here, in the main process, before the
        # DataLoader forks its workers: each worker then reads the same copy-on-write pages instead of its own.
        self.cache = None
        if cfg.cache == 'ram' or (cfg.cache == 'auto' and self.cache_bytes() <= ram_cache_budget()):
            self.cache = [self._load_from_disk(i) for i in tqdm(range(len(self.image_paths)), desc='caching images',
                                                                 disable=len(self.image_paths) < 1000)]

    def __len__(self) -> int:
        return len(self.image_paths)

    def cache_bytes(self) -> int:
        """What the RAM cache holds at most: every image resized to fit width x height, 3 bytes a pixel."""
        return len(self.image_paths) * self.width * self.height * 3

    def mosaic_active(self, epoch: int) -> bool:
        # The last `close_mosaic` epochs train on whole, undistorted images like those seen at evaluation.
        return self.mosaic_prob > 0 and epoch < self.epochs - self.close_mosaic

    def _load_from_disk(self, index: int) -> np.ndarray:
        return resize_to_fit(read_image(self.image_paths[index]), self.width, self.height, self.letterbox)

    def load_resized(self, index: int) -> np.ndarray:
        """The image at training scale (stretched, or fitted inside width x height keeping its aspect ratio)."""
        return self.cache[index] if self.cache is not None else self._load_from_disk(index)

    def __getitem__(self, epoch_and_index: tuple[int, int]):
        epoch, index = epoch_and_index
        rng = np.random.default_rng((self.seed, epoch, index))
        if self.augment and self.mosaic_active(epoch) and rng.random() < self.mosaic_prob:
            others = rng.integers(0, len(self), 3)
            tiles = [(self.load_resized(i), self.labels[i]) for i in [index, *others]]
            image, classes, boxes = mosaic4(tiles, self.width, self.height, rng)
        else:
            image, classes, boxes = to_input_size(self.load_resized(index), self.labels[index],
                                                  self.width, self.height, self.letterbox)
        if self.augment:
            image, classes, boxes = random_scale_translate(image, classes, boxes, self.width, self.height,
                                                           self.scale, self.translate, rng)
            image = hsv_jitter(image, *self.hsv_gains, rng)
            if rng.random() < self.flip_prob:
                image, boxes = flip_lr(image, boxes)
        labels = px_to_labels(classes, boxes, self.width, self.height)
        # (3, H, W) as a view of the HWC pixels: channels-last strides, which collate keeps and the model wants
        return torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1), torch.from_numpy(labels)


class EpochSampler(Sampler):
    """The sampler of a persistent DataLoader: yields (epoch, index) for the order given by the last `set_epoch`.
    It runs in the main process, so setting it before each `iter(loader)` reaches workers that started epochs ago."""

    def __init__(self):
        self.items: list[tuple[int, int]] = []

    def set_epoch(self, epoch: int, indices: list[int]) -> None:
        self.items = [(epoch, index) for index in indices]

    def __iter__(self):
        return iter(self.items)

    def __len__(self) -> int:
        return len(self.items)


def collate(batch) -> tuple[torch.Tensor, torch.Tensor]:
    """[(image (3,H,W) uint8, labels (n,5))] -> (images uint8 (N,3,H,W) channels-last, targets (M,6)
    [image, class, cx, cy, w, h])."""
    images = torch.stack([image.permute(1, 2, 0) for image, _ in batch]).permute(0, 3, 1, 2)   # NHWC memory
    targets = [torch.cat([torch.full((len(labels), 1), float(i)), labels], dim=1)
               for i, (_, labels) in enumerate(batch)]
    return images, torch.cat(targets) if targets else torch.zeros((0, 6))


def ram_cache_budget() -> int:
    """Bytes `cache = auto` may use in this process: min(2 GiB, a quarter of the free memory), shared by the
    training processes of this machine (each DDP process holds its own cache)."""
    try:
        free = os.sysconf('SC_AVPHYS_PAGES') * os.sysconf('SC_PAGE_SIZE')
    except (ValueError, OSError, AttributeError):   # not Linux: stay within the fixed cap
        free = 8 << 30
    return min(2 << 30, free // 4) // int(os.environ.get('LOCAL_WORLD_SIZE', 1))
