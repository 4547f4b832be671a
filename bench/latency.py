"""CPU latency of each model on PyTorch, onnxruntime and NCNN, against the NCNN model Yolo-FastestV2 shipped.

    .venv/bin/python bench/latency.py                                  # yolo-fastestv2 at 352, leyolo-nano at 320
    .venv/bin/python bench/latency.py --models yolo-fastestv2 --runs 300 --threads 1 --cpu-time
    .venv/bin/python bench/latency.py --models leyolo-small:480 --runs 20 --threads 1

Per model and thread count: export (as pytorch2onnx.py does) into a temp folder, warm up, then time batch-1
inference `--runs` times per backend and print the median and the interquartile range in ms. For yolo-fastestv2 at
352 the NCNN model Yolo-FastestV2's authors shipped (../shared/weights/yolo-fastestv2/yolo-fastestv2-opt.param) and
our export without its layer hint (utils/ncnn_param.py; at more than one thread NcnnRuntime clears that hint
itself, so both slots then run the same graph) run in the same loop, and the script prints
ours/reference with a 95 % interval (target <= 1.0). Every NCNN model runs with the same options: fp32
(fp16 packed/storage/arithmetic off), the same thread count, NCNN's defaults otherwise.

Fairness on a shared machine: every round calls each backend once, in an order taken from a balanced Latin square
(each backend follows every other equally often), because a backend timed right after PyTorch or onnxruntime
starts with caches they filled, and one timed right after another NCNN model finds NCNN's code and the input warm.
A fixed rotation biases the ratio: with our NCNN model after onnxruntime every round and the reference after ours
in 3 of 4, an A/A test (`--same-model-twice`: our model in both slots) reads clearly above 1 for two copies of one
model.
`--cpu-time` times with the calling thread's CPU clock (time.thread_time), which leaves out the time the OS gave
other processes; only meaningful at 1 thread, where every backend computes in the calling thread.
The load average is printed before and after each model; ratios from different runs are not comparable.
Weights: the released ones where they exist (latency does not depend on their values, but real ones rule out
denormal slow paths), else the initial weights.
"""
import argparse
import os
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
from utils.ncnn_param import read_io_blobs  # noqa: E402
from utils.runtimes.ncnn_runtime import NcnnRuntime, param_text_without_hints  # noqa: E402

SHARED = REPO.parent / 'shared'
SHIPPED_PARAM = SHARED / 'weights/yolo-fastestv2/yolo-fastestv2-opt.param'
SHIPPED_BLOBS = ('input.1', ['794', '796'])
SHIPPED_SIZE = 352
RELEASED = {'yolo-fastestv2': SHARED / 'weights/yolo-fastestv2/coco2017-0.241078ap-model.pth',
            'leyolo-nano': SHARED / 'weights/leyolo/LeYOLONano.pt'}
OURS, REFERENCE = 'ncnn', 'ncnn reference'


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--models', default='yolo-fastestv2:352,leyolo-nano:320',
                        help='comma-separated model[:input side in px] (default %(default)s)')
    parser.add_argument('--runs', type=int, default=50, help='timed runs per backend (default 50; 300 for ratios)')
    parser.add_argument('--warmup', type=int, default=10, help='untimed runs first (default 10)')
    parser.add_argument('--threads', default='1,2', help='thread counts (default 1,2)')
    parser.add_argument('--cpu-time', action='store_true',
                        help='time with the thread CPU clock (1 thread only): steadier on a machine shared with others')
    parser.add_argument('--same-model-twice', action='store_true',
                        help='A/A check: time our NCNN model in a second slot too; its ratio shows the noise floor')
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


def balanced_orders(count: int) -> list[list[int]]:
    """Rows of a balanced Latin square (Williams design): in each row every index once, and over all rows every
    index directly follows every other index equally often. Two mirrored squares when `count` is odd."""
    first, low, high = [0], 1, count - 1
    while len(first) < count:
        first.append(low)
        low += 1
        if len(first) < count:
            first.append(high)
            high -= 1
    rows = [[(value + shift) % count for value in first] for shift in range(count)]
    return rows if count % 2 == 0 else rows + [row[::-1] for row in rows]


def time_interleaved(runners: dict, batch: np.ndarray, runs: int, warmup: int, clock=time.perf_counter) -> dict:
    """{name: callable(batch)} -> {name: [ms per run]}; each round calls every runner once, in a balanced order."""
    names = list(runners)
    for _ in range(warmup):
        for run in runners.values():
            run(batch)
    orders = balanced_orders(len(names))
    times_ms = {name: [] for name in names}
    for round_index in range(runs):
        for position in orders[round_index % len(orders)]:
            name = names[position]
            start = clock()
            runners[name](batch)
            times_ms[name].append((clock() - start) * 1000)
    return times_ms


