"""INT8 NCNN vs fp32 NCNN: mAP on real images, model size, and how many images lose all their detections.

    .venv/bin/python bench/int8_accuracy.py                       # released Yolo-FastestV2, coco128, 352 stretch
    .venv/bin/python bench/int8_accuracy.py --calib-images 32 --method minmax --keep-fp32 conv_0
    .venv/bin/python bench/int8_accuracy.py --by-type        # depthwise, first and output convs fp32 instead
    .venv/bin/python bench/int8_accuracy.py --model leyolo-nano          # 320 letterbox

Exports the released weights (../shared/weights: Yolo-FastestV2 or LeYOLO-nano) to fp32 NCNN through the
project's own export (utils/export, pnnx fp16=0), or takes --fp32-param; calibrates INT8 on coco128 train2017 (N
images spread over it) with utils/int8/quantize.py; then runs both NCNN models over coco128 val2017 with the same
pre-processing, decode and NMS (utils/postprocess.py) and scores them with pycocotools, at evaluation.py's
thresholds (conf 0.001, NMS IoU 0.6) and at Yolo-FastestV2's own evaluation's (conf 0.01, NMS IoU 0.4), from the
same forward passes. The baseline is the fp32 NCNN model measured in the same run.
Targets: INT8 mAP@0.5 within 0.5 points of fp32 at both settings, INT8 .bin at most 30% of fp32, and never an
empty result. "Empty result": an image on which fp32 has at least one detection at test.py's threshold (--conf 0.3,
NMS IoU 0.4, also the conf_thresh the C++ app reads from the sidecar) and INT8 has none at that same threshold.
That is the threshold a user's boxes appear at; at the evaluation's threshold (0.001, for mAP) every model
returns boxes on every image, so "empty" would mean nothing there. The count is strict: no margin around 0.3;
each such image is listed with its fp32 best score, so a detection that merely crossed the threshold (0.31 ->
0.29) shows as such.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / 'shared'
sys.path.insert(0, str(REPO))

from utils.config import YFV2_COCO_ANCHORS_352, Config  # noqa: E402
from utils.int8.calibrate import load_ncnn_net, run_blobs  # noqa: E402
from utils.int8.quantize import DEFAULT_SIZE_BUDGET, calibration_sample, end_layers, quantize_ncnn  # noqa: E402
from utils.int8.write import read_ncnn_model  # noqa: E402
from utils.ncnn_param import read_io_blobs  # noqa: E402
from utils.preprocess import boxes_to_original, resize_image, to_input_tensor  # noqa: E402

COCO128 = SHARED / 'datasets' / 'coco128'
ARM_CLI = REPO / 'sample' / 'ncnn' / 'build' / 'arm64' / 'tinydet_cli'
# --model -> (released weights, head, input size, letterbox): how each was trained and is deployed
MODELS = {
    'yolo-fastestv2': (SHARED / 'weights' / 'yolo-fastestv2' / 'coco2017-0.241078ap-model.pth', 'anchor', 352, False),
    'leyolo-nano': (SHARED / 'weights' / 'leyolo' / 'LeYOLONano.pt', 'leyolo', 320, True),
}
DEPLOY_CONF, DEPLOY_NMS_IOU = 0.3, 0.4        # test.py's defaults and the sidecar's: the "empty result" count
# mAP settings (conf, NMS IoU): evaluation.py's defaults and Yolo-FastestV2's own evaluate.py's
MAP_SETTINGS = {'ours': (0.001, 0.6), 'reference': (0.01, 0.4)}
TARGET_DROP_POINTS, TARGET_SIZE_RATIO = 0.5, 0.30


def export_released(cfg, workdir: Path) -> tuple:
    import torch

    from model.build import build_model
    from utils.export.ncnn_convert import convert_to_ncnn
    from utils.export.onnx_export import export_onnx
    torch.set_num_threads(1)
    model = build_model(cfg, log=lambda *_: None)
    onnx_path = export_onnx(model, workdir / f'{cfg.model}_fp32.onnx', cfg.width, cfg.height)
    return convert_to_ncnn(onnx_path, cfg.width, cfg.height)


def arm_detections(param_path, images: list, cpu: str) -> list:
    """Run the C++ app's aarch64 build (sample/ncnn, built by its build.sh) under qemu on each image: per image an
    (M, 6) array [x1, y1, x2, y2, score, class] in original pixels, as the app prints them."""
    results = []
    for image in images:
        command = ['qemu-aarch64', '-cpu', cpu, '-L', '/usr/aarch64-linux-gnu', str(ARM_CLI), str(param_path),
                   str(image), '--out', str(Path(param_path).with_suffix('.drawn.jpg'))]
        done = subprocess.run(command, capture_output=True, text=True, timeout=600)
        if done.returncode != 0:
            raise RuntimeError(f'{" ".join(command)} failed:\n{done.stderr[-2000:]}')
        rows = [line.split() for line in done.stdout.splitlines() if line.strip()]   # the count goes to stderr
        results.append(np.array([[float(r[2]), float(r[3]), float(r[4]), float(r[5]), float(r[1]), float(r[0])]
                                 for r in rows], np.float32).reshape(-1, 6))
    return results


def matched_fraction(reference: list, other: list, min_score: float = 0.5, min_iou: float = 0.5) -> tuple:
    """(found, total): reference detections scoring >= min_score that `other` has too (same class, IoU >= min_iou)."""
    found = total = 0
    for ref, oth in zip(reference, other):
        for box in ref[ref[:, 4] >= min_score]:
            total += 1
            same = oth[oth[:, 5] == box[5]]
            if len(same):
                x1, y1 = np.maximum(box[0], same[:, 0]), np.maximum(box[1], same[:, 1])
                x2, y2 = np.minimum(box[2], same[:, 2]), np.minimum(box[3], same[:, 3])
                inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
                union = (box[2] - box[0]) * (box[3] - box[1]) + (same[:, 2] - same[:, 0]) * (same[:, 3] - same[:, 1])
                found += bool((inter / (union - inter)).max() >= min_iou)
    return found, total


def score_changes(reference: list, other: list, min_iou: float = 0.5) -> np.ndarray:
    """For every reference detection, the best score `other` gives an overlapping box of the same class (IoU >=
    min_iou; 0 if none) minus the reference score: how far INT8 moves the scores fp32 shows the user."""
    changes = []
    for ref, oth in zip(reference, other):
        for box in ref:
            same = oth[oth[:, 5] == box[5]]
            best = 0.0
            if len(same):
                x1, y1 = np.maximum(box[0], same[:, 0]), np.maximum(box[1], same[:, 1])
                x2, y2 = np.minimum(box[2], same[:, 2]), np.minimum(box[3], same[:, 3])
                inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
                union = (box[2] - box[0]) * (box[3] - box[1]) + (same[:, 2] - same[:, 0]) * (same[:, 3] - same[:, 1])
                overlapping = same[inter / (union - inter) >= min_iou]
                best = float(overlapping[:, 4].max()) if len(overlapping) else 0.0
            changes.append(best - box[4])
    return np.array(changes)


def latency_ms(models: dict, chw: np.ndarray, input_blob: str, runs: int) -> dict:
    """Median CPU time (ms, the calling thread's clock, so other processes on a shared machine are left out) of
    one 1-thread inference per model; the models take turns every round so drifts hit them alike."""
    nets = {name: (load_ncnn_net(*files, int8=int8), read_io_blobs(files[0])[1])
            for name, (files, int8) in models.items()}
    times = {name: [] for name in nets}
    for round_index in range(runs + 3):                   # the first 3 rounds warm up
        for name, (net, outputs) in nets.items():
            start = time.thread_time()
            run_blobs(net, input_blob, outputs, chw)
            if round_index >= 3:
                times[name].append(1000 * (time.thread_time() - start))
    return {name: float(np.median(t)) for name, t in times.items()}


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


def network_outputs(param_path, bin_path, int8: bool, split, cfg) -> list:
    """Per image: (raw output arrays with a batch axis, resize info), so every threshold setting decodes the
    same forward pass."""
    from utils.data.dataset import read_image
    net = load_ncnn_net(param_path, bin_path, int8=int8)
    input_blob, output_blobs = read_io_blobs(param_path)
    results = []
    for path in split.image_paths:
        resized, info = resize_image(read_image(path), cfg.width, cfg.height, cfg.letterbox)
        outputs = run_blobs(net, input_blob, output_blobs, to_input_tensor([resized])[0])
        results.append(([outputs[b][None] for b in output_blobs], info))
    return results


def detections_at(raw: list, spec, conf: float, iou: float) -> list:
    """Per image: (M, 6) [x1, y1, x2, y2, score, class] in original pixels."""
    from utils.postprocess import postprocess
    results = []
    for outputs, info in raw:
        detections = postprocess(outputs, spec, conf, iou)[0]
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
    parser.add_argument('--bias-correction', action='store_true', help="'mse' only: subtract each layer's mean "
                        "INT8 error from its bias (off by default: measured to lower scores once depthwise is fp32)")
    parser.add_argument('--keep-fp32', nargs='*', default=[], help='layer names to leave in fp32 in any case')
    parser.add_argument('--size-budget', type=float, default=DEFAULT_SIZE_BUDGET,
                        help='mixed precision by measured sensitivity within this fraction of the fp32 .bin '
                             '(default %(default)s, what pytorch2onnx.py --int8 does)')
    parser.add_argument('--int8-all', action='store_true', help='every conv layer INT8 (pytorch2onnx.py --int8-all)')
    parser.add_argument('--by-type', action='store_true', help='instead of the measurement: depthwise, first and '
                        'output convs fp32, the rest INT8')
    parser.add_argument('--fp32-kept', action='store_true', help='store the weights of the layers left fp32 as '
                        'float32 (default float16, computed in fp32 either way)')
    parser.add_argument('--sensitivity-images', type=int, default=32,
                        help='calibration images the per-layer noise is measured on (default 32, as --int8)')
    parser.add_argument('--model', default='yolo-fastestv2', choices=tuple(MODELS))
    parser.add_argument('--arm', nargs='*', metavar='CPU', help='also run fp32 and INT8 through the C++ app '
                        'built for aarch64 (sample/ncnn/build/arm64) under qemu on ../shared/images, on these CPUs '
                        '(default cortex-a53 cortex-a76): NCNN\'s ARM INT8 kernels are not the x86 ones')
    parser.add_argument('--mse-images', type=int, default=32, help="'mse': images the threshold search runs on")
    parser.add_argument('--latency-runs', type=int, default=30, help='timed 1-thread runs per model (0: none)')
    parser.add_argument('--workdir', type=Path, help='keep the models here (default: a temporary folder)')
    args = parser.parse_args()
    weights, head, size, letterbox = MODELS[args.model]
    for needed in (COCO128, weights):
        if not needed.exists():
            print(f'{needed} is absent: this benchmark needs ../shared')
            return 2

    from model.build import make_spec
    from utils.data.dataset import load_split
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

        if args.arm is not None:     # the C++ app needs the sidecar; quantize_ncnn copies it beside the INT8 model
            from utils.export.ncnn_convert import write_sidecar
            write_sidecar(fp32_param, spec, [str(i) for i in range(80)], cfg.letterbox)
        keep_fp32 = list(args.keep_fp32)
        if args.by_type:
            model = read_ncnn_model(fp32_param, fp32_bin)
            keep_fp32 += [layer.name for layer in model.layers if layer.type == 'ConvolutionDepthWise'] + \
                end_layers(model)
        start = time.perf_counter()
        report = quantize_ncnn(fp32_param, fp32_bin, calib, cfg.width, cfg.height, cfg.letterbox,
                               workdir / 'int8.param', workdir / 'int8.bin', method=args.method,
                               keep_fp32=tuple(keep_fp32), bias_correction=args.bias_correction,
                               size_budget=None if args.int8_all or args.by_type else args.size_budget,
                               fp16_kept=not args.fp32_kept, mse_images=args.mse_images,
                               sensitivity_images=args.sensitivity_images)
        quantize_s = time.perf_counter() - start
        print(report.summary())
        print(f'  quantization took {quantize_s:.1f} s')

        gt = coco_ground_truth(val)
        rows, all_detections, deployed_detections = {}, {}, {}
        for name, files, int8 in (('fp32', (fp32_param, fp32_bin), False),
                                  ('int8', (workdir / 'int8.param', workdir / 'int8.bin'), True)):
            start = time.perf_counter()
            raw = network_outputs(*files, int8, val, cfg)
            seconds = time.perf_counter() - start
            maps = {}
            for setting, (conf, iou) in MAP_SETTINGS.items():
                detections = detections_at(raw, spec, conf, iou)
                maps[setting] = coco_map(gt, detections)
                if setting == 'ours':
                    all_detections[name] = detections
            deployed = detections_at(raw, spec, DEPLOY_CONF, DEPLOY_NMS_IOU)
            best_scores = [float(d[:, 4].max()) if len(d) else 0.0 for d in deployed]
            rows[name] = (maps, [len(d) for d in deployed], seconds / len(val.image_paths), best_scores)
            deployed_detections[name] = deployed

        sizes = {'fp32': Path(fp32_bin).stat().st_size, 'int8': (workdir / 'int8.bin').stat().st_size}
        settings = ', '.join(f'{setting}: conf {conf}, NMS IoU {iou}' for setting, (conf, iou) in MAP_SETTINGS.items())
        print(f'\ncoco128 val2017 ({len(val.image_paths)} images), {cfg.width}x{cfg.height} '
              f'{"letterbox" if cfg.letterbox else "stretch"}, pycocotools mAP at ({settings}); detections and '
              f'empty images at conf {DEPLOY_CONF}, NMS IoU {DEPLOY_NMS_IOU} (test.py):')
        print(f'{"model":<6} {"mAP@0.5":>8} {"mAP@.5:.95":>10} {"ref mAP@0.5":>11} {"ref mAP@.5:.95":>14} '
              f'{".bin KiB":>9} {"of fp32":>8} {"dets":>6} {"none":>5} {"empty":>6} {"ms/img":>7}')
        fp32_counts, int8_counts = rows['fp32'][1], rows['int8'][1]
        # Empty: fp32 has a detection at the threshold, INT8 has none (see the module docstring).
        empty = [i for i, (f, q) in enumerate(zip(fp32_counts, int8_counts)) if f > 0 and q == 0]
        for name, (maps, counts, seconds, _) in rows.items():
            print(f'{name:<6} {100 * maps["ours"][0]:8.2f} {100 * maps["ours"][1]:10.2f} '
                  f'{100 * maps["reference"][0]:11.2f} {100 * maps["reference"][1]:14.2f} '
                  f'{sizes[name] / 1024:9.1f} {100 * sizes[name] / sizes["fp32"]:7.1f}% {sum(counts):6d} '
                  f'{sum(c == 0 for c in counts):5d} {len(empty) if name == "int8" else "-":>6} {1000 * seconds:7.1f}')
        print('  (none: images without a detection; empty: fp32 has one, INT8 none)')
        for i in empty:
            print(f'  empty: {val.image_paths[i].name} (fp32: {fp32_counts[i]} detection(s), best score '
                  f'{rows["fp32"][3][i]:.3f})')
        # INT8 score noise: every fp32 detection at the threshold against INT8's best overlapping box (conf 0.001).
        changes = score_changes(deployed_detections['fp32'], all_detections['int8'])
        print(f'  score change int8 - fp32 of the {len(changes)} fp32 detections: median {np.median(changes):+.3f}, '
              f'5th / 95th percentile {np.percentile(changes, 5):+.3f} / {np.percentile(changes, 95):+.3f}, '
              f'|change| > 0.05: {int((np.abs(changes) > 0.05).sum())}')
        drops = {setting: 100 * (rows['fp32'][0][setting][0] - rows['int8'][0][setting][0])
                 for setting in MAP_SETTINGS}
        print(f'\nmAP@0.5 drop: ours {drops["ours"]:.2f}, reference {drops["reference"]:.2f} points '
              f'(target <= {TARGET_DROP_POINTS})  size: {100 * report.size_ratio:.1f}% of fp32 '
              f'(target <= {100 * TARGET_SIZE_RATIO:.0f}%)  empty results at conf {DEPLOY_CONF}: {len(empty)} '
              f'(target 0)  speed int8/fp32: {rows["int8"][2] / rows["fp32"][2]:.2f}x')
        if args.latency_runs > 0:
            from utils.int8.calibrate import load_calibration_inputs
            _, chw = next(load_calibration_inputs(val.image_paths[:1], cfg.width, cfg.height, cfg.letterbox))
            ms = latency_ms({'fp32': ((fp32_param, fp32_bin), False),
                             'int8': ((workdir / 'int8.param', workdir / 'int8.bin'), True)},
                            chw, read_io_blobs(fp32_param)[0], args.latency_runs)
            print(f'latency, x86 host, 1 thread, CPU time, median of {args.latency_runs}: fp32 {ms["fp32"]:.1f} ms, '
                  f'int8 {ms["int8"]:.1f} ms (int8/fp32 {ms["int8"] / ms["fp32"]:.2f}x)')
        arm_ok = True
        for cpu in (args.arm or ['cortex-a53', 'cortex-a76']) if args.arm is not None else []:
            images = sorted((SHARED / 'images').glob('*.jpg'))
            fp32_arm = arm_detections(fp32_param, images, cpu)
            int8_arm = arm_detections(workdir / 'int8.param', images, cpu)
            found, total = matched_fraction(fp32_arm, int8_arm)
            arm_empty = sum(len(d) == 0 for d in int8_arm)
            print(f'aarch64 {cpu} (qemu), {len(images)} images of ../shared/images: fp32 {sum(map(len, fp32_arm))} '
                  f'detections, INT8 {sum(map(len, int8_arm))}; fp32 detections >= 0.5 found by INT8: '
                  f'{found}/{total}; INT8 images with none: {arm_empty}')
            arm_ok = arm_ok and found == total and sum(map(len, int8_arm)) > 0
        ok = max(drops.values()) <= TARGET_DROP_POINTS and report.size_ratio <= TARGET_SIZE_RATIO and not empty \
            and arm_ok
        print('PASS' if ok else 'FAIL')
        return 0 if ok else 1
    finally:
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == '__main__':
    sys.exit(main())
