"""INT8 NCNN models written by utils/int8/, checked against the NCNN runtime itself.

A tiny torch net (3x3 stride-2 conv, depthwise 3x3, 1x1, 3x3 stride-1 conv, sigmoid 1x1 head, mean + Linear)
goes torch -> ONNX -> pnnx -> fp32 NCNN, is quantized on synthetic structured images, and the INT8 model is run by
the `ncnn` Python runtime. On real data the released Yolo-FastestV2 NCNN model is quantized on coco128 and its
detections compared with fp32's.
"""
import re
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from torch import nn

from tests.conftest import shared_path
from utils.errors import NcnnModelError
from utils.int8.calibrate import (
    HISTOGRAM_BINS,
    KL_EPS,
    TARGET_BINS,
    kl_threshold_bin,
    layer_function,
    load_calibration_inputs,
    load_ncnn_net,
    round_half_away,
    run_blobs,
)
from utils.int8.quantize import end_layers, layer_weight_scales, quantize_ncnn
from utils.int8.write import TAG_INT8, LayerScales, NcnnModel, quantize_to_int8, read_ncnn_model, write_int8_model
from utils.ncnn_param import read_param

SIZE = 64
# max |int8 - fp32| allowed per output, as a fraction of that output's largest |fp32| value: every calibration
# method stays well inside it on this net, and activation scales 8x too large (the wrong-scale test) go past it.
TOLERANCE_OF_RANGE = 0.02


class TinyNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, 2, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU())
        self.dw = nn.Sequential(nn.Conv2d(16, 16, 3, 1, 1, groups=16, bias=False), nn.BatchNorm2d(16))
        self.pw = nn.Sequential(nn.Conv2d(16, 32, 1, bias=False), nn.BatchNorm2d(32), nn.ReLU())
        self.c3 = nn.Sequential(nn.Conv2d(32, 32, 3, 1, 1), nn.ReLU())
        self.head = nn.Conv2d(32, 8, 1)
        self.fc = nn.Linear(32, 5)

    def forward(self, x):
        y = self.c3(self.pw(self.dw(self.stem(x))))
        return torch.sigmoid(self.head(y)), self.fc(y.mean((2, 3)))


def structured_images(folder: Path, count: int, seed: int) -> list:
    """Gradients with filled rectangles and circles: image-like statistics, not white noise."""
    rng = np.random.default_rng(seed)
    folder.mkdir(exist_ok=True)
    paths = []
    for i in range(count):
        h, w = 80, 96
        yy, xx = np.mgrid[0:h, 0:w]
        image = np.stack([(xx * rng.uniform(0, 2.5) + yy * rng.uniform(0, 2.5) + rng.uniform(0, 60)) % 256
                          for _ in range(3)], -1).astype(np.uint8)
        for _ in range(rng.integers(2, 6)):
            color = tuple(int(v) for v in rng.integers(0, 256, 3))
            if rng.random() < 0.5:
                cv2.rectangle(image, tuple(int(v) for v in rng.integers(0, 80, 2)),
                              tuple(int(v) for v in rng.integers(10, 96, 2)), color, -1)
            else:
                cv2.circle(image, tuple(int(v) for v in rng.integers(0, 80, 2)), int(rng.integers(4, 25)), color, -1)
        path = folder / f'img{seed}_{i}.png'
        cv2.imwrite(str(path), image)
        paths.append(path)
    return paths


@pytest.fixture(scope='module')
def tiny(tmp_path_factory):
    """fp32 NCNN files of TinyNet, its torch module, calibration and held-out images."""
    folder = tmp_path_factory.mktemp('int8')
    torch.manual_seed(0)
    model = TinyNet().eval()
    for module in model.modules():      # non-trivial BatchNorm statistics, so pnnx's folding matters
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.uniform_(-0.2, 0.2)
            module.running_var.uniform_(0.5, 2.0)
            module.weight.data.uniform_(0.5, 1.5)
            module.bias.data.uniform_(-0.2, 0.2)
    torch.onnx.export(model, (torch.rand(1, 3, SIZE, SIZE),), str(folder / 'tiny.onnx'), opset_version=11,
                      dynamo=False, input_names=['in0'], output_names=['out0', 'out1'])
    pnnx = Path(sys.executable).parent / 'pnnx'
    subprocess.run([str(pnnx), 'tiny.onnx', f'inputshape=[1,3,{SIZE},{SIZE}]', 'fp16=0'], cwd=folder,
                   check=True, capture_output=True)
    return {'param': folder / 'tiny.ncnn.param', 'bin': folder / 'tiny.ncnn.bin', 'torch': model,
            'folder': folder, 'calib': structured_images(folder / 'calib', 16, seed=1),
            'held_out': structured_images(folder / 'held_out', 6, seed=2)}


