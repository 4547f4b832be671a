"""The training record: one results.csv row per epoch (loss terms, lr, mAP, speed) and results.png drawn from it.
The trainer redraws results.png only after an evaluation (and so after the last epoch): drawing the demo's 40 rows
takes ~0.23 s, about a tenth of one of its epochs.

Both files are rewritten whole each epoch through utils/train/files.py: a full disk raises CheckpointError and leaves
the previous version in place, never a half-written row.
"""
from __future__ import annotations

import csv
import io
from pathlib import Path

from utils.train.files import write_atomic

# results.csv: these columns around the loss terms the head's loss reports (anchor: box obj cls; leyolo: + dfl)
RESULT_FIRST, RESULT_LAST = ['epoch', 'lr'], ['loss', 'map50', 'map50_95', 'images_per_s', 'epoch_s']


def append_results(out_dir: Path, row: dict, draw: bool = True) -> None:
    """Append `row` to out_dir/results.csv (a resumed run keeps the header it wrote before) and, with `draw`, redraw
    results.png from the whole record."""
    path = Path(out_dir) / 'results.csv'
    if path.exists():
        columns, rows = _read(path)
    else:
        terms = [k for k in row if k not in RESULT_FIRST + RESULT_LAST]
        columns, rows = RESULT_FIRST + terms + RESULT_LAST, []
    rows.append({k: ('' if v is None else f'{v:.6g}' if isinstance(v, float) else v) for k, v in row.items()})
    _write(path, columns, rows)
    if draw:
        plot_results(path, Path(out_dir) / 'results.png')


def drop_results_after(out_dir: Path, epoch: int) -> None:
    """Keep the rows of epochs 1..`epoch` only: a resumed run trains the later ones again (a row is written just
    before its epoch's checkpoint, which a full disk can then refuse) and must not list them twice."""
    path = Path(out_dir) / 'results.csv'
    if not path.exists():
        return
    columns, rows = _read(path)
    kept = [r for r in rows if int(r['epoch']) <= epoch]
    if len(kept) < len(rows):
        _write(path, columns, kept)


def _read(path: Path) -> tuple[list[str], list[dict]]:
    with open(path, newline='') as f:
        reader = csv.DictReader(f)
        return list(reader.fieldnames or []), list(reader)


def _write(path: Path, columns: list[str], rows: list[dict]) -> None:
    text = io.StringIO(newline='')
    writer = csv.DictWriter(text, columns, restval='', extrasaction='ignore')
    writer.writeheader()
    writer.writerows(rows)
    write_atomic(path, text.getvalue().encode())


def plot_results(csv_path: Path, png_path: Path) -> None:
    """Losses and mAP per epoch, from results.csv."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    _, rows = _read(csv_path)
    epochs = [int(r['epoch']) for r in rows]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    terms = [k for k in (rows[0] if rows else {}) if k not in RESULT_FIRST + RESULT_LAST]
    for key in terms:
        points = [(e, float(r[key])) for e, r in zip(epochs, rows) if r[key]]
        axes[0].plot(*zip(*points), label=key)
    axes[0].set(title='training loss terms', xlabel='epoch')
    if axes[0].lines:
        axes[0].legend()
    for key in ('map50', 'map50_95'):
        points = [(e, float(r[key])) for e, r in zip(epochs, rows) if r[key]]
        if points:
            axes[1].plot(*zip(*points), marker='o', label=key)
    axes[1].set(title='validation mAP (EMA model)', xlabel='epoch')
    if axes[1].lines:
        axes[1].legend()
    fig.tight_layout()
    image = io.BytesIO()
    fig.savefig(image, format='png', dpi=80)
    plt.close(fig)
    write_atomic(png_path, image.getbuffer())
