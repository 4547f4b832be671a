"""The anchor head's assigners (utils/loss/assigners/) on hand-made boxes, every expected anchor and cell worked out
by hand from each algorithm's definition, then each assigner training a real model on a coco128 batch.

The hand cases: a 128 x 128 input, strides 16 and 32 (grids 8 x 8 and 4 x 4; every coordinate below is exact in
float32), anchors 16x16, 32x32, 32x64 px on stride 16 and 48x48, 64x64, 96x96 px on stride 32. With zero box
logits every anchor predicts its own anchor box centred on its cell (2 * sigmoid(0) - 0.5 = 0.5 from the corner,
(2 * sigmoid(0))^2 = 1 times the anchor), so a predicted IoU is the anchor IoU worked out below.

The main box is 32 x 32 px centred at (40, 40), the centre of stride-16 cell (2, 2): it spans 24..56 px on both
axes. Cell centres lie at 8 + 16 i (stride 16) and 16 + 32 i (stride 32); 24 and 56 are on the box's sides, not
inside it, so only cell (2, 2) of stride 16 and cell (1, 1) of stride 32 (centre 48) hold a cell centre inside.
The decode reaches 1 cell from a cell's centre: on stride 16 (centre 2.5 cells) only column and row 2; on stride 32
(centre 1.25 cells) columns and rows 0 and 1.
"""
import math
import statistics

import cv2
import pytest
import torch

from model.architectures import ARCHITECTURES
from model.detector import Detector
from model.heads import AnchorHead
from model.spec import HeadSpec
from model.weights import load_backbone_weights
from tests.conftest import shared_path
from utils.loss import build_loss
from utils.loss.anchor import AnchorLoss
from utils.loss.assigners import ATSSAssigner, SimOTAAssigner, TaskAlignedAnchorAssigner, YOLOv5Assigner, build_assigner
from utils.preprocess import resize_image

torch.set_num_threads(1)   # the test machine has 2 cores shared by many processes

SIDE = 128
STRIDES = (16, 32)
ANCHORS_PX = (((16, 16), (32, 32), (32, 64)), ((48, 48), (64, 64), (96, 96)))
CLASSES = 2


def anchors_grid():
    return [torch.tensor(a, dtype=torch.float32) / s for a, s in zip(ANCHORS_PX, STRIDES)]


