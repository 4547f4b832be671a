"""tinydet from Python: load a model and detect, train, evaluate, export. The five commands run this same code.

Detect with the released Yolo-FastestV2 weights (a released .pth does not say which model it is: `data` does):

    import tinydet
    detector = tinydet.load('../shared/weights/yolo-fastestv2/coco2017-0.241078ap-model.pth', data='data/coco.data')
    for d in detector('../shared/images/bus.jpg'):
        print(f'{d.class_name} {d.score:.2f} {d.x1:.0f} {d.y1:.0f} {d.x2:.0f} {d.y2:.0f}')

The whole road on your own data (our checkpoints name their .data file, an exported model carries a sidecar .json
with its names, input size and thresholds, so neither needs `data`):

    best_pt = tinydet.train('my.data', epochs=5, batch_size=8, out='runs/my')
    print(tinydet.evaluate('my.data', best_pt).map50_95)
    files = tinydet.export('my.data', best_pt, output='runs/my/model.onnx')
    detector = tinydet.load(files.param)          # NCNN
    detector.conf, detector.iou = 0.25, 0.45

`import tinydet` loads neither torch nor OpenCV: each function imports what its work needs when it is called.
Errors in the caller's input are utils.errors.UserError (or FileNotFoundError) with a one-line message.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import NamedTuple

from utils.config import Config, load_config
from utils.errors import ConfigError, ExportError, NcnnModelError

__all__ = ['Detection', 'Detector', 'ExportedFiles', 'evaluate', 'export', 'load', 'train']

# What a sidecar must say for a Detector to run its model without the .data file.
SIDECAR_KEYS = ('input_width', 'input_height', 'letterbox', 'head', 'strides', 'anchors_px', 'num_classes',
                'class_names', 'conf_thresh', 'nms_iou')


class Detection(NamedTuple):
    class_name: str
    score: float
    x1: float          # the box corners, in pixels of the image given to the Detector
    y1: float
    x2: float
    y2: float


class Detector:
    """A loaded model: `detector(image)` -> [Detection, ...], best score first. `image` is a path or a BGR uint8
    (H, W, 3) array as cv2.imread gives. `conf`, `iou` (NMS) and `max_det` may be changed between calls.
    `names` are the class names, `input_size` the network's (width, height), `runtime` the backend
    (utils/runtimes) that runs it."""

    def __init__(self, runtime, names, letterbox: bool, pad_value: int, conf: float, iou: float, max_det: int = 300):
        self.runtime = runtime
        self.names = tuple(names)
        self.input_size = (runtime.spec.input_width, runtime.spec.input_height)
        self.letterbox, self.pad_value = letterbox, pad_value
        self.conf, self.iou, self.max_det = conf, iou, max_det

    def __call__(self, image) -> list[Detection]:
        if isinstance(image, (str, Path)):
            from utils.data.dataset import read_image
            image = read_image(image)
        return self.as_detections(self.detect(image)[0])

    def detect(self, image_bgr) -> tuple:
        """One BGR image -> ((M, 6) float32 array [x1, y1, x2, y2, score, class] in original pixels, best first;
        {'resize', 'inference', 'post-process': seconds})."""
        import time

        from utils.postprocess import postprocess
        from utils.preprocess import boxes_to_original, resize_image, to_input_tensor
        start = time.perf_counter()
        width, height = self.input_size
        resized, info = resize_image(image_bgr, width, height, self.letterbox, self.pad_value)
        batch = to_input_tensor([resized])
        middle = time.perf_counter()
        outputs = self.runtime(batch)
        after_inference = time.perf_counter()
        detections = postprocess(outputs, self.runtime.spec, self.conf, self.iou, self.max_det)[0]
        detections[:, :4] = boxes_to_original(detections[:, :4], info)
        end = time.perf_counter()
        return detections, {'resize': middle - start, 'inference': after_inference - middle,
                            'post-process': end - after_inference}

    def as_detections(self, detections) -> list[Detection]:
        """The (M, 6) array of `detect` as Detections."""
        return [Detection(self.class_name(int(cls)), score, x1, y1, x2, y2)
                for x1, y1, x2, y2, score, cls in detections.tolist()]

    def class_name(self, index: int) -> str:
        """The name of class `index`; its number as text where a sidecar lists fewer names than the model has."""
        return self.names[index] if index < len(self.names) else str(index)


def load(path, data=None, backend: str | None = None, threads: int = 0) -> Detector:
    """A Detector for a weights file: a .pt/.pth (our checkpoint, or a released weights file with `data`), an
    .onnx or an NCNN .param (with its sidecar .json, or `data`).

    data     the .data file (a path or a loaded Config) the model was trained with; needed for a released .pth, and
             for an exported model without its sidecar. Given, it describes the model instead of the checkpoint or
             the sidecar (which is checked against it). Only its model keys and names are read: the dataset need
             not be there.
    backend  torch, onnx, opencv or ncnn (default: by the file type: .param ncnn, .onnx onnx, else torch).
    threads  CPU threads for inference (0: the library's default; for torch this sets the process's thread count).
    """
    from utils.runtimes import BACKENDS, backend_for, check_weights_suffix, load_runtime
    path = Path(path)
    backend = backend or backend_for(path)
    if backend not in BACKENDS:
        raise ConfigError(f'unknown backend "{backend}"; choose one of {", ".join(BACKENDS)}')
    if not path.is_file():
        raise FileNotFoundError(f'{path}: weights file not found')
    check_weights_suffix(backend, path)   # before the checkpoint or the sidecar is read
    if threads > 0:
        import torch
        torch.set_num_threads(threads)
    if data is None and backend != 'torch':
        return load_exported(path, backend, threads)
    if data is None:
        data = data_named_by(path)
    cfg = data if isinstance(data, Config) else load_config(data, splits=False)
    runtime = load_runtime(backend, cfg, path, num_threads=threads)
    # the thresholds pytorch2onnx.py writes into a sidecar: test.py's defaults, Yolo-FastestV2's demo values
    from utils.export import DEFAULT_CONF_THRESH, DEFAULT_NMS_IOU
    from utils.preprocess import PAD_VALUE
    return Detector(runtime, cfg.class_names, cfg.letterbox, PAD_VALUE, DEFAULT_CONF_THRESH, DEFAULT_NMS_IOU)


def data_named_by(checkpoint_path: Path) -> str:
    """The .data file our trainer's checkpoint names (a released weights file names none)."""
    from utils.errors import CheckpointError
    from utils.train.checkpoint import load_checkpoint
    try:
        named = load_checkpoint(checkpoint_path).get('data')
    except CheckpointError as error:
        raise ConfigError(f'{error}: give data=, the .data file it was trained with') from None
    if not named:
        raise ConfigError(f'{checkpoint_path}: the checkpoint does not name its .data file: give data=')
    return named


