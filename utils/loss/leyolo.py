"""The LeYOLO-head loss (YOLOv8's, which the released LeYOLO weights were trained with): task-aligned assignment
(utils/loss/assign.py), then per batch

    box  sum over positives of weight * (1 - CIoU(predicted box, assigned box))
    dfl  sum over positives of weight * distribution focal loss of the 4 side distances
    cls  sum over all points and classes of BCE(class logit, soft target from the assigner)
each divided by the sum of the soft targets (about the number of positives, at least 1); weight = the point's soft
target. total = LOSS_SCALE * (box_gain * box + cls_gain * cls + dfl_gain * dfl), gains 7.5 / 0.5 / 1.5 by default.
The gains, the assigner's topk / alpha / beta and the gradient clipping norm are .data keys (`leyolo_box_gain`,
`leyolo_cls_gain`, `leyolo_dfl_gain`, `tal_topk`, `tal_alpha`, `tal_beta`, `leyolo_max_grad_norm`); their defaults
live in utils/config.py's Config alone.

Distribution focal loss (Li et al. 2020, GFL): a side's distance d (grid cells, clipped to [0, reg_max - 1.01]) lies
between bins i = floor(d) and i + 1; the loss is the cross-entropy towards both, weighted (i + 1 - d) and (d - i),
so the expectation of the predicted distribution is pulled onto d.

LOSS_SCALE: Ultralytics multiplies its loss by the batch size, at a nominal batch of 64 and lr 0.01; ours is a
per-batch mean, so 64 * 10 takes the same steps at the .data files' learning_rate 0.001.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from utils.boxes import ciou, cxcywh_to_xyxy, norm_to_px, xyxy_to_cxcywh
from utils.config import Config
from utils.loss.assign import TaskAlignedAssigner
from utils.loss.targets import checked_targets

LOSS_SCALE = 640.0
BOX_GAIN, CLS_GAIN, DFL_GAIN = Config.leyolo_box_gain, Config.leyolo_cls_gain, Config.leyolo_dfl_gain
# Clipping sets the step: from LeYOLONano.pt the gradient norm of this loss is in the thousands to tens of
# thousands, far above the norm we clip to, so every SGD step has the length learning_rate x max_grad_norm (times
# momentum's gain) whatever the loss. Unclipped, SGD diverged on coco128 within a few steps even at a tenth of the
# default learning_rate; at norm 30 or 100 fine-tuning collapsed once the lr had warmed up, at 10 it held
# (docs/benchmarks.md, "Fine-tuning LeYOLO-Nano"). The trainer reads `max_grad_norm` off the loss.
MAX_GRAD_NORM = Config.leyolo_max_grad_norm


def anchor_points(grid_sizes: list, strides: tuple, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Cell centres of every scale, P3 first, row-major: (A, 2) in grid cells of their scale, and (A, 1) strides."""
    points, point_strides = [], []
    for (h, w), stride in zip(grid_sizes, strides):
        ys, xs = torch.meshgrid(torch.arange(h, device=device) + 0.5, torch.arange(w, device=device) + 0.5,
                                indexing='ij')
        points.append(torch.stack((xs, ys), -1).view(-1, 2))
        point_strides.append(torch.full((h * w, 1), float(stride), device=device))
    return torch.cat(points), torch.cat(point_strides)


def pad_targets(targets: torch.Tensor, batch: int, width_px: float, height_px: float):
    """(M, 6) [image, class, cx, cy, w, h] normalised -> classes (B, K), boxes_xyxy_px (B, K, 4), valid (B, K),
    K = the most boxes in one image."""
    device = targets.device
    image = targets[:, 0].long()
    counts = torch.bincount(image, minlength=batch) if len(targets) else torch.zeros(batch, dtype=torch.long)
    most = int(counts.max()) if len(targets) else 0
    classes = torch.zeros(batch, most, dtype=torch.long, device=device)
    boxes = torch.zeros(batch, most, 4, device=device)
    valid = torch.zeros(batch, most, dtype=torch.bool, device=device)
    xyxy = norm_to_px(cxcywh_to_xyxy(targets[:, 2:6]), width_px, height_px)
    for b in range(batch):
        rows = image == b
        n = int(rows.sum())
        classes[b, :n], boxes[b, :n], valid[b, :n] = targets[rows, 1].long(), xyxy[rows], True
    return classes, boxes, valid


def distribution_focal_loss(logits: torch.Tensor, distances: torch.Tensor) -> torch.Tensor:
    """logits (K, 4, reg_max), target distances (K, 4) in bins -> (K,) mean over the 4 sides."""
    left = distances.long()
    right_weight = distances - left
    left_weight = 1 - right_weight
    reg_max = logits.shape[-1]
    flat = logits.reshape(-1, reg_max)
    loss = (F.cross_entropy(flat, left.view(-1), reduction='none').view(left.shape) * left_weight
            + F.cross_entropy(flat, (left + 1).view(-1), reduction='none').view(left.shape) * right_weight)
    return loss.mean(-1)


