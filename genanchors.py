"""Compute anchors for a dataset with k-means (1 - IoU distance) on its label files.

    python3 genanchors.py --data data/coco.data [--update]           # list, input size and anchor count from .data
    python3 genanchors.py --traintxt train.txt --input_width 352 --input_height 352 [--num_clusters 6]
    python3 genanchors.py --traintxt train.txt --num_clusters 0      # sweep 1..10 anchors
    python3 genanchors.py --data data/coco.data --plots DIR          # also draw labels.png and batch0.jpg

Reads only label files (the images need not be present). Writes anchors{k}.txt in Yolo-FastestV2's format (line 1 the
anchors in input pixels, `w,h, w,h, ...`, sorted by area; line 2 the mean IoU) and prints, for each k, the mean IoU,
the best possible recall at IoU 0.5 and YOLOv5's ratio-4 recall. `--update` writes the anchors into the .data file
(or data.yaml), changing nothing else in it. Box sizes in pixels assume the stretch resize (`letterbox = 0`).
`--plots DIR` also checks the images and draws DIR/labels.png (classes, box centres, box sizes against the .data's
anchors and the ones just computed) and DIR/batch0.jpg (the first augmented batch `train.py --seed 0` trains on),
as train.py does in its output folder (utils/data/plots.py).
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

import numpy as np

from utils.cli import positive_int, run
from utils.data.anchors import (
    anchor_fitness,
    format_anchors,
    kmeans_anchors,
    read_box_sizes,
    update_data_file,
    write_anchor_file,
)
from utils.errors import ConfigError


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--data', type=Path, help='.data file: the train list, width, height and anchor count')
    parser.add_argument('--traintxt', type=Path, help='list file of training images, or a folder of images '
                                                      '(default: the .data file\'s train)')
    parser.add_argument('--output_dir', type=Path, default=Path('./'), help='where anchors{k}.txt go')
    parser.add_argument('--num_clusters', type=int, default=None,
                        help='number of anchors; 0 = try 1..10 (default: scales x anchor_num of the .data, else 6)')
    parser.add_argument('--input_width', type=positive_int, help='model input width (default: .data, else 352)')
    parser.add_argument('--input_height', type=positive_int,
                        help='model input height (default: .data, else 352)')
    parser.add_argument('--update', action='store_true', help='write the anchors into the --data file')
    parser.add_argument('--seed', type=int, default=0, help='random seed of the k-means++ starts')
    parser.add_argument('--restarts', type=positive_int, default=10, help='k-means runs; the best mean IoU is kept')
    parser.add_argument('--plots', type=Path, metavar='DIR',
                        help='also write DIR/labels.png and DIR/batch0.jpg (needs --data and the images)')
    args = parser.parse_args(argv)
    if args.data is None and args.traintxt is None:
        parser.error('give --data or --traintxt')
    if args.update and args.data is None:
        parser.error('--update needs --data (the file to write the anchors into)')
    if args.plots and args.data is None:
        parser.error('--plots needs --data (class names, input size and augmentation come from it)')
    if args.num_clusters is not None and args.num_clusters < 0:
        parser.error(f'--num_clusters must be 0 (sweep) or positive, got {args.num_clusters}')
    return args


def load_data_file(path: Path):
    """The Config of a .data file, without checking its anchors: they are what we are about to compute
    (a file whose anchor_num was just changed has anchors of the wrong length)."""
    # imported here, as the --data code below: a run on a list file alone starts without them (and yaml)
    from utils.config import load_config, read_data_file
    values, _ = read_data_file(path)
    if values.get('head') == 'leyolo':
        raise ConfigError(f'{path}: head = leyolo is anchor-free; it uses no anchors')
    return load_config(path, check_anchors=False)


def main(argv=None) -> int:
    args = parse_args(argv)
    cfg = None
    if args.data is not None:
        cfg = load_data_file(args.data)
    source = args.traintxt or cfg.train
    width = args.input_width or (cfg.width if cfg else 352)
    height = args.input_height or (cfg.height if cfg else 352)
    anchors_in_model = len(cfg.strides) * cfg.anchor_num if cfg else None
    k_given = args.num_clusters if args.num_clusters is not None else (anchors_in_model or 6)
    if args.update and k_given != anchors_in_model:
        raise ConfigError(f'{cfg.where("anchor_num")}: --update needs {anchors_in_model} anchors '
                          f'({len(cfg.strides)} scales x anchor_num {cfg.anchor_num}), '
                          f'not --num_clusters {k_given}')
    boxes_wh, report = read_box_sizes(source, cfg.classes if cfg else None)
    print(report)
    boxes_wh_px = boxes_wh * [width, height]
    anchor_sets = {}   # for --plots: legend label -> anchors in input pixels
    if cfg is not None and len(cfg.anchors) == 2 * (anchors_in_model or 0):
        anchor_sets['anchors in the .data'] = np.reshape(cfg.anchors, (-1, 2))
        current = anchor_fitness(boxes_wh_px, anchor_sets['anchors in the .data'])
        print(f'anchors now in {args.data}: mean IoU {current["mean_iou"]:.4f}, recall IoU>0.5 '
              f'{current["recall_iou50"]:.1%}, ratio-4 recall {current["recall_ratio4"]:.1%}')

    for k in (range(1, 11) if k_given == 0 else [k_given]):
        if k > len(boxes_wh):
            print(f'k={k}: skipped, only {len(boxes_wh)} boxes')
            continue
        anchors, _ = kmeans_anchors(boxes_wh, k, restarts=args.restarts, seed=args.seed)
        anchors_px = np.round(anchors * [width, height], 2)   # as written, so the figures describe the file
        fitness = anchor_fitness(boxes_wh_px, anchors_px)
        path = write_anchor_file(args.output_dir, anchors_px, fitness['mean_iou'])
        print(f'k={k} at {width}x{height}: {format_anchors(anchors_px)}\n'
              f'    mean IoU {fitness["mean_iou"]:.4f}, recall IoU>0.5 {fitness["recall_iou50"]:.1%}, '
              f'ratio-4 recall {fitness["recall_ratio4"]:.1%} -> {path}')
        if args.update:
            from utils.data_yaml import is_data_yaml, set_key
            if is_data_yaml(args.data):
                set_key(args.data, 'anchors', format_anchors(anchors_px))
            else:
                update_data_file(args.data, anchors_px)
            print(f'anchors written into {args.data}')
        if k == (k_given or anchors_in_model):   # the sweep draws the count the .data uses
            anchor_sets[f'k-means, k={k}'] = anchors_px
    if args.plots:
        write_plots(cfg, source, width, height, anchor_sets, args.plots)
    return 0


def write_plots(cfg, source: Path, width: int, height: int, anchor_sets: dict, out_dir: Path) -> None:
    """labels.png and batch0.jpg of the training split `source`, as train.py draws them (seed 0)."""
    from utils.data.dataset import check_split
    from utils.data.plots import plot_training_data
    from utils.data.train_data import TrainDataset
    from utils.train.schedule import epoch_indices
    # no RAM cache: only one batch is read
    cfg = dataclasses.replace(cfg, width=width, height=height, cache='none')
    split = check_split(source, cfg.classes, cfg.strict_labels, 'train', class_names=cfg.class_names,
                        input_size=(width, height))
    dataset = TrainDataset(split, cfg, augment=True, seed=0)
    first_batch = epoch_indices(len(dataset), 0, 0, 0, 1)[:max(1, cfg.batch_size // cfg.subdivisions)]
    drawn = plot_training_data(cfg, dataset, first_batch, out_dir, anchor_sets)
    print(f'training data drawn: {drawn["path"]}, {drawn["batch_path"]}')


if __name__ == '__main__':
    sys.exit(run(main))
