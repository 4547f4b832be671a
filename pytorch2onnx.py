"""Export a trained model to ONNX and NCNN, then check every backend against PyTorch on a real image.

    python3 pytorch2onnx.py --data data/coco.data --weights weights/coco/best.pth

writes model.onnx (simplified), model.param / model.bin (NCNN, fp32) and model.json (what the C++ app reads),
then prints max and mean |diff| of each output for onnxruntime, OpenCV DNN and NCNN against PyTorch, and whether
the detections are the same. Exits non-zero when a check fails. Input size, classes and anchors come from the .data.
With --web DIR it also writes DIR, a static page that runs the model in a browser (docs/deployment.md).
"""
import argparse
import sys

import torch

import tinydet
from utils.cli import positive_int, probability, run
from utils.export import DEFAULT_CONF_THRESH, DEFAULT_NMS_IOU


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
                        help='quantize every conv layer (default: the layers measured most sensitive stay fp32, '
                             'float16 weights, within 30%% of the fp32 .bin; all-INT8 is smaller but empties more '
                             'images: bench/int8_accuracy.py --int8-all measures it)')
    parser.add_argument('--web', metavar='DIR',
                        help='also write DIR: index.html running the model in a browser with onnxruntime-web (copied '
                             'in from npm); serve it with `python3 -m http.server -d DIR`')
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(1)
    tinydet.export(args.data, args.weights, args.output, opset=args.opset, simplify=not args.no_simplify,
                   ncnn=not args.no_ncnn, image=args.image, conf_thresh=args.conf_thresh, nms_iou=args.nms_iou,
                   int8=args.int8, calib_images=args.calib_images, calib_method=args.calib_method,
                   int8_all=args.int8_all, web=args.web)
    return 0


if __name__ == '__main__':
    sys.exit(run(main))
