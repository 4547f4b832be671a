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
        self._lists, self._lists_key = None, None   # update()'s tensor lists and the models they belong to
        for p in self.model.parameters():
            p.requires_grad_(False)

    def decay(self) -> float:
        return self.DECAY * (1 - math.exp(-self.updates / self.RAMP_UPDATES))

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        self.updates += 1
        d = self.decay()
        averaged, current, copied_to, copied_from = self._tensor_lists(_unwrap(model))
        # One call per list rather than two per tensor: the per-tensor loop and building both state_dicts each step
        # took about a tenth of the demo's training steps (batch 8 at 160x160, under cProfile). Same arithmetic,
        # bit for bit.
        torch._foreach_mul_(averaged, d)
        torch._foreach_add_(averaged, current, alpha=1 - d)
        for to, source in zip(copied_to, copied_from):
            to.copy_(source)

    def _tensor_lists(self, model: torch.nn.Module) -> tuple[list, list, list, list]:
        """The EMA's and the model's tensors, floating point (averaged) and the rest (copied), in state_dict order.
        Kept between steps: the trainer updates, loads and resumes these tensors in place."""
        key = (id(model), id(self.model))
        if self._lists_key != key:
            current = model.state_dict()
            pairs = [(averaged, current[name].detach()) for name, averaged in self.model.state_dict().items()]
            floating = [pair for pair in pairs if pair[0].dtype.is_floating_point]
            others = [pair for pair in pairs if not pair[0].dtype.is_floating_point]
            self._lists = ([a for a, _ in floating], [c for _, c in floating], [a for a, _ in others],
                           [c for _, c in others])
            self._lists_key = key
        return self._lists


def _unwrap(model: torch.nn.Module) -> torch.nn.Module:
    return getattr(model, 'module', model)   # DDP keeps the real model in .module
