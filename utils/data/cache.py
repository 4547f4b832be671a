"""The split cache: what checking a split found, per image, so only changed files are checked again.

Caches never go into a dataset's folders (they may be shared, read-only or someone else's). They go to one folder
per user:
    $TINYDET_SPLIT_CACHE                      if set (tests point it at a temporary folder)
    $TINYDET_CACHE/splits                     if set (the root of every tinydet cache, as sample/ncnn/build.sh uses it)
    $XDG_CACHE_HOME/tinydet/splits            if set
    ~/.cache/tinydet/splits                   otherwise
A split's cache is named after its list file or folder plus a hash of its absolute path, `train.txt-<16 hex>.cache`,
so two `train.txt` of different datasets never share one. Deleting the folder is always safe: the next load checks
everything again.

A cache file is a numpy archive (no pickle), written atomically, keyed by each image's path and the size and
modification time of the image and of its label file.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np

CACHE_VERSION = 3   # raised whenever the checks change: a cache made by other checks is not reused


def cache_folder() -> Path:
    """The folder split caches go to (see the module docstring)."""
    if os.environ.get('TINYDET_SPLIT_CACHE'):
        return Path(os.environ['TINYDET_SPLIT_CACHE'])
    if os.environ.get('TINYDET_CACHE'):
        return Path(os.environ['TINYDET_CACHE']) / 'splits'
    return Path(os.environ.get('XDG_CACHE_HOME') or Path.home() / '.cache') / 'tinydet' / 'splits'


def cache_path_for(source: Path) -> Path:
    """`/data/voc/train.txt` -> `<cache folder>/train.txt-<sha1 of /data/voc/train.txt, 16 hex>.cache`."""
    source = Path(source).resolve()
    digest = hashlib.sha1(str(source).encode('utf-8', 'surrogateescape')).hexdigest()[:16]
    return cache_folder() / f'{source.name}-{digest}.cache'


def read_cache(path: Path, classes: int | None) -> dict:
    """{image path text: (signature, labels, problem or None)} from a cache file; {} if absent, stale or unreadable."""
    try:
        with np.load(path, allow_pickle=False) as saved:
            if int(saved['version']) != CACHE_VERSION or int(saved['classes']) != (classes or -1):
                return {}   # another class count changes which lines are valid: check everything again
            paths = _unjoin(saved['paths'])
            problems = _unjoin(saved['problems'])
            signatures = saved['signatures'].tolist()
            boxes = np.split(saved['boxes'], np.cumsum(saved['counts'])[:-1])
    except (OSError, KeyError, ValueError, EOFError):
        return {}
    if not (len(paths) == len(problems) == len(signatures) == len(boxes)):
        return {}
    return {p: (tuple(s), b, q or None) for p, s, b, q in zip(paths, signatures, boxes, problems)}


def write_cache(path: Path, classes: int | None, entries: list) -> str:
    """Write the cache atomically. `entries`: (image path, signature, labels, problem or None) per image.
    Returns a note for the split's summary."""
    if any('\n' in str(e[0]) for e in entries):
        return 'cache not written: an image path holds a newline'
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        return f'cache not written: cannot make the cache folder {path.parent} ({error.strerror})'
    temporary = path.with_name(f'{path.name}.{os.getpid()}.tmp')   # per process: DDP ranks may write at once
    try:
        with open(temporary, 'wb') as f:
            np.savez(f, version=np.array(CACHE_VERSION), classes=np.array(classes or -1),
                     paths=_join([str(e[0]) for e in entries]), problems=_join([e[3] or '' for e in entries]),
                     signatures=np.array([e[1] for e in entries], dtype=np.int64).reshape(-1, 5),
                     counts=np.array([len(e[2]) for e in entries], dtype=np.int64),
                     boxes=np.concatenate([e[2] for e in entries]).reshape(-1, 5).astype(np.float32))
        os.replace(temporary, path)
    except OSError as error:
        temporary.unlink(missing_ok=True)
        return f'cache not written: {path}: {error.strerror}'
    return f'cache written: {path}'


def _join(texts: list) -> np.ndarray:
    return np.frombuffer('\n'.join(texts).encode('utf-8'), dtype=np.uint8)


def _unjoin(array: np.ndarray) -> list:
    return array.tobytes().decode('utf-8').split('\n')