def load_exported(path: Path, backend: str, threads: int) -> Detector:
    """An exported model described by its sidecar .json alone (written by pytorch2onnx.py beside the .onnx and
    the .param)."""
    from model.spec import HeadSpec
    from utils.runtimes import load_runtime
    from utils.runtimes.sidecar import read_sidecar, sidecar_path
    json_path = sidecar_path(path)
    if not json_path.is_file():
        raise ConfigError(f'{path}: no {json_path.name} beside it to say what the model is (pytorch2onnx.py writes '
                          f'one): give data=, the .data file it was exported from')
    sidecar = read_sidecar(path)
    missing = [key for key in SIDECAR_KEYS if key not in sidecar]
    if missing:
        raise NcnnModelError(f'{json_path}: keys {", ".join(missing)} are missing')
    # The Python runtimes feed what our exporter's models take; the C++ app reads the other orders and scales.
    if sidecar.get('channel_order', 'bgr') != 'bgr' or abs(sidecar.get('scale', 1 / 255) - 1 / 255) > 1e-9:
        raise NcnnModelError(f'{json_path}: the model takes channel_order {sidecar.get("channel_order")}, scale '
                             f'{sidecar.get("scale")}; from Python only bgr and 1/255 (what pytorch2onnx.py exports)')
    spec = HeadSpec.from_dict(dict(kind=sidecar['head'], strides=sidecar['strides'],
                                   num_classes=sidecar['num_classes'], input_width=sidecar['input_width'],
                                   input_height=sidecar['input_height'], anchors_px=sidecar['anchors_px']))
    runtime = load_runtime(backend, None, path, num_threads=threads, spec=spec)
    from utils.preprocess import PAD_VALUE
    return Detector(runtime, sidecar['class_names'], sidecar['letterbox'], sidecar.get('pad_value', PAD_VALUE),
                    sidecar['conf_thresh'], sidecar['nms_iou'])


