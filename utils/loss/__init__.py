"""Losses: `build_loss(model, cfg)` picks the one for the model's head.

A loss is called as `loss(raw_outputs, targets (M, 6) [image, class, cx, cy, w, h] normalised)` and returns
`(total, dict of floats for the progress bar)`; one that sets `max_grad_norm` has the trainer clip gradients to it.
"""
from __future__ import annotations

from utils.loss.anchor import AnchorLoss
from utils.loss.leyolo import LeYOLOLoss


def build_loss(model, cfg=None) -> AnchorLoss | LeYOLOLoss:
    """The loss for the model's head. `cfg` (a Config) gives the LeYOLO loss its gains and the anchor loss its
    assigner; None takes the defaults."""
    spec = getattr(model, 'module', model).spec   # DDP wraps the model
    if spec.kind == 'leyolo':
        return LeYOLOLoss.from_config(spec, cfg)
    return AnchorLoss.from_config(spec, cfg)
