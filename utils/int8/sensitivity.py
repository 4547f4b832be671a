"""Mixed precision chosen by measurement: which conv/fc layers stay fp32 within a size budget.

Noise of a layer: the layer alone is INT8 (with the scales calibration gave it, every other layer fp32), NCNN runs
the model on calibration images, and the squared difference of each model output from fp32, divided by that
output's variance, is averaged over the outputs. On the released Yolo-FastestV2 and LeYOLO-Nano these noises add
up: the all-INT8 model's noise is close to the sum of the single-layer noises (Yolo-FastestV2 3.9e-3 against
4.2e-3, LeYOLO-Nano 3.2e-2 against 4.1e-2), so the remaining noise of a mixed model is the sum over its INT8
layers. Choosing the layers to keep is then a knapsack: keeping a layer removes its noise and costs the bytes its
weights take beyond INT8. Layers are kept in order of noise removed per byte while the .bin stays within the
budget. The noise is not where the layer types put it: the stem and the first blocks' small layers carry most of
it (docs/benchmarks.md lists the measured order), the output convolutions little.
"""
from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

from utils.int8.calibrate import load_ncnn_net, run_blobs
from utils.int8.write import write_int8_model


def _align4(n: int) -> int:
    return (n + 3) // 4 * 4


def int8_weight_bytes(weight_count: int, rows: int) -> int:
    """Bytes of a quantized layer's weight part in the .bin: tag, int8 weights, weight scales, input scale."""
    return 4 + _align4(weight_count) + 4 * rows + 4


def kept_weight_bytes(weight_count: int, fp16: bool) -> int:
    """Bytes of the weight array of a layer left fp32: tag and float16 or float32 weights (its bias is the same
    either way)."""
    return 4 + (_align4(2 * weight_count) if fp16 else 4 * weight_count)


def fp32_bytes(model) -> int:
    """The model's .bin size with every weight array stored as float32 (what a size budget is a fraction of; the
    .bin's own size when it was written with fp32 weights, as utils/export writes it)."""
    return sum(4 * a.values.size + (4 if a.load_type == 0 else 0) for arrays in model.weights.values()
               for a in arrays)


def layer_noise(model, param_path, bin_path, scales: dict, inputs: list) -> dict:
    """Layer name -> output noise (see above) of the model with only that layer INT8, over `inputs` (CHW float32
    arrays prepared as at inference). `scales`: layer name -> LayerScales, every layer to measure."""
    fp32_net = load_ncnn_net(param_path, bin_path)
    outputs = model.output_blobs
    reference = [run_blobs(fp32_net, model.input_blob, outputs, chw) for chw in inputs]
    variance = {blob: sum(float(((r[blob] - r[blob].mean()) ** 2).sum()) for r in reference) for blob in outputs}
    noise = {}
    with tempfile.TemporaryDirectory(prefix='int8_sensitivity_') as folder:
        one_param, one_bin = Path(folder) / 'one.param', Path(folder) / 'one.bin'
        for name, layer_scales in scales.items():
            write_int8_model(model, {name: layer_scales}, one_param, one_bin)
            net = load_ncnn_net(one_param, one_bin, int8=True)
            squared = dict.fromkeys(outputs, 0.0)
            for chw, expected in zip(inputs, reference):
                got = run_blobs(net, model.input_blob, outputs, chw)
                for blob in outputs:
                    squared[blob] += float(((got[blob] - expected[blob]) ** 2).sum())
            # An output that never varies (a constant) has no scale to compare against: count its absolute error.
            noise[name] = float(np.mean([squared[b] / variance[b] if variance[b] > 0 else squared[b]
                                         for b in outputs]))
    return noise


def choose_fp32_layers(model, scales: dict, noise: dict, budget_bytes: int, fp16: bool) -> list:
    """Names of the layers to leave fp32: most noise removed per extra byte first, while the .bin with every layer
    in `scales` INT8 plus the kept layers' extra bytes stays within `budget_bytes`. A layer whose extra bytes do
    not fit is passed over and smaller ones after it are still tried."""
    extra = {}
    for name, layer_scales in scales.items():
        weights = model.weights[name][0]
        extra[name] = kept_weight_bytes(weights.values.size, fp16) - int8_weight_bytes(
            weights.values.size, len(layer_scales.weight_scales))
    all_int8_bytes = sum(len(a.raw) for arrays in model.weights.values() for a in arrays) - sum(
        len(model.weights[name][0].raw) - int8_weight_bytes(model.weights[name][0].values.size,
                                                            len(s.weight_scales)) for name, s in scales.items())
    size, kept = all_int8_bytes, []
    for name in sorted(scales, key=lambda n: -noise[n] / max(extra[n], 1)):
        if noise[name] > 0 and size + extra[name] <= budget_bytes:
            kept.append(name)
            size += extra[name]
    return kept
