"""One calling convention for every backend, so evaluation and test.py treat them alike.

A runtime is called on a float32 NCHW BGR 0..1 batch (utils.preprocess.to_input_tensor) and returns one NHWC numpy
array per output scale, strides ascending, in the deployment layout of docs/architecture.md. Each runtime carries
`.spec` (a model.spec.HeadSpec) saying how to decode those outputs, and `.name` (the backend).

    torch   a .pth (released state_dict or our checkpoint) loaded into build_model(cfg), in export mode,
            BatchNorm folded into the convolutions
    onnx    a .onnx file run by onnxruntime (CPU)
    opencv  a .onnx file run by OpenCV DNN
    ncnn    a .param file (with .bin and the sidecar .json beside it) run by utils/runtimes/ncnn_runtime.py
"""
from __future__ import annotations

import os
from pathlib import Path

from model.build import make_spec
from utils.runtimes.backends import OnnxRuntime, OpenCVRuntime, TorchRuntime, fuse_conv_bn

BACKENDS = ('torch', 'onnx', 'opencv', 'ncnn')


def check_sidecar(param_path: Path, sidecar: dict, spec) -> None:
    """The NCNN sidecar records what the model was exported with; it must agree with the .data file."""
    wanted = {'input_width': spec.input_width, 'input_height': spec.input_height, 'num_classes': spec.num_classes,
              'head': spec.kind, 'strides': list(spec.strides)}
    for key, value in wanted.items():
        if key in sidecar and sidecar[key] != value:
            raise ValueError(f'{Path(param_path).with_suffix(".json")}: "{key}" is {sidecar[key]} but the .data '
                             f'file gives {value}: was this model exported from another .data file?')


def load_runtime(backend: str, cfg, weights, num_threads: int = 0):
    """`backend` in BACKENDS, `cfg` the loaded .data Config, `weights` the file that backend reads.
    `num_threads` applies to onnx and ncnn (0: the library's default; torch threads are set by the caller)."""
    weights = Path(weights)
    if backend not in BACKENDS:
        raise ValueError(f'unknown backend "{backend}"; choose one of {", ".join(BACKENDS)}')
    if not weights.is_file():
        raise FileNotFoundError(f'{weights}: weights file not found')
    expected_suffix = {'onnx': '.onnx', 'opencv': '.onnx', 'ncnn': '.param'}.get(backend)
    if expected_suffix and weights.suffix != expected_suffix:
        raise ValueError(f'{weights}: the {backend} backend reads a {expected_suffix} file '
                         f'(made by pytorch2onnx.py), not {weights.suffix or "a file without extension"}')
    if backend == 'torch':
        from model.build import build_model
        from model.weights import load_weights
        model = build_model(cfg, log=lambda *_: None)
        load_weights(model, weights, strict=True)
        return TorchRuntime(fuse_conv_bn(model.eval()))
    spec = make_spec(cfg)
    if backend == 'onnx':
        return OnnxRuntime(weights, spec, num_threads)
    if backend == 'opencv':
        return OpenCVRuntime(weights, spec)
    from utils.runtimes.ncnn_runtime import NcnnRuntime  # the ncnn package is only needed for this backend
    runtime = NcnnRuntime(weights, num_threads=num_threads or os.cpu_count() or 1)
    check_sidecar(weights, runtime.sidecar, spec)
    runtime.spec, runtime.name = spec, 'ncnn'
    return runtime
