"""LeYOLO's body: a MobileNetV3-style backbone (inverted bottlenecks, no squeeze-excitation) + SPPF + the FPAN neck.

Follows the LeYOLO fork (LilianHollard/LeYOLO, Ultralytics 8.1.4 base). `LeYOLO(variant)`
takes an RGB-trained network's input (the importer permutes the first conv for BGR, see model/leyolo_import.py)
and returns the three maps [p3, p4, p5] (strides 8, 16, 32) that feed the head.

Two details the released weights depend on:
* every BatchNorm uses eps 1e-3 and momentum 0.03 (Ultralytics sets them after building; with PyTorch's 1e-5 the
  released nano weights give garbage, since some running variances are ~3e-5);
* the convs of `ConvBnAct(bias=True)` ("mn_conv") and the bottleneck's 1x1 projection keep their biases although a
  BatchNorm follows; SPPF's convs (Ultralytics `Conv`) have none.

The variants, with channels already width-scaled (nano width 1.0, the others 1.33):
* small = nano's graph, wider;
* medium = small with deeper stages and a block that widens P3 and P5 to 88 channels at the ends of the neck;
* large = the medium network (the fork's two yaml files are identical; "large" is trained and run at 768).
For medium/large the heads read the ends of the three neck paths (fork layers 29, 35, 41), the FPAN design's intent,
not the published yaml's [27, 32, 37], which leaves four layers unused.
"""
from __future__ import annotations

import torch
from torch import nn

BN_EPS, BN_MOMENTUM = 1e-3, 0.03


def batch_norm(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=BN_EPS, momentum=BN_MOMENTUM)


class ConvBnAct(nn.Module):
    """Conv -> BatchNorm -> SiLU. bias=True is the fork's `mn_conv`, bias=False Ultralytics' `Conv`."""

    def __init__(self, c_in: int, c_out: int, k: int = 1, stride: int = 1, groups: int = 1, bias: bool = True):
        super().__init__()
        padding = 0 if k == stride else k // 2   # the fork's rule; k == stride never happens in LeYOLO
        self.conv = nn.Conv2d(c_in, c_out, k, stride, padding, groups=groups, bias=bias)
        self.bn = batch_norm(c_out)
        self.act = nn.SiLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.conv(x)))


class InvertedBottleneck(nn.Module):
    """The fork's `MobileNetV3_BLOCK`: [1x1 expand c_in -> hidden] -> depthwise k x k (stride) -> 1x1 project
    hidden -> c_out with BatchNorm and no activation (linear bottleneck); residual add when shapes allow.

    `hidden` is an absolute channel count. expand=False drops the 1x1 expansion (then hidden must equal c_in).
    """

    def __init__(self, c_in: int, hidden: int, c_out: int, k: int, stride: int = 1, expand: bool = True):
        super().__init__()
        if not expand and hidden != c_in:
            raise ValueError(f'a bottleneck without expansion needs hidden == c_in, got {hidden} and {c_in}')
        self.expand = ConvBnAct(c_in, hidden, 1) if expand else None
        self.depthwise = ConvBnAct(hidden, hidden, k, stride, groups=hidden)
        self.project = nn.Conv2d(hidden, c_out, 1, bias=True)
        self.project_bn = batch_norm(c_out)
        self.residual = c_in == c_out and stride == 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = self.expand(x) if self.expand is not None else x
        t = self.project_bn(self.project(self.depthwise(t)))
        return x + t if self.residual else t


