"""Build a small real one-class dataset from ../shared coco128: 160 train / 40 val images, class `person`.

    .venv/bin/python bench/person_dataset.py --out /tmp/person200 [--side 352]

The training-quality comparison (bench/vs_reference.py) needs "a small real dataset, one class": this is it, made
the same way every time. coco128 holds 256 images (128 of COCO train2017, 128 of val2017); 134 of them show a person.
    val   = 40 of the 73 val2017 images with a person (seeded choice), every COCO box but people's dropped: 210 people
    train = the other 94 images with a person, from both halves, plus 66 images without one (backgrounds, as real
            one-class datasets have), 160 in all: 394 people
Layout under --out (Yolo-FastestV2's and Darknet's convention: the label beside its image):
    train/NAME.jpg (a symlink to ../shared), train/NAME.txt, val/..., train.txt, val.txt (absolute image paths),
    person.names, person.data (Yolo-FastestV2 INI: 352x352, anchors from k-means on the train boxes, lr 0.001,
    batch 32, 100 epochs, steps 50,80, backbone_weights = the ImageNet ShuffleNetV2-0.5x backbone).
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


def person_boxes(label_path: Path) -> list[str]:
    """The person lines of a COCO Darknet label file, relabelled as class 0."""
    if not label_path.exists():
        return []
    lines = [line.split() for line in label_path.read_text().splitlines() if line.strip()]
    return ['0 ' + ' '.join(parts[1:5]) for parts in lines if int(parts[0]) == PERSON]


def choose_split(seed: int) -> tuple[list, list]:
    """(train, val) lists of (image path, person label lines)."""
    rng = np.random.default_rng(seed)
    with_person, without = {'train2017': [], 'val2017': []}, []
    for half in ('train2017', 'val2017'):
        for image in sorted((COCO128 / 'images' / half).glob('*.jpg')):
            boxes = person_boxes(COCO128 / 'labels' / half / (image.stem + '.txt'))
            (with_person[half] if boxes else without).append((image, boxes))
    val_pick = set(rng.choice(len(with_person['val2017']), NUM_VAL, replace=False).tolist())
    val = [item for i, item in enumerate(with_person['val2017']) if i in val_pick]
    train = with_person['train2017'] + [item for i, item in enumerate(with_person['val2017']) if i not in val_pick]
    backgrounds = NUM_TRAIN - len(train)
    if backgrounds < 0 or backgrounds > len(without):
        raise SystemExit(f'coco128 at {COCO128} does not hold the expected images ({len(train)} with a person)')
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


def build(out: Path, side: int = 352, epochs: int = 100, seed: int = 0) -> Path:
    """Write the dataset and its .data file under `out`; returns the .data path."""
    if not COCO128.is_dir():
        raise SystemExit(f'{COCO128} is missing: this dataset is cut from ../shared coco128')
    if '.' in str(out.resolve()):
        raise SystemExit(f'{out.resolve()}: pick a folder without a dot in its path (see the module docstring)')
    out.mkdir(parents=True, exist_ok=True)
    train, val = choose_split(seed)
    train_list, val_list = write_split(out, 'train', train), write_split(out, 'val', val)
    (out / 'person.names').write_text('person\n')
    wh = np.array([[float(v) for v in line.split()[3:5]] for _, boxes in train for line in boxes]) * side
    anchors_px, _ = kmeans_anchors(wh, 6, seed=seed)
    data = out / 'person.data'
    data.write_text('\n'.join([
        '[name]', 'model_name=person200',
        '[train-configure]', f'epochs={epochs}', 'steps=50,80', 'batch_size=32', 'subdivisions=1',
        'learning_rate=0.001',
        '[model-configure]', f'backbone_weights={BACKBONE / "shufflenetv2-0.5x-imagenet-backbone.pth"}', 'classes=1',
        f'width={side}',
        f'height={side}', 'anchor_num=3', f'anchors={format_anchors(anchors_px)}',
        '[data-configure]', f'train={train_list}', f'val={val_list}', f'names={out / "person.names"}', '']))
    print(f'{data}: {len(train)} train images ({sum(len(b) for _, b in train)} people, '
          f'{sum(not b for _, b in train)} backgrounds), {len(val)} val images ({sum(len(b) for _, b in val)} people)')
    return data


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--out', type=Path, required=True)
    parser.add_argument('--side', type=int, default=352)
    parser.add_argument('--epochs', type=int, default=100)
    parser.add_argument('--seed', type=int, default=0)
    args = parser.parse_args()
    build(args.out, args.side, args.epochs, args.seed)


if __name__ == '__main__':
    main()
