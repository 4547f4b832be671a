"""Where a steady-state training step's CPU time goes: train.py's own Trainer on coco128 (yolo-fastestv2 352x352,
batch 32, 2 workers, full augmentation, RAM cache), against the limit the model itself sets on this machine.

    python3 bench/train_profile.py [--epochs 2] [--top 25] [--alternatives] [--teacher T [--teacher-size 256]]
    python3 bench/train_profile.py --data demo/sample/sample.data     # any .data instead, as its own keys say

It prints, for the same process and the same batch size:
  start-up   seconds from the process's start to the .data read (interpreter and imports) and of building the
             Trainer for a new run, with the calls inside Trainer() that took longest (cProfile, cumulative);
  limit      the model's forward + backward alone on one fixed batch (no data, no loss), then + the loss, then
             + the SGD step and the EMA: images/s of each, which no data pipeline can beat;
  train      the Trainer's own train_one_epoch over epochs of coco128 train2017 read 4 times (16 batches), after
             one warm-up epoch: images/s, and the CPU seconds of the main process and of each data worker over
             the timed epochs against their wall seconds (what the 2 cores did);
  profile    one more epoch under torch.profiler: the ops with the most self CPU time in the main process,
             and the time spent waiting for batches (the DataLoader's next).
With --alternatives, the limit's '+ loss' rate is also measured for two other ways to run the same model: CPU
autocast to bfloat16 (fast only where the CPU has bfloat16 instructions) and torch.compile (its compile time
printed apart). With --teacher (a model of coco128's 80 classes) the Trainer distils from it
(utils/train/distill.py): train and profile then show what the teacher's lesson costs; the limit stays the
student's alone.
"""
from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import re
import resource
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from model.build import build_model  # noqa: E402
from utils.config import load_config  # noqa: E402
from utils.loss import build_loss  # noqa: E402
from utils.train.ema import ModelEMA  # noqa: E402
from utils.train.schedule import build_optimizer  # noqa: E402
from utils.train.trainer import MEMORY_FORMAT, Trainer, TrainOptions  # noqa: E402

COCO128 = REPO.parent / 'shared' / 'datasets' / 'coco128'
TICKS = os.sysconf('SC_CLK_TCK')


def write_data(folder: Path, teacher: Path | None, teacher_size: int | None) -> Path:
    images = sorted(str(p) for p in (COCO128 / 'images' / 'train2017').glob('*.jpg'))
    (folder / 'train_x4.txt').write_text('\n'.join(images * 4) + '\n')
    data = folder / 'coco128.data'
    data.write_text(f'classes=80\ntrain={folder / "train_x4.txt"}\nval={COCO128 / "images" / "val2017"}\n'
                    f'names={REPO / "data" / "coco.names"}\nwidth=352\nheight=352\nbatch_size=32\n'
                    'epochs=300\nsteps=150,250\n' + (f'teacher_weights={teacher.resolve()}\n' if teacher else '')
                    + (f'teacher_width={teacher_size}\nteacher_height={teacher_size}\n' if teacher_size else ''))
    return data


def process_age_s() -> float:
    """Seconds since this process started (its starttime in /proc, against the uptime): the interpreter's own
    start-up and every import included, as a user's `python3 train.py` pays them."""
    start_ticks = int(Path('/proc/self/stat').read_text().rsplit(')', 1)[1].split()[19])
    return float(Path('/proc/uptime').read_text().split()[0]) - start_ticks / TICKS


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process, from /proc (children not included)."""
    fields = Path(f'/proc/{pid}/stat').read_text().rsplit(')', 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def limit_rates(cfg, images: torch.Tensor, targets: torch.Tensor, steps: int) -> dict:
    """images/s of the model's training work alone, on one fixed batch: forward + backward, + loss, + SGD + EMA."""
    torch.manual_seed(0)
    model = build_model(cfg, log=lambda s: None).to(memory_format=MEMORY_FORMAT).train()
    loss_fn = build_loss(model, cfg)
    optimizer = build_optimizer(model, cfg)
    ema = ModelEMA(model)
    images = images.contiguous(memory_format=MEMORY_FORMAT)

    def forward_backward():
        outputs = model(images)
        sum(o.float().sum() for level in outputs for o in level if o is not None).backward()

    def with_loss():
        loss, _ = loss_fn(model(images), targets)
        loss.backward()

    def full_step():
        with_loss()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        ema.update(model)

    return timed_rates({'forward + backward': forward_backward, '+ loss': with_loss, '+ SGD + EMA': full_step},
                       model, len(images), steps)


def timed_rates(steps_by_name: dict, model, batch: int, steps: int) -> dict:
    rates = {}
    for name, step in steps_by_name.items():
        step()   # warm-up
        model.zero_grad(set_to_none=True)
        started = time.perf_counter()
        for _ in range(steps):
            step()
            model.zero_grad(set_to_none=True)
        rates[name] = steps * batch / (time.perf_counter() - started)
    return rates


