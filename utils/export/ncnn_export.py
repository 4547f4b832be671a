"""Export a trained detector for deployment: ONNX (simplified) -> NCNN (.param/.bin) + the sidecar JSON.

The road (then `check_export` below runs every backend on one image and compares them with PyTorch):
    Detector with .export = True  --torch.onnx.export (TorchScript exporter)-->  X.onnx  --onnxsim-->  X.onnx
    X.onnx  --pnnx fp16=0-->  X.param / X.bin   (+ X.json: input size, blob names, anchors, classes)

Why the TorchScript ("legacy", dynamo=False) exporter: torch 2.13 defaults to the torch.export-based one, which
needs onnxscript (not installed: it fails with ModuleNotFoundError) and emits opset 18 graphs; the TorchScript
exporter at opset 11 gives the plain Conv / Concat / Transpose / Softmax graph that onnxsim, pnnx and OpenCV's DNN
all read (it is what Yolo-FastestV2 itself used).

Why fp16=0 for pnnx: pnnx stores weights as fp16 by default, which alone moves the released Yolo-FastestV2's
outputs by 3.4e-3; fp16=0 keeps the fp32 weights bit-exact, so NCNN matches PyTorch to 3e-6 (5.7e-5 on LeYOLO's
box distances of up to 15 cells) and the INT8 quantizer starts from the true weights. fp16 weights would not be
faster either: NCNN widens them to fp32 when it loads them (measured: the same speed within 1.5 %).

Why the stem convolution carries a layer hint (`31=32` in the .param, see `add_ncnn_layer_hints`): NCNN's x86
Convolution picks im2col + GEMM for any convolution with over 16 input or output channels, also for the stem that
reads the 3-channel image, where the im2col matrix has only 27 rows but 176x176 columns (3.3 MB at 352x352, more
than L2). NCNN reads a per-layer feature mask from key 31 of a layer's .param line; its bit 5 turns
`use_sgemm_convolution` off for that layer alone, so the stem runs NCNN's direct packed kernel. The outputs stay
bit-identical on our check image (tests/test_export.py); the whole Yolo-FastestV2 network at 352x352 and 1 thread
runs 5-8 % faster (bench/latency.py, figures in the README). Its other convolutions are 1x1 or depthwise, which
the flag leaves alone. NCNN's direct kernel runs on one thread, so utils/runtimes/ncnn_runtime.py clears the hint when it runs
more threads (there the GEMM path, split across threads, is as fast or faster).
"""
from __future__ import annotations

import contextlib
import json
import re
import shutil
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path

import numpy as np
import onnx
import torch

from utils.errors import ExportError
from utils.preprocess import PAD_VALUE
from utils.runtimes.ncnn_runtime import NCNN_FEATMASK_KEY, NCNN_FEATMASK_NO_SGEMM, sidecar_path

# Detection thresholds written into the sidecar for the C++ app (Yolo-FastestV2's demo values).
DEFAULT_CONF_THRESH = 0.3
DEFAULT_NMS_IOU = 0.4
INPUT_NAME = 'in0'   # the names pnnx gives, used in the ONNX too so every backend speaks of the same blobs


def output_names(num_outputs: int) -> list[str]:
    return [f'out{i}' for i in range(num_outputs)]


def pnnx_executable() -> Path:
    """pnnx is a binary installed beside the Python interpreter by the `pnnx` wheel."""
    candidate = Path(sys.executable).parent / 'pnnx'
    if candidate.is_file():
        return candidate
    found = shutil.which('pnnx')
    if found is None:
        raise ExportError('pnnx not found: install it with `pip install pnnx` (after torch==2.13.0, see Makefile)')
    return Path(found)


@contextlib.contextmanager
def deployment_mode(model: torch.nn.Module):
    """eval() and `.export = True` for the block, then the model's previous state: export may run mid-training."""
    was_training, was_export = model.training, getattr(model, 'export', False)
    model.eval()
    model.export = True
    try:
        yield model
    finally:
        model.train(was_training)
        model.export = was_export


