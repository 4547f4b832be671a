"""Checkpoints and the training record on disk: written whole or not at all (a kill or a full disk mid-write leaves
the previous file), refused when reading them would run code, and holding random states that resume exactly."""
import errno
import io
import os
import random
import re
import signal
import subprocess
import sys

import numpy as np
import pytest
import torch

import utils.train.files as files
from tests.conftest import REPO
from utils.errors import CheckpointError
from utils.train.checkpoint import load_checkpoint, rng_states, save_atomic, set_rng_states
from utils.train.results_log import append_results, drop_results_after

REAL_WRITE_ALL = files._write_all


def disk_full_after_half(match: str):
    """A stand-in for files._write_all: writes half of a file whose temporary name contains `match`, then fails as
    a full disk does; other files are written normally."""
    real = REAL_WRITE_ALL

    def write(handle, data):
        if match in os.readlink(f'/proc/self/fd/{handle}'):
            real(handle, bytes(data[:len(data) // 2]))
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real(handle, data)
    return write


needs_proc = pytest.mark.skipif(not os.path.isdir('/proc/self/fd'), reason='finds the file of a descriptor in /proc')


def test_atomic_save_replaces_whole_files_and_cleans_up_on_error(tmp_path):
    path = tmp_path / 'last.pt'
    save_atomic({'model': {'w': torch.ones(3)}, 'epoch': 1}, path)
    assert load_checkpoint(path)['epoch'] == 1

    class Unpicklable:
        def __reduce__(self):
            raise RuntimeError('cannot pickle (simulated)')

    with pytest.raises(RuntimeError, match='cannot pickle'):
        save_atomic({'model': {'w': torch.ones(3)}, 'epoch': 2, 'bad': Unpicklable()}, path)
    assert load_checkpoint(path)['epoch'] == 1
    assert [p.name for p in tmp_path.iterdir()] == ['last.pt']   # no temp file left behind


@needs_proc
def test_a_full_disk_mid_write_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / 'last.pt'
    save_atomic({'model': {'w': torch.zeros(1000)}, 'epoch': 1}, path)
    monkeypatch.setattr(files, '_write_all', disk_full_after_half('.last.pt.'))
    new = {'model': {'w': torch.ones(200000)}, 'epoch': 2}
    with pytest.raises(CheckpointError) as caught:
        save_atomic(new, path)
    serialised = io.BytesIO()
    torch.save(new, serialised)
    needed = f'{len(serialised.getvalue()) / 1000:.1f} kB needed'   # 800 kB of floats and the zip around them
    assert re.fullmatch(rf'{re.escape(str(path))}: cannot write it \(No space left on device\): [\d.]+ [kMGT]?B '
                        rf'free on {re.escape(str(tmp_path))}, {needed}; the previous last.pt is intact',
                        str(caught.value)), str(caught.value)
    assert load_checkpoint(path)['epoch'] == 1
    assert [p.name for p in tmp_path.iterdir()] == ['last.pt']


def test_killed_mid_write_leaves_the_previous_checkpoint_readable(tmp_path):
    path = tmp_path / 'last.pt'
    save_atomic({'model': {'w': torch.zeros(1000)}, 'epoch': 1}, path)
    # A writer that stalls half-way through writing the file, then gets SIGKILL.
    script = f"""
import sys, time, torch
sys.path.insert(0, {str(REPO)!r})
import utils.train.files as files
real = files._write_all
def stall(handle, data):
    real(handle, bytes(data[:len(data) // 2]))
    print('writing', flush=True)
    time.sleep(60)
files._write_all = stall
from utils.train.checkpoint import save_atomic
save_atomic({{'model': {{'w': torch.ones(200000)}}, 'epoch': 2}}, {str(path)!r})
"""
    writer = subprocess.Popen([sys.executable, '-c', script], stdout=subprocess.PIPE, text=True)
    assert writer.stdout.readline().strip() == 'writing'
    half_written = [p for p in tmp_path.iterdir() if p.name.endswith('.tmp')]
    assert len(half_written) == 1 and half_written[0].stat().st_size > 400000
    writer.send_signal(signal.SIGKILL)
    writer.wait()
    checkpoint = load_checkpoint(path)
    assert checkpoint['epoch'] == 1 and torch.equal(checkpoint['model']['w'], torch.zeros(1000))
    # a plain torch.save killed the same way leaves a truncated, unreadable file: the reason for the rename
    with open(tmp_path / 'plain.pt', 'wb') as f:
        torch.save({'model': {'w': torch.ones(200000)}}, f)
    (tmp_path / 'plain.pt').write_bytes((tmp_path / 'plain.pt').read_bytes()[:100000])
    with pytest.raises(CheckpointError, match='not a readable checkpoint'):
        load_checkpoint(tmp_path / 'plain.pt')


class RunsCode:
    """Unpickling this calls os.system: what a checkpoint from elsewhere could carry."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f'touch {self.marker}',)


def test_a_checkpoint_that_would_run_code_is_refused(tmp_path):
    marker = tmp_path / 'code-ran'
    path = tmp_path / 'last.pt'
    torch.save({'model': {'w': torch.ones(3)}, 'epoch': 1, 'payload': RunsCode(marker)}, path)
    with pytest.raises(CheckpointError) as caught:
        load_checkpoint(path)
    assert str(caught.value) == (f'{path}: holds objects other than tensors and arrays (posix.system): '
                                 'loading it would run code, so it is refused')
    assert not marker.exists()
    # the file does run code when read without the restriction: the refusal above is what kept it from running
    torch.load(path, weights_only=False)
    assert marker.exists()


def test_resume_refuses_a_checkpoint_that_would_run_code(tmp_path):
    """As the user meets it: `train.py --resume` prints one line and exits 1; the code never runs."""
    marker = tmp_path / 'code-ran'
    path = tmp_path / 'last.pt'
    torch.save({'model': {}, 'data': 'x.data', 'payload': RunsCode(marker)}, path)
    env = dict(os.environ, PYTHONPATH=str(REPO))
    done = subprocess.run([sys.executable, str(REPO / 'train.py'), '--resume', str(path), '--device', 'cpu'],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 1, done.stdout + done.stderr
    assert done.stderr.strip().splitlines()[-1] == (f'error: {path}: holds objects other than tensors and arrays '
                                                    '(posix.system): loading it would run code, so it is refused')
    assert not marker.exists()


def test_random_states_survive_a_checkpoint(tmp_path):
    """Saved, scrambled, loaded (weights_only) and restored: each generator draws what it drew right after saving."""
    save_atomic({'model': {}, 'rng': rng_states()}, tmp_path / 'last.pt')
    expected = (random.random(), np.random.rand(3).tolist(), torch.rand(3))
    random.seed(1), np.random.seed(1), torch.manual_seed(1)
    set_rng_states(load_checkpoint(tmp_path / 'last.pt')['rng'])
    again = (random.random(), np.random.rand(3).tolist(), torch.rand(3))
    assert again[:2] == expected[:2] and torch.equal(again[2], expected[2])


@needs_proc
def test_a_full_disk_keeps_the_previous_results_csv_and_png(tmp_path, monkeypatch):
    append_results(tmp_path, dict(epoch=1, lr=0.01, box=1.5, loss=2.0, map50=None, map50_95=None))
    csv_before, png_before = (tmp_path / 'results.csv').read_bytes(), (tmp_path / 'results.png').read_bytes()
    monkeypatch.setattr(files, '_write_all', disk_full_after_half('.results.csv.'))
    with pytest.raises(CheckpointError, match=f'^{tmp_path / "results.csv"}: cannot write it .*needed'):
        append_results(tmp_path, dict(epoch=2, lr=0.01, box=1.4, loss=1.9, map50=None, map50_95=None))
    assert (tmp_path / 'results.csv').read_bytes() == csv_before

    monkeypatch.setattr(files, '_write_all', disk_full_after_half('.results.png.'))
    with pytest.raises(CheckpointError, match=f'^{tmp_path / "results.png"}: cannot write it .*needed'):
        append_results(tmp_path, dict(epoch=2, lr=0.01, box=1.4, loss=1.9, map50=None, map50_95=None))
    assert (tmp_path / 'results.png').read_bytes() == png_before
    assert sorted(p.name for p in tmp_path.iterdir()) == ['results.csv', 'results.png']


def test_a_resumed_run_drops_the_rows_of_the_epochs_it_trains_again(tmp_path):
    for epoch in (1, 2, 3):
        append_results(tmp_path, dict(epoch=epoch, lr=0.01, box=1.0 / epoch, loss=2.0, map50=None, map50_95=None))
    drop_results_after(tmp_path, 2)
    lines = (tmp_path / 'results.csv').read_text().splitlines()
    assert lines == ['epoch,lr,box,loss,map50,map50_95,images_per_s,epoch_s', '1,0.01,1,2,,,,', '2,0.01,0.5,2,,,,']
