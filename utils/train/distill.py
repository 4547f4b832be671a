"""Knowledge distillation: a frozen teacher (utils/train/teacher.py) runs on each training batch beside the student,
and the student learns from it as well as from the labels. Any teacher, any student: heads, strides and input sizes
may differ, the two only have to score the same classes.

Every step, on the same augmented batch the student sees (resized to the teacher's input size when that differs),
the teacher runs in eval mode under no_grad and the student's loss gains two terms, each per scale of the student,
compared at the image locations of its grid:

    feat  the student's neck features, through a learned 1x1 adapter to the teacher's channel count, against the
          teacher's neck features of the nearest stride (resized to the student's grid when their sizes differ);
          both standardised per image and channel first (PKD, Cao et al. 2022: it compares the pattern of the
          features, not their scale, which differs between architectures), MSE over all locations.
    cls   the per-location class distribution: where the teacher sees an object, the student's class scores follow
          the teacher's. The teacher's class scores of all its scales are pooled onto the student's grid (best per
          cell and class): a teacher with a stride-8 scale sees small objects there, where the student's
          same-stride map would only show background. Anchor student (softmax classes): KL(teacher's normalised
          class scores || student's softmax), weighted per cell by the square of the teacher's best class score,
          so that its faint background guesses count little. LeYOLO student (sigmoid classes): BCE against the
          teacher's scores, normalised by their sum (as its own class loss is).
    obj   anchor student only: whether a cell holds an object at all, the one prediction that still carries the
          teacher's knowledge on a one-class set (where a one-class softmax makes `cls` empty). BCE of the student's
          best anchor's objectness in each cell against the teacher's best class score there, averaged over the
          cells as the anchor loss averages its own objectness term (a LeYOLO student has no objectness: its
          sigmoid classes already take the teacher's scores in `cls`).

    loss = detection loss + distill_gain * scale * (distill_feature_gain * feat + distill_class_gain * cls
                                                    + distill_object_gain * obj)

with `scale` the student loss's own (STUDENT_LOSS_SCALE): the gains are set against the anchor loss, and the LeYOLO
loss weighs its terms ten times as much (640 against 64, utils/loss/). Their defaults (.data keys, utils/config.py):
    feature 2   PKD's loss is 2 x (1 - correlation) per channel; its authors weigh it about this much
    class 2     six times the anchor loss's class weight at the default anchor_cls_gain (64 x 0.005 = 0.32): soft
                targets where the teacher is sure, which do not swamp the shared class/objectness tower as a strong
                hard-label cross-entropy does
    object 20   per cell about what the anchor loss gives each of the cell's 3 anchors at stride 16 (64 / 3); 64
                pulled a small student's shared class/objectness tower away from its classes (tests/test_distill.py)

The adapters are trained with the student (they are in the optimizer and in last.pt, key 'distill', for resume) but
are no part of it: best.pt, evaluation and export see the plain student. The student's neck output is read by a
forward hook, so the model's forward and its outputs stay as they are. At `distill_feature_gain = 0` the adapters
neither run nor train (the feature term then costs nothing).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from utils.errors import CheckpointError
from utils.train.distributed import wrap_model
from utils.train.teacher import load_teacher

CONFIDENCE_POWER = 2.0   # the class term's weight per cell: the teacher's best class score to this power
STUDENT_LOSS_SCALE = {'anchor': 1.0, 'leyolo': 10.0}


class Distiller:
    """The teacher, the adapters and the loss terms; `__call__` adds the terms to the student's loss."""

    def __init__(self, cfg, student: nn.Module, device: torch.device, world: int = 1, log=print):
        self.gain = cfg.distill_gain * STUDENT_LOSS_SCALE[student.spec.kind]
        self.term_gains = (cfg.distill_feature_gain, cfg.distill_class_gain, cfg.distill_object_gain)
        self.teacher = load_teacher(cfg, device, log)
        self.student_kind = student.spec.kind
        self.teacher_kind = self.teacher.spec.kind
        self.teacher_size = (self.teacher.spec.input_height, self.teacher.spec.input_width)
        teacher_strides, student_strides = self.teacher.spec.strides, student.spec.strides
        # each student scale learns from the teacher scale of the nearest stride (a ratio of 1 where they share one)
        self.pairs = [min(range(len(teacher_strides)), key=lambda j: abs(math.log2(teacher_strides[j] / s)))
                      for s in student_strides]
        student_channels = neck_channels(student, cfg.height, cfg.width)
        teacher_channels = neck_channels(self.teacher, *self.teacher_size)
        self.adapters = Adapters(student_channels, [teacher_channels[j] for j in self.pairs]).to(device)
        self.adapters_net = wrap_model(self.adapters, device, world)   # DDP averages their gradients too
        self.student_features, self.teacher_features = keep_neck_output(student), keep_neck_output(self.teacher)

    def __call__(self, images: torch.Tensor, student_outputs: list) -> tuple[torch.Tensor, dict]:
        """The distillation loss for this batch (student_outputs: its raw head outputs on `images`) and its parts."""
        with torch.no_grad(), torch.autocast('cuda', enabled=images.is_cuda):
            teacher_scores = class_scores(self.teacher(self.teacher_input(images)), self.teacher_kind)
        teacher_features = self.teacher_features.pop('features')
        student_features = self.student_features.pop('features')
        feature_gain, class_gain, object_gain = self.term_gains
        adapted = self.adapters_net(student_features) if feature_gain else None
        feat = cls = obj = torch.zeros((), device=images.device)
        for i, j in enumerate(self.pairs):
            grid = student_features[i].shape[2:]
            if adapted is not None:
                feat = feat + pkd_loss(adapted[i].float(), resized(teacher_features[j].float(), grid))
            scores = on_grid(teacher_scores, grid)
            if self.student_kind == 'anchor':
                _, student_obj, student_cls = student_outputs[i]
                cls = cls + softmax_class_loss(student_cls.float(), scores)
                obj = obj + objectness_loss(student_obj.float(), scores)
            else:
                cls = cls + sigmoid_class_loss(student_outputs[i][-1].float(), scores)
        feat, cls, obj = feat / len(self.pairs), cls / len(self.pairs), obj / len(self.pairs)
        total = self.gain * (feature_gain * feat + class_gain * cls + object_gain * obj)
        parts = {'dfeat': feat.item(), 'dcls': cls.item()}
        return total, parts | ({'dobj': obj.item()} if self.student_kind == 'anchor' else {})

    def teacher_input(self, images: torch.Tensor) -> torch.Tensor:
        """The batch at the teacher's input size. On the CPU uint8 images resize as they are (the teacher scales them
        to 0..1 itself): ~20x faster than converting to float32 first (20 against 390 ms a batch of 32 at 352 -> 320,
        timed side by side on 2 busy cores), which made that resize a large part of the teacher's cost."""
        if tuple(images.shape[2:]) == self.teacher_size:
            return images
        if images.dtype != torch.uint8 or images.is_cuda:   # uint8 is the CPU's fast path; CUDA resizes float
            images = images.float() / 255
        return F.interpolate(images, size=self.teacher_size, mode='bilinear', align_corners=False)


