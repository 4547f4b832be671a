"""Fine-tuning LeYOLO-Nano from LeYOLONano.pt on a small set, at several gradient-clipping norms.

    .venv/bin/python bench/person_dataset.py --out /tmp/person200
    .venv/bin/python bench/leyolo_finetune.py --data /tmp/person200/person.data --clips 10,30,100

Each run: the dataset of --data (train, val, names, classes) with LeYOLO-Nano at 320x320 letterboxed, pre_weights
LeYOLONano.pt (the class convolutions start fresh), SGD at learning_rate 0.001, batch 32, --epochs epochs (default
60) with the lr steps at 2/3 and 13/15 of them, seed 0, 2 workers, `leyolo_max_grad_norm` = the clip, evaluated every
10 epochs on the val split. From the released weights the gradient norm is far above any of these clips, so the clip
sets an SGD step's length (learning_rate x clip): the question is which length fine-tunes without wrecking the
released body. Prints mAP@0.5:0.95 (mAP@0.5) per evaluated epoch, one row per clip, and writes OUT/table.md.
Exit status 2 when ../shared is absent.
"""
from __future__ import annotations

import argparse
import csv
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import tinydet  # noqa: E402
from bench.recipes import Row, row_data  # noqa: E402

LEYOLO_NANO = REPO.parent / 'shared' / 'weights' / 'leyolo' / 'LeYOLONano.pt'


def evaluated_epochs(results_csv: Path) -> list[tuple[int, float, float]]:
    with open(results_csv, newline='') as f:
        return [(int(r['epoch']), float(r['map50_95']), float(r['map50'])) for r in csv.DictReader(f) if r['map50']]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--data', type=Path, required=True, help='a dataset .data (e.g. bench/person_dataset.py\'s)')
    parser.add_argument('--clips', default='10,30,100', help='comma-separated leyolo_max_grad_norm values')
    parser.add_argument('--epochs', type=int, default=60)
    parser.add_argument('--out', type=Path, default=REPO / 'runs' / 'leyolo_finetune')
    args = parser.parse_args()
    if not LEYOLO_NANO.is_file():
        print(f'skipped: {LEYOLO_NANO} is missing')
        return 2
    epochs = args.epochs
    schedule = dict(epochs=epochs, steps=(round(epochs * 2 / 3), round(epochs * 13 / 15)), eval_interval=10,
                    batch_size=32, learning_rate=0.001)
    # the dataset's keys with the model's: the anchor head's keys and the ImageNet backbone go
    model = Row('leyolo-nano', {'model': 'leyolo-nano', 'head': 'leyolo', 'width': 320, 'height': 320, 'letterbox': 1,
                                'pre_weights': LEYOLO_NANO, 'backbone_weights': None, 'anchors': None,
                                'anchor_num': None, 'assigner': None})
    args.out.mkdir(parents=True, exist_ok=True)
    data = args.out / 'leyolo-nano.data'
    data.write_text(row_data(args.data, model, epochs, args.out))
    rows = []
    for clip in (float(c) for c in args.clips.split(',')):
        out = args.out / f'clip{clip:g}'
        began = time.perf_counter()
        tinydet.train(data, out=out, workers=2, seed=0, leyolo_max_grad_norm=clip, **schedule)
        rows.append((clip, evaluated_epochs(out / 'results.csv'), time.perf_counter() - began))
    header = ' | '.join(f'epoch {e}' for e, _, _ in rows[0][1])
    lines = [f'| clip | {header} | wall s |', '|---' * (len(rows[0][1]) + 2) + '|']
    for clip, scores, seconds in rows:
        cells = ' | '.join(f'{m:.4f} ({m50:.4f})' for _, m, m50 in scores)
        lines.append(f'| {clip:g} | {cells} | {seconds:.0f} |')
    text = (f'LeYOLO-Nano fine-tuned on {args.data}: val mAP@0.5:0.95 (mAP@0.5)\n\n' + '\n'.join(lines) + '\n')
    (args.out / 'table.md').write_text(text)
    print(text)
    return 0


if __name__ == '__main__':
    sys.exit(main())
