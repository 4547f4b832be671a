"""The training record: one results.csv row per epoch (loss terms, lr, mAP, speed) and results.png drawn from it."""
from __future__ import annotations

import csv
from pathlib import Path

# results.csv: these columns around the loss terms the head's loss reports (anchor: box obj cls; leyolo: + dfl)
RESULT_FIRST, RESULT_LAST = ['epoch', 'lr'], ['loss', 'map50', 'map50_95', 'images_per_s', 'epoch_s']


def append_results(out_dir: Path, row: dict) -> None:
    """Append `row` to out_dir/results.csv (a resumed run keeps the header it wrote before) and redraw results.png."""
    path = Path(out_dir) / 'results.csv'
    new = not path.exists()
    if new:
        terms = [k for k in row if k not in RESULT_FIRST + RESULT_LAST]
        columns = RESULT_FIRST + terms + RESULT_LAST
    else:
        with open(path, newline='') as f:
            columns = next(csv.reader(f))
    with open(path, 'a', newline='') as f:
        writer = csv.DictWriter(f, columns, restval='', extrasaction='ignore')
        if new:
            writer.writeheader()
        writer.writerow({k: ('' if v is None else f'{v:.6g}' if isinstance(v, float) else v)
                         for k, v in row.items()})
    plot_results(path, Path(out_dir) / 'results.png')


def plot_results(csv_path: Path, png_path: Path) -> None:
    """Losses and mAP per epoch, from results.csv."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    with open(csv_path, newline='') as f:
        rows = list(csv.DictReader(f))
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
    fig.savefig(png_path, dpi=80)
    plt.close(fig)
