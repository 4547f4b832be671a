"""Score a model (or any backend's runtime) on a split with pycocotools.

    result = evaluate(model_or_runtime, cfg)        # the trainer hands in its EMA model; evaluation.py a runtime
    print(result.summary())

Steps: run the split through the network (utils.data.dataset.EvalDataset, batched), decode + NMS (utils.postprocess),
map boxes back to original pixels (utils.preprocess.boxes_to_original), build COCO ground truth from the Darknet
labels and the real image sizes, and let pycocotools' COCOeval compute the 12 COCO numbers. From the same COCOeval
run come the per-class AP table, the precision-recall curve at IoU 0.5 and precision/recall/F1 at a chosen
confidence, so every number here agrees with the official COCO tool.

Two protocols. The default resizes each image as the .data file says (stretch or square letterbox) and keeps each
box's best class. `rect=True, multi_label=True` is Ultralytics' validation, under which LeYOLO's figures were
published: rectangular batches (utils/data/rect_batches.py) and NMS that may keep a box once for each class above `conf`.
Measured, LeYOLONano.pt on coco128 val2017 at 320, conf 0.001, IoU 0.7, mAP@0.5:0.95 / mAP@0.5: square and best
class 0.3288 / 0.4519; square and multi-label 0.3401 / 0.4680; rect batch 32 and multi-label 0.3421 / 0.4673
(Ultralytics: 0.3409 / 0.4677 through pycocotools). Multi-label NMS is most of the difference.

Category ids are the 0-based Darknet classes; image ids inside the evaluation are split indices.
"""
from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from tqdm import tqdm

from utils.boxes import box_iou
from utils.data.dataset import EvalDataset, collate_eval, load_split
from utils.data.rect_batches import RectEvalDataset, image_sizes, plan_batches
from utils.postprocess import decode, nms
from utils.preprocess import boxes_to_original
from utils.runtimes.backends import TorchRuntime

COCO_STAT_NAMES = ('mAP@0.5:0.95', 'mAP@0.5', 'mAP@0.75', 'mAP small', 'mAP medium', 'mAP large',
                   'AR@1', 'AR@10', 'AR@100', 'AR small', 'AR medium', 'AR large')
IOU_FOR_PR = 0.5   # the precision/recall/F1 figures, the PR curve and the confusion matrix use this IoU


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
                     f'R {self.recall:.3f} F1 {self.f1:.3f}; best F1 {self.best_f1:.3f} at conf {self.best_f1_conf:.3f}')
        confusions = top_confusions(self.confusion, self.class_names)
        if confusions:
            lines.append(f'most frequent confusions (conf >= {self.pr_conf:g}, IoU > {IOU_FOR_PR}): ' + ', '.join(confusions))
        lines.append(f'mAP@0.5:0.95 {self.map50_95:.4f}  mAP@0.5 {self.map50:.4f}  ('
                     + ', '.join(f'{k} {v:.2f} s' for k, v in self.seconds.items()) + ')')
        return '\n'.join(lines)


def as_runtime(model_or_runtime):
    """A Detector is wrapped so it is called like any backend; a runtime (utils.runtimes.backends) is used as it is."""
    if isinstance(model_or_runtime, torch.nn.Module):
        return TorchRuntime(model_or_runtime)
    if not hasattr(model_or_runtime, 'spec'):
        raise TypeError(f'expected a Detector or a runtime from utils.runtimes.backends.load_runtime, '
                        f'got {type(model_or_runtime).__name__}')
    return model_or_runtime


