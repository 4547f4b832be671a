"""Pictures of an evaluation (utils.evaluator.EvalResult) as PNG: the precision-recall curve and the confusion matrix.

matplotlib runs on the Agg backend, so plots work on servers without a display.
"""
from __future__ import annotations

from pathlib import Path

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
