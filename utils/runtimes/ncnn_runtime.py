"""Run an exported NCNN model (.param/.bin plus the sidecar .json) from Python, like every other backend.

A runtime is called on a float32 NCHW BGR 0..1 batch and returns one NHWC numpy array per output scale, in
stride order: the deployment layout of docs/architecture.md. The blob names come from the sidecar `X.json`
(utils/runtimes/sidecar.py) beside `X.param`, so a model whose blobs are named differently still runs.

NCNN works on one image at a time and drops the batch axis: an NHWC output (1, H, W, C) comes back as a Mat with
c=H, h=W, w=C, which numpy sees as (H, W, C). We stack the images back into (N, H, W, C).

Layer hint: the export marks the stem convolution "no im2col + GEMM" (utils/ncnn_param.py), which runs NCNN's
direct kernel: faster on one thread, but that kernel uses one thread only, while the GEMM path it replaces splits
across threads. So with num_threads > 1 the runtime loads the .param with the hint cleared; outputs are the same
either way.
"""
from __future__ import annotations

from pathlib import Path

import ncnn
import numpy as np

from utils.errors import NcnnModelError
from utils.ncnn_param import clear_hint, param_text, read_param
from utils.runtimes.sidecar import read_sidecar, sidecar_path


def param_text_without_hints(param_path) -> str:
    """The .param at `param_path` with the no-GEMM hint cleared on every layer."""
    layers, blob_count = read_param(param_path)
    for layer in layers:
        clear_hint(layer)
    return param_text(layers, blob_count)


class NcnnRuntime:
    """`NcnnRuntime('model.param')(batch_nchw)` -> list of (N, H, W, C) float32 arrays, one per stride.

    fp16=False (the default) keeps NCNN in fp32 storage and arithmetic so its outputs can be compared with
    PyTorch's; fp16=True lets NCNN use half precision where the CPU supports it (faster on ARM, ~1e-3 off).
    blobs=(input_name, [output_names]) runs a model that has no sidecar (e.g. a third-party .param).
    """

    def __init__(self, param_path, num_threads: int = 1, fp16: bool = False, blobs: tuple | None = None):
        param_path = Path(param_path)
        bin_path = param_path.with_suffix('.bin')
        for path in (param_path, bin_path):
            if not path.is_file():
                raise FileNotFoundError(f'{path}: NCNN model file not found')
        if blobs is None:
            self.sidecar = read_sidecar(param_path)
            blobs = (self.sidecar['input_blob'], self.sidecar['output_blobs'])
        else:
            self.sidecar = None
        self.input_blob, self.output_blobs = blobs[0], list(blobs[1])
        self.num_threads = num_threads
        self.net = ncnn.Net()
        self.net.opt.num_threads = num_threads
        self.net.opt.use_fp16_packed = fp16
        self.net.opt.use_fp16_storage = fp16
        self.net.opt.use_fp16_arithmetic = fp16
        # load_param/load_model return non-zero on failure instead of raising.
        if num_threads > 1:
            status = self.net.load_param_mem(param_text_without_hints(param_path))
        else:
            status = self.net.load_param(str(param_path))
        if status != 0:
            raise NcnnModelError(f'{param_path}: NCNN could not parse this .param file')
        if self.net.load_model(str(bin_path)) != 0:
            raise NcnnModelError(f'{bin_path}: NCNN could not read the weights (does it match {param_path.name}?)')
        blob_names = {blob.name for blob in self.net.blobs()}
        missing = [name for name in [self.input_blob] + self.output_blobs if name not in blob_names]
        if missing:
            source = 'the blobs argument' if self.sidecar is None else str(sidecar_path(param_path))
            raise NcnnModelError(f'{source}: blobs {missing} are not in {param_path}')

    def __call__(self, batch_nchw: np.ndarray) -> list[np.ndarray]:
        batch_nchw = np.asarray(batch_nchw)
        if batch_nchw.ndim != 4 or batch_nchw.shape[1] != 3:
            raise ValueError(f'expected a float32 NCHW batch with 3 channels, got shape {batch_nchw.shape}')
        per_image = [self.run_one(image) for image in batch_nchw]
        return [np.stack([outputs[i] for outputs in per_image]) for i in range(len(self.output_blobs))]

    def run_one(self, image_chw: np.ndarray) -> list[np.ndarray]:
        """One CHW float32 image -> one (H, W, C) array per output blob."""
        # ncnn.Mat(array) wraps the array's memory without copying: `pixels` must stay alive until extraction ends.
        pixels = np.ascontiguousarray(image_chw, dtype=np.float32)
        with self.net.create_extractor() as extractor:
            extractor.input(self.input_blob, ncnn.Mat(pixels))
            outputs = []
            for name in self.output_blobs:
                status, mat = extractor.extract(name)
                if status != 0:
                    raise RuntimeError(f'NCNN failed to extract blob "{name}" (status {status})')
                outputs.append(np.array(mat, dtype=np.float32))   # np.array copies out of NCNN's memory
        del pixels
        return outputs
