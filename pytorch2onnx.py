"""Export a trained model to ONNX and NCNN, then check every backend against PyTorch on a real image.

    python3 pytorch2onnx.py --data data/coco.data --weights weights/coco/best.pth

writes model.onnx (simplified), model.param / model.bin (NCNN, fp32) and model.json (what the C++ app reads),
then prints max and mean |diff| of each output for onnxruntime, OpenCV DNN and NCNN against PyTorch, and whether
the detections are the same. Exits non-zero when a check fails. Input size, classes and anchors come from the .data.
"""
import argparse
import dataclasses
import sys

import cv2
import numpy as np
import torch

from model.build import build_model
from model.weights import load_weights
from utils.cli import positive_int, probability, run
from utils.config import load_config
from utils.data.dataset import list_images, read_image
from utils.errors import ConfigError, UserError
from utils.export import DEFAULT_CONF_THRESH, DEFAULT_NMS_IOU, export_all
from utils.export.check import check_export
from utils.preprocess import resize_image, to_input_tensor


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--data', required=True, help='the .data file the model was trained with')
    parser.add_argument('--weights', required=True, help='a training checkpoint or a released .pth state_dict')
    parser.add_argument('--output', default='model.onnx', help='ONNX path; NCNN files go beside it (same stem)')
    parser.add_argument('--opset', type=positive_int, default=11, help='ONNX opset (default 11)')
    parser.add_argument('--no-simplify', action='store_true', help='skip onnxsim')
    parser.add_argument('--no-ncnn', action='store_true', help='ONNX only: no .param/.bin/.json')
    parser.add_argument('--image', help='image for the numeric check (default: the first image of the val split)')
    parser.add_argument('--conf-thresh', type=probability, default=DEFAULT_CONF_THRESH,
                        help='score threshold written to the sidecar and used by the detection check')
    parser.add_argument('--nms-iou', type=probability, default=DEFAULT_NMS_IOU, help='NMS IoU written to the sidecar')
    parser.add_argument('--int8', action='store_true', help='also write X-int8.param/.bin/.json (INT8 NCNN)')
    parser.add_argument('--calib-images', type=positive_int, default=128,
                        help='train-split images to calibrate INT8 on (default 128, or all if fewer)')
    parser.add_argument('--calib-method', default='mse', choices=('mse', 'kl', 'minmax'),
                        help="activation scales: 'mse' (default: KL threshold refined per layer), NCNN's 'kl', "
                             "'minmax'")
    parser.add_argument('--int8-all', action='store_true',
                        help='quantize every conv layer (default: depthwise, first and output convs stay fp32; '
                             'all-INT8 is smaller but less accurate: bench/int8_accuracy.py --int8-depthwise '
                             '--int8-ends measures it)')
    parser.add_argument('--fp16-kept', action='store_true',
                        help='with --int8: store the weights of the layers left fp32 as float16 (a smaller .bin, but '
                             'the C++ app\'s boxes then differ slightly from the Python runtime\'s)')
    return parser.parse_args(argv)


def generated_image(width: int = 640, height: int = 480) -> np.ndarray:
    """A fixed synthetic scene (gradient, shapes, noise) for when no real image is at hand."""
    rng = np.random.default_rng(0)
    image = np.zeros((height, width, 3), np.uint8)
    image[:] = np.linspace(40, 200, width, dtype=np.uint8)[None, :, None]
    for _ in range(12):
        x, y = int(rng.integers(0, width)), int(rng.integers(0, height))
        color = tuple(int(c) for c in rng.integers(0, 256, 3))
        cv2.rectangle(image, (x, y), (x + int(rng.integers(20, 200)), y + int(rng.integers(20, 200))), color, -1)
    return cv2.add(image, rng.integers(0, 20, image.shape, dtype=np.uint8))


def load_check_image(path, cfg) -> tuple[np.ndarray, str]:
    """The --image, else the first image of the val split (when it can be read), else a generated scene."""
    if path is not None:
        return read_image(path), str(path)
    try:
        first = list_images(cfg.val)[0]
        return read_image(first), str(first)
    except UserError:   # a list file copied without its images, say: the check does not need the user's data
        return generated_image(), 'a generated image'


def main(argv=None) -> int:
    args = parse_args(argv)
    if (args.int8_all or args.fp16_kept) and not args.int8:
        raise ConfigError('--int8-all and --fp16-kept choose how --int8 quantizes; add --int8')
    if args.int8 and args.no_ncnn:
        raise ConfigError('--int8 quantizes the NCNN model; it cannot go with --no-ncnn')
    torch.set_num_threads(1)
    cfg = load_config(args.data)
    # --weights replaces whatever the .data starts training from, so don't read those files first
    model = build_model(dataclasses.replace(cfg, pre_weights=None, backbone_weights=None))
    load_weights(model, args.weights)
    image, image_name = load_check_image(args.image, cfg)
    resized, _ = resize_image(image, cfg.width, cfg.height, cfg.letterbox)
    batch = to_input_tensor([resized])

    paths = export_all(model, cfg, args.output, opset=args.opset, simplify=not args.no_simplify,
                       ncnn=not args.no_ncnn, conf_thresh=args.conf_thresh, nms_iou=args.nms_iou)
    for kind, path in paths.items():
        print(f'wrote {kind:5s} {path}')
    print(f'checking against PyTorch on {image_name} ({cfg.width}x{cfg.height}):')
    report = check_export(model, paths, batch, conf_thresh=args.conf_thresh, nms_iou=args.nms_iou)
    print(report.text())
    if not report.ok:
        return 1
    if args.int8:
        from utils.int8.quantize import quantize_with_config
        quantize_with_config(paths['param'], cfg, args.calib_images, method=args.calib_method,
                             depthwise_fp32=not args.int8_all, ends_fp32=not args.int8_all,
                             fp16_kept=args.fp16_kept)
    return 0


if __name__ == '__main__':
    sys.exit(run(main))