def export_onnx(model: torch.nn.Module, onnx_path, width: int, height: int, opset: int = 11,
                simplify: bool = True) -> Path:
    """Write the model's deployment graph (one NHWC output per scale, stride order) to `onnx_path`."""
    onnx_path = Path(onnx_path)
    onnx_path.parent.mkdir(parents=True, exist_ok=True)
    dummy = torch.rand(1, 3, height, width)   # float 0..1 BGR: the deployment input
    with deployment_mode(model), torch.no_grad(), warnings.catch_warnings():
        num_outputs = len(model(dummy))
        # The exporter warns that it is the legacy one; that choice is deliberate (see the module docstring).
        warnings.simplefilter('ignore', DeprecationWarning)
        torch.onnx.export(model, (dummy,), str(onnx_path), opset_version=opset, dynamo=False,
                          input_names=[INPUT_NAME], output_names=output_names(num_outputs),
                          do_constant_folding=True)
    graph = onnx.load(str(onnx_path))
    onnx.checker.check_model(graph)
    if simplify:
        import onnxsim
        simplified, ok = onnxsim.simplify(graph)
        if not ok:
            raise ExportError(f'{onnx_path}: onnxsim could not validate the simplified graph')
        onnx.save(simplified, str(onnx_path))
    return onnx_path


def convert_to_ncnn(onnx_path, width: int, height: int) -> tuple[Path, Path]:
    """ONNX -> `X.param` / `X.bin` beside it (pnnx, fp32 weights), with `add_ncnn_layer_hints`. pnnx's other
    files are left in a temp folder."""
    onnx_path = Path(onnx_path)
    param_path, bin_path = onnx_path.with_suffix('.param'), onnx_path.with_suffix('.bin')
    with tempfile.TemporaryDirectory(prefix='pnnx_') as work:
        # pnnx writes ~7 files beside its input (x.pnnx.*, x_pnnx.py, x.ncnn.*, x_ncnn.py, x.pnnxsim.onnx): work
        # on a copy in a temp folder and keep only the two NCNN files.
        work_onnx = Path(work) / 'model.onnx'
        shutil.copyfile(onnx_path, work_onnx)
        command = [str(pnnx_executable()), str(work_onnx), f'inputshape=[1,3,{height},{width}]', 'fp16=0']
        result = subprocess.run(command, cwd=work, capture_output=True, text=True)
        produced = [Path(work) / 'model.ncnn.param', Path(work) / 'model.ncnn.bin']
        if result.returncode != 0 or not all(p.is_file() for p in produced):
            log = (result.stdout + result.stderr)[-3000:]
            raise ExportError(f'pnnx failed on {onnx_path} (exit {result.returncode}):\n{log}')
        shutil.move(produced[0], param_path)
        shutil.move(produced[1], bin_path)
    add_ncnn_layer_hints(param_path)
    return param_path, bin_path


STEM_MAX_INPUT_CHANNELS = 4      # a full convolution reading this few channels reads the image: the stem


def stem_convolutions(param_lines: list[str]) -> list[int]:
    """Indexes of the lines holding a k x k (k > 1) Convolution with <= STEM_MAX_INPUT_CHANNELS input channels.

    Input channels are not written in a .param: they are weight count / (outputs * kernel_w * kernel_h).
    """
    found = []
    for index, line in enumerate(param_lines):
        fields = line.split()
        if len(fields) < 4 or fields[0] != 'Convolution':
            continue
        start = 4 + int(fields[2]) + int(fields[3])
        params = dict(item.split('=', 1) for item in fields[start:])
        kernel_w = int(params.get('1', 0))
        kernel_h = int(params.get('11', kernel_w))
        num_output, weight_count = int(params.get('0', 0)), int(params.get('6', 0))
        if params.get('19', '0') != '0' or kernel_w * kernel_h <= 1 or num_output == 0:
            continue   # dynamic weights (19=1) or 1x1: the flag changes nothing there
        if weight_count // (num_output * kernel_w * kernel_h) <= STEM_MAX_INPUT_CHANNELS:
            found.append(index)
    return found


