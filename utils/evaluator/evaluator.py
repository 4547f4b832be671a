"""Score a model (or any backend's runtime) on a split with pycocotools.

    result = evaluate(model_or_runtime, cfg)        # the trainer hands in its EMA model; evaluation.py a runtime
    print(result.summary())

Steps: run the split through the network (batched), decode + NMS (utils.postprocess), map boxes back to original
pixels (utils.preprocess.boxes_to_original), build COCO ground truth from the Darknet labels and the real image
sizes, and let pycocotools' COCOeval compute the 12 COCO numbers (utils/evaluator/coco.py). From the same COCOeval
run come the per-class AP table, the precision-recall curve at IoU 0.5 and precision/recall/F1 at a chosen
confidence, so every number here agrees with the official COCO tool.

Two protocols. The default resizes each image as the .data file says (stretch or square letterbox) and keeps each
box's best class. `rect=True, multi_label=True` is Ultralytics' validation, under which LeYOLO's figures were
published: rectangular batches (utils/data/eval_data.py) and NMS that may keep a box once for each class above
`conf`.
docs/benchmarks.md compares the two on LeYOLO-Nano's released weights.

Category ids are the 0-based Darknet classes; image ids inside the evaluation are split indices.
"""
from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from utils.data.dataset import load_split
from utils.data.eval_data import EvalDataset, RectEvalDataset, collate_eval, image_sizes, plan_batches
from utils.errors import ConfigError
from utils.evaluator.coco import (
    IOU_FOR_PR,
    best_f1,
    coco_detections,
    coco_ground_truth,
    confusion_matrix,
    json_image_id,
    per_class_table,
    pooled_matches,
    precision_recall_f1,
    run_cocoeval,
    top_confusions,
)
from utils.postprocess import decode, nms
from utils.preprocess import boxes_to_original
from utils.runtimes.torch_runtime import TorchRuntime

COCO_STAT_NAMES = ('mAP@0.5:0.95', 'mAP@0.5', 'mAP@0.75', 'mAP small', 'mAP medium', 'mAP large',
                   'AR@1', 'AR@10', 'AR@100', 'AR small', 'AR medium', 'AR large')


@dataclass
class EvalResult:
    coco_stats: np.ndarray          # the 12 numbers of COCOeval.summarize(), in COCO_STAT_NAMES order
    class_names: tuple
    per_class: list                 # (class, name, gt boxes, detections, AP@0.5:0.95, AP@0.5) for classes with gt
    pr_conf: float                  # the confidence at which precision/recall/F1 are given
    precision: float                # all classes pooled, at IoU 0.5, detections scoring >= pr_conf
    recall: float
    f1: float
    best_f1_conf: float             # the confidence that maximises F1 (same pooling)
    best_f1: float
    recall_points: np.ndarray       # COCO's 101 recall points ...
    precision_curve: np.ndarray     # ... and the mean over classes of the interpolated precision at IoU 0.5
    confusion: np.ndarray           # (C+1, C+1) counts [predicted, true], last row/column = background
    num_images: int
    num_gt: int
    num_detections: int
    seconds: dict = field(default_factory=dict)   # wall time per stage
    coco_text: str = ''             # COCOeval.summarize()'s own printout

    @property
    def map50_95(self) -> float:
        return float(self.coco_stats[0])

    @property
    def map50(self) -> float:
        return float(self.coco_stats[1])

    def summary(self, per_class: bool = True) -> str:
        lines = [f'{self.num_images} images, {self.num_gt} ground-truth boxes, {self.num_detections} detections',
                 self.coco_text.rstrip()]
        if per_class:
            lines.append(f'{"class":>20} {"gt":>6} {"dets":>6} {"AP50-95":>8} {"AP50":>8}')
            for _, name, gt, dets, ap, ap50 in self.per_class:
                lines.append(f'{name[:20]:>20} {gt:>6} {dets:>6} {ap:8.3f} {ap50:8.3f}')
        lines.append(f'at IoU {IOU_FOR_PR}, all classes pooled: conf >= {self.pr_conf:g}: P {self.precision:.3f} '
                     f'R {self.recall:.3f} F1 {self.f1:.3f}; best F1 {self.best_f1:.3f} '
                     f'at conf {self.best_f1_conf:.3f}')
        confusions = top_confusions(self.confusion, self.class_names)
        if confusions:
            lines.append(f'most frequent confusions (conf >= {self.pr_conf:g}, IoU > {IOU_FOR_PR}): '
                         + ', '.join(confusions))
        lines.append(f'mAP@0.5:0.95 {self.map50_95:.4f}  mAP@0.5 {self.map50:.4f}  ('
                     + ', '.join(f'{k} {v:.2f} s' for k, v in self.seconds.items()) + ')')
        return '\n'.join(lines)


