"""Parameters and compute of every model (or of one .data file's model), per part, as a markdown table.

    python3 bench/model_table.py --all                   # every model at its published input size, 80 classes
    python3 bench/model_table.py --data data/coco.data   # the model that .data file describes

Counting convention: model/summary.py.
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from model.build import build_model  # noqa: E402
from model.summary import summarize  # noqa: E402
from utils.config import Config, load_config  # noqa: E402


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
            # anchors only change the decode, not the counts
            cfg = Config(data_path=None, model=name, head=head, classes=80, width=width, height=height,
                         anchors=(0.0,) * 12)
            model = build_model(cfg, log=lambda *_: None)
            print(format_row(f'{name} ({head} head)', width, height, summarize(model, width, height)))


if __name__ == '__main__':
    main()