def train(data=None, *, out=None, device: str = '', workers: int | None = None, weights=None, seed: int = 0,
          teacher=None, resume=None, sync_bn: bool = False, **overrides) -> Path:
    """Train the model a .data file describes; return the path of best.pt (best mAP@0.5:0.95 of the EMA model).

    overrides  .data keys that win over the file: epochs=5, batch_size=8, learning_rate=0.01, ...
    out        output folder (default: the .data's `backup`, else weights/<model_name>/)
    device     '' (CUDA if available), 'cpu', 'cuda' or a CUDA index;  workers: data loading processes
    weights    start from these weights;  teacher: distil from this model (the .data key teacher_weights)
    resume     a last.pt to continue from, or True: <out>/last.pt (the checkpoint names its .data: data may be None)
    A stop signal (Ctrl-C, SIGTERM) saves last.pt and raises utils.train.trainer.TrainingInterrupted.
    """
    from utils.train.checkpoint import load_checkpoint
    from utils.train.trainer import TrainOptions
    from utils.train.trainer import train as run_training
    overrides = checked_overrides(overrides)
    if teacher is not None:
        overrides['teacher_weights'] = Path(teacher)
    out = Path(out) if out is not None else None
    resume_path = None
    if resume:
        if resume is not True:
            resume_path = Path(resume)
        elif out is not None:
            resume_path = out / 'last.pt'
        elif data:
            resume_path = default_out_dir(load_config(data)) / 'last.pt'
        else:
            raise ConfigError('--resume without a path needs --out or --data to find last.pt')
        checkpoint = load_checkpoint(resume_path)
        # the same schedule as the interrupted run, unless the caller overrides it
        overrides = {**checkpoint.get('overrides', {}), **overrides}
        data = data or checkpoint.get('data')
        if not data:
            raise ConfigError(f'--resume {resume_path}: the checkpoint does not name its .data file: give --data')
        del checkpoint
    elif not data:
        raise ConfigError('train() needs data, the .data file (or resume=, to continue a run)')
    cfg = load_config(data, **overrides)
    options = TrainOptions(out_dir=out or (resume_path.parent if resume_path else default_out_dir(cfg)),
                           device=device, workers=workers, weights=Path(weights) if weights else None,
                           resume=resume_path, sync_bn=sync_bn, seed=seed)
    return Path(run_training(cfg, options)['best'])


def checked_overrides(overrides: dict) -> dict:
    """The .data keys given as keyword arguments: unknown ones refused, paths as Path, None meaning 'not given'."""
    fields = {f.name: f for f in dataclasses.fields(Config) if f.name not in ('data_path', 'class_names', 'lines')}
    unknown = sorted(set(overrides) - set(fields))
    if unknown:
        raise ConfigError(f'unknown .data keys {", ".join(unknown)} (the keys are listed in docs/data-file.md)')
    return {key: Path(value) if 'Path' in str(fields[key].type) and isinstance(value, str) else value
            for key, value in overrides.items() if value is not None}