class SPPF(nn.Module):
    """Spatial pyramid pooling, fast: 1x1 halve, three chained 5x5 max-pools, concat the four, 1x1 to c_out."""

    def __init__(self, c_in: int, c_out: int, k: int = 5):
        super().__init__()
        hidden = c_in // 2
        self.reduce = ConvBnAct(c_in, hidden, 1, bias=False)
        self.pool = nn.MaxPool2d(k, 1, k // 2)
        self.fuse = ConvBnAct(4 * hidden, c_out, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.reduce(x)
        b = self.pool(a)
        c = self.pool(b)
        return self.fuse(torch.cat((a, b, c, self.pool(c)), 1))


def blocks(rows: list) -> nn.Sequential:
    """A stage from rows (c_in, hidden, c_out, k, stride[, expand])."""
    return nn.Sequential(*(InvertedBottleneck(*row) for row in rows))


def _repeat(row: tuple, times: int) -> list:
    return [row] * times


# Per variant, each stage as rows (c_in, hidden, c_out, dw kernel, stride[, expand]), in the fork's layer order.
# Fork layer numbers (nano/small | medium) are in the comments, to check against the fork's model files.
VARIANTS = {
    'nano': dict(
        stem=(3, 16),                                                             # 0-1
        stem_block=(16, 16, 16, 3, 2, False),                                     # 2
        stage8=[(16, 96, 32, 3, 2)] + _repeat((32, 96, 32, 3, 1), 1),             # 3-4
        stage16=[(32, 96, 64, 5, 2)] + _repeat((64, 192, 64, 5, 1), 4),           # 5-9
        stage32=[(64, 576, 96, 5, 2)] + _repeat((96, 576, 96, 5, 1), 3),          # 10-13
        sppf=(96, 96),                                                            # 14
        top_down16=[(160, 128, 64, 5, 1)] + _repeat((64, 128, 64, 5, 1), 2),      # 17-19 (after concat 96+64)
        top_down8=[(96, 96, 32, 3, 1, False)] + _repeat((32, 64, 32, 3, 1), 2),   # 22-24 -> P3
        down16=(32, 64),                                                          # 25
        bottom_up16=[(128, 128, 64, 5, 1)] + _repeat((64, 128, 64, 5, 1), 2),     # 27-29 -> P4
        down32=(64, 96),                                                          # 30
        bottom_up32=[(192, 192, 96, 5, 1)] + _repeat((96, 192, 96, 5, 1), 2),     # 32-34 -> P5
    ),
    'small': dict(
        stem=(3, 24),
        stem_block=(24, 24, 24, 3, 2, False),
        stage8=[(24, 128, 48, 3, 2)] + _repeat((48, 128, 48, 3, 1), 1),
        stage16=[(48, 128, 88, 5, 2)] + _repeat((88, 256, 88, 5, 1), 4),
        stage32=[(88, 768, 128, 5, 2)] + _repeat((128, 768, 128, 5, 1), 3),
        sppf=(128, 128),
        top_down16=[(216, 176, 88, 5, 1)] + _repeat((88, 176, 88, 5, 1), 2),
        top_down8=[(136, 136, 48, 3, 1, False)] + _repeat((48, 88, 48, 3, 1), 2),
        down16=(48, 88),
        bottom_up16=[(176, 176, 88, 5, 1)] + _repeat((88, 176, 88, 5, 1), 2),
        down32=(88, 128),
        bottom_up32=[(256, 256, 128, 5, 1)] + _repeat((128, 256, 128, 5, 1), 2),
    ),
    'medium': dict(
        stem=(3, 24),                                                             # 0-1
        stem_block=(24, 24, 24, 3, 2, False),                                     # 2
        stage8=[(24, 128, 48, 3, 2)] + _repeat((48, 128, 48, 3, 1), 2),           # 3-5
        stage16=[(48, 128, 88, 5, 2)] + _repeat((88, 256, 88, 5, 1), 5),          # 6-11
        stage32=[(88, 768, 128, 5, 2)] + _repeat((128, 768, 128, 5, 1), 4),       # 12-16
        sppf=(128, 128),                                                          # 17
        top_down16=[(216, 176, 88, 5, 1)] + _repeat((88, 176, 88, 5, 1), 3),      # 20-23
        top_down8=[(136, 136, 48, 3, 1, False)] + _repeat((48, 88, 48, 3, 1), 2)
                  + [(48, 176, 88, 5, 1)],                                        # 26-29 -> P3 (88)
        down16=(88, 88),                                                          # 30
        bottom_up16=[(176, 176, 88, 5, 1)] + _repeat((88, 176, 88, 5, 1), 3),     # 32-35 -> P4 (88)
        down32=(88, 128),                                                         # 36
        bottom_up32=[(256, 256, 128, 5, 1)] + _repeat((128, 256, 128, 5, 1), 2)
                    + [(128, 176, 88, 5, 1)],                                     # 38-41 -> P5 (88)
    ),
}
VARIANTS['large'] = VARIANTS['medium']   # the same network, run at 768 instead of 640

# Input side of the published accuracy figures (the LeYOLO paper), for tables and FLOP counts.
PAPER_INPUT_PX = {'nano': 320, 'small': 480, 'medium': 640, 'large': 768}


class LeYOLOBackbone(nn.Module):
    """Fork layers 0..SPPF. forward -> (stride-8 map, stride-16 map, SPPF output at stride 32)."""

    def __init__(self, v: dict):
        super().__init__()
        c_in, c_stem = v['stem']
        self.stem = nn.Sequential(
            ConvBnAct(c_in, c_stem, 3, 2),           # /2, full 3x3 conv over the RGB (or permuted BGR) input
            ConvBnAct(c_stem, c_stem, 1, 1),
            InvertedBottleneck(*v['stem_block']),    # /4
        )
        self.stage8 = blocks(v['stage8'])
        self.stage16 = blocks(v['stage16'])
        self.stage32 = blocks(v['stage32'])
        self.sppf = SPPF(*v['sppf'])

    def forward(self, x: torch.Tensor) -> tuple:
        c8 = self.stage8(self.stem(x))
        c16 = self.stage16(c8)
        c32 = self.sppf(self.stage32(c16))
        return c8, c16, c32


class FPANNeck(nn.Module):
    """The paper's FPAN: a top-down path (upsample, concat [upsampled, skip], bottlenecks) down to stride 8, then a
    bottom-up path (3x3 stride-2 conv, concat [downsampled, top-down map], bottlenecks) back to stride 32."""

    def __init__(self, v: dict):
        super().__init__()
        self.upsample = nn.Upsample(scale_factor=2, mode='nearest')
        self.top_down16 = blocks(v['top_down16'])
        self.top_down8 = blocks(v['top_down8'])
        self.down16 = ConvBnAct(*v['down16'], 3, 2)
        self.bottom_up16 = blocks(v['bottom_up16'])
        self.down32 = ConvBnAct(*v['down32'], 3, 2)
        self.bottom_up32 = blocks(v['bottom_up32'])

    def forward(self, c8: torch.Tensor, c16: torch.Tensor, c32: torch.Tensor) -> list:
        t16 = self.top_down16(torch.cat((self.upsample(c32), c16), 1))
        p3 = self.top_down8(torch.cat((self.upsample(t16), c8), 1))
        p4 = self.bottom_up16(torch.cat((self.down16(p3), t16), 1))
        p5 = self.bottom_up32(torch.cat((self.down32(p4), c32), 1))
        return [p3, p4, p5]


class LeYOLO(nn.Module):
    """Backbone + FPAN neck of LeYOLO-{nano, small, medium, large}: forward(x NCHW 0..1) -> [p3, p4, p5]."""

    def __init__(self, variant: str = 'nano'):
        super().__init__()
        if variant not in VARIANTS:
            raise ValueError(f'unknown LeYOLO variant "{variant}"; known: {", ".join(VARIANTS)}')
        v = VARIANTS[variant]
        self.variant = variant
        self.backbone = LeYOLOBackbone(v)
        self.neck = FPANNeck(v)
        self.out_channels = (v['top_down8'][-1][2], v['bottom_up16'][-1][2], v['bottom_up32'][-1][2])
        self.strides = (8, 16, 32)

    def forward(self, x: torch.Tensor) -> list:
        return self.neck(*self.backbone(x))

    def fork_layers(self) -> list:
        """Our module for each fork layer index (None for the parameter-free Upsample/Concat layers), in the
        fork's order: the map the weight importer uses."""
        b, n = self.backbone, self.neck
        layers = list(b.stem) + list(b.stage8) + list(b.stage16) + list(b.stage32) + [b.sppf]
        layers += [None, None] + list(n.top_down16) + [None, None] + list(n.top_down8)
        layers += [n.down16, None] + list(n.bottom_up16) + [n.down32, None] + list(n.bottom_up32)
        return layers
