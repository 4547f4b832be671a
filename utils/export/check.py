"""Checking an export: PyTorch and every exported backend on the same real image, compared output by output and
by their detections. Each backend runs through its runtime in utils/runtimes, as evaluation and test.py run it.
"""
from __future__ import annotations

import numpy as np

from utils.export.ncnn_convert import DEFAULT_CONF_THRESH, DEFAULT_NMS_IOU
from utils.postprocess import postprocess
from utils.runtimes.onnx_runtime import OnnxRuntime, OpenCVRuntime
from utils.runtimes.torch_runtime import TorchRuntime

# Allowed |diff| against PyTorch, relative to max(1, |PyTorch value|): absolute for the probabilities (0..1),
# relative for LeYOLO's box distances (up to reg_max - 1 = 15 grid cells), whose float32 rounding grows with them.
# ONNX backends compute the same fp32 graph; NCNN with fp32 weights and arithmetic lands in the same range (pnnx's
# default fp16 weights would not, see utils/export/ncnn_convert.py). Measured values: docs/benchmarks.md.
TOLERANCES = {'onnxruntime': 1e-4, 'opencv': 1e-4, 'ncnn': 1e-4}
BACKENDS = tuple(TOLERANCES)


def backend_runtime(backend: str, paths: dict, spec):
    """The runtime of utils/runtimes that runs `backend`'s exported file (NCNN on one thread, as deployed)."""
    if backend == 'onnxruntime':
        return OnnxRuntime(paths['onnx'], spec)
    if backend == 'opencv':
        return OpenCVRuntime(paths['onnx'], spec)
    from utils.runtimes.ncnn_runtime import NcnnRuntime  # the ncnn package is only needed for an NCNN export
    return NcnnRuntime(paths['param'], num_threads=1)


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
                 nms_iou: float = DEFAULT_NMS_IOU, backends=BACKENDS) -> CheckReport:
    """Run PyTorch and each exported backend on `batch_nchw` (1 image); compare outputs and detections.

    PyTorch runs the model as given (no BatchNorm folding): the reference is the model that was exported."""
    report = CheckReport()
    reference = TorchRuntime(model)(batch_nchw)
    reference_dets = detections(reference, model.spec, conf_thresh, nms_iou)
    report.num_reference_detections = len(reference_dets)
    report.detection_lines.append(f'{"pytorch":12s} {len(reference_dets)} detections at conf {conf_thresh}')
    for backend in backends:
        if backend == 'ncnn' and 'param' not in paths:
            continue
        try:
            outputs = backend_runtime(backend, paths, model.spec)(batch_nchw)
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
