"""The models a .data file can name (`model = ...`): their output strides and how to build their bodies.

This table is the one list of model names: the config checks names and reads strides here, `model/build.py`
builds from it, and a test checks each entry's strides against a forward pass. It is torch-free at import (each
body imports its modules when built), so reading a .data file does not load torch.
A new model is one entry here plus its module.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable


@dataclass(frozen=True)
class Architecture:
    strides: tuple[int, ...]   # of the feature maps the body hands the head, finest first
    build_body: Callable       # () -> (backbone, neck or None, neck output channels per scale)


def yolo_fastestv2_body():
    from model.fpn import LightFPN
    from model.shufflenetv2 import ShuffleNetV2
    backbone = ShuffleNetV2()
    neck = LightFPN(backbone.out_channels, width=72)
    return backbone, neck, neck.out_channels


def leyolo_body(variant: str):
    from model.leyolo import LeYOLO
    body = LeYOLO(variant)   # backbone and FPAN neck in one module
    return body, None, tuple(body.out_channels)


ARCHITECTURES = {
    'yolo-fastestv2': Architecture((16, 32), yolo_fastestv2_body),
    'leyolo-nano': Architecture((8, 16, 32), lambda: leyolo_body('nano')),
    'leyolo-small': Architecture((8, 16, 32), lambda: leyolo_body('small')),
    'leyolo-medium': Architecture((8, 16, 32), lambda: leyolo_body('medium')),
    'leyolo-large': Architecture((8, 16, 32), lambda: leyolo_body('large')),
}