def worst_relative_diff(fp32_files, int8_files, images) -> dict:
    """Per output blob: max |int8 - fp32| / max |fp32| over `images` (deployment pre-processing)."""
    fp32, int8 = load_ncnn_net(*fp32_files, int8=False), load_ncnn_net(*int8_files, int8=True)
    model = NcnnModel(fp32_files[0], *read_param(fp32_files[0]))
    worst = {}
    for _, chw in load_calibration_inputs(images, SIZE, SIZE, letterbox=False):
        a = run_blobs(fp32, model.input_blob, model.output_blobs, chw)
        b = run_blobs(int8, model.input_blob, model.output_blobs, chw)
        for blob in model.output_blobs:
            worst[blob] = max(worst.get(blob, 0.0), float(np.abs(a[blob] - b[blob]).max() / np.abs(a[blob]).max()))
    return worst


def assert_close_to_fp32(fp32_files, int8_files, images):
    worst = worst_relative_diff(fp32_files, int8_files, images)
    for blob, diff in worst.items():
        assert diff <= TOLERANCE_OF_RANGE, f'{blob}: int8 is {100 * diff:.1f}% of the output range off fp32'
    return worst


@pytest.mark.parametrize('method', ['kl', 'minmax', 'mse'])
def test_int8_model_runs_close_to_fp32_and_small(tiny, method, tmp_path):
    out_param, out_bin = tmp_path / 'q.param', tmp_path / 'q.bin'
    report = quantize_ncnn(tiny['param'], tiny['bin'], tiny['calib'], SIZE, SIZE, False, out_param, out_bin,
                           method=method, size_budget=None)
    assert report.calib_images_used == 16 and not report.calib_images_skipped
    assert [layer.type for layer in report.layers if layer.quantized] == \
        ['Convolution', 'ConvolutionDepthWise', 'Convolution', 'Convolution', 'Convolution', 'InnerProduct']
    worst = assert_close_to_fp32((tiny['param'], tiny['bin']), (out_param, out_bin), tiny['held_out'])
    assert all(diff > 0 for diff in worst.values()), 'outputs identical to fp32: the INT8 path did not run'
    assert out_bin.stat().st_size <= 0.40 * tiny['bin'].stat().st_size
    # The INT8 .param marks what NCNN's loader must read: 2 = per-channel scales, 1 = per-group (depthwise).
    terms = {layer.type: layer.params.get(8) for layer in read_param(out_param)[0]}
    assert terms == {'Input': None, 'Convolution': '2', 'ConvolutionDepthWise': '1', 'Split': None,
                     'Reduction': None, 'InnerProduct': '2'}


def test_a_wrong_activation_scale_fails_the_check(tiny, tmp_path):
    """The closeness check above is able to fail: input scales 8x too large (thresholds 8x too low, so the
    activations clip)."""
    model = read_ncnn_model(tiny['param'], tiny['bin'])
    good = tmp_path / 'good'
    report = quantize_ncnn(tiny['param'], tiny['bin'], tiny['calib'], SIZE, SIZE, False, f'{good}.param',
                           f'{good}.bin', size_budget=None)
    by_name = {layer.name: layer for layer in model.layers}
    scales = {r.name: LayerScales(layer_weight_scales(by_name[r.name], model.weights[r.name][0].values),
                                  r.input_scale * 8) for r in report.layers}
    write_int8_model(model, scales, tmp_path / 'bad.param', tmp_path / 'bad.bin')
    with pytest.raises(AssertionError, match='output range off fp32'):
        assert_close_to_fp32((tiny['param'], tiny['bin']), (tmp_path / 'bad.param', tmp_path / 'bad.bin'),
                             tiny['held_out'])


def every_blob(param, bin_, fp32_model, image) -> tuple:
    """(layers of the INT8 .param, every blob's value in NCNN for one image)."""
    layers, _ = read_param(param)
    net = load_ncnn_net(param, bin_, int8=True)
    blobs = sorted({b for layer in layers for b in layer.bottoms + layer.tops})
    _, chw = next(load_calibration_inputs([image], SIZE, SIZE, False))
    return layers, run_blobs(net, fp32_model.input_blob, blobs, chw)