def add_ncnn_layer_hints(param_path) -> list[str]:
    """Rewrite `param_path` so the stem convolution runs NCNN's direct kernel (see the module docstring).

    Returns the names of the layers given the hint. Only the layer's feature mask changes: shapes, blobs and
    weights stay as they are, and an NCNN that does not know the hint ignores it. Running it twice is harmless.
    """
    param_path = Path(param_path)
    lines = param_path.read_text().splitlines()
    hinted = []
    for index in stem_convolutions(lines):
        fields = lines[index].split()
        start = 4 + int(fields[2]) + int(fields[3])
        params = fields[start:]
        keys = [item.split('=', 1)[0] for item in params]
        if str(NCNN_FEATMASK_KEY) in keys:   # keep the mask that is there, add our bit; the line's spacing stays
            old_item = params[keys.index(str(NCNN_FEATMASK_KEY))]
            mask = int(old_item.split('=', 1)[1]) | NCNN_FEATMASK_NO_SGEMM
            lines[index] = re.sub(rf'(?<=\s){re.escape(old_item)}(?=\s|$)', f'{NCNN_FEATMASK_KEY}={mask}',
                                  lines[index])
        else:
            lines[index] = lines[index].rstrip() + f' {NCNN_FEATMASK_KEY}={NCNN_FEATMASK_NO_SGEMM}'
        hinted.append(fields[1])
    param_path.write_text('\n'.join(lines) + '\n')
    return hinted


def ncnn_blob_names(param_path) -> tuple[str, list[str]]:
    """(input blob, output blobs) of a pnnx-written .param: the Input layer's top and blobs named outN."""
    lines = Path(param_path).read_text().splitlines()
    input_blob, outputs = None, []
    for line in lines[2:]:
        fields = line.split()
        if not fields:
            continue
        num_inputs, num_outputs = int(fields[2]), int(fields[3])
        tops = fields[4 + num_inputs:4 + num_inputs + num_outputs]
        if fields[0] == 'Input':
            input_blob = tops[0]
        outputs += [top for top in tops if top.startswith('out') and top[3:].isdigit()]
    if input_blob is None or not outputs:
        raise ExportError(f'{param_path}: no Input layer or no outN blobs found')
    return input_blob, sorted(outputs, key=lambda name: int(name[3:]))


def write_sidecar(param_path, spec, class_names, letterbox: bool, pad_value: int = PAD_VALUE,
                  conf_thresh: float = DEFAULT_CONF_THRESH, nms_iou: float = DEFAULT_NMS_IOU) -> Path:
    """`X.json` beside `X.param`: everything the C++ app needs to feed the net and decode its outputs."""
    input_blob, output_blobs = ncnn_blob_names(param_path)
    if len(output_blobs) != len(spec.strides):
        raise ExportError(f'{param_path}: {len(output_blobs)} output blobs for {len(spec.strides)} strides')
    sidecar = {
        'input_width': spec.input_width, 'input_height': spec.input_height,
        'letterbox': bool(letterbox), 'pad_value': pad_value, 'channel_order': 'bgr', 'scale': 1 / 255,
        'input_blob': input_blob, 'output_blobs': output_blobs,
        'head': spec.kind, 'strides': list(spec.strides),
        'anchors_px': [[list(wh) for wh in scale] for scale in spec.anchors_px],
        'num_classes': spec.num_classes, 'class_names': list(class_names),
        'conf_thresh': conf_thresh, 'nms_iou': nms_iou,
    }
    path = sidecar_path(param_path)
    # one key per line, values compact: easy to read and to diff
    lines = [f' "{key}": {json.dumps(value)}' for key, value in sidecar.items()]
    path.write_text('{\n' + ',\n'.join(lines) + '\n}\n')
    return path


