"""Build small real datasets from ../shared coco128: 160 train / 40 val images of chosen COCO classes.

    .venv/bin/python bench/person_dataset.py --out /tmp/person200 [--side 352]        # one class: person
    .venv/bin/python bench/person_dataset.py --out /tmp/street4 --classes person,car,chair,cup --name street4

The training-quality benchmarks need small real datasets made the same way every time: person200 (one class) and
street4 (four classes, person-heavy as street and indoor photos are). coco128 holds 256 images (128 of COCO
train2017, 128 of val2017); 134 of them show a person.
    val   = 40 of the val2017 images showing one of the classes (seeded choice), every other class's box dropped
            (person200: 210 people)
    train = the other images showing one of the classes, from both halves, topped up to 160 with images showing
            none (backgrounds, as real datasets have) (person200: 94 + 66 backgrounds, 394 people)
Classes are renumbered 0..N-1 in the order given.
Layout under --out (Yolo-FastestV2's and Darknet's convention: the label beside its image):
    train/NAME.jpg (a symlink to ../shared), train/NAME.txt, val/..., train.txt, val.txt (absolute image paths),
    NAME.names, NAME.data (Yolo-FastestV2 INI: 352x352, anchors from k-means on the train boxes, lr 0.001,
    batch 32, 100 epochs, steps 50,80, backbone_weights = the ImageNet ShuffleNetV2-0.5x backbone); NAME is
    `person` unless --name says otherwise.
Keep --out free of dots: Yolo-FastestV2's own dataset code finds a label by cutting the image path at its first '.'.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from utils.data.anchors import format_anchors, kmeans_anchors  # noqa: E402

COCO128 = REPO.parent / 'shared' / 'datasets' / 'coco128'
BACKBONE = REPO.parent / 'shared' / 'weights' / 'yolo-fastestv2'
PERSON = 0
NUM_TRAIN, NUM_VAL = 160, 40


def class_boxes(label_path: Path, class_ids: list) -> list[str]:
    """The lines of a COCO Darknet label file whose class is in `class_ids`, renumbered by position there."""
    if not label_path.exists():
        return []
    lines = [line.split() for line in label_path.read_text().splitlines() if line.strip()]
    return [f'{class_ids.index(int(parts[0]))} ' + ' '.join(parts[1:5]) for parts in lines
            if int(parts[0]) in class_ids]


def person_boxes(label_path: Path) -> list[str]:
    """The person lines of a COCO Darknet label file, relabelled as class 0."""
    return class_boxes(label_path, [PERSON])


def choose_split(seed: int, class_ids: list) -> tuple[list, list]:
    """(train, val) lists of (image path, label lines)."""
    rng = np.random.default_rng(seed)
    showing, without = {'train2017': [], 'val2017': []}, []
    for half in ('train2017', 'val2017'):
        for image in sorted((COCO128 / 'images' / half).glob('*.jpg')):
            boxes = class_boxes(COCO128 / 'labels' / half / (image.stem + '.txt'), class_ids)
            (showing[half] if boxes else without).append((image, boxes))
    val_pick = set(rng.choice(len(showing['val2017']), NUM_VAL, replace=False).tolist())
    val = [item for i, item in enumerate(showing['val2017']) if i in val_pick]
    train = showing['train2017'] + [item for i, item in enumerate(showing['val2017']) if i not in val_pick]
    backgrounds = NUM_TRAIN - len(train)
    if backgrounds < 0 or backgrounds > len(without):
        raise SystemExit(f'coco128 at {COCO128}: {len(train)} train images show the classes, '
                         f'more than the {NUM_TRAIN} a set holds')
    background_pick = rng.choice(len(without), backgrounds, replace=False)
    train += [without[i] for i in sorted(background_pick.tolist())]
    return train, val


def link_labelled(image: Path, folder: Path, label_lines: list) -> Path:
    """`image` symlinked into `folder` with its Darknet label file beside it (Yolo-FastestV2's layout); the link."""
    link = folder / image.name
    if link.is_symlink() or link.exists():
        link.unlink()
    os.symlink(image.resolve(), link)
    (folder / (image.stem + '.txt')).write_text(''.join(line + '\n' for line in label_lines))
    return link


def write_split(out: Path, name: str, items: list) -> Path:
    folder = out / name
    folder.mkdir(parents=True, exist_ok=True)
    paths = [str(link_labelled(image, folder, boxes)) for image, boxes in items]
    list_file = out / f'{name}.txt'
    list_file.write_text('\n'.join(paths) + '\n')
    return list_file


def build(out: Path, side: int = 352, epochs: int = 100, seed: int = 0, classes: tuple = ('person',),
          name: str = 'person') -> Path:
    """Write the dataset and its .data file under `out`; returns the .data path."""
    if not COCO128.is_dir():
        raise SystemExit(f'{COCO128} is missing: this dataset is cut from ../shared coco128')
    if '.' in str(out.resolve()):
        raise SystemExit(f'{out.resolve()}: pick a folder without a dot in its path (see the module docstring)')
    out.mkdir(parents=True, exist_ok=True)
    coco_names = (REPO / 'data' / 'coco.names').read_text().splitlines()
    unknown = [c for c in classes if c not in coco_names]
    if unknown:
        raise SystemExit(f'not COCO classes: {", ".join(unknown)} (see data/coco.names)')
    train, val = choose_split(seed, [coco_names.index(c) for c in classes])
    train_list, val_list = write_split(out, 'train', train), write_split(out, 'val', val)
    (out / f'{name}.names').write_text(''.join(c + '\n' for c in classes))
    wh = np.array([[float(v) for v in line.split()[3:5]] for _, boxes in train for line in boxes]) * side
    anchors_px, _ = kmeans_anchors(wh, 6, seed=seed)
    data = out / f'{name}.data'
    data.write_text('\n'.join([
        '[name]', f'model_name={out.name}',
        '[train-configure]', f'epochs={epochs}', 'steps=50,80', 'batch_size=32', 'subdivisions=1',
        'learning_rate=0.001',
        '[model-configure]', f'backbone_weights={BACKBONE / "shufflenetv2-0.5x-imagenet-backbone.pth"}',
        f'classes={len(classes)}',
        f'width={side}',
        f'height={side}', 'anchor_num=3', f'anchors={format_anchors(anchors_px)}',
        '[data-configure]', f'train={train_list}', f'val={val_list}', f'names={out / f"{name}.names"}', '']))
    print(f'{data}: {len(train)} train images ({sum(len(b) for _, b in train)} boxes, '
          f'{sum(not b for _, b in train)} backgrounds), {len(val)} val images ({sum(len(b) for _, b in val)} boxes)')
    return data


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--out', type=Path, required=True)
    parser.add_argument('--side', type=int, default=352)
    parser.add_argument('--epochs', type=int, default=100)
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--classes', default='person', help='comma-separated COCO class names (default: person)')
    parser.add_argument('--name', default='person', help='names the .data and .names files')
    args = parser.parse_args()
    build(args.out, args.side, args.epochs, args.seed, tuple(args.classes.split(',')), args.name)


if __name__ == '__main__':
    main()
