"""utils/evaluator: COCO ground truth, P/R/F1 and the confusion matrix on hand-made cases whose answers are known
by construction; the released Yolo-FastestV2 weights on coco128 against the reference's pycocotools numbers."""
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from conftest import REPO, shared_path

from model.spec import HeadSpec
from utils.config import load_config
from utils.evaluator import evaluate
from utils.evaluator.coco import (
    best_f1,
    coco_detections,
    coco_ground_truth,
    confusion_matrix,
    pooled_matches,
    precision_recall_f1,
    run_cocoeval,
)

RELEASED_WEIGHTS = 'weights/yolo-fastestv2/coco2017-0.241078ap-model.pth'
YFV2_ANCHORS = '12.64,19.39, 37.88,51.48, 55.71,138.31, 126.91,78.23, 131.57,214.55, 279.92,258.87'


def write_coco128_data(folder: Path) -> Path:
    """A Yolo-FastestV2 .data file for coco128 val2017 at 352x352 stretch (train = val: only val is read)."""
    val = shared_path('datasets/coco128/images/val2017')
    names = REPO / 'data' / 'coco.names'
    path = folder / 'coco128.data'
    path.write_text(f'[model-configure]\nclasses=80\nwidth=352\nheight=352\nanchor_num=3\nanchors={YFV2_ANCHORS}\n'
                    f'[data-configure]\ntrain={val}\nval={val}\nnames={names}\n')
    return path


class FakeSplit:
    def __init__(self, labels):
        self.name, self.labels = 'val', labels
        self.image_paths = [Path(f'{i:012d}.jpg') for i in range(len(labels))]

    def __len__(self):
        return len(self.labels)


def labels_to_xyxy(labels, width, height):
    cls, cx, cy, w, h = labels.T
    return np.stack(((cx - w / 2) * width, (cy - h / 2) * height, (cx + w / 2) * width, (cy + h / 2) * height), 1)


def test_ground_truth_as_detections_scores_one_and_pr_counts():
    rng = np.random.default_rng(0)
    sizes = [(640, 480), (500, 375), (300, 600), (800, 800)]
    labels = []
    for _ in sizes:
        n = 5
        centre = rng.uniform(0.3, 0.7, (n, 2))
        wh = rng.uniform(0.1, 0.4, (n, 2))
        labels.append(np.concatenate((rng.integers(0, 3, (n, 1)), centre, wh), 1).astype(np.float32))
    split = FakeSplit(labels)
    gt = coco_ground_truth(split, sizes, 3)
    assert len(gt['annotations']) == 20 and gt['images'][1]['width'] == 500
    x, y, w, h = gt['annotations'][0]['bbox']
    cls, cx, cy, bw, bh = labels[0][0]
    assert np.allclose([x, y, w, h], [(cx - bw / 2) * 640, (cy - bh / 2) * 480, bw * 640, bh * 480], atol=1e-3)

    # the truth itself, at descending scores: every COCO AP is 1
    perfect = [np.concatenate((labels_to_xyxy(lab, *size), np.linspace(0.9, 0.5, len(lab))[:, None], lab[:, :1]), 1)
               for lab, size in zip(labels, sizes)]
    cocoeval, _ = run_cocoeval(gt, coco_detections(perfect, list(range(4))))
    assert cocoeval.stats[0] == pytest.approx(1.0) and cocoeval.stats[1] == pytest.approx(1.0)

    # now images 0-1 true at score 0.8, images 2-3 shifted off their objects (IoU 0) at 0.6, plus one wrong class
    shifted = []
    for i, (lab, size) in enumerate(zip(labels, sizes)):
        boxes = labels_to_xyxy(lab, *size)
        score = 0.8 if i < 2 else 0.6
        if i >= 2:
            boxes = boxes + np.array([size[0], 0, size[0], 0])   # moved one image width to the right
        shifted.append(np.concatenate((boxes, np.full((len(lab), 1), score), lab[:, :1]), 1))
    wrong = shifted[0][:1].copy()
    wrong[0, 4], wrong[0, 5] = 0.9, (wrong[0, 5] + 1) % 3
    shifted[0] = np.concatenate((wrong, shifted[0]))
    cocoeval, _ = run_cocoeval(gt, coco_detections(shifted, list(range(4))))
    scores, hits, num_gt = pooled_matches(cocoeval)
    assert num_gt == 20 and len(scores) == 21 and hits.sum() == 10
    p, r, f1 = precision_recall_f1(scores, hits, num_gt, conf=0.7)     # 10 right + 1 wrong class
    assert (p, r) == pytest.approx((10 / 11, 10 / 20))
    assert f1 == pytest.approx(2 * p * r / (p + r))
    assert precision_recall_f1(scores, hits, num_gt, conf=0.5)[:2] == pytest.approx((10 / 21, 10 / 20))
    assert best_f1(scores, hits, num_gt) == pytest.approx((2 * 10 / (11 + 20), 0.8))

    confusion = confusion_matrix([d.astype(np.float32) for d in shifted], gt, 3, conf=0.5)
    assert confusion[:3, :3].sum() == 10 and np.trace(confusion[:3, :3]) == 10   # wrong class box loses to truth
    assert confusion[3, :3].sum() == 10                  # missed truths of images 2-3
    assert confusion[:3, 3].sum() == 11                  # the shifted boxes and the wrong-class duplicate


