"""Import the released LeYOLO weights (an Ultralytics checkpoint, e.g. `LeYOLONano.pt`) without Ultralytics.

The file is torch.save's zip format holding a pickle of the whole Ultralytics model object. We unpickle it with our
own `find_class`: every Ultralytics class (and every torch.nn module class) becomes an inert stand-in that only
keeps its attributes, tensors are rebuilt by torch's own functions, and any other global is refused. So nothing
from the file runs, and Ultralytics need not be installed. The tensors are then read out of the stand-ins'
`_parameters` / `_buffers` in registration order, which gives the fork's state_dict names (`model.<layer>.<...>`).

Mapping is by structure, not by name: fork layer i -> our module `LeYOLO.fork_layers()[i]`, and within a layer the
tensors pair up in order, each pair checked for equal shape. The head (fork layer `model.<last>`, `Detect`) maps
`cv2.<scale>` -> `head.box_branches[scale]`, `cv3.<scale>` -> `head.cls_branches[scale]`, `dfl.conv.weight` ->
`head.dfl_bins`.

The fork's network takes RGB; ours take BGR (docs/architecture.md), so the first conv's input channels are reversed.
Tensors are stored in fp16 and are upcast to fp32.
"""
from __future__ import annotations

import builtins
import collections
import pickle
import types
from pathlib import Path

import torch
from torch import nn

from model.errors import LeYOLOImportError
from model.leyolo import BN_EPS, LeYOLO
from model.leyolo_head import LeYOLOHead

PARTS = ('backbone', 'neck', 'head')


class StandIn:
    """An inert object in place of a class from the checkpoint: keeps the pickled attributes, runs nothing."""
    origin = '?'

    def __new__(cls, *args, **kwargs):
        return object.__new__(cls)

    def __init__(self, *args, **kwargs):
        self.pickled_args = args

    def __setstate__(self, state):
        if isinstance(state, dict):
            self.__dict__.update(state)
        else:
            self.pickled_state = state


# Globals a checkpoint may use that we let through as they are: containers and torch's tensor rebuilding.
ALLOWED_GLOBALS = {
    ('collections', 'OrderedDict'): collections.OrderedDict,
    ('__builtin__', 'set'): builtins.set, ('builtins', 'set'): builtins.set,
    ('torch', 'Size'): torch.Size,
    ('torch', 'device'): torch.device,
    ('torch._utils', '_rebuild_tensor_v2'): torch._utils._rebuild_tensor_v2,
    ('torch._utils', '_rebuild_parameter'): torch._utils._rebuild_parameter,
}
STAND_IN_PREFIXES = ('ultralytics.', 'torch.nn.modules.')


def _stand_in_class(module: str, name: str) -> type:
    return type(name, (StandIn,), {'origin': f'{module}.{name}'})


class _StandInUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        if (module, name) in ALLOWED_GLOBALS:
            return ALLOWED_GLOBALS[(module, name)]
        if module.startswith(STAND_IN_PREFIXES):
            return _stand_in_class(module, name)
        raise pickle.UnpicklingError(f'refusing to load global "{module}.{name}": not expected in a LeYOLO '
                                     'checkpoint')


# torch.load wants a module-like object with the pickle API; it subclasses our Unpickler for its storages.
_pickle_module = types.ModuleType('leyolo_standin_pickle')
_pickle_module.Unpickler = _StandInUnpickler
_pickle_module.load = lambda file, **kwargs: _StandInUnpickler(file, **kwargs).load()
_pickle_module.__dict__.update(UnpicklingError=pickle.UnpicklingError)


def _collect_tensors(obj, prefix: str, out: dict) -> None:
    """A state_dict from pickled nn.Module attributes: parameters, persistent buffers, then children, in order."""
    attributes = getattr(obj, '__dict__', {})
    for name, tensor in attributes.get('_parameters', {}).items():
        if tensor is not None:
            out[prefix + name] = tensor
    non_persistent = attributes.get('_non_persistent_buffers_set', set())
    for name, tensor in attributes.get('_buffers', {}).items():
        if tensor is not None and name not in non_persistent:
            out[prefix + name] = tensor
    for name, child in attributes.get('_modules', {}).items():
        if child is not None:
            _collect_tensors(child, f'{prefix}{name}.', out)


