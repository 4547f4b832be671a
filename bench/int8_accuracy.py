"""INT8 NCNN vs fp32 NCNN: mAP on real images, model size, and how many images lose all their detections.

    .venv/bin/python bench/int8_accuracy.py                       # released Yolo-FastestV2, coco128, 352 stretch
    .venv/bin/python bench/int8_accuracy.py --calib-images 32 --method minmax --keep-fp32 conv_0
    .venv/bin/python bench/int8_accuracy.py --model leyolo-nano          # 320 letterbox

Exports the released weights (../shared/weights: Yolo-FastestV2 or LeYOLO-nano) to fp32 NCNN through the
project's own export (utils/export.py, pnnx fp16=0), or takes --fp32-param; calibrates INT8 on coco128
train2017 (N images spread over it) with utils/int8.py; then runs both NCNN models over coco128 val2017 with the
same pre-processing, decode and NMS (utils/postprocess.py) and scores them with pycocotools. The baseline is
the fp32 NCNN model measured in the same run.
Targets (issue 10): INT8 mAP@0.5 within 1.5 points of fp32, INT8 .bin at most 40% of fp32, no image where fp32
detects something with score >= 0.4 left with no INT8 detection at the deployment threshold 0.3.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / 'shared'
sys.path.insert(0, str(REPO))

from utils.config import YFV2_COCO_ANCHORS_352, Config  # noqa: E402
from utils.int8 import calibration_sample, quantize_ncnn  # noqa: E402
from utils.int8_calibrate import load_ncnn_net, run_blobs  # noqa: E402
from utils.int8_write import NcnnModel, read_param  # noqa: E402
from utils.preprocess import boxes_to_original, resize_image, to_input_tensor  # noqa: E402

COCO128 = SHARED / 'datasets' / 'coco128'
# --model -> (released weights, head, input size, letterbox): how each was trained and is deployed
MODELS = {
    'yolo-fastestv2': (SHARED / 'weights' / 'yolo-fastestv2' / 'coco2017-0.241078ap-model.pth', 'anchor', 352, False),
    'leyolo-nano': (SHARED / 'weights' / 'leyolo' / 'LeYOLONano.pt', 'leyolo', 320, True),
}
DEPLOY_CONF, DEPLOY_NMS_IOU = 0.3, 0.4        # the C++ demo's thresholds, for the "empty result" count
CLEAR_MARGIN = 0.1


def export_released(cfg, workdir: Path) -> tuple:
    import torch
    from model.build import build_model
    from utils.export import convert_to_ncnn, export_onnx
    torch.set_num_threads(1)
    model = build_model(cfg, log=lambda *_: None)
    onnx_path = export_onnx(model, workdir / f'{cfg.model}_fp32.onnx', cfg.width, cfg.height)
    return convert_to_ncnn(onnx_path, cfg.width, cfg.height)


def coco_ground_truth(split) -> dict:
    """pycocotools ground truth from YOLO labels: normalised cxcywh -> absolute xywh in original pixels."""
    images, annotations = [], []
    for image_id, (path, labels) in enumerate(zip(split.image_paths, split.labels)):
        import cv2
        h, w = cv2.imread(str(path)).shape[:2]
        images.append({'id': image_id, 'width': w, 'height': h, 'file_name': Path(path).name})
        for cls, cx, cy, bw, bh in labels.tolist():
            annotations.append({'id': len(annotations) + 1, 'image_id': image_id, 'category_id': int(cls),
                                'bbox': [(cx - bw / 2) * w, (cy - bh / 2) * h, bw * w, bh * h],
                                'area': bw * w * bh * h, 'iscrowd': 0})
    return {'images': images, 'annotations': annotations, 'categories': [{'id': i} for i in range(80)]}


def predict_all(param_path, bin_path, int8: bool, split, cfg, spec, conf: float, iou: float) -> list:
    """Per image: (M, 6) [x1, y1, x2, y2, score, class] in original pixels."""
    from utils.dataset import read_image
    from utils.postprocess import postprocess
    net = load_ncnn_net(param_path, bin_path, int8=int8)
    model = NcnnModel(param_path, *read_param(param_path))    # blob names only; the weights may be int8
    results = []
    for path in split.image_paths:
        resized, info = resize_image(read_image(path), cfg.width, cfg.height, cfg.letterbox)
        outputs = run_blobs(net, model.input_blob, model.output_blobs, to_input_tensor([resized])[0])
        detections = postprocess([outputs[b][None] for b in model.output_blobs], spec, conf, iou)[0]
        detections[:, :4] = boxes_to_original(detections[:, :4], info)
        results.append(detections)
    return results


def coco_map(gt: dict, detections: list) -> tuple:
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval
    predictions = [{'image_id': i, 'category_id': int(d[5]), 'score': float(d[4]),
                    'bbox': [float(d[0]), float(d[1]), float(d[2] - d[0]), float(d[3] - d[1])]}
                   for i, image in enumerate(detections) for d in image]
    if not predictions:
        return 0.0, 0.0
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = json.loads(json.dumps(gt))
        coco_gt.createIndex()
        evaluator = COCOeval(coco_gt, coco_gt.loadRes(predictions), 'bbox')
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return float(evaluator.stats[1]), float(evaluator.stats[0])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--fp32-param', type=Path, help='an fp32 NCNN .param (its .bin beside it); default: '
                                                          'export the released Yolo-FastestV2 weights')
    parser.add_argument('--calib-images', type=int, default=128, help='N coco128 train2017 images (every k-th)')
    parser.add_argument('--method', default='mse', choices=('kl', 'minmax', 'mse'))
    parser.add_argument('--no-bias-correction', action='store_true', help="'mse' only: keep the original biases")
    parser.add_argument('--keep-fp32', nargs='*', default=[], help='layer names to leave in fp32')
    parser.add_argument('--model', default='yolo-fastestv2', choices=tuple(MODELS))
    parser.add_argument('--workdir', type=Path, help='keep the models here (default: a temporary folder)')
    args = parser.parse_args()
    weights, head, size, letterbox = MODELS[args.model]
    for needed in (COCO128, weights):
        if not needed.exists():
            print(f'{needed} is absent: this benchmark needs ../shared')
            return 2

    from model.build import make_spec
    from utils.dataset import load_split
    cfg = Config(data_path=Path('bench.data'), model=args.model, head=head, classes=80, width=size, height=size,
                 anchors=YFV2_COCO_ANCHORS_352 if head == 'anchor' else (), letterbox=letterbox, pre_weights=weights,
                 train=COCO128 / 'images' / 'train2017', val=COCO128 / 'images' / 'val2017')
    spec = make_spec(cfg)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix='int8_bench_'))
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        if args.fp32_param:
            fp32_param, fp32_bin = args.fp32_param, args.fp32_param.with_suffix('.bin')
        else:
            fp32_param, fp32_bin = export_released(cfg, workdir)
        calib = calibration_sample(load_split(cfg, 'train', verbose=False).image_paths, args.calib_images)
        val = load_split(cfg, 'val', verbose=False)

        start = time.perf_counter()
        report = quantize_ncnn(fp32_param, fp32_bin, calib, cfg.width, cfg.height, cfg.letterbox,
                               workdir / 'int8.param', workdir / 'int8.bin', method=args.method,
                               keep_fp32=tuple(args.keep_fp32), bias_correction=not args.no_bias_correction)
        quantize_s = time.perf_counter() - start
        print(report.summary())
        print(f'  quantization took {quantize_s:.1f} s')

        gt = coco_ground_truth(val)
        rows = {}
        for name, files, int8 in (('fp32', (fp32_param, fp32_bin), False),
                                  ('int8', (workdir / 'int8.param', workdir / 'int8.bin'), True)):
            start = time.perf_counter()
            detections = predict_all(*files, int8, val, cfg, spec, conf=0.001, iou=0.6)
            seconds = time.perf_counter() - start
            deployed = predict_all(*files, int8, val, cfg, spec, conf=DEPLOY_CONF, iou=DEPLOY_NMS_IOU)
            best_scores = [float(d[:, 4].max()) if len(d) else 0.0 for d in deployed]
            rows[name] = (*coco_map(gt, detections), [len(d) for d in deployed], seconds / len(val.image_paths),
                          best_scores)

        print(f'\ncoco128 val2017 ({len(val.image_paths)} images), {cfg.width}x{cfg.height} '
              f'{"letterbox" if cfg.letterbox else "stretch"}, pycocotools:')
        print(f'{"model":<6} {"mAP@0.5":>8} {"mAP@.5:.95":>10} {"dets@0.3":>9} {"empty":>6} {"ms/img":>7}')
        for name, (map50, map5095, counts, seconds, _) in rows.items():
            print(f'{name:<6} {100 * map50:8.2f} {100 * map5095:10.2f} {sum(counts):9d} '
                  f'{sum(c == 0 for c in counts):6d} {1000 * seconds:7.1f}')
        fp32_counts, int8_counts = rows['fp32'][2], rows['int8'][2]
        # An image 'loses' its detections when fp32 finds something clearly above the threshold (best score >=
        # DEPLOY_CONF + CLEAR_MARGIN) and INT8 finds nothing; borderline ones (a single box near 0.3) are listed.
        lost, borderline = [], []
        for i, (f, q) in enumerate(zip(fp32_counts, int8_counts)):
            if f > 0 and q == 0:
                (lost if rows['fp32'][4][i] >= DEPLOY_CONF + CLEAR_MARGIN else borderline).append(i)
        for i in lost + borderline:
            print(f'  {"LOST" if i in lost else "borderline"}: {val.image_paths[i].name} has no INT8 detection '
                  f'(fp32: {fp32_counts[i]}, best score {rows["fp32"][4][i]:.3f})')
        drop = 100 * (rows['fp32'][0] - rows['int8'][0])
        print(f'\nmAP@0.5 drop: {drop:.2f} points (target <= 1.5)  '
              f'size: {100 * report.size_ratio:.1f}% of fp32 (target <= 40%)  '
              f'images that lost every detection: {len(lost)} (+{len(borderline)} borderline)  speed int8/fp32: {rows["int8"][3] / rows["fp32"][3]:.2f}x')
        ok = drop <= 1.5 and report.size_ratio <= 0.40 and not lost
        print('PASS' if ok else 'FAIL')
        return 0 if ok else 1
    finally:
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == '__main__':
    sys.exit(main())
