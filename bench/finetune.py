"""Fine-tuning sanity check: start from released COCO weights, train on coco128, the mAP must hold.

    .venv/bin/python bench/finetune.py                          # Yolo-FastestV2, 352 stretch, lr 0.001, 10 epochs
    .venv/bin/python bench/finetune.py --model leyolo-nano      # LeYOLO-nano, 320 letterbox
    .venv/bin/python bench/finetune.py --epochs 3 --lr 0.0001 --warmup-epochs 0 --out runs/ft

Writes a .data for coco128 (train = ../shared/datasets/coco128/images/train2017, val = .../val2017, names =
data/coco.names), scores the released weights on val2017 with utils.evaluator.evaluate (pycocotools), fine-tunes
through the trainer API as `train.py --weights <released>` does, scores the trained model (the EMA of last.pt,
what the trainer itself evaluates and exports) and prints both with their ratio. The baseline is the released
model measured in the same run.
    .venv/bin/python bench/finetune.py --one-class              # LeYOLO-nano on coco128 reduced to person only

--one-class: the .data has classes = 1 (person) and LeYOLONano.pt as pre_weights, as a user would write it; the
class convs start fresh, the rest is the checkpoint's. 61 train2017 images hold a person; batch 16 by default (3
steps per epoch). Baselines, same run, same val images: the untrained class layer (before; PASS when the fine-tuned
person mAP@0.5:0.95 is at least twice it), and, for scale only, the released 80-class model's own person AP.
Without warm-up at lr 0.001 the body degrades from the first step (its box loss rises) and the check fails.
Criterion (the sanity check): yolo-fastestv2 keeps at least 90% of its starting mAP@0.5; leyolo-nano keeps at
least 90% of its starting mAP@0.5:0.95. Exit status 0 on PASS, 1 on FAIL, 2 when ../shared is absent.
The figures, per model, batch size and learning rate: docs/benchmarks.md, "Fine-tuning from released weights".
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / 'shared'
sys.path.insert(0, str(REPO))

import torch  # noqa: E402
from person_dataset import link_labelled, person_boxes  # noqa: E402  (bench/, beside this file)

from utils.config import YFV2_COCO_ANCHORS_352, load_config  # noqa: E402

COCO128 = SHARED / 'datasets' / 'coco128'
# model -> (released weights, head, input side px, letterbox, the metric that must hold)
MODELS = {
    'yolo-fastestv2': (SHARED / 'weights' / 'yolo-fastestv2' / 'coco2017-0.241078ap-model.pth', 'anchor', 352, False,
                       'map50'),
    'leyolo-nano': (SHARED / 'weights' / 'leyolo' / 'LeYOLONano.pt', 'leyolo', 320, True, 'map50_95'),
}
MIN_RATIO = 0.9
ONE_CLASS_MIN_GAIN = 2.0   # --one-class: fine-tuned person AP over the untrained class layer's


def write_data(folder: Path, model: str, epochs: int, batch_size: int, lr: float, warmup_epochs: float | None,
               workers: int) -> Path:
    _, head, side, letterbox, _ = MODELS[model]
    lines = ['[name]', f'model_name=finetune-{model}',
             '[train-configure]', f'epochs={epochs}', 'steps=150,250', f'batch_size={batch_size}', 'subdivisions=1',
             f'learning_rate={lr}', 'eval_interval=1000']    # evaluated after the last epoch only
    if warmup_epochs is not None:
        lines.append(f'warmup_epochs={warmup_epochs}')
    lines += ['[model-configure]', f'model={model}', f'head={head}', 'classes=80', f'width={side}',
              f'height={side}', 'anchor_num=3']
    if head == 'anchor':
        lines.append('anchors=' + ','.join(f'{v:g}' for v in YFV2_COCO_ANCHORS_352))
    lines += ['[data-configure]', f'train={COCO128 / "images" / "train2017"}', f'val={COCO128 / "images" / "val2017"}',
              f'names={REPO / "data" / "coco.names"}', f'letterbox={int(letterbox)}', f'workers={workers}']
    path = folder / 'coco128.data'
    path.write_text('\n'.join(lines) + '\n')
    return path


def write_person_data(folder: Path, epochs: int, batch_size: int, lr: float, warmup_epochs: float | None,
                      workers: int) -> Path:
    """coco128 reduced to person (COCO class 0): train = the train2017 images holding a person, val = all of
    val2017 (images without a person are backgrounds). Images are linked, labels rewritten beside them."""
    splits = {}
    for split in ('train2017', 'val2017'):
        out = folder / 'person' / split
        out.mkdir(parents=True, exist_ok=True)
        for image in sorted((COCO128 / 'images' / split).glob('*.jpg')):
            persons = person_boxes(COCO128 / 'labels' / split / f'{image.stem}.txt')
            if split == 'train2017' and not persons:
                continue
            link_labelled(image, out, persons)
        splits[split] = out
    (folder / 'person.names').write_text('person\n')
    weights = MODELS['leyolo-nano'][0]
    lines = ['model_name=finetune-person', f'epochs={epochs}', 'steps=150,250', f'batch_size={batch_size}',
             f'learning_rate={lr}', 'eval_interval=1000', 'model=leyolo-nano', 'head=leyolo', 'classes=1',
             'width=320', 'height=320', 'letterbox=1', f'pre_weights={weights}', f'train={splits["train2017"]}',
             f'val={splits["val2017"]}', 'names=person.names', f'workers={workers}']
    if warmup_epochs is not None:
        lines.append(f'warmup_epochs={warmup_epochs}')
    path = folder / 'person.data'
    path.write_text('\n'.join(lines) + '\n')
    return path


def one_class(args, out: Path) -> int:
    from model.build import build_model
    from model.weights import load_weights
    from utils.evaluator import evaluate
    from utils.train.trainer import TrainOptions, train
    data = write_person_data(out, args.epochs, args.batch_size, args.lr, args.warmup_epochs, args.workers)
    cfg = load_config(data)
    # the released 80-class model on the same val images, all 80 classes' labels: its class-0 (person) row
    coco_cfg = load_config(write_data(out, 'leyolo-nano', args.epochs, args.batch_size, args.lr, None, args.workers))
    released = build_model(coco_cfg, log=lambda s: None)
    load_weights(released, MODELS['leyolo-nano'][0])
    person_row = [row for row in evaluate(released.eval(), coco_cfg, progress=False).per_class if row[0] == 0][0]
    released_map50_95, released_map50 = person_row[4], person_row[5]
    del released

    torch.manual_seed(0)           # the trainer's seed 0: the class convs start as they will in training
    untrained = build_model(cfg)   # pre_weights: the checkpoint, class convs fresh
    before = evaluate(untrained.eval(), cfg, progress=False)
    del untrained
    began = time.perf_counter()
    train(cfg, TrainOptions(out_dir=out / 'run', device='cpu', workers=args.workers))
    train_s = time.perf_counter() - began
    trained = build_model(cfg, log=lambda s: None)
    load_weights(trained, out / 'run' / 'last.pt')
    after = evaluate(trained.eval(), cfg, progress=False)
    print(f'\nperson on coco128 val2017 (pycocotools), {cfg.epochs} epochs, batch {cfg.batch_size}, lr '
          f'{cfg.learning_rate} ({train_s:.0f} s training):')
    print(f'  {"":28s} {"mAP@0.5":>8s} {"mAP@0.5:0.95":>13s}')
    for name, (m50, m) in (('untrained class layer', (before.map50, before.map50_95)),
                           ('fine-tuned, 1 class', (after.map50, after.map50_95)),
                           ('released, 80 classes (person)', (released_map50, released_map50_95))):
        print(f'  {name:28s} {m50:8.4f} {m:13.4f}')
    gain = after.map50_95 / max(before.map50_95, 1e-9)
    ok = gain >= ONE_CLASS_MIN_GAIN
    print(f'{"PASS" if ok else "FAIL"}: fine-tuned person mAP@0.5:0.95 is {gain:.2f}x the untrained class layer\'s '
          f'(must be >= {ONE_CLASS_MIN_GAIN}); {after.map50_95 / max(released_map50_95, 1e-9):.2f} of the released '
          f'80-class model\'s')
    return 0 if ok else 1


def score(model, cfg) -> tuple[float, float]:
    from utils.evaluator import evaluate
    result = evaluate(model.eval(), cfg, progress=False)
    return float(result.map50), float(result.map50_95)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--model', default='yolo-fastestv2', choices=tuple(MODELS))
    parser.add_argument('--epochs', type=int, default=10)
    parser.add_argument('--batch-size', type=int, help='images per step (default 64, data/coco.data\'s: 2 steps '
                        'per epoch, all 20 inside the 100-step warmup; 8 or 16 reach the full lr; --one-class: 16)')
    parser.add_argument('--lr', type=float, default=0.001, help='learning_rate (0.001: every Yolo-FastestV2 .data)')
    parser.add_argument('--warmup-epochs', type=float, help='warmup_epochs (default: the .data default)')
    parser.add_argument('--threads', type=int, default=2)
    parser.add_argument('--workers', type=int, default=1)
    parser.add_argument('--out', type=Path, help='training output folder (default: a temporary folder)')
    parser.add_argument('--one-class', action='store_true',
                        help='leyolo-nano fine-tuned on coco128 reduced to person (see above)')
    args = parser.parse_args()
    if args.batch_size is None:
        args.batch_size = 16 if args.one_class else 64
    if args.one_class:
        args.model = 'leyolo-nano'
        if not COCO128.exists() or not MODELS['leyolo-nano'][0].exists():
            print('../shared is absent: this benchmark needs it')
            return 2
        torch.set_num_threads(args.threads)
        out = args.out or Path(tempfile.mkdtemp(prefix='finetune_person_'))
        out.mkdir(parents=True, exist_ok=True)
        return one_class(args, out)
    weights, _, _, _, criterion = MODELS[args.model]
    for needed in (COCO128, weights):
        if not needed.exists():
            print(f'{needed} is absent: this benchmark needs ../shared')
            return 2
    torch.set_num_threads(args.threads)

    from model.build import build_model
    from model.weights import load_weights
    from utils.train.trainer import TrainOptions, train, warmup_steps_for
    out = args.out or Path(tempfile.mkdtemp(prefix='finetune_'))
    out.mkdir(parents=True, exist_ok=True)
    cfg = load_config(write_data(out, args.model, args.epochs, args.batch_size, args.lr, args.warmup_epochs,
                                 args.workers))

    released = build_model(cfg, log=lambda s: None)
    load_weights(released, weights, strict=False)
    start = score(released, cfg)
    del released

    from utils.data.dataset import load_split
    steps_per_epoch = len(load_split(cfg, 'train', verbose=False).image_paths) // cfg.batch_size
    print(f'{args.model}: fine-tuning {weights.name} on coco128 train2017, {cfg.epochs} epochs x '
          f'{steps_per_epoch} steps of {cfg.batch_size} images, learning_rate {cfg.learning_rate}, warmup '
          f'{warmup_steps_for(cfg, steps_per_epoch)} steps, {args.threads} threads')
    began = time.perf_counter()
    train(cfg, TrainOptions(out_dir=out, device='cpu', workers=args.workers, weights=weights))
    train_s = time.perf_counter() - began

    trained = build_model(cfg, log=lambda s: None)
    load_weights(trained, out / 'last.pt')   # our checkpoint: the EMA weights, as the trainer evaluates them
    end = score(trained, cfg)

    print(f'\n{args.model} on coco128 val2017 (pycocotools), before -> after {cfg.epochs} epochs at lr '
          f'{cfg.learning_rate} ({train_s:.0f} s training):')
    ratios = {}
    for index, name in enumerate(('map50', 'map50_95')):
        ratios[name] = end[index] / max(start[index], 1e-9)
        print(f'  {"mAP@0.5" if name == "map50" else "mAP@0.5:0.95":13s} {start[index]:.4f} -> {end[index]:.4f}'
              f'   ratio {ratios[name]:.3f}')
    ok = ratios[criterion] >= MIN_RATIO
    print(f'{"PASS" if ok else "FAIL"}: {criterion} ratio {ratios[criterion]:.3f} (must be >= {MIN_RATIO})')
    return 0 if ok else 1


if __name__ == '__main__':
    sys.exit(main())
