"""Ultralytics' and Roboflow's dataset YAML (`data.yaml`) -> the raw values utils/config.py turns into a `Config`.

The dataset keys follow Ultralytics' `check_det_dataset` (ultralytics/data/utils.py):
* `path`, the dataset root: absolute; else relative to the working folder when it exists there (Ultralytics' rule;
  where Ultralytics then tries its `datasets_dir` setting, we take it relative to the YAML's folder); missing or
  empty: the YAML's folder.
* `train`, `val` (or `validation`), each a folder of images, a list file, or a YAML list of them, relative to the
  root; one that does not exist and starts with `../` is taken without it (Roboflow writes `train: ../train/images`
  into a data.yaml that sits in the dataset root). A list of several becomes one list file in the split cache
  folder (utils/data/cache.py), never in the dataset.
* `names`, a list or an {index: name} mapping with indices 0..N-1; `nc`, the class count, which must agree with
  `names` (`nc` alone names the classes class_0, class_1, ...).
* `test`, `minival`, `download`, Roboflow's `roboflow:` block and the keys of pose datasets are accepted and unused.
Every other top-level key is returned as the text a .data line would hold (a YAML list as comma-separated values),
for utils/config.py to read as one of our keys, or to name as a misspelling, or to ignore.

Errors name file:line. Of the project this module imports only utils/errors.py, and utils/data/ (the list of a
split's images and the cache folder) only where a split is a YAML list of several sources.
"""
from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass
from pathlib import Path

import yaml

from utils.errors import ConfigError, DatasetError

YAML_SUFFIXES = ('.yaml', '.yml')
# keys this module reads itself; none of them reaches utils/config.py as a value
DATASET_KEYS = {'path', 'train', 'val', 'names', 'nc'}
# Ultralytics' and Roboflow's keys we accept and have no use for: said once, never an error
UNUSED_KEYS = {'test', 'minival', 'download', 'roboflow', 'channels', 'kpt_shape', 'flip_idx', 'kpt_names'}
_NULL_TAG = 'tag:yaml.org,2002:null'


@dataclass
class DataYaml:
    values: dict         # key -> text of every key other than DATASET_KEYS and UNUSED_KEYS, as in a .data line
    lines: dict          # key -> line number, of every top-level key (`validation` counted as `val`)
    train: Path          # a folder of images or a list file
    val: Path
    class_names: tuple
    unused: list         # the UNUSED_KEYS the file holds


def is_data_yaml(path) -> bool:
    return Path(path).suffix.lower() in YAML_SUFFIXES


def read_data_yaml(path, splits: bool = True) -> DataYaml:
    """Read and check a data.yaml's dataset keys; return them with the text of its other keys. splits=False: the
    splits will not be read (to run a model only), so a split made of several sources is given the path of its
    combined list without listing their images."""
    path = Path(path)
    _, text = _read_text(path)
    root = _compose(path, text)
    nodes, lines = {}, {}
    for key_node, value_node in root.value:
        line = key_node.start_mark.line + 1
        if not isinstance(key_node, yaml.ScalarNode):
            raise ConfigError(f'{path}:{line}: a key must be a plain name, got a {_kind(key_node)}')
        key = 'val' if key_node.value == 'validation' else key_node.value   # Ultralytics renames it too
        if key in nodes:
            raise ConfigError(f'{path}:{line}: key "{key}" given twice (first on line {lines[key]})')
        nodes[key], lines[key] = value_node, line
    for key in ('train', 'val'):
        if key not in nodes:
            raise ConfigError(f'{path}: required key "{key}" is missing')
    class_names = _class_names(path, nodes, lines)
    root_folder = _dataset_root(path, nodes.get('path'))
    train, val = (_split(path, key, nodes[key], lines[key], root_folder, splits) for key in ('train', 'val'))
    values = {key: _text(node, text) for key, node in nodes.items() if key not in DATASET_KEYS | UNUSED_KEYS}
    return DataYaml(values, lines, train, val, class_names, sorted(set(nodes) & UNUSED_KEYS))


def _read_text(path: Path) -> tuple[bytes, str]:
    """(the BOM or b'', the text after it)."""
    if not path.is_file():
        raise ConfigError(f'{path}: data file not found')
    raw = path.read_bytes()
    bom = b'\xef\xbb\xbf' if raw.startswith(b'\xef\xbb\xbf') else b''
    try:
        return bom, raw[len(bom):].decode('utf-8')
    except UnicodeDecodeError:
        raise ConfigError(f'{path}: not a text file (is this really a data.yaml?)') from None


