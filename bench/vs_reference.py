"""Training quality against the reference: our trainer vs Yolo-FastestV2's own train.py, same data, epochs, init.

    .venv/bin/python bench/vs_reference.py                       # /tmp/person200 (built if absent), 100 epochs
    .venv/bin/python bench/vs_reference.py --data X.data --epochs 100 --reference-dir /tmp/yfv2ref --out /tmp/vsref
    .venv/bin/python bench/vs_reference.py --only reference      # one side only (the other is skipped, said so)
    .venv/bin/python bench/vs_reference.py --reuse               # score finished (or unfinished) runs under --out

The bar: from the ImageNet backbone only, yolo-fastestv2 trained on a small real dataset must clearly beat the
reference trainer run with the same .data, epochs and init. The reference is public code we only run, never ship:
a copy of dog-qiuqiu/Yolo-FastestV2 (decoupled-head version) assembled outside the repo, by default in
/tmp/yfv2ref (train.py, utils/, model/, model/backbone/backbone.pth = the ImageNet ShuffleNetV2-0.5x weights). With
no such folder the reference half is skipped with a message. How it was assembled:
docs/benchmarks.md, "The reference trainer".

What runs (each side as a subprocess with OMP_NUM_THREADS=--threads, timed as a whole, own in-training evaluation
included):
  reference  <out>/reference/: symlinks to the reference's train.py, model/, utils/ (its code loads
             ./model/backbone/backbone.pth and saves to ./weights/), and reference.data written from OUR parsed
             config: only the 15 keys its parser knows, `key=value` without spaces (its parser does not strip
             them), absolute paths. It needs list files whose labels lie beside the images; checked first.
  ours       `train.py --data X --epochs N --out <out>/ours`; the score is of last.pt (the EMA weights).
Both final models are scored by utils.evaluator.evaluate (pycocotools, the val split, conf 0.001, NMS IoU 0.6).
The reference's checkpoints (every 10th epoch, plus the final one with local edit 5) give its mAP curve; ours
comes from its results.csv. Verdict: PASS when ours / reference >= --min-ratio for mAP@0.5 and mAP@0.5:0.95.
Exit status 0 PASS, 1 FAIL, 2 nothing to compare (a side skipped or missing).
"""
from __future__ import annotations

import argparse
import csv
import filecmp
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from utils.config import load_config  # noqa: E402

DEFAULT_DATASET = Path('/tmp/person200')
# The keys Yolo-FastestV2's utils/utils.py load_datafile() reads; it ignores (prints) any other.
REFERENCE_KEYS = ('model_name', 'epochs', 'steps', 'batch_size', 'subdivisions', 'learning_rate', 'pre_weights',
                  'classes', 'width', 'height', 'anchor_num', 'anchors', 'val', 'train', 'names')
REFERENCE_FILES = ('train.py', 'utils/loss.py', 'utils/datasets.py', 'utils/utils.py', 'model/detector.py',
                   'model/fpn.py', 'model/backbone/shufflenetv2.py', 'model/backbone/backbone.pth')
PERIODIC_CKPT = re.compile(r'-(\d+)-epoch-[0-9.]+ap-model\.pth$')     # the reference's own naming
FINAL_CKPT = re.compile(r'-final-epoch-(\d+)-model\.pth$')             # local edit 5 in our copy


def reference_data_text(cfg, epochs: int) -> str:
    """The .data the reference reads: our parsed values, in its syntax."""
    values = dict(model_name=cfg.model_name, epochs=epochs, steps=','.join(str(s) for s in cfg.steps),
                  batch_size=cfg.batch_size, subdivisions=cfg.subdivisions, learning_rate=cfg.learning_rate,
                  classes=cfg.classes, width=cfg.width, height=cfg.height, anchor_num=cfg.anchor_num,
                  anchors=','.join(f'{v:g}' for v in cfg.anchors), train=cfg.train.resolve(),
                  val=cfg.val.resolve(), names=cfg.names.resolve())
    if cfg.pre_weights:
        values['pre_weights'] = cfg.pre_weights.resolve()
    return ''.join(f'{key}={value}\n' for key, value in values.items())