def test_each_int8_layer_computes_what_the_writer_means(tiny, tmp_path):
    """NCNN's INT8 output of every quantized layer equals int8(input) * int8(weights) / scales + bias, activated,
    computed in torch from the scales we wrote: the .bin layout and the scale semantics are NCNN's."""
    out_param, out_bin = tmp_path / 'q.param', tmp_path / 'q.bin'
    quantize_ncnn(tiny['param'], tiny['bin'], tiny['calib'], SIZE, SIZE, False, out_param, out_bin,
                  size_budget=None)
    fp32_model = read_ncnn_model(tiny['param'], tiny['bin'])
    int8_layers, values = every_blob(out_param, out_bin, fp32_model, tiny['held_out'][0])
    raw = out_bin.read_bytes()
    offset = 0
    for layer in int8_layers:
        arrays = fp32_model.weights[layer.name]
        offset += sum(len(a.raw) for a in arrays) if layer.params.get(8) is None else 0
        if layer.params.get(8) is None:
            continue
        # Read back what we wrote, at the offsets NCNN's loader uses.
        count = arrays[0].values.size
        assert struct.unpack_from('<I', raw, offset)[0] == TAG_INT8
        int8_weights = np.frombuffer(raw, np.int8, count, offset + 4).astype(np.float32)
        offset += 4 + (count + 3) // 4 * 4
        bias = np.frombuffer(raw, np.float32, arrays[1].values.size, offset) if len(arrays) > 1 else None
        offset += 0 if bias is None else bias.nbytes
        rows = int(layer.params[7]) if layer.type == 'ConvolutionDepthWise' else int(layer.params[0])
        w_scales = np.frombuffer(raw, np.float32, rows, offset)
        input_scale = float(np.frombuffer(raw, np.float32, 1, offset + 4 * rows)[0])
        offset += 4 * rows + 4
        weights = (int8_weights.reshape(rows, -1) / w_scales[:, None]).reshape(-1)
        run = layer_function(layer, weights, bias)
        x = torch.from_numpy(values[layer.bottoms[0]])
        x_int8 = torch.clamp(round_half_away(x * input_scale), -127, 127) / input_scale
        expected = run(x_int8).numpy().reshape(values[layer.tops[0]].shape)
        got = values[layer.tops[0]]
        assert np.abs(got - expected).max() <= 1e-4 * max(1.0, np.abs(expected).max()), layer.name
    assert offset == len(raw)


