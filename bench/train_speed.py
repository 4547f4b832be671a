"""Training throughput: images/s of the training step (data loading + augmentation + forward + loss + backward +
SGD step) on coco128 train2017, yolo-fastestv2 at 352x352, batch 32, 2 workers, default augmentation.

    python3 bench/train_speed.py [--batches 3] [--device cpu|cuda] [--batch-size 32] [--workers 2]

Two pipelines are timed in the same run, on the same batches:
  ours   uint8 batches (4x less to move from workers and to the device), pinned memory, AMP + cudnn.benchmark on
         CUDA: what utils/trainer.py does;
  naive  float32 0..1 batches made in the workers, no pinning, no AMP, no cudnn.benchmark.
It prints images/s for both, their ratio, the ratio against the reference trainer's recorded figure
(Yolo-FastestV2's own train.py: about 25 images/s, 1.27 s per batch of 32, on its authors' GPU: a different
machine, so that ratio only means something on comparable hardware) and the peak resident memory.
The two run alternately, batch by batch (medians reported), so load from other processes hits both alike; the
first batch of each (worker start, cudnn autotuning) is not timed. On a CPU the two do the same arithmetic, so
their ratio there is about 1 and measures only the cheaper uint8 transfer.
"""
from __future__ import annotations

import argparse
import contextlib
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from model.build import build_model  # noqa: E402
from utils.config import load_config  # noqa: E402
from utils.dataset import load_split  # noqa: E402
from utils.loss import build_loss  # noqa: E402
from utils.train_data import TrainDataset, collate  # noqa: E402
from utils.schedule import optimizer_groups  # noqa: E402

COCO128 = REPO.parent / 'shared' / 'datasets' / 'coco128' / 'images' / 'train2017'
REFERENCE_IMAGES_PER_S = 32 / 1.27   # Yolo-FastestV2's train.py, recorded figure


def collate_float32(batch):
    images, targets = collate(batch)
    return images.float() / 255.0, targets


def data_file(folder: Path) -> Path:
    (folder / 'coco.names').write_text('\n'.join(f'class{i}' for i in range(80)) + '\n')
    path = folder / 'coco128.data'
    path.write_text(f'[name]\nmodel_name=bench\n[model-configure]\nmodel=yolo-fastestv2\nclasses=80\n'
                    f'width=352\nheight=352\n[data-configure]\ntrain={COCO128}\nval={COCO128}\nnames=coco.names\n')
    return path


class Pipeline:
    """One training setup; `step()` runs one batch (waiting for its data included) and returns the seconds taken."""

    def __init__(self, cfg, dataset, device, batch_size: int, workers: int, fast: bool):
        torch.manual_seed(0)
        self.device, self.cuda, self.fast = device, device.type == 'cuda', fast
        self.model = build_model(cfg, log=lambda s: None).to(device).train()
        self.loss_fn = build_loss(self.model, cfg)
        self.optimizer = torch.optim.SGD(optimizer_groups(self.model, cfg.weight_decay), lr=cfg.learning_rate,
                                         momentum=cfg.momentum, nesterov=True)
        self.amp = fast and self.cuda
        self.scaler = torch.amp.GradScaler('cuda', enabled=self.amp)
        loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=workers, drop_last=True,
                            collate_fn=collate if fast else collate_float32, pin_memory=self.amp)
        self.batches = iter(loader)

    def step(self) -> float:
        torch.backends.cudnn.benchmark = self.amp   # a process-wide switch: set for whichever pipeline runs
        if self.cuda:
            torch.cuda.synchronize()
        started = time.perf_counter()
        images, targets = next(self.batches)
        images, targets = images.to(self.device, non_blocking=self.fast), targets.to(self.device)
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--batches', type=int, default=3, help='timed batches per pipeline (after one warm-up)')
    parser.add_argument('--batch-size', type=int, default=32)
    parser.add_argument('--workers', type=int, default=2)
    parser.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    args = parser.parse_args()
    if not COCO128.is_dir():
        raise SystemExit(f'{COCO128} not found: this benchmark needs ../shared/datasets/coco128')
    device = torch.device(args.device)
    with tempfile.TemporaryDirectory() as tmp:
        cfg = load_config(data_file(Path(tmp)))
        dataset = TrainDataset(load_split(cfg, 'train', verbose=False), cfg, augment=True)
        needed = (args.batches + 1) * args.batch_size
        if len(dataset) < needed:
            raise SystemExit(f'{len(dataset)} images, {needed} needed: lower --batches or --batch-size')
        print(f'yolo-fastestv2 352x352, batch {args.batch_size}, {args.workers} workers, {args.batches} timed '
              f'batches, device {device} ({torch.get_num_threads()} CPU threads)')
        ours = Pipeline(cfg, dataset, device, args.batch_size, args.workers, fast=True)
        naive = Pipeline(cfg, dataset, device, args.batch_size, args.workers, fast=False)
        ours.step(), naive.step()   # warm-up: worker start, first allocations, cudnn autotuning
        # Alternate the two, batch by batch, so a change in machine load hits both alike; take medians.
        ours_s, naive_s = [], []
        for _ in range(args.batches):
            ours_s.append(ours.step())
            naive_s.append(naive.step())
        del ours, naive   # shuts the workers down, so their peak memory is counted below
    ours_rate = args.batch_size / statistics.median(ours_s)
    naive_rate = args.batch_size / statistics.median(naive_s)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    workers_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    print(f'ours : {ours_rate:7.2f} images/s (median {statistics.median(ours_s):.2f} s per batch)')
    print(f'naive: {naive_rate:7.2f} images/s (float32 batches, no AMP / pinning / cudnn.benchmark)')
    print(f'ours / naive = {ours_rate / naive_rate:.2f}x')
    print(f'ours / reference trainer ({REFERENCE_IMAGES_PER_S:.1f} images/s recorded on its authors\' GPU) = '
          f'{ours_rate / REFERENCE_IMAGES_PER_S:.2f}x')
    print(f'peak RSS: main process {peak_mb:.0f} MB (both pipelines\' models and batches), '
          f'largest worker {workers_mb:.0f} MB')


if __name__ == '__main__':
    main()
