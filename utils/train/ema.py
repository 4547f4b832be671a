"""Exponential moving average of a model's weights, the model used for evaluation and export.

The average smooths the noise of the last SGD steps; early in training the decay ramps up from 0 so the average
does not remember the random initialisation: decay = DECAY * (1 - exp(-updates / RAMP_UPDATES)) (YOLOv5's choice).
Buffers (BatchNorm running statistics) are averaged too; integer buffers (num_batches_tracked) are copied.
"""
from __future__ import annotations

import copy
import math

import torch


class ModelEMA:
    DECAY = 0.9999
    RAMP_UPDATES = 2000

    def __init__(self, model: torch.nn.Module):
        self.model = copy.deepcopy(_unwrap(model)).eval()
        self.updates = 0   # a resumed run sets the count it had (checkpoint 'ema_updates')
        for p in self.model.parameters():
            p.requires_grad_(False)

    def decay(self) -> float:
        return self.DECAY * (1 - math.exp(-self.updates / self.RAMP_UPDATES))

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        self.updates += 1
        d = self.decay()
        current = _unwrap(model).state_dict()
        for name, averaged in self.model.state_dict().items():
            if averaged.dtype.is_floating_point:
                averaged.mul_(d).add_(current[name].detach(), alpha=1 - d)
            else:
                averaged.copy_(current[name])


def _unwrap(model: torch.nn.Module) -> torch.nn.Module:
    return getattr(model, 'module', model)   # DDP keeps the real model in .module