class NoDetections:
    spec = HeadSpec('leyolo', (8, 16, 32), 80, 352, 352)

    def __call__(self, batch):
        n = len(batch)
        return [np.zeros((n, 352 // s, 352 // s, 84), np.float32) for s in (8, 16, 32)]


def test_no_detections_gives_zeros_not_a_crash(tmp_path):
    cfg = load_config(write_coco128_data(tmp_path))
    result = evaluate(NoDetections(), cfg, progress=False, workers=0, batch_size=64)
    assert result.num_detections == 0 and result.num_gt == 898 and result.map50 == 0.0
    assert result.recall == 0.0


@pytest.fixture
def one_thread():
    # the machine is shared: busy-waiting threads in every process make inference slower, not faster
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_released_weights_reproduce_reference_map_on_coco128(tmp_path, one_thread):
    from model.build import build_model
    from model.weights import load_weights
    from utils.runtimes import load_runtime
    cfg = load_config(write_coco128_data(tmp_path))
    # as the trainer calls it: a Detector in train mode, which evaluate() must hand back as it was
    model = build_model(cfg, log=lambda *_: None)
    load_weights(model, shared_path(RELEASED_WEIGHTS))
    model.train()
    # the reference's own predictions (conf 0.01, NMS IoU 0.4) score these with pycocotools
    reference = evaluate(model, cfg, conf=0.01, iou=0.4, progress=False, plots_dir=tmp_path / 'plots')
    print(reference.summary(per_class=False))
    assert model.training and model.export is False
    assert reference.map50 == pytest.approx(0.336, abs=0.005)
    assert reference.map50_95 == pytest.approx(0.186, abs=0.005)
    assert reference.num_images == 128 and reference.num_gt == 898 and len(reference.coco_stats) == 12
    # per-class APs are COCO's own: their mean is COCO's mAP
    assert np.mean([row[4] for row in reference.per_class]) == pytest.approx(reference.map50_95, abs=1e-6)
    assert np.mean([row[5] for row in reference.per_class]) == pytest.approx(reference.map50, abs=1e-6)
    for name in ('pr_curve.png', 'confusion.png'):
        image = cv2.imread(str(tmp_path / 'plots' / name))
        assert image is not None and image.shape[0] > 300

    runtime = load_runtime('torch', cfg, shared_path(RELEASED_WEIGHTS))
    ours = evaluate(runtime, cfg, progress=False)   # defaults: conf 0.001, NMS IoU 0.6
    print(ours.summary(per_class=False))
    assert ours.map50 >= reference.map50 and ours.map50_95 >= reference.map50_95


def test_torch_runtime_with_folded_batchnorm_gives_the_models_outputs(tmp_path):
    from model.build import build_model
    from model.weights import load_weights
    from utils.runtimes import load_runtime
    cfg = load_config(write_coco128_data(tmp_path))
    weights = shared_path(RELEASED_WEIGHTS)
    runtime = load_runtime('torch', cfg, weights)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in runtime.model.modules())
    model = build_model(cfg, log=lambda *_: None)
    load_weights(model, weights)
    model.eval().export = True
    batch = np.random.default_rng(0).random((2, 3, 352, 352), dtype=np.float32)
    with torch.no_grad():
        expected = [o.numpy() for o in model(torch.from_numpy(batch))]
    for ours, reference in zip(runtime(batch), expected):
        np.testing.assert_allclose(ours, reference, atol=1e-4)
