"""Post-training INT8 quantization of an fp32 NCNN model, written in NCNN's own INT8 format.

    report = quantize_ncnn('m.param', 'm.bin', calib_images, width=352, height=352, letterbox=False,
                           out_param='m-int8.param', out_bin='m-int8.bin')
    print(report.summary())

Calibration images go through the deployment pre-processing (utils.preprocess.resize_image with the .data's
size and letterbox, BGR, /255): INT8 activation scales only fit inference inputs prepared the same way.
Convolution, ConvolutionDepthWise and InnerProduct layers are quantized (weights per output channel or group,
activations per layer, see utils/int8/calibrate.py). The model is mixed precision, chosen by measurement
(utils/int8/sensitivity.py): the layers whose INT8 version adds the most output noise per byte saved stay fp32
while the .bin stays within `size_budget` of fp32, their weights stored as float16 (computed in fp32). NCNN runs
a conv layer in fp32 when its .param line has no int8_scale_term, whatever the layers around it do. The output
is checked: the INT8 model is loaded by the ncnn runtime and compared with fp32 on a few calibration images, and
the numbers go into the report.
"""
from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from utils.int8.calibrate import (
    collect_activation_stats,
    load_calibration_inputs,
    load_ncnn_net,
    mse_thresholds,
    run_blobs,
    weight_scales,
)
from utils.int8.sensitivity import choose_fp32_layers, fp32_bytes, layer_noise
from utils.int8.write import QUANTIZABLE_TYPES, LayerScales, read_ncnn_model, write_int8_model
from utils.preprocess import PAD_VALUE

METHODS = ('kl', 'minmax', 'mse')
DEFAULT_SIZE_BUDGET = 0.30       # the INT8 .bin at most 30 % of the fp32 .bin


@dataclass
class LayerReport:
    name: str
    type: str
    quantized: bool
    input_blob: str
    input_absmax: float = 0.0
    input_threshold: float = 0.0
    input_scale: float = 0.0
    noise: float | None = None            # output noise with this layer alone INT8 (utils/int8/sensitivity.py)


@dataclass
class Int8Report:
    method: str
    calib_images_used: int
    calib_images_skipped: list            # paths that could not be read
    layers: list                          # LayerReport per Convolution / ConvolutionDepthWise / InnerProduct
    fp32_bytes: int
    int8_bytes: int
    bias_corrected: int = 0               # layers whose bias was corrected ('mse' with bias_correction)
    fp16_kept: bool = False               # the layers left fp32 store float16 weights
    # Checked on up to `check_images` calibration inputs, per output blob: max and mean |int8 - fp32|, fp32 range.
    output_max_abs_diff: dict = field(default_factory=dict)
    output_fp32_absmax: dict = field(default_factory=dict)
    output_mean_abs_diff: dict = field(default_factory=dict)

    @property
    def size_ratio(self) -> float:
        return self.int8_bytes / self.fp32_bytes

    def summary(self) -> str:
        quantized = sum(layer.quantized for layer in self.layers)
        lines = [f'INT8 ({self.method}): {quantized}/{len(self.layers)} conv/fc layers quantized '
                 f'({self.bias_corrected} with bias correction), '
                 f'calibrated on {self.calib_images_used} images ({len(self.calib_images_skipped)} unreadable '
                 f'skipped)',
                 f'  size: {self.int8_bytes / 1024:.1f} KiB vs fp32 {self.fp32_bytes / 1024:.1f} KiB '
                 f'({100 * self.size_ratio:.1f}%)']
        for blob, diff in self.output_max_abs_diff.items():
            lines.append(f'  output {blob}: |int8 - fp32| max {diff:.4g}, mean '
                         f'{self.output_mean_abs_diff[blob]:.4g} (fp32 max |x| {self.output_fp32_absmax[blob]:.4g})')
        measured = [layer for layer in self.layers if layer.noise is not None]
        if measured:
            left = sum(layer.noise for layer in measured if layer.quantized)
            lines.append(f'  output noise (sum of single-layer noises): all INT8 '
                         f'{sum(layer.noise for layer in measured):.3g}, this model {left:.3g}')
        kept = [layer for layer in self.layers if not layer.quantized]
        if kept:
            by_type = {t: sum(layer.type == t for layer in kept) for t in sorted({layer.type for layer in kept})}
            names = ', '.join(layer.name for layer in kept) if len(kept) <= 6 else \
                ', '.join(f'{count} {t}' for t, count in by_type.items())
            lines.append(f'  kept fp32{" (float16 weights)" if self.fp16_kept else ""}: {names}')
        return '\n'.join(lines)


def layer_weight_scales(layer, weights: np.ndarray) -> np.ndarray:
    rows = layer.int_param(7, 1) if layer.type == 'ConvolutionDepthWise' else layer.int_param(0, 0)
    kernel_w = layer.int_param(1, 0)
    kernel_3x3_s1 = (layer.type == 'Convolution' and kernel_w == 3 and layer.int_param(11, kernel_w) == 3
                     and layer.int_param(3, 1) == 1 and layer.int_param(13, layer.int_param(3, 1)) == 1
                     and layer.int_param(2, 1) == 1 and layer.int_param(12, layer.int_param(2, 1)) == 1)
    return weight_scales(layer.type, weights, rows, kernel_3x3_s1)


