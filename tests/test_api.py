"""tinydet, the Python API: its docstring example run as written and checked against test.py's printout and against
Yolo-FastestV2's decode written out independently; train -> evaluate -> export -> load on a small generated dataset,
an exported model loaded from its sidecar alone; train.py's options reaching the trainer; import cost."""
import contextlib
import io
import re
import subprocess
import sys
import textwrap

import cv2
import numpy as np
import pytest
import torch
from conftest import REPO, shared_path
from test_cli import load_script, parse_detections, run_script
from test_postprocess import YFV2_ANCHORS, reference_decode, reference_detections

import tinydet
from utils.cli import run
from utils.errors import ConfigError

RELEASED = 'weights/yolo-fastestv2/coco2017-0.241078ap-model.pth'


def docstring_examples() -> list:
    """The code blocks (4-space indented paragraphs) of tinydet's docstring."""
    return [textwrap.dedent(block) for block in re.findall(r'((?:^    .*\n)+)', tinydet.__doc__, flags=re.M)]


@pytest.fixture(scope='module')
def example():
    """The first docstring example run as a user would, from the repository root: (its namespace, what it printed)."""
    for needed in (RELEASED, 'images/bus.jpg'):   # the example reads them from ../shared
        shared_path(needed)
    namespace, printed = {}, io.StringIO()
    with pytest.MonkeyPatch.context() as patch, contextlib.redirect_stdout(printed):
        patch.chdir(REPO)
        exec(docstring_examples()[0], namespace)
    return namespace, printed.getvalue()


def test_the_docstring_example_detects_what_test_py_prints(example, tmp_path, capsys):
    namespace, printed = example
    bus = shared_path('images/bus.jpg')
    detections = namespace['detector'](bus)
    # test.py as `python3 test.py ...` runs it, on the same .data, weights and image
    code, out, err = run_script('test', ['--data', str(REPO / 'data' / 'coco.data'), '--weights',
                                         str(shared_path(RELEASED)), '--img', str(bus), '--out', str(tmp_path),
                                         '--threads', '1'], capsys)
    assert code == 0, err
    rows = parse_detections(out)
    assert len(printed.splitlines()) == len(detections) == len(rows) >= 3
    assert {d.class_name for d in detections} == {'person', 'bus'}
    for d, row in zip(detections, rows):
        assert d.class_name.replace(' ', '_') == row[0]
        assert d.score == pytest.approx(row[1], abs=1e-4)                        # printed with 4 decimals
        np.testing.assert_allclose([d.x1, d.y1, d.x2, d.y2], row[2:], atol=0.06)   # and 1 decimal
    detector = namespace['detector']
    assert detector.input_size == (352, 352) and len(detector.names) == 80 and detector.names[5] == 'bus'


def test_the_docstring_example_matches_the_reference_decode(example):
    """Independent of utils/preprocess and utils/postprocess: the model's raw logits on the image resized by cv2,
    decoded and suppressed as Yolo-FastestV2 does (tests/test_postprocess.py), scaled back to the image."""
    from model.build import build_model
    from model.weights import load_weights
    from utils.config import load_config
    detector = example[0]['detector']
    image = cv2.imread(str(shared_path('images/bus.jpg')))
    height, width = image.shape[:2]
    model = build_model(load_config(REPO / 'data' / 'coco.data', splits=False), log=lambda *_: None)
    load_weights(model, shared_path(RELEASED))
    batch = torch.from_numpy(cv2.resize(image, (352, 352)).transpose(2, 0, 1)[None].astype(np.float32) / 255)
    with torch.no_grad():
        raw = model.eval()(batch)
    expected = reference_detections(reference_decode(raw, YFV2_ANCHORS, 352, 352), conf_thresh=0.3, iou_thresh=0.4)
    scale = np.array([width / 352, height / 352, width / 352, height / 352])
    expected_boxes = np.clip(expected[:, :4] * scale, 0, [width, height, width, height])
    detections = detector(image)
    assert len(detections) == len(expected)
    for d, exp, box in zip(detections, expected, expected_boxes):
        assert d.class_name == detector.names[int(exp[5])]
        assert d.score == pytest.approx(exp[4], abs=2e-4)
        np.testing.assert_allclose([d.x1, d.y1, d.x2, d.y2], box, atol=0.05)
    detector.conf = 0.9   # settable: only the best person is left
    assert [d.class_name for d in detector(image)] == ['person']