def test_layers_kept_fp32_stay_exact_while_the_rest_is_int8(tiny, tmp_path):
    """Mixed precision: keep_fp32 names the depthwise layer and the 3x3 stride-1 conv (float32 weights). In the
    INT8 model NCNN computes each kept layer exactly as fp32 does on the input it gets (torch reference, fp32
    weights), its .bin bytes are the fp32 ones and its .param line has no int8_scale_term; every other conv/fc
    layer is INT8 (measurably off the fp32 function), and the file grows by what was kept."""
    fp32_model = read_ncnn_model(tiny['param'], tiny['bin'])
    c3 = next(layer.name for layer in fp32_model.layers if layer.type == 'Convolution'
              and layer.params.get(1) == '3' and layer.params.get(3, '1') == '1')
    depthwise = next(layer.name for layer in fp32_model.layers if layer.type == 'ConvolutionDepthWise')
    mixed, all_int8 = tmp_path / 'mixed', tmp_path / 'all'
    report = quantize_ncnn(tiny['param'], tiny['bin'], tiny['calib'], SIZE, SIZE, False, f'{mixed}.param',
                           f'{mixed}.bin', keep_fp32=(c3, depthwise), size_budget=None, fp16_kept=False)
    quantize_ncnn(tiny['param'], tiny['bin'], tiny['calib'], SIZE, SIZE, False, f'{all_int8}.param',
                  f'{all_int8}.bin', size_budget=None)
    assert {r.name for r in report.layers if not r.quantized} == {c3, depthwise}
    assert re.search(f'kept fp32: ({c3}, {depthwise}|{depthwise}, {c3})$', report.summary(), re.M)

    layers, values = every_blob(f'{mixed}.param', f'{mixed}.bin', fp32_model, tiny['held_out'][0])
    raw, offset = Path(f'{mixed}.bin').read_bytes(), 0
    growth = 0
    for layer in layers:
        arrays = fp32_model.weights[layer.name]
        if layer.type not in ('Convolution', 'ConvolutionDepthWise', 'InnerProduct'):
            continue
        kept = layer.name in (c3, depthwise)
        run = layer_function(layer, arrays[0].values, arrays[1].values if len(arrays) > 1 else None)
        expected = run(torch.from_numpy(values[layer.bottoms[0]])).numpy().reshape(values[layer.tops[0]].shape)
        error = np.abs(values[layer.tops[0]] - expected).max() / np.abs(expected).max()
        assert (8 not in layer.params) == kept, layer.name
        if kept:
            stored = b''.join(a.raw for a in arrays)
            assert raw[offset:offset + len(stored)] == stored, f'{layer.name}: fp32 bytes changed'
            assert error < 1e-5, f'{layer.name} kept fp32 but {error:.2g} off fp32'
            offset += len(stored)
            rows = int(layer.params[7]) if layer.type == 'ConvolutionDepthWise' else int(layer.params[0])
            int8_size = 4 + (arrays[0].values.size + 3) // 4 * 4 + sum(len(a.raw) for a in arrays[1:]) + 4 * rows + 4
            growth += len(stored) - int8_size
        else:
            assert error > 1e-4, f'{layer.name} should be INT8 but equals fp32'   # sigmoid output: 5e-4
            rows = int(layer.params[0])
            offset += 4 + (arrays[0].values.size + 3) // 4 * 4 + sum(len(a.raw) for a in arrays[1:]) + 4 * rows + 4
    assert offset == len(raw)
    assert Path(f'{mixed}.bin').stat().st_size - Path(f'{all_int8}.bin').stat().st_size == growth > 0
    assert_close_to_fp32((tiny['param'], tiny['bin']), (f'{mixed}.param', f'{mixed}.bin'), tiny['held_out'])
    # Nothing quantized: the fp32 bytes unchanged, or (fp16_kept) every conv/fc weight array as fp16, biases fp32.
    write_int8_model(fp32_model, {}, tmp_path / 'same.param', tmp_path / 'same.bin')
    assert (tmp_path / 'same.bin').read_bytes() == tiny['bin'].read_bytes()
    write_int8_model(fp32_model, {}, tmp_path / 'half.param', tmp_path / 'half.bin', fp16_unquantized=True)
    half = read_ncnn_model(tmp_path / 'half.param', tmp_path / 'half.bin')
    for name, arrays in fp32_model.weights.items():
        for i, (a, b) in enumerate(zip(arrays, half.weights[name])):
            np.testing.assert_array_equal(b.values, a.values.astype(np.float16).astype(np.float32) if i == 0 and
                                          a.load_type == 0 else a.values)


def test_quantized_layers_drop_the_no_gemm_hint_kept_ones_keep_it(tiny, tmp_path):
    """The export marks the stem conv "no im2col+GEMM" (key 31, bit 5: faster in fp32); NCNN's INT8 direct kernel
    is slower, so a layer the writer quantizes loses that bit (other mask bits stay) and a layer kept fp32 keeps it."""
    text = tiny['param'].read_text().splitlines()
    convs = [i for i, line in enumerate(text) if line.startswith('Convolution ')]
    text[convs[0]] += ' 31=33'           # bit 5 + bit 0
    text[convs[1]] += ' 31=32'
    hinted = tmp_path / 'hinted.param'
    hinted.write_text('\n'.join(text) + '\n')
    model = read_ncnn_model(hinted, tiny['bin'])
    first, second = (text[i].split()[1] for i in convs[:2])
    out = tmp_path / 'q'
    quantize_ncnn(hinted, tiny['bin'], tiny['calib'], SIZE, SIZE, False, f'{out}.param', f'{out}.bin',
                  keep_fp32=(second,), size_budget=None)
    layers = {layer.name: layer for layer in read_param(f'{out}.param')[0]}
    assert layers[first].params.get(8) and layers[first].params.get(31) == '1'
    assert 8 not in layers[second].params and layers[second].params.get(31) == '32'
    assert len(model.layers) == len(layers)


def test_end_layers_are_the_first_conv_and_the_ones_feeding_outputs(tiny):
    """TinyNet: the stem conv reads the input; the sigmoid head conv and the Linear feed the two outputs (the
    Linear through nothing, the head through its fused sigmoid). The convs in between are not ends."""
    model = read_ncnn_model(tiny['param'], tiny['bin'])
    convs = [layer for layer in model.layers if layer.type in ('Convolution', 'InnerProduct')]
    stem, head, fc = convs[0], convs[-2], convs[-1]
    assert stem.bottoms == [model.input_blob] and fc.type == 'InnerProduct' and head.params.get(9) == '4'
    assert sorted(end_layers(model)) == sorted([stem.name, head.name, fc.name])


