"""Pictures of results: the precision-recall curve and confusion matrix of an evaluation (utils.evaluator.evaluator.EvalResult)
as PNG, and detections drawn on an image (test.py).

matplotlib runs on the Agg backend, so plots work on servers without a display.
"""
from __future__ import annotations

from pathlib import Path

import cv2
import matplotlib

matplotlib.use('Agg')
import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen before pyplot is imported)
import numpy as np  # noqa: E402


def plot_pr_curve(result, path) -> Path:
    """COCO's interpolated precision at IoU 0.5 over its 101 recall points, mean over classes with ground truth."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure, axis = plt.subplots(figsize=(6, 5), dpi=120)
    axis.plot(result.recall_points, result.precision_curve, color='tab:blue',
              label=f'all classes, mAP@0.5 {result.map50:.3f}')
    axis.plot([result.recall], [result.precision], 'o', color='tab:red',
              label=f'conf >= {result.pr_conf:g}: P {result.precision:.2f}, R {result.recall:.2f}')
    axis.set(xlabel='recall', ylabel='precision', xlim=(0, 1), ylim=(0, 1.01),
             title=f'precision-recall at IoU 0.5 ({result.num_images} images)')
    axis.grid(alpha=0.3)
    axis.legend(loc='lower left')
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)
    return path


def plot_confusion(result, path) -> Path:
    """Confusion matrix normalised per true class (columns), showing only classes that occur in it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    matrix = result.confusion.astype(np.float64)
    num_classes = len(matrix) - 1
    names = [result.class_names[c] if c < len(result.class_names) else str(c) for c in range(num_classes)]
    names.append('background')
    used = np.flatnonzero((matrix.sum(0) + matrix.sum(1))[:num_classes] > 0).tolist() + [num_classes]
    matrix = matrix[np.ix_(used, used)]
    column_totals = matrix.sum(0, keepdims=True)
    normalised = np.divide(matrix, column_totals, out=np.zeros_like(matrix), where=column_totals > 0)
    size = min(4 + 0.25 * len(used), 24)
    figure, axis = plt.subplots(figsize=(size, size * 0.9), dpi=100)
    image = axis.imshow(normalised, cmap='Blues', vmin=0, vmax=1)
    labels = [names[c] for c in used]
    axis.set_xticks(range(len(used)), labels, rotation=90, fontsize=7)
    axis.set_yticks(range(len(used)), labels, fontsize=7)
    axis.set(xlabel='true class', ylabel='predicted class',
             title=f'confusion at conf >= {result.pr_conf:g}, IoU > 0.5 (fraction of each true class)')
    figure.colorbar(image, ax=axis, fraction=0.046, pad=0.04)
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)
    return path


def class_colour(cls: int) -> tuple:
    """A fixed, well-spread BGR colour per class (golden-ratio steps around the hue circle)."""
    hue = int((cls * 0.618033988749895 % 1.0) * 180)
    return tuple(int(v) for v in cv2.cvtColor(np.uint8([[[hue, 220, 230]]]), cv2.COLOR_HSV2BGR)[0, 0])


def draw_detections(image_bgr: np.ndarray, detections: np.ndarray, class_names) -> np.ndarray:
    """A copy of the image with each (x1, y1, x2, y2, score, class) box and a 'name score' tag drawn on it.
    Tags are drawn on a filled box of the class colour with black or white text, whichever contrasts more,
    so they stay readable on any background."""
    canvas = image_bgr.copy()
    height, width = canvas.shape[:2]
    thickness = max(1, round(max(width, height) / 400))
    font_scale = max(0.4, max(width, height) / 1200)
    for x1, y1, x2, y2, score, cls in detections.tolist():
        colour = class_colour(int(cls))
        name = class_names[int(cls)] if int(cls) < len(class_names) else str(int(cls))
        top_left, bottom_right = (int(round(x1)), int(round(y1))), (int(round(x2)), int(round(y2)))
        cv2.rectangle(canvas, top_left, bottom_right, colour, thickness, cv2.LINE_AA)
        text = f'{name} {score:.2f}'
        (text_w, text_h), baseline = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, font_scale, thickness)
        # the tag sits above the box, or inside it when the box touches the top edge
        tag_y = top_left[1] - text_h - baseline if top_left[1] - text_h - baseline >= 0 else top_left[1]
        tag_x = min(max(top_left[0], 0), max(width - text_w, 0))
        cv2.rectangle(canvas, (tag_x, tag_y), (tag_x + text_w, tag_y + text_h + baseline), colour, -1)
        luminance = 0.114 * colour[0] + 0.587 * colour[1] + 0.299 * colour[2]
        text_colour = (0, 0, 0) if luminance > 128 else (255, 255, 255)
        cv2.putText(canvas, text, (tag_x, tag_y + text_h), cv2.FONT_HERSHEY_SIMPLEX, font_scale, text_colour,
                    thickness, cv2.LINE_AA)
    return canvas