def _compose(path: Path, text: str) -> yaml.MappingNode:
    """The YAML node tree, whose nodes keep their line and position (yaml.safe_load would drop them)."""
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as error:
        mark = error.problem_mark or error.context_mark
        context = ''
        if error.context and error.context_mark:
            context = f' ({error.context}, line {error.context_mark.line + 1})'
        where = f'{path}:{mark.line + 1}' if mark else f'{path}'
        raise ConfigError(f'{where}: not valid YAML: {error.problem}{context}') from None
    except yaml.YAMLError as error:
        raise ConfigError(f'{path}: not valid YAML: {" ".join(str(error).split())}') from None
    if not isinstance(root, yaml.MappingNode):
        raise ConfigError(f'{path}: expected keys (train: ..., val: ..., names: ...), got '
                          f'{"nothing" if root is None else "a " + _kind(root)}')
    return root


def _kind(node) -> str:
    return {yaml.MappingNode: 'mapping', yaml.SequenceNode: 'list'}.get(type(node), 'value')


def _text(node, text: str) -> str:
    """A value as a .data line would hold it: a YAML list (or list of lists: anchors per scale) as comma-separated
    values, null as empty."""
    if isinstance(node, yaml.ScalarNode):
        return '' if node.tag == _NULL_TAG else node.value
    flat = _flatten(node)
    if flat is not None:
        return ','.join(flat)
    return ' '.join(text[node.start_mark.index:node.end_mark.index].split())   # shown as written in the error


def _flatten(node) -> list | None:
    """The scalars of a list, of nested lists too; None if it holds a mapping."""
    if isinstance(node, yaml.ScalarNode):
        return [node.value]
    if isinstance(node, yaml.SequenceNode):
        parts = [_flatten(item) for item in node.value]
        return None if None in parts else [value for part in parts for value in part]
    return None


def _scalar(node) -> str | None:
    """The text of a non-empty scalar, else None."""
    if isinstance(node, yaml.ScalarNode) and node.tag != _NULL_TAG and node.value.strip():
        return node.value.strip()
    return None


def _class_names(path: Path, nodes: dict, lines: dict) -> tuple:
    nc = None
    if 'nc' in nodes:
        text = _scalar(nodes['nc'])
        if text is None or not re.fullmatch(r'\d+', text) or int(text) == 0:
            raise ConfigError(f'{path}:{lines["nc"]}: key "nc": expected a positive int, got '
                              f'"{text if text is not None else _kind(nodes["nc"])}"')
        nc = int(text)
    if 'names' not in nodes:
        if nc is None:
            raise ConfigError(f'{path}: required key "names" (or "nc") is missing')
        return tuple(f'class_{i}' for i in range(nc))   # Ultralytics' names for a YAML with nc alone
    names_node, where = nodes['names'], f'{path}:{lines["names"]}'
    if isinstance(names_node, yaml.SequenceNode):
        entries = list(enumerate(names_node.value))
    elif isinstance(names_node, yaml.MappingNode):
        entries, seen = [], set()
        for index_node, name_node in names_node.value:
            index = _scalar(index_node)
            line = index_node.start_mark.line + 1
            if index is None or not re.fullmatch(r'\d+', index):
                raise ConfigError(f'{path}:{line}: key "names": "{index}" is not a class index (0, 1, 2, ...)')
            if int(index) in seen:
                raise ConfigError(f'{path}:{line}: key "names": class {int(index)} given twice')
            seen.add(int(index))
            entries.append((int(index), name_node))
    else:
        raise ConfigError(f'{where}: key "names": expected a list of class names or a mapping {{index: name}}, '
                          f'got "{_scalar(names_node) or ""}" (a .names file goes into a .data file)')
    if not entries:
        raise ConfigError(f'{where}: key "names": no class names')
    indices = {index for index, _ in entries}
    missing = sorted(set(range(len(entries))) - indices)
    if missing:
        after = min((i, node) for i, node in entries if i > missing[0])
        raise ConfigError(f'{path}:{after[1].start_mark.line + 1}: key "names": class {after[0]} given but class '
                          f'{missing[0]} is missing (indices must be 0..{len(entries) - 1})')
    names = []
    for index, name_node in sorted(entries, key=lambda entry: entry[0]):
        name = _scalar(name_node)
        if name is None:
            raise ConfigError(f'{path}:{name_node.start_mark.line + 1}: key "names": class {index} has no name')
        names.append(name)
    if nc is not None and nc != len(names):
        raise ConfigError(f'{path}:{lines["nc"]}: key "nc": nc = {nc} but "names" (line {lines["names"]}) lists '
                          f'{len(names)} names')
    return tuple(names)


