"""CPU latency of each model on PyTorch, onnxruntime and NCNN, against the NCNN model Yolo-FastestV2 shipped.

    .venv/bin/python bench/latency.py                                  # yolo-fastestv2 at 352, leyolo-nano at 320
    .venv/bin/python bench/latency.py --models leyolo-small:480 --runs 20 --threads 1

Per model and thread count: export (as pytorch2onnx.py does) into a temp folder, warm up, then time batch-1
inference `--runs` times and print the median in ms. The backends run interleaved (one call of each in turn, the order rotating), so
a load change on a shared machine hits all of them alike; the shipped reference NCNN model
(../shared/weights/yolo-fastestv2/yolo-fastestv2-opt.param, 352x352) runs in the same loop, and the script prints
ours/reference for NCNN (target <= 1.0 for yolo-fastestv2 at 352). NCNN runs fp32 (fp16 off) for both models.
On a shared machine the ratio moves by a few per cent from run to run: compare several runs, or use --runs 300.
Weights: the released ones where they exist (latency does not depend on their values, but real ones rule out
denormal slow paths), else the initial weights.
"""
import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from model.build import build_model  # noqa: E402
from model.weights import load_weights  # noqa: E402
from utils.config import load_config  # noqa: E402
from utils.export import export_all  # noqa: E402
from utils.ncnn_runtime import NcnnRuntime  # noqa: E402

SHARED = REPO.parent / 'shared'
SHIPPED_PARAM = SHARED / 'weights/yolo-fastestv2/yolo-fastestv2-opt.param'
SHIPPED_BLOBS = ('input.1', ['794', '796'])
SHIPPED_SIZE = 352
RELEASED = {'yolo-fastestv2': SHARED / 'weights/yolo-fastestv2/coco2017-0.241078ap-model.pth',
            'leyolo-nano': SHARED / 'weights/leyolo/LeYOLONano.pt'}


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--models', default='yolo-fastestv2:352,leyolo-nano:320',
                        help='comma-separated model[:input side in px] (default %(default)s)')
    parser.add_argument('--runs', type=int, default=50, help='timed runs per backend (default 50)')
    parser.add_argument('--warmup', type=int, default=10, help='untimed runs first (default 10)')
    parser.add_argument('--threads', default='1,2', help='thread counts (default 1,2)')
    return parser.parse_args()


def data_file(folder: Path, model_name: str, side: int) -> Path:
    """A throwaway .data: export needs only model, head, classes and input size; the dataset paths must exist."""
    (folder / 'coco.names').write_text(''.join(f'class{i}\n' for i in range(80)))
    head = 'leyolo' if model_name.startswith('leyolo') else 'anchor'
    path = folder / f'{model_name}.data'
    path.write_text(f'model={model_name}\nhead={head}\nclasses=80\nwidth={side}\nheight={side}\n'
                    f'train={folder}\nval={folder}\nnames=coco.names\n')
    return path


def onnxruntime_session(onnx_path, threads: int):
    import onnxruntime
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    session = onnxruntime.InferenceSession(str(onnx_path), options, providers=['CPUExecutionProvider'])
    name = session.get_inputs()[0].name
    return lambda batch: session.run(None, {name: batch})


def time_interleaved(runners: dict, batch: np.ndarray, runs: int, warmup: int) -> dict:
    """{name: callable(batch)} -> {name: [ms per run]}; each round calls every runner once, in turn.

    The order rotates every round: a runner that always followed PyTorch would pay for the caches it flushed.
    """
    names = list(runners)
    for _ in range(warmup):
        for run in runners.values():
            run(batch)
    times_ms = {name: [] for name in runners}
    for round_index in range(runs):
        shift = round_index % len(names)
        for name in names[shift:] + names[:shift]:
            start = time.perf_counter()
            runners[name](batch)
            times_ms[name].append((time.perf_counter() - start) * 1000)
    return times_ms


def bench_model(model_name: str, side: int, threads_list, runs: int, warmup: int, folder: Path) -> list:
    cfg = load_config(data_file(folder, model_name, side))
    model = build_model(cfg, log=lambda *_: None)
    weights = RELEASED.get(model_name)
    weights_note = 'initial weights'
    if weights is not None and weights.is_file():
        load_weights(model, weights)
        weights_note = weights.name
    model.eval()
    model.export = True
    paths = export_all(model, cfg, folder / f'{model_name}.onnx')
    batch = np.random.default_rng(0).random((1, 3, side, side), dtype=np.float32)
    with_reference = model_name == 'yolo-fastestv2' and side == SHIPPED_SIZE and SHIPPED_PARAM.is_file()
    print(f'\n{model_name} {side}x{side} ({weights_note}), median of {runs} runs after {warmup} warm-up')
    results = []
    for threads in threads_list:
        torch.set_num_threads(threads)

        def run_torch(x):
            with torch.inference_mode():
                return model(torch.from_numpy(x))

        runners = {'pytorch': run_torch,
                   'onnxruntime': onnxruntime_session(paths['onnx'], threads),
                   'ncnn': NcnnRuntime(paths['param'], num_threads=threads)}
        if with_reference:
            runners['ncnn reference'] = NcnnRuntime(SHIPPED_PARAM, num_threads=threads, blobs=SHIPPED_BLOBS)
        times_ms = time_interleaved(runners, batch, runs, warmup)
        medians = {name: statistics.median(values) for name, values in times_ms.items()}
        label = f'{threads} thread{"s" if threads > 1 else " "}'
        for name, ms in medians.items():
            print(f'  {label}  {name:15s} {ms:8.2f} ms')
        if with_reference:
            ratio = medians['ncnn'] / medians['ncnn reference']
            # the median of the per-round ratios pairs runs made at the same moment: steadier under shared load
            paired = statistics.median(a / b for a, b in zip(times_ms['ncnn'], times_ms['ncnn reference']))
            verdict = 'ok' if ratio <= 1.0 else 'SLOWER than the reference'
            print(f'  {label}  ncnn ours/reference = {ratio:.3f} (paired per round {paired:.3f}; '
                  f'target <= 1.0: {verdict})')
        results.append((threads, medians))
    return results


def main():
    args = parse_args()
    threads_list = [int(t) for t in args.threads.split(',')]
    for item in args.models.split(','):
        model_name, _, side = item.partition(':')
        side = int(side) if side else (SHIPPED_SIZE if model_name == 'yolo-fastestv2' else 320)
        with tempfile.TemporaryDirectory(prefix='latency_') as folder:
            bench_model(model_name, side, threads_list, args.runs, args.warmup, Path(folder))


if __name__ == '__main__':
    main()
