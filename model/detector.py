"""The detector every script uses: backbone -> neck -> head, plus what its outputs mean (`spec`).

Input: BGR, NCHW, either uint8 0..255 or float 0..1 (uint8 is divided by 255 here, so a training batch can stay
uint8 until it reaches the device).

Output (see docs/architecture.md):
* `export = False` (training, loss): the head's raw per-scale tensors, strides ascending;
  anchor head: (reg, obj, cls) logits NCHW; leyolo head: (box, cls).
* `export = True` (ONNX/NCNN, decode): per scale one NHWC tensor in the deployment layout, made by the head's
  `forward_export`.
"""
from __future__ import annotations

import torch
from torch import nn

from model.spec import HeadSpec


class Detector(nn.Module):
    def __init__(self, backbone: nn.Module, neck: nn.Module | None, head: nn.Module, spec: HeadSpec):
        super().__init__()
        self.backbone = backbone
        # a model whose backbone already ends in its neck (LeYOLO) has no separate neck
        self.neck = neck if neck is not None else nn.Identity()
        self.head = head
        self.spec = spec
        self.export = False

    def forward(self, x: torch.Tensor):
        if x.dtype == torch.uint8:
            x = x / 255.0   # to float32 in one pass
        features = self.neck(self.backbone(x))
        if len(features) != len(self.spec.strides):
            raise RuntimeError(f'the neck gave {len(features)} feature maps but the spec has strides '
                               f'{self.spec.strides}')
        return self.head.forward_export(features) if self.export else self.head(features)
