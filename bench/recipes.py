"""Training recipes compared on one dataset: one markdown table, each row one seeded training run of train.py scored
by evaluation.py on the val split.

    .venv/bin/python bench/recipes.py --data /tmp/person200/person.data                  # every row, 100 epochs
    .venv/bin/python bench/recipes.py --data my.data --rows yfv2-imagenet,yfv2-atss --epochs 15 --device cuda

A row is a set of .data overrides on top of --data (which gives the dataset: train, val, names, classes, and the
anchors for the Yolo-FastestV2 rows, computed at 352 as bench/person_dataset.py and genanchors.py do):
    yfv2-imagenet       Yolo-FastestV2 at 352 from the ImageNet backbone, YOLOv5's matching
    yfv2-coco           the same from the released COCO weights (pre_weights; the class convs start fresh)
    yfv2-coco-anchors   yfv2-coco with Yolo-FastestV2's COCO anchors (the default) instead of the base file's
    yfv2-atss / yfv2-simota / yfv2-tal   yfv2-coco with another assigner (utils/loss/assigners/); yfv2-tal is
                        the README's recipe
    leyolo-nano-coco    LeYOLO-Nano at 320, letterboxed, from the released COCO weights (LeYOLONano.pt)
    yfv2-distill        yfv2-tal distilled from the leyolo-nano-coco row's last.pt (run after it)
    yfv2-distill-pred   the same from the teacher's predictions only (distill_feature_gain 0)
    yfv2-distill-light  yfv2-distill-pred at a quarter of the weight (distill_gain 0.25)
    leyolo-nano-stretch leyolo-nano-coco stretched to 320x320 like the yfv2 rows (letterbox 0): a teacher that has
                        seen the stretched images the student's batches hold
    yfv2-distill-stretch  yfv2-distill taught by the leyolo-nano-stretch row's last.pt (run after it)
Each row writes its .data to OUT/ROW.data and trains into OUT/ROW/ (train.py --seed), then evaluation.py scores the
EMA weights of OUT/ROW/last.pt. The schedule is the base file's with `epochs` = --epochs and its `steps` scaled by
--epochs / the base's epochs (steps 50,80 of 100 epochs become 8,12 at 15), evaluated after the last epoch only.
Columns: mAP@0.5 and mAP@0.5:0.95 (pycocotools, evaluation.py's defaults), images/s (training images over the
training seconds of all epochs, from results.csv), wall s (train.py + evaluation.py, start to end). A row whose
weights file is missing (../shared absent) or whose run fails is listed with the reason; the exit status is then 1.
The table is printed and written to OUT/recipes.md.
"""
from __future__ import annotations

import argparse
import csv
import re
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / 'shared'
sys.path.insert(0, str(REPO))

from utils.config import load_config, read_data_file  # noqa: E402

IMAGENET_BACKBONE = SHARED / 'weights' / 'yolo-fastestv2' / 'shufflenetv2-0.5x-imagenet-backbone.pth'
YFV2_COCO = SHARED / 'weights' / 'yolo-fastestv2' / 'coco2017-0.241078ap-model.pth'
LEYOLO_NANO_COCO = SHARED / 'weights' / 'leyolo' / 'LeYOLONano.pt'
PATH_KEYS = ('pre_weights', 'backbone_weights', 'teacher_weights', 'train', 'val', 'names', 'backup')


@dataclass
class Row:
    name: str
    overrides: dict             # .data key -> value; None removes the key
    after: tuple = field(default=())   # rows whose outputs this one reads (OUT/<row>/last.pt)


YFV2 = {'model': 'yolo-fastestv2', 'head': 'anchor', 'width': 352, 'height': 352, 'letterbox': 0}
IMAGENET = {'backbone_weights': IMAGENET_BACKBONE, 'pre_weights': None}
COCO = {'backbone_weights': None, 'pre_weights': YFV2_COCO}   # the better start on every set measured
LEYOLO_NANO = {'model': 'leyolo-nano', 'head': 'leyolo', 'width': 320, 'height': 320, 'letterbox': 1,
               'backbone_weights': None, 'pre_weights': LEYOLO_NANO_COCO, 'assigner': None}
# the yfv2-tal row taught by the leyolo-nano-coco row's model
DISTILL = {**YFV2, **COCO, 'assigner': 'tal', 'teacher_weights': Path('{out}/leyolo-nano-coco/last.pt')}
ROWS = [
    Row('yfv2-imagenet', {**YFV2, **IMAGENET, 'assigner': 'yolov5'}),
    Row('yfv2-coco', {**YFV2, **COCO, 'assigner': 'yolov5'}),
    Row('yfv2-coco-anchors', {**YFV2, **COCO, 'assigner': 'yolov5', 'anchors': None}),
    Row('yfv2-atss', {**YFV2, **COCO, 'assigner': 'atss'}),
    Row('yfv2-simota', {**YFV2, **COCO, 'assigner': 'simota'}),
    Row('yfv2-tal', {**YFV2, **COCO, 'assigner': 'tal'}),
    Row('leyolo-nano-coco', LEYOLO_NANO),
    Row('yfv2-distill', DISTILL, after=('leyolo-nano-coco',)),
    Row('yfv2-distill-pred', {**DISTILL, 'distill_feature_gain': 0}, after=('leyolo-nano-coco',)),
    Row('yfv2-distill-light', {**DISTILL, 'distill_feature_gain': 0, 'distill_gain': 0.25},
        after=('leyolo-nano-coco',)),
    Row('leyolo-nano-stretch', {**LEYOLO_NANO, 'letterbox': 0}),
    Row('yfv2-distill-stretch', {**DISTILL, 'teacher_weights': Path('{out}/leyolo-nano-stretch/last.pt')},
        after=('leyolo-nano-stretch',)),
]


