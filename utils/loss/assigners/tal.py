"""Task-aligned assignment (Feng et al. 2021, "TOOD: Task-aligned One-stage Object Detection"), as
utils/loss/assign.py does it for the LeYOLO head, on the anchor head's candidates.

Per box, over the anchors that reach it (candidates.py) and whose cell centre lies inside it:
    alignment = score ** alpha * IoU ** beta     (tal_alpha 0.5, tal_beta 6 by default)
    score = sigmoid(objectness) x softmax(class logits) of the box's class, IoU of the box predicted there
The box takes its `topk` (tal_topk, 10) candidates of highest alignment; an anchor chosen by several boxes keeps
the one it overlaps most (predicted IoU). The objectness target of a positive is TOOD's soft target, which
replaces the CIoU target of the other assigners: its alignment scaled so that the box's best positive gets the
box's best IoU among its positives (assign.py's rule). The class target stays the one-hot class.
Choices for this head: assign.py's candidates are every point inside the box; its TaskAlignedAssigner takes only
that rule, so here the same steps run on the reaching anchors (up to 2 x 2 cells x 3 anchors x 2 scales = 24 per
box), where top-10 keeps many of them. A box holding no cell centre (one narrower or shorter than a cell may: under
16 px at stride 16) would get nothing; it takes its one reaching anchor of highest alignment.
"""
from __future__ import annotations

import torch

from utils.config import Config
from utils.loss.assigners.candidates import (
    ScaleMatches,
    find_candidates,
    grid_sizes_of,
    predicted_iou,
    predictions,
    ranks,
    resolve_conflicts,
    to_matches,
    with_fallback,
)

EPS = 1e-9


class TaskAlignedAnchorAssigner:
    def __init__(self, strides: tuple, topk: int = Config.tal_topk, alpha: float = Config.tal_alpha,
                 beta: float = Config.tal_beta):
        self.strides, self.topk, self.alpha, self.beta = tuple(strides), topk, alpha, beta

    @torch.no_grad()
    def __call__(self, targets: torch.Tensor, outputs, anchors_grid: list) -> list[ScaleMatches]:
        batch = outputs[0][1].shape[0]
        cand = find_candidates(targets, grid_sizes_of(outputs), anchors_grid, self.strides, batch, radius=1)
        pred_boxes, scores = predictions(outputs, cand, anchors_grid)
        iou = predicted_iou(cand, pred_boxes)
        class_score = scores.gather(2, cand.classes[:, None, None].expand(-1, scores.shape[1], 1))[..., 0]
        alignment = class_score.pow(self.alpha) * iou.pow(self.beta)
        allowed = cand.reach & cand.inside
        chosen = (ranks(alignment.masked_fill(~allowed, -1.0), descending=True) < self.topk) & allowed
        chosen = with_fallback(chosen, cand.reach, alignment)
        chosen = resolve_conflicts(chosen, cand.key, iou)
        alignment = alignment * chosen
        best_iou = (iou * chosen).amax(1, keepdim=True)
        quality = alignment * best_iou / (alignment.amax(1, keepdim=True) + EPS)
        return to_matches(cand, chosen, len(anchors_grid), quality)
