"""Config -> Detector: the body `model/architectures.py` names, the head the config asks for, and the weights
(`backbone_weights`, then `pre_weights`)."""
from __future__ import annotations

from model.architectures import ARCHITECTURES
from model.detector import Detector
from model.errors import WeightsError
from model.heads import AnchorHead
from model.spec import HeadSpec
from model.weights import load_backbone_weights, load_weights


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
    backbone, neck, channels = ARCHITECTURES[cfg.model].build_body()
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
