"""ATSS, adaptive training sample selection (Zhang et al. 2020, "Bridging the Gap Between Anchor-based and
Anchor-free Detection via Adaptive Training Sample Selection"; reference code sfzhang15/ATSS and mmdetection's
ATSSAssigner). It looks at the anchors only, never at the predictions.

Per box:
  1. candidates: on every scale, the `topk_cells` (9) cells whose centres lie nearest to the box's centre, each
     with all the scale's anchors. The reference code takes 9 x (anchors per location) anchors per level; our head
     has 3 anchors per cell, so 27 candidates per scale, 54 over Yolo-FastestV2's two scales.
  2. threshold = mean + standard deviation (n - 1) of the candidates' IoUs with the box, each anchor's box centred
     on its cell. A box that fits one scale's anchors well gets a high mean and a small spread there, so the
     threshold picks its scale and anchors without a hand-set IoU or size range.
  3. positives: the candidates with IoU >= threshold whose cell centre lies inside the box (0.01 px margin, as the
     reference), and (for this head, see candidates.py) which reach the box: at most the 2 x 2 cells around the
     centre.
  4. an anchor chosen by several boxes keeps the one it overlaps most (anchor IoU).
Choice for this head: a box that steps 1-3 leave without a positive (a box narrower or shorter than a cell may hold
no cell centre: with strides 16 and 32 boxes under 16 px, common in COCO) takes its one reaching anchor of highest
IoU, instead of being dropped as the reference drops it (its finest stride, 8, loses far fewer).
The objectness target stays the predicted box's CIoU, as with YOLOv5's matching.
"""
from __future__ import annotations

import torch

from utils.loss.assigners.candidates import (
    ScaleMatches,
    find_candidates,
    grid_sizes_of,
    ranks,
    resolve_conflicts,
    to_matches,
    with_fallback,
)

# The 9 nearest cells lie within 3 cells of the centre's cell on each axis, even in a grid's corner.
WINDOW_RADIUS = 3


class ATSSAssigner:
    def __init__(self, strides: tuple, topk_cells: int = 9):
        self.strides, self.topk_cells = tuple(strides), topk_cells

    @torch.no_grad()
    def __call__(self, targets: torch.Tensor, outputs, anchors_grid: list) -> list[ScaleMatches]:
        batch = outputs[0][1].shape[0]
        cand = find_candidates(targets, grid_sizes_of(outputs), anchors_grid, self.strides, batch, WINDOW_RADIUS)
        num_scales, num_anchors = len(anchors_grid), len(anchors_grid[0])
        # rank each scale's cells by distance (a cell's anchors share it): (M, scales, window cells, anchors)
        by_cell = cand.distance.view(len(targets), num_scales, (2 * WINDOW_RADIUS + 1) ** 2, num_anchors)
        cell_distance = by_cell[..., 0]
        near = ranks(cell_distance.flatten(0, 1), descending=False).view_as(cell_distance) < self.topk_cells
        near = near[..., None].expand_as(by_cell).reshape(cand.in_grid.shape) & cand.in_grid
        iou = cand.anchor_iou
        count = near.sum(1, keepdim=True)
        mean = (iou * near).sum(1, keepdim=True) / count
        std = (((iou - mean) ** 2 * near).sum(1, keepdim=True) / (count - 1).clamp(min=1)).sqrt()
        chosen = near & (iou >= mean + std) & cand.inside & cand.reach
        chosen = with_fallback(chosen, cand.reach, iou)
        chosen = resolve_conflicts(chosen, cand.key, iou)
        return to_matches(cand, chosen, num_scales)