def ratio_with_interval(ours_ms: list, reference_ms: list, resamples: int = 2000) -> tuple:
    """median(ours) / median(reference) and its 95 % bootstrap interval; rounds are resampled in pairs, so a load
    spike that hit both runs of a round moves both."""
    ours_ms, reference_ms = np.asarray(ours_ms), np.asarray(reference_ms)
    rng = np.random.default_rng(0)
    picks = rng.integers(0, len(ours_ms), size=(resamples, len(ours_ms)))
    ratios = np.median(ours_ms[picks], axis=1) / np.median(reference_ms[picks], axis=1)
    low, high = np.percentile(ratios, [2.5, 97.5])
    return float(np.median(ours_ms) / np.median(reference_ms)), float(low), float(high)


def load_text() -> str:
    return 'load average %.2f %.2f %.2f' % os.getloadavg() + f' on {os.cpu_count()} CPUs'


def bench_model(model_name: str, side: int, threads_list, args, folder: Path) -> list:
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
    no_hint_param = None
    if with_reference:   # the same export without the layer hint: how much of the result is the hint
        no_hint_param = folder / f'{model_name}-nohint.param'   # the same graph and weights, the hint cleared
        no_hint_param.write_text(param_text_without_hints(paths['param']))
        no_hint_param.with_suffix('.bin').symlink_to(paths['bin'])
    print(f'\n{model_name} {side}x{side} ({weights_note}), {args.runs} runs after {args.warmup} warm-up; '
          f'{load_text()}')
    results = []
    for threads in threads_list:
        torch.set_num_threads(threads)
        cpu_time = args.cpu_time and threads == 1
        if args.cpu_time and not cpu_time:
            print(f'  {threads} threads: --cpu-time ignored (NCNN and onnxruntime compute in worker threads)')

        def run_torch(x):
            with torch.inference_mode():
                return model(torch.from_numpy(x))

        runners = {'pytorch': run_torch,
                   'onnxruntime': onnxruntime_session(paths['onnx'], threads),
                   OURS: NcnnRuntime(paths['param'], num_threads=threads)}
        if args.same_model_twice:
            runners['ncnn, 2nd copy'] = NcnnRuntime(paths['param'], num_threads=threads)
        if with_reference:
            runners['ncnn, no hint'] = NcnnRuntime(no_hint_param, num_threads=threads,
                                                   blobs=read_io_blobs(no_hint_param))
            runners[REFERENCE] = NcnnRuntime(SHIPPED_PARAM, num_threads=threads, blobs=SHIPPED_BLOBS)
        times_ms = time_interleaved(runners, batch, args.runs, args.warmup,
                                    clock=time.thread_time if cpu_time else time.perf_counter)
        medians = {name: statistics.median(values) for name, values in times_ms.items()}
        label = f'{threads} thread{"s" if threads > 1 else " "}'
        clock_note = 'CPU time' if cpu_time else 'wall time'
        for name, values in times_ms.items():
            q25, q75 = np.percentile(values, [25, 75])
            print(f'  {label}  {name:15s} {medians[name]:8.2f} ms  (IQR {q25:.2f}-{q75:.2f}, {clock_note})')
        against = [(name, REFERENCE) for name in (OURS, 'ncnn, no hint') if with_reference]
        if args.same_model_twice:
            against.append(('ncnn, 2nd copy', OURS))
        for name, baseline in against:
            ratio, low, high = ratio_with_interval(times_ms[name], times_ms[baseline])
            verdict = ''
            if (name, baseline) == (OURS, REFERENCE):
                verdict = '; target <= 1.0: ' + ('ok' if ratio <= 1.0 else 'SLOWER than the reference')
            print(f'  {label}  {name} / {baseline} = {ratio:.3f} (95 % interval {low:.3f}-{high:.3f}{verdict})')
        results.append((threads, medians))
    print(f'  after: {load_text()}')
    return results


def main():
    args = parse_args()
    threads_list = [int(t) for t in args.threads.split(',')]
    for item in args.models.split(','):
        model_name, _, side = item.partition(':')
        side = int(side) if side else (SHIPPED_SIZE if model_name == 'yolo-fastestv2' else 320)
        with tempfile.TemporaryDirectory(prefix='latency_') as folder:
            bench_model(model_name, side, threads_list, args, Path(folder))


if __name__ == '__main__':
    main()
