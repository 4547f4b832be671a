"""The .data file -> a typed `Config`.

Three dialects load into the same `Config`:

* Yolo-FastestV2's INI file: sections `[name]`, `[train-configure]`, `[model-configure]`,
  `[data-configure]`. Sections only group keys for the reader; every key is looked up by name alone,
  so forks that add sections still load.
* Darknet's plain file (no sections): `classes`, `train`, `valid`, `names`, `backup`, plus Darknet keys we
  accept and ignore (`eval`, `map`, `gpus`, ...).
* Ultralytics' and Roboflow's dataset YAML (`data.yaml`, read by utils/data_yaml.py): its dataset keys give
  `train`, `val`, `classes` and the class names; our own keys may be written into it (`width: 320`).

Every error is a `ConfigError` whose message starts with `file:line:` and names the key, so a user can jump to it.
Of the project it imports only utils/errors.py, utils/data_yaml.py and the torch-free table of model names,
model/architectures.py.
"""
from __future__ import annotations

import dataclasses
import difflib
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

from model.architectures import ARCHITECTURES
from utils.data_yaml import is_data_yaml, read_data_yaml
from utils.errors import ConfigError

HEADS = ('anchor', 'leyolo')  # anchor: Yolo-FastestV2's obj/cls/reg head; leyolo: LeYOLO's anchor-free DFL head
OPTIMIZERS = ('sgd', 'adamw')
# how the anchor head's loss picks the anchors that learn each box (utils/loss/); the leyolo head always uses 'tal'
ASSIGNERS = ('yolov5', 'atss', 'simota', 'tal')
# keys only the leyolo head's loss reads: an error with another head rather than silently unused
LEYOLO_LOSS_KEYS = ('leyolo_box_gain', 'leyolo_cls_gain', 'leyolo_dfl_gain', 'leyolo_max_grad_norm', 'tal_topk',
                    'tal_alpha', 'tal_beta')
# of those, the task-aligned assigner's: read by the anchor head's loss too when assigner = tal
TAL_KEYS = ('tal_topk', 'tal_alpha', 'tal_beta')

# Yolo-FastestV2's COCO anchors at 352x352 (w,h pairs in pixels), the default for two-scale anchor heads.
YFV2_COCO_ANCHORS_352 = (12.64, 19.39, 37.88, 51.48, 55.71, 138.31, 126.91, 78.23, 131.57, 214.55, 279.92, 258.87)
# YOLOv5's COCO anchors at 640x640, the default (rescaled to the input size) for three-scale anchor heads.
YOLOV5_COCO_ANCHORS_640 = (10, 13, 16, 30, 33, 23, 30, 61, 62, 45, 59, 119, 116, 90, 156, 198, 373, 326)

# Darknet keys that real .data files carry and Darknet accepts; we have no use for them and say so once.
DARKNET_IGNORED_KEYS = {'eval', 'results', 'map', 'difficult', 'top', 'test', 'gpus', 'detector_log', 'mean', 'std',
                        'leaves', 'saveweights', 'savelast'}
# Old or Darknet spellings -> our key.
ALIASES = {'valid': 'val', 'labels': 'names'}