def as_runtime(model_or_runtime):
    """A Detector is wrapped so it is called like any backend; a runtime (utils/runtimes) is used as it is."""
    if isinstance(model_or_runtime, torch.nn.Module):
        return TorchRuntime(model_or_runtime)
    if not hasattr(model_or_runtime, 'spec'):
        raise TypeError(f'expected a Detector or a runtime from utils.runtimes.load_runtime, '
                        f'got {type(model_or_runtime).__name__}')
    return model_or_runtime


def check_rect(runtime, cfg) -> None:
    """Rectangular batches change the input shape from batch to batch: torch models only, square sizes only."""
    if getattr(runtime, 'name', None) != 'torch':
        raise ConfigError(f'rectangular batches change the input shape from batch to batch; the '
                          f'{getattr(runtime, "name", type(runtime).__name__)} backend runs a graph exported for '
                          f'{runtime.spec.input_width}x{runtime.spec.input_height} only: evaluate the .pth with the '
                          f'torch backend, or leave out --rect')
    if cfg.width != cfg.height:
        raise ConfigError(f'{cfg.where("width")}: rectangular batches scale the long side of every image to one '
                          f'size, so they need width = height (got {cfg.width}x{cfg.height})')


def rect_loader(runtime, split, cfg, batch_size: int, workers: int) -> torch.utils.data.DataLoader:
    plan = plan_batches(image_sizes(split.image_paths), cfg.width, max(runtime.spec.strides), batch_size)
    return torch.utils.data.DataLoader(RectEvalDataset(split, plan, cfg.width), num_workers=workers,
                                       batch_sampler=[indices for indices, _ in plan], collate_fn=collate_eval)


def predict_split(runtime, split, cfg, conf: float, iou: float, max_det: int, batch_size: int, workers: int,
                  progress: bool, seconds: dict, rect: bool = False, multi_label: bool = False) -> tuple[list, list]:
    """Detections in original pixels per image ((M, 6) [x1, y1, x2, y2, score, class]) and (width, height) per image."""
    if rect:
        loader = rect_loader(runtime, split, cfg, batch_size, workers)
    else:
        loader = torch.utils.data.DataLoader(EvalDataset(split, cfg), batch_size=batch_size, shuffle=False,
                                             num_workers=workers, collate_fn=collate_eval)
    detections, sizes = [None] * len(split), [None] * len(split)
    seconds.update(waiting_for_images=0.0, inference=0.0, postprocess=0.0)
    tick = time.perf_counter()
    for images, infos, indices in tqdm(loader, desc=f'evaluating {split.name}', disable=not progress,
                                       unit='batch', leave=False):
        start = time.perf_counter()
        seconds['waiting_for_images'] += start - tick
        outputs = runtime(images.numpy().astype(np.float32) / 255.0)
        middle = time.perf_counter()
        height, width = images.shape[-2:]
        spec = runtime.spec   # a rectangular batch decodes at its own input size
        if (width, height) != (spec.input_width, spec.input_height):
            spec = dataclasses.replace(spec, input_width=int(width), input_height=int(height))
        batch_detections = nms(*decode(outputs, spec), conf, iou, max_det, multi_label=multi_label)
        for dets, info, index in zip(batch_detections, infos, indices):
            detections[index] = np.concatenate((boxes_to_original(dets[:, :4], info), dets[:, 4:]), 1)
            sizes[index] = (info.orig_width, info.orig_height)
        tick = time.perf_counter()
        seconds['inference'] += middle - start
        seconds['postprocess'] += tick - middle
    return detections, sizes


