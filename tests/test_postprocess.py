"""decode + NMS against formulas written out independently here, on random tensors and on the reference model's
raw outputs (../shared/reference/yfv2_raw_outputs.pt)."""
import numpy as np
import pytest
import torch
from conftest import shared_path

from model.spec import HeadSpec
from utils.errors import ConfigError
from utils.postprocess import decode, nms, postprocess

YFV2_ANCHORS = (((12.64, 19.39), (37.88, 51.48), (55.71, 138.31)),
                ((126.91, 78.23), (131.57, 214.55), (279.92, 258.87)))


def reference_decode(raw_per_scale, anchors, input_width, input_height):
    """Yolo-FastestV2's decode written from its formula, looping over anchors, on raw NCHW logits
    (reg, obj, cls) per scale. Returns (K, 4+1+C) rows [cx, cy, w, h, obj, cls probs...] for image 0,
    ordered scale, cell row, cell column, anchor. Strides per axis (the reference uses height for both)."""
    rows = []
    for (reg, obj, cls), scale_anchors in zip(raw_per_scale, anchors):
        reg, obj, cls = reg[0], obj[0], cls[0]
        _, h, w = obj.shape
        stride_x, stride_y = input_width / w, input_height / h
        probs = torch.softmax(cls, 0)
        for y in range(h):
            for x in range(w):
                for a, (anchor_w, anchor_h) in enumerate(scale_anchors):
                    tx, ty, tw, th = torch.sigmoid(reg[a * 4:a * 4 + 4, y, x]).tolist()
                    rows.append([(tx * 2 - 0.5 + x) * stride_x, (ty * 2 - 0.5 + y) * stride_y,
                                 (tw * 2) ** 2 * anchor_w, (th * 2) ** 2 * anchor_h,
                                 torch.sigmoid(obj[a, y, x]).item()] + probs[:, y, x].tolist())
    return np.array(rows, dtype=np.float64)


def deployment_layout(raw_per_scale):
    """The deployment layout (docs/architecture.md) from raw logits: NHWC [sigmoid(reg), sigmoid(obj), softmax(cls)]."""
    return [torch.cat((reg.sigmoid(), obj.sigmoid(), cls.softmax(1)), 1).permute(0, 2, 3, 1)
            for reg, obj, cls in raw_per_scale]


def greedy_nms(boxes_xyxy, scores, iou_thresh):
    """Textbook greedy NMS, one class: indices kept, best first."""
    order = list(np.argsort(-scores, kind='stable'))
    kept = []
    while order:
        i = order.pop(0)
        kept.append(i)
        survivors = []
        for j in order:
            ix = max(0.0, min(boxes_xyxy[i, 2], boxes_xyxy[j, 2]) - max(boxes_xyxy[i, 0], boxes_xyxy[j, 0]))
            iy = max(0.0, min(boxes_xyxy[i, 3], boxes_xyxy[j, 3]) - max(boxes_xyxy[i, 1], boxes_xyxy[j, 1]))
            area_i = (boxes_xyxy[i, 2] - boxes_xyxy[i, 0]) * (boxes_xyxy[i, 3] - boxes_xyxy[i, 1])
            area_j = (boxes_xyxy[j, 2] - boxes_xyxy[j, 0]) * (boxes_xyxy[j, 3] - boxes_xyxy[j, 1])
            iou = ix * iy / (area_i + area_j - ix * iy)
            if iou <= iou_thresh:
                survivors.append(j)
        order = survivors
    return kept


def reference_detections(rows, conf_thresh, iou_thresh, max_det=300):
    """Yolo-FastestV2's post-processing: per box best class, score = obj * cls_max, keep > conf, NMS per class."""
    xyxy = np.concatenate((rows[:, :2] - rows[:, 2:4] / 2, rows[:, :2] + rows[:, 2:4] / 2), 1)
    classes = rows[:, 5:].argmax(1)
    scores = rows[:, 4] * rows[:, 5:].max(1)
    out = []
    for c in np.unique(classes[scores > conf_thresh]):
        idx = np.flatnonzero((classes == c) & (scores > conf_thresh))
        for k in greedy_nms(xyxy[idx], scores[idx], iou_thresh):
            out.append(list(xyxy[idx[k]]) + [scores[idx[k]], c])
    out = np.array(out, dtype=np.float64).reshape(-1, 6)
    return out[np.argsort(-out[:, 4], kind='stable')][:max_det]


