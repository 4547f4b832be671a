"""Load weights into a model from any file our scripts meet.

Accepted files:
* a plain state_dict, e.g. Yolo-FastestV2's released `coco2017-0.241078ap-model.pth`. Its names (`fpn.*`,
  `output_*_layers.*`) are translated to ours by `RELEASE_YFV2_RENAMES` below;
* our training checkpoint: a dict with 'model' and optionally 'ema' state_dicts ('ema' is preferred: it is the
  averaged model we evaluate and export);
* a backbone-only file (`load_backbone_weights`), e.g. the ImageNet ShuffleNetV2-0.5x `backbone.pth`;
* LeYOLO's released Ultralytics checkpoint (`LeYOLONano.pt`, a pickled model object): handed to
  `model/leyolo_import.py`, which reads it without Ultralytics and maps it onto our modules by structure.

Every mismatch error names the file and lists the first few offending keys with their shapes.
"""
from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import torch
from torch import nn

from model.errors import WeightsError

# Released Yolo-FastestV2 name prefix -> our name prefix. Their FPN module held the towers and the 1x1 convs;
# we split them into neck (1x1 convs) and head (towers + shared output convs).
RELEASE_YFV2_RENAMES = (
    ('fpn.conv1x1_2.', 'neck.fuse_16.'),
    ('fpn.conv1x1_3.', 'neck.reduce_32.'),
    ('fpn.reg_head_2.block.', 'head.reg_towers.0.'),
    ('fpn.reg_head_3.block.', 'head.reg_towers.1.'),
    ('fpn.cls_head_2.block.', 'head.cls_towers.0.'),
    ('fpn.cls_head_3.block.', 'head.cls_towers.1.'),
    ('output_reg_layers.', 'head.reg_outs.0.'),
    ('output_obj_layers.', 'head.obj_outs.0.'),
    ('output_cls_layers.', 'head.cls_outs.0.'),
)
SHOW_MISMATCHES = 3
_multiarray = np._core.multiarray if hasattr(np, '_core') else np.core.multiarray   # numpy 2 renamed it
NUMPY_ARRAY_GLOBALS = [_multiarray._reconstruct, np.ndarray, np.dtype, type(np.dtype('uint32'))]


def is_ultralytics_checkpoint(path) -> bool:
    """True for torch.save's zip format whose pickle names Ultralytics classes (a pickled model object)."""
    try:
        with zipfile.ZipFile(path) as archive:
            pickles = [n for n in archive.namelist() if n.endswith('/data.pkl')]
            return bool(pickles) and b'ultralytics.' in archive.read(pickles[0])
    except (zipfile.BadZipFile, OSError):
        return False