@dataclass
class Config:
    """Everything a script needs, typed and defaulted. Field names are the .data keys."""
    data_path: Path                       # the .data file or data.yaml; relative paths in it resolve against its folder
    # [name]
    model_name: str = 'model'             # names the output folder weights/<model_name>/
    # [train-configure]
    epochs: int = 300
    steps: tuple = (150, 250)             # epochs at which the learning rate is multiplied by 0.1
    batch_size: int = 64
    subdivisions: int = 1                 # gradient accumulation: one optimizer step per `subdivisions` batches
    optimizer: str = 'sgd'                # one of OPTIMIZERS
    learning_rate: float = 0.001
    momentum: float = 0.937               # SGD's momentum; AdamW's beta1
    weight_decay: float = 0.0005          # not applied to BatchNorm weights and biases
    warmup_epochs: float = 3.0
    ema: bool = True                      # keep an exponential moving average of the weights for eval and export
    eval_interval: int = 10               # evaluate every N epochs (and after the last)
    # [model-configure]
    model: str = 'yolo-fastestv2'         # a name in model/architectures.py
    head: str = 'anchor'                  # one of HEADS
    pre_weights: Path | None = None       # a whole model to start from (our checkpoint or a released .pth)
    backbone_weights: Path | None = None  # ImageNet (or other) weights for the backbone only
    classes: int = 0
    width: int = 352
    height: int = 352
    anchor_num: int = 3
    anchors: tuple = ()                   # w,h pairs in input pixels, smallest scale first
    assigner: str = 'yolov5'              # one of ASSIGNERS
    # knowledge distillation (utils/train/distill.py): without teacher_weights nothing changes
    teacher_weights: Path | None = None   # the teacher: our checkpoint, LeYOLONano.pt or a released .pth
    teacher_model: str = ''               # the teacher's keys where its weights file does not carry them
    teacher_head: str = ''
    teacher_width: int = 0                # 0: the size the teacher checkpoint was trained at, else the student's
    teacher_height: int = 0
    distill_gain: float = 1.0             # weight of the distillation loss against the detection loss
    distill_feature_gain: float = 2.0     # its terms' weights within it (utils/train/distill.py)
    distill_class_gain: float = 2.0
    distill_object_gain: float = 20.0
    # [data-configure]
    train: Path | None = None             # list file of image paths, or a folder of images
    val: Path | None = None
    names: Path | None = None             # the .names file; None for a data.yaml, which lists the names itself
    backup: Path | None = None            # Darknet's output folder; used as the default output folder if given
    letterbox: bool = False               # keep aspect ratio with padding (True) or stretch to width x height (False)
    strict_labels: bool = False           # a bad label line or unreadable image is an error, not a skipped image
    cache: str = 'auto'                   # 'ram' (decoded, resized training images in memory), 'none', or 'auto':
                                          # 'ram' when they fit in min(2 GiB, a quarter of free memory)
    workers: int = 2
    # augmentation (training only)
    hsv_h: float = 0.015                  # hue jitter, fraction of the hue circle
    hsv_s: float = 0.7                    # saturation gain jitter
    hsv_v: float = 0.4                    # value gain jitter
    flip_lr: float = 0.5                  # probability of a horizontal flip
    translate: float = 0.1                # random translation, fraction of the input size
    scale: float = 0.5                    # random scale in [1 - scale, 1 + scale]
    mosaic: float = 0.5                   # probability of a 4-image mosaic
    close_mosaic: int = 10                # no mosaic in the last N epochs
    # the anchor head's loss (utils/loss/anchor.py)
    anchor_cls_gain: float = 0.005        # weight of the softmax class term; the released weights' fine-tuning value
    # the leyolo head's loss (utils/loss/leyolo.py; YOLOv8's defaults, which trained the released LeYOLO weights)
    leyolo_box_gain: float = 7.5          # weight of the CIoU box term
    leyolo_cls_gain: float = 0.5          # weight of the BCE class term
    leyolo_dfl_gain: float = 1.5          # weight of the distribution focal loss term
    leyolo_max_grad_norm: float = 10.0    # clip the gradient norm to this (0: no clipping)
    tal_topk: int = 10                    # task-aligned assigner: points each box takes
    tal_alpha: float = 0.5                # alignment = class score ** alpha * IoU ** beta
    tal_beta: float = 6.0
    # derived, filled by load_config
    class_names: tuple = ()
    lines: dict = field(default_factory=dict, repr=False)   # key -> line number in the .data file

    @property
    def strides(self) -> tuple:
        return ARCHITECTURES[self.model].strides

    @property
    def anchors_px(self) -> list:
        """Anchors as [[(w, h), ... anchor_num], ... one list per scale], in input pixels."""
        pairs = [(self.anchors[i], self.anchors[i + 1]) for i in range(0, len(self.anchors), 2)]
        return [pairs[s * self.anchor_num:(s + 1) * self.anchor_num] for s in range(len(self.strides))]

    def where(self, key: str) -> str:
        """'file:line' of a key, for error messages raised outside this module."""
        line = self.lines.get(key)
        return f'{self.data_path}:{line}' if line else f'{self.data_path}'


_FIELDS = {f.name: f for f in dataclasses.fields(Config) if f.name not in ('data_path', 'class_names', 'lines')}
_PATH_KEYS = {'pre_weights', 'backbone_weights', 'teacher_weights', 'train', 'val', 'names', 'backup'}
_TRUE, _FALSE = {'1', 'true', 'yes', 'on'}, {'0', 'false', 'no', 'off'}


