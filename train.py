"""Train a detector described by a .data file.

    python3 train.py --data data/coco.data [--epochs N] [--batch-size N] [--weights W] [--resume [last.pt]]
                     [--device cpu|cuda|0] [--workers N] [--out DIR] [--teacher T]
    torchrun --nproc_per_node 2 train.py --data data/coco.data [--sync-bn]

Writes to --out (default: the .data's `backup`, else weights/<model_name>/): last.pt every epoch, best.pt (best
mAP@0.5:0.95 of the EMA model), results.csv and results.png. Ctrl-C or SIGTERM saves last.pt before exiting;
`--resume` (without a path: <out>/last.pt) continues exactly where it stopped.
"""
import argparse
import sys
from pathlib import Path

import tinydet
from utils.cli import non_negative_int, positive_int, run
from utils.train.trainer import TrainingInterrupted


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
    parser.add_argument('--teacher', type=Path, metavar='T',
                        help='distil from this model: override `teacher_weights` (our checkpoint or a released file)')
    args = parser.parse_args(argv)
    if args.resume is None and not args.data:
        parser.error('--data is required (or --resume to continue a run)')
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        tinydet.train(args.data, out=args.out, device=args.device, workers=args.workers, weights=args.weights,
                      seed=args.seed, teacher=args.teacher, sync_bn=args.sync_bn,
                      resume=None if args.resume is None else (args.resume or True),
                      epochs=args.epochs, batch_size=args.batch_size)
    except TrainingInterrupted as stop:
        print(stop, file=sys.stderr)
        return 128 + stop.signum
    return 0


if __name__ == '__main__':
    sys.exit(run(main))