def read_state_dict(path) -> dict:
    """The state_dict inside `path`: plain, or our checkpoint ('ema' preferred over 'model')."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f'{path}: weights file not found')
    try:
        # weights_only: a weights file runs no code when read. Our training checkpoints also hold numpy's random
        # state (for resuming), so numpy arrays are let through.
        with torch.serialization.safe_globals(NUMPY_ARRAY_GLOBALS):
            obj = torch.load(path, map_location='cpu', weights_only=True)
    except Exception as error:  # torch raises several types for a corrupt or foreign file
        raise WeightsError(f'{path}: cannot read as PyTorch weights ({type(error).__name__}: {error})') from None
    if isinstance(obj, dict) and ('model' in obj or 'ema' in obj):
        obj = obj.get('ema') if obj.get('ema') is not None else obj.get('model')
    if not isinstance(obj, dict) or not all(torch.is_tensor(v) for v in obj.values()):
        raise WeightsError(f'{path}: expected a state_dict (name -> tensor) or a checkpoint with "model"/"ema", '
                           f'got {type(obj).__name__}')
    # DistributedDataParallel saves every name with a 'module.' prefix
    if obj and all(k.startswith('module.') for k in obj):
        obj = {k[len('module.'):]: v for k, v in obj.items()}
    return obj


def to_our_names(state: dict) -> dict:
    """Translate the released Yolo-FastestV2 layout to ours; other layouts pass through unchanged."""
    if not any(k.startswith('output_reg_layers.') for k in state):
        return dict(state)
    renamed = {}
    for key, value in state.items():
        for old, new in RELEASE_YFV2_RENAMES:
            if key.startswith(old):
                key = new + key[len(old):]
                break
        renamed[key] = value
    return renamed


def _mismatches(state: dict, expected: dict) -> tuple[list, list, list]:
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    wrong_shape = [k for k in state if k in expected and state[k].shape != expected[k].shape]
    return missing, unexpected, wrong_shape


def _mismatch_message(path, what, missing, unexpected, wrong_shape, state, expected) -> str:
    """One line: the counts, then the first few mismatches of each kind."""
    examples = [f'shape {k}: file {tuple(state[k].shape)}, model {tuple(expected[k].shape)}'
                for k in wrong_shape[:SHOW_MISMATCHES]]
    examples += [f'missing in file {k} {tuple(expected[k].shape)}' for k in missing[:SHOW_MISMATCHES]]
    examples += [f'not in model {k} {tuple(state[k].shape)}' for k in unexpected[:SHOW_MISMATCHES]]
    return (f'{path}: does not fit the {what}: {len(missing)} missing, {len(unexpected)} unexpected, '
            f'{len(wrong_shape)} with a different shape (' + '; '.join(examples) + ')')


def load_state(module: nn.Module, state: dict, path, what: str, strict: bool) -> dict:
    """Copy `state` into `module`. strict: every tensor must match by name and shape, else WeightsError.
    Not strict: copy what matches, report the rest. Returns a report dict."""
    expected = module.state_dict()
    missing, unexpected, wrong_shape = _mismatches(state, expected)
    if strict and (missing or unexpected or wrong_shape):
        raise WeightsError(_mismatch_message(path, what, missing, unexpected, wrong_shape, state, expected))
    usable = {k: v for k, v in state.items() if k in expected and k not in wrong_shape}
    if not usable:
        raise WeightsError(_mismatch_message(path, what, missing, unexpected, wrong_shape, state, expected)
                           + '; no tensor matched: is this the right file for this model?')
    module.load_state_dict(usable, strict=False)
    return dict(path=str(path), loaded=len(usable), total=len(expected), missing=missing,
                unexpected=unexpected, wrong_shape=wrong_shape)


def load_weights(model: nn.Module, path, strict: bool = True) -> dict:
    """Load a whole-model file (released Yolo-FastestV2 .pth or our checkpoint) into `model`.

    strict=False is for fine-tuning on other classes: tensors whose shape differs (the class outputs) are skipped
    and listed in the report. Returns dict(path, loaded, total, missing, unexpected, wrong_shape).
    """
    if is_ultralytics_checkpoint(path):
        return _load_ultralytics(model, path, ('backbone', 'neck', 'head'), strict)
    state = to_our_names(read_state_dict(path))
    try:
        return load_state(model, state, path, 'model', strict)
    except WeightsError as error:
        hint = data_keys_hint(path, state)
        raise WeightsError(f'{error}; {hint}' if hint else str(error)) from None


def data_keys_hint(path, state: dict) -> str:
    """What the .data file must say for the model that wrote `path`, as far as the file tells."""
    record = _training_record(path)
    if record:
        return (f'the file was trained from {record.get("data", "?")} with model = {record.get("model")}, '
                f'head = {record.get("head")}, classes = {record.get("classes")}: set those keys in the .data file')
    if any(k.startswith('backbone.stage2.') for k in state):
        model = 'yolo-fastestv2'
    elif any(k.startswith('backbone.backbone.') for k in state):
        model = 'leyolo-nano, -small, -medium or -large (the variant the file was trained as)'
    else:
        return ''
    head = 'leyolo' if 'head.dfl_bins' in state else 'anchor'
    class_conv = state.get('head.cls_outs.0.weight', state.get('head.cls_branches.0.3.weight'))
    classes = f' and {class_conv.shape[0]} classes' if class_conv is not None else ''
    return (f'the file holds a {model} model with the {head} head{classes}: set `model`, `head` and `classes` in '
            f'the .data file to match (or start from it with `pre_weights`, which skips tensors of another shape)')


def _training_record(path) -> dict:
    """model, head, classes and the .data path our trainer stored in a checkpoint; {} for other files."""
    try:
        with torch.serialization.safe_globals(NUMPY_ARRAY_GLOBALS):
            checkpoint = torch.load(path, map_location='cpu', weights_only=True)
    except Exception:   # any file that is not our checkpoint has no record
        return {}
    config = checkpoint.get('config') if isinstance(checkpoint, dict) else None
    if not isinstance(config, dict):
        return {}
    return {key: config.get(key) for key in ('model', 'head', 'classes')} | {'data': checkpoint.get('data')}


def _load_ultralytics(model: nn.Module, path, parts: tuple, strict: bool) -> dict:
    """LeYOLO's released checkpoint, through the LeYOLO importer; its report in the shape of ours."""
    from model.leyolo_import import import_leyolo  # only LeYOLO files need it
    try:
        imported = import_leyolo(model, path, parts=parts)
    except TypeError:   # the model is not a LeYOLO
        raise WeightsError(
            f'{path}: a LeYOLO checkpoint (Ultralytics), but the .data file describes another model; set `model = '
            f'leyolo-nano` (the variant the file was trained as) and `head = leyolo` in the .data file (or `head = '
            f'anchor` to put an anchor head on its body)') from None
    # The importer names body tensors relative to the LeYOLO body, which is the Detector's `backbone`.
    filled = {name if name.startswith('head.') else f'backbone.{name}' for name in imported['filled']}
    expected = model.state_dict() if 'head' in parts else {f'backbone.backbone.{k}': v for k, v in
                                                           model.backbone.backbone.state_dict().items()}
    report = dict(path=str(path), loaded=len(filled), total=len(expected),
                  missing=[k for k in expected if k not in filled], unexpected=sorted(imported['not_loaded']),
                  wrong_shape=[])
    if strict and (report['missing'] or report['unexpected']):
        reasons = sorted(set(imported['not_loaded'].values()))
        raise WeightsError(f'{path}: does not fit the model: {len(report["unexpected"])} tensors not loaded '
                           f'({"; ".join(reasons)}), e.g. {", ".join(report["unexpected"][:SHOW_MISMATCHES])}')
    return report


def load_backbone_weights(model: nn.Module, path) -> dict:
    """Load a backbone-only file into `model.backbone`; every backbone tensor must be filled from it.

    Names may carry a 'backbone.' prefix or not. Tensors the detector has no use for (an ImageNet classifier's
    last conv and fc) are skipped and listed under 'unexpected' in the returned report.
    """
    if is_ultralytics_checkpoint(path):
        return _load_ultralytics(model, path, ('backbone',), strict=False)
    state = read_state_dict(path)
    if any(k.startswith('backbone.') for k in state):
        state = {k[len('backbone.'):]: v for k, v in state.items() if k.startswith('backbone.')}
    expected = model.backbone.state_dict()
    report = load_state(model.backbone, {k: v for k, v in state.items() if k in expected}, path, 'backbone',
                        strict=True)
    report['unexpected'] = [k for k in state if k not in expected]
    return report