def test_reader_decodes_fp32_and_fp16_weights_like_torch(tiny):
    """The .bin reader against the torch weights (pnnx folds BatchNorm, so compare the un-folded Linear/head)."""
    model = read_ncnn_model(tiny['param'], tiny['bin'])
    by_type = {layer.type: layer.name for layer in model.layers}
    fc = model.weights[by_type['InnerProduct']]
    np.testing.assert_array_equal(fc[0].values, tiny['torch'].fc.weight.detach().numpy().reshape(-1))
    np.testing.assert_array_equal(fc[1].values, tiny['torch'].fc.bias.detach().numpy())
    subprocess.run([str(Path(sys.executable).parent / 'pnnx'), 'tiny.onnx', f'inputshape=[1,3,{SIZE},{SIZE}]',
                    'fp16=1', 'ncnnparam=half.param', 'ncnnbin=half.bin'], cwd=tiny['folder'], check=True,
                   capture_output=True)
    half = read_ncnn_model(tiny['folder'] / 'half.param', tiny['folder'] / 'half.bin')
    for name, arrays in model.weights.items():
        for a, b in zip(arrays, half.weights[name]):
            np.testing.assert_allclose(b.values, a.values, rtol=1e-3, atol=1e-4)


def test_mismatched_or_unknown_files_are_named(tiny, tmp_path):
    truncated = tmp_path / 'short.bin'
    truncated.write_bytes(tiny['bin'].read_bytes()[:-40])
    with pytest.raises(NcnnModelError, match='ends early'):
        read_ncnn_model(tiny['param'], truncated)
    longer = tmp_path / 'long.bin'
    longer.write_bytes(tiny['bin'].read_bytes() + b'\0' * 8)
    with pytest.raises(NcnnModelError, match='8 bytes left'):
        read_ncnn_model(tiny['param'], longer)
    odd = tmp_path / 'odd.param'
    odd.write_text(tiny['param'].read_text().replace('Reduction ', 'MyCustomOp '))
    with pytest.raises(NcnnModelError, match=r'odd.param:10: layer type "MyCustomOp"'):
        read_ncnn_model(odd, tiny['bin'])
    with pytest.raises(ValueError, match='could be read'):
        quantize_ncnn(tiny['param'], tiny['bin'], [tmp_path / 'missing.jpg'], SIZE, SIZE, False,
                      tmp_path / 'q.param', tmp_path / 'q.bin')


def test_unreadable_calibration_images_are_counted_and_sidecar_follows(tiny, tmp_path):
    broken = tmp_path / 'broken.jpg'
    broken.write_bytes(b'not an image')
    for suffix in ('.param', '.bin'):
        shutil.copyfile(tiny['param'].with_suffix(suffix), tmp_path / f'm{suffix}')
    (tmp_path / 'm.json').write_text('{"input_blob": "in0", "output_blobs": ["out0", "out1"]}')
    report = quantize_ncnn(tmp_path / 'm.param', tmp_path / 'm.bin', tiny['calib'][:4] + [broken], SIZE, SIZE,
                           False, tmp_path / 'q.param', tmp_path / 'q.bin', method='minmax', check_images=1)
    assert report.calib_images_used == 4 and report.calib_images_skipped == [str(broken)]
    assert '1 unreadable skipped' in report.summary()
    assert (tmp_path / 'q.json').read_text() == (tmp_path / 'm.json').read_text()
    with pytest.raises(ValueError, match='unknown calibration method "entropy"'):
        quantize_ncnn(tmp_path / 'm.param', tmp_path / 'm.bin', tiny['calib'], SIZE, SIZE, False,
                      tmp_path / 'q.param', tmp_path / 'q.bin', method='entropy')