def check_reference_can_read(cfg, reference_dir: Path) -> list[str]:
    """Why the reference cannot train on this config (empty: it can), and warnings printed on the way."""
    problems = []
    if cfg.model != 'yolo-fastestv2' or cfg.head != 'anchor':
        problems.append(f'{cfg.where("model")}: the reference trains yolo-fastestv2 with the anchor head only')
    if len(cfg.anchors) != 2 * 2 * cfg.anchor_num:
        problems.append(f'{cfg.where("anchors")}: the reference needs 2 scales x anchor_num anchors')
    if cfg.names is None:
        problems.append(f'{cfg.data_path}: the reference reads a .names file; give a .data file, not a data.yaml')
    for key in ('train', 'val'):
        path = getattr(cfg, key)
        if path is None or not path.is_file():
            problems.append(f'{cfg.where(key)}: the reference reads a list file of image paths, not {path}')
            continue
        for line_number, line in enumerate(path.read_text().splitlines(), 1):
            image = line.strip()
            # The reference finds a label by cutting the image path at its first '.' (utils/datasets.py).
            if image and not Path(image.split('.')[0] + '.txt').is_file():
                problems.append(f'{path}:{line_number}: {image}: the reference looks for its label at '
                                f'{image.split(".")[0]}.txt, which does not exist')
                break
    if cfg.letterbox:
        print('warning: letterbox=1, but the reference always stretches images to width x height')
    backbone = reference_dir / 'model' / 'backbone' / 'backbone.pth'
    if cfg.pre_weights:
        print(f'both sides start from pre_weights {cfg.pre_weights}')
    elif cfg.backbone_weights is None:
        print(f'warning: no backbone_weights in the .data: ours starts from random weights, the reference from '
              f'{backbone.resolve()}: NOT the same init')
    elif backbone.is_file() and not filecmp.cmp(cfg.backbone_weights, backbone, shallow=False):
        print(f'warning: {backbone} is not the same file as backbone_weights {cfg.backbone_weights}: '
              f'NOT the same init')
    return problems


def run_timed(command: list, cwd: Path, log_path: Path, threads: int) -> float:
    """Run `command` with its output in log_path; return wall seconds. Raises on a non-zero exit status."""
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), PYTHONUNBUFFERED='1')
    print(f'$ cd {cwd} && OMP_NUM_THREADS={threads} {" ".join(map(str, command))}  > {log_path}', flush=True)
    began = time.perf_counter()
    with open(log_path, 'w') as log:
        status = subprocess.run(command, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT).returncode
    wall_s = time.perf_counter() - began
    if status != 0:
        tail = log_path.read_text(errors='replace').replace('\r', '\n').strip().splitlines()[-15:]
        raise RuntimeError(f'{command[1]} exited with status {status} after {wall_s:.0f} s; the end of {log_path}:\n'
                           + '\n'.join(tail))
    return wall_s


def start_folder(folder: Path, reuse: bool) -> bool:
    """True when a run must be started in `folder`; False to reuse what is there (or nothing, if absent)."""
    if reuse:
        if not folder.is_dir():
            print(f'--reuse: {folder} does not exist: that side has no run to score')
        return False
    if folder.is_dir() and any(folder.iterdir()):
        raise SystemExit(f'{folder} holds an earlier run: pass --reuse to score it, or delete it to run again')
    folder.mkdir(parents=True, exist_ok=True)
    return True


def run_reference(cfg, reference_dir: Path, folder: Path, epochs: int, threads: int, reuse: bool) -> dict | None:
    """Train with the reference (unless reused); return its run record with the checkpoints found."""
    problems = check_reference_can_read(cfg, reference_dir)
    if problems:
        print('reference half skipped: it cannot read this .data:\n  ' + '\n  '.join(problems))
        return None
    if start_folder(folder, reuse):
        for name in ('train.py', 'model', 'utils'):
            (folder / name).symlink_to(reference_dir.resolve() / name)
        (folder / 'weights').mkdir()
        (folder / 'reference.data').write_text(reference_data_text(cfg, epochs))
        ignored = sorted(set(cfg.lines) - set(REFERENCE_KEYS))
        print(f'reference.data: {len(REFERENCE_KEYS)} keys the reference reads; not passed (it does not read them): '
              f'{", ".join(ignored) or "none"}')
        wall_s = run_timed([sys.executable, 'train.py', '--data', 'reference.data'], folder, folder / 'train.log',
                           threads)
        (folder / 'run.json').write_text(json.dumps(dict(wall_s=wall_s, threads=threads, epochs=epochs)))
    return describe_reference_run(folder) if folder.is_dir() else None


