"""Training throughput: images/s of the training step (data loading + augmentation + forward + loss + backward +
SGD step) on coco128 train2017, yolo-fastestv2 at 352x352, batch 32, 2 workers, default augmentation.

    python3 bench/train_speed.py [--batches 8] [--device cpu|cuda] [--batch-size 32] [--workers 2]
                                 [--reference-dir DIR]
    python3 bench/train_speed.py --end-to-end [--epochs 9] [--reference-dir DIR]

Pipelines timed in the same run, on the same images:
  ours       what utils/train/trainer.py does: full augmentation (mosaic, affine, HSV, flip), uint8 NHWC batches (4x
             less to move from workers and to the device, no layout copy), channels-last activations, decoded
             images cached in RAM (`cache = auto`: coco128 fits), freed memory kept for reuse
             (utils/memory.py; process-wide, so naive has it too), pinned memory + AMP + cudnn.benchmark on
             CUDA;
  naive      the same model, loss and augmentation with float32 0..1 NCHW batches, images decoded every time,
             and none of the above (the model's own training path, e.g. the stem's ReLU after its pool, it keeps);
  reference  Yolo-FastestV2's own training step (its TensorDataset with its only augmentation, contrast and
             brightness; its Detector, compute_loss and SGD), run from a checkout of its code given by
             --reference-dir (github.com/dog-qiuqiu/Yolo-FastestV2 with model/backbone/backbone.pth in place), in a
             child process since both projects have top-level `model` and `utils` packages. Its labels must sit
             beside the images, so the child reads a temporary copy of the split in that layout.
Each pipeline runs alone (its data workers are the only ones alive: another pipeline's idle workers would refill
their queue during its steps), in two rounds of ours, naive, reference, so that load from other processes hits
all alike. A run is one untimed batch (worker start, cudnn autotuning) and then --batches timed ones, coco128 over
again as needed (the reference reads a list of it repeated 4 times): well past the loaders' prefetch of 4 batches,
so the timed batches pay for their augmentation. images/s = images / seconds over all timed batches.
It prints images/s, the ratios ours/naive and ours/reference, and the peak resident memory.

--end-to-end times the commands a user runs instead of a step: our train.py, then the reference's train.py (with
--reference-dir, on CPU), each for --epochs epochs of coco128 train2017 (labels beside the images, batch 32, their
default augmentation; ours evaluates once, after the last epoch; the reference's first evaluation would come after
epoch 11). Images/s of each from its own record after the first epoch (ours: results.csv; the reference: the epoch
line its local edit 4 prints), start-up = launch to the first epoch's progress bar, and the whole wall time.
"""
from __future__ import annotations

import argparse
import contextlib
import csv
import dataclasses
import json
import os
import re
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from person_dataset import link_labelled  # noqa: E402  (bench/, beside this file)

from model.build import build_model  # noqa: E402
from utils.config import load_config  # noqa: E402
from utils.data.dataset import load_split  # noqa: E402
from utils.data.train_data import TrainDataset, collate  # noqa: E402
from utils.loss import build_loss  # noqa: E402
from utils.memory import keep_freed_memory  # noqa: E402
from utils.train.schedule import optimizer_groups  # noqa: E402

COCO128 = REPO.parent / 'shared' / 'datasets' / 'coco128'
ANCHORS = '12.64,19.39, 37.88,51.48, 55.71,138.31, 126.91,78.23, 131.57,214.55, 279.92,258.87'

# The reference's training step, run by a child process inside --reference-dir: its own dataset, model, loss and
# optimizer settings (train.py: SGD momentum 0.949, weight decay 0.0005 on everything). Prints one line of JSON.
REFERENCE_STEP = r"""
import json, sys, time
import torch
import utils.datasets, utils.loss, utils.utils, model.detector
data, batch_size, workers, batches = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
cfg = utils.utils.load_datafile(data)
dataset = utils.datasets.TensorDataset(cfg['train'], cfg['width'], cfg['height'], imgaug=True)
loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=workers,
                                     collate_fn=utils.datasets.collate_fn, drop_last=True)
torch.manual_seed(0)
net = model.detector.Detector(cfg['classes'], cfg['anchor_num'], False).train()
optimizer = torch.optim.SGD(net.parameters(), lr=cfg['learning_rate'], momentum=0.949, weight_decay=0.0005)
seconds, it = [], iter(loader)
for _ in range(batches + 1):
    started = time.perf_counter()
    imgs, targets = next(it)
    preds = net(imgs.float() / 255.0)
    _, _, _, total = utils.loss.compute_loss(preds, targets, cfg, torch.device('cpu'))
    total.backward()
    optimizer.step()
    optimizer.zero_grad()
    seconds.append(time.perf_counter() - started)
print(json.dumps(dict(seconds=seconds[1:], threads=torch.get_num_threads())))
"""


