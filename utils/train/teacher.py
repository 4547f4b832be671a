"""The distillation teacher: a frozen detector built from `teacher_weights`, checked against the student's classes.

Where the teacher's description comes from, by kind of file:
    our checkpoint (train.py's last.pt / best.pt)   its `config` record and `spec`: model, head, classes, class
                                                    names, anchors, input size
    LeYOLO's Ultralytics file (LeYOLONano.pt)       leyolo-nano (or `teacher_model`) with the leyolo head; the
                                                    class count from the file
    a plain state_dict (released Yolo-FastestV2)    `teacher_model` / `teacher_head` where given, else read from
                                                    the tensor names; classes and anchor count from the output convs
The `teacher_*` keys of the .data fill what the file does not say; where the file does say, they must agree with it.
Input size: `teacher_width` / `teacher_height`, else the size the checkpoint was trained at, else the student's.
The teacher sees the student's batches as they are: a teacher trained letterboxed (LeYOLONano.pt, or our checkpoint
with letterbox = 1) under a stretching student, or the reverse, gets a warning (docs/benchmarks.md measured it teach
worse that way).
The teacher never trains, so its BatchNorms are folded into the convolutions before them (fold_batchnorm): the same
outputs without one pass over a feature map per BatchNorm (docs/benchmarks.md, "Training recipes": the cost).

Distillation compares the teacher's and the student's class scores per image location, so the classes must be the
same in the same order: a file with class names must list the .data's names; a file without them, as many classes.
"""
from __future__ import annotations

import ast
import dataclasses

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from model.architectures import ARCHITECTURES
from model.build import build_model
from model.leyolo_import import read_ultralytics_checkpoint
from model.weights import is_ultralytics_checkpoint, load_weights, read_state_dict, to_our_names
from utils.config import HEADS
from utils.errors import CheckpointError, ConfigError
from utils.train.checkpoint import load_checkpoint


@dataclasses.dataclass
class TeacherDescription:
    model: str
    head: str
    classes: int
    class_names: tuple        # empty when the file does not carry them
    anchor_num: int
    anchors: tuple            # flat w, h pairs in input pixels (anchor head only)
    width: int                # the size the teacher was trained at, 0 when the file does not say
    height: int
    letterbox: bool | None = None   # whether it was trained on letterboxed images, None when the file does not say


def load_teacher(cfg, device: torch.device, log=print) -> nn.Module:
    """The teacher of `cfg.teacher_weights` on `device`, in eval mode, its parameters frozen."""
    path = cfg.teacher_weights
    described = describe_teacher(cfg)
    check_classes(cfg, described)
    width = cfg.teacher_width or described.width or cfg.width
    height = cfg.teacher_height or described.height or cfg.height
    for key, size in (('teacher_width', width), ('teacher_height', height)):
        if size % max(ARCHITECTURES[described.model].strides):
            raise ConfigError(f'{cfg.where(key)}: the teacher ({described.model}) needs an input size that is a '
                              f'multiple of {max(ARCHITECTURES[described.model].strides)}, got {size}')
    teacher_cfg = dataclasses.replace(
        cfg, model=described.model, head=described.head, classes=described.classes, width=width, height=height,
        anchor_num=described.anchor_num, anchors=described.anchors, pre_weights=None, backbone_weights=None)
    teacher = build_model(teacher_cfg, log=lambda _: None)
    load_weights(teacher, path, strict=True)
    log(f'teacher {path}: {described.model} ({described.head} head) at {width}x{height}')
    if described.letterbox is not None and described.letterbox != cfg.letterbox:
        shapes = {True: 'letterboxed (aspect ratio kept)', False: 'stretched'}
        log(f'warning: the teacher {path} was trained on {shapes[described.letterbox]} images, the student\'s '
            f'batches are {shapes[cfg.letterbox]} (letterbox = {int(cfg.letterbox)}): the teacher sees objects in '
            f'shapes it did not learn from; one trained with letterbox = {int(cfg.letterbox)} would not')
    fold_batchnorm(teacher.eval())
    teacher.requires_grad_(False)
    return teacher.to(device, memory_format=torch.channels_last)


def fold_batchnorm(model: nn.Module) -> int:
    """Fold every BatchNorm2d that directly follows a Conv2d in its parent module (nn.Sequential, ConvBnAct, a
    bottleneck's projection) into that convolution, in eval mode only; returns how many were folded. Our
    architectures apply each such BatchNorm to that convolution's output: tests/test_distill.py checks that the
    folded models give the same outputs."""
    if model.training:
        raise ValueError('fold_batchnorm needs a model in eval mode: training-mode BatchNorm uses batch statistics')
    folded = 0
    for parent in model.modules():
        names = list(parent._modules)
        for conv_name, bn_name in zip(names, names[1:]):
            conv, bn = parent._modules[conv_name], parent._modules[bn_name]
            if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d) and conv.out_channels == bn.num_features:
                parent._modules[conv_name] = fuse_conv_bn_eval(conv, bn)
                parent._modules[bn_name] = nn.Identity()
                folded += 1
    return folded


