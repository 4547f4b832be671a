"""The PyTorch runtime: a Detector called like an exported model, and the BatchNorm folding load_runtime applies."""
from __future__ import annotations

import numpy as np
import torch
from torch import nn


class TorchRuntime:
    """A Detector in export mode. The model's train/export flags are restored after each call, so the trainer can
    hand in its live EMA model."""
    name = 'torch'

    def __init__(self, model: torch.nn.Module):
        model = getattr(model, 'module', model)   # unwrap DataParallel / DistributedDataParallel
        self.model = model
        self.spec = model.spec
        first = next(model.parameters())
        self.device, self.dtype = first.device, first.dtype

    @torch.no_grad()
    def __call__(self, batch_nchw: np.ndarray) -> list[np.ndarray]:
        was_training, was_export = self.model.training, self.model.export
        self.model.eval()
        self.model.export = True
        try:
            # PyTorch's CPU depthwise convolutions run much faster on channels-last input (bench/eval_speed.py times
            # the whole evaluation); the model's own tensors are left as they are
            batch = torch.as_tensor(batch_nchw, device=self.device, dtype=self.dtype).contiguous(
                memory_format=torch.channels_last)
            outputs = self.model(batch)
        finally:
            self.model.train(was_training)
            self.model.export = was_export
        return [output.float().cpu().numpy() for output in outputs]


@torch.no_grad()
def fuse_conv_bn(model: nn.Module) -> nn.Module:
    """Fold each BatchNorm2d that directly follows a Conv2d in an nn.Sequential into that conv, in place.
    For inference only (the folded model cannot train its BatchNorm): inference skips the BatchNorm layers' work."""
    for sequence in model.modules():
        if not isinstance(sequence, nn.Sequential):
            continue
        for i in range(len(sequence) - 1):
            conv, bn = sequence[i], sequence[i + 1]
            if not (isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d)) or bn.running_var is None:
                continue
            gamma = bn.weight if bn.weight is not None else torch.ones_like(bn.running_var)
            beta = bn.bias if bn.bias is not None else torch.zeros_like(bn.running_var)
            scale = gamma / torch.sqrt(bn.running_var + bn.eps)
            bias = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
            conv.weight = nn.Parameter(conv.weight * scale.reshape(-1, 1, 1, 1))
            conv.bias = nn.Parameter((bias - bn.running_mean) * scale + beta)
            sequence[i + 1] = nn.Identity()
    return model