def end_layers(model) -> list:
    """Names of the conv/fc layers at either end of the network: those reading the input blob, and those whose
    output reaches a model output through weightless layers only (activations, reshapes, concats, softmax)."""
    producer = {top: layer for layer in model.layers for top in layer.tops}
    ends = [layer.name for layer in model.layers if layer.type in QUANTIZABLE_TYPES
            and model.input_blob in layer.bottoms]
    pending, seen = list(model.output_blobs), set()
    while pending:
        blob = pending.pop()
        layer = producer.get(blob)
        if layer is None or layer.name in seen:
            continue
        seen.add(layer.name)
        if layer.type in QUANTIZABLE_TYPES:
            ends.append(layer.name)
        elif not model.weights.get(layer.name):
            pending.extend(layer.bottoms)
    return list(dict.fromkeys(ends))


def quantize_ncnn(param_path, bin_path, calib_images: list, width: int, height: int, letterbox: bool,
                  out_param, out_bin, method: str = 'mse', keep_fp32: tuple = (), pad_value: int = PAD_VALUE,
                  check_images: int = 4, mse_images: int = 32, bias_correction: bool = False,
                  size_budget: float | None = DEFAULT_SIZE_BUDGET, fp16_kept: bool = True,
                  sensitivity_images: int = 32) -> Int8Report:
    """Calibrate the fp32 model `param_path/bin_path` on `calib_images` and write its INT8 version.

    method: 'kl'     NCNN's entropy calibration (what ncnn2table does by default);
            'minmax' scale = 127 / max|x|;
            'mse'    (default) KL's thresholds refined per layer: among the KL threshold and absmax * 2**(-k/4),
                     the one whose simulated INT8 layer output is closest to fp32 on the first `mse_images`
                     images.
    bias_correction: ('mse') subtract each layer's mean INT8 error per output channel, measured in the same
               simulation on fp32 inputs, from its bias. Off by default: measured to lower scores (fewer
               detections at conf 0.3 on coco128 val) on both released models.
    size_budget: the largest .bin, as a fraction of the model's .bin with fp32 weights (default 0.30). Every
               conv/fc layer is calibrated, each one's output noise is measured alone on `sensitivity_images`
               calibration images, and the layers removing the most noise per extra byte stay fp32 while the .bin
               fits (utils/int8/sensitivity.py). None: every layer INT8 except `keep_fp32` (no measurement).
               32 images rather than 16 chose better layers for LeYOLO-Nano (mAP@0.5 at the reference's thresholds
               0.09 points below fp32 against 0.56) and the same scores for Yolo-FastestV2 (docs/benchmarks.md).
    keep_fp32: names of Convolution/ConvolutionDepthWise/InnerProduct layers to leave in fp32 in any case.
    fp16_kept: store the weights of the conv/fc layers left fp32 as float16 (default): half their bytes, still
               computed in fp32, so the budget keeps about three times as many weights as with float32.
    A sidecar `X.json` beside `param_path` (utils/export/ncnn_convert.py) is copied beside `out_param`.
    Raises ValueError when no calibration image can be read, or a name in keep_fp32 is not such a layer.
    """
    if method not in METHODS:
        raise ValueError(f'unknown calibration method "{method}" (use one of {", ".join(METHODS)})')
    model = read_ncnn_model(param_path, bin_path)
    candidates = [layer for layer in model.layers if layer.type in QUANTIZABLE_TYPES and model.weights[layer.name]]
    unknown = set(keep_fp32) - {layer.name for layer in candidates}
    if unknown:
        raise ValueError(f'{param_path}: keep_fp32 names no conv/fc layer: {", ".join(sorted(unknown))}')
    to_quantize = [layer for layer in candidates if layer.name not in keep_fp32]

    inputs, skipped = [], []
    for path, chw in load_calibration_inputs(calib_images, width, height, letterbox, pad_value):
        (skipped.append(str(path)) if chw is None else inputs.append(chw))
    if not inputs:
        raise ValueError(f'none of the {len(calib_images)} calibration images could be read')

    w_scales = {layer.name: layer_weight_scales(layer, model.weights[layer.name][0].values) for layer in to_quantize}
    blobs = sorted({layer.bottoms[0] for layer in to_quantize})
    stats = collect_activation_stats(param_path, bin_path, model.input_blob, blobs, inputs,
                                     'minmax' if method == 'minmax' else 'kl') if blobs else {}
    corrected_bias = {}
    if method == 'mse' and blobs:
        stats, bias_shift = mse_thresholds(to_quantize, model.weights, w_scales, stats,
                                           load_ncnn_net(param_path, bin_path), model.input_blob, inputs[:mse_images])
        if bias_correction:
            corrected_bias = {name: model.weights[name][1].values - shift for name, shift in bias_shift.items()
                              if len(model.weights[name]) > 1}
    scales = {layer.name: LayerScales(w_scales[layer.name], stats[layer.bottoms[0]].scale,
                                      corrected_bias.get(layer.name)) for layer in to_quantize}
    noise = {}
    if size_budget is not None and scales:
        # Spread over the calibration set, like the calibration sample over the split.
        step = max(1, len(inputs) // sensitivity_images)
        noise = layer_noise(model, param_path, bin_path, scales, inputs[::step][:sensitivity_images])
        budget_bytes = int(size_budget * fp32_bytes(model))
        for name in choose_fp32_layers(model, scales, noise, budget_bytes, fp16_kept):
            del scales[name]
    Path(out_param).parent.mkdir(parents=True, exist_ok=True)
    write_int8_model(model, scales, out_param, out_bin, fp16_unquantized=fp16_kept)

    layer_reports = []
    for layer in candidates:
        s = stats.get(layer.bottoms[0]) if layer.name in scales else None
        layer_reports.append(LayerReport(layer.name, layer.type, s is not None, layer.bottoms[0],
                                         *((s.absmax, s.threshold, s.scale) if s else (0.0, 0.0, 0.0)),
                                         noise.get(layer.name)))
    report = Int8Report(method, len(inputs), skipped, layer_reports, Path(bin_path).stat().st_size,
                        Path(out_bin).stat().st_size, sum(name in scales for name in corrected_bias), fp16_kept)
    compare_outputs(report, model, (param_path, bin_path), (out_param, out_bin), inputs[:check_images])
    # The sidecar (input size, blob names, anchors) describes the INT8 model as well: give it one too.
    sidecar, out_sidecar = Path(param_path).with_suffix('.json'), Path(out_param).with_suffix('.json')
    if sidecar.is_file() and sidecar.resolve() != out_sidecar.resolve():
        shutil.copyfile(sidecar, out_sidecar)
    return report


def compare_outputs(report: Int8Report, model, fp32_files: tuple, int8_files: tuple, inputs: list) -> None:
    """Run fp32 and INT8 on the same inputs; record per output blob the worst |difference| and the fp32 range."""
    fp32_net, int8_net = load_ncnn_net(*fp32_files, int8=False), load_ncnn_net(*int8_files, int8=True)
    outputs = model.output_blobs
    for chw in inputs:
        reference = run_blobs(fp32_net, model.input_blob, outputs, chw)
        quantized = run_blobs(int8_net, model.input_blob, outputs, chw)
        for blob in outputs:
            diff = float(np.abs(reference[blob] - quantized[blob]).max())
            report.output_max_abs_diff[blob] = max(report.output_max_abs_diff.get(blob, 0.0), diff)
            mean = float(np.abs(reference[blob] - quantized[blob]).mean()) / len(inputs)
            report.output_mean_abs_diff[blob] = report.output_mean_abs_diff.get(blob, 0.0) + mean
            absmax = float(np.abs(reference[blob]).max())
            report.output_fp32_absmax[blob] = max(report.output_fp32_absmax.get(blob, 0.0), absmax)


def int8_paths(param_path) -> tuple:
    """Where the INT8 model of `X.param` goes: `X-int8.param` / `X-int8.bin` (and `X-int8.json`)."""
    stem = Path(param_path).with_suffix('')
    int8_stem = stem.with_name(stem.name + '-int8')
    return int8_stem.with_suffix('.param'), int8_stem.with_suffix('.bin')


def calibration_sample(image_paths: list, count: int) -> list:
    """`count` images spread evenly over the list (every k-th), so one folder or class does not dominate."""
    if count <= 0:
        raise ValueError(f'--calib-images must be positive, got {count}')
    step = max(1, len(image_paths) // count)
    return list(image_paths)[::step][:count]


def quantize_with_config(param_path, cfg, calib_images: int, method: str = 'mse', int8_all: bool = False,
                         log=print) -> Int8Report:
    """For pytorch2onnx.py --int8 --calib-images N: calibrate `X.param/X.bin` (fp32, from utils/export) on N images
    of the config's train split with its width, height and letterbox, write `X-int8.param/.bin/.json`. Mixed
    precision within the default size budget, or with `int8_all` every conv/fc layer INT8."""
    from utils.data.dataset import load_split
    if cfg.train is None:
        raise ValueError(f'{cfg.data_path}: INT8 calibration reads images of the "train" split, and this .data '
                         f'file has no "train" key')
    split = load_split(cfg, 'train', verbose=False)
    if not split.image_paths:
        raise ValueError(f'{cfg.where("train")}: the train split has no usable image to calibrate INT8 on')
    images = calibration_sample(split.image_paths, calib_images)
    if len(images) < calib_images:
        log(f'INT8: the train split has {len(split.image_paths)} images; calibrating on {len(images)}')
    out_param, out_bin = int8_paths(param_path)
    report = quantize_ncnn(param_path, Path(param_path).with_suffix('.bin'), images, cfg.width, cfg.height,
                           cfg.letterbox, out_param, out_bin, method=method,
                           size_budget=None if int8_all else DEFAULT_SIZE_BUDGET)
    log(report.summary())
    return report