def describe_teacher(cfg) -> TeacherDescription:
    path = cfg.teacher_weights
    for key, allowed in (('teacher_model', tuple(ARCHITECTURES)), ('teacher_head', HEADS)):
        value = getattr(cfg, key)
        if value and value not in allowed:
            raise ConfigError(f'{cfg.where(key)}: key "{key}": expected one of {", ".join(allowed)}, got "{value}"')
    checkpoint = _our_checkpoint(path)
    if is_ultralytics_checkpoint(path):
        _, info = read_ultralytics_checkpoint(path)
        found = dict(head='leyolo')
        # Ultralytics trains on letterboxed images
        described = TeacherDescription(cfg.teacher_model or 'leyolo-nano', 'leyolo', info['num_classes'], (), 0,
                                       (), 0, 0, letterbox=True)
    elif checkpoint is not None:
        record, spec = checkpoint['config'], checkpoint['spec']
        found = dict(model=record['model'], head=spec['kind'])
        anchors = tuple(v for scale in spec['anchors_px'] for wh in scale for v in wh)
        names = ast.literal_eval(record['class_names']) if record.get('class_names') else ()
        described = TeacherDescription(record['model'], spec['kind'], spec['num_classes'], tuple(names),
                                       len(spec['anchors_px'][0]) if anchors else 0, anchors,
                                       spec['input_width'], spec['input_height'],
                                       record['letterbox'] == 'True' if 'letterbox' in record else None)
    else:
        described = _describe_state_dict(cfg, to_our_names(read_state_dict(path)))
        found = {}
    for key, value in found.items():   # what the file says wins; a .data key that contradicts it is a mistake
        given = getattr(cfg, f'teacher_{key}')
        if given and given != value:
            raise ConfigError(f'{cfg.where(f"teacher_{key}")}: key "teacher_{key}": {given}, but {path} holds a '
                              f'{value} {"model" if key == "model" else "head"}')
    return described


def _our_checkpoint(path) -> dict | None:
    """A checkpoint of train.py (it carries `config` and `spec`), or None for any other file."""
    try:
        checkpoint = load_checkpoint(path)
    except CheckpointError:
        return None
    return checkpoint if isinstance(checkpoint.get('config'), dict) and 'spec' in checkpoint else None


def _describe_state_dict(cfg, state: dict) -> TeacherDescription:
    """A plain state_dict: the model and head from the .data's teacher_* keys or the tensor names."""
    path = cfg.teacher_weights
    model = cfg.teacher_model or ('yolo-fastestv2' if any(k.startswith('backbone.stage2.') for k in state) else '')
    if not model:
        raise ConfigError(f'{cfg.where("teacher_weights")}: {path} does not say which model it holds: set '
                          f'teacher_model (and teacher_head) in the .data file')
    head = cfg.teacher_head or ('leyolo' if 'head.dfl_bins' in state else 'anchor')
    class_conv = state.get('head.cls_outs.0.weight', state.get('head.cls_branches.0.3.weight'))
    if class_conv is None:
        raise ConfigError(f'{cfg.where("teacher_weights")}: {path} has no class output layer of a {head} head '
                          f'(teacher_head = {head})')
    anchor_num, anchors = 0, ()
    if head == 'anchor':
        # The anchors only shape the teacher's head here: distillation reads its features and class scores, not
        # its boxes. The student's anchors serve when their count fits.
        anchor_num = state['head.obj_outs.0.weight'].shape[0]
        anchors = cfg.anchors if (cfg.head == 'anchor' and anchor_num == cfg.anchor_num and
                                  ARCHITECTURES[model].strides == cfg.strides) else ()
        if not anchors:
            raise ConfigError(f'{cfg.where("teacher_weights")}: {path} is a plain state_dict with an anchor head of '
                              f'{anchor_num} anchors per scale, which the student\'s anchors do not fit: give a '
                              f'checkpoint of train.py instead (it carries its anchors)')
    return TeacherDescription(model, head, class_conv.shape[0], (), anchor_num, anchors, 0, 0)


def check_classes(cfg, described: TeacherDescription) -> None:
    """The teacher must score the .data's classes in the .data's order; the error names both files."""
    path, names = cfg.teacher_weights, cfg.names or cfg.data_path
    if described.class_names and described.class_names != tuple(cfg.class_names):
        raise ConfigError(f'{cfg.where("teacher_weights")}: the teacher {path} was trained on the classes '
                          f'{", ".join(described.class_names)} but {names} lists {", ".join(cfg.class_names)}: '
                          f'distillation needs the same classes in the same order')
    if described.classes != cfg.classes:
        raise ConfigError(f'{cfg.where("teacher_weights")}: the teacher {path} has {described.classes} classes but '
                          f'{names} lists {cfg.classes}: distillation needs the same classes in the same order')
