"""LeYOLO's detection head (the paper's DNiN, "decoupled network-in-network"): anchor-free, boxes as DFL distances.

Per scale, two branches with their own weights (nothing shared across scales):
    box: 1x1 conv (c_in -> box_width) -> dw 3x3 -> dw 3x3 -> 1x1 conv to 4 * reg_max logits
    cls: 1x1 conv (c_in -> cls_width) -> dw 3x3 -> dw 3x3 -> 1x1 conv to C logits
The first three layers are conv (no bias) + BatchNorm (eps 1e-3) + SiLU; the last conv has a bias.

Box logits are side-major: channel = side * reg_max + bin, sides left, top, right, bottom. Softmax over the bins
and the expectation sum(bin * p) give the distance from the cell centre (x + 0.5, y + 0.5) to each box side, in grid
cells of that scale (multiply by the stride for input pixels). Class scores are sigmoids; there is no objectness.

Widths follow the fork: box_width = max(16, c_p3 // 4, 4 * reg_max) (64 for every variant); the class width is
max(c_p3, min(C, 100)) in the fork, here never below 80 (the COCO class count), so that COCO-trained weights still
fit the class branch of a model with fewer classes (only its last conv is new). For C = 80 both rules agree.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from model.leyolo import ConvBnAct
from model.spec import HeadSpec

COCO_CLASSES = 80


def branch(c_in: int, width: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(
        ConvBnAct(c_in, width, 1, bias=False),
        ConvBnAct(width, width, 3, groups=width, bias=False),
        ConvBnAct(width, width, 3, groups=width, bias=False),
        nn.Conv2d(width, c_out, 1, bias=True),
    )


class LeYOLOHead(nn.Module):
    """forward(features) -> [(box (N, 4*reg_max, H, W), cls (N, C, H, W)) logits] per scale;
    forward_export(features) -> per scale NHWC [l, t, r, b in grid cells (4), sigmoid(cls) (C)]."""

    def __init__(self, in_channels: tuple, num_classes: int, spec: HeadSpec):
        super().__init__()
        if spec.kind != 'leyolo':
            raise ValueError(f'LeYOLOHead needs a HeadSpec of kind "leyolo", got "{spec.kind}"')
        if len(in_channels) != len(spec.strides):
            raise ValueError(f'{len(in_channels)} input maps but the spec has strides {spec.strides}')
        self.spec = spec
        self.num_classes = num_classes
        self.reg_max = spec.reg_max
        box_width = max(16, in_channels[0] // 4, 4 * self.reg_max)
        cls_width = max(in_channels[0], COCO_CLASSES, min(num_classes, 100))
        self.box_branches = nn.ModuleList(branch(c, box_width, 4 * self.reg_max) for c in in_channels)
        self.cls_branches = nn.ModuleList(branch(c, cls_width, num_classes) for c in in_channels)
        # The DFL expectation weights 0..reg_max-1 (the fork's fixed `dfl.conv.weight`): a buffer, not trained.
        self.register_buffer('dfl_bins', torch.arange(self.reg_max, dtype=torch.float32))
        self.init_biases()

    @torch.no_grad()
    def init_biases(self) -> None:
        """Starting biases for training from scratch (as the fork): box logits 1.0 (flat bin distributions);
        class logits at a prior of about 5 objects per image spread over the cells of the scale."""
        for box in self.box_branches:
            box[-1].bias.fill_(1.0)
        self.init_class_biases()

    @torch.no_grad()
    def init_class_biases(self) -> None:
        for cls, stride in zip(self.cls_branches, self.spec.strides):
            cells = (self.spec.input_width / stride) * (self.spec.input_height / stride)
            cls[-1].bias.fill_(math.log(5 / self.num_classes / cells))

    def forward(self, features: list) -> list:
        return [(box(x), cls(x)) for x, box, cls in zip(features, self.box_branches, self.cls_branches)]

    def distances(self, box_logits: torch.Tensor) -> torch.Tensor:
        """(N, 4*reg_max, H, W) logits -> (N, 4, H, W) expected l, t, r, b distances in grid cells."""
        n, _, h, w = box_logits.shape
        # 4-D throughout (no 5-D view) so that ONNX and NCNN take it as it is
        probabilities = box_logits.view(n, 4, self.reg_max, h * w).softmax(2)
        return (probabilities * self.dfl_bins.view(1, 1, -1, 1)).sum(2).view(n, 4, h, w)

    def forward_export(self, features: list) -> list:
        return [torch.cat((self.distances(box), cls.sigmoid()), 1).permute(0, 2, 3, 1)
                for box, cls in self(features)]
