"""Benchmark: k-means anchors on a COCO-sized set of boxes (~860k, the size of COCO train2017's labels), alone and
end to end from label files on disk.

    .venv/bin/python bench/anchors.py [--boxes 860000] [--baseline-boxes 20000] [--files 8600] [--runs 3]

The boxes are drawn from coco128's train2017 boxes (each a random coco128 box, jittered by +-10 % in width and
height), so the distribution matches COCO's while the data set stays small. Prints the time of utils.data.anchors for
k = 6 and k = 9 (target: under 5 s each on 2 cores) and, as the baseline measured in the same run, Yolo-FastestV2's
pure-Python k-means (one random start, a Python loop over boxes and anchors per iteration) on `--baseline-boxes`
boxes, its time extrapolated linearly to the full set (its cost per iteration is proportional to boxes x anchors).

End to end: the same boxes written as `--files` Darknet label files (a random class and centre per box, six decimals
as COCO's converters write them; no images) and `python3 genanchors.py --traintxt LIST` run on them as a user runs
it, start-up and imports included, `--runs` times; each run's wall time (target: 2 s) and CPU time (user + system:
on a shared machine the wall time also counts the time other processes took), and its ratio to the k-means alone.
"""
import argparse
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from utils.data.anchors import kmeans_anchors, mean_best_iou, read_box_sizes  # noqa: E402

COCO128 = REPO.parent / 'shared' / 'datasets' / 'coco128' / 'images' / 'train2017'


def coco_like_boxes(n: int, seed: int = 0) -> np.ndarray:
    source, _ = read_box_sizes(COCO128)
    rng = np.random.default_rng(seed)
    boxes = source[rng.integers(len(source), size=n)] * np.exp(rng.uniform(-0.1, 0.1, (n, 2)))
    return boxes.clip(1e-4, 1.0)


def write_label_files(folder: Path, boxes_wh: np.ndarray, files: int, seed: int = 0) -> Path:
    """`files` label files sharing `boxes_wh` out (w, h normalised) and the list file of their (absent) images."""
    rng = np.random.default_rng(seed)
    rows = np.column_stack([rng.integers(0, 80, len(boxes_wh)), rng.uniform(0, 1, (len(boxes_wh), 2)), boxes_wh])
    (folder / 'labels').mkdir(parents=True)
    for i, file_rows in enumerate(np.array_split(rows, files)):
        lines = '%d %.6f %.6f %.6f %.6f\n' * len(file_rows)
        (folder / 'labels' / f'{i:06d}.txt').write_text(lines % tuple(file_rows.ravel()))
    listing = folder / 'train.txt'
    listing.write_text(''.join(f'images/{i:06d}.jpg\n' for i in range(files)))
    return listing


def time_genanchors(listing: Path, output_dir: Path) -> tuple[float, float]:
    """(wall seconds, CPU seconds) of one `python3 genanchors.py --traintxt listing` run."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    subprocess.run([sys.executable, str(REPO / 'genanchors.py'), '--traintxt', str(listing), '--output_dir',
                    str(output_dir)], cwd=REPO, check=True, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def python_iou(box, centre) -> float:
    (w, h), (cw, ch) = box, centre
    overlap = min(w, cw) * min(h, ch)
    return overlap / (w * h + cw * ch - overlap)


def baseline_kmeans(boxes_wh: np.ndarray, k: int, seed: int = 0, max_iterations: int = 300) -> tuple:
    """Yolo-FastestV2's procedure: random boxes as centres, assign in a Python loop, mean centres, until stable.
    Returns (centres, iterations)."""
    rng = np.random.default_rng(seed)
    boxes = boxes_wh.tolist()
    centres = boxes_wh[rng.choice(len(boxes_wh), k, replace=False)]
    previous = None
    for iteration in range(1, max_iterations + 1):
        centre_list = centres.tolist()
        assignment = np.array([max(range(k), key=lambda j: python_iou(b, centre_list[j])) for b in boxes])
        if previous is not None and (assignment == previous).all():
            return centres, iteration
        centres = np.array([boxes_wh[assignment == j].mean(0) if (assignment == j).any() else centres[j]
                            for j in range(k)])
        previous = assignment
    return centres, max_iterations


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--boxes', type=int, default=860_000)
    parser.add_argument('--baseline-boxes', type=int, default=20_000)
    parser.add_argument('--files', type=int, default=8_600, help='label files of the end-to-end case')
    parser.add_argument('--runs', type=int, default=3, help='genanchors.py runs of the end-to-end case')
    args = parser.parse_args()
    boxes = coco_like_boxes(args.boxes)
    print(f'{len(boxes)} boxes drawn from coco128 train2017 box sizes')
    ours = {}
    for k in (6, 9):
        started = time.perf_counter()
        anchors, mean_iou = kmeans_anchors(boxes, k)
        ours[k] = time.perf_counter() - started
        print(f'utils.data.anchors k={k}: {ours[k]:.2f} s (10 restarts), mean IoU {mean_iou:.4f}, anchors at 352 px: '
              f'{", ".join(f"{w:.0f}x{h:.0f}" for w, h in anchors * 352)}')

    with tempfile.TemporaryDirectory() as folder:
        listing = write_label_files(Path(folder), boxes, args.files)
        for run in range(1, args.runs + 1):
            wall, cpu = time_genanchors(listing, Path(folder) / 'anchors')
            print(f'genanchors.py end to end, {len(boxes)} boxes in {args.files} label files, run {run}: '
                  f'{wall:.2f} s wall ({wall / 2:.2f}x the 2 s target, {wall / ours[6]:.2f}x the k-means alone), '
                  f'{cpu:.2f} s CPU ({cpu / 2:.2f}x the target)')

    small = boxes[:args.baseline_boxes]
    for k in (6, 9):
        started = time.perf_counter()
        centres, iterations = baseline_kmeans(small, k)
        baseline = time.perf_counter() - started
        estimate = baseline * len(boxes) / len(small)
        print(f'baseline (pure Python, Yolo-FastestV2 style) k={k} on {len(small)} boxes: {baseline:.1f} s, '
              f'{iterations} iterations, mean IoU {mean_best_iou(small, centres):.4f}; '
              f'extrapolated to {len(boxes)} boxes: {estimate:.0f} s -> utils.data.anchors is '
              f'{estimate / ours[k]:.0f}x '
              f'faster (with 10 restarts to its 1)')


if __name__ == '__main__':
    main()
