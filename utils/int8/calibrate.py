"""INT8 calibration for NCNN models: weight scales from the weights, activation scales from calibration images.

Weights: one scale per output channel (per group for ConvolutionDepthWise), `127 / max|w|`, as ncnn2table does.
A 3x3 stride-1 dilation-1 Convolution gets `31 / max|w|` (6 bits) because NCNN's INT8 Winograd F(4,3) kernel,
which it picks for those layers, needs the headroom.

Activations: the input blob of every quantized layer is run through fp32 NCNN on the calibration images. The
'kl' method is NCNN's entropy calibration: a 2048-bin histogram of |x| over [0, absmax] (exact zeros left out,
so post-ReLU blobs are not dominated by zeros); for every candidate threshold bin t in 128..2047 the clipped
distribution P (bins beyond t added into bin t-1) is compared with Q, the first t bins merged into 128 levels and
spread back; the t with the least KL(P||Q) wins and `scale = 127 / ((t + 0.5) * absmax / 2048)`.
The 'minmax' method takes `scale = 127 / absmax`.
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from utils.errors import NcnnModelError
from utils.preprocess import PAD_VALUE, resize_image, to_input_tensor

HISTOGRAM_BINS = 2048
TARGET_BINS = 128
KL_EPS = 1e-4           # NCNN adds this to every bin of both distributions so log() never sees 0


def weight_scales(layer_type: str, weights: np.ndarray, num_rows: int, kernel_3x3_s1: bool = False) -> np.ndarray:
    """Per-row scales; rows are output channels (Convolution, InnerProduct) or groups (ConvolutionDepthWise)."""
    absmax = np.abs(weights.reshape(num_rows, -1)).max(axis=1)
    levels = 31.0 if (layer_type == 'Convolution' and kernel_3x3_s1) else 127.0
    # An all-zero channel would give an infinite scale; any finite scale quantizes it to zeros.
    return np.where(absmax > 0, levels / np.maximum(absmax, 1e-30), 1.0).astype(np.float32)


def load_calibration_inputs(image_paths: list, width: int, height: int, letterbox: bool, pad_value: int = PAD_VALUE):
    """Yield (path, float32 CHW BGR 0..1) through the deployment pre-processing; unreadable paths are yielded
    as (path, None) so the caller can count them."""
    for path in image_paths:
        image = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if image is None:
            yield path, None
            continue
        resized, _ = resize_image(image, width, height, letterbox, pad_value)
        yield path, to_input_tensor([resized])[0]


def load_ncnn_net(param_path, bin_path, int8: bool = False):
    """An ncnn.Net with fp16 storage and arithmetic off, so statistics and fp32-vs-INT8 comparisons see true
    fp32 numbers, and INT8 inference on or off."""
    import ncnn
    net = ncnn.Net()
    net.opt.use_fp16_packed = net.opt.use_fp16_storage = net.opt.use_fp16_arithmetic = False
    net.opt.use_int8_inference = int8
    net.opt.num_threads = 1
    if net.load_param(str(param_path)) != 0 or net.load_model(str(bin_path)) != 0:
        raise NcnnModelError(f'{param_path}: NCNN could not load it with {bin_path}')
    return net


def run_blobs(net, input_blob: str, blobs: list, chw: np.ndarray) -> dict:
    """Run one input through `net` and return the named blobs as float32 numpy arrays."""
    import ncnn
    extractor = net.create_extractor()
    extractor.set_light_mode(False)       # keep every intermediate blob, so blobs can be extracted in any order
    pixels = np.ascontiguousarray(chw, dtype=np.float32)   # ncnn.Mat wraps this memory: keep it alive here
    extractor.input(input_blob, ncnn.Mat(pixels))
    out = {}
    for blob in blobs:
        ret, mat = extractor.extract(blob)
        if ret != 0:
            raise RuntimeError(f'ncnn could not extract blob "{blob}" (error {ret})')
        out[blob] = np.array(mat)
    return out


@dataclass
class BlobStats:
    absmax: float
    threshold: float
    scale: float          # 127 / threshold: what NCNN multiplies the activations by before rounding


def collect_activation_stats(param_path, bin_path, input_blob: str, blobs: list, inputs: list,
                             method: str = 'kl') -> dict:
    """Blob name -> BlobStats over `inputs` (float32 CHW arrays). Two passes, like ncnn2table: the first finds
    each blob's absmax (which fixes the histogram range), the second fills the histograms."""
    if method not in ('kl', 'minmax'):
        raise ValueError(f'unknown calibration method "{method}" (use "kl" or "minmax")')
    if not inputs:
        raise ValueError('no calibration inputs')
    net = load_ncnn_net(param_path, bin_path)
    absmax = {blob: 0.0 for blob in blobs}
    for chw in inputs:
        for blob, values in run_blobs(net, input_blob, blobs, chw).items():
            absmax[blob] = max(absmax[blob], float(np.abs(values).max()))
    if method == 'minmax':
        return {b: BlobStats(a, a, 127.0 / a if a > 0 else 1.0) for b, a in absmax.items()}

    histograms = {blob: np.zeros(HISTOGRAM_BINS, np.int64) for blob in blobs}
    for chw in inputs:
        for blob, values in run_blobs(net, input_blob, blobs, chw).items():
            if absmax[blob] == 0:
                continue
            magnitudes = np.abs(values[values != 0]).astype(np.float32)
            index = np.minimum((magnitudes / np.float32(absmax[blob]) * HISTOGRAM_BINS).astype(np.int64),
                               HISTOGRAM_BINS - 1)
            histograms[blob] += np.bincount(index, minlength=HISTOGRAM_BINS)
    stats = {}
    for blob in blobs:
        if absmax[blob] == 0 or histograms[blob].sum() == 0:
            stats[blob] = BlobStats(0.0, 0.0, 1.0)      # a blob that is always zero: any scale is exact
            continue
        best_bin = kl_threshold_bin(histograms[blob])
        threshold = (best_bin + 0.5) * absmax[blob] / HISTOGRAM_BINS
        stats[blob] = BlobStats(absmax[blob], threshold, 127.0 / threshold)
    return stats


