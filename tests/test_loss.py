"""The anchor-head loss: hand-worked matching, CIoU against hand values, a perfect prediction (built by
inverting the decode that utils/postprocess.py uses) scoring far below a random one, and YOLOv5's matching giving
the very numbers it gave before the assigners were made choosable."""
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from model.spec import HeadSpec
from tests.conftest import shared_path
from utils.boxes import ciou
from utils.config import YFV2_COCO_ANCHORS_352
from utils.loss import build_loss
from utils.loss.anchor import AnchorLoss
from utils.loss.assigners import match_targets
from utils.postprocess import decode

torch.manual_seed(0)
torch.set_num_threads(1)   # the test machine has 2 cores shared by many processes


def test_matching_by_hand():
    # 4x4 grid; anchors in cells: (1,1) fits, (4,4) has ratio exactly 4 (not < 4), (2.5,0.625) ratios 2.5 and 1.6
    anchors = torch.tensor([[1.0, 1.0], [4.0, 4.0], [2.5, 0.625]])
    targets = torch.tensor([[0, 3, 0.3, 0.6, 0.25, 0.25]])   # centre at cells (1.2, 2.4), 1 x 1 cell
    (img, a, gy, gx, cls), boxes = match_targets(targets, anchors, 4, 4)
    got = sorted(zip(a.tolist(), gx.tolist(), gy.tolist(), [tuple(round(v, 4) for v in b) for b in boxes.tolist()]))
    # centre cell (1,2), the left neighbour (0,2) (x frac 0.2 < 0.5), the upper one (1,1) (y frac 0.4 < 0.5)
    expected = sorted((anchor, x, y, box) for anchor in (0, 2) for x, y, box in [
        (1, 2, (0.2, 0.4, 1.0, 1.0)), (0, 2, (1.2, 0.4, 1.0, 1.0)), (1, 1, (0.2, 1.4, 1.0, 1.0))])
    assert got == expected
    assert img.tolist() == [0] * 6 and cls.tolist() == [3] * 6


def test_matching_near_the_border_uses_no_cell_outside():
    anchors = torch.tensor([[1.0, 1.0]])
    targets = torch.tensor([[1, 0, 0.05, 0.95, 0.25, 0.25]])   # centre (0.2, 3.8): neighbours would be outside
    (img, a, gy, gx, cls), boxes = match_targets(targets, anchors, 4, 4)
    assert list(zip(gx.tolist(), gy.tolist())) == [(0, 3)]
    assert img.tolist() == [1]


def test_ciou_against_hand_values():
    same = torch.tensor([[2.0, 2.0, 2.0, 4.0]])
    assert ciou(same, same).item() == pytest.approx(1.0, abs=1e-5)
    # two 2x2 squares offset by 1 in x: IoU 2/6; enclosing box 3x2 (diagonal^2 13); centre distance^2 1; same shape
    a, b = torch.tensor([[1.0, 1.0, 2.0, 2.0]]), torch.tensor([[2.0, 1.0, 2.0, 2.0]])
    assert ciou(a, b).item() == pytest.approx(2 / 6 - 1 / 13, abs=1e-5)
    far = torch.tensor([[10.0, 10.0, 2.0, 2.0]])
    assert ciou(a, far).item() < 0


def spec_2_scales(num_classes=3):
    return HeadSpec(kind='anchor', strides=(16, 32), num_classes=num_classes, input_width=128, input_height=96,
                    anchors_px=(((10, 14), (24, 30), (40, 20)), ((50, 60), (80, 40), (100, 90))))


def logit(p):
    p = torch.as_tensor(p).clamp(1e-6, 1 - 1e-6)
    return torch.log(p / (1 - p))


def perfect_outputs(spec, targets, batch):
    """Raw outputs whose decode is exactly the targets: obj high only where a target is matched."""
    outputs = []
    for stride, anchors_px in zip(spec.strides, spec.anchors_px):
        h, w, a_num, c = spec.input_height // stride, spec.input_width // stride, len(anchors_px), spec.num_classes
        reg = torch.zeros(batch, a_num, 4, h, w)
        obj = torch.full((batch, a_num, h, w), -12.0)
        cls = torch.zeros(batch, c, h, w)
        anchors = torch.tensor(anchors_px, dtype=torch.float32) / stride
        (img, a, gy, gx, tcls), boxes = match_targets(targets, anchors, w, h)
        reg[img, a, 0, gy, gx] = logit((boxes[:, 0] + 0.5) / 2)
        reg[img, a, 1, gy, gx] = logit((boxes[:, 1] + 0.5) / 2)
        reg[img, a, 2, gy, gx] = logit(torch.sqrt(boxes[:, 2] / anchors[a, 0]) / 2)
        reg[img, a, 3, gy, gx] = logit(torch.sqrt(boxes[:, 3] / anchors[a, 1]) / 2)
        obj[img, a, gy, gx] = 12.0
        cls[img, tcls, gy, gx] = 12.0
        outputs.append((reg.view(batch, a_num * 4, h, w), obj, cls))
    return outputs


