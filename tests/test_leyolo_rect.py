"""Rectangular-batch evaluation (utils/data/eval_data.py) and multi-label NMS: batch shapes worked out by hand, a
drawn square found again in original pixels, and LeYOLONano.pt on coco128 val2017 against Ultralytics' own
validation figures at 320 (Ultralytics' val of the fork). The 640 figure is bench/leyolo_protocols.py's
(about a minute of CPU: too slow for the suite)."""
import re
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from conftest import REPO, shared_path

from model.spec import HeadSpec
from utils.cli import run
from utils.config import load_config
from utils.data.eval_data import RectEvalDataset, image_sizes, pad_into, plan_batches, resize_long_side
from utils.errors import ConfigError
from utils.evaluator.evaluator import evaluate, predict_split
from utils.postprocess import nms
from utils.preprocess import boxes_to_original

NANO_WEIGHTS = 'weights/leyolo/LeYOLONano.pt'
VAL_IMAGES = 'datasets/coco128/images/val2017'


class PathSplit:
    def __init__(self, paths):
        self.name, self.image_paths = 'val', list(paths)
        self.labels = [np.zeros((0, 5), np.float32) for _ in self.image_paths]

    def __len__(self):
        return len(self.image_paths)


def test_batch_shapes_by_hand():
    # aspect ratios h/w: 0.75, 0.667, 1.333, 1.0; side 320, stride 32, pad 0.5 -> 10.5 strides on a full side
    sizes = [(640, 480), (640, 427), (480, 640), (500, 500)]
    plan = plan_batches(sizes, side=320, stride=32, batch_size=2, pad=0.5)
    # sorted: 0.667 (1), 0.75 (0) | 1.0 (3), 1.333 (2)
    assert plan[0] == ([1, 0], (256, 352))   # landscape: ceil(0.75 * 10 + 0.5) = 8 strides high, ceil(10.5) = 11 wide
    assert plan[1] == ([3, 2], (352, 352))   # a square image makes the batch square
    portrait = plan_batches([(480, 640), (427, 640)], side=320, stride=32, batch_size=2, pad=0.5)
    assert portrait == [([0, 1], (352, 256))]   # width from the least tall image: ceil(0.75 * 10 + 0.5) = 8 strides
    tight = plan_batches(sizes, side=320, stride=32, batch_size=4, pad=0.0)
    assert tight == [([1, 0, 3, 2], (320, 320))]
    with pytest.raises(ValueError, match='batch_size'):
        plan_batches(sizes, 320, 32, 0)


def test_resize_rounds_the_short_side_up_and_padding_is_centred():
    image = np.zeros((427, 640, 3), np.uint8)
    resized = resize_long_side(image, 320)
    assert resized.shape[:2] == (214, 320)        # 427 / 2 = 213.5, rounded up
    padded, (left, top, w, h) = pad_into(resized, 352, 256)
    assert padded.shape[:2] == (256, 352) and (left, top, w, h) == (16, 21, 320, 214)
    assert (padded[:21] == 114).all() and (padded[-21:] == 114).all() and (padded[:, :16] == 114).all()
    shrunk, (left, top, w, h) = pad_into(np.zeros((400, 100, 3), np.uint8), 96, 200)   # too tall: shrunk, not cut
    assert shrunk.shape[:2] == (200, 96) and (w, h) == (50, 200) and (left, top) == (23, 0)


def test_a_drawn_square_is_found_again_in_original_pixels(tmp_path):
    """Independent of the mapping formula: draw a white square, find it in the network input, map it back."""
    paths, squares = [], []
    for i, (w0, h0, x1, y1, size) in enumerate([(640, 427, 100, 200, 40), (333, 500, 250, 60, 30),
                                                 (1000, 200, 900, 150, 40)]):
        image = np.full((h0, w0, 3), 60, np.uint8)
        cv2.rectangle(image, (x1, y1), (x1 + size - 1, y1 + size - 1), (255, 255, 255), -1)
        path = tmp_path / f'{i}.png'
        cv2.imwrite(str(path), image)
        paths.append(path)
        squares.append([x1, y1, x1 + size, y1 + size])
    split = PathSplit(paths)
    sizes = image_sizes(split.image_paths)
    assert sizes == [(640, 427), (333, 500), (1000, 200)]
    plan = plan_batches(sizes, side=320, stride=32, batch_size=2)
    dataset = RectEvalDataset(split, plan, side=320)
    for indices, (height, width) in plan:
        for index in indices:
            tensor, info, returned_index = dataset[index]
            assert returned_index == index and tuple(tensor.shape) == (3, height, width)
            ys, xs = np.nonzero(tensor[0].numpy() > 200)
            found_input = np.array([[xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]], np.float32)
            found = boxes_to_original(found_input, info)[0]
            assert np.abs(found - squares[index]).max() <= 1 / min(info.ratio_x, info.ratio_y) + 0.5, (index, found)


def test_an_image_whose_header_lied_is_shrunk_into_its_batch_with_a_warning(tmp_path):
    path = tmp_path / 'tall.png'
    cv2.imwrite(str(path), np.full((500, 200, 3), 60, np.uint8))
    plan = plan_batches([(500, 200)], side=320, stride=32, batch_size=1)   # planned landscape, decodes portrait
    with pytest.warns(UserWarning, match=r'tall\.png: decodes to 200x500'):
        tensor, info, _ = RectEvalDataset(PathSplit([path]), plan, side=320)[0]
    height, width = plan[0][1]
    assert tuple(tensor.shape) == (3, height, width) and info.ratio_y * 500 <= height


