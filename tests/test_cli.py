"""evaluation.py and test.py as users run them: printed detections against the reference model's own raw outputs
decoded independently, the saved COCO JSON re-scored from the label files, every backend agreeing, clear errors."""
import importlib.util
import json
import re

import cv2
import numpy as np
import pytest
import torch
from conftest import REPO, shared_path
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from test_evaluator import RELEASED_WEIGHTS, write_coco128_data
from test_postprocess import YFV2_ANCHORS, reference_decode, reference_detections

from utils.cli import run
from utils.config import load_config

DETECTION_LINE = re.compile(r'^(\S+) ([0-9.]+) (-?[0-9.]+) (-?[0-9.]+) (-?[0-9.]+) (-?[0-9.]+)$')


def load_script(name):
    """Import a top-level script by path (the name `test` would clash with Python's own test package)."""
    spec = importlib.util.spec_from_file_location(f'script_{name}', REPO / f'{name}.py')
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_script(name, argv, capsys):
    threads = torch.get_num_threads()
    try:
        code = run(load_script(name).main, argv)   # as `python3 NAME.py` runs it: input errors become one line
    finally:
        torch.set_num_threads(threads)
    out, err = capsys.readouterr()
    return code, out, err


def parse_detections(stdout):
    """[(class name, score, x1, y1, x2, y2)] from test.py's printout."""
    rows = []
    for line in stdout.splitlines():
        match = DETECTION_LINE.match(line)
        if match:
            rows.append((match.group(1),) + tuple(float(v) for v in match.groups()[1:]))
    return rows


@pytest.fixture(scope='module')
def coco128(tmp_path_factory):
    folder = tmp_path_factory.mktemp('coco128')
    return write_coco128_data(folder)


def test_test_py_prints_the_reference_models_detections(coco128, tmp_path, capsys):
    image_path = shared_path('images/yfv2_000139.jpg')
    code, out, _ = run_script('test', ['--data', str(coco128), '--weights', str(shared_path(RELEASED_WEIGHTS)),
                                       '--img', str(image_path), '--out', str(tmp_path), '--threads', '1'], capsys)
    print(out)
    assert code == 0
    ours = parse_detections(out)

    # independent: the reference implementation's own raw outputs for this image, its decode and NMS written out
    # in tests/test_postprocess.py, boxes scaled from 352x352 back to the image and clipped to it
    reference = torch.load(shared_path('reference/yfv2_raw_outputs.pt'), weights_only=False)
    raw = [tuple(reference['outputs_img'][i * 3:i * 3 + 3]) for i in range(2)]
    expected = reference_detections(reference_decode(raw, YFV2_ANCHORS, 352, 352), conf_thresh=0.3, iou_thresh=0.4)
    height, width = cv2.imread(str(image_path)).shape[:2]
    scale = np.array([width / 352, height / 352, width / 352, height / 352])
    expected_boxes = np.clip(expected[:, :4] * scale, 0, [width, height, width, height])
    names = [name.replace(' ', '_') for name in load_config(coco128).class_names]

    assert len(ours) == len(expected) >= 1
    for row, exp, box in zip(ours, expected, expected_boxes):
        assert row[0] == names[int(exp[5])]
        assert row[1] == pytest.approx(exp[4], abs=2e-4)
        np.testing.assert_allclose(row[2:], box, atol=0.3)   # printed with one decimal
    assert 'pre-process' in out and 'inference' in out and 'post-process' in out
    drawn = cv2.imread(str(tmp_path / 'yfv2_000139_det.jpg'))
    assert drawn is not None and drawn.shape[:2] == (height, width)


def test_evaluation_py_json_rescored_from_labels(coco128, tmp_path, capsys):
    json_path = tmp_path / 'preds.json'
    code, out, _ = run_script('evaluation', ['--data', str(coco128), '--weights', str(shared_path(RELEASED_WEIGHTS)),
                                             '--conf', '0.01', '--iou', '0.4', '--save-json', str(json_path),
                                             '--no-per-class', '--threads', '1'], capsys)
    print(out)
    assert code == 0
    printed = re.search(r'mAP@0.5:0.95 ([0-9.]+)  mAP@0.5 ([0-9.]+)', out)
    assert printed and float(printed.group(2)) == pytest.approx(0.336, abs=0.005)

    # ground truth built here from the label files and the image sizes, ids as the JSON writes them (file stems)
    images_dir = shared_path('datasets/coco128/images/val2017')
    images, annotations = [], []
    for path in sorted(images_dir.glob('*.jpg')):
        height, width = cv2.imread(str(path)).shape[:2]
        images.append({'id': int(path.stem), 'width': width, 'height': height})
        label_file = images_dir.parent.parent / 'labels' / 'val2017' / f'{path.stem}.txt'
        for line in label_file.read_text().split('\n'):
            if line.strip():
                c, cx, cy, w, h = (float(v) for v in line.split())
                annotations.append({'id': len(annotations) + 1, 'image_id': int(path.stem), 'category_id': int(c),
                                    'bbox': [(cx - w / 2) * width, (cy - h / 2) * height, w * width, h * height],
                                    'area': w * width * h * height, 'iscrowd': 0})
    gt = COCO()
    gt.dataset = {'images': images, 'annotations': annotations, 'categories': [{'id': c} for c in range(80)]}
    gt.createIndex()
    detections = json.loads(json_path.read_text())
    assert {d['image_id'] for d in detections} <= {image['id'] for image in images}
    cocoeval = COCOeval(gt, gt.loadRes(str(json_path)), 'bbox')
    cocoeval.evaluate()
    cocoeval.accumulate()
    cocoeval.summarize()
    assert cocoeval.stats[0] == pytest.approx(float(printed.group(1)), abs=1e-4)
    assert cocoeval.stats[1] == pytest.approx(float(printed.group(2)), abs=1e-4)


