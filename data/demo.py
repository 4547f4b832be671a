"""`make demo`: the whole job, end to end, on the generated sample dataset.

generate data -> k-means anchors -> train briefly -> evaluate -> export ONNX + NCNN -> detect on one image.
Each step is the same command a user types, so the demo doubles as a worked example. Runs in minutes on 2 CPU cores.
"""
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / 'demo'
DATA = OUT / 'sample' / 'sample.data'
WEIGHTS = OUT / 'weights'


def step(title: str, *args: str) -> None:
    print(f'\n=== {title}\n$ python3 {" ".join(args)}', flush=True)
    started = time.time()
    subprocess.run([sys.executable, *args], cwd=REPO, check=True)
    print(f'--- {title}: {time.time() - started:.1f} s', flush=True)


def main() -> None:
    started = time.time()
    step('1/6 generate the sample dataset', 'data/make_sample.py', '--out', str(OUT / 'sample'))
    step('2/6 k-means anchors (written into the .data)', 'genanchors.py', '--data', str(DATA), '--update',
         '--output_dir', str(OUT))
    step('3/6 train', 'train.py', '--data', str(DATA), '--out', str(WEIGHTS))
    step('4/6 evaluate (COCO protocol)', 'evaluation.py', '--data', str(DATA), '--weights', str(WEIGHTS / 'best.pt'),
         '--plots', str(OUT / 'plots'))
    step('5/6 export to ONNX and NCNN', 'pytorch2onnx.py', '--data', str(DATA), '--weights', str(WEIGHTS / 'best.pt'),
         '--output', str(OUT / 'export' / 'model.onnx'))
    image = sorted((OUT / 'sample' / 'images' / 'val').iterdir())[0]
    step('6/6 detect on one image (NCNN backend)', 'test.py', '--data', str(DATA), '--backend', 'ncnn',
         '--weights', str(OUT / 'export' / 'model.param'), '--img', str(image), '--out', str(OUT / 'detections'))
    print(f'\nDemo finished in {time.time() - started:.0f} s. Artefacts:')
    for label, path in [('dataset', OUT / 'sample'), ('anchors', OUT), ('checkpoints, results.csv, plots', WEIGHTS),
                        ('PR curve and confusion summary', OUT / 'plots'),
                        ('ONNX, NCNN .param/.bin and sidecar .json', OUT / 'export'),
                        ('drawn detections', OUT / 'detections')]:
        print(f'  {label:42s} {path.relative_to(REPO)}/')


if __name__ == '__main__':
    main()
