"""COCO scoring with pycocotools: Darknet labels -> COCO ground truth, detections -> COCO results, COCOeval's
numbers, and from the same matches the pooled precision/recall/F1, the per-class table and the confusion matrix."""
from __future__ import annotations

import contextlib
import io
from pathlib import Path

import numpy as np
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from utils.boxes import box_iou

IOU_FOR_PR = 0.5   # the precision/recall/F1 figures, the PR curve and the confusion matrix use this IoU


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
    def name(c):
        return class_names[c] if c < len(class_names) else str(c)

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
