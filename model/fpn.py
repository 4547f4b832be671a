"""Yolo-FastestV2's light FPN: two scales (strides 16 and 32), one 1x1 conv each.

    stride 32: C32 -> 1x1 conv -> P32
    stride 16: concat(upsample2x(C32), C16) -> 1x1 conv -> P16

The upsampled map comes first in the concat: the released weights were trained with that channel order.
Every 1x1 conv here is conv (no bias) + BatchNorm + ReLU.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


def conv1x1_bn_relu(in_channels: int, out_channels: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 1, 1, 0, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


class LightFPN(nn.Module):
    """Takes [C16, C32] from the backbone, returns [P16, P32] with `width` channels each."""

    def __init__(self, in_channels: tuple = (96, 192), width: int = 72):
        super().__init__()
        if len(in_channels) != 2:
            raise ValueError(f'LightFPN fuses exactly two scales, got in_channels={in_channels}')
        c16, c32 = in_channels
        self.fuse_16 = conv1x1_bn_relu(c32 + c16, width)
        self.reduce_32 = conv1x1_bn_relu(c32, width)
        self.out_channels = (width, width)

    def forward(self, features: list[torch.Tensor]) -> list[torch.Tensor]:
        c16, c32 = features
        p32 = self.reduce_32(c32)
        # scale_factor (not size=) exports to ONNX/NCNN as a plain 2x nearest resize; inputs are multiples of 32
        up = F.interpolate(c32, scale_factor=2.0, mode='nearest')
        p16 = self.fuse_16(torch.cat((up, c16), 1))
        return [p16, p32]
