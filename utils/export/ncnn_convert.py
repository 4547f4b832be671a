"""ONNX -> NCNN (.param/.bin through pnnx, the stem's layer hint) and the sidecar JSON the C++ app reads.

Why fp16=0 for pnnx: pnnx stores weights as fp16 by default, which alone moves the outputs far past the export
check's tolerance (utils/export/check.py); fp16=0 keeps the fp32 weights bit-exact, so NCNN matches PyTorch to
float32 rounding and the INT8 quantizer starts from the true weights. fp16 weights would not be faster either:
NCNN widens them to fp32 when it loads them. The figures: docs/benchmarks.md, "Export agreement".

The stem convolution gets NCNN's per-layer "no im2col + GEMM" hint (`31=32` in the .param): why, and how it is
set, is in utils/ncnn_param.py.
"""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from utils.errors import ExportError
from utils.ncnn_param import add_stem_hint, read_io_blobs, read_param, write_param
from utils.preprocess import PAD_VALUE
from utils.runtimes.sidecar import sidecar_path

# Detection thresholds written into the sidecar for the C++ app (Yolo-FastestV2's demo values).
DEFAULT_CONF_THRESH = 0.3
DEFAULT_NMS_IOU = 0.4


def pnnx_executable() -> Path:
    """pnnx is a binary installed beside the Python interpreter by the `pnnx` wheel."""
    candidate = Path(sys.executable).parent / 'pnnx'
    if candidate.is_file():
        return candidate
    found = shutil.which('pnnx')
    if found is None:
        raise ExportError('pnnx not found: install it with `pip install pnnx` (after torch==2.13.0, see Makefile)')
    return Path(found)


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


def add_ncnn_layer_hints(param_path) -> list[str]:
    """Rewrite `param_path` so the stem convolution runs NCNN's direct kernel (utils/ncnn_param.py).

    Returns the names of the layers given the hint. Only the layers' feature masks change: shapes, blobs and
    weights stay as they are, and an NCNN that does not know the hint ignores it. Running it twice is harmless.
    """
    layers, blob_count = read_param(param_path)
    hinted = add_stem_hint(layers)
    write_param(param_path, layers, blob_count)
    return hinted


def write_sidecar(param_path, spec, class_names, letterbox: bool, pad_value: int = PAD_VALUE,
                  conf_thresh: float = DEFAULT_CONF_THRESH, nms_iou: float = DEFAULT_NMS_IOU) -> Path:
    """`X.json` beside `X.param`: everything the C++ app needs to feed the net and decode its outputs."""
    input_blob, output_blobs = read_io_blobs(param_path)
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