def read_ultralytics_checkpoint(path) -> tuple[dict, dict]:
    """(state_dict in the fork's names and order, fp32; info: num_classes, bn_eps, yaml name) from an Ultralytics
    checkpoint, read without Ultralytics."""
    path = Path(path)
    if not path.is_file():
        raise LeYOLOImportError(f'{path}: weights file not found')
    try:
        checkpoint = torch.load(path, map_location='cpu', pickle_module=_pickle_module, weights_only=False)
    except Exception as error:   # a foreign file fails in many ways: zip, pickle, or our refusal
        raise LeYOLOImportError(f'{path}: cannot read as an Ultralytics checkpoint ({type(error).__name__}: '
                                f'{error})') from None
    network = checkpoint.get('ema') or checkpoint.get('model') if isinstance(checkpoint, dict) else None
    if not isinstance(network, StandIn):
        raise LeYOLOImportError(f'{path}: no Ultralytics model object under "model" or "ema"')
    state = {}
    _collect_tensors(network, '', state)
    state = {k: v.float() if v.is_floating_point() else v for k, v in state.items()}
    layers = network.__dict__.get('_modules', {}).get('model')
    detect = list(layers.__dict__['_modules'].values())[-1] if layers is not None else None
    batch_norms = [m for m in _walk(network) if m.origin.endswith('BatchNorm2d')]
    yaml = getattr(network, 'yaml', None)
    info = dict(num_classes=getattr(detect, 'nc', None), bn_eps=sorted({m.eps for m in batch_norms}),
                yaml=yaml.get('yaml_file') if isinstance(yaml, dict) else None)
    return state, info


def _walk(obj):
    yield obj
    for child in getattr(obj, '__dict__', {}).get('_modules', {}).values():
        if isinstance(child, StandIn):
            yield from _walk(child)


def _resolve(model_or_parts) -> tuple[LeYOLO, LeYOLOHead | None]:
    """The LeYOLO body and head in a Detector, a (body, head) pair, or a bare body."""
    if isinstance(model_or_parts, LeYOLO):
        return model_or_parts, None
    if isinstance(model_or_parts, (tuple, list)):
        bodies = [m for m in model_or_parts if isinstance(m, LeYOLO)]
        heads = [m for m in model_or_parts if isinstance(m, LeYOLOHead)]
        if len(bodies) == 1 and len(heads) <= 1:
            return bodies[0], heads[0] if heads else None
    body = getattr(model_or_parts, 'backbone', None)
    if isinstance(body, LeYOLO):
        head = getattr(model_or_parts, 'head', None)
        return body, head if isinstance(head, LeYOLOHead) else None
    raise TypeError('import_leyolo needs a Detector with a LeYOLO body, a LeYOLO, or a (LeYOLO, LeYOLOHead) pair; '
                    f'got {type(model_or_parts).__name__}')


def _pair(state: dict, fork_prefix: str, module: nn.Module, our_prefix: str, path) -> list:
    """[(fork name, our module's state_dict name, tensor)] for one layer, paired in order with equal shapes."""
    fork_names = [k for k in state if k.startswith(fork_prefix)]
    ours = module.state_dict()
    if len(fork_names) != len(ours):
        raise LeYOLOImportError(f'{path}: fork layer {fork_prefix[:-1]} has {len(fork_names)} tensors but our '
                                f'{our_prefix[:-1]} has {len(ours)} (is this checkpoint the same variant?)')
    pairs = []
    for fork_name, (our_name, our_tensor) in zip(fork_names, ours.items()):
        if state[fork_name].shape != our_tensor.shape:
            raise LeYOLOImportError(f'{path}: {fork_name} has shape {tuple(state[fork_name].shape)} but our '
                                    f'{our_prefix}{our_name} has {tuple(our_tensor.shape)} (a different variant?)')
        pairs.append((fork_name, our_name, state[fork_name]))
    return pairs


def _load_pairs(module: nn.Module, pairs: list) -> None:
    module.load_state_dict({our: tensor for _, our, tensor in pairs}, strict=True)