def test_perfect_prediction_scores_far_below_random_and_decodes_to_the_targets():
    spec = spec_2_scales()
    targets = torch.tensor([[0, 0, 0.30, 0.40, 0.15, 0.20],
                            [0, 2, 0.70, 0.55, 0.50, 0.60],
                            [1, 1, 0.45, 0.50, 0.30, 0.25]])
    loss_fn = build_loss(SimpleNamespace(spec=spec), cfg=None)
    assert isinstance(loss_fn, AnchorLoss)
    perfect = perfect_outputs(spec, targets, batch=2)
    random = [tuple(torch.randn_like(t) for t in scale) for scale in perfect]
    perfect_loss, perfect_parts = loss_fn(perfect, targets)
    random_loss, random_parts = loss_fn(random, targets)
    assert perfect_parts['box'] < 1e-3 and perfect_parts['cls'] < 1e-3
    assert perfect_loss < 0.05 * random_loss
    # The independent check: utils/postprocess.decode of the deployment layout finds the target boxes.
    nhwc = [torch.cat((reg.sigmoid(), obj.sigmoid(), cls.softmax(1)), 1).permute(0, 2, 3, 1)
            for reg, obj, cls in perfect]
    boxes, scores = decode(nhwc, spec)
    boxes, scores = np.asarray(boxes), np.asarray(scores)
    for image, c, cx, cy, bw, bh in targets.tolist():
        want = np.array([(cx - bw / 2) * 128, (cy - bh / 2) * 96, (cx + bw / 2) * 128, (cy + bh / 2) * 96])
        confident = scores[int(image), :, int(c)] > 0.9
        assert confident.any()
        assert np.abs(boxes[int(image)][confident] - want).max(axis=1).min() < 0.01


def test_gradient_descent_on_the_loss_fits_the_targets():
    """The loss is minimisable in the right direction: a few hundred Adam steps on free logits reach IoU > 0.9."""
    spec = spec_2_scales()
    targets = torch.tensor([[0, 1, 0.40, 0.50, 0.20, 0.30]])
    params = [tuple(torch.zeros_like(t, requires_grad=True) for t in scale)
              for scale in perfect_outputs(spec, targets, 1)]
    optimizer = torch.optim.Adam([t for scale in params for t in scale], lr=0.05)
    loss_fn = AnchorLoss(spec)
    for _ in range(150):
        loss, parts = loss_fn(params, targets)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    # 'box' sums 1 - CIoU over the two scales (the target fits anchors of both)
    assert parts['box'] / 2 < 0.1 and parts['cls'] < 0.05


def test_no_targets_gives_objectness_loss_only_and_a_gradient():
    spec = spec_2_scales()
    outputs = [tuple(torch.randn_like(t).requires_grad_() for t in scale)
               for scale in perfect_outputs(spec, torch.zeros((0, 6)), 2)]
    loss, parts = AnchorLoss(spec)(outputs, torch.zeros((0, 6)))
    assert parts['box'] == 0 and parts['cls'] == 0 and parts['obj'] > 0 and parts['matches'] == 0
    loss.backward()
    assert outputs[0][1].grad.abs().sum() > 0


def test_class_beyond_the_model_is_a_clear_error():
    spec = spec_2_scales(num_classes=3)
    outputs = perfect_outputs(spec, torch.zeros((0, 6)), 1)
    with pytest.raises(ValueError, match='class 5 but the model has 3 classes'):
        AnchorLoss(spec)(outputs, torch.tensor([[0, 5, 0.5, 0.5, 0.2, 0.2]]))


def test_build_loss_dispatches_on_the_head_kind():
    from utils.loss.leyolo import LeYOLOLoss
    spec = HeadSpec(kind='leyolo', strides=(8, 16, 32), num_classes=3, input_width=64, input_height=64)
    assert isinstance(build_loss(SimpleNamespace(spec=spec), cfg=None), LeYOLOLoss)


def test_yolov5_matching_gives_the_recorded_loss_bit_for_bit():
    """The default assigner leaves the loss exactly as it was: the numbers below were printed by the loss before
    the assigners were split out of utils/loss/anchor.py (commit a159936), for the same targets (the labels of the
    first 8 coco128 train2017 label files) and raw outputs (seeded normal noise, Yolo-FastestV2's shapes at 352)."""
    labels = sorted(shared_path('datasets/coco128/labels/train2017').glob('*.txt'))[:8]
    targets = torch.tensor([[i] + [float(v) for v in line.split()]
                            for i, f in enumerate(labels) for line in f.read_text().split('\n') if line.strip()])
    pairs = [(YFV2_COCO_ANCHORS_352[i], YFV2_COCO_ANCHORS_352[i + 1]) for i in range(0, 12, 2)]
    spec = HeadSpec(kind='anchor', strides=(16, 32), num_classes=80, input_width=352, input_height=352,
                    anchors_px=(tuple(pairs[:3]), tuple(pairs[3:])))
    generator = torch.Generator().manual_seed(0)
    outputs = [(torch.randn(8, 12, side, side, generator=generator),
                torch.randn(8, 3, side, side, generator=generator) - 4,
                torch.randn(8, 80, side, side, generator=generator)) for side in (22, 11)]
    loss, parts = build_loss(SimpleNamespace(spec=spec), cfg=None)(outputs, targets)
    assert len(targets) == 30
    assert loss.item().hex() == '0x1.9009cc0000000p+3'
    assert {k: v.hex() if isinstance(v, float) else v for k, v in parts.items()} == {
        'box': '0x1.b447d80000000p+0', 'obj': '0x1.f82e240000000p-5', 'cls': '0x1.36e0c80000000p+3', 'matches': 282}