def export_all(model, cfg, onnx_path, opset: int = 11, simplify: bool = True, ncnn: bool = True,
               conf_thresh: float = DEFAULT_CONF_THRESH, nms_iou: float = DEFAULT_NMS_IOU) -> dict:
    """The whole road for one model and its Config. Returns {'onnx': path, 'param': ..., 'bin': ..., 'json': ...}."""
    paths = {'onnx': export_onnx(model, onnx_path, cfg.width, cfg.height, opset=opset, simplify=simplify)}
    if ncnn:
        paths['param'], paths['bin'] = convert_to_ncnn(paths['onnx'], cfg.width, cfg.height)
        paths['json'] = write_sidecar(paths['param'], model.spec, cfg.class_names, cfg.letterbox,
                                      conf_thresh=conf_thresh, nms_iou=nms_iou)
    return paths


# ---------------------------------------------------------------------------------------------------------------
# Checking an export: every backend on the same real image, compared with PyTorch output by output.

# Allowed |diff| against PyTorch, relative to max(1, |PyTorch value|): absolute for the probabilities (0..1),
# relative for LeYOLO's box distances (up to reg_max - 1 = 15 grid cells), whose float32 rounding grows with them.
# ONNX backends compute the same fp32 graph; NCNN with fp32 weights and arithmetic lands in the same range (the
# 4e-3 seen with pnnx's default fp16 weights is gone with fp16=0). Measured values are in the README.
TOLERANCES = {'onnxruntime': 1e-4, 'opencv': 1e-4, 'ncnn': 1e-4}


def run_torch(model, batch_nchw: np.ndarray) -> list[np.ndarray]:
    with deployment_mode(model), torch.no_grad():
        return [out.numpy() for out in model(torch.from_numpy(batch_nchw))]


def run_onnxruntime(onnx_path, batch_nchw: np.ndarray) -> list[np.ndarray]:
    import onnxruntime
    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3   # silence the CPU-vendor warning on this machine
    session = onnxruntime.InferenceSession(str(onnx_path), options, providers=['CPUExecutionProvider'])
    return session.run(None, {session.get_inputs()[0].name: batch_nchw})


def run_opencv(onnx_path, batch_nchw: np.ndarray) -> list[np.ndarray]:
    import cv2
    net = cv2.dnn.readNetFromONNX(str(onnx_path))
    net.setInput(batch_nchw)
    names = [output.name for output in onnx.load(str(onnx_path)).graph.output]
    return list(net.forward(names))


def run_ncnn(param_path, batch_nchw: np.ndarray) -> list[np.ndarray]:
    from utils.runtimes.ncnn_runtime import NcnnRuntime
    return NcnnRuntime(param_path, num_threads=1)(batch_nchw)


class OutputDiff:
    """How far one backend's output is from PyTorch's."""

    def __init__(self, backend: str, index: int, reference: np.ndarray, output: np.ndarray):
        self.backend, self.index, self.shape = backend, index, tuple(output.shape)
        if output.shape != reference.shape:
            self.max_abs = self.mean_abs = self.max_scaled = float('inf')
            self.problem = f'shape {output.shape} != PyTorch {reference.shape}'
        else:
            diff = np.abs(output.astype(np.float64) - reference)
            self.max_abs, self.mean_abs = float(diff.max()), float(diff.mean())
            self.max_scaled = float((diff / np.maximum(1.0, np.abs(reference))).max())
            self.problem = '' if self.max_scaled <= TOLERANCES[backend] else \
                f'max |diff| / max(1, |value|) {self.max_scaled:.2e} > tolerance {TOLERANCES[backend]:.0e}'

    @property
    def ok(self) -> bool:
        return not self.problem

    def line(self) -> str:
        verdict = 'ok' if self.ok else 'FAIL: ' + self.problem
        return (f'{self.backend:12s} out{self.index} {str(self.shape):18s} max |diff| {self.max_abs:.2e}  '
                f'mean |diff| {self.mean_abs:.2e}  relative {self.max_scaled:.2e}  {verdict}')


