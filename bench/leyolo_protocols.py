"""LeYOLONano.pt on coco128 val2017 under each evaluation protocol, against the original implementation's figures.

    .venv/bin/python bench/leyolo_protocols.py                 # 320 and 640
    .venv/bin/python bench/leyolo_protocols.py --sides 640

Protocols (utils/evaluator/evaluator.py), all pycocotools, conf 0.001, NMS IoU 0.7, max 300 detections:
    square        square letterbox per image, each box its best class (this project's default)
    square-ml     square letterbox, multi-label NMS
    rect-ml       rectangular batches of 32 (pad 0.5) and multi-label NMS: Ultralytics' val
The reference (the fork's own figures, Ultralytics' val): square 0.3288 / 0.4519 at 320 (the fork's model and NMS);
Ultralytics' val 0.341 / 0.468 at 320 and 0.407 / 0.558 at 640 (mAP@0.5:0.95 / mAP@0.5, pycocotools).
PASS when rect-ml is within 0.005 of Ultralytics' val at every side measured. Exit 0 PASS, 1 FAIL, 2 without ../shared.
Multi-label NMS is most of the gap between the protocols at 320; at 640 the rectangular batches matter as well
(the figures: docs/benchmarks.md, "Evaluation").
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

WEIGHTS = SHARED / 'weights' / 'leyolo' / 'LeYOLONano.pt'
VAL = SHARED / 'datasets' / 'coco128' / 'images' / 'val2017'
ULTRALYTICS_VAL = {320: (0.341, 0.468), 640: (0.407, 0.558)}   # rect batches + multi-label NMS
SQUARE_REFERENCE = {320: (0.3288, 0.4519)}                    # square letterbox, best class per box
PROTOCOLS = {'square': dict(rect=False, multi_label=False), 'square-ml': dict(rect=False, multi_label=True),
             'rect-ml': dict(rect=True, multi_label=True)}
TOLERANCE = 0.005


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--sides', type=int, nargs='+', default=[320, 640])
    parser.add_argument('--threads', type=int, default=1)
    parser.add_argument('--batch-size', type=int, default=32, help='rect batch size (32: Ultralytics\' val)')
    args = parser.parse_args()
    for needed in (WEIGHTS, VAL):
        if not needed.exists():
            print(f'{needed} is absent: this benchmark needs ../shared')
            return 2
    torch.set_num_threads(args.threads)
    from utils.config import load_config
    from utils.evaluator import evaluate
    from utils.runtimes import load_runtime

    folder = Path(tempfile.mkdtemp(prefix='leyolo_protocols_'))
    ok = True
    print(f'{"side":>4} {"protocol":>10} {"mAP50-95":>9} {"mAP50":>7}   reference        seconds')
    for side in args.sides:
        data = folder / f'coco128_{side}.data'
        data.write_text(f'model = leyolo-nano\nhead = leyolo\nclasses = 80\nwidth = {side}\nheight = {side}\n'
                        f'train = {VAL}\nval = {VAL}\nnames = {REPO / "data" / "coco.names"}\nletterbox = true\n'
                        f'workers = 0\n')
        cfg = load_config(data)
        runtime = load_runtime('torch', cfg, WEIGHTS)
        for name, protocol in PROTOCOLS.items():
            began = time.perf_counter()
            result = evaluate(runtime, cfg, conf=0.001, iou=0.7, max_det=300, batch_size=args.batch_size,
                              progress=False, **protocol)
            reference = (ULTRALYTICS_VAL if name == 'rect-ml' else SQUARE_REFERENCE if name == 'square' else {})
            reference = reference.get(side)
            shown = f'{reference[0]:.4f} / {reference[1]:.4f}' if reference else '-'
            print(f'{side:4d} {name:>10} {result.map50_95:9.4f} {result.map50:7.4f}   {shown:15s}  '
                  f'{time.perf_counter() - began:6.1f}', flush=True)
            if name == 'rect-ml' and reference:
                ok &= abs(result.map50_95 - reference[0]) < TOLERANCE and abs(result.map50 - reference[1]) < TOLERANCE
    print(f'{"PASS" if ok else "FAIL"}: rect-ml within {TOLERANCE} of Ultralytics\' val at sides {args.sides}')
    return 0 if ok else 1


if __name__ == '__main__':
    sys.exit(main())
