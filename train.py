"""Train a detector described by a .data file.

    python3 train.py --data data/coco.data [--epochs N] [--batch-size N] [--weights W] [--resume [last.pt]]
                     [--device cpu|cuda|0] [--workers N] [--out DIR]
    torchrun --nproc_per_node 2 train.py --data data/coco.data [--sync-bn]

Writes to --out (default: the .data's `backup`, else weights/<model_name>/): last.pt every epoch, best.pt (best
mAP@0.5:0.95 of the EMA model), results.csv and results.png. Ctrl-C or SIGTERM saves last.pt before exiting;
`--resume` (without a path: <out>/last.pt) continues exactly where it stopped.
"""
import argparse
import sys
from pathlib import Path

from utils.cli import non_negative_int, positive_int, run
from utils.config import load_config
from utils.errors import ConfigError
from utils.train.checkpoint import load_checkpoint
from utils.train.trainer import TrainingInterrupted, TrainOptions, train


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--data', help='the .data file (optional with --resume: taken from the checkpoint)')
    parser.add_argument('--epochs', type=positive_int, help='override `epochs` of the .data file')
    parser.add_argument('--batch-size', type=positive_int, help='override `batch_size` (images per optimizer step)')
    parser.add_argument('--weights', type=Path, help='start from these weights (a .pth or one of our .pt)')
    parser.add_argument('--resume', nargs='?', const='', type=str, metavar='CKPT',
                        help='continue an interrupted run from CKPT (default <out>/last.pt)')
    parser.add_argument('--device', default='', help='cpu, cuda or a CUDA index (default: CUDA if available)')
    parser.add_argument('--workers', type=non_negative_int,
                        help='data loading processes (default: `workers` of the .data)')
    parser.add_argument('--out', type=Path, help='output folder (default: `backup` or weights/<model_name>/)')
    parser.add_argument('--sync-bn', action='store_true', help='DDP: synchronised BatchNorm')
    parser.add_argument('--seed', type=int, default=0)
    args = parser.parse_args(argv)
    if args.resume is None and not args.data:
        parser.error('--data is required (or --resume to continue a run)')
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    resume = None
    overrides = {}
    data = args.data
    if args.resume is not None:
        if args.resume:
            resume = Path(args.resume)
        elif args.out:
            resume = args.out / 'last.pt'
        elif data:
            cfg = load_config(data)
            resume = Path(cfg.backup or Path('weights') / cfg.model_name) / 'last.pt'
        else:
            raise ConfigError('--resume without a path needs --out or --data to find last.pt')
        checkpoint = load_checkpoint(resume)
        overrides = dict(checkpoint.get('overrides', {}))   # the same schedule as the interrupted run
        data = data or checkpoint.get('data')
        if not data:
            raise ConfigError(f'--resume {resume}: the checkpoint does not name its .data file: give --data')
        del checkpoint
    overrides.update({k: v for k, v in dict(epochs=args.epochs, batch_size=args.batch_size).items()
                      if v is not None})
    cfg = load_config(data, **overrides)
    out_dir = args.out or (resume.parent if resume else Path(cfg.backup or Path('weights') / cfg.model_name))
    options = TrainOptions(out_dir=out_dir, device=args.device, workers=args.workers, weights=args.weights,
                           resume=resume, sync_bn=args.sync_bn, seed=args.seed)
    try:
        train(cfg, options)
    except TrainingInterrupted as stop:
        print(stop, file=sys.stderr)
        return 128 + stop.signum
    return 0


if __name__ == '__main__':
    sys.exit(run(main))
