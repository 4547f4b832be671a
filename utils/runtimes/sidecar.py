"""The sidecar `X.json` beside an NCNN `X.param`: reading it, and checking it against the .data file.

utils/export/ncnn_convert.py writes it: the input size, the input and output blob names, the head, strides,
anchors and classes the model was exported with. The NCNN runtime takes its blob names from it.
"""
from __future__ import annotations

import json
from pathlib import Path

from utils.errors import ConfigError, NcnnModelError


def sidecar_path(param_path) -> Path:
    """The sidecar JSON beside a .param: `X.param` -> `X.json`."""
    return Path(param_path).with_suffix('.json')


def read_sidecar(param_path) -> dict:
    path = sidecar_path(param_path)
    if not path.is_file():
        raise FileNotFoundError(f'{path}: sidecar JSON not found beside {param_path} '
                                f'(pytorch2onnx.py writes it; it names the input and output blobs)')
    try:
        sidecar = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise NcnnModelError(f'{path}:{error.lineno}: not valid JSON: {error.msg}') from None
    if not isinstance(sidecar, dict):
        raise NcnnModelError(f'{path}:1: expected a JSON object, got {type(sidecar).__name__}')
    for key in ('input_blob', 'output_blobs'):
        if key not in sidecar:
            raise NcnnModelError(f'{path}: key "{key}" is missing')
    return sidecar


def check_sidecar(param_path, sidecar: dict, spec) -> None:
    """The sidecar records what the model was exported with; it must agree with the .data file (spec)."""
    wanted = {'input_width': spec.input_width, 'input_height': spec.input_height, 'num_classes': spec.num_classes,
              'head': spec.kind, 'strides': list(spec.strides)}
    for key, value in wanted.items():
        if key in sidecar and sidecar[key] != value:
            raise ConfigError(f'{sidecar_path(param_path)}: "{key}" is {sidecar[key]} but the .data file gives '
                              f'{value}: was this model exported from another .data file?')