def check_rect(runtime, cfg) -> None:
    """Rectangular batches change the input shape from batch to batch: torch models only, square sizes only."""
    if getattr(runtime, 'name', None) != 'torch':
        raise ValueError(f'rectangular batches change the input shape from batch to batch; the '
                         f'{getattr(runtime, "name", type(runtime).__name__)} backend runs a graph exported for '
                         f'{runtime.spec.input_width}x{runtime.spec.input_height} only: evaluate the .pth with the '
                         f'torch backend, or leave out --rect')
    if cfg.width != cfg.height:
        raise ValueError(f'{cfg.where("width")}: rectangular batches scale the long side of every image to one '
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


def coco_ground_truth(split, sizes: list, num_classes: int) -> dict:
    """COCO-format ground truth from normalised Darknet labels and each image's real size in pixels."""
    images, annotations = [], []
    for index, (labels, (width, height)) in enumerate(zip(split.labels, sizes)):
        images.append({'id': index, 'file_name': str(split.image_paths[index]), 'width': width, 'height': height})
        for cls, cx, cy, w, h in np.asarray(labels, dtype=np.float64).reshape(-1, 5):
            box_w, box_h = w * width, h * height
            annotations.append({'id': len(annotations) + 1,   # COCOeval treats id 0 as "unmatched"
                                'image_id': index, 'category_id': int(cls), 'iscrowd': 0, 'area': box_w * box_h,
                                'bbox': [(cx - w / 2) * width, (cy - h / 2) * height, box_w, box_h]})
    return {'images': images, 'annotations': annotations,
            'categories': [{'id': c, 'name': str(c)} for c in range(num_classes)]}


def coco_detections(detections: list, image_ids: list) -> list:
    """(M, 6) arrays per image -> COCO results: bbox [x, y, w, h] in original pixels, category = 0-based class."""
    results = []
    for image_id, dets in zip(image_ids, detections):
        for x1, y1, x2, y2, score, cls in dets.tolist():
            results.append({'image_id': image_id, 'category_id': int(cls), 'score': round(score, 5),
                            'bbox': [round(x1, 3), round(y1, 3), round(x2 - x1, 3), round(y2 - y1, 3)]})
    return results


def json_image_id(path: Path):
    """The file stem, as an int when it is all digits (so COCO's own annotation files match)."""
    stem = Path(path).stem
    return int(stem) if stem.isdigit() else stem


def run_cocoeval(gt: dict, results: list) -> tuple[COCOeval | None, str]:
    quiet = io.StringIO()
    with contextlib.redirect_stdout(quiet):   # pycocotools prints progress lines we do not want
        coco_gt = COCO()
        coco_gt.dataset = gt
        coco_gt.createIndex()
        if not results or not gt['annotations']:
            return None, 'no detections or no ground truth: every COCO number is 0\n'
        cocoeval = COCOeval(coco_gt, coco_gt.loadRes(results), 'bbox')
        cocoeval.evaluate()
        cocoeval.accumulate()
    text = io.StringIO()
    with contextlib.redirect_stdout(text):
        cocoeval.summarize()
    return cocoeval, text.getvalue()


def pooled_matches(cocoeval: COCOeval) -> tuple[np.ndarray, np.ndarray, int]:
    """From COCOeval's own matching at IoU 0.5 (area 'all', 100 detections per image and class): scores and
    true-positive flags of every non-ignored detection, and the number of non-ignored ground-truth boxes."""
    params = cocoeval.params
    t = int(np.argmin(np.abs(params.iouThrs - IOU_FOR_PR)))
    per_area = len(params.imgIds)
    scores, hits, num_gt = [], [], 0
    for k in range(len(params.catIds)):
        for entry in cocoeval.evalImgs[k * len(params.areaRng) * per_area:][:per_area]:   # area 'all' comes first
            if entry is None:
                continue
            keep = ~np.asarray(entry['dtIgnore'][t], dtype=bool).reshape(-1)
            scores.append(np.asarray(entry['dtScores'])[keep])
            hits.append(np.asarray(entry['dtMatches'][t])[keep] > 0)
            num_gt += int((np.asarray(entry['gtIgnore']) == 0).sum())
    if not scores:
        return np.zeros(0), np.zeros(0, bool), num_gt
    return np.concatenate(scores), np.concatenate(hits), num_gt


def precision_recall_f1(scores: np.ndarray, hits: np.ndarray, num_gt: int, conf: float) -> tuple[float, float, float]:
    chosen = scores >= conf
    tp, fp = int(hits[chosen].sum()), int((~hits[chosen]).sum())
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / num_gt if num_gt else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return precision, recall, f1


def best_f1(scores: np.ndarray, hits: np.ndarray, num_gt: int) -> tuple[float, float]:
    """(F1, confidence) maximising F1 over every threshold the detections offer."""
    if not len(scores) or not num_gt:
        return 0.0, 0.0
    order = np.argsort(-scores, kind='stable')
    tp = np.cumsum(hits[order])
    f1 = 2 * tp / (np.arange(1, len(order) + 1) + num_gt)   # 2PR/(P+R) = 2TP / (detections + ground truth)
    best = int(np.argmax(f1))
    return float(f1[best]), float(scores[order][best])


def confusion_matrix(detections: list, gt: dict, num_classes: int, conf: float) -> np.ndarray:
    """(C+1, C+1) counts [predicted class, true class]; index C is background (a missed box or a false alarm).
    Pairs need IoU > 0.5 and are made greedily by IoU: first between boxes of the same class (the true positives),
    then among the boxes left over regardless of class (the confusions)."""
    matrix = np.zeros((num_classes + 1, num_classes + 1), dtype=np.int64)
    gt_by_image = {}
    for ann in gt['annotations']:
        x, y, w, h = ann['bbox']
        gt_by_image.setdefault(ann['image_id'], []).append([x, y, x + w, y + h, ann['category_id']])
    for image_id, dets in enumerate(detections):
        dets = dets[dets[:, 4] >= conf]
        truth = np.array(gt_by_image.get(image_id, []), dtype=np.float64).reshape(-1, 5)
        ious = box_iou(dets[:, None, :4].astype(np.float64), truth[None, :, :4])
        same_class = dets[:, 5, None].astype(int) == truth[None, :, 4].astype(int)
        used_det, used_gt = set(), set()
        for allowed in (same_class, np.ones_like(same_class)):
            pairs = np.argwhere((ious > IOU_FOR_PR) & allowed)
            for d, g in pairs[np.argsort(-ious[pairs[:, 0], pairs[:, 1]], kind='stable')]:
                if d not in used_det and g not in used_gt:
                    used_det.add(d)
                    used_gt.add(g)
                    matrix[int(dets[d, 5]), int(truth[g, 4])] += 1
        for d in set(range(len(dets))) - used_det:
            matrix[int(dets[d, 5]), num_classes] += 1
        for g in set(range(len(truth))) - used_gt:
            matrix[num_classes, int(truth[g, 4])] += 1
    return matrix


def top_confusions(confusion: np.ndarray, class_names: tuple, count: int = 5) -> list[str]:
    """'true -> predicted xN' for the most frequent pairs of different classes."""
    num_classes = len(confusion) - 1
    off_diagonal = confusion[:num_classes, :num_classes].copy()
    np.fill_diagonal(off_diagonal, 0)
    pairs = np.argwhere(off_diagonal > 0)
    pairs = pairs[np.argsort(-off_diagonal[pairs[:, 0], pairs[:, 1]], kind='stable')][:count]
    name = lambda c: class_names[c] if c < len(class_names) else str(c)
    return [f'{name(true)} -> {name(pred)} x{off_diagonal[pred, true]}' for pred, true in pairs]


def per_class_table(cocoeval: COCOeval | None, gt: dict, detections: list, class_names: tuple) -> list:
    gt_counts = np.bincount([a['category_id'] for a in gt['annotations']], minlength=len(class_names))
    det_counts = np.bincount(np.concatenate([d[:, 5] for d in detections]).astype(int) if detections else [],
                             minlength=len(class_names))
    rows = []
    for c in np.flatnonzero(gt_counts):
        ap = ap50 = 0.0
        if cocoeval is not None:
            precision = cocoeval.eval['precision'][:, :, c, 0, -1]   # [IoU, recall], area all, 100 dets
            ap = float(precision[precision > -1].mean()) if (precision > -1).any() else 0.0
            ap50 = float(precision[0][precision[0] > -1].mean()) if (precision[0] > -1).any() else 0.0
        rows.append((int(c), class_names[c], int(gt_counts[c]), int(det_counts[c]), ap, ap50))
    return rows


def evaluate(model_or_runtime, cfg, conf: float = 0.001, iou: float = 0.6, max_det: int = 300, split: str = 'val',
             batch_size: int = 16, workers: int | None = None, pr_conf: float = 0.3, save_json=None,
             plots_dir=None, progress: bool = True, verbose_split: bool = False, rect: bool = False,
             multi_label: bool = False) -> EvalResult:
    """Evaluate on `split` of the .data config. `conf`/`iou`/`max_det`: NMS settings; `pr_conf`: the confidence
    at which precision/recall/F1 and the confusion matrix are given; `save_json`: write the COCO results file;
    `plots_dir`: write the PR curve and confusion matrix PNGs. `rect`: rectangular batches of `batch_size`
    (utils/data/rect_batches.py; torch models only) instead of the .data file's resize; `multi_label`: a box may be kept
    once per class above `conf` (utils.postprocess.nms). Both together are Ultralytics' validation protocol."""
    runtime = as_runtime(model_or_runtime)
    if rect:
        check_rect(runtime, cfg)
    if runtime.spec.num_classes != cfg.classes:
        raise ValueError(f'{cfg.where("classes")}: classes = {cfg.classes} but the model has '
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
