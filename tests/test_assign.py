"""Task-aligned assignment on hand-made cases, every expected value worked out by hand from the rule
alignment = score ** alpha * IoU ** beta (points strictly inside the box, top-k per box, highest IoU wins a shared
point, soft score = alignment / box's best alignment * box's best IoU)."""
import torch

from utils.boxes import box_iou
from utils.loss.assign import TaskAlignedAssigner

STRIDE = 8
GRID = 4   # a 4x4 grid of stride-8 cells: points at 4, 12, 20, 28 px on each axis


def grid_points() -> torch.Tensor:
    centres = torch.arange(GRID) * STRIDE + STRIDE / 2
    ys, xs = torch.meshgrid(centres, centres, indexing='ij')
    return torch.stack((xs, ys), -1).view(-1, 2)            # row-major: index = row * GRID + column


def index(column: int, row: int) -> int:
    return row * GRID + column


def assign(pred_boxes, gt_boxes, gt_classes, topk=10, num_classes=3, score=0.5, valid=None):
    points = grid_points()
    scores = torch.full((1, len(points), num_classes), score)
    gt_boxes = torch.tensor([gt_boxes], dtype=torch.float32).view(1, -1, 4)
    gt_classes = torch.tensor([gt_classes], dtype=torch.long).view(1, -1)
    valid = torch.ones(gt_classes.shape, dtype=torch.bool) if valid is None else torch.tensor([valid])
    return TaskAlignedAssigner(num_classes, topk=topk)(scores, pred_boxes[None], points, gt_classes, gt_boxes,
                                                       valid)


def test_iou_by_hand():
    assert torch.isclose(box_iou(torch.tensor([0., 0, 24, 24]), torch.tensor([8., 8, 32, 32])),
                         torch.tensor(256 / (576 + 576 - 256)))


def test_topk_of_the_points_inside_by_alignment():
    box = [0., 0, 24, 24]                                   # holds the 3x3 points at 4, 12, 20 px
    pred = torch.tensor(box).repeat(GRID * GRID, 1)         # outside points predict the box perfectly (IoU 1) ...
    inside = [index(c, r) for r in range(3) for c in range(3)]
    fractions = [0.9, 0.3, 0.5, 0.8, 0.2, 0.4, 0.7, 0.6, 0.1]
    for point, f in zip(inside, fractions):                 # ... inside points with IoU f (the box cut to height 24f)
        pred[point] = torch.tensor([0., 0, 24, 24 * f])
    result = assign(pred, box, [2], topk=4)

    expected = {inside[i] for i in (0, 3, 6, 7)}            # IoU 0.9, 0.8, 0.7, 0.6: outside points never count
    assert set(result.positive[0].nonzero().flatten().tolist()) == expected
    assert (result.classes[0][result.positive[0]] == 2).all()
    assert torch.equal(result.boxes_xyxy_px[0, inside[0]], torch.tensor(box))
    # soft targets: best point gets the best IoU (0.9), the others (f / 0.9)^6 of it (score 0.5 is common)
    for i in (0, 3, 6, 7):
        f = fractions[i]
        assert torch.isclose(result.scores[0, inside[i], 2], torch.tensor(0.9 * (f / 0.9) ** 6), atol=1e-5)
    assert result.scores[0, :, :2].abs().sum() == 0
    assert result.scores[0][~result.positive[0]].abs().sum() == 0


def test_class_score_enters_the_alignment():
    box = [0., 0, 24, 24]
    pred = torch.tensor(box).repeat(GRID * GRID, 1)        # every IoU 1: only the class score decides
    points = grid_points()
    scores = torch.full((1, GRID * GRID, 3), 0.1)
    favoured = index(1, 2)
    scores[0, favoured, 1] = 0.9
    result = TaskAlignedAssigner(3, topk=1)(scores, pred[None], points, torch.tensor([[1]]),
                                            torch.tensor([[box]]), torch.tensor([[True]]))
    assert result.positive[0].nonzero().flatten().tolist() == [favoured]


def test_shared_point_goes_to_the_box_it_overlaps_most():
    box_a, box_b = [0., 0, 24, 24], [8., 8, 32, 32]         # both hold (12, 12), (20, 12), (12, 20), (20, 20)
    pred = torch.tensor(box_a).repeat(GRID * GRID, 1)
    pred[index(1, 1)] = torch.tensor(box_b)                 # IoU 1 with B, 0.286 with A
    result = assign(pred, [box_a, box_b], [0, 1], topk=9)
    assert result.classes[0, index(1, 1)] == 1 and result.box_index[0, index(1, 1)] == 1
    assert result.classes[0, index(2, 2)] == 0 and result.box_index[0, index(2, 2)] == 0   # predicts A exactly
    assert result.positive[0, index(3, 3)] and result.classes[0, index(3, 3)] == 1          # only inside B
    assert result.positive[0, index(0, 0)] and result.classes[0, index(0, 0)] == 0          # only inside A
    assert result.positive[0].sum() == 9 + 9 - 4                                            # one box per point


def test_equal_overlap_tie_goes_to_the_first_listed_box():
    box = [0., 0, 24, 24]
    pred = torch.tensor(box).repeat(GRID * GRID, 1)
    result = assign(pred, [box, box], [2, 0], topk=10)      # the same box twice, two classes
    assert result.positive[0].sum() == 9
    assert (result.classes[0][result.positive[0]] == 2).all()
    assert (result.box_index[0][result.positive[0]] == 0).all()


def test_a_point_on_the_border_is_not_inside():
    box = [4., 4, 20, 20]                                   # points (4, y) and (x, 4) lie on its edges
    pred = torch.tensor(box).repeat(GRID * GRID, 1)
    result = assign(pred, box, [0], topk=10)
    assert set(result.positive[0].nonzero().flatten().tolist()) == {index(1, 1)}


def test_no_targets():
    pred = torch.tensor([0., 0, 8, 8]).repeat(GRID * GRID, 1)
    empty = assign(pred, torch.zeros(0, 4).tolist(), [], topk=10)
    padded = assign(pred, [0., 0, 24, 24], [1], valid=[False])      # padding rows are not boxes
    for result in (empty, padded):
        assert not result.positive.any() and result.scores.abs().sum() == 0
        assert result.scores.shape == (1, GRID * GRID, 3)
