"""ShuffleNetV2 (Ma et al., 2018), the backbone of Yolo-FastestV2, at width 0.5x.

Module names follow Megvii's reference implementation (`first_conv`, `stage2..4`, `branch_main`, `branch_proj`),
which is also the layout of the ImageNet backbone file and of the released Yolo-FastestV2 weights, so both load
without renaming.

The backbone returns the stride-16 and stride-32 feature maps (the ends of stage3 and stage4); the detector's
neck fuses them.
"""
from __future__ import annotations

import torch
from torch import nn

# Output channels of the stem and of stage2, stage3, stage4 at width 0.5x; stage repeats.
STAGE_CHANNELS_0_5X = (24, 48, 96, 192)
STAGE_REPEATS = (4, 8, 4)


def split_channels_interleaved(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Channel shuffle and split in one step: even channels go to the first half, odd ones to the second.

    This is how the reference implementation mixes the two branches of the previous block before the next one.
    Channels-last tensors (training; the torch runtime's inference) take strided views, since the reference's
    reshape-permute would turn the tensor back to NCHW and every layer after it would pay for layout conversions.
    NCHW tensors, and every export (traced), take the reshape-permute, which ONNX and NCNN know as a channel
    shuffle. Both give the same values.
    """
    if x.is_contiguous(memory_format=torch.channels_last) and not torch.jit.is_tracing():
        return _InterleavedSplitNHWC.apply(x)
    n, c, h, w = x.shape
    x = x.reshape(n * c // 2, 2, h * w).permute(1, 0, 2).reshape(2, n, c // 2, h, w)
    return x[0], x[1]


class _InterleavedSplitNHWC(torch.autograd.Function):
    """x[:, 0::2], x[:, 1::2] as views, with a backward that writes the two gradients straight into one
    channels-last tensor (autograd's own would zero-fill a full-size tensor per half first)."""

    @staticmethod
    def forward(ctx, x):
        ctx.shape = x.shape
        return x[:, 0::2], x[:, 1::2]

    @staticmethod
    def backward(ctx, grad_even, grad_odd):
        grad = torch.empty(ctx.shape, dtype=grad_even.dtype, device=grad_even.device,
                           memory_format=torch.channels_last)
        grad[:, 0::2] = grad_even
        grad[:, 1::2] = grad_odd
        return grad


class ShuffleV2Block(nn.Module):
    """One ShuffleNetV2 unit.

    stride 1: half the channels pass through untouched, the other half go through 1x1 -> dw 3x3 -> 1x1.
    stride 2: both branches see all input channels and downsample; their outputs are concatenated.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int):
        super().__init__()
        if stride not in (1, 2):
            raise ValueError(f'ShuffleV2Block: stride must be 1 or 2, got {stride}')
        self.stride = stride
        # stride 1 blocks receive only half of the block's channels in the main branch
        main_in = in_channels if stride == 2 else in_channels // 2
        mid = out_channels // 2
        main_out = out_channels - main_in if stride == 1 else out_channels - in_channels
        self.branch_main = nn.Sequential(
            nn.Conv2d(main_in, mid, 1, 1, 0, bias=False),
            nn.BatchNorm2d(mid),
            nn.ReLU(inplace=True),
            nn.Conv2d(mid, mid, 3, stride, 1, groups=mid, bias=False),
            nn.BatchNorm2d(mid),
            nn.Conv2d(mid, main_out, 1, 1, 0, bias=False),
            nn.BatchNorm2d(main_out),
            nn.ReLU(inplace=True),
        )
        if stride == 2:
            self.branch_proj = nn.Sequential(
                nn.Conv2d(in_channels, in_channels, 3, stride, 1, groups=in_channels, bias=False),
                nn.BatchNorm2d(in_channels),
                nn.Conv2d(in_channels, in_channels, 1, 1, 0, bias=False),
                nn.BatchNorm2d(in_channels),
                nn.ReLU(inplace=True),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride == 1:
            passthrough, x = split_channels_interleaved(x)
            return torch.cat((passthrough, self.branch_main(x)), 1)
        return torch.cat((self.branch_proj(x), self.branch_main(x)), 1)


class ShuffleNetV2(nn.Module):
    """Stem (3x3 s2 conv + 3x3 s2 max-pool) and three stages; returns [stride-16 map, stride-32 map]."""

    strides = (16, 32)

    def __init__(self, stage_channels: tuple = STAGE_CHANNELS_0_5X, stage_repeats: tuple = STAGE_REPEATS):
        super().__init__()
        stem_channels = stage_channels[0]
        self.first_conv = nn.Sequential(
            nn.Conv2d(3, stem_channels, 3, 2, 1, bias=False),
            nn.BatchNorm2d(stem_channels),
            nn.ReLU(inplace=True),
        )
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        in_channels = stem_channels
        for index, (out_channels, repeats) in enumerate(zip(stage_channels[1:], stage_repeats)):
            blocks = [ShuffleV2Block(in_channels if i == 0 else out_channels, out_channels, 2 if i == 0 else 1)
                      for i in range(repeats)]
            setattr(self, f'stage{index + 2}', nn.Sequential(*blocks))
            in_channels = out_channels
        self.out_channels = tuple(stage_channels[2:])   # (96, 192) at 0.5x

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        if self.training:
            # ReLU and max-pool commute (both monotone), so training pools first and leaves the ReLU and its
            # backward 4x fewer values: at full resolution they are a sizeable part of a training step. Inference
            # keeps the released order, in which NCNN fuses the ReLU into the convolution.
            conv, bn, relu = self.first_conv
            x = relu(self.maxpool(bn(conv(x))))
        else:
            x = self.maxpool(self.first_conv(x))
        x = self.stage2(x)
        stride16 = self.stage3(x)
        stride32 = self.stage4(stride16)
        return [stride16, stride32]