def collate_float32(batch):
    images, targets = collate(batch)
    return images.float().contiguous() / 255.0, targets   # NCHW, as most trainers hand batches over


def write_split(folder: Path) -> Path:
    """coco128 train2017 with each label beside its image (symlinked images), as Yolo-FastestV2 reads them."""
    split = folder / 'train'
    split.mkdir()
    paths = []
    for image in sorted((COCO128 / 'images' / 'train2017').glob('*.jpg')):
        label = COCO128 / 'labels' / 'train2017' / (image.stem + '.txt')
        lines = [line for line in (label.read_text().splitlines() if label.exists() else []) if line.strip()]
        paths.append(str(link_labelled(image, split, lines)))
    (folder / 'train.txt').write_text('\n'.join(paths) + '\n')
    (folder / 'train_x4.txt').write_text('\n'.join(paths * 4) + '\n')   # the reference's loader runs through once
    (folder / 'coco.names').write_text('\n'.join(f'class{i}' for i in range(80)) + '\n')
    data = folder / 'coco128.data'
    data.write_text('[name]\nmodel_name=bench\n[train-configure]\nepochs=300\nsteps=150,250\nbatch_size=32\n'
                    'subdivisions=1\nlearning_rate=0.001\n[model-configure]\npre_weights=None\nclasses=80\n'
                    f'width=352\nheight=352\nanchor_num=3\nanchors={ANCHORS}\n[data-configure]\n'
                    f'train={folder / "train.txt"}\nval={folder / "train.txt"}\nnames={folder / "coco.names"}\n')
    return data


def reference_seconds(reference_dir: Path, data: Path, batch_size: int, workers: int, batches: int) -> list:
    """Seconds per batch of the reference's training step, run in a child process (one untimed warm-up batch)."""
    data = data.with_name('reference.data')
    data.write_text(data.with_name('coco128.data').read_text().replace('train.txt', 'train_x4.txt', 1))
    done = subprocess.run([sys.executable, '-c', REFERENCE_STEP, str(data), str(batch_size), str(workers),
                           str(batches)], cwd=reference_dir, env=dict(os.environ, PYTHONPATH=str(reference_dir)),
                          capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f'the reference trainer in {reference_dir} failed:\n{done.stderr[-3000:]}')
    return json.loads(done.stdout.strip().splitlines()[-1])['seconds']


class Pipeline:
    """One training setup; `step()` runs one batch (waiting for its data included) and returns the seconds taken."""

    def __init__(self, cfg, dataset, device, batch_size: int, workers: int, fast: bool, batches: int):
        torch.manual_seed(0)
        self.device, self.cuda, self.fast = device, device.type == 'cuda', fast
        self.memory_format = torch.channels_last if fast else torch.contiguous_format
        self.model = build_model(cfg, log=lambda s: None).to(device, memory_format=self.memory_format).train()
        self.loss_fn = build_loss(self.model, cfg)
        self.optimizer = torch.optim.SGD(optimizer_groups(self.model, cfg.weight_decay), lr=cfg.learning_rate,
                                         momentum=cfg.momentum, nesterov=True)
        self.amp = fast and self.cuda
        self.scaler = torch.amp.GradScaler('cuda', enabled=self.amp)
        order = [(0, i % len(dataset)) for i in range(batches * batch_size)]   # (epoch, index); coco128 again
        loader = DataLoader(dataset, batch_size=batch_size, sampler=order, num_workers=workers, drop_last=True,
                            collate_fn=collate if fast else collate_float32, pin_memory=self.amp)
        self.batches = iter(loader)

    def step(self) -> float:
        torch.backends.cudnn.benchmark = self.amp   # a process-wide switch: set for whichever pipeline runs
        if self.cuda:
            torch.cuda.synchronize()
        started = time.perf_counter()
        images, targets = next(self.batches)
        images = images.to(self.device, non_blocking=self.fast).contiguous(memory_format=self.memory_format)
        targets = targets.to(self.device)
        with torch.autocast('cuda', enabled=self.amp) if self.cuda else contextlib.nullcontext():
            outputs = self.model(images)
        loss, _ = self.loss_fn(outputs, targets)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        if self.cuda:
            torch.cuda.synchronize()
        return time.perf_counter() - started


