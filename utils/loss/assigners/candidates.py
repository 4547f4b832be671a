"""What every anchor-head assigner works from: each box's candidate anchors, what the head predicts at them, and the
matches an assigner hands to the loss.

The anchor head (utils/loss/anchor.py) decodes, in grid cells of a scale (as utils/postprocess.py does):
    centre = cell corner + 2 * sigmoid - 0.5      within 1 cell of the cell's centre on each axis
    size   = (2 * sigmoid) ** 2 * anchor          under 4 times the anchor on each axis
So an anchor at a cell can output a box only when the box's centre lies less than REACH_CELLS (1) from the cell's
centre on both axes and the box is under SIZE_REACH (4) times the anchor on both axes: the anchor "reaches" the
box. At most the 2 x 2 cells around a box's centre reach it. The assigners that pick among many anchors (ATSS,
SimOTA, task-aligned) make positives of reaching anchors only: a positive that cannot output its box is trained
towards a box it never gives, and its objectness target stays low.

Candidates: per box and scale, the cells of a square window of `radius` cells around the cell holding the box's
centre, each with every anchor of the scale; columns ordered scale, window row, window column, anchor, so a
tensor (M boxes, N columns) holds one value per box and candidate.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch

from utils.boxes import box_iou, cxcywh_to_xyxy

REACH_CELLS = 1.0
SIZE_REACH = 4.0
INSIDE_MARGIN_PX = 0.01   # a cell centre closer than this to a box's side is not inside it (ATSS's margin)


class ScaleMatches(NamedTuple):
    """The positives of one scale: K (image, anchor, cell, class) rows and what each learns."""
    image: torch.Tensor          # (K,) long, image index in the batch
    anchor: torch.Tensor         # (K,) long, anchor index within the scale
    gy: torch.Tensor             # (K,) long, cell row
    gx: torch.Tensor             # (K,) long, cell column
    classes: torch.Tensor        # (K,) long
    boxes: torch.Tensor          # (K, 4) the box: cx, cy relative to the cell's corner, w, h; grid cells
    quality: torch.Tensor | None  # (K,) objectness target in [0, 1], or None: the loss uses the predicted box's CIoU


@dataclass
class Candidates:
    """Per box m and candidate column n (see the module docstring)."""
    image: torch.Tensor       # (M,) long
    classes: torch.Tensor     # (M,) long
    scale: torch.Tensor       # (N,) long
    anchor: torch.Tensor      # (N,) long
    gx: torch.Tensor          # (M, N) long, clamped into the grid (mask with in_grid)
    gy: torch.Tensor          # (M, N) long
    in_grid: torch.Tensor     # (M, N) bool
    offset: torch.Tensor      # (M, N, 2) box centre - cell corner, grid cells of the column's scale
    size: torch.Tensor        # (M, N, 2) box width and height, grid cells of the column's scale
    anchor_wh: torch.Tensor   # (N, 2) the column's anchor, grid cells
    distance: torch.Tensor    # (M, N) cell centre to box centre, grid cells (inf outside the grid)
    reach: torch.Tensor       # (M, N) bool: the anchor at the cell can output the box (and the cell is in the grid)
    inside: torch.Tensor      # (M, N) bool: the cell centre lies inside the box (and the cell is in the grid)
    anchor_iou: torch.Tensor  # (M, N) IoU of the box with the anchor's box centred on the cell
    key: torch.Tensor         # (M, N) long: one number per (image, scale, anchor, cell) of the batch


def find_candidates(targets: torch.Tensor, grid_sizes: list, anchors_grid: list, strides: tuple, batch: int,
                    radius: int) -> Candidates:
    """targets (M, 6) [image, class, cx, cy, w, h] normalised; grid_sizes [(H, W)] and anchors_grid [(A, 2) cells]
    per scale."""
    device = targets.device
    steps = torch.arange(-radius, radius + 1, device=device)
    window = torch.stack(torch.meshgrid(steps, steps, indexing='ij')[::-1], -1).view(-1, 2)   # (W, 2) x, y
    image, classes = targets[:, 0].long(), targets[:, 1].long()
    parts, key_base = [], 0
    for s, ((grid_h, grid_w), anchors, stride) in enumerate(zip(grid_sizes, anchors_grid, strides)):
        num_anchors = len(anchors)
        scale = torch.tensor([grid_w, grid_h], dtype=torch.float32, device=device)
        centre, size = targets[:, 2:4] * scale, targets[:, 4:6] * scale                      # (M, 2) cells
        home = torch.minimum(centre.floor(), scale - 1)                                       # the centre's cell
        cell = (home[:, None] + window[None]).repeat_interleave(num_anchors, 1)               # (M, W*A, 2)
        in_grid = ((cell >= 0) & (cell < scale)).all(-1)
        offset = centre[:, None] - cell
        from_centre = offset - 0.5
        anchor_wh = anchors.repeat(len(window), 1)                                            # (W*A, 2)
        box_size = size[:, None].expand_as(offset)
        reach = ((from_centre.abs() < REACH_CELLS).all(-1) & (box_size < SIZE_REACH * anchor_wh).all(-1)
                 & in_grid)
        box_xyxy = cxcywh_to_xyxy(torch.cat((offset, box_size), -1))                          # cell corner = 0
        margins = torch.cat((0.5 - box_xyxy[..., :2], box_xyxy[..., 2:] - 0.5), -1) * stride
        inside = (margins.amin(-1) > INSIDE_MARGIN_PX) & in_grid
        anchor_box = cxcywh_to_xyxy(torch.cat((torch.full_like(offset, 0.5), anchor_wh.expand_as(offset)), -1))
        anchor_index = torch.arange(num_anchors, device=device).repeat(len(window))
        gx = cell[..., 0].long().clamp(0, grid_w - 1)
        gy = cell[..., 1].long().clamp(0, grid_h - 1)
        key = key_base + ((image[:, None] * num_anchors + anchor_index) * grid_h + gy) * grid_w + gx
        key_base += batch * num_anchors * grid_h * grid_w
        parts.append(dict(scale=torch.full_like(anchor_index, s), anchor=anchor_index, gx=gx, gy=gy,
                          in_grid=in_grid, offset=offset, size=box_size, anchor_wh=anchor_wh,
                          distance=from_centre.norm(dim=-1).masked_fill(~in_grid, float('inf')), reach=reach,
                          inside=inside, anchor_iou=box_iou(box_xyxy, anchor_box), key=key))
    per_column = ('scale', 'anchor', 'anchor_wh')   # the rest are (M, N, ...): joined along the columns
    joined = {name: torch.cat([p[name] for p in parts], 0 if name in per_column else 1) for name in parts[0]}
    return Candidates(image=image, classes=classes, **joined)


def grid_sizes_of(outputs) -> list:
    return [tuple(obj.shape[-2:]) for _, obj, _ in outputs]


@torch.no_grad()
def predictions(outputs, cand: Candidates, anchors_grid: list) -> tuple[torch.Tensor, torch.Tensor]:
    """What the head predicts at every candidate: boxes (M, N, 4) cx, cy (from the cell's corner), w, h in grid
    cells, and scores (M, N, C) = sigmoid(objectness) x softmax(class logits), the deployed score."""
    boxes, scores = [], []
    image = cand.image[:, None]
    for s, ((reg, obj, cls), anchors) in enumerate(zip(outputs, anchors_grid)):
        columns = cand.scale == s
        a, gy, gx = cand.anchor[columns][None], cand.gy[:, columns], cand.gx[:, columns]
        n, num_anchors, grid_h, grid_w = obj.shape
        raw = reg.float().view(n, num_anchors, 4, grid_h, grid_w)[image, a, :, gy, gx].sigmoid()   # (M, n, 4)
        boxes.append(torch.cat((raw[..., :2] * 2 - 0.5, (raw[..., 2:] * 2) ** 2 * anchors[a]), -1))
        probabilities = cls.float().softmax(1).permute(0, 2, 3, 1)[image, gy, gx]                  # (M, n, C)
        scores.append(obj.float()[image, a, gy, gx].sigmoid()[..., None] * probabilities)
    return torch.cat(boxes, 1), torch.cat(scores, 1)


def predicted_iou(cand: Candidates, pred_boxes: torch.Tensor) -> torch.Tensor:
    """(M, N) IoU of each box with the box predicted at each candidate, 0 where the anchor cannot reach it."""
    target = cxcywh_to_xyxy(torch.cat((cand.offset, cand.size), -1))
    return box_iou(cxcywh_to_xyxy(pred_boxes), target) * cand.reach


def ranks(values: torch.Tensor, descending: bool) -> torch.Tensor:
    """(M, N) -> the rank of each value in its row, 0 first; equal values rank in column order."""
    return values.argsort(dim=1, descending=descending, stable=True).argsort(dim=1)


def with_fallback(chosen: torch.Tensor, allowed: torch.Tensor, measure: torch.Tensor) -> torch.Tensor:
    """A box (row) with nothing chosen takes its one allowed candidate of highest `measure`, if it has any."""
    empty = ~chosen.any(1) & allowed.any(1)
    best = measure.masked_fill(~allowed, float('-inf')).argmax(1)
    fallback = torch.zeros_like(chosen).scatter_(1, best[:, None], True) & empty[:, None]
    return chosen | fallback


def resolve_conflicts(chosen: torch.Tensor, key: torch.Tensor, preference: torch.Tensor) -> torch.Tensor:
    """One box per anchor position: where several boxes chose the same key, the box of highest `preference`
    keeps it (on a tie, the box listed first)."""
    rows, columns = chosen.nonzero(as_tuple=True)
    if not len(rows):
        return chosen
    keys, values = key[rows, columns], preference[rows, columns]
    best = torch.full((int(keys.max()) + 1,), float('-inf'), device=key.device)
    best.scatter_reduce_(0, keys, values, 'amax')
    winner = values == best[keys]
    order = torch.arange(len(rows), device=key.device)
    first = torch.full_like(best, len(rows), dtype=torch.long).scatter_reduce_(0, keys[winner], order[winner],
                                                                               'amin')
    keep = order == first[keys]
    resolved = torch.zeros_like(chosen)
    resolved[rows[keep], columns[keep]] = True
    return resolved


def to_matches(cand: Candidates, chosen: torch.Tensor, num_scales: int,
               quality: torch.Tensor | None = None) -> list[ScaleMatches]:
    """(M, N) chosen pairs -> the positives of each scale."""
    matches = []
    for s in range(num_scales):
        rows, columns = (chosen & (cand.scale == s)[None]).nonzero(as_tuple=True)
        boxes = torch.cat((cand.offset[rows, columns], cand.size[rows, columns]), 1)
        matches.append(ScaleMatches(cand.image[rows], cand.anchor[columns], cand.gy[rows, columns],
                                    cand.gx[rows, columns], cand.classes[rows], boxes,
                                    None if quality is None else quality[rows, columns]))
    return matches