def random_raw(width, height, strides, classes, seed):
    generator = torch.Generator().manual_seed(seed)
    return [(torch.randn(1, 12, height // s, width // s, generator=generator) * 2,
             torch.randn(1, 3, height // s, width // s, generator=generator) * 3 - 3,
             torch.randn(1, classes, height // s, width // s, generator=generator) * 3) for s in strides]


@pytest.mark.parametrize('width,height', [(352, 352), (416, 352), (320, 480)])
def test_anchor_decode_matches_reference_formula(width, height):
    raw = random_raw(width, height, (16, 32), 5, seed=width + height)
    spec = HeadSpec('anchor', (16, 32), 5, width, height, YFV2_ANCHORS)
    boxes, scores = decode(deployment_layout(raw), spec)
    rows = reference_decode(raw, YFV2_ANCHORS, width, height)
    expected_xyxy = np.concatenate((rows[:, :2] - rows[:, 2:4] / 2, rows[:, :2] + rows[:, 2:4] / 2), 1)
    assert boxes.shape == (1, len(rows), 4) and scores.shape == (1, len(rows), 5)
    np.testing.assert_allclose(boxes[0], expected_xyxy, rtol=1e-5, atol=1e-3)
    np.testing.assert_allclose(scores[0], rows[:, 4:5] * rows[:, 5:], rtol=1e-5, atol=1e-7)
    # non-square: boxes of the last cells sit at the right and bottom edges, not at height's edge
    assert abs(expected_xyxy[:, [0, 2]].mean(1).max() - width) < 2 * 32


def test_anchor_decode_accepts_numpy_and_batches():
    raw = random_raw(352, 352, (16, 32), 3, seed=1) + []
    raw_b = [tuple(torch.cat((t, t.flip(-1)), 0) for t in scale) for scale in raw]
    spec = HeadSpec('anchor', (16, 32), 3, 352, 352, YFV2_ANCHORS)
    torch_boxes, torch_scores = decode(deployment_layout(raw_b), spec)
    np_boxes, np_scores = decode([o.numpy() for o in deployment_layout(raw_b)], spec)
    np.testing.assert_array_equal(torch_boxes, np_boxes)
    np.testing.assert_array_equal(torch_scores, np_scores)
    single, _ = decode(deployment_layout(raw), spec)
    np.testing.assert_array_equal(torch_boxes[:1], single)


def test_leyolo_decode_matches_loop():
    generator = torch.Generator().manual_seed(3)
    width, height, classes = 320, 256, 4
    outputs = [torch.cat((torch.rand(1, height // s, width // s, 4, generator=generator) * 6,
                          torch.rand(1, height // s, width // s, classes, generator=generator)), -1)
               for s in (8, 16, 32)]
    spec = HeadSpec('leyolo', (8, 16, 32), classes, width, height)
    boxes, scores = decode(outputs, spec)
    expected = []
    for out, stride in zip(outputs, (8, 16, 32)):
        for y in range(out.shape[1]):
            for x in range(out.shape[2]):
                left, top, right, bottom = out[0, y, x, :4].tolist()
                expected.append([(x + 0.5 - left) * stride, (y + 0.5 - top) * stride,
                                 (x + 0.5 + right) * stride, (y + 0.5 + bottom) * stride])
    np.testing.assert_allclose(boxes[0], np.array(expected), rtol=1e-5, atol=1e-3)
    np.testing.assert_array_equal(scores[0], torch.cat([o[0, ..., 4:].reshape(-1, classes) for o in outputs]))


def test_decode_rejects_wrong_layout():
    spec = HeadSpec('anchor', (16, 32), 5, 352, 352, YFV2_ANCHORS)
    good = deployment_layout(random_raw(352, 352, (16, 32), 5, seed=0))
    # a model exported from another .data file: an input error the scripts report as one line
    with pytest.raises(ConfigError, match='2 scales.*another one'):
        decode(good[:1], spec)
    with pytest.raises(ConfigError, match='channels.*another one'):
        decode([g[..., :-1] for g in good], spec)
    with pytest.raises(ValueError, match='NHWC'):
        decode([g.permute(0, 3, 1, 2) for g in good], spec)


@pytest.mark.parametrize('conf,iou', [(0.3, 0.4), (0.01, 0.6), (0.001, 0.45)])
def test_anchor_postprocess_matches_reference_pipeline(conf, iou):
    raw = random_raw(352, 352, (16, 32), 3, seed=7)
    spec = HeadSpec('anchor', (16, 32), 3, 352, 352, YFV2_ANCHORS)
    ours = postprocess(deployment_layout(raw), spec, conf, iou, max_det=5000)[0]
    expected = reference_detections(reference_decode(raw, YFV2_ANCHORS, 352, 352), conf, iou, max_det=5000)
    assert len(ours) == len(expected) > 0
    assert (expected[:, 4] > 5 * conf).sum() < len(expected)   # the threshold matters: boxes close to it exist
    np.testing.assert_allclose(ours, expected, rtol=1e-5, atol=2e-3)


def test_nms_classes_do_not_suppress_each_other_and_max_det():
    boxes = np.array([[[0, 0, 10, 10], [1, 1, 10, 10], [0, 0, 10, 10], [50, 50, 60, 60]]], np.float32)
    scores = np.zeros((1, 4, 2), np.float32)
    scores[0, :, 0] = [0.9, 0.8, 0.0, 0.5]
    scores[0, 2, 1] = 0.7
    out = nms(boxes, scores, conf_thresh=0.1, iou_thresh=0.5, max_det=10)[0]
    np.testing.assert_allclose(out[:, 4], [0.9, 0.7, 0.5])   # box 1 suppressed by box 0, box 2 is another class
    np.testing.assert_array_equal(out[:, 5], [0, 1, 0])
    assert len(nms(boxes, scores, 0.1, 0.5, max_det=2)[0]) == 2
    assert nms(boxes, scores, 0.95, 0.5)[0].shape == (0, 6)


def test_reference_model_outputs_on_real_image():
    """The reference implementation's own raw outputs for yfv2_000139.jpg: our decode + NMS give its detections."""
    reference = torch.load(shared_path('reference/yfv2_raw_outputs.pt'), weights_only=False)
    logits = reference['outputs_img']
    raw = [tuple(logits[i * 3:i * 3 + 3]) for i in range(2)]
    spec = HeadSpec('anchor', (16, 32), 80, 352, 352, YFV2_ANCHORS)
    ours = postprocess(deployment_layout(raw), spec, 0.3, 0.4)[0]
    expected = reference_detections(reference_decode(raw, YFV2_ANCHORS, 352, 352), 0.3, 0.4)
    assert len(expected) >= 1
    np.testing.assert_allclose(ours, expected, rtol=1e-5, atol=2e-3)