def timed_lines(command: list, cwd: Path, log: Path, env: dict | None = None) -> tuple[float, list]:
    """Run `command`; return its wall seconds and its output lines (stdout and stderr, tqdm's redraws included),
    each with the seconds since launch it appeared at. The output is also written to `log`; a failure raises
    SystemExit with its last lines."""
    started = time.perf_counter()
    lines = []
    with subprocess.Popen(command, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          bufsize=1) as child, open(log, 'w') as out:
        for line in child.stdout:   # text mode: tqdm's carriage returns end lines too
            lines.append((time.perf_counter() - started, line.rstrip('\n')))
            out.write(line)
    if child.returncode:
        tail = '\n'.join(line for _, line in lines[-20:])   # the log's folder is temporary
        raise SystemExit(f'{" ".join(map(str, command))} failed (exit {child.returncode}):\n{tail}')
    return time.perf_counter() - started, lines


def first_time(lines: list, pattern: str) -> float:
    found = [t for t, line in lines if re.search(pattern, line)]
    if not found:
        raise SystemExit(f'no output line matched {pattern!r}')
    return found[0]


def end_to_end(args, folder: Path) -> None:
    """Our train.py and the reference's, the same epochs on the same data, one after the other."""
    data = write_split(folder)
    text = data.read_text().replace('epochs=300', f'epochs={args.epochs}')
    ours_data = folder / 'ours.data'
    ours_data.write_text(text + f'eval_interval={args.epochs}\n')
    print(f'train.py, {args.epochs} epochs of coco128 train2017 (128 images), 352x352, batch 32, 2 workers '
          f'(ours: --workers {args.workers}), {torch.get_num_threads()} torch threads')
    runs = {}
    wall, lines = timed_lines([sys.executable, str(REPO / 'train.py'), '--data', str(ours_data), '--out',
                               str(folder / 'ours'), '--workers', str(args.workers), '--device', 'cpu'],
                              REPO, folder / 'ours.log')
    with open(folder / 'ours' / 'results.csv', newline='') as f:
        epochs = [(float(r['images_per_s']) * float(r['epoch_s']), float(r['epoch_s'])) for r in csv.DictReader(f)]
    runs['ours'] = dict(wall=wall, startup=first_time(lines, rf'^epoch 1/{args.epochs}:'), epochs=epochs)
    if args.reference_dir:
        reference_data = folder / 'reference.data'
        reference_data.write_text(text)
        (args.reference_dir / 'weights').mkdir(exist_ok=True)
        wall, lines = timed_lines([sys.executable, 'train.py', '--data', str(reference_data)], args.reference_dir,
                                  folder / 'reference.log', env=dict(os.environ, PYTHONPATH=str(args.reference_dir)))
        epochs = [(float(m.group(2)), float(m.group(1))) for _, line in lines
                  if (m := re.match(r'epoch \d+ seconds ([\d.]+) images (\d+)', line))]
        runs['reference'] = dict(wall=wall, startup=first_time(lines, r'^\s*0%\|'), epochs=epochs)   # its tqdm bar
    rate = {}
    for name, run in runs.items():
        steady = run['epochs'][1:]
        rate[name] = sum(i for i, _ in steady) / sum(s for _, s in steady)
        print(f'{name:9s}: {rate[name]:6.2f} images/s after the first epoch (first epoch '
              f'{run["epochs"][0][0] / run["epochs"][0][1]:.2f}), start-up {run["startup"]:.1f} s, '
              f'whole command {run["wall"]:.1f} s')
    if 'reference' in rate:
        print(f'ours / reference: {rate["ours"] / rate["reference"]:.2f}x images/s, '
              f'{runs["reference"]["wall"] / runs["ours"]["wall"]:.2f}x less wall time (target 2x images/s)')


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--batches', type=int, default=8, help='timed batches per run (two runs per pipeline)')
    parser.add_argument('--batch-size', type=int, default=32)
    parser.add_argument('--workers', type=int, default=2)
    parser.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    parser.add_argument('--reference-dir', type=Path, help='a checkout of Yolo-FastestV2 to time in the same run')
    parser.add_argument('--end-to-end', action='store_true', help="time train.py itself (and the reference's)")
    parser.add_argument('--epochs', type=int, default=9, help='--end-to-end: epochs of each run')
    args = parser.parse_args()
    if not COCO128.is_dir():
        raise SystemExit(f'{COCO128} not found: this benchmark needs ../shared/datasets/coco128')
    if args.reference_dir and not (args.reference_dir / 'utils' / 'loss.py').exists():
        raise SystemExit(f'--reference-dir {args.reference_dir}: no utils/loss.py there (a Yolo-FastestV2 checkout?)')
    if args.end_to_end:
        with tempfile.TemporaryDirectory(prefix='trainspeed') as tmp:
            end_to_end(args, Path(tmp))
        return
    device = torch.device(args.device)
    # As train.py's Trainer does; a process-wide setting, so the naive pipeline has it too (the reference's child
    # process does not)
    keep_freed_memory()
    with tempfile.TemporaryDirectory(prefix='trainspeed') as tmp:
        cfg = load_config(write_split(Path(tmp)))
        split = load_split(cfg, 'train', verbose=False)
        dataset = TrainDataset(split, cfg, augment=True)
        uncached = TrainDataset(split, dataclasses.replace(cfg, cache='none'), augment=True)
        if 4 * len(dataset) < (args.batches + 1) * args.batch_size:   # the reference's loader reads them once
            raise SystemExit(f'{len(dataset)} images: lower --batches or --batch-size')
        print(f'yolo-fastestv2 352x352, batch {args.batch_size}, {args.workers} workers, 2 runs of {args.batches} '
              f'timed batches each, device {device} ({torch.get_num_threads()} CPU threads)')
        ours_s, naive_s, reference_s = [], [], []
        for _ in range(2):
            for times, data, fast in ((ours_s, dataset, True), (naive_s, uncached, False)):
                pipeline = Pipeline(cfg, data, device, args.batch_size, args.workers, fast=fast,
                                    batches=args.batches + 1)
                pipeline.step()   # warm-up: worker start, first allocations, cudnn autotuning
                times += [pipeline.step() for _ in range(args.batches)]
                del pipeline      # ends its workers before the next pipeline runs
            if args.reference_dir and device.type == 'cpu':
                reference_s += reference_seconds(args.reference_dir, cfg.data_path, args.batch_size, args.workers,
                                                 args.batches)
    rate = {name: args.batch_size * len(times) / sum(times)
            for name, times in (('ours', ours_s), ('naive', naive_s), ('reference', reference_s)) if times}
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    workers_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    print(f'ours     : {rate["ours"]:7.2f} images/s ({sum(ours_s) / len(ours_s):.2f} s per batch)')
    print(f'naive    : {rate["naive"]:7.2f} images/s '
          f'(float32 NCHW batches, no cache / AMP / pinning / cudnn.benchmark)')
    if 'reference' in rate:
        print(f'reference: {rate["reference"]:7.2f} images/s (Yolo-FastestV2\'s train.py step, contrast/brightness '
              f'augmentation only)')
    print(f'ours / naive = {rate["ours"] / rate["naive"]:.2f}x')
    if 'reference' in rate:
        print(f'ours / reference = {rate["ours"] / rate["reference"]:.2f}x (target 1.5x)')
    elif args.reference_dir:
        print('reference: not timed (CPU only: it is run as its train.py runs there)')
    print(f'peak RSS: main process {peak_mb:.0f} MB (both pipelines\' models and batches), '
          f'largest child {workers_mb:.0f} MB (a data worker or the reference process)')


if __name__ == '__main__':
    main()
