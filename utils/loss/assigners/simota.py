"""SimOTA (Ge et al. 2021, "YOLOX: Exceeding YOLO Series in 2021"; reference code Megvii-BaseDetection/YOLOX
`get_assignments`, mmdetection's SimOTAAssigner): optimal-transport-like assignment from the current predictions.

Per box, over its candidates:
    IoU  between the box and the box the head predicts at the candidate (decoded under no_grad)
    cost = BCE(sqrt(score), one-hot class) summed over classes + 3 * -log(IoU + 1e-8)
           + 100000 where the candidate's cell centre is outside the box (the centre prior)
    score = sigmoid(objectness) x softmax(class logits), the head's deployed score (YOLOX: sigmoid(obj) x
            sigmoid(cls))
    dynamic k = the integer part of the sum of the box's 10 highest candidate IoUs, at least 1
The box takes its k candidates of lowest cost; an anchor chosen by several boxes keeps the one of lowest cost.
Choices for this head: YOLOX's candidates are the points inside the box or within 2.5 strides of its centre
(1.5 in its later releases); here they are the anchors that reach the box (candidates.py): the decode reaches 1
cell from a cell's centre, a centre region of radius 1 cell, on both scales and all 3 anchors, so at most
2 x 2 x 3 x 2 = 24 per box (YOLOv7 likewise runs SimOTA on YOLOv5's candidate cells). A box holding no cell
centre (smaller than a cell) still gets its k cheapest, as in YOLOX.
The objectness target stays the predicted box's CIoU (YOLOX puts the IoU on the class target instead).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from utils.loss.assigners.candidates import (
    ScaleMatches,
    find_candidates,
    grid_sizes_of,
    predicted_iou,
    predictions,
    ranks,
    resolve_conflicts,
    to_matches,
)

OUTSIDE_COST = 100000.0


class SimOTAAssigner:
    def __init__(self, strides: tuple, candidate_topk: int = 10, iou_weight: float = 3.0):
        self.strides, self.candidate_topk, self.iou_weight = tuple(strides), candidate_topk, iou_weight

    @torch.no_grad()
    def __call__(self, targets: torch.Tensor, outputs, anchors_grid: list) -> list[ScaleMatches]:
        batch = outputs[0][1].shape[0]
        cand = find_candidates(targets, grid_sizes_of(outputs), anchors_grid, self.strides, batch, radius=1)
        pred_boxes, scores = predictions(outputs, cand, anchors_grid)
        iou = predicted_iou(cand, pred_boxes)
        one_hot = F.one_hot(cand.classes, scores.shape[-1]).float()[:, None].expand_as(scores)
        cls_cost = F.binary_cross_entropy(scores.sqrt(), one_hot, reduction='none').sum(-1)
        cost = cls_cost + self.iou_weight * -torch.log(iou + 1e-8) + OUTSIDE_COST * ~cand.inside
        cost = cost.masked_fill(~cand.reach, float('inf'))
        top_iou = iou.topk(min(self.candidate_topk, iou.shape[1]), dim=1).values
        dynamic_k = top_iou.sum(1).int().clamp(min=1)
        chosen = (ranks(cost, descending=False) < dynamic_k[:, None]) & cand.reach
        chosen = resolve_conflicts(chosen, cand.key, -cost)
        return to_matches(cand, chosen, len(anchors_grid))
