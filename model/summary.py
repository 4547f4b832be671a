"""Parameters and compute of a model, per part (backbone, neck, head).

Convention: MACs are counted by forward hooks on every Conv2d, for one image:
    MACs = output elements x (input channels / groups) x kernel height x kernel width
Bias adds, BatchNorm, activations, upsampling and pooling are not counted (together a few percent for these
models). FLOPs = 2 x MACs. Published figures use other conventions (Ultralytics adds BatchNorm and upsampling
terms), so compare with care.
The table of every model: `python3 bench/model_table.py --all` (docs/benchmarks.md).
"""
from __future__ import annotations

import torch
from torch import nn


def summarize(model: nn.Module, width: int, height: int) -> dict:
    """dict(params, macs, flops, macs_by_part) for one width x height image. The model is left as it was."""
    macs_by_part = {}

    def count(part):
        def hook(conv, inputs, output):
            per_image = output.numel() // output.shape[0]
            macs = per_image * (conv.in_channels // conv.groups) * conv.kernel_size[0] * conv.kernel_size[1]
            macs_by_part[part] = macs_by_part.get(part, 0) + macs
        return hook

    def part_of(name):
        # LeYOLO's body (backbone + FPAN neck in one module) sits in the Detector's `backbone`: report its neck apart
        return 'neck' if name.startswith('backbone.neck.') else name.split('.')[0]

    handles = [module.register_forward_hook(count(part_of(name)))
               for name, module in model.named_modules() if isinstance(module, nn.Conv2d)]
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(torch.zeros(1, 3, height, width))
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    macs = sum(macs_by_part.values())
    params = sum(p.numel() for p in model.parameters())
    return dict(params=params, macs=macs, flops=2 * macs, macs_by_part=macs_by_part)
