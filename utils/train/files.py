"""Write a training output (checkpoint, results.csv, results.png) so that a crash or a full disk never costs the
previous version.

The bytes go to a temporary file next to the target, are flushed to disk, and only then renamed over it.
`os.replace` is atomic on POSIX and Windows, so at every instant the path holds either the previous complete file or
the new complete one, never half a file, even if the process is killed mid-write. When the write fails (a full disk,
no permission), the temporary file is removed and a CheckpointError names the file and, for a full disk, the free
space against the bytes it needed.
"""
from __future__ import annotations

import errno
import os
import shutil
import tempfile
from pathlib import Path

from utils.errors import CheckpointError

DISK_FULL = {errno.ENOSPC, getattr(errno, 'EDQUOT', errno.ENOSPC)}   # EDQUOT: over a disk quota


def write_atomic(path, data: bytes) -> None:
    """Replace `path` with `data` in one step; raise CheckpointError (nothing changed at `path`) when it fails."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, temp = tempfile.mkstemp(prefix=f'.{path.name}.', suffix='.tmp', dir=path.parent)
    except OSError as error:
        raise CheckpointError(_cannot_write(path, len(data), error)) from None
    try:
        try:
            _write_all(handle, data)
            os.fsync(handle)   # the bytes are on disk before the rename makes them visible
        finally:
            os.close(handle)
        os.chmod(temp, 0o666 & ~_umask())   # mkstemp makes the file private; give it normal permissions
        os.replace(temp, path)
    except BaseException as error:
        if os.path.exists(temp):
            os.remove(temp)
        if isinstance(error, OSError):
            raise CheckpointError(_cannot_write(path, len(data), error)) from None
        raise


def _write_all(handle: int, data: bytes) -> None:
    """os.write may write less than asked (a filling disk, a signal): go on from where it stopped."""
    view = memoryview(data)
    while view:
        view = view[os.write(handle, view):]


def _cannot_write(path: Path, needed_bytes: int, error: OSError) -> str:
    message = f'{path}: cannot write it ({error.strerror or error})'
    if error.errno in DISK_FULL:
        free_bytes = shutil.disk_usage(path.parent).free
        message += f': {human_bytes(free_bytes)} free on {path.parent}, {human_bytes(needed_bytes)} needed'
        if path.exists():
            message += f'; the previous {path.name} is intact'
    return message


def human_bytes(n: int) -> str:
    """1500 -> '1.5 kB' (decimal units, as `df -H` prints them)."""
    if n < 1000:
        return f'{n} bytes'
    value, unit = n / 1000, 'kB'
    for bigger in ('MB', 'GB', 'TB'):
        if value < 1000:
            break
        value, unit = value / 1000, bigger
    return f'{value:.1f} {unit}'


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