def raw_outputs(batch=1):
    """Zero logits: every anchor predicts its anchor box, objectness 0.5, class probabilities 1 / CLASSES."""
    return [(torch.zeros(batch, 4 * 3, SIDE // s, SIDE // s), torch.zeros(batch, 3, SIDE // s, SIDE // s),
             torch.zeros(batch, CLASSES, SIDE // s, SIDE // s)) for s in STRIDES]


def logit(p):
    return torch.log(p / (1 - p))


def box(cx_px, cy_px, w_px, h_px, cls=0, image=0):
    return [image, cls, cx_px / SIDE, cy_px / SIDE, w_px / SIDE, h_px / SIDE]


def positives(matches):
    """{(stride, anchor, column, row, class)} over all scales, after checking no position is matched twice."""
    found = [(stride, a, x, y, c) for stride, m in zip(STRIDES, matches)
             for a, x, y, c in zip(m.anchor.tolist(), m.gx.tolist(), m.gy.tolist(), m.classes.tolist())]
    positions = [(stride, a, x, y) for stride, a, x, y, _ in found]
    assert len(set(positions)) == len(positions), f'a position is matched twice: {found}'
    return set(found)


def assign(assigner, boxes, outputs=None):
    return assigner(torch.tensor(boxes, dtype=torch.float32), outputs or raw_outputs(), anchors_grid())


# ATSS

# IoU of the main box with each anchor centred on each of its candidate cells: per scale the 9 cells nearest to the
# centre (stride 16: columns/rows 1..3, centres 24, 40, 56 px; stride 32: 0..2, centres 16, 48, 80 px; no ties).
# Per axis the overlap with 24..56 is: 16 px anchor 16 at the centre, 8 one cell off; 32 px anchor 32 / 16;
# 64 px anchor 32 anywhere in rows 1..3. On stride 32: 48 px anchor 16 / 32 / 0 at centres 16 / 48 / 80;
# 64 px anchor 24 / 32 / 8; 96 px anchor 32 / 32 / 24.
STRIDE16_IOUS = ([256 / 1024] + [128 / 1152] * 4 + [64 / 1216] * 4            # 16x16: centre, 4 sides, 4 corners
                 + [1024 / 1024] + [512 / 1536] * 4 + [256 / 1792] * 4      # 32x32
                 + [1024 / 2048] * 3 + [512 / 2560] * 6)                    # 32x64: column 2, columns 1 and 3
STRIDE32_IOUS = ([1024 / 2304] + [512 / 2816] * 2 + [256 / 3072] + [0.0] * 5  # 48x48: (1,1), (0,1)+(1,0), (0,0)
                 + [1024 / 4096] + [768 / 4352] * 2 + [576 / 4544] + [256 / 4864] * 2 + [192 / 4928] * 2
                 + [64 / 5056]                                               # 64x64
                 + [1024 / 9216] * 4 + [768 / 9472] * 4 + [576 / 9664])     # 96x96


def test_atss_threshold_is_mean_plus_std_of_the_nearest_cells_anchors():
    ious = STRIDE16_IOUS + STRIDE32_IOUS
    threshold = statistics.mean(ious) + statistics.stdev(ious)
    assert len(ious) == 54 and 0.33 < threshold < 0.35
    # Of the anchors inside the box and within reach (stride 16 cell (2, 2): IoU 0.25, 1, 0.5; stride 32 cell
    # (1, 1): 0.444, 0.25, 0.111), those at or above the threshold:
    expected = {(16, 1, 2, 2, 0), (16, 2, 2, 2, 0), (32, 0, 1, 1, 0)}
    assert positives(assign(ATSSAssigner(STRIDES), [box(40, 40, 32, 32)])) == expected
    # the target boxes: centre from the cell's corner and size, grid cells of the scale
    matches = assign(ATSSAssigner(STRIDES), [box(40, 40, 32, 32)])
    assert matches[0].boxes.tolist() == [[0.5, 0.5, 2.0, 2.0]] * 2
    assert matches[1].boxes.tolist() == [[0.25, 0.25, 1.0, 1.0]]
    assert matches[0].quality is None


def test_atss_tiny_box_takes_its_best_reaching_anchor():
    # 8 x 8 px at (44, 44): spans 40..48, holds no cell centre (40 is on its side). Reaching cells: stride 16
    # columns/rows 2..3, stride 32 0..1. Best anchor IoU: 16x16 at (40, 40) holds it whole, 64 / 256 = 0.25
    # (32x32 there: 64 / 1024; 48x48 at (48, 48): 64 / 2304).
    assert positives(assign(ATSSAssigner(STRIDES), [box(44, 44, 8, 8, cls=1)])) == {(16, 0, 2, 2, 1)}


def test_atss_box_in_the_corner_uses_cells_inside_the_grid_only():
    # 16 x 16 px at (8, 8) spans 0..16: only stride-16 cell (0, 0) holds its centre (stride-32 cell (0, 0) has its
    # centre at 16, on the side); the 16x16 anchor there fits it exactly (IoU 1).
    found = positives(assign(ATSSAssigner(STRIDES), [box(8, 8, 16, 16)]))
    assert (16, 0, 0, 0, 0) in found
    assert all(stride == 16 and (x, y) == (0, 0) for stride, _, x, y, _ in found)


# SimOTA

def test_simota_dynamic_k_and_lowest_cost():
    # Candidates (reaching anchors) and their IoUs: stride 16 cell (2, 2): 0.25, 1, 0.5; stride 32 cell (1, 1):
    # 0.444, 0.25, 0.111; cells (0, 1) and (1, 0): 0.182, 0.176, 0.111; cell (0, 0): 0.083, 0.127, 0.111.
    ten_best = [1, 0.5, 1024 / 2304, 0.25, 0.25, 512 / 2816, 512 / 2816, 768 / 4352, 768 / 4352, 576 / 4544]
    assert int(sum(ten_best)) == 3                                  # dynamic k
    # Equal scores: the 3 of lowest IoU cost among the cells inside the box (the others cost 100000 more)
    assert positives(assign(SimOTAAssigner(STRIDES), [box(40, 40, 32, 32)])) == {
        (16, 1, 2, 2, 0), (16, 2, 2, 2, 0), (32, 0, 1, 1, 0)}
    # The class cost: objectness logit -30 on stride-16 anchors 0 and 1 at (2, 2) (score ~1e-13, cost ~15) drops
    # them for the next cheapest inside the box, the 64x64 anchor of stride-32 cell (1, 1) (IoU 0.25, cost 5.5).
    outputs = raw_outputs()
    outputs[0][1][0, :2, 2, 2] = -30
    assert positives(assign(SimOTAAssigner(STRIDES), [box(40, 40, 32, 32)], outputs)) == {
        (16, 2, 2, 2, 0), (32, 0, 1, 1, 0), (32, 1, 1, 1, 0)}
    # The centre prior: the 48x48 anchor of stride-32 cell (0, 1) (centre (16, 48), outside the box) made to predict
    # the box exactly (IoU 1: x 2 * 0.875 - 0.5 = 1.25 cells from its corner, y 0.25, size (2 * 0.408)^2 * 1.5 = 1).
    # k grows to int(3.29 - 0.18 + 1) = 4, yet it costs 100000 more than the cells inside: not chosen.
    outputs = raw_outputs()
    outputs[1][0][0, 0:4, 1, 0] = logit(torch.tensor([0.875, 0.375, (2 / 3) ** 0.5 / 2, (2 / 3) ** 0.5 / 2]))
    found = positives(assign(SimOTAAssigner(STRIDES), [box(40, 40, 32, 32)], outputs))
    assert (32, 0, 0, 1, 0) not in found and len(found) == 4
    assert {(16, 1, 2, 2, 0), (16, 2, 2, 2, 0), (32, 0, 1, 1, 0)} < found


def test_simota_two_boxes_competing_for_one_anchor():
    # Box P (class 0) 32 x 32 and box Q (class 1) 30 x 30, both centred at (40, 40). Both want the 32x32 anchor of
    # stride-16 cell (2, 2): IoU 1 with P, 900 / 1024 with Q; at equal class scores P's cost is lower and P keeps it.
    boxes = [box(40, 40, 32, 32, cls=0), box(40, 40, 30, 30, cls=1)]
    found = positives(assign(SimOTAAssigner(STRIDES), boxes))
    assert (16, 1, 2, 2, 0) in found and (16, 1, 2, 2, 1) not in found
    # Class logits of cell (2, 2) for class 1 (+10 / -10): P's class cost there becomes ~11, Q's ~0.35, so Q's
    # total (0.35 + 3 * -log(0.879) = 0.74) is the lower and Q takes the anchor.
    outputs = raw_outputs()
    outputs[0][2][0, 0, 2, 2], outputs[0][2][0, 1, 2, 2] = -10, 10
    found = positives(assign(SimOTAAssigner(STRIDES), boxes, outputs))
    assert (16, 1, 2, 2, 1) in found and (16, 1, 2, 2, 0) not in found


def test_simota_tiny_box_gets_its_one_cheapest():
    # 8 x 8 px at (44, 44): no cell centre inside, every candidate costs 100000 extra; the top-10 IoUs sum below 1,
    # so k = 1: the candidate of highest IoU, the 16x16 anchor at (40, 40) (0.25).
    assert positives(assign(SimOTAAssigner(STRIDES), [box(44, 44, 8, 8)])) == {(16, 0, 2, 2, 0)}


def test_simota_box_at_the_border():
    # 16 x 16 px at (8, 72): the left border. Reaching cells: stride 16 column 0 only (centre 0.5 cells), row 4;
    # its 16x16 anchor fits exactly.
    found = positives(assign(SimOTAAssigner(STRIDES), [box(8, 72, 16, 16)]))
    assert (16, 0, 0, 4, 0) in found
    assert all(x >= 0 and y >= 0 for _, _, x, y, _ in found)


# Task-aligned

def test_tal_topk_by_alignment_and_soft_targets():
    # Candidates inside the box and in reach: stride 16 (2, 2) IoU 0.25, 1, 0.5 and stride 32 (1, 1) 0.444,
    # 0.25, 0.111. Equal scores: alignment follows IoU ** 6. Top 2: the 32x32 and 32x64 anchors of stride 16.
    matches = assign(TaskAlignedAnchorAssigner(STRIDES, topk=2), [box(40, 40, 32, 32)])
    assert positives(matches) == {(16, 1, 2, 2, 0), (16, 2, 2, 2, 0)}
    # Soft targets: the best positive gets the box's best IoU among its positives (1), the other its alignment
    # relative to the best times that: 0.5 ** 6.
    quality = dict(zip(matches[0].anchor.tolist(), matches[0].quality.tolist()))
    assert quality[1] == pytest.approx(1.0, abs=1e-5) and quality[2] == pytest.approx(0.5 ** 6, rel=1e-4)
    # The score enters: objectness -30 on anchor 1 (alignment ~2e-7) lets the 48x48 anchor of stride 32 in
    # (alignment 0.5 * (4/9) ** 6 against the 32x64 anchor's 0.5 * 0.5 ** 6). Best IoU among positives: 0.5.
    outputs = raw_outputs()
    outputs[0][1][0, 1, 2, 2] = -30
    matches = assign(TaskAlignedAnchorAssigner(STRIDES, topk=2), [box(40, 40, 32, 32)], outputs)
    assert positives(matches) == {(16, 2, 2, 2, 0), (32, 0, 1, 1, 0)}
    assert matches[0].quality.tolist() == pytest.approx([0.5], rel=1e-4)
    assert matches[1].quality.tolist() == pytest.approx([0.5 * ((4 / 9) / 0.5) ** 6], rel=1e-4)


def test_tal_two_boxes_competing_for_one_anchor():
    # P 32 x 32 (class 0), Q 30 x 30 (class 1), both at (40, 40); with top-1 both pick the 32x32 anchor of stride-16
    # cell (2, 2) (Q's IoUs there: 0.879, then 900 / 2048 for 32x64). The box it overlaps most, P, keeps it; Q is
    # left with nothing.
    boxes = [box(40, 40, 32, 32, cls=0), box(40, 40, 30, 30, cls=1)]
    assert positives(assign(TaskAlignedAnchorAssigner(STRIDES, topk=1), boxes)) == {(16, 1, 2, 2, 0)}
    # IoU decides, not alignment: with class logits of cell (2, 2) for class 1 (+2 / -2, probabilities 0.982 and
    # 0.018) Q's alignment there, sqrt(0.5 * 0.982) * 0.879^6 = 0.32, is above P's, sqrt(0.5 * 0.018) * 1 = 0.095,
    # which still tops P's others (48x48 of stride 32: sqrt(0.25) * 0.444^6 = 0.004); P keeps the anchor.
    outputs = raw_outputs()
    outputs[0][2][0, 0, 2, 2], outputs[0][2][0, 1, 2, 2] = -2, 2
    assert positives(assign(TaskAlignedAnchorAssigner(STRIDES, topk=1), boxes, outputs)) == {(16, 1, 2, 2, 0)}


def test_tal_tiny_box_takes_its_best_reaching_anchor():
    matches = assign(TaskAlignedAnchorAssigner(STRIDES), [box(44, 44, 8, 8)])
    assert positives(matches) == {(16, 0, 2, 2, 0)}
    assert matches[0].quality.tolist() == pytest.approx([0.25], rel=1e-4)   # alone: its own IoU


# All assigners

@pytest.mark.parametrize('name', ['yolov5', 'atss', 'simota', 'tal'])
def test_no_boxes_no_matches(name):
    matches = build_assigner(name, STRIDES)(torch.zeros((0, 6)), raw_outputs(2), anchors_grid())
    assert [len(m.image) for m in matches] == [0, 0]


def test_image_index_is_kept_and_boxes_of_different_images_do_not_compete():
    # the same box in images 0 and 1: each gets the same anchors, on its own image
    for assigner in (ATSSAssigner(STRIDES), SimOTAAssigner(STRIDES), TaskAlignedAnchorAssigner(STRIDES, topk=2)):
        matches = assigner(torch.tensor([box(40, 40, 32, 32, image=0), box(40, 40, 32, 32, image=1)]),
                           raw_outputs(2), anchors_grid())
        images = torch.cat([m.image for m in matches]).tolist()
        assert images.count(0) == images.count(1) > 0


def test_build_loss_takes_the_assigner_and_tal_settings_of_the_config():
    from types import SimpleNamespace
    spec = HeadSpec(kind='anchor', strides=STRIDES, num_classes=CLASSES, input_width=SIDE, input_height=SIDE,
                    anchors_px=ANCHORS_PX)
    model = SimpleNamespace(spec=spec)
    assert isinstance(build_loss(model, None).assigner, YOLOv5Assigner)
    for name, kind in (('yolov5', YOLOv5Assigner), ('atss', ATSSAssigner), ('simota', SimOTAAssigner)):
        cfg = SimpleNamespace(assigner=name, tal_topk=10, tal_alpha=0.5, tal_beta=6.0, anchor_cls_gain=0.005)
        assert isinstance(build_loss(model, cfg).assigner, kind)
    tal = build_loss(model, SimpleNamespace(assigner='tal', tal_topk=3, tal_alpha=1.0, tal_beta=2.0,
                                            anchor_cls_gain=0.005)).assigner
    assert isinstance(tal, TaskAlignedAnchorAssigner) and (tal.topk, tal.alpha, tal.beta) == (3, 1.0, 2.0)


# Training on a real batch

TRAIN_SIDE = 256


def coco128_batch(images=4):
    """The first `images` coco128 train2017 images that have labels, stretched to TRAIN_SIDE, and their boxes."""
    folder = shared_path('datasets/coco128')
    pictures, rows = [], []
    for label in sorted((folder / 'labels' / 'train2017').glob('*.txt'))[:images]:
        image = cv2.imread(str(folder / 'images' / 'train2017' / f'{label.stem}.jpg'))
        pictures.append(torch.from_numpy(resize_image(image, TRAIN_SIDE, TRAIN_SIDE, letterbox=False)[0]))
        rows += [[len(pictures) - 1] + [float(v) for v in line.split()] for line in label.read_text().splitlines()
                 if line.strip()]
    return torch.stack(pictures).permute(0, 3, 1, 2).float() / 255, torch.tensor(rows)


@pytest.mark.parametrize('name', ['yolov5', 'atss', 'simota', 'tal'])
def test_each_assigner_trains_a_real_model_on_a_coco128_batch(name):
    backbone_weights = shared_path('weights/yolo-fastestv2/shufflenetv2-0.5x-imagenet-backbone.pth')
    images, targets = coco128_batch()
    torch.manual_seed(0)
    backbone, neck, channels = ARCHITECTURES['yolo-fastestv2'].build_body()
    anchors = ((12.64, 19.39), (37.88, 51.48), (55.71, 138.31)), ((126.91, 78.23), (131.57, 214.55),
                                                                  (279.92, 258.87))
    spec = HeadSpec(kind='anchor', strides=(16, 32), num_classes=80, input_width=TRAIN_SIDE,
                    input_height=TRAIN_SIDE, anchors_px=anchors)
    head = AnchorHead(channels, 3, 80)
    head.init_biases(spec.strides, TRAIN_SIDE, TRAIN_SIDE)
    model = Detector(backbone, neck, head, spec).train()
    load_backbone_weights(model, backbone_weights)
    loss_fn = AnchorLoss(spec, build_assigner(name, spec.strides))
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-3)
    history = []
    for _ in range(6):
        loss, parts = loss_fn(model(images), targets)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        history.append(loss.item())
        assert parts['matches'] > 0
    assert all(math.isfinite(v) for v in history), history
    assert all(later < earlier for earlier, later in zip(history, history[1:])) and history[-1] < 0.9 * history[0], \
        history