def detections(outputs_nhwc: list[np.ndarray], spec, conf_thresh: float, nms_iou: float) -> np.ndarray:
    """The first image's detections (M, 6) [x1, y1, x2, y2, score, class], through the project's one decode + NMS."""
    from utils.postprocess import postprocess
    return postprocess([np.asarray(o) for o in outputs_nhwc], spec, conf_thresh, nms_iou)[0]


def same_detections(reference: np.ndarray, other: np.ndarray, box_tol_px: float = 1.0,
                    score_tol: float = 1e-2) -> str:
    """'' when both lists hold the same objects (same classes, boxes within box_tol_px), else what differs."""
    if len(reference) != len(other):
        return f'{len(other)} detections, PyTorch has {len(reference)}'
    order_ref = np.lexsort((reference[:, 0], reference[:, 5]))
    order_other = np.lexsort((other[:, 0], other[:, 5]))
    reference, other = reference[order_ref], other[order_other]
    if not np.array_equal(reference[:, 5], other[:, 5]):
        return 'different classes detected'
    box_diff = np.abs(reference[:, :4] - other[:, :4]).max(initial=0.0)
    score_diff = np.abs(reference[:, 4] - other[:, 4]).max(initial=0.0)
    if box_diff > box_tol_px or score_diff > score_tol:
        return f'boxes differ by {box_diff:.2f} px, scores by {score_diff:.3f}'
    return ''


class CheckReport:
    def __init__(self):
        self.diffs: list[OutputDiff] = []
        self.detection_lines: list[str] = []
        self.problems: list[str] = []
        self.num_reference_detections = 0   # PyTorch's detections on the check image: 0 makes that check vacuous

    @property
    def ok(self) -> bool:
        return not self.problems

    def text(self) -> str:
        lines = [diff.line() for diff in self.diffs] + self.detection_lines
        return '\n'.join(lines + [f'FAIL: {p}' for p in self.problems] + ['export check: ' + ('ok' if self.ok else
                                                                                             'FAILED')])


def check_export(model, paths: dict, batch_nchw: np.ndarray, conf_thresh: float = DEFAULT_CONF_THRESH,
                 nms_iou: float = DEFAULT_NMS_IOU, backends=('onnxruntime', 'opencv', 'ncnn')) -> CheckReport:
    """Run PyTorch and each exported backend on `batch_nchw` (1 image); compare outputs and detections."""
    runners = {'onnxruntime': lambda: run_onnxruntime(paths['onnx'], batch_nchw),
               'opencv': lambda: run_opencv(paths['onnx'], batch_nchw),
               'ncnn': lambda: run_ncnn(paths['param'], batch_nchw)}
    report = CheckReport()
    reference = run_torch(model, batch_nchw)
    reference_dets = detections(reference, model.spec, conf_thresh, nms_iou)
    report.num_reference_detections = len(reference_dets)
    report.detection_lines.append(f'{"pytorch":12s} {len(reference_dets)} detections at conf {conf_thresh}')
    for backend in backends:
        if backend == 'ncnn' and 'param' not in paths:
            continue
        try:
            outputs = runners[backend]()
        except Exception as error:   # a backend that cannot load or run the model is a failed check, not a crash
            report.problems.append(f'{backend} could not run the export: {type(error).__name__}: {error}')
            continue
        if len(outputs) != len(reference):
            report.problems.append(f'{backend} gives {len(outputs)} outputs, PyTorch {len(reference)}')
            continue
        for index, (ref, out) in enumerate(zip(reference, outputs)):
            diff = OutputDiff(backend, index, ref, np.asarray(out))
            report.diffs.append(diff)
            if not diff.ok:
                report.problems.append(f'{backend} out{index}: {diff.problem}')
        if all(np.asarray(o).shape == r.shape for o, r in zip(outputs, reference)):
            difference = same_detections(reference_dets, detections(outputs, model.spec, conf_thresh, nms_iou))
            report.detection_lines.append(f'{backend:12s} detections: ' + ('identical' if not difference
                                                                           else 'DIFFER: ' + difference))
            if difference:
                report.problems.append(f'{backend} detections differ from PyTorch: {difference}')
    return report
