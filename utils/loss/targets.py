"""The training targets every loss reads: (M, 6) [image index in batch, class, cx, cy, w, h] normalised."""
from __future__ import annotations

import torch


def checked_targets(outputs, targets: torch.Tensor, strides: tuple, num_classes: int) -> torch.Tensor:
    """Targets (M, 6) as float, after checking that they fit the head's outputs; a mismatch names its cause."""
    if len(outputs) != len(strides):
        raise ValueError(f'the loss expects {len(strides)} scales (strides {strides}), got {len(outputs)} outputs')
    targets = targets.float()
    if len(targets) and int(targets[:, 1].max()) >= num_classes:
        raise ValueError(f'a target has class {int(targets[:, 1].max())} but the model has '
                         f'{num_classes} classes (check `classes` in the .data file)')
    batch = outputs[0][0].shape[0]
    if len(targets) and not 0 <= int(targets[:, 0].min()) <= int(targets[:, 0].max()) < batch:
        raise ValueError(f'a target names image {int(targets[:, 0].max())} of a batch of {batch} images')
    return targets
