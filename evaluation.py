"""Evaluate a model on the val split of a .data file with pycocotools and print the COCO table.

    python3 evaluation.py --data data/coco.data --weights weights/coco/best.pth
    python3 evaluation.py --data data/coco.data --weights model.onnx --save-json preds.json   # onnxruntime

Prints the 12 COCO numbers (mAP@0.5:0.95 and mAP@0.5 first), AP per class, and precision/recall/F1 at IoU 0.5 at
--pr-conf. --rect --multi-label --iou 0.7 is Ultralytics' validation protocol (LeYOLO's published figures):
rectangular batches of --batch-size (default 32 with --rect) with minimal padding, torch backend only, and NMS
that keeps a box once per class above --conf. --save-json writes COCO results (image_id = file stem, an int
when all digits; category_id = 0-based class; bbox [x, y, w, h] in original pixels).
--plots DIR writes pr_curve.png and confusion.png.
"""
import argparse
import sys

import tinydet
from utils.cli import non_negative_int, positive_int, probability, run
from utils.data.eval_data import RECT_BATCH_SIZE
from utils.memory import keep_freed_memory
from utils.runtimes import BACKENDS, backend_for


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--data', required=True, help='the .data file (its val split is evaluated)')
    parser.add_argument('--weights', required=True,
                        help='torch: .pth (checkpoint or released); onnx/opencv: .onnx; ncnn: .param')
    parser.add_argument('--backend', choices=BACKENDS,
                        help='what runs the model (default: by the weights file: .param ncnn, .onnx onnx, else torch)')
    parser.add_argument('--split', default='val', choices=('val', 'train'), help='which split to score (default val)')
    parser.add_argument('--conf', type=probability, default=0.001, help='score threshold before NMS (default 0.001)')
    parser.add_argument('--iou', type=probability, default=0.6, help='NMS IoU threshold (default 0.6)')
    parser.add_argument('--max-det', type=positive_int, default=300, help='detections kept per image (default 300)')
    parser.add_argument('--pr-conf', type=probability, default=0.3,
                        help='confidence for the precision/recall/F1 line and the confusion matrix (default 0.3)')
    parser.add_argument('--batch-size', type=positive_int,
                        help=f'images per forward pass (default 16; {RECT_BATCH_SIZE} with --rect, where it also '
                             f'sets the batch shapes)')
    parser.add_argument('--rect', action='store_true',
                        help='rectangular batches: images sorted by aspect ratio, each batch padded to its own '
                             'shape, long side = the .data width (needs width = height; torch backend only)')
    parser.add_argument('--multi-label', action='store_true',
                        help='NMS keeps a box once for every class scoring above --conf (Ultralytics\' validation); '
                             'default: each box its best class only')
    parser.add_argument('--workers', type=non_negative_int,
                        help='image-reading processes (default: the .data key workers)')
    parser.add_argument('--threads', type=non_negative_int, default=0,
                        help='CPU threads for inference; 0 = the library default. On a busy machine 1 is often '
                             'fastest')
    parser.add_argument('--save-json', help='write the detections as a COCO results file')
    parser.add_argument('--plots', help='folder for pr_curve.png and confusion.png')
    parser.add_argument('--no-per-class', action='store_true', help='print the COCO numbers only')
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    keep_freed_memory()   # batches of inference reuse the memory the last one freed (utils/memory.py)
    if args.backend is None:
        args.backend = backend_for(args.weights)
        print(f'backend {args.backend} (from the file type of {args.weights}; --backend to choose another)')
    result = tinydet.evaluate(args.data, args.weights, backend=args.backend, split=args.split, conf=args.conf,
                              iou=args.iou, max_det=args.max_det, pr_conf=args.pr_conf, batch_size=args.batch_size,
                              rect=args.rect, multi_label=args.multi_label, workers=args.workers,
                              threads=args.threads, save_json=args.save_json, plots=args.plots)
    print(result.summary(per_class=not args.no_per_class))
    if args.save_json:
        print(f'COCO results written to {args.save_json}')
    if args.plots:
        print(f'plots written to {args.plots}/pr_curve.png and confusion.png')
    return 0


if __name__ == '__main__':
    sys.exit(run(main))