def alternative_rates(cfg, images: torch.Tensor, targets: torch.Tensor, steps: int) -> dict:
    """images/s of forward + loss + backward run three ways on the same batch: as train.py runs it (eager, float32),
    under CPU autocast to bfloat16, and compiled by torch.compile (whose first call compiles: its seconds apart)."""
    torch.manual_seed(0)
    model = build_model(cfg, log=lambda s: None).to(memory_format=MEMORY_FORMAT).train()
    loss_fn = build_loss(model, cfg)
    images = images.contiguous(memory_format=MEMORY_FORMAT)

    def step_of(net, bfloat16=False):
        def step():
            with torch.autocast('cpu', dtype=torch.bfloat16, enabled=bfloat16):
                outputs = net(images)
            loss, _ = loss_fn(outputs, targets)
            loss.backward()
        return step

    compiled = torch.compile(model)
    started = time.perf_counter()
    step_of(compiled)()
    compile_s = time.perf_counter() - started
    model.zero_grad(set_to_none=True)
    rates = timed_rates({'eager float32': step_of(model), 'autocast bfloat16': step_of(model, bfloat16=True),
                         'torch.compile': step_of(compiled)}, model, len(images), steps)
    rates['torch.compile: first call s'] = compile_s
    return rates


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--epochs', type=int, default=2, help='timed epochs (16 batches each) after the warm-up one')
    parser.add_argument('--workers', type=int, default=2)
    parser.add_argument('--limit-steps', type=int, default=8)
    parser.add_argument('--top', type=int, default=25, help='ops listed from the profile')
    parser.add_argument('--alternatives', action='store_true', help='also time bfloat16 autocast and torch.compile')
    parser.add_argument('--teacher', type=Path, help='distil from this checkpoint (teacher_weights)')
    parser.add_argument('--teacher-size', type=int, help="the teacher's input side (teacher_width, teacher_height)")
    parser.add_argument('--data', type=Path, help='profile this .data (its model, size, batch and train split) '
                                                  'instead of coco128; --teacher does not apply')
    args = parser.parse_args()
    if args.data is None and not COCO128.is_dir():
        raise SystemExit(f'{COCO128} not found: this benchmark needs ../shared/datasets/coco128')
    with tempfile.TemporaryDirectory(prefix='trainprofile') as tmp:
        cfg = load_config(args.data or write_data(Path(tmp), args.teacher, args.teacher_size))
        imported_s = process_age_s()
        started = time.perf_counter()
        with cProfile.Profile() as startup:
            trainer = Trainer(cfg, TrainOptions(out_dir=Path(tmp) / 'run', device='cpu', workers=args.workers), 0, 1,
                              0)
        print(f'start-up: process start to the .data read {imported_s:.2f} s, Trainer() '
              f'{time.perf_counter() - started:.2f} s (a new run: label '
              f'checks, labels.png and batch0.jpg, the optimizer); the calls inside Trainer() that took longest:')
        stats = pstats.Stats(startup)
        stats.sort_stats('cumulative').print_stats(re.escape(str(REPO)) + r'/(utils|model)/|optim/optimizer\.py', 12)
        print(f'torch threads {torch.get_num_threads()}, interop {torch.get_num_interop_threads()}, '
              f'{args.workers} workers, {len(trainer.dataset)} images per epoch, batch {cfg.batch_size}')
        trainer.train_one_epoch(0)   # forks the workers; the first batches pay for it
        workers = [w.pid for w in trainer.loader._iterator._workers]
        main_before = resource.getrusage(resource.RUSAGE_SELF)
        workers_before = [cpu_seconds(pid) for pid in workers]
        started = time.perf_counter()
        images = 0
        for epoch in range(1, 1 + args.epochs):
            stats = trainer.train_one_epoch(epoch)
            images += round(stats['images_per_s'] * stats['epoch_s'])
        wall = time.perf_counter() - started
        main_after = resource.getrusage(resource.RUSAGE_SELF)
        main_cpu = (main_after.ru_utime + main_after.ru_stime) - (main_before.ru_utime + main_before.ru_stime)
        workers_cpu = [cpu_seconds(pid) - before for pid, before in zip(workers, workers_before)]
        print(f'\ntrain: {images / wall:.2f} images/s over {args.epochs} epochs ({wall:.1f} s wall)')
        print(f'  CPU seconds: main {main_cpu:.1f} ({main_cpu / wall:.2f} cores), workers '
              + ', '.join(f'{c:.1f}' for c in workers_cpu) + f' ({sum(workers_cpu) / wall:.2f} cores); '
              f'{(main_cpu + sum(workers_cpu)) / wall:.2f} of {os.cpu_count()} cores busy')
        print(f'  per image: main {1000 * main_cpu / images:.1f} ms CPU, workers '
              f'{1000 * sum(workers_cpu) / images:.1f} ms CPU')

        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profile:
            trainer.train_one_epoch(1 + args.epochs)
        print(f'\nprofile of one more epoch (main process), top {args.top} ops by self CPU time:')
        print(profile.key_averages().table(sort_by='self_cpu_time_total', row_limit=args.top,
                                           max_name_column_width=60))

        batch_images, batch_targets = next(iter(trainer.loader))
        trainer._end_workers()
        print(f'limit: the model alone on one batch of {len(batch_images)}, {args.limit_steps} steps each, '
              f'{torch.get_num_threads()} threads, no data workers running')
        for name, rate in limit_rates(cfg, batch_images, batch_targets, args.limit_steps).items():
            print(f'  {name:20s} {rate:7.2f} images/s')
        if args.alternatives:
            print('alternatives: forward + loss + backward, the same batch and steps')
            for name, value in alternative_rates(cfg, batch_images, batch_targets, args.limit_steps).items():
                print(f'  {name:28s} {value:7.2f}' + ('' if name.endswith(' s') else ' images/s'))


if __name__ == '__main__':
    main()
