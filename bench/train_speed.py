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
The first batch (worker start, cudnn autotuning) is not timed.
"""
from __future__ import annotations

import argparse
import resource
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
from utils.trainer import optimizer_groups  # noqa: E402

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


def time_pipeline(cfg, dataset, device, batches: int, batch_size: int, workers: int, fast: bool) -> float:
    torch.manual_seed(0)
    model = build_model(cfg, log=lambda s: None).to(device).train()
    loss_fn = build_loss(model, cfg)
    optimizer = torch.optim.SGD(optimizer_groups(model, cfg.weight_decay), lr=cfg.learning_rate,
                                momentum=cfg.momentum, nesterov=True)
    cuda = device.type == 'cuda'
    torch.backends.cudnn.benchmark = fast and cuda
    amp = fast and cuda
    scaler = torch.amp.GradScaler('cuda', enabled=amp)
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=workers, drop_last=True,
                        collate_fn=collate if fast else collate_float32, pin_memory=fast and cuda)
    images_done, started = 0, None
    for i, (images, targets) in enumerate(loader):
        if i == 1:   # after the warm-up batch
            if cuda:
                torch.cuda.synchronize()
            started = time.perf_counter()
        if i == batches + 1:
            break
        images, targets = images.to(device, non_blocking=fast), targets.to(device)
        with torch.autocast('cuda', enabled=amp) if cuda else torch.autocast('cpu', enabled=False):
            outputs = model(images)
        loss, _ = loss_fn(outputs, targets)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)
        if i >= 1:
            images_done += len(images)
    if cuda:
        torch.cuda.synchronize()
    if started is None or images_done == 0:
        raise SystemExit(f'not enough images for {batches} timed batches of {batch_size} (plus one warm-up)')
    return images_done / (time.perf_counter() - started)


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
        ours = time_pipeline(cfg, dataset, device, args.batches, args.batch_size, args.workers, fast=True)
        naive = time_pipeline(cfg, dataset, device, args.batches, args.batch_size, args.workers, fast=False)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    workers_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    print(f'ours : {ours:7.2f} images/s ({args.batch_size / ours:.2f} s per batch)')
    print(f'naive: {naive:7.2f} images/s (float32 batches, no AMP / pinning / cudnn.benchmark)')
    print(f'ours / naive = {ours / naive:.2f}x')
    print(f'ours / reference trainer ({REFERENCE_IMAGES_PER_S:.1f} images/s recorded on its authors\' GPU) = '
          f'{ours / REFERENCE_IMAGES_PER_S:.2f}x')
    print(f'peak RSS: main process {peak_mb:.0f} MB, largest worker {workers_mb:.0f} MB')


if __name__ == '__main__':
    main()