@pytest.fixture(scope='module')
def trained(tmp_path_factory):
    """2 epochs on a small generated dataset (data/make_sample.py), through the API."""
    from data.make_sample import generate
    folder = tmp_path_factory.mktemp('sample')
    generate(folder, seed=0, train=16, val=8, size=96)
    torch.set_num_threads(1)
    best = tinydet.train(folder / 'sample.data', epochs=2, batch_size=8, workers=0, device='cpu',
                         out=folder / 'run', learning_rate=0.003,
                         backbone_weights=shared_path('weights/yolo-fastestv2/shufflenetv2-0.5x-imagenet-backbone.pth'))
    return folder / 'sample.data', best


def test_train_evaluate_export_and_load(trained, tmp_path):
    data, best = trained
    assert best == data.parent / 'run' / 'best.pt' and best.is_file()
    # evaluate() scores the checkpoint as the trainer scored its EMA model when it wrote best.pt
    result = tinydet.evaluate(data, best, workers=0, progress=False)
    recorded = torch.load(best, weights_only=False)['best_map50_95']
    assert result.map50_95 == pytest.approx(recorded, abs=1e-6) and recorded > 0
    assert result.map50 >= result.map50_95 and result.num_images == 8
    assert {row[1] for row in result.per_class} <= {'circle', 'square', 'triangle', 'cross'}

    # our checkpoint names its .data: no data= needed
    image = cv2.imread(str(sorted((data.parent / 'images' / 'val').glob('*.jpg'))[0]))
    from_checkpoint = tinydet.load(best)
    assert from_checkpoint.names == ('circle', 'square', 'triangle', 'cross')
    from_checkpoint.conf = 0.001
    expected = from_checkpoint(image)
    assert len(expected) >= 5

    files = tinydet.export(data, best, tmp_path / 'm.onnx', simplify=False, check=False, conf_thresh=0.001,
                           nms_iou=0.4, log=lambda *_: None)
    assert files.param == tmp_path / 'm.param' and files.sidecar == tmp_path / 'm.json' and files.bin.is_file()
    for path in (files.param, files.onnx):   # names, input size, letterbox and thresholds from the sidecar alone
        detector = tinydet.load(path)
        assert detector.runtime.name == {'.param': 'ncnn', '.onnx': 'onnx'}[path.suffix]
        assert detector.names == from_checkpoint.names and detector.input_size == (96, 96)
        assert (detector.conf, detector.iou) == (0.001, 0.4)
        ours = detector(image)
        assert len(ours) == len(expected)
        for a, b in zip(ours, expected):
            assert a.class_name == b.class_name and a.score == pytest.approx(b.score, abs=1e-4)
            np.testing.assert_allclose(a[2:], b[2:], atol=0.01)

    files.sidecar.unlink()
    with pytest.raises(ConfigError, match=r'm\.onnx: no m\.json beside it .* give data='):
        tinydet.load(files.onnx)
    with_data = tinydet.load(files.onnx, data=data)
    assert (with_data.conf, with_data.iou) == (0.3, 0.4)   # test.py's defaults
    with_data.conf = 0.001
    assert len(with_data(image)) == len(expected)


def test_a_released_weights_file_needs_its_data_file():
    with pytest.raises(ConfigError, match='give data='):
        tinydet.load(shared_path(RELEASED))


def test_train_py_passes_its_options_to_the_trainer(trained, tmp_path, monkeypatch, capsys):
    data, best = trained
    seen = {}

    def trainer(cfg, options):
        seen.update(cfg=cfg, options=options)
        return {'best': options.out_dir / 'best.pt'}
    monkeypatch.setattr('utils.train.trainer.train', trainer)
    code = run(load_script('train').main, ['--data', str(data), '--teacher', str(best), '--epochs', '3',
                                           '--batch-size', '4', '--out', str(tmp_path), '--device', 'cpu',
                                           '--workers', '0', '--seed', '5', '--weights', str(best)])
    assert code == 0, capsys.readouterr().err
    cfg, options = seen['cfg'], seen['options']
    assert (cfg.teacher_weights, cfg.epochs, cfg.batch_size) == (best, 3, 4)
    assert (options.out_dir, options.device, options.workers, options.seed, options.weights) == \
        (tmp_path, 'cpu', 0, 5, best)
    seen.clear()
    with pytest.raises(ConfigError, match='unknown .data keys epoch'):
        tinydet.train(data, epoch=5)
    assert seen == {}
    assert tinydet.train(data, out=tmp_path, teacher=str(best)) == tmp_path / 'best.pt'
    assert seen['cfg'].teacher_weights == best


def test_import_tinydet_loads_neither_torch_nor_opencv():
    done = subprocess.run([sys.executable, '-c', 'import sys, tinydet; '
                           'print(sorted(m for m in ("torch", "cv2", "numpy") if m in sys.modules))'],
                          cwd=REPO, capture_output=True, text=True, timeout=60)
    assert done.stdout.strip() == '[]', done.stderr
