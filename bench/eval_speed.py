"""Wall time of `evaluation.py` on coco128 val2017 with the released Yolo-FastestV2 weights (352x352 stretch).

    .venv/bin/python bench/eval_speed.py                 # --threads 1 --repeat 1
    .venv/bin/python bench/eval_speed.py --threads 0     # torch's default thread count

Each figure is the wall time of a whole `evaluation.py` process (start-up, model load, reading and resizing the
images, inference, decode + NMS, pycocotools with all 12 COCO numbers and the per-class table), best of --repeat.
Compared against:
* the reference Yolo-FastestV2 evaluation's wall time on the same 128 images, mAP@0.5 only (REFERENCE_SECONDS).
  This is a RECORDED baseline (not measured in this run), so its ratio is indicative; the target is under half.
* a naive loop measured in this run: the same evaluation.py, one image per forward pass, images read in the main
  process (--batch-size 1 --workers 0).
"""
from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / 'shared'
WEIGHTS = SHARED / 'weights' / 'yolo-fastestv2' / 'coco2017-0.241078ap-model.pth'
VAL = SHARED / 'datasets' / 'coco128' / 'images' / 'val2017'
REFERENCE_SECONDS = 15.8   # recorded: the reference evaluation, mAP@0.5 only
ANCHORS = '12.64,19.39, 37.88,51.48, 55.71,138.31, 126.91,78.23, 131.57,214.55, 279.92,258.87'


def write_data_file(folder: Path) -> Path:
    names = REPO / 'data' / 'coco.names'
    path = folder / 'coco128.data'
    path.write_text(f'[model-configure]\nclasses=80\nwidth=352\nheight=352\nanchor_num=3\nanchors={ANCHORS}\n'
                    f'[data-configure]\ntrain={VAL}\nval={VAL}\nnames={names}\n')
    return path


def time_evaluation(data: Path, extra: list, repeat: int) -> tuple[float, str]:
    """Best wall time of `evaluation.py` over `repeat` runs, and the last run's mAP line."""
    best, line = float('inf'), ''
    for _ in range(repeat):
        start = time.perf_counter()
        result = subprocess.run([sys.executable, str(REPO / 'evaluation.py'), '--data', str(data),
                                 '--weights', str(WEIGHTS)] + extra, cwd=REPO, capture_output=True, text=True)
        seconds = time.perf_counter() - start
        if result.returncode != 0:
            raise SystemExit(f'evaluation.py failed:\n{result.stderr[-2000:]}')
        best = min(best, seconds)
        found = re.search(r'^mAP@0.5:0.95 .*$', result.stdout, re.M)
        line = found.group(0) if found else '(no mAP line found)'
    return best, line


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--threads', type=int, default=1,
                        help='inference threads for both runs (default 1: this machine is shared; 0 = default)')
    parser.add_argument('--repeat', type=int, default=1, help='runs per setting; the best is reported')
    parser.add_argument('--no-naive', action='store_true', help='skip the naive one-image-at-a-time run')
    args = parser.parse_args()
    for path in (WEIGHTS, VAL):
        if not path.exists():
            raise SystemExit(f'{path} is absent: this benchmark needs ../shared')
    common = ['--threads', str(args.threads), '--no-per-class']
    with tempfile.TemporaryDirectory() as folder:
        data = write_data_file(Path(folder))
        ours, ours_line = time_evaluation(data, common, args.repeat)
        print(f'evaluation.py (batch 16, all COCO metrics): {ours:.2f} s wall   [{ours_line}]')
        verdict = 'met' if ours < REFERENCE_SECONDS / 2 else 'NOT met'
        print(f'  vs reference 15.8 s (recorded baseline, mAP@0.5 only): {ours / REFERENCE_SECONDS:.2f}x the time, '
              f'{REFERENCE_SECONDS / ours:.1f}x faster; target < 0.5x: {verdict}')
        if not args.no_naive:
            naive, naive_line = time_evaluation(data, common + ['--batch-size', '1', '--workers', '0'], args.repeat)
            print(f'naive loop (1 image per pass, no reader processes), this run: {naive:.2f} s wall   [{naive_line}]')
            print(f'  speed-up over the naive loop: {naive / ours:.2f}x')
    return 0


if __name__ == '__main__':
    sys.exit(main())