def default_out_dir(cfg) -> Path:
    """Where training writes without `out`: the .data's `backup`, else weights/<model_name>/."""
    return Path(cfg.backup or Path('weights') / cfg.model_name)


def evaluate(data, weights, *, backend: str | None = None, split: str = 'val', conf: float = 0.001,
             iou: float = 0.6, max_det: int = 300, pr_conf: float = 0.3, batch_size: int | None = None,
             rect: bool = False, multi_label: bool = False, workers: int | None = None, threads: int = 0,
             save_json=None, plots=None, progress: bool = True):
    """Score `weights` on a split of the .data file with pycocotools: a utils.evaluator.EvalResult (.map50,
    .map50_95, .per_class, .coco_stats, .summary()). The options are evaluation.py's (docs/evaluation.md):
    batch_size defaults to 16, or RECT_BATCH_SIZE with `rect`; `plots` is a folder for the PR curve and
    confusion matrix; `progress` prints the split summary and a progress bar."""
    from utils.runtimes import backend_for, load_runtime
    backend = backend or backend_for(weights)
    if rect and backend != 'torch':   # checked before anything is loaded
        raise ConfigError(f'--rect changes the input shape from batch to batch; the {backend} backend runs a '
                          f'graph with a fixed input shape: use --backend torch with the .pth, or leave out --rect')
    if batch_size is None:
        from utils.data.eval_data import RECT_BATCH_SIZE
        batch_size = RECT_BATCH_SIZE if rect else 16
    if threads > 0:
        import torch
        torch.set_num_threads(threads)
    from utils.evaluator import evaluate as score
    cfg = data if isinstance(data, Config) else load_config(data)
    runtime = load_runtime(backend, cfg, weights, num_threads=threads)
    return score(runtime, cfg, split=split, conf=conf, iou=iou, max_det=max_det, pr_conf=pr_conf,
                 batch_size=batch_size, workers=workers, save_json=save_json, plots_dir=plots, progress=progress,
                 verbose_split=progress, rect=rect, multi_label=multi_label)


class ExportedFiles(NamedTuple):
    onnx: Path
    param: Path | None = None          # NCNN fp32 (None with ncnn=False)
    bin: Path | None = None
    sidecar: Path | None = None        # the .json beside the .param: what the C++ app and load() read
    int8_param: Path | None = None     # with int8=True
    int8_bin: Path | None = None
    int8_sidecar: Path | None = None
    web: Path | None = None            # with web=: the page's index.html


