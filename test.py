"""Detect objects in an image, a folder of images or a video, draw them and print them.

    python3 test.py --data data/coco.data --weights weights/coco/best.pth --img photo.jpg
    python3 test.py --data data/coco.data --weights model.param --img folder/ --out results/   # NCNN

For each image, prints one line per detection, `class score x1 y1 x2 y2` (original pixels; spaces in class names
become '_'), then the time of each stage: pre-process (read, resize, scale), inference, post-process (decode, NMS,
back to original pixels). The drawn result is written beside the input as NAME_det.EXT, or into --out.
"""
import argparse
import sys
import time
from pathlib import Path

import cv2

import tinydet
from utils.cli import non_negative_int, positive_int, probability, run
from utils.config import load_config
from utils.data.dataset import IMAGE_SUFFIXES, read_image
from utils.draw import draw_detections
from utils.errors import ConfigError, DatasetError
from utils.runtimes import BACKENDS, backend_for

VIDEO_SUFFIXES = {'.mp4', '.avi', '.mov', '.mkv', '.m4v', '.webm'}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--data', required=True, help='the .data file the model was trained with')
    parser.add_argument('--weights', required=True,
                        help='torch: .pth (checkpoint or released); onnx/opencv: .onnx; ncnn: .param')
    parser.add_argument('--img', required=True, help='an image, a folder of images, or a video')
    parser.add_argument('--backend', choices=BACKENDS,
                        help='what runs the model (default: by the weights file: .param ncnn, .onnx onnx, else torch)')
    parser.add_argument('--conf', type=probability, default=0.3, help='score threshold (default 0.3)')
    parser.add_argument('--iou', type=probability, default=0.4, help='NMS IoU threshold (default 0.4)')
    parser.add_argument('--max-det', type=positive_int, default=300, help='detections kept per image (default 300)')
    parser.add_argument('--out', help='folder for the drawn results (default: beside each input)')
    parser.add_argument('--threads', type=non_negative_int, default=0,
                        help='CPU threads for inference; 0 = library default')
    return parser.parse_args(argv)


def output_path(source: Path, out_dir: Path | None, suffix: str | None = None) -> Path:
    name = f'{source.stem}_det{suffix or source.suffix}'
    return (out_dir / name) if out_dir is not None else source.with_name(name)


def detect_and_print(detector, image, label: str, read_seconds: float):
    """Detect, print one line per detection and the time of each stage; return the (M, 6) detections and those
    times."""
    detections, seconds = detector.detect(image)
    seconds = {'pre-process': read_seconds + seconds.pop('resize'), **seconds}
    print(f'{label}: {len(detections)} detections')
    for d in detector.as_detections(detections):
        print(f'{d.class_name.replace(" ", "_")} {d.score:.4f} {d.x1:.1f} {d.y1:.1f} {d.x2:.1f} {d.y2:.1f}')
    print('time: ' + ', '.join(f'{stage} {1000 * s:.1f} ms' for stage, s in seconds.items()))
    return detections, seconds


def run_images(paths: list, detector, out_dir: Path | None) -> list:
    all_seconds = []
    for path in paths:
        start = time.perf_counter()
        image = read_image(path)
        detections, seconds = detect_and_print(detector, image, str(path), time.perf_counter() - start)
        target = output_path(path, out_dir)
        if not cv2.imwrite(str(target), draw_detections(image, detections, detector.names)):
            raise ConfigError(f'{target}: cannot write the drawn result (is the folder writable? try --out)')
        print(f'drawn: {target}')
        all_seconds.append(seconds)
    return all_seconds


def run_video(path: Path, detector, out_dir: Path | None) -> list:
    capture = cv2.VideoCapture(str(path))
    if not capture.isOpened():
        raise DatasetError(f'{path}: OpenCV cannot open this video')
    fps = capture.get(cv2.CAP_PROP_FPS) or 25.0
    target, writer, all_seconds = output_path(path, out_dir, '.mp4'), None, []
    frame_index = 0
    while True:
        start = time.perf_counter()
        ok, frame = capture.read()
        if not ok:
            break
        detections, seconds = detect_and_print(detector, frame, f'{path} frame {frame_index}',
                                               time.perf_counter() - start)
        if writer is None:
            writer = cv2.VideoWriter(str(target), cv2.VideoWriter_fourcc(*'mp4v'), fps,
                                     (frame.shape[1], frame.shape[0]))
            if not writer.isOpened():
                raise ConfigError(f'{target}: cannot write the drawn video (is the folder writable? try --out)')
        writer.write(draw_detections(frame, detections, detector.names))
        all_seconds.append(seconds)
        frame_index += 1
    capture.release()
    if writer is not None:
        writer.release()
        print(f'drawn: {target}')
    return all_seconds


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.backend is None:
        args.backend = backend_for(args.weights)
        print(f'backend {args.backend} (from the file type of {args.weights}; --backend to choose another)')
    source = Path(args.img)
    out_dir = Path(args.out) if args.out else None
    cfg = load_config(args.data, splits=False)   # detecting needs the model keys and names, not the dataset
    if out_dir is not None:   # before the model loads: a wrong --out is found at once
        try:
            out_dir.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise ConfigError(f'--out {out_dir}: cannot make the folder ({error.strerror})') from None
    detector = tinydet.load(args.weights, data=cfg, backend=args.backend, threads=args.threads)
    detector.conf, detector.iou, detector.max_det = args.conf, args.iou, args.max_det
    if source.is_dir():
        paths = sorted(p for p in source.rglob('*') if p.suffix.lower() in IMAGE_SUFFIXES)
        drawn = [p for p in paths if p.stem.endswith('_det')]
        if drawn:   # results of an earlier run written beside the inputs
            print(f'skipping {len(drawn)} images named *_det (drawn results), e.g. {drawn[0]}')
            paths = [p for p in paths if not p.stem.endswith('_det')]
        if not paths:
            raise DatasetError(f'{source}: no images ({", ".join(sorted(IMAGE_SUFFIXES))}) in this folder')
        all_seconds = run_images(paths, detector, out_dir)
    elif source.suffix.lower() in VIDEO_SUFFIXES:
        all_seconds = run_video(source, detector, out_dir)
    elif source.is_file():
        all_seconds = run_images([source], detector, out_dir)
    else:
        raise DatasetError(f'{source}: no such image, folder or video')
    if len(all_seconds) > 1:   # the first image also pays for warm-up, so the mean is over the rest
        rest = all_seconds[1:]
        print(f'mean over {len(rest)} images after the first: ' + ', '.join(
            f'{stage} {1000 * sum(s[stage] for s in rest) / len(rest):.1f} ms' for stage in rest[0]))
    return 0


if __name__ == '__main__':
    sys.exit(run(main))