def _convert(key: str, raw: str, where: str):
    """Turn the text of a value into the field's type, or raise naming the key and what was expected."""
    kind = _FIELDS[key].type
    try:
        if key == 'steps':
            return tuple(int(float(v)) for v in raw.replace(' ', '').split(',') if v)
        if key == 'anchors':
            return tuple(float(v) for v in raw.replace(' ', '').split(',') if v)
        if kind == 'int':
            value = float(raw)
            if value != int(value):
                raise ValueError
            return int(value)
        if kind == 'float':
            return float(raw)
        if kind == 'bool':
            if raw.lower() in _TRUE | _FALSE:
                return raw.lower() in _TRUE
            raise ValueError
    except ValueError:
        expected = {'steps': 'comma-separated epochs', 'anchors': 'comma-separated numbers'}.get(key, kind)
        raise ConfigError(f'{where}: key "{key}": expected {expected}, got "{raw}"') from None
    return raw


def _resolve_path(raw: str, base: Path) -> Path:
    """Resolve a path as users write it: ~, Windows separators, relative to the .data file's folder.

    Yolo-FastestV2's own files write paths relative to the repository root (`names=./data/coco.names`),
    so a relative path that does not exist beside the .data file but does from the working folder is taken from there.
    """
    text = os.path.expanduser(raw.replace('\\', '/'))
    path = Path(text)
    if path.is_absolute() or re.match(r'^[A-Za-z]:/', text):
        return path
    beside = base / path
    if not beside.exists() and path.exists():
        return path.resolve()
    return beside


def _strip_comment(value: str, is_path: bool) -> str:
    # A path may hold '#' (rare), so for paths only ' #' starts a comment; elsewhere any '#' does.
    cut = re.search(r'\s#', value) if is_path else re.search(r'#', value)
    return (value[:cut.start()] if cut else value).strip()


def read_data_file(path: Path) -> tuple[dict, dict]:
    """Read `key = value` lines. Returns ({key: raw value}, {key: line number}); raises on malformed lines.
    A data.yaml gives the same, its `train` and `val` resolved and its class count as `classes`."""
    path = Path(path)
    if is_data_yaml(path):
        values, lines, _ = _read_yaml(path, say_unused=False)
        return values, lines
    if not path.is_file():
        raise ConfigError(f'{path}: .data file not found')
    try:
        text = path.read_text(encoding='utf-8-sig')   # utf-8-sig swallows a BOM
    except UnicodeDecodeError:
        raise ConfigError(f'{path}: not a text file (is this really a .data file?)') from None
    values, lines = {}, {}
    for number, line in enumerate(text.splitlines(), 1):
        stripped = line.strip()
        if not stripped or stripped.startswith(('#', ';')):
            continue
        if stripped.startswith('[') and stripped.endswith(']'):
            continue   # sections group keys for readers only
        if '=' not in stripped:
            raise ConfigError(f'{path}:{number}: expected "key = value", got "{stripped[:60]}"')
        key, value = (part.strip() for part in stripped.split('=', 1))
        key = ALIASES.get(key, key)
        value = _strip_comment(value, key in _PATH_KEYS)
        where = f'{path}:{number}'
        if key in DARKNET_IGNORED_KEYS:
            continue
        if key not in _FIELDS:
            close = _nearest_key(key)
            hint = f' (did you mean "{close}"?)' if close else ''
            raise ConfigError(f'{where}: unknown key "{key}"{hint}')
        if key in values and values[key] != value:
            raise ConfigError(f'{where}: key "{key}" given twice with different values '
                              f'(first on line {lines[key]}: "{values[key]}", here: "{value}")')
        values[key], lines[key] = value, number
    if not values:
        raise ConfigError(f'{path}: no "key = value" lines found (is this really a .data file?)')
    return values, lines


