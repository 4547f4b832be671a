"""Parameters and compute of a model, per part (backbone, neck, head).

Convention: MACs are counted by forward hooks on every Conv2d, for one image:
    MACs = output elements x (input channels / groups) x kernel height x kernel width
Bias adds, BatchNorm, activations, upsampling and pooling are not counted (together a few percent for these
models). FLOPs = 2 x MACs. Published figures use other conventions (Ultralytics adds BatchNorm and upsampling
terms), so compare with care.

Usage:
    python3 -m model.summary --data data/coco.data        # the model that .data file describes
    python3 -m model.summary --all                        # every model at its published input size
"""
from __future__ import annotations

import argparse
import dataclasses

import torch
from torch import nn


def summarize(model: nn.Module, width: int, height: int) -> dict:
    """dict(params, macs, flops, macs_by_part) for one width x height image. The model is left as it was."""
    macs_by_part = {}

    def count(part):
        def hook(conv, inputs, output):
            per_image = output.numel() // output.shape[0]
            macs = per_image * (conv.in_channels // conv.groups) * conv.kernel_size[0] * conv.kernel_size[1]
            macs_by_part[part] = macs_by_part.get(part, 0) + macs
        return hook

    def part_of(name):
        # LeYOLO's body (backbone + FPAN neck in one module) sits in the Detector's `backbone`: report its neck apart
        return 'neck' if name.startswith('backbone.neck.') else name.split('.')[0]

    handles = [module.register_forward_hook(count(part_of(name)))
               for name, module in model.named_modules() if isinstance(module, nn.Conv2d)]
    was_training, was_export = model.training, getattr(model, 'export', False)
    try:
        model.eval()
        with torch.no_grad():
            model(torch.zeros(1, 3, height, width))
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    macs = sum(macs_by_part.values())
    params = sum(p.numel() for p in model.parameters())
    return dict(params=params, macs=macs, flops=2 * macs, macs_by_part=macs_by_part)


def format_row(name: str, width: int, height: int, summary: dict) -> str:
    parts = ', '.join(f'{part} {macs / 1e6:.1f}M' for part, macs in summary['macs_by_part'].items())
    return (f'| {name} | {width}x{height} | {summary["params"]:,} | {summary["macs"] / 1e9:.3f} | '
            f'{summary["flops"] / 1e9:.3f} | {parts} |')


HEADER = ('| model | input | params | GMACs | GFLOPs (2xMACs) | MACs by part |\n'
          '|---|---|---|---|---|---|')
# (model, head, width, height): each at the input size its authors publish
PUBLISHED_SIZES = (
    ('yolo-fastestv2', 'anchor', 352, 352),
    ('leyolo-nano', 'leyolo', 320, 320),
    ('leyolo-nano', 'leyolo', 480, 480),
    ('leyolo-small', 'leyolo', 480, 480),
    ('leyolo-small', 'leyolo', 640, 640),
    ('leyolo-medium', 'leyolo', 640, 640),
    ('leyolo-large', 'leyolo', 768, 768),
)


def main() -> None:
    from model.build import build_model
    from utils.config import Config, load_config

    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--data', help='.data file: summarise the model it describes at its width x height')
    parser.add_argument('--all', action='store_true', help='every model at its published input size (80 classes)')
    args = parser.parse_args()
    if not args.data and not args.all:
        parser.error('give --data FILE or --all')
    torch.set_num_threads(1)
    print(HEADER)
    if args.data:
        cfg = dataclasses.replace(load_config(args.data), pre_weights=None, backbone_weights=None)
        model = build_model(cfg, log=lambda *_: None)
        print(format_row(f'{cfg.model} ({cfg.head} head, {cfg.classes} classes)', cfg.width, cfg.height,
                         summarize(model, cfg.width, cfg.height)))
    if args.all:
        for name, head, width, height in PUBLISHED_SIZES:
            try:   # anchors only change the decode, not the counts
                cfg = Config(data_path=None, model=name, head=head, classes=80, width=width, height=height,
                             anchors=(0.0,) * 12)
                model = build_model(cfg, log=lambda *_: None)
            except ImportError as error:   # a model whose files have not landed yet
                print(f'| {name} | {width}x{height} | not available: {error} | | | |')
                continue
            print(format_row(f'{name} ({head} head)', width, height, summarize(model, width, height)))


if __name__ == '__main__':
    main()