def evaluate(model_or_runtime, cfg, conf: float = 0.001, iou: float = 0.6, max_det: int = 300, split: str = 'val',
             batch_size: int = 16, workers: int | None = None, pr_conf: float = 0.3, save_json=None,
             plots_dir=None, progress: bool = True, verbose_split: bool = False, rect: bool = False,
             multi_label: bool = False) -> EvalResult:
    """Evaluate on `split` of the .data config. `conf`/`iou`/`max_det`: NMS settings; `pr_conf`: the confidence
    at which precision/recall/F1 and the confusion matrix are given; `save_json`: write the COCO results file;
    `plots_dir`: write the PR curve and confusion matrix PNGs. `rect`: rectangular batches of `batch_size`
    (utils/data/eval_data.py; torch models only) instead of the .data file's resize; `multi_label`: a box may be kept
    once per class above `conf` (utils.postprocess.nms). Both together are Ultralytics' validation protocol."""
    runtime = as_runtime(model_or_runtime)
    if rect:
        check_rect(runtime, cfg)
    if runtime.spec.num_classes != cfg.classes:
        raise ConfigError(f'{cfg.where("classes")}: classes = {cfg.classes} but the model has '
                          f'{runtime.spec.num_classes} classes')
    seconds, start = {}, time.perf_counter()
    data = load_split(cfg, split, verbose=verbose_split)
    workers = cfg.workers if workers is None else workers
    detections, sizes = predict_split(runtime, data, cfg, conf, iou, max_det, batch_size, workers, progress, seconds,
                                       rect, multi_label)

    tick = time.perf_counter()
    gt = coco_ground_truth(data, sizes, cfg.classes)
    results = coco_detections(detections, list(range(len(data))))
    cocoeval, coco_text = run_cocoeval(gt, results)
    if cocoeval is not None:
        scores, hits, num_gt = pooled_matches(cocoeval)
        precision_at_iou = cocoeval.eval['precision'][0, :, :, 0, -1]   # (101 recall points, classes)
        valid = precision_at_iou > -1
        curve = np.where(valid, precision_at_iou, 0).sum(1) / np.maximum(valid.sum(1), 1)
        recall_points, stats = cocoeval.params.recThrs, np.array(cocoeval.stats)
    else:
        scores, hits, num_gt = np.zeros(0), np.zeros(0, bool), len(gt['annotations'])
        recall_points, curve, stats = np.linspace(0, 1, 101), np.zeros(101), np.zeros(12)
    p, r, f1 = precision_recall_f1(scores, hits, num_gt, pr_conf)
    top_f1, top_f1_conf = best_f1(scores, hits, num_gt)
    seconds['cocoeval'] = time.perf_counter() - tick
    seconds['total'] = time.perf_counter() - start

    result = EvalResult(coco_stats=stats, class_names=tuple(cfg.class_names),
                        per_class=per_class_table(cocoeval, gt, detections, tuple(cfg.class_names)),
                        pr_conf=pr_conf, precision=p, recall=r, f1=f1, best_f1_conf=top_f1_conf, best_f1=top_f1,
                        recall_points=np.asarray(recall_points), precision_curve=curve,
                        confusion=confusion_matrix(detections, gt, cfg.classes, pr_conf), num_images=len(data),
                        num_gt=len(gt['annotations']), num_detections=len(results), seconds=seconds,
                        coco_text=coco_text)
    if save_json is not None:
        save_json = Path(save_json)
        save_json.parent.mkdir(parents=True, exist_ok=True)
        save_json.write_text(json.dumps(coco_detections(detections, [json_image_id(p) for p in data.image_paths])))
    if plots_dir is not None:
        from utils.evaluator.plots import plot_confusion, plot_pr_curve  # matplotlib is only needed for plots
        plot_pr_curve(result, Path(plots_dir) / 'pr_curve.png')
        plot_confusion(result, Path(plots_dir) / 'confusion.png')
    return result