def _read_yaml(path: Path, say_unused: bool = True, splits: bool = True) -> tuple[dict, dict, tuple]:
    """A data.yaml's ({key: raw value}, {key: line number}, class names). Of its other keys, ours are read as in a
    .data file, a misspelling of one is an error, and the rest (other tools' keys) are ignored, said in one line."""
    data = read_data_yaml(path, splits)
    values, unused = {}, list(data.unused)
    for key, raw in data.values.items():
        if key in _FIELDS:
            values[key] = raw
        elif _nearest_key(key):
            raise ConfigError(f'{path}:{data.lines[key]}: unknown key "{key}" (did you mean "{_nearest_key(key)}"?)')
        else:
            unused.append(key)
    if unused and say_unused:
        print(f'{path}: not used by tinydet, ignored: {", ".join(unused)}', file=sys.stderr, flush=True)
    values.update(train=str(data.train), val=str(data.val))
    lines = dict(data.lines)
    if 'classes' not in values:   # nc or names give it; a `classes` key of ours must agree with them
        values['classes'] = str(len(data.class_names))
        lines['classes'] = lines.get('nc', lines.get('names'))
    return values, lines, data.class_names


def _nearest_key(key: str) -> str | None:
    """The known key a misspelt one most likely means: the same with '-' for '_' (`batch-size`), a known key or
    alias with something appended (`val_list`, `train-file`, `names_file`: the longest such wins), else the
    closest spelling."""
    known = list(_FIELDS) + list(ALIASES)
    text = key.lower().replace('-', '_')
    if text in known:
        return ALIASES.get(text, text)
    prefixes = [k for k in known if text.startswith(k + '_')]
    if prefixes:
        best = max(prefixes, key=len)
        return ALIASES.get(best, best)
    close = difflib.get_close_matches(text, known, n=1, cutoff=0.6)
    return ALIASES.get(close[0], close[0]) if close else None


def read_names(path: Path) -> tuple:
    if not path.is_file():
        raise ConfigError(f'{path}: names file not found')
    return tuple(line.strip() for line in path.read_text(encoding='utf-8-sig').splitlines() if line.strip())


def load_config(path, splits: bool = True, check_anchors: bool = True, **overrides) -> Config:
    """Parse and check a .data file or a data.yaml. `overrides` (e.g. epochs=5 from the command line) win over
    the file. splits=False: to run a model only (test.py, tinydet.load), so the train and val lists need not
    exist. check_anchors=False: for genanchors.py, which computes them (no defaults filled in either)."""
    path = Path(path)
    class_names = ()
    if is_data_yaml(path):
        values, lines, class_names = _read_yaml(path, splits=splits)
    else:
        values, lines = read_data_file(path)
    base = path.resolve().parent
    kwargs = {}
    for key, raw in values.items():
        where = f'{path}:{lines[key]}'
        if raw == '' and key not in ('pre_weights', 'backbone_weights', 'teacher_weights', 'backup'):
            raise ConfigError(f'{where}: key "{key}" has no value')
        if key in _PATH_KEYS:
            kwargs[key] = None if raw in ('', 'None', 'none', "''", '""') else _resolve_path(raw, base)
        else:
            kwargs[key] = _convert(key, raw, where)
    kwargs.update({k: v for k, v in overrides.items() if v is not None})
    cfg = Config(data_path=path, lines=lines, class_names=class_names, **kwargs)
    _check(cfg, values, splits, check_anchors)
    return cfg