def describe_reference_run(folder: Path) -> dict:
    """Checkpoints (epoch number = epochs trained) and timings of a reference run folder, finished or not."""
    record = json.loads((folder / 'run.json').read_text()) if (folder / 'run.json').is_file() else {}
    checkpoints, final = {}, None
    for path in sorted((folder / 'weights').glob('*.pth')):
        if match := FINAL_CKPT.search(path.name):
            final = (int(match.group(1)) + 1, path)
        elif match := PERIODIC_CKPT.search(path.name):
            checkpoints[int(match.group(1)) + 1] = path      # its epoch index counts from 0
    log = (folder / 'train.log').read_text(errors='replace') if (folder / 'train.log').is_file() else ''
    epoch_s = [float(s) for s in re.findall(r'EPOCH_TIME epoch=\d+ seconds=([0-9.]+)', log)]
    if final is None and checkpoints:
        epoch = max(checkpoints)
        print(f'reference: no final-epoch weights in {folder / "weights"} (unfinished, or a copy without local '
              f'edit 5): scoring its latest checkpoint, after {epoch} epochs')
        final = (epoch, checkpoints[epoch])
    if final is not None:
        checkpoints[final[0]] = final[1]
    return dict(record, checkpoints=checkpoints, final=final, epochs_done=len(epoch_s),
                train_s=sum(epoch_s), epoch_s=epoch_s)


def run_ours(data: Path, folder: Path, epochs: int, threads: int, reuse: bool) -> dict | None:
    if start_folder(folder, reuse):
        wall_s = run_timed([sys.executable, str(REPO / 'train.py'), '--data', str(data.resolve()), '--epochs',
                            str(epochs), '--out', str(folder)], REPO, folder.parent / 'ours_train.log', threads)
        (folder / 'run.json').write_text(json.dumps(dict(wall_s=wall_s, threads=threads, epochs=epochs)))
    if not (folder / 'last.pt').is_file():
        print(f'ours: {folder / "last.pt"} is missing: nothing to score')
        return None
    record = json.loads((folder / 'run.json').read_text()) if (folder / 'run.json').is_file() else {}
    curve, epoch_s = {}, []
    if (folder / 'results.csv').is_file():
        with open(folder / 'results.csv', newline='') as f:
            for row in csv.DictReader(f):
                epoch_s.append(float(row['epoch_s'] or 0))
                if row['map50']:
                    curve[int(row['epoch'])] = (float(row['map50']), float(row['map50_95']))
    return dict(record, final=(len(epoch_s), folder / 'last.pt'), curve=curve, epochs_done=len(epoch_s),
                train_s=sum(epoch_s), epoch_s=epoch_s)


