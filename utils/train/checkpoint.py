"""Training checkpoints that survive a crash: written to a temporary file, then renamed over the old one.

`os.replace` is atomic on POSIX and Windows, so at every instant the path holds either the previous complete
checkpoint or the new complete one, never half a file, even if the process is killed mid-write.

A checkpoint is a dict (see utils/train/trainer.py for the keys): model, ema, optimizer, scheduler, epoch, best score,
the config and the random states. model/weights.load_weights reads the same dict (preferring 'ema').
"""
from __future__ import annotations

import os
import random
import tempfile
from pathlib import Path

import numpy as np
import torch


def save_atomic(obj, path) -> None:
    """torch.save to `path` without ever leaving a partial file there."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temp = tempfile.mkstemp(prefix=f'.{path.name}.', suffix='.tmp', dir=path.parent)
    try:
        with os.fdopen(handle, 'wb') as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())   # the bytes are on disk before the rename makes them visible
        os.chmod(temp, 0o666 & ~_umask())   # mkstemp makes the file private; give it normal permissions
        os.replace(temp, path)
    except BaseException:
        if os.path.exists(temp):
            os.remove(temp)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def load_checkpoint(path, map_location='cpu') -> dict:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f'{path}: checkpoint not found')
    try:
        checkpoint = torch.load(path, map_location=map_location, weights_only=False)
    except Exception as error:
        raise ValueError(f'{path}: not a readable checkpoint ({type(error).__name__}: {error})') from None
    if not isinstance(checkpoint, dict) or 'model' not in checkpoint:
        raise ValueError(f'{path}: not a training checkpoint of this trainer (no "model" entry)')
    return checkpoint


def rng_states() -> dict:
    states = {'python': random.getstate(), 'numpy': np.random.get_state(), 'torch': torch.get_rng_state()}
    if torch.cuda.is_available():
        states['cuda'] = torch.cuda.get_rng_state_all()
    return states


def set_rng_states(states: dict) -> None:
    random.setstate(states['python'])
    np.random.set_state(states['numpy'])
    torch.set_rng_state(states['torch'])
    if 'cuda' in states and torch.cuda.is_available() and len(states['cuda']) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(states['cuda'])