def kl_threshold_bin(histogram: np.ndarray) -> int:
    """The threshold bin t (TARGET_BINS <= t < len(histogram)) minimising KL(P_t || Q_t), NCNN's definition.

    Candidate thresholds are evaluated a block at a time as rows of 2-D arrays. Q is built from a piecewise-
    linear cumulative histogram, which is what NCNN's partial-bin bookkeeping amounts to: a level spanning bins
    [start, end) gets the histogram mass in that span (fractions of the edge bins included) divided by its
    width, and spreading back gives each source bin the level densities times its overlap with each level.
    """
    h = histogram.astype(np.float64) / histogram.sum()
    cum_h = np.concatenate([[0.0], np.cumsum(h)])                   # cum_h[k] = mass of bins [0, k)
    kl = np.concatenate([_kl_block(h, cum_h, np.arange(first, min(first + 128, len(h))))
                         for first in range(TARGET_BINS, len(h), 128)])
    return int(TARGET_BINS + np.argmin(kl))


def _kl_block(h: np.ndarray, cum_h: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """KL(P_t || Q_t) for each t in `thresholds` (ascending); only bins below the largest t are touched."""
    bins = int(thresholds[-1])
    rows = np.arange(len(thresholds))[:, None]
    width = (thresholds / TARGET_BINS)[:, None]                      # source bins per level, >= 1

    def mass_below(x):                                               # histogram mass in [0, x), x < len(h)
        k = np.floor(x).astype(np.int64)
        return cum_h[k] + (x - k) * h[np.minimum(k, len(h) - 1)]

    edges = width * np.arange(TARGET_BINS + 1)[None, :]              # (T, 129) level edges, in bins
    level_mass = np.diff(mass_below(edges), axis=1)                  # (T, 128)
    level_density = level_mass / width
    cum_level = np.concatenate([np.zeros((len(thresholds), 1)), np.cumsum(level_mass, axis=1)], axis=1)

    def expanded_below(x):                                           # integral of the level density on [0, x)
        u = x / width
        j = np.minimum(np.floor(u).astype(np.int64), TARGET_BINS)
        return cum_level[rows, j] + (u - j) * width * level_density[rows, np.minimum(j, TARGET_BINS - 1)]

    k = np.arange(bins, dtype=np.float64)[None, :]
    t = thresholds[:, None]
    expand = KL_EPS + expanded_below(np.minimum(k + 1, t)) - expanded_below(np.minimum(k, t))
    clip = KL_EPS + np.broadcast_to(h[:bins], (len(thresholds), bins)).copy()
    clip[rows[:, 0], thresholds - 1] += 1.0 - cum_h[thresholds]      # mass at or beyond bin t joins bin t-1
    return np.where(k < t, clip * np.log(clip / expand), 0.0).sum(axis=1)


# ---------------------------------------------------------------------------------------------------------------
# 'mse': per layer, the activation threshold whose INT8 output is closest to fp32.
#
# KL picks a threshold from the activation histogram alone. On Yolo-FastestV2 it clips harder than the layers
# can take: with every layer INT8 it loses more mAP than plain absmax does. The 'mse' method simulates
# each quantized layer exactly as NCNN computes it (int8 input, int8 weights, integer accumulation, dequantize,
# bias, fused activation) in PyTorch on the fp32 input blobs of the calibration images, for candidate thresholds
# from absmax down to absmax/16 plus the KL threshold, and keeps the one with the least squared error of the
# layer's own output. The same simulation measures each layer's mean error per output channel before its
# activation at the chosen threshold: the bias shift that quantization causes, which utils/int8/quantize.py
# subtracts from the bias (bias correction).

MSE_CANDIDATES = 16          # absmax * 2**(-k/4), k = 0..15


def round_half_away(x):
    """C's round(), which NCNN uses: halves go away from zero (numpy and torch round halves to even)."""
    import torch
    return torch.sign(x) * torch.floor(torch.abs(x) + 0.5)


def _activation(kind: int, params: list):
    import torch
    import torch.nn.functional as F
    if kind == 1:
        return torch.relu
    if kind == 2:
        return lambda y: F.leaky_relu(y, params[0] if params else 0.0)
    if kind == 3:
        return lambda y: torch.clamp(y, params[0], params[1])
    if kind == 4:
        return torch.sigmoid
    return lambda y: y            # none, or one we do not simulate: compare before the activation


def layer_activation(layer):
    """The activation NCNN fuses into a conv/fc layer (key 9, parameters in key 10) as a torch function."""
    act_params = [float(v) for v in layer.params.get(-23310, '0').split(',')[1:]]
    return _activation(layer.int_param(9, 0), act_params)


def layer_function(layer, weights: np.ndarray, bias, activate: bool = True):
    """A torch function (C, H, W) -> output computing `layer` with the given (possibly fake-quantized) weights,
    with or without its fused activation; None for layouts this simulator does not cover (the caller then keeps
    the KL threshold)."""
    import torch
    import torch.nn.functional as F
    p = layer.int_param
    activation = layer_activation(layer) if activate else (lambda y: y)
    bias_t = None if bias is None else torch.tensor(bias)
    if layer.type == 'InnerProduct':
        w = torch.tensor(weights.reshape(p(0, 0), -1))
        return lambda x: activation(F.linear(x.reshape(1, -1), w, bias_t))
    kw = p(1, 0)
    kh = p(11, kw)
    dw, sw = p(2, 1), p(3, 1)
    dh, sh = p(12, dw), p(13, sw)
    left = p(4, 0)
    top, right = p(14, left), p(15, left)
    bottom = p(16, top)
    if min(left, top, right, bottom) < 0 or float(layer.params.get(18, 0)) != 0:
        return None               # 'SAME' padding modes and non-zero pad values are not simulated
    groups = p(7, 1) if layer.type == 'ConvolutionDepthWise' else 1
    num_output = p(0, 0)
    w = torch.tensor(weights.reshape(num_output, -1, kh, kw))

    def run(x):
        x = F.pad(x[None], (left, right, top, bottom))
        return activation(F.conv2d(x, w, bias_t, (sh, sw), 0, (dh, dw), groups))[0]
    return run


def _channel_means(y):
    """Mean over everything but the channel axis: (C, H, W) -> (C,), InnerProduct's (1, N) -> (N,)."""
    return y.reshape(y.shape[0], -1).mean(1).numpy() if y.dim() == 3 else y.reshape(-1).numpy()


def mse_thresholds(layers: list, weights: dict, weight_scales_by_layer: dict, stats: dict, net, input_blob: str,
                   inputs: list) -> tuple:
    """Search each blob's threshold (see above) and measure each layer's systematic error.

    Returns (blob name -> BlobStats with the threshold minimising the summed output error of the layers reading
    it, layer name -> per-output-channel mean of (INT8 - fp32) before the activation at that threshold). The
    second is the bias shift quantization causes; subtracting it from the bias ("bias correction", Nagel et al.
    2019) removes the part of the error that does not average out.
    """
    import torch

    from utils.int8.write import quantize_to_int8
    torch.set_num_threads(1)
    plans = []        # (layer, fp32 function, fake-quantized-weight function, activation, candidate thresholds)
    for layer in layers:
        s = stats[layer.bottoms[0]]
        arrays = weights[layer.name]
        bias = arrays[1].values if len(arrays) > 1 else None
        w_scales = weight_scales_by_layer[layer.name]
        w_fake = quantize_to_int8(arrays[0].values, w_scales).astype(np.float32).reshape(len(w_scales), -1) \
            / w_scales[:, None]
        exact = layer_function(layer, arrays[0].values, bias, activate=False)
        fake = layer_function(layer, w_fake.reshape(-1), bias, activate=False)
        if exact is None or s.absmax == 0:
            continue
        candidates = sorted({s.threshold, *(s.absmax * 2.0 ** (-k / 4) for k in range(MSE_CANDIDATES))})
        plans.append((layer, exact, fake, layer_activation(layer), np.array(candidates)))
    errors = {plan[0].name: np.zeros(len(plan[-1])) for plan in plans}
    shifts = {plan[0].name: [0.0] * len(plan[-1]) for plan in plans}
    blobs = sorted({plan[0].bottoms[0] for plan in plans})
    with torch.no_grad():
        for chw in inputs:
            values = run_blobs(net, input_blob, blobs, chw)
            for layer, exact, fake, activation, candidates in plans:
                x = torch.from_numpy(values[layer.bottoms[0]])
                reference_pre = exact(x)
                reference = activation(reference_pre)
                for i, threshold in enumerate(candidates):
                    scale = 127.0 / threshold
                    y_pre = fake(torch.clamp(round_half_away(x * scale), -127, 127) / scale)
                    errors[layer.name][i] += float(((activation(y_pre) - reference) ** 2).sum())
                    shifts[layer.name][i] = shifts[layer.name][i] + _channel_means(y_pre - reference_pre) / len(inputs)
    # Layers sharing an input blob share its scale: add their errors up.
    by_blob = {}
    for layer, *_, candidates in plans:
        total, _ = by_blob.get(layer.bottoms[0], (0, candidates))
        by_blob[layer.bottoms[0]] = (total + errors[layer.name], candidates)
    chosen, best = dict(stats), {}
    for blob, (total, candidates) in by_blob.items():
        best[blob] = int(np.argmin(total))
        threshold = float(candidates[best[blob]])
        chosen[blob] = BlobStats(stats[blob].absmax, threshold, 127.0 / threshold)
    bias_shift = {layer.name: np.asarray(shifts[layer.name][best[layer.bottoms[0]]], np.float32)
                  for layer, *_ in plans}
    return chosen, bias_shift