class Adapters(nn.Module):
    """One 1x1 conv per student scale: the student's neck channels -> the paired teacher scale's channels."""

    def __init__(self, in_channels: list[int], out_channels: list[int]):
        super().__init__()
        self.convs = nn.ModuleList(nn.Conv2d(c_in, c_out, 1) for c_in, c_out in zip(in_channels, out_channels))

    def forward(self, features: list[torch.Tensor]) -> list[torch.Tensor]:
        return [conv(x) for conv, x in zip(self.convs, features)]


def keep_neck_output(model: nn.Module) -> dict:
    """A dict that receives `model.neck`'s output as 'features' on each forward in training mode (the teacher's:
    in eval mode too, where it always runs). A closure, not a method: a deep copy of the model (the EMA) shares it
    instead of copying the distiller, and in eval mode the student's copy stores nothing."""
    store = {}
    frozen = not any(p.requires_grad for p in model.parameters())

    def hook(module, inputs, output):
        if module.training or frozen:
            store['features'] = output

    model.neck.register_forward_hook(hook)
    return store


def neck_channels(model: nn.Module, height: int, width: int) -> list[int]:
    """The channel count of each of the model's neck outputs, from one forward pass on a blank image."""
    parameter = next(model.parameters())
    was_training = model.training
    store = {}
    handle = model.neck.register_forward_hook(lambda module, inputs, output: store.update(features=output))
    with torch.no_grad():
        model.eval()(torch.zeros(1, 3, height, width, device=parameter.device))
    model.train(was_training)
    handle.remove()
    return [f.shape[1] for f in store['features']]