def _check(cfg: Config, given: dict, splits: bool, check_anchors: bool) -> None:
    def fail(key, message):
        raise ConfigError(f'{cfg.where(key)}: key "{key}": {message}')

    for key in ('classes', 'train', 'val') + (() if cfg.class_names else ('names',)):
        if key not in given:
            raise ConfigError(f'{cfg.data_path}: required key "{key}" is missing')
    if cfg.model not in ARCHITECTURES:
        close = difflib.get_close_matches(cfg.model, ARCHITECTURES, n=1)
        fail('model', f'unknown model "{cfg.model}"' + (f' (did you mean "{close[0]}"?)' if close else '')
             + f'; known: {", ".join(ARCHITECTURES)}')
    if cfg.head not in HEADS:
        fail('head', f'unknown head "{cfg.head}"; known: {", ".join(HEADS)}')
    if cfg.optimizer not in OPTIMIZERS:
        fail('optimizer', f'unknown optimizer "{cfg.optimizer}"; known: {", ".join(OPTIMIZERS)}')
    if cfg.assigner not in ASSIGNERS:
        fail('assigner', f'unknown assigner "{cfg.assigner}"; known: {", ".join(ASSIGNERS)}')
    if cfg.head == 'leyolo' and cfg.assigner != 'tal' and 'assigner' in given:
        fail('assigner', f'the leyolo head always uses the "tal" assigner, got "{cfg.assigner}"')
    for key in ('classes', 'width', 'height', 'anchor_num', 'epochs', 'batch_size', 'subdivisions', 'eval_interval'):
        if getattr(cfg, key) <= 0:
            fail(key, f'must be positive, got {getattr(cfg, key)}')
    for key in ('width', 'height'):
        if getattr(cfg, key) % max(cfg.strides):
            fail(key, f'must be a multiple of {max(cfg.strides)} for {cfg.model}, got {getattr(cfg, key)}')
    for key in LEYOLO_LOSS_KEYS:
        if key in given and key in TAL_KEYS and cfg.head != 'leyolo' and cfg.assigner != 'tal':
            fail(key, f'only the task-aligned assigner reads it (head = leyolo, or assigner = tal), and head = '
                      f'{cfg.head}, assigner = {cfg.assigner}')
        if key in given and key not in TAL_KEYS and cfg.head != 'leyolo':
            fail(key, f'only the leyolo head\'s loss reads it, and head = {cfg.head}')
        if getattr(cfg, key) < 0 or (key == 'tal_topk' and cfg.tal_topk < 1):
            fail(key, f'must be {"at least 1" if key == "tal_topk" else "0 or more"}, got {getattr(cfg, key)}')
    if 'anchor_cls_gain' in given and cfg.head != 'anchor':
        fail('anchor_cls_gain', f'only the anchor head\'s loss reads it, and head = {cfg.head}')
    if cfg.anchor_cls_gain < 0:
        fail('anchor_cls_gain', f'must be 0 or more, got {cfg.anchor_cls_gain}')
    for key in ('distill_gain', 'distill_feature_gain', 'distill_class_gain', 'distill_object_gain'):
        if getattr(cfg, key) < 0:
            fail(key, f'must be 0 or more, got {getattr(cfg, key)}')
    if cfg.leyolo_box_gain == cfg.leyolo_cls_gain == cfg.leyolo_dfl_gain == 0:
        fail('leyolo_box_gain', 'leyolo_box_gain, leyolo_cls_gain and leyolo_dfl_gain are all 0: nothing to learn')
    if cfg.cache not in ('auto', 'none', 'ram'):
        fail('cache', f'expected "auto", "none" or "ram", got "{cfg.cache}"')
    if cfg.head == 'anchor' and check_anchors:
        if not cfg.anchors:   # Darknet files carry no anchors: take COCO's, scaled to the input size
            if len(cfg.strides) == 2:
                cfg.anchors = tuple(v * (cfg.width if i % 2 == 0 else cfg.height) / 352
                                    for i, v in enumerate(YFV2_COCO_ANCHORS_352))
            else:
                cfg.anchors = tuple(v * (cfg.width if i % 2 == 0 else cfg.height) / 640
                                    for i, v in enumerate(YOLOV5_COCO_ANCHORS_640))
            if cfg.anchor_num != 3:
                fail('anchor_num', 'no anchors given: the default anchors need anchor_num = 3 '
                                   '(run genanchors.py --data ... --update to compute yours)')
        expected = len(cfg.strides) * cfg.anchor_num * 2
        if len(cfg.anchors) != expected:
            fail('anchors', f'{cfg.model} has {len(cfg.strides)} scales x anchor_num {cfg.anchor_num} x 2 = '
                            f'{expected} numbers, got {len(cfg.anchors)}')
    for key in ('train', 'val') if splits else ():
        p = getattr(cfg, key)
        if not p.exists():
            fail(key, f'list file or image folder not found: {p}')
    for key in ('pre_weights', 'backbone_weights', 'teacher_weights'):
        p = getattr(cfg, key)
        if p is not None and not p.is_file():
            fail(key, f'weights file not found: {p}')
    if cfg.names is not None:
        try:
            cfg.class_names = read_names(cfg.names)
        except ConfigError as error:
            fail('names', str(error))
    if len(cfg.class_names) != cfg.classes:
        fail('classes', f'classes = {cfg.classes} but {cfg.names or cfg.where("names")} lists '
                        f'{len(cfg.class_names)} names')
