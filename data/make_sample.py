"""Generate the sample dataset: small images of 4 shape classes on textured backgrounds, in Darknet's layout.

    python3 data/make_sample.py [--out data/sample] [--seed 0] [--train 300] [--val 100] [--size 160]

Writes into --out:
    images/{train,val}/NNNNNN.jpg, labels/{train,val}/NNNNNN.txt   (Darknet's mirror layout)
    train.txt, val.txt (image paths relative to --out), sample.names, sample.data (Yolo-FastestV2 INI, with
    anchors from k-means on the generated train boxes)

The images are built so a tiny detector learns them in minutes on a CPU: 0 to 4 shapes each (about 5 % are
backgrounds), 14 to 64 pixels, non-overlapping, in saturated colours on muted gradients with noise and stray lines
(so the model must learn shape, not just "a bright blob"). The same seed gives byte-identical labels and lists.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from utils.data.anchors import format_anchors, kmeans_anchors  # noqa: E402

CLASS_NAMES = ('circle', 'square', 'triangle', 'cross')
NUM_ANCHORS = 6   # yolo-fastestv2: 2 scales x anchor_num 3


def draw_background(rng: np.random.Generator, size: int) -> np.ndarray:
    """A muted two-colour gradient in a random direction, plus noise and a few thin lines."""
    start, end = rng.uniform(40, 200, 3), rng.uniform(40, 200, 3)
    angle = rng.uniform(0, 2 * np.pi)
    ys, xs = np.mgrid[0:size, 0:size] / (size - 1)
    t = ((xs - 0.5) * np.cos(angle) + (ys - 0.5) * np.sin(angle)) / np.sqrt(2) + 0.5
    image = start + (end - start) * t[..., None]
    image += rng.normal(0, rng.uniform(3, 15), image.shape)
    image = np.clip(image, 0, 255).astype(np.uint8)
    for _ in range(rng.integers(2, 8)):
        p1, p2 = rng.integers(0, size, 2), rng.integers(0, size, 2)
        colour = tuple(int(c) for c in rng.uniform(0, 255, 3))
        cv2.line(image, (int(p1[0]), int(p1[1])), (int(p2[0]), int(p2[1])), colour, int(rng.integers(1, 3)),
                 cv2.LINE_AA)
    return image


def draw_shape(image: np.ndarray, class_id: int, box: tuple, colour: tuple) -> None:
    """Fill the shape of `class_id` so that it touches every side of `box` (x1, y1, x2, y2, inclusive pixels)."""
    x1, y1, x2, y2 = box
    w, h = x2 - x1 + 1, y2 - y1 + 1
    if class_id == 0:     # circle (an ellipse when the box is not square)
        cv2.ellipse(image, (((x1 + x2) / 2, (y1 + y2) / 2), (w - 1, h - 1), 0), colour, -1)
    elif class_id == 1:   # square (a rectangle when the box is not square)
        cv2.rectangle(image, (x1, y1), (x2, y2), colour, -1)
    elif class_id == 2:   # triangle, apex up
        points = np.array([[(x1 + x2) // 2, y1], [x2, y2], [x1, y2]], np.int32)
        cv2.fillPoly(image, [points], colour)
    else:                 # cross (a plus sign), arms a third of the box thick
        tw, th = max(w // 3, 2), max(h // 3, 2)
        cx, cy = x1 + (w - tw) // 2, y1 + (h - th) // 2
        cv2.rectangle(image, (cx, y1), (cx + tw - 1, y2), colour, -1)
        cv2.rectangle(image, (x1, cy), (x2, cy + th - 1), colour, -1)


def make_image(rng: np.random.Generator, size: int) -> tuple[np.ndarray, list]:
    """One image and its labels [(class, cx, cy, w, h) normalised]."""
    image = draw_background(rng, size)
    count = 0 if rng.random() < 0.05 else int(rng.integers(1, 5))
    boxes, labels = [], []
    for _ in range(count):
        for _attempt in range(30):   # place without overlap; give up on this shape if the image is full
            class_id = int(rng.integers(len(CLASS_NAMES)))
            side = rng.uniform(14, 64)
            aspect = 1.0 if class_id == 0 and rng.random() < 0.5 else rng.uniform(0.7, 1.4)
            w, h = int(round(min(side * np.sqrt(aspect), size))), int(round(min(side / np.sqrt(aspect), size)))
            x1, y1 = int(rng.integers(0, size - w + 1)), int(rng.integers(0, size - h + 1))
            box = (x1, y1, x1 + w - 1, y1 + h - 1)
            if all(box[2] + 3 < b[0] or b[2] + 3 < box[0] or box[3] + 3 < b[1] or b[3] + 3 < box[1] for b in boxes):
                break
        else:
            continue
        hue = int(rng.integers(0, 180))
        colour_hsv = np.uint8([[[hue, rng.integers(170, 256), rng.integers(150, 256)]]])
        colour = tuple(int(c) for c in cv2.cvtColor(colour_hsv, cv2.COLOR_HSV2BGR)[0, 0])
        draw_shape(image, class_id, box, colour)
        boxes.append(box)
        # The shape covers pixels x1..x2 inclusive, i.e. the continuous span [x1, x2 + 1).
        labels.append((class_id, (x1 + w / 2) / size, (y1 + h / 2) / size, w / size, h / size))
    return image, labels


def data_file_text(anchors_px: np.ndarray, size: int, seed: int, prefix: str = '') -> str:
    """The sample's .data file; `prefix` is the dataset folder as seen from where the .data file lives."""
    first_run = f'# Generate the images first: python3 data/make_sample.py --seed {seed}\n' if prefix else ''
    return f"""# The generated sample dataset (data/make_sample.py --seed {seed}): 4 shape classes, {size}x{size} px.
{first_run}[name]
model_name=sample

[train-configure]
epochs=40
steps=30,36
# From scratch the optimizer steps are what is short: on a CPU an image costs about the same in any batch, so batch 8
# takes 4x the steps of batch 32 in the same time (docs/benchmarks.md, "The sample dataset").
batch_size=8
subdivisions=1
# 10x a fine-tuning lr: this trains from scratch (no pretrained backbone) on a small set, where 0.001 learns little
# in 40 epochs.
learning_rate=0.01
warmup_epochs=1
eval_interval=10
# 10x the default class weight: at 0.005 the classes of a model trained from scratch stay near chance for all 40
# epochs; the default suits fine-tuning trained weights, which a larger weight wrecks.
anchor_cls_gain=0.05

[model-configure]
model=yolo-fastestv2
pre_weights=None
classes={len(CLASS_NAMES)}
width={size}
height={size}
anchor_num=3
anchors={format_anchors(anchors_px)}

[data-configure]
train={prefix}train.txt
val={prefix}val.txt
names={prefix}sample.names
# The images are small and cached in memory: loaded in the training process itself, they train faster on 2 cores
# than through worker processes, which compete with training for the cores (docs/benchmarks.md, "The sample dataset").
workers=0
"""