def resized(maps: torch.Tensor, grid) -> torch.Tensor:
    """(N, C, H, W) maps on another grid, aligned by image position (both grids cover the whole image)."""
    if tuple(maps.shape[2:]) == tuple(grid):
        return maps
    return F.interpolate(maps, size=tuple(grid), mode='bilinear', align_corners=False)


def on_grid(score_maps: list[torch.Tensor], grid) -> torch.Tensor:
    """The teacher's class scores of every scale on one student grid, the best of them per cell and class: the
    teacher may see an object at a scale other than the one the student detects it at. A finer map gives each cell
    the best score of the teacher cells it covers."""
    on_this_grid = [F.adaptive_max_pool2d(maps, tuple(grid)) if maps.shape[2] >= grid[0] else resized(maps, grid)
                    for maps in score_maps]
    return torch.stack(on_this_grid).amax(0).clamp(0, 1)


def class_scores(outputs: list, kind: str) -> list[torch.Tensor]:
    """Per scale (N, C, H, W) class probabilities of a detection at each location, from raw head outputs:
    anchor head: best anchor's objectness x class softmax; leyolo head: class sigmoids."""
    if kind == 'anchor':
        return [obj.float().sigmoid().amax(1, keepdim=True) * cls.float().softmax(1) for _, obj, cls in outputs]
    return [cls.float().sigmoid() for _, cls in outputs]


def standardised(features: torch.Tensor) -> torch.Tensor:
    """Zero mean and unit variance per image and channel over the locations."""
    mean = features.mean(dim=(2, 3), keepdim=True)
    std = features.std(dim=(2, 3), keepdim=True) if features.shape[2] * features.shape[3] > 1 else 1.0
    return (features - mean) / (std + 1e-6)


def pkd_loss(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    return F.mse_loss(standardised(student), standardised(teacher))


def softmax_class_loss(student_logits: torch.Tensor, teacher_scores: torch.Tensor) -> torch.Tensor:
    """KL(teacher's class distribution || student's softmax) per location, weighted by the teacher's confidence."""
    weight = teacher_scores.amax(1) ** CONFIDENCE_POWER                      # (N, H, W)
    target = teacher_scores / teacher_scores.sum(1, keepdim=True).clamp(min=1e-9)
    kl = (target * (target.clamp(min=1e-9).log() - student_logits.log_softmax(1))).sum(1)
    return (weight * kl).sum() / weight.sum().clamp(min=1.0)


def objectness_loss(student_obj_logits: torch.Tensor, teacher_scores: torch.Tensor) -> torch.Tensor:
    """BCE of the best anchor's objectness per cell (N, A, H, W -> N, H, W) against the teacher's best class score
    there, mean over the cells: the gradient reaches the anchor that already claims the cell, not its neighbours."""
    return F.binary_cross_entropy_with_logits(student_obj_logits.amax(1), teacher_scores.amax(1))


def sigmoid_class_loss(student_logits: torch.Tensor, teacher_scores: torch.Tensor) -> torch.Tensor:
    bce = F.binary_cross_entropy_with_logits(student_logits, teacher_scores, reduction='sum')
    return bce / teacher_scores.sum().clamp(min=1.0)


def restore_adapters(distiller: Distiller | None, checkpoint: dict, path) -> None:
    """Load the adapters of a resumed run; resuming must keep the teacher (or its absence) of the run it continues."""
    if (distiller is None) != ('distill' not in checkpoint):
        raise CheckpointError(f'{path}: written by a run {"with" if distiller is None else "without"} a teacher '
                              f'(teacher_weights): resume it the same way')
    if distiller is not None:
        distiller.adapters.load_state_dict(checkpoint['distill'])