def row_data(base: Path, row: Row, epochs: int, out: Path) -> str:
    """The text of the row's .data: the base file's keys (paths made absolute), the row's overrides, the schedule."""
    values, _ = read_data_file(base)
    cfg = load_config(base)
    for key in PATH_KEYS:
        if key in values:
            values[key] = '' if getattr(cfg, key) is None else str(getattr(cfg, key))
    base_epochs = cfg.epochs
    values['epochs'] = str(epochs)
    values['steps'] = ','.join(str(max(1, round(s * epochs / base_epochs))) for s in cfg.steps)
    values['eval_interval'] = str(epochs)    # the trainer evaluates after the last epoch only
    values['model_name'] = row.name
    for key, value in row.overrides.items():
        if value is None:
            values.pop(key, None)
        else:
            values[key] = str(value).replace('{out}', str(out))
    return ''.join(f'{key}={value}\n' for key, value in values.items())


def missing_files(row: Row, out: Path) -> list:
    return [str(value).replace('{out}', str(out)) for key, value in row.overrides.items()
            if key in PATH_KEYS and value is not None and not Path(str(value).replace('{out}', str(out))).is_file()]


def training_images_per_s(results_csv: Path) -> float:
    """Images over seconds of every epoch of results.csv."""
    with open(results_csv, newline='') as f:
        rows = list(csv.DictReader(f))
    seconds = sum(float(r['epoch_s']) for r in rows)
    return sum(float(r['images_per_s']) * float(r['epoch_s']) for r in rows) / seconds


def run_row(row: Row, data: Path, run_dir: Path, args) -> dict:
    """Train and evaluate one row; a dict of the table's columns, or {'error': why}."""
    began = time.perf_counter()
    common = ['--workers', str(args.workers)]
    train = [sys.executable, str(REPO / 'train.py'), '--data', str(data), '--out', str(run_dir), '--seed',
             str(args.seed), '--device', args.device] + common
    done = subprocess.run(train, cwd=REPO, capture_output=True, text=True)
    (run_dir.parent / f'{row.name}.train.log').write_text(done.stdout + done.stderr)
    if done.returncode != 0:
        return {'error': f'train.py exit {done.returncode}: {last_line(done)}'}
    evaluate = [sys.executable, str(REPO / 'evaluation.py'), '--data', str(data), '--weights',
                str(run_dir / 'last.pt'), '--no-per-class'] + common
    scored = subprocess.run(evaluate, cwd=REPO, capture_output=True, text=True)
    (run_dir.parent / f'{row.name}.eval.log').write_text(scored.stdout + scored.stderr)
    found = re.search(r'mAP@0\.5:0\.95 ([\d.]+)\s+mAP@0\.5 ([\d.]+)', scored.stdout)
    if scored.returncode != 0 or not found:
        return {'error': f'evaluation.py exit {scored.returncode}: {last_line(scored)}'}
    return {'map50': float(found.group(2)), 'map50_95': float(found.group(1)),
            'images_per_s': training_images_per_s(run_dir / 'results.csv'), 'wall_s': time.perf_counter() - began}


def last_line(done: subprocess.CompletedProcess) -> str:
    lines = (done.stderr or done.stdout).strip().splitlines()
    return lines[-1] if lines else '(no output)'


def table(title: str, results: dict) -> str:
    lines = [f'### {title}', '', '| row | mAP@0.5 | mAP@0.5:0.95 | images/s | wall s |', '|---|---|---|---|---|']
    for name, r in results.items():
        if 'error' in r:
            lines.append(f'| {name} | {r["error"]} | | | |')
        else:
            lines.append(f'| {name} | {r["map50"]:.4f} | {r["map50_95"]:.4f} | {r["images_per_s"]:.1f} | '
                         f'{r["wall_s"]:.0f} |')
    return '\n'.join(lines) + '\n'


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--data', type=Path, required=True, help='the dataset .data file')
    parser.add_argument('--rows', help=f'comma-separated rows (default: all): {", ".join(r.name for r in ROWS)}')
    parser.add_argument('--epochs', type=int, default=100)
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--device', default='', help="train.py's --device (default: CUDA if available)")
    parser.add_argument('--workers', type=int, default=2)
    parser.add_argument('--out', type=Path, help='where rows write (default: runs/recipes/<the .data name>)')
    args = parser.parse_args()
    by_name = {r.name: r for r in ROWS}
    wanted = args.rows.split(',') if args.rows else list(by_name)
    unknown = [n for n in wanted if n not in by_name]
    if unknown:
        parser.error(f'unknown rows: {", ".join(unknown)}; known: {", ".join(by_name)}')
    out = (args.out or REPO / 'runs' / 'recipes' / args.data.stem).resolve()
    out.mkdir(parents=True, exist_ok=True)

    results = {}
    for name in wanted:
        row = by_name[name]
        missing = missing_files(row, out)
        if missing:
            needed = f' (run {", ".join(row.after)} first)' if row.after else ''
            results[name] = {'error': f'skipped: missing {", ".join(missing)}{needed}'}
        else:
            data = out / f'{name}.data'
            data.write_text(row_data(args.data, row, args.epochs, out))
            results[name] = run_row(row, data, out / name, args)
        print(f'{name}: {results[name]}', flush=True)
    title = (f'{args.data.stem}: {args.epochs} epochs, seed {args.seed}, evaluated on its val split '
             f'({args.data})')
    text = table(title, results)
    (out / 'recipes.md').write_text(text)
    print('\n' + text)
    failed = sum('error' in r for r in results.values())
    if failed:
        print(f'{failed} of {len(results)} rows failed or were skipped')
    return 1 if failed else 0


if __name__ == '__main__':
    sys.exit(main())