def generate(out: Path, seed: int = 0, train: int = 300, val: int = 100, size: int = 160) -> np.ndarray:
    """Write the dataset into `out`. Returns the anchors written into sample.data (input pixels)."""
    out = Path(out)
    rng = np.random.default_rng(seed)
    train_boxes_wh = []
    for split, count in (('train', train), ('val', val)):
        (out / 'images' / split).mkdir(parents=True, exist_ok=True)
        (out / 'labels' / split).mkdir(parents=True, exist_ok=True)
        listed = []
        for index in range(count):
            image, labels = make_image(rng, size)
            name = f'{index:06d}'
            cv2.imwrite(str(out / 'images' / split / f'{name}.jpg'), image, [cv2.IMWRITE_JPEG_QUALITY, 92])
            text = ''.join(f'{c} {cx:.6f} {cy:.6f} {w:.6f} {h:.6f}\n' for c, cx, cy, w, h in labels)
            (out / 'labels' / split / f'{name}.txt').write_text(text)
            listed.append(f'images/{split}/{name}.jpg\n')
            if split == 'train':
                train_boxes_wh += [(w, h) for _, _, _, w, h in labels]
        (out / f'{split}.txt').write_text(''.join(listed))
    (out / 'sample.names').write_text(''.join(f'{n}\n' for n in CLASS_NAMES))
    anchors, _ = kmeans_anchors(np.array(train_boxes_wh), NUM_ANCHORS, seed=seed)
    anchors_px = np.round(anchors * size, 2)
    (out / 'sample.data').write_text(data_file_text(anchors_px, size, seed))
    return anchors_px


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--out', type=Path, default=Path(__file__).resolve().parent / 'sample',
                        help='output folder (default: data/sample)')
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--train', type=int, default=300, help='number of training images')
    parser.add_argument('--val', type=int, default=100, help='number of validation images')
    parser.add_argument('--size', type=int, default=160, help='image width and height, a multiple of 32')
    args = parser.parse_args()
    if args.size % 32 or args.size < 64:
        parser.error(f'--size must be a multiple of 32 and at least 64, got {args.size}')
    started = time.time()
    anchors = generate(args.out, args.seed, args.train, args.val, args.size)
    print(f'{args.out}: {args.train} train + {args.val} val images of {args.size}x{args.size}, '
          f'{len(CLASS_NAMES)} classes ({", ".join(CLASS_NAMES)}); anchors {format_anchors(anchors)}; '
          f'{time.time() - started:.1f} s')
    print(f'next: python3 train.py --data {args.out / "sample.data"}')


if __name__ == '__main__':
    main()