def export(data, weights, output='model.onnx', *, opset: int = 11, simplify: bool = True, ncnn: bool = True,
           check: bool = True, image=None, conf_thresh: float | None = None, nms_iou: float | None = None,
           int8: bool = False, calib_images: int = 128, calib_method: str = 'mse', int8_all: bool = False,
           web=None, log=print) -> ExportedFiles:
    """Export `weights` to ONNX (`output`) and NCNN beside it, with the sidecar; then (check=True) run every
    backend on one image (`image`, else the first val image, else a generated one) against PyTorch and raise
    ExportError if one disagrees. conf_thresh / nms_iou go into the sidecar (default: utils.export's
    DEFAULT_CONF_THRESH, DEFAULT_NMS_IOU) and into the check's detections. int8: also X-int8.param/.bin/.json,
    calibrated on `calib_images` train images (docs/deployment.md). web: also this folder, a static page that runs
    the model in a browser (utils/export/web.py). `log` prints what was written and the check."""
    if int8_all and not int8:
        raise ConfigError('--int8-all chooses how --int8 quantizes; add --int8')
    if int8 and not ncnn:
        raise ConfigError('--int8 quantizes the NCNN model; it cannot go with --no-ncnn')
    if web is not None and not ncnn:
        raise ConfigError("--web puts the NCNN export's sidecar .json beside the page; it cannot go with --no-ncnn")
    from model.build import build_model
    from model.weights import load_weights
    from utils.export import DEFAULT_CONF_THRESH, DEFAULT_NMS_IOU, export_all
    conf_thresh = DEFAULT_CONF_THRESH if conf_thresh is None else conf_thresh
    nms_iou = DEFAULT_NMS_IOU if nms_iou is None else nms_iou
    # only INT8 calibration reads the train split; the check falls back to a generated image without the val split
    cfg = data if isinstance(data, Config) else load_config(data, splits=int8)
    # the weights replace whatever the .data starts training from, so don't read those files first
    model = build_model(dataclasses.replace(cfg, pre_weights=None, backbone_weights=None))
    load_weights(model, weights)
    if check:   # read before writing anything: a wrong --image is found at once
        batch, image_name = check_batch(image, cfg)
    paths = export_all(model, cfg, output, opset=opset, simplify=simplify, ncnn=ncnn, conf_thresh=conf_thresh,
                       nms_iou=nms_iou)
    for kind, path in paths.items():
        log(f'wrote {kind:5s} {path}')
    if check:
        from utils.export.check import check_export
        log(f'checking against PyTorch on {image_name} ({cfg.width}x{cfg.height}):')
        report = check_export(model, paths, batch, conf_thresh=conf_thresh, nms_iou=nms_iou)
        log(report.text())
        if not report.ok:
            raise ExportError(f'{paths["onnx"]}: the exported model disagrees with PyTorch: {report.problems[0]}')
    files = ExportedFiles(paths['onnx'], paths.get('param'), paths.get('bin'), paths.get('json'))
    if web is not None:
        from utils.export.web import write_web_folder
        files = files._replace(web=write_web_folder(web, paths['onnx'], paths['json']))
        log(f'wrote web   {files.web} (serve it: python3 -m http.server -d {web}, then open /index.html)')
    if not int8:
        return files
    from utils.int8.quantize import int8_paths, quantize_with_config
    quantize_with_config(paths['param'], cfg, calib_images, method=calib_method, int8_all=int8_all, log=log)
    int8_param, int8_bin = int8_paths(paths['param'])
    return files._replace(int8_param=int8_param, int8_bin=int8_bin, int8_sidecar=int8_param.with_suffix('.json'))


def check_batch(path, cfg) -> tuple:
    """The export check's input: (float32 NCHW batch of one image, what it is): the image at `path`, else the
    first image of the val split (when it can be read), else a generated scene."""
    from utils.data.dataset import list_images, read_image
    from utils.errors import UserError
    from utils.preprocess import resize_image, to_input_tensor
    if path is not None:
        image, name = read_image(path), str(path)
    else:
        try:
            first = list_images(cfg.val)[0]
            image, name = read_image(first), str(first)
        except UserError:   # a list file copied without its images, say: the check does not need the user's data
            image, name = generated_image(), 'a generated image'
    resized, _ = resize_image(image, cfg.width, cfg.height, cfg.letterbox)
    return to_input_tensor([resized]), name


def generated_image(width: int = 640, height: int = 480):
    """A fixed synthetic scene (gradient, shapes, noise) for when no real image is at hand."""
    import cv2
    import numpy as np
    rng = np.random.default_rng(0)
    image = np.zeros((height, width, 3), np.uint8)
    image[:] = np.linspace(40, 200, width, dtype=np.uint8)[None, :, None]
    for _ in range(12):
        x, y = int(rng.integers(0, width)), int(rng.integers(0, height))
        color = tuple(int(c) for c in rng.integers(0, 256, 3))
        cv2.rectangle(image, (x, y), (x + int(rng.integers(20, 200)), y + int(rng.integers(20, 200))), color, -1)
    return cv2.add(image, rng.integers(0, 20, image.shape, dtype=np.uint8))