def import_leyolo(model_or_parts, path, parts=PARTS, log=None) -> dict:
    """Copy a released LeYOLO checkpoint into our modules. Returns a report:
    loaded (fork tensors copied), total_in_file, filled (our tensor names filled), not_loaded (fork names left
    unused, with the reason), reinitialised (our class-layer tensor names, when the class count differs).

    parts: any of 'backbone' (fork layers up to SPPF), 'neck' (the FPAN layers), 'head' (Detect). The head is
    taken whole when the class count matches the file's; otherwise its class layers are re-initialised and the
    rest kept.
    """
    unknown = set(parts) - set(PARTS)
    if unknown:
        raise ValueError(f'unknown parts {sorted(unknown)}; known: {PARTS}')
    body, head = _resolve(model_or_parts)
    state, info = read_ultralytics_checkpoint(path)
    if info['bn_eps'] != [BN_EPS]:   # our BatchNorms use 1e-3; other eps values would give other outputs
        raise LeYOLOImportError(f'{path}: BatchNorm eps {info["bn_eps"]} in the file, our LeYOLO uses {BN_EPS}')
    fork_layers = body.fork_layers()
    detect_index = len(fork_layers)
    if f'model.{detect_index}.dfl.conv.weight' not in state:
        raise LeYOLOImportError(f'{path}: no Detect layer at model.{detect_index}: the file is not LeYOLO-'
                                f'{body.variant} ({len(state)} tensors)')
    sppf_index = fork_layers.index(body.backbone.sppf)
    report = dict(path=str(path), total_in_file=len(state), loaded=0, filled=[], not_loaded={}, reinitialised=[],
                  file_info=info)

    fork_used = []
    for i, module in enumerate(fork_layers):
        part = 'backbone' if i <= sppf_index else 'neck'
        if module is None or part not in parts:
            continue
        our_prefix = _module_name(body, module)
        pairs = _pair(state, f'model.{i}.', module, our_prefix + '.', path)
        if i == 0:   # RGB-trained first conv -> BGR input
            pairs = [(f, o, t[:, [2, 1, 0]] if o == 'conv.weight' else t) for f, o, t in pairs]
        _load_pairs(module, pairs)
        report['filled'] += [f'{our_prefix}.{o}' for _, o, _ in pairs]
        fork_used += [f for f, _, _ in pairs]
    if 'head' in parts and head is not None:
        fork_used += _import_head(head, state, f'model.{detect_index}.', path, report)

    report['loaded'] = len(fork_used)
    used = set(fork_used)
    for name in state:
        if name in used:
            continue
        layer = int(name.split('.')[1])
        part = 'head' if layer == detect_index else 'backbone' if layer <= sppf_index else 'neck'
        report['not_loaded'][name] = ('part not requested' if part not in parts else
                                      'the model has no LeYOLO head' if head is None else
                                      f'class count differs (file {info["num_classes"]}, model {head.num_classes})')
    if log:
        log(f'{path}: loaded {report["loaded"]}/{report["total_in_file"]} tensors into LeYOLO-{body.variant} '
            f'({", ".join(parts)}); not loaded: {len(report["not_loaded"])}; re-initialised: '
            f'{len(report["reinitialised"])}')
    return report


def _module_name(root: nn.Module, module: nn.Module) -> str:
    for name, candidate in root.named_modules():
        if candidate is module:
            return name
    raise RuntimeError('module not found in the model')


def _import_head(head: LeYOLOHead, state: dict, prefix: str, path, report: dict) -> list:
    """Fill the head from the fork's Detect layer; returns the fork names used."""
    same_classes = state[f'{prefix}cv3.0.3.bias'].shape[0] == head.num_classes
    used = []
    for s, (box_branch, cls_branch) in enumerate(zip(head.box_branches, head.cls_branches)):
        pairs = _pair(state, f'{prefix}cv2.{s}.', box_branch, f'head.box_branches.{s}.', path)
        _load_pairs(box_branch, pairs)
        report['filled'] += [f'head.box_branches.{s}.{o}' for _, o, _ in pairs]
        used += [f for f, _, _ in pairs]

        # another class count: keep the three hidden layers (>= 80 wide by design), re-initialise the class conv
        target = cls_branch if same_classes else cls_branch[:3]
        class_conv = f'{prefix}cv3.{s}.3.'
        source = state if same_classes else {k: v for k, v in state.items() if not k.startswith(class_conv)}
        pairs = _pair(source, f'{prefix}cv3.{s}.', target, f'head.cls_branches.{s}.', path)
        _load_pairs(target, pairs)
        report['filled'] += [f'head.cls_branches.{s}.{o}' for _, o, _ in pairs]
        used += [f for f, _, _ in pairs]
        if not same_classes:
            cls_branch[3].reset_parameters()
            report['reinitialised'] += [f'head.cls_branches.{s}.3.weight', f'head.cls_branches.{s}.3.bias']
    if not same_classes:
        head.init_class_biases()

    bins = state[f'{prefix}dfl.conv.weight'].flatten()
    if not torch.equal(bins, head.dfl_bins):
        raise LeYOLOImportError(f'{path}: {prefix}dfl.conv.weight is not 0..{head.reg_max - 1}: {bins.tolist()}')
    report['filled'].append('head.dfl_bins')
    used.append(f'{prefix}dfl.conv.weight')
    return used
