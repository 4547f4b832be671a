"""Config -> Detector. Adding a model is one function here plus one line in `BODIES` (and its strides in
utils/config.py's MODEL_STRIDES; `build_model` checks that the two agree)."""
from __future__ import annotations

import torch
from torch import nn

from model.detector import Detector
from model.fpn import LightFPN
from model.heads import AnchorHead
from model.shufflenetv2 import ShuffleNetV2
from model.spec import HeadSpec
from model.weights import WeightsError, load_backbone_weights, load_weights


def yolo_fastestv2_body() -> tuple[nn.Module, nn.Module, tuple]:
    backbone = ShuffleNetV2()
    neck = LightFPN(backbone.out_channels, width=72)
    return backbone, neck, neck.out_channels


def leyolo_body(variant: str) -> tuple[nn.Module, None, tuple]:
    from model.leyolo import LeYOLO  # imported here so that Yolo-FastestV2 builds without the LeYOLO files
    body = LeYOLO(variant)            # backbone and FPAN neck in one module
    return body, None, tuple(body.out_channels)


# model name in the .data file -> (backbone, neck or None, neck output channels per scale)
BODIES = {
    'yolo-fastestv2': yolo_fastestv2_body,
    'leyolo-nano': lambda: leyolo_body('nano'),
    'leyolo-small': lambda: leyolo_body('small'),
    'leyolo-medium': lambda: leyolo_body('medium'),
    'leyolo-large': lambda: leyolo_body('large'),
}


def measure_strides(backbone: nn.Module, neck: nn.Module | None, side_px: int = 128) -> tuple:
    """Strides of the feature maps the body really produces, from one small forward pass."""
    was_training = backbone.training
    body = nn.Sequential(backbone, neck if neck is not None else nn.Identity()).eval()
    with torch.no_grad():
        features = body(torch.zeros(1, 3, side_px, side_px))
    body.train(was_training)
    return tuple(side_px // f.shape[-1] for f in features)


def make_spec(cfg) -> HeadSpec:
    anchors_px = tuple(tuple((float(w), float(h)) for w, h in scale) for scale in cfg.anchors_px) \
        if cfg.head == 'anchor' else ()
    return HeadSpec(kind=cfg.head, strides=tuple(cfg.strides), num_classes=cfg.classes,
                    input_width=cfg.width, input_height=cfg.height, anchors_px=anchors_px)


def _with_config_line(cfg, key: str, load, *args, **kwargs) -> dict:
    """Run a loader; on failure say which .data line named the file, then what is wrong with it."""
    try:
        return load(*args, **kwargs)
    except WeightsError as error:
        raise WeightsError(f'{cfg.where(key)}: key "{key}": {error}') from None


def build_model(cfg, log=print) -> Detector:
    """Build the model the config names and load `backbone_weights`, then `pre_weights`, if given.

    `pre_weights` loads every tensor whose name and shape match (so COCO weights can start a model with other
    classes); the tensors it skips are reported. Without `pre_weights` the anchor head gets its objectness prior.
    """
    if cfg.model not in BODIES:
        raise ValueError(f'{cfg.where("model")}: model "{cfg.model}" has no constructor in model/build.py; '
                         f'known: {", ".join(BODIES)}')
    backbone, neck, channels = BODIES[cfg.model]()
    strides = measure_strides(backbone, neck)
    if strides != tuple(cfg.strides):
        raise ValueError(f'{cfg.model}: the network gives strides {strides} but utils/config.py MODEL_STRIDES '
                         f'says {tuple(cfg.strides)}; fix one of them')
    spec = make_spec(cfg)
    if cfg.head == 'anchor':
        head = AnchorHead(channels, cfg.anchor_num, cfg.classes)
        head.init_biases(spec.strides, cfg.width, cfg.height)
    else:
        from model.leyolo_head import LeYOLOHead
        head = LeYOLOHead(channels, cfg.classes, spec)
    model = Detector(backbone, neck, head, spec)

    if cfg.backbone_weights is not None:
        report = _with_config_line(cfg, 'backbone_weights', load_backbone_weights, model, cfg.backbone_weights)
        log(f'backbone_weights {cfg.backbone_weights}: filled {report["loaded"]}/{report["total"]} backbone '
            f'tensors' + (f', ignored {len(report["unexpected"])} other tensors of the file' if report['unexpected']
                         else ''))
    if cfg.pre_weights is not None:
        report = _with_config_line(cfg, 'pre_weights', load_weights, model, cfg.pre_weights, strict=False)
        log(f'pre_weights {cfg.pre_weights}: loaded {report["loaded"]}/{report["total"]} tensors')
        skipped = report['missing'] + report['wrong_shape']
        if skipped:
            log(f'  not loaded (left at their initial values): {len(skipped)} tensors, e.g. '
                + ', '.join(skipped[:5]))
    return model