def test_multi_label_nms_keeps_a_box_for_each_class():
    boxes = np.array([[[0, 0, 10, 10], [1, 0, 11, 10], [50, 50, 60, 60]]], np.float32)
    scores = np.array([[[0.9, 0.6], [0.8, 0.0], [0.0, 0.005]]], np.float32)
    dets = nms(boxes, scores, 0.001, 0.5, max_det=10, multi_label=True)[0]
    # box 0 as class 0 and as class 1; box 1 suppressed by box 0 (same class 0); box 2 as class 1
    assert sorted((round(score, 3), int(cls)) for score, cls in dets[:, 4:].tolist()) == [(0.005, 1), (0.6, 1),
                                                                                           (0.9, 0)]
    assert len(nms(boxes, scores, 0.001, 0.5, max_det=2, multi_label=True)[0]) == 2
    assert len(nms(boxes, np.zeros_like(scores), 0.001, 0.5, max_det=10, multi_label=True)[0]) == 0


def write_data(folder: Path, side: int, **keys) -> Path:
    images = shared_path(VAL_IMAGES)
    extra = ''.join(f'{k} = {v}\n' for k, v in keys.items())
    path = folder / f'coco128_{side}.data'
    path.write_text(f'model = leyolo-nano\nhead = leyolo\nclasses = 80\nwidth = {side}\nheight = {side}\n'
                    f'train = {images}\nval = {images}\nnames = {REPO / "data" / "coco.names"}\nletterbox = true\n'
                    f'workers = 0\n{extra}')
    return path


def test_rect_refuses_fixed_shape_backends_and_non_square_sizes(tmp_path):
    cfg = load_config(write_data(tmp_path, 320))

    class FixedShapeRuntime:   # what an onnx / ncnn runtime looks like to the evaluator
        name = 'onnx'
        spec = HeadSpec('leyolo', (8, 16, 32), 80, 320, 320)

    with pytest.raises(ConfigError, match='onnx backend.*--rect'):
        evaluate(FixedShapeRuntime(), cfg, rect=True, progress=False)
    wide = load_config(write_data(tmp_path, 320), width=416)
    from model.build import build_model
    with pytest.raises(ConfigError, match='width = height'):
        evaluate(build_model(wide, log=lambda *_: None), wide, rect=True, progress=False)


@pytest.fixture(scope='module')
def nano_runtime(tmp_path_factory):
    from utils.runtimes import load_runtime
    threads = torch.get_num_threads()
    torch.set_num_threads(1)   # the machine is shared: more threads are slower here, not faster
    folder = tmp_path_factory.mktemp('rect')
    cfg = load_config(write_data(folder, 320))
    yield load_runtime('torch', cfg, shared_path(NANO_WEIGHTS)), cfg
    torch.set_num_threads(threads)


def test_rect_boxes_agree_with_square_letterbox_boxes(nano_runtime):
    """The same images through both resizes: each image's best detection lands on the same object in original
    pixels (the square path's mapping is the one checked against the fork's figures)."""
    runtime, cfg = nano_runtime
    paths = sorted(shared_path(VAL_IMAGES).glob('*.jpg'))[:16]
    split = PathSplit(paths)
    square, _ = predict_split(runtime, split, cfg, 0.25, 0.7, 300, 16, 0, False, {})
    rect, sizes = predict_split(runtime, split, cfg, 0.25, 0.7, 300, 8, 0, False, {}, rect=True)
    assert sizes == image_sizes(paths)
    matched = compared = 0
    for a, b in zip(square, rect):
        for box in a[a[:, 4] > 0.5]:   # each confident square-path detection has its twin among the rect ones
            same_class = b[b[:, 5] == box[5]]
            top_left = np.maximum(same_class[:, :2], box[:2])
            bottom_right = np.minimum(same_class[:, 2:4], box[2:4])
            inter = np.prod(np.clip(bottom_right - top_left, 0, None), 1)
            union = np.prod(same_class[:, 2:4] - same_class[:, :2], 1) + np.prod(box[2:4] - box[:2]) - inter
            compared += 1
            matched += bool(len(same_class)) and (inter / union).max() > 0.7
    assert compared >= 20 and matched >= 0.9 * compared, (matched, compared)


def test_evaluation_py_rect_multi_label_reproduces_ultralytics_val_at_320(tmp_path, capsys):
    """Ultralytics' val (rect batches of 32, pad 0.5, multi-label NMS, conf 0.001, IoU 0.7) gives 0.341 / 0.468 on
    coco128 val2017 at 320 (0.3409 / 0.4677 through pycocotools). Through evaluation.py as a user
    runs it (--rect takes batch 32 by default)."""
    import evaluation
    data = write_data(tmp_path, 320)
    threads = torch.get_num_threads()
    try:
        code = evaluation.main(['--data', str(data), '--weights', str(shared_path(NANO_WEIGHTS)), '--rect',
                                '--multi-label', '--iou', '0.7', '--threads', '1', '--workers', '0',
                                '--no-per-class'])
    finally:
        torch.set_num_threads(threads)
    out = capsys.readouterr().out
    assert code == 0, out
    found = re.search(r'mAP@0\.5:0\.95 ([0-9.]+)  mAP@0\.5 ([0-9.]+)', out)
    map50_95, map50 = float(found.group(1)), float(found.group(2))
    assert abs(map50_95 - 0.341) < 0.005 and abs(map50 - 0.468) < 0.005, out


def test_evaluation_py_refuses_rect_with_a_fixed_shape_backend(tmp_path, capsys):
    import evaluation
    onnx_file = tmp_path / 'model.onnx'
    onnx_file.write_bytes(b'')
    code = run(evaluation.main, ['--data', str(write_data(tmp_path, 320)), '--weights', str(onnx_file),
                                 '--backend', 'onnx', '--rect'])   # as the script exits
    assert code == 1 and 'the onnx backend runs a graph with a fixed input shape' in capsys.readouterr().err
