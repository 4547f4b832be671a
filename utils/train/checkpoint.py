"""Training checkpoints: written whole or not at all (utils/train/files.py), read without running code.

What the trainer writes (utils/train/trainer.py, `save_checkpoint`), all of it plain Python values, tensors and
numpy arrays:
    model          the model's state_dict
    ema            the EMA model's state_dict (when the .data has ema on); model/weights.py prefers it
    epoch          the epoch to continue at (0-based: the number of epochs done when batches_done is 0)
    batches_done   mini-batches of that epoch already trained (non-zero after a stop signal mid-epoch)
    best_map50_95, best_epoch   the best mAP@0.5:0.95 of the EMA model so far and its 0-based epoch (-1: none yet)
    spec           the model's head spec (model/spec.py HeadSpec.to_dict)
    data           the .data file's path
    overrides      {'epochs', 'batch_size'}: what `--resume` passes to load_config to continue the same schedule
    config         every config field as a string, a record of the run
    date           when it was written, 'YYYY-mm-dd HH:MM:SS'
last.pt holds these too, to resume (best.pt leaves them out):
    optimizer, scaler   their state_dicts (SGD momentum; the AMP loss scale)
    schedule       {'optimizer_steps', 'world' (DDP processes), 'bias_lr_factor'}
    ema_updates    the EMA's update count (its decay ramps up with it)
    distill        the distillation adapters' state_dict (utils/train/distill.py), when training with a teacher
    rng            {'python', 'numpy', 'torch', and 'cuda' where there is CUDA}: the random states (`rng_states`)

Reading uses torch.load(weights_only=True): a checkpoint from elsewhere cannot run code on `--resume`. Numpy arrays
are the one kind of object let through besides tensors and plain values (numpy's random state holds one).
"""
from __future__ import annotations

import io
import pickle
import random
import re
from pathlib import Path

import numpy as np
import torch

from model.weights import NUMPY_ARRAY_GLOBALS
from utils.errors import CheckpointError
from utils.train.files import write_atomic


def save_atomic(checkpoint: dict, path) -> None:
    """torch.save `checkpoint` to `path` without ever leaving a partial file there (CheckpointError if it fails).
    Serialised in memory first: the write then knows the bytes it needs, and a full disk fails in a plain write."""
    buffer = io.BytesIO()
    torch.save(checkpoint, buffer)
    write_atomic(path, buffer.getbuffer())


def load_checkpoint(path, map_location='cpu') -> dict:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f'{path}: checkpoint not found')
    try:
        with torch.serialization.safe_globals(NUMPY_ARRAY_GLOBALS):
            checkpoint = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as error:   # what weights_only raises for anything it may not build
        found = re.search(r'GLOBAL ([\w.]+)', str(error))
        raise CheckpointError(f'{path}: holds objects other than tensors and arrays'
                              + (f' ({found[1]})' if found else '')
                              + ': loading it would run code, so it is refused') from None
    except Exception as error:   # torch raises several types for a truncated or foreign file
        raise CheckpointError(f'{path}: not a readable checkpoint ({type(error).__name__}: {error})') from None
    if not isinstance(checkpoint, dict) or 'model' not in checkpoint:
        raise CheckpointError(f'{path}: not a training checkpoint of this trainer (no "model" entry)')
    return checkpoint


def rng_states() -> dict:
    """The random states a resumed run must continue from, as plain values, tensors and one numpy array."""
    states = {'python': random.getstate(), 'numpy': np.random.get_state(legacy=False),
              'torch': torch.get_rng_state()}
    if torch.cuda.is_available():
        states['cuda'] = torch.cuda.get_rng_state_all()
    return states


def set_rng_states(states: dict) -> None:
    random.setstate(states['python'])
    np.random.set_state(states['numpy'])
    torch.set_rng_state(states['torch'])
    if 'cuda' in states and torch.cuda.is_available() and len(states['cuda']) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(states['cuda'])
