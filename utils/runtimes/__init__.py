"""One calling convention for every backend, so evaluation and test.py treat them alike.

A runtime is called on a float32 NCHW BGR 0..1 batch (utils.preprocess.to_input_tensor) and returns one NHWC numpy
array per output scale, strides ascending, in the deployment layout of docs/architecture.md. Each runtime carries
`.spec` (a model.spec.HeadSpec) saying how to decode those outputs, and `.name` (the backend).

    torch   a .pth (released state_dict or our checkpoint) loaded into build_model(cfg), in export mode,
            BatchNorm folded into the convolutions               utils/runtimes/torch_runtime.py
    onnx    a .onnx file run by onnxruntime (CPU)                utils/runtimes/onnx_runtime.py
    opencv  a .onnx file run by OpenCV DNN                       utils/runtimes/onnx_runtime.py
    ncnn    a .param file (with .bin and the sidecar .json beside it)   utils/runtimes/ncnn_runtime.py

This module imports no backend library (nor torch): a script can pick a backend and check its file first, and
only the chosen backend's library is loaded.
"""
from __future__ import annotations

import os
from pathlib import Path

from utils.errors import ConfigError
from utils.runtimes.sidecar import check_sidecar

__all__ = ['BACKENDS', 'backend_for', 'check_sidecar', 'load_runtime']

BACKENDS = ('torch', 'onnx', 'opencv', 'ncnn')
# The file each exported-model backend reads; the torch backend reads any other file (a .pth or .pt).
EXPORT_SUFFIXES = {'onnx': '.onnx', 'opencv': '.onnx', 'ncnn': '.param'}


def backend_for(weights_path) -> str:
    """The backend that reads `weights_path`, by its suffix: .param -> ncnn, .onnx -> onnx, anything else torch."""
    suffix = Path(weights_path).suffix.lower()
    return {'.param': 'ncnn', '.onnx': 'onnx'}.get(suffix, 'torch')


def check_weights_suffix(backend: str, weights: Path) -> None:
    """`weights` must be the kind of file `backend` reads: one line naming the file, the backend and the fix."""
    suffix = weights.suffix.lower()
    expected = EXPORT_SUFFIXES.get(backend)
    if expected is not None and suffix != expected:
        if suffix == '.bin' and backend == 'ncnn':
            fix = f'give the .param beside it ({weights.with_suffix(".param").name})'
        elif suffix in ('.pt', '.pth') or suffix in EXPORT_SUFFIXES.values():
            fix = f'the {backend_for(weights)} backend reads this one'
        else:
            fix = 'pytorch2onnx.py writes the exported files'
        raise ConfigError(f'{weights}: the {backend} backend reads a {expected} file (made by pytorch2onnx.py), '
                          f'not {suffix or "a file without extension"}; {fix}')
    if expected is None and suffix in EXPORT_SUFFIXES.values():
        raise ConfigError(f'{weights}: the {backend} backend reads a .pth checkpoint, not a {suffix} export; '
                          f'the {backend_for(weights)} backend reads this one')


def load_runtime(backend: str, cfg, weights, num_threads: int = 0, spec=None):
    """`backend` in BACKENDS, `cfg` the loaded .data Config, `weights` the file that backend reads.
    `num_threads` applies to onnx and ncnn (0: the library's default; torch threads are set by the caller).
    An exported model (onnx, opencv, ncnn) also runs without its .data: cfg None, and `spec` (a model.spec.HeadSpec,
    e.g. from its sidecar) saying how to decode its outputs."""
    weights = Path(weights)
    if backend not in BACKENDS:
        raise ConfigError(f'unknown backend "{backend}"; choose one of {", ".join(BACKENDS)}')
    if not weights.is_file():
        raise FileNotFoundError(f'{weights}: weights file not found')
    check_weights_suffix(backend, weights)
    from model.build import build_model, make_spec
    if backend == 'torch':
        from model.weights import load_weights
        from utils.runtimes.torch_runtime import TorchRuntime, fuse_conv_bn
        model = build_model(cfg, log=lambda *_: None)
        load_weights(model, weights, strict=True)
        return TorchRuntime(fuse_conv_bn(model.eval()))
    spec = spec or make_spec(cfg)
    if backend == 'onnx':
        from utils.runtimes.onnx_runtime import OnnxRuntime
        return OnnxRuntime(weights, spec, num_threads)
    if backend == 'opencv':
        from utils.runtimes.onnx_runtime import OpenCVRuntime
        return OpenCVRuntime(weights, spec)
    from utils.runtimes.ncnn_runtime import NcnnRuntime
    runtime = NcnnRuntime(weights, num_threads=num_threads or os.cpu_count() or 1)
    check_sidecar(weights, runtime.sidecar, spec)
    runtime.spec, runtime.name = spec, 'ncnn'
    return runtime