@pytest.fixture(scope='module')
def exported(coco128, tmp_path_factory):
    """The released weights exported by the project's own exporter to ONNX and NCNN (fp32)."""
    from model.build import build_model
    from model.weights import load_weights
    from utils.export import export_all
    cfg = load_config(coco128)
    model = build_model(cfg, log=lambda *_: None)
    load_weights(model, shared_path(RELEASED_WEIGHTS))
    return export_all(model.eval(), cfg, tmp_path_factory.mktemp('export') / 'yfv2.onnx')


@pytest.mark.parametrize('backend,key', [('onnx', 'onnx'), ('opencv', 'onnx'), ('ncnn', 'param')])
def test_every_backend_prints_the_same_detections(backend, key, coco128, exported, tmp_path, capsys):
    image = str(shared_path('images/bus.jpg'))
    common = ['--data', str(coco128), '--img', image, '--out', str(tmp_path), '--threads', '1']
    code, torch_out, _ = run_script('test', common + ['--weights', str(shared_path(RELEASED_WEIGHTS))], capsys)
    assert code == 0
    code, out, _ = run_script('test', common + ['--weights', str(exported[key]), '--backend', backend], capsys)
    assert code == 0
    reference, ours = parse_detections(torch_out), parse_detections(out)
    assert len(ours) == len(reference) >= 3
    for a, b in zip(ours, reference):
        assert a[0] == b[0] and a[1] == pytest.approx(b[1], abs=2e-3)
        np.testing.assert_allclose(a[2:], b[2:], atol=1.0)


def test_test_py_on_a_folder_and_a_video(coco128, tmp_path, capsys):
    frame = cv2.imread(str(shared_path('images/yfv2_000139.jpg')))
    folder = tmp_path / 'in'
    folder.mkdir()
    cv2.imwrite(str(folder / 'a.jpg'), frame)
    cv2.imwrite(str(folder / 'b.png'), frame[:, ::-1])
    video = folder / 'clip.avi'
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*'MJPG'), 10, (frame.shape[1], frame.shape[0]))
    for _ in range(3):
        writer.write(frame)
    writer.release()
    weights = str(shared_path(RELEASED_WEIGHTS))

    code, out, _ = run_script('test', ['--data', str(coco128), '--weights', weights, '--img', str(folder),
                                       '--threads', '1'], capsys)
    assert code == 0 and 'a.jpg: ' in out and 'b.png: ' in out
    assert (folder / 'a_det.jpg').is_file() and (folder / 'b_det.png').is_file()   # beside the inputs
    code, out, _ = run_script('test', ['--data', str(coco128), '--weights', weights, '--img', str(folder),
                                       '--threads', '1'], capsys)
    assert 'skipping 2 images named *_det' in out   # a second run does not detect on its own drawings

    code, out, _ = run_script('test', ['--data', str(coco128), '--weights', weights, '--img', str(video),
                                       '--out', str(tmp_path / 'out'), '--threads', '1'], capsys)
    assert code == 0 and out.count(' frame ') == 3
    capture = cv2.VideoCapture(str(tmp_path / 'out' / 'clip_det.mp4'))
    assert int(capture.get(cv2.CAP_PROP_FRAME_COUNT)) == 3


def test_clear_errors(coco128, tmp_path, capsys):
    weights = str(shared_path(RELEASED_WEIGHTS))
    code, _, err = run_script('test', ['--data', str(coco128), '--weights', str(tmp_path / 'missing.pth'),
                                       '--img', str(tmp_path)], capsys)
    assert code == 1 and 'missing.pth' in err and 'not found' in err
    code, _, err = run_script('evaluation', ['--data', str(coco128), '--weights', weights, '--backend', 'onnx'],
                              capsys)
    assert code == 1 and '.onnx' in err and weights in err
    code, _, err = run_script('test', ['--data', str(coco128), '--weights', weights,
                                       '--img', str(tmp_path / 'nothing.jpg')], capsys)
    assert code == 1 and 'nothing.jpg' in err
    bad_data = tmp_path / 'bad.data'
    bad_data.write_text(coco128.read_text().replace('classes=80', 'clases=80'))
    code, _, err = run_script('evaluation', ['--data', str(bad_data), '--weights', weights], capsys)
    assert code == 1 and 'bad.data' in err and 'clases' in err