def test_file_format_modules_load_without_ncnn_or_torch():
    """Reading and writing NCNN files is pure Python: utils/ncnn_param.py and the INT8 writer import neither the
    ncnn package nor torch, and utils.runtimes (backend choice) imports no backend library."""
    code = ('import sys, utils.ncnn_param, utils.int8.write, utils.runtimes; '
            'loaded = sorted({"ncnn", "torch", "onnxruntime", "cv2"} & set(sys.modules)); '
            'assert not loaded, loaded')
    result = subprocess.run([sys.executable, '-c', code], cwd=Path(__file__).resolve().parents[1],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_rounding_is_ncnns():
    """Half away from zero (C round), clamp to +-127: 0.5 -> 1, -0.5 -> -1, 2.5 -> 3, 300 -> 127."""
    values = np.array([0.5, -0.5, 2.5, -2.5, 1.49, 300.0, -300.0], np.float32)
    np.testing.assert_array_equal(quantize_to_int8(values, np.array([1.0], np.float32)),
                                  [1, -1, 3, -3, 1, 127, -127])


def ncnn_kl_reference(histogram: np.ndarray) -> int:
    """A loop-by-loop transcription of ncnn2table's threshold search, for checking the vectorised one."""
    import math
    h = histogram / histogram.sum()
    best_kl, best_t = math.inf, TARGET_BINS
    for t in range(TARGET_BINS, len(h)):
        clip = [KL_EPS + v for v in h[:t]]
        clip[t - 1] += float(h[t:].sum())
        width = t / TARGET_BINS
        spans = []
        for j in range(TARGET_BINS):
            start, end = j * width, (j + 1) * width
            left, right = math.ceil(start), math.floor(end) if j < TARGET_BINS - 1 else t
            spans.append((left, left - start, right, end - right if j < TARGET_BINS - 1 else 0.0))
        q = []
        for (left, left_part, right, right_part), j in zip(spans, range(TARGET_BINS)):
            mass = (left_part * h[left - 1] if left_part > 0 else 0) + \
                   (right_part * h[right] if right_part > 0 else 0) + h[left:right].sum()
            q.append(mass / width)
        expand = [KL_EPS] * t
        for (left, left_part, right, right_part), density in zip(spans, q):
            if left_part > 0:
                expand[left - 1] += left_part * density
            if right_part > 0:
                expand[right] += right_part * density
            for k in range(left, right):
                expand[k] += density
        kl = sum(a * math.log(a / b) for a, b in zip(clip, expand))
        if kl < best_kl:
            best_kl, best_t = kl, t
    return best_t


@pytest.mark.parametrize('seed', [0, 1, 2])
def test_kl_threshold_matches_ncnn2table_loop(seed):
    rng = np.random.default_rng(seed)
    samples = np.abs(rng.standard_t(3, 20000)) if seed % 2 else rng.exponential(1.0, 20000)
    bins = 384           # a smaller histogram than NCNN's 2048 keeps the pure-Python reference fast
    histogram = np.bincount(np.minimum((samples / samples.max() * bins).astype(int), bins - 1), minlength=bins)
    assert kl_threshold_bin(histogram) == ncnn_kl_reference(histogram)
    assert HISTOGRAM_BINS == 2048 and TARGET_BINS == 128


def test_released_yolo_fastestv2_int8_keeps_its_detections(tmp_path):
    """Real data: the released Yolo-FastestV2 NCNN model, quantized on 8 coco128 train images, finds on the
    sample images the objects fp32 finds (same class, IoU >= 0.5) for every fp32 detection scoring >= 0.5,
    and is never empty where fp32 is not. Known failure elsewhere: INT8 Yolo-FastestV2 with no detections."""
    from model.spec import HeadSpec
    from utils.config import YFV2_COCO_ANCHORS_352
    from utils.postprocess import postprocess
    weights = shared_path('weights/yolo-fastestv2')
    calib = sorted(shared_path('datasets/coco128/images/train2017').glob('*.jpg'))[:8]
    images = sorted(shared_path('images').glob('*.jpg'))
    param, bin_ = weights / 'yolo-fastestv2-opt.param', weights / 'yolo-fastestv2-opt.bin'
    report = quantize_ncnn(param, bin_, calib, 352, 352, False, tmp_path / 'q.param', tmp_path / 'q.bin',
                           method='mse', mse_images=4, check_images=1)
    assert report.size_ratio <= 0.6      # this release stores fp16 weights: 60% of fp16 is 30% of fp32
    pairs = list(zip(YFV2_COCO_ANCHORS_352[0::2], YFV2_COCO_ANCHORS_352[1::2]))
    spec = HeadSpec(kind='anchor', strides=(16, 32), anchors_px=(tuple(pairs[:3]), tuple(pairs[3:])),
                    num_classes=80, input_width=352, input_height=352)
    fp32_net = load_ncnn_net(param, bin_, int8=False)
    int8_net = load_ncnn_net(tmp_path / 'q.param', tmp_path / 'q.bin', int8=True)
    matched = 0
    for _, chw in load_calibration_inputs(images, 352, 352, letterbox=False):
        detections = []
        for net in (fp32_net, int8_net):
            out = run_blobs(net, 'input.1', ['794', '796'], chw)
            detections.append(postprocess([out['794'][None], out['796'][None]], spec, 0.3, 0.4)[0])
        fp32, int8 = detections
        assert len(int8) > 0 or len(fp32) == 0
        for box in fp32[fp32[:, 4] >= 0.5]:
            same_class = int8[int8[:, 5] == box[5]]
            assert len(same_class), f'class {int(box[5])} (score {box[4]:.2f}) lost in INT8'
            assert box_iou(box[:4], same_class[:, :4]).max() >= 0.5
            matched += 1
    assert matched >= 5      # the sample images hold people, a bus, ... : the check is not vacuous


def box_iou(box, boxes):
    x1, y1 = np.maximum(box[0], boxes[:, 0]), np.maximum(box[1], boxes[:, 1])
    x2, y2 = np.minimum(box[2], boxes[:, 2]), np.minimum(box[3], boxes[:, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    area = lambda b: (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1])  # noqa: E731
    return inter / (area(box) + area(boxes) - inter)


def test_quantize_with_config_gives_a_model_the_project_runtime_runs(tiny, tmp_path):
    """The pytorch2onnx.py path: X.param/.bin/.json + a Config -> X-int8.*, run by utils/runtimes/ncnn_runtime.py."""
    from utils.config import Config
    from utils.int8.quantize import int8_paths, quantize_with_config
    from utils.runtimes.ncnn_runtime import NcnnRuntime
    for suffix in ('.param', '.bin'):
        shutil.copyfile(tiny['param'].with_suffix(suffix), tmp_path / f'm{suffix}')
    (tmp_path / 'm.json').write_text('{"input_blob": "in0", "output_blobs": ["out0", "out1"]}')
    cfg = Config(data_path=tmp_path / 'x.data', classes=1, width=SIZE, height=SIZE, train=tiny['folder'] / 'calib')
    report = quantize_with_config(tmp_path / 'm.param', cfg, calib_images=8, log=lambda *_: None)
    assert report.calib_images_used == 8
    assert int8_paths(tmp_path / 'm.param') == (tmp_path / 'm-int8.param', tmp_path / 'm-int8.bin')
    batch = np.stack([chw for _, chw in load_calibration_inputs(tiny['held_out'], SIZE, SIZE, False)])
    fp32_out = NcnnRuntime(tmp_path / 'm.param')(batch)
    int8_out = NcnnRuntime(tmp_path / 'm-int8.param')(batch)
    for a, b in zip(fp32_out, int8_out):
        assert 0 < np.abs(a - b).max() <= TOLERANCE_OF_RANGE * np.abs(a).max()
    assert report.int8_bytes <= 0.30 * report.fp32_bytes and any(not layer.quantized for layer in report.layers)
    # int8_all (--int8-all): every conv/fc layer INT8, a smaller file; outputs stay within the tolerance
    quantize_with_config(tmp_path / 'm.param', cfg, calib_images=8, int8_all=True, log=lambda *_: None)
    assert (tmp_path / 'm-int8.bin').stat().st_size < report.int8_bytes
    for a, b in zip(fp32_out, NcnnRuntime(tmp_path / 'm-int8.param')(batch)):
        assert np.abs(a - b).max() <= TOLERANCE_OF_RANGE * np.abs(a).max()
    with pytest.raises(ValueError, match='x.data: INT8 calibration reads images of the "train" split'):
        quantize_with_config(tmp_path / 'm.param', Config(data_path=tmp_path / 'x.data'), calib_images=8)


@pytest.mark.parametrize('correct', [True, False])
def test_bias_correction_moves_biases_only_slightly_and_only_when_asked(tiny, tmp_path, correct):
    """The written biases are the fp32 ones minus the mean INT8 error: a small shift, zero when switched off."""
    out_param, out_bin = tmp_path / 'q.param', tmp_path / 'q.bin'
    quantize_ncnn(tiny['param'], tiny['bin'], tiny['calib'], SIZE, SIZE, False, out_param, out_bin,
                  method='mse', bias_correction=correct, size_budget=None)
    fp32 = read_ncnn_model(tiny['param'], tiny['bin'])
    raw, offset, shifts = out_bin.read_bytes(), 0, []
    for layer in read_param(out_param)[0]:
        arrays = fp32.weights[layer.name]
        if layer.params.get(8) is None:
            offset += sum(len(a.raw) for a in arrays)
            continue
        offset += 4 + (arrays[0].values.size + 3) // 4 * 4
        bias = np.frombuffer(raw, np.float32, arrays[1].values.size, offset)
        shifts.append(np.abs(bias - arrays[1].values).max() / max(np.abs(arrays[1].values).max(), 1e-6))
        rows = int(layer.params[7]) if layer.type == 'ConvolutionDepthWise' else int(layer.params[0])
        offset += bias.nbytes + 4 * rows + 4
    assert len(shifts) == 6
    if correct:
        assert 0 < max(shifts) < 0.2
    else:
        assert max(shifts) == 0


def output_noise(fp32_files, int8_files, inputs) -> float:
    """The noise utils/int8/sensitivity.py defines, computed here from its definition: per output, the summed
    squared INT8 - fp32 difference over the summed squared deviation of fp32 from its mean; averaged over outputs."""
    fp32, int8 = load_ncnn_net(*fp32_files, int8=False), load_ncnn_net(*int8_files, int8=True)
    model = NcnnModel(fp32_files[0], *read_param(fp32_files[0]))
    reference = [run_blobs(fp32, model.input_blob, model.output_blobs, chw) for chw in inputs]
    quantized = [run_blobs(int8, model.input_blob, model.output_blobs, chw) for chw in inputs]
    return float(np.mean([sum(((q[b] - r[b]) ** 2).sum() for r, q in zip(reference, quantized))
                          / sum(((r[b] - r[b].mean()) ** 2).sum() for r in reference) for b in model.output_blobs]))


def test_size_budget_keeps_the_noisiest_layers_per_byte_and_fits(tiny, tmp_path):
    """The budget rule: with the all-INT8 .bin plus room for exactly the two layers of most noise per extra byte,
    those two stay fp32 (float16 weights) and the file fits; the extra bytes are measured here from files the
    writer wrote, the noises checked against their definition; a budget of the whole fp32 size keeps everything.
    And what the rule rests on: the all-INT8 model's noise is close to the sum of its single-layer noises (within
    a factor 1.5 either way on this net; on the released models too, docs/benchmarks.md)."""
    calib = tiny['calib'][:8]
    fp32_size = tiny['bin'].stat().st_size
    model = read_ncnn_model(tiny['param'], tiny['bin'])
    by_name = {layer.name: layer for layer in model.layers}

    def quantize(name, budget):
        return quantize_ncnn(tiny['param'], tiny['bin'], calib, SIZE, SIZE, False, tmp_path / f'{name}.param',
                             tmp_path / f'{name}.bin', method='minmax', size_budget=budget, check_images=1)
    full = quantize('full', 1.0)
    noise = {layer.name: layer.noise for layer in full.layers}
    assert not any(layer.quantized for layer in full.layers) and all(n > 0 for n in noise.values())
    scales = {r.name: LayerScales(layer_weight_scales(by_name[r.name], model.weights[r.name][0].values),
                                  r.input_scale) for r in quantize('all', None).layers}
    all_size = (tmp_path / 'all.bin').stat().st_size
    inputs = [chw for _, chw in load_calibration_inputs(calib, SIZE, SIZE, False)]
    fp32_files = (tiny['param'], tiny['bin'])
    together = output_noise(fp32_files, (tmp_path / 'all.param', tmp_path / 'all.bin'), inputs)
    assert 1 / 1.5 <= together / sum(noise.values()) <= 1.5
    extra = {}
    for name in scales:
        write_int8_model(model, {n: s for n, s in scales.items() if n != name}, tmp_path / 'one.param',
                         tmp_path / 'one.bin', fp16_unquantized=True)
        extra[name] = (tmp_path / 'one.bin').stat().st_size - all_size
        write_int8_model(model, {name: scales[name]}, tmp_path / 'alone.param', tmp_path / 'alone.bin')
        alone = output_noise(fp32_files, (tmp_path / 'alone.param', tmp_path / 'alone.bin'), inputs)
        assert noise[name] == pytest.approx(alone, rel=1e-3), name
    order = sorted(extra, key=lambda n: -noise[n] / extra[n])
    budget = (all_size + extra[order[0]] + extra[order[1]]) / fp32_size
    report = quantize('mixed', budget)
    assert {layer.name for layer in report.layers if not layer.quantized} == set(order[:2])
    assert report.int8_bytes == all_size + extra[order[0]] + extra[order[1]] <= budget * fp32_size