def score(cfg, weights: Path) -> tuple[float, float]:
    """(mAP@0.5, mAP@0.5:0.95) on the val split with our evaluator."""
    from utils.evaluator import evaluate
    from utils.runtimes import load_runtime
    result = evaluate(load_runtime('torch', cfg, weights), cfg, progress=False)
    return float(result.map50), float(result.map50_95)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--data', type=Path, help=f'the .data file (default: {DEFAULT_DATASET}/person.data, built '
                        'by bench/person_dataset.py if absent)')
    parser.add_argument('--reference-dir', type=Path, default=Path('/tmp/yfv2ref'))
    parser.add_argument('--epochs', type=int, default=100)
    parser.add_argument('--out', type=Path, help='run folder (default /tmp/vsref_<model_name>)')
    parser.add_argument('--only', choices=('ours', 'reference'), help='run and score one side only')
    parser.add_argument('--reuse', action='store_true', help='score the runs already under --out, train nothing')
    parser.add_argument('--threads', type=int, default=2, help='CPU threads for training (OMP_NUM_THREADS) and '
                        'scoring')
    parser.add_argument('--min-ratio', type=float, default=1.1, help='ours / reference needed to PASS (1.1)')
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    data = args.data
    if data is None:
        data = DEFAULT_DATASET / 'person.data'
        if not data.is_file():
            from bench.person_dataset import build
            data = build(DEFAULT_DATASET)
    cfg = load_config(data)
    out = args.out or Path(f'/tmp/vsref_{cfg.model_name}')
    print(f'{data}: {cfg.model}, {cfg.classes} classes, {cfg.width}x{cfg.height}, batch {cfg.batch_size}, '
          f'{args.epochs} epochs, {args.threads} threads; runs under {out}')

    sides = {}
    if args.only != 'ours':
        missing = [name for name in REFERENCE_FILES if not (args.reference_dir / name).exists()]
        if missing:
            print(f'reference half skipped: {args.reference_dir} lacks {", ".join(missing)} (docs/benchmarks.md, '
                  f'"The reference trainer", says how to assemble it)')
        else:
            sides['reference'] = run_reference(cfg, args.reference_dir, out / 'reference', args.epochs,
                                               args.threads, args.reuse)
    if args.only != 'reference':
        sides['ours'] = run_ours(data, out / 'ours', args.epochs, args.threads, args.reuse)
    sides = {name: run for name, run in sides.items() if run and run['final']}

    num_train = len([line for line in cfg.train.read_text().splitlines() if line.strip()]) \
        if cfg.train.is_file() else None
    scores = {}
    for name, run in sides.items():
        epochs_done, weights = run['final']
        if name == 'reference':   # its checkpoints, the final one among them, scored here
            curve = {e: score(cfg, p) for e, p in sorted(run['checkpoints'].items())}
            scores[name] = curve[epochs_done]
        else:                     # our trainer scored itself every eval_interval epochs (results.csv)
            curve = run['curve']
            scores[name] = score(cfg, weights)
        print(f'\n{name}: {weights} after {epochs_done} epochs: mAP@0.5 {scores[name][0]:.4f}, '
              f'mAP@0.5:0.95 {scores[name][1]:.4f}')
        if run['epoch_s']:
            print(f'  {len(run["epoch_s"])} epochs trained, {run["train_s"]:.0f} s in training epochs '
                  f'({run["train_s"] / len(run["epoch_s"]):.1f} s per epoch, its own evaluation excluded)')
        print('  curve (epochs: mAP@0.5 / mAP@0.5:0.95, our evaluator): ' +
              ', '.join(f'{e}: {a:.3f}/{b:.3f}' for e, (a, b) in sorted(curve.items())))

    print(f'\n{"":12s}{"mAP@0.5":>10s}{"mAP@.5:.95":>12s}{"epochs":>8s}{"wall s":>9s}{"images/s":>10s}'
          f'{"s/epoch":>9s}')
    for name, run in sides.items():
        wall_s = run.get('wall_s')
        per_s = run['final'][0] * num_train / wall_s if wall_s and num_train else None
        epoch_s = run['train_s'] / len(run['epoch_s']) if run['epoch_s'] else None
        print(f'{name:12s}{scores[name][0]:10.4f}{scores[name][1]:12.4f}{run["final"][0]:8d}'
              f'{f"{wall_s:.0f}" if wall_s else "-":>9s}{f"{per_s:.1f}" if per_s else "-":>10s}'
              f'{f"{epoch_s:.1f}" if epoch_s else "-":>9s}')
    print('(wall s: the whole training subprocess, its own evaluations included; images/s = epochs x '
          f'{num_train} train images / wall s; s/epoch: mean training time per epoch from its log)')
    if set(sides) != {'ours', 'reference'}:
        print(f'nothing to compare: a model to score from {" and ".join(sides) or "neither side"}, not both')
        return 2
    ratios = [scores['ours'][i] / max(scores['reference'][i], 1e-9) for i in (0, 1)]
    walls = [sides[n].get('wall_s') for n in ('ours', 'reference')]
    print(f'ours / reference: mAP@0.5 {ratios[0]:.2f}x, mAP@0.5:0.95 {ratios[1]:.2f}x' +
          (f', wall time {walls[0] / walls[1]:.2f}x' if all(walls) else ''))
    if sides['ours']['final'][0] != sides['reference']['final'][0]:
        print(f'warning: the sides trained different epochs ({sides["ours"]["final"][0]} vs '
              f'{sides["reference"]["final"][0]})')
    ok = min(ratios) >= args.min_ratio
    print(f'{"PASS" if ok else "FAIL"}: ours beats the reference by {min(ratios):.2f}x on the weaker metric '
          f'(must be >= {args.min_ratio})')
    return 0 if ok else 1


if __name__ == '__main__':
    sys.exit(main())