def _dataset_root(path: Path, node) -> Path:
    if node is not None and not isinstance(node, yaml.ScalarNode):
        raise ConfigError(f'{path}:{node.start_mark.line + 1}: key "path": expected the dataset folder, got a '
                          f'{_kind(node)}')
    text = _scalar(node) if node is not None else None
    if text is None:
        return path.resolve().parent
    root = Path(os.path.expanduser(text.replace('\\', '/')))
    if root.is_absolute():
        return root
    return root.resolve() if root.exists() else path.resolve().parent / root


def _split(path: Path, key: str, node, line: int, root: Path, write_list: bool) -> Path:
    """The split's folder or list file; several sources become one list file in the split cache folder."""
    items = node.value if isinstance(node, yaml.SequenceNode) else [node]
    sources = []
    for item in items:
        text = _scalar(item)
        if text is None:
            got = 'nothing' if isinstance(item, yaml.ScalarNode) else f'a {_kind(item)}'
            raise ConfigError(f'{path}:{item.start_mark.line + 1}: key "{key}": expected a folder of images or a '
                              f'list file, got {got}')
        sources.append((_under_root(root, text), item.start_mark.line + 1))
    if not sources:
        raise ConfigError(f'{path}:{line}: key "{key}" has no value')
    if len(sources) == 1:
        return sources[0][0]   # checked as a .data's split is, by utils/config.py
    return _combined_list(path, key, sources, write_list)


def _under_root(root: Path, text: str) -> Path:
    text = os.path.expanduser(text.replace('\\', '/'))
    found = (root / text).resolve()
    if not found.exists() and text.startswith('../'):
        found = (root / text[3:]).resolve()
    return found


def _combined_list(path: Path, key: str, sources: list, write: bool) -> Path:
    """The list file, in the split cache folder, of the images of several sources; written unless `write` is False
    (the splits will not be read)."""
    from utils.data.cache import cache_folder
    from utils.data.dataset import list_images

    digest = hashlib.sha1(str(path.resolve()).encode('utf-8', 'surrogateescape')).hexdigest()[:16]
    target = cache_folder() / f'{path.name}-{key}-{digest}.txt'
    if not write:
        return target
    image_paths = []
    for source, line in sources:
        if not source.exists():
            raise ConfigError(f'{path}:{line}: key "{key}": list file or image folder not found: {source}')
        try:
            image_paths += [str(p) for p in list_images(source)]
        except DatasetError as error:
            raise ConfigError(f'{path}:{line}: key "{key}": {error}') from None
    text = ''.join(f'{p}\n' for p in image_paths)
    if target.is_file() and target.read_text(encoding='utf-8') == text:
        return target
    temporary = target.with_name(f'{target.name}.{os.getpid()}.tmp')   # per process: DDP ranks may write at once
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        temporary.write_text(text, encoding='utf-8')
        os.replace(temporary, target)
    except OSError as error:
        temporary.unlink(missing_ok=True)
        raise ConfigError(f'{path}:{sources[0][1]}: key "{key}": cannot write its combined list {target} '
                          f'({error.strerror})') from None
    return target


def set_key(path, key: str, value: str) -> None:
    """Set the top-level `key: value` of a YAML file, every other byte as it was (comments and line ends included);
    a key the file lacks is added at its end. `value` must be a plain YAML scalar (e.g. `12.6,19.4, 37.9,51.5`)."""
    path = Path(path)
    bom, text = _read_text(path)
    root = _compose(path, text)
    for key_node, value_node in root.value:
        if isinstance(key_node, yaml.ScalarNode) and key_node.value == key:
            colon = text.index(':', key_node.end_mark.index)
            block_list = isinstance(value_node, yaml.SequenceNode) and not value_node.flow_style
            if block_list or (_scalar(value_node) is None and isinstance(value_node, yaml.ScalarNode)):
                start, value = colon + 1, ' ' + value   # nothing, or a list on the lines below: write after ':'
            else:
                start = value_node.start_mark.index
            end = value_node.value[-1].end_mark.index if block_list and value_node.value else value_node.end_mark.index
            end = max(end, start)
            while end > start and text[end - 1] in ' \t\r\n':   # a block value's span takes the line end with it
                end -= 1
            text = text[:start] + value + text[end:]
            break
    else:
        if root.flow_style:
            raise ConfigError(f'{path}: its keys are one {{...}} mapping; add "{key}: {value}" to it yourself')
        newline = '\r\n' if '\r\n' in text else '\n'
        if text and not text.endswith(('\n', '\r')):
            text += newline
        text += f'{key}: {value}{newline}'
    path.write_bytes(bom + text.encode('utf-8'))
