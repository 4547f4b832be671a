"""Task-aligned assignment (TOOD, Feng et al. 2021; as YOLOv8 and LeYOLO train): which anchor points learn which box.

For every ground-truth box g and anchor point a (a cell centre, in input pixels):
    alignment(g, a) = score(a, class of g) ** alpha * IoU(g, predicted box at a) ** beta
counted only where a lies strictly inside g. Each box takes the `topk` points of highest alignment among those
inside it. A point chosen by several boxes keeps the one it overlaps most (highest IoU). A positive point's
targets are its box and class, with a soft class score: alignment normalised so that each box's best point gets
that box's best IoU among its positives (the rest in proportion), and 0 for every other class and point.

Because the score and the predicted box both come from the network, the assignment follows what it already does
well (hence "task-aligned"): no anchors, no size rules, no hyper-parameters beyond alpha, beta, topk.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from utils.boxes import box_iou

EPS = 1e-9


@dataclass
class Assignment:
    """Per image b and anchor point a."""
    positive: torch.Tensor       # (B, A) bool
    box_index: torch.Tensor      # (B, A) long, index of the assigned box in the image's list (0 where negative)
    classes: torch.Tensor        # (B, A) long, class of the assigned box (0 where negative)
    boxes_xyxy_px: torch.Tensor  # (B, A, 4) the assigned box (that of box 0 where negative: mask with `positive`)
    scores: torch.Tensor         # (B, A, C) soft class targets, 0 where negative


def points_inside(points_px: torch.Tensor, boxes_xyxy_px: torch.Tensor) -> torch.Tensor:
    """(A, 2) points, (B, M, 4) boxes -> (B, M, A) True where the point is strictly inside the box."""
    x, y = points_px[:, 0], points_px[:, 1]
    x1, y1, x2, y2 = (boxes_xyxy_px[..., i, None] for i in range(4))
    margins = torch.stack((x - x1, y - y1, x2 - x, y2 - y), -1)
    return margins.amin(-1) > EPS


class TaskAlignedAssigner:
    def __init__(self, num_classes: int, topk: int = 10, alpha: float = 0.5, beta: float = 6.0):
        self.num_classes, self.topk, self.alpha, self.beta = num_classes, topk, alpha, beta

    @torch.no_grad()
    def __call__(self, scores: torch.Tensor, pred_boxes_xyxy_px: torch.Tensor, points_px: torch.Tensor,
                 gt_classes: torch.Tensor, gt_boxes_xyxy_px: torch.Tensor, gt_valid: torch.Tensor) -> Assignment:
        """scores (B, A, C) probabilities, pred_boxes (B, A, 4), points (A, 2); ground truth padded to M per
        image: classes (B, M) long, boxes (B, M, 4), valid (B, M) bool (False for padding)."""
        batch, num_points, num_classes = scores.shape
        device = scores.device
        if gt_boxes_xyxy_px.shape[1] == 0 or not gt_valid.any():
            return Assignment(torch.zeros(batch, num_points, dtype=torch.bool, device=device),
                              torch.zeros(batch, num_points, dtype=torch.long, device=device),
                              torch.zeros(batch, num_points, dtype=torch.long, device=device),
                              torch.zeros(batch, num_points, 4, device=device), torch.zeros_like(scores))

        candidate = points_inside(points_px, gt_boxes_xyxy_px) & gt_valid[..., None]            # (B, M, A)
        iou = box_iou(gt_boxes_xyxy_px[:, :, None], pred_boxes_xyxy_px[:, None]) * candidate
        class_score = scores.gather(2, gt_classes[:, None, :].expand(-1, num_points, -1)).transpose(1, 2)
        alignment = class_score.pow(self.alpha) * iou.pow(self.beta) * candidate                # (B, M, A)

        # each box: its top-k points by alignment, among the points inside it
        k = min(self.topk, num_points)
        top = alignment.topk(k, dim=2).indices
        chosen = torch.zeros_like(candidate).scatter_(2, top, True) & candidate

        # a point chosen by several boxes keeps the box it overlaps most
        shared = chosen.sum(1, keepdim=True) > 1                                                # (B, 1, A)
        best_box = torch.nn.functional.one_hot(iou.argmax(1), gt_boxes_xyxy_px.shape[1]).transpose(1, 2).bool()
        chosen = torch.where(shared, best_box & candidate, chosen)

        positive = chosen.any(1)                                                                # (B, A)
        box_index = chosen.float().argmax(1)                                                    # (B, A)
        classes = gt_classes.gather(1, box_index) * positive
        boxes = gt_boxes_xyxy_px.gather(1, box_index[..., None].expand(-1, -1, 4))

        # soft targets: alignment scaled per box so its best point scores the box's best IoU
        alignment = alignment * chosen
        best_alignment = alignment.amax(2, keepdim=True)
        best_iou = (iou * chosen).amax(2, keepdim=True)
        soft = (alignment * best_iou / (best_alignment + EPS)).amax(1)                           # (B, A)
        targets = torch.nn.functional.one_hot(classes, num_classes).float() * (soft * positive)[..., None]
        return Assignment(positive, box_index * positive, classes, boxes, targets)