class LeYOLOLoss:
    def __init__(self, spec, box_gain: float = BOX_GAIN, cls_gain: float = CLS_GAIN, dfl_gain: float = DFL_GAIN,
                 topk: int = Config.tal_topk, alpha: float = Config.tal_alpha, beta: float = Config.tal_beta,
                 max_grad_norm: float = MAX_GRAD_NORM):
        self.strides = tuple(spec.strides)
        self.num_classes = spec.num_classes
        self.reg_max = spec.reg_max
        self.gains = (box_gain, cls_gain, dfl_gain)
        self.max_grad_norm = max_grad_norm or None   # 0 in the .data file: the trainer does not clip
        self.assigner = TaskAlignedAssigner(spec.num_classes, topk=topk, alpha=alpha, beta=beta)

    @classmethod
    def from_config(cls, spec, cfg=None) -> LeYOLOLoss:
        """The loss with the gains and assigner settings of a Config (None: the defaults)."""
        if spec.kind != 'leyolo':
            raise ValueError(f'the LeYOLO loss is for the leyolo head, the model has a "{spec.kind}" head')
        c = cfg if cfg is not None else Config
        return cls(spec, box_gain=c.leyolo_box_gain, cls_gain=c.leyolo_cls_gain, dfl_gain=c.leyolo_dfl_gain,
                   topk=c.tal_topk, alpha=c.tal_alpha, beta=c.tal_beta, max_grad_norm=c.leyolo_max_grad_norm)

    def __call__(self, outputs, targets: torch.Tensor):
        targets = checked_targets(outputs, targets, self.strides, self.num_classes)
        batch = outputs[0][0].shape[0]
        device = outputs[0][0].device
        # (B, A, 4, reg_max) box logits and (B, A, C) class logits, scales concatenated
        box_logits = torch.cat([b.float().flatten(2) for b, _ in outputs], 2).transpose(1, 2)
        box_logits = box_logits.reshape(batch, -1, 4, self.reg_max)
        cls_logits = torch.cat([c.float().flatten(2) for _, c in outputs], 2).transpose(1, 2)
        grid_sizes = [tuple(b.shape[-2:]) for b, _ in outputs]
        points, point_strides = anchor_points(grid_sizes, self.strides, device)
        # the batch's real input size (may differ from the spec's, e.g. at multi-scale training)
        height_px, width_px = grid_sizes[0][0] * self.strides[0], grid_sizes[0][1] * self.strides[0]

        bins = torch.arange(self.reg_max, device=device, dtype=torch.float32)
        distances = (box_logits.softmax(-1) * bins).sum(-1)                                   # (B, A, 4) cells
        pred_xyxy = torch.cat((points - distances[..., :2], points + distances[..., 2:]), -1)  # grid cells

        classes, gt_xyxy_px, valid = pad_targets(targets.to(device), batch, width_px, height_px)
        assigned = self.assigner(cls_logits.detach().sigmoid(), pred_xyxy.detach() * point_strides,
                                 points * point_strides, classes, gt_xyxy_px, valid)
        score_sum = assigned.scores.sum().clamp(min=1)

        loss_cls = F.binary_cross_entropy_with_logits(cls_logits, assigned.scores, reduction='sum') / score_sum
        positive = assigned.positive
        if positive.any():
            weight = assigned.scores.sum(-1)[positive]                                         # (K,)
            target_xyxy = (assigned.boxes_xyxy_px / point_strides)[positive]                   # grid cells
            box_iou = ciou(xyxy_to_cxcywh(pred_xyxy[positive]), xyxy_to_cxcywh(target_xyxy))
            loss_box = ((1 - box_iou) * weight).sum() / score_sum
            point = points.expand(batch, -1, -1)[positive]
            target_distances = torch.cat((point - target_xyxy[:, :2], target_xyxy[:, 2:] - point), -1)
            target_distances = target_distances.clamp(0, self.reg_max - 1 - 0.01)
            loss_dfl = (distribution_focal_loss(box_logits[positive], target_distances) * weight).sum() / score_sum
        else:   # no boxes in the batch: only the class term (every score pushed to 0) teaches anything
            loss_box = loss_dfl = box_logits.sum() * 0

        box_gain, cls_gain, dfl_gain = self.gains
        total = LOSS_SCALE * (box_gain * loss_box + cls_gain * loss_cls + dfl_gain * loss_dfl)
        parts = {'box': loss_box.item(), 'cls': loss_cls.item(), 'dfl': loss_dfl.item(),
                 'matches': int(positive.sum())}
        return total, parts
