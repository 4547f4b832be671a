"""YOLOv5's matching (Jocher et al., ultralytics/yolov5 `build_targets`), the anchor head's default assigner.

A box is assigned to every anchor of a scale whose width and height ratios to it are both within
`ANCHOR_RATIO_MAX` (4) either way, in the cell holding its centre and in the two neighbouring cells nearest to the
centre (left or right, up or down). The decode reaches 1.5 cells from the cell's corner, so a neighbour can
predict the centre; three cells per match triple the positives, which speeds up learning on small datasets.
Scales are matched independently: a box may be assigned on both scales, to several anchors of one, and an
(anchor, cell) may take several boxes (the loss keeps the best-fitting one's objectness target).
"""
from __future__ import annotations

import torch

from utils.loss.assigners.candidates import ScaleMatches, grid_sizes_of

ANCHOR_RATIO_MAX = 4.0
# neighbour offsets in cells: centre, left, up, right, down (subtracted from the centre cell)
_NEIGHBOURS = torch.tensor([[0, 0], [1, 0], [0, 1], [-1, 0], [0, -1]], dtype=torch.float32)


def match_targets(targets: torch.Tensor, anchors_grid: torch.Tensor, grid_w: int, grid_h: int):
    """Assign targets (M, 6) [image, class, cx, cy, w, h] normalised to anchors and cells of one scale.

    Returns (image, anchor, gy, gx, class) index tensors and the target boxes (K, 4) as cx, cy relative to their
    cell's corner plus w, h, all in grid cells.
    """
    device = targets.device
    scale = torch.tensor([grid_w, grid_h], dtype=torch.float32, device=device)
    centre = targets[:, 2:4] * scale
    size = targets[:, 4:6] * scale
    ratio = size[None] / anchors_grid[:, None]                       # (A, M, 2)
    fits = torch.max(ratio, 1 / ratio).amax(dim=2) < ANCHOR_RATIO_MAX
    anchor, target = fits.nonzero(as_tuple=True)
    centre, size, t = centre[target], size[target], targets[target]
    # the neighbour on each axis nearest to the centre, if inside the grid
    frac = centre % 1
    use = torch.stack([torch.ones_like(frac[:, 0], dtype=torch.bool),
                       (frac[:, 0] < 0.5) & (centre[:, 0] > 1), (frac[:, 1] < 0.5) & (centre[:, 1] > 1),
                       (frac[:, 0] > 0.5) & (centre[:, 0] < grid_w - 1),
                       (frac[:, 1] > 0.5) & (centre[:, 1] < grid_h - 1)])   # (5, K)
    which, k = use.nonzero(as_tuple=True)
    cell = (centre[k] - _NEIGHBOURS.to(device)[which]).floor()
    cell[:, 0].clamp_(0, grid_w - 1)
    cell[:, 1].clamp_(0, grid_h - 1)
    boxes = torch.cat([centre[k] - cell, size[k]], dim=1)
    cell = cell.long()
    return (t[k, 0].long(), anchor[k], cell[:, 1], cell[:, 0], t[k, 1].long()), boxes


class YOLOv5Assigner:
    """`match_targets` on every scale; the predictions play no part."""

    def __call__(self, targets: torch.Tensor, outputs, anchors_grid: list) -> list[ScaleMatches]:
        matches = []
        for (grid_h, grid_w), anchors in zip(grid_sizes_of(outputs), anchors_grid):
            (image, anchor, gy, gx, classes), boxes = match_targets(targets, anchors, grid_w, grid_h)
            matches.append(ScaleMatches(image, anchor, gy, gx, classes, boxes, None))
        return matches
