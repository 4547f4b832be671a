"""Yolo-FastestV2's decoupled anchor head, for any number of scales and any input widths.

Per scale, two towers of depthwise-separable 5x5 convs: one feeds the box regression, the other feeds objectness
and classification (the released weights were trained that way). Then 1x1 output convs give, per cell:
    reg (4 * A): x, y, w, h offsets for each of the A anchors (anchor-major: channel a*4 + k)
    obj (A):     objectness logit per anchor
    cls (C):     class logits, ONE set per cell shared by its A anchors (softmax, not sigmoid, at deployment)

When every scale has the same width (Yolo-FastestV2: 72 and 72), the three output convs are shared by all scales,
as in the released model; otherwise (e.g. a LeYOLO neck with 32/64/96 channels) each scale gets its own.
"""
from __future__ import annotations

import math

import torch
from torch import nn


def dw5x5_tower(channels: int) -> nn.Sequential:
    """dw5x5-BN-ReLU, 1x1-BN, dw5x5-BN-ReLU, 1x1-BN (no activation after the 1x1s, as released)."""
    def dw5x5():
        return nn.Conv2d(channels, channels, 5, 1, 2, groups=channels, bias=False)

    def pw1x1():
        return nn.Conv2d(channels, channels, 1, 1, 0, bias=False)

    return nn.Sequential(
        dw5x5(), nn.BatchNorm2d(channels), nn.ReLU(inplace=True),
        pw1x1(), nn.BatchNorm2d(channels),
        dw5x5(), nn.BatchNorm2d(channels), nn.ReLU(inplace=True),
        pw1x1(), nn.BatchNorm2d(channels),
    )


class AnchorHead(nn.Module):
    """forward(features) -> [(reg, obj, cls) raw logits, NCHW] per scale; forward_export -> NHWC deployment layout."""

    def __init__(self, in_channels: tuple, num_anchors: int, num_classes: int):
        super().__init__()
        self.num_anchors = num_anchors
        self.num_classes = num_classes
        self.reg_towers = nn.ModuleList(dw5x5_tower(c) for c in in_channels)
        self.cls_towers = nn.ModuleList(dw5x5_tower(c) for c in in_channels)
        self.shared_outputs = len(set(in_channels)) == 1
        out_in_channels = in_channels[:1] if self.shared_outputs else in_channels
        self.reg_outs = nn.ModuleList(nn.Conv2d(c, 4 * num_anchors, 1) for c in out_in_channels)
        self.obj_outs = nn.ModuleList(nn.Conv2d(c, num_anchors, 1) for c in out_in_channels)
        self.cls_outs = nn.ModuleList(nn.Conv2d(c, num_classes, 1) for c in out_in_channels)

    def forward(self, features: list[torch.Tensor]) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        outputs = []
        for i, x in enumerate(features):
            o = 0 if self.shared_outputs else i
            reg_features = self.reg_towers[i](x)
            cls_features = self.cls_towers[i](x)
            outputs.append((self.reg_outs[o](reg_features), self.obj_outs[o](cls_features),
                            self.cls_outs[o](cls_features)))
        return outputs

    def forward_export(self, features: list[torch.Tensor]) -> list[torch.Tensor]:
        """Per scale, NHWC [sigmoid(reg) 4A, sigmoid(obj) A, softmax(cls) C]: Yolo-FastestV2's deployment layout."""
        return [torch.cat((reg.sigmoid(), obj.sigmoid(), cls.softmax(dim=1)), 1).permute(0, 2, 3, 1)
                for reg, obj, cls in self(features)]

    @torch.no_grad()
    def init_biases(self, strides: tuple, input_width: int, input_height: int) -> None:
        """Objectness prior for training from scratch, as YOLOv5 does: about 8 objects per image spread over the
        cells of a scale, so the first steps are not swamped by confident false positives.

        Shared outputs serve every scale: they get the mean of the per-scale priors.
        """
        def obj_prior(stride):
            cells = (input_width / stride) * (input_height / stride)
            return math.log(8 / cells)

        priors = [obj_prior(s) for s in strides]
        groups = [priors] if self.shared_outputs else [[p] for p in priors]
        for conv, group in zip(self.obj_outs, groups):
            conv.bias.fill_(sum(group) / len(group))
        for conv in self.cls_outs:
            conv.bias.zero_()   # softmax over classes: equal logits are the uninformed start
