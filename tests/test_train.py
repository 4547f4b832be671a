"""The trainer end to end on a small copy of the generated sample dataset: it learns (mAP from pycocotools via
utils.evaluator rises above the untrained model's), resumes after SIGTERM to the same final state, stops at once with
one error on a full disk, survives and then refuses non-finite losses, refuses input it cannot train with, and runs
under torchrun with 2 CPU processes (gloo). The checkpoint files themselves: tests/test_checkpoint.py."""
import contextlib
import csv
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest
import torch

from tests.conftest import REPO, shared_path
from utils.config import load_config
from utils.errors import CheckpointError, ConfigError
from utils.train.checkpoint import load_checkpoint, save_atomic

torch.set_num_threads(1)   # the test machine has 2 cores shared by many processes
SIZE = 96


@pytest.fixture(scope='module')
def dataset(tmp_path_factory):
    """The project's generated sample dataset (data/make_sample.py), small: 96 train + 32 val images of 96x96."""
    from data.make_sample import generate
    folder = tmp_path_factory.mktemp('sample')
    generate(folder, seed=0, train=96, val=32, size=SIZE)
    return folder / 'sample.data'


# Small and fast for the tests, whatever the sample's .data says: batch 8 (12 steps per epoch), no worker processes.
FAST = dict(batch_size=8, workers=0, warmup_epochs=1)
FAST_ARGS = ['--batch-size', 8, '--workers', 0]


def run_train(*args, new_session=False):
    env = dict(os.environ, OMP_NUM_THREADS='1', PYTHONPATH=str(REPO))
    return subprocess.Popen([sys.executable, str(REPO / 'train.py'), *map(str, args)], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=new_session)


def results_epochs(out):
    with open(out / 'results.csv', newline='') as f:
        return [int(row['epoch']) for row in csv.DictReader(f)]


# ------------------------------------------------------------------------------------------------ data

def test_train_dataset_items_cache_and_mosaic_switch(dataset):
    from utils.data.dataset import load_split
    from utils.data.train_data import TrainDataset, collate
    cfg = load_config(dataset, epochs=10, close_mosaic=3, mosaic=1.0, **FAST)
    split = load_split(cfg, 'train', verbose=False)
    plain = TrainDataset(split, load_config(dataset, epochs=10, close_mosaic=3, mosaic=1.0, cache='none', **FAST))
    cached = TrainDataset(split, load_config(dataset, epochs=10, close_mosaic=3, mosaic=1.0, cache='ram', **FAST))
    assert plain.cache is None and len(cached.cache) == len(split.image_paths)
    for index in (0, 5):
        image, labels = plain[0, index]
        assert image.dtype == torch.uint8 and image.shape == (3, SIZE, SIZE)
        assert labels.shape[1] == 5 and ((labels[:, 1:] >= 0) & (labels[:, 1:] <= 1)).all()
        same_image, same_labels = cached[0, index]   # same seed, same epoch: the same augmentation
        assert torch.equal(image, same_image) and torch.equal(labels, same_labels)
    assert plain.mosaic_active(6)
    assert not plain.mosaic_active(7)             # the last 3 of 10 epochs: whole images only
    images, targets = collate([plain[7, 0], plain[7, 1], plain[7, 2]])
    assert images.shape == (3, 3, SIZE, SIZE) and images.dtype == torch.uint8
    assert images.is_contiguous(memory_format=torch.channels_last)   # the model's layout, no copy on the way
    assert targets.shape[1] == 6 and set(targets[:, 0].tolist()) <= {0.0, 1.0, 2.0}
    assert len(targets) == sum(len(plain[7, i][1]) for i in range(3))


def test_a_persistent_worker_serves_each_epoch_its_own_augmentation(dataset):
    """The trainer's loader keeps its workers across epochs; the epoch reaches them through the sampler. Every batch
    must equal the items made directly for its epoch (mosaic on at epoch 0, off at epoch 8)."""
    from torch.utils.data import DataLoader

    from utils.data.dataset import load_split
    from utils.data.train_data import EpochSampler, TrainDataset, collate
    cfg = load_config(dataset, epochs=10, close_mosaic=3, mosaic=1.0, **FAST)
    data = TrainDataset(load_split(cfg, 'train', verbose=False), cfg)
    sampler = EpochSampler()
    loader = DataLoader(data, batch_size=4, sampler=sampler, num_workers=1, persistent_workers=True,
                        collate_fn=collate)
    for epoch in (0, 8):
        sampler.set_epoch(epoch, [5, 1, 7, 3])
        (images, targets), = list(loader)
        expected_images, expected_targets = collate([data[epoch, i] for i in (5, 1, 7, 3)])
        assert torch.equal(images, expected_images) and torch.equal(targets, expected_targets), epoch


def test_cache_auto_keeps_images_in_ram_only_within_the_budget(dataset, monkeypatch):
    import utils.data.train_data as train_data
    from utils.data.dataset import load_split
    cfg = load_config(dataset, **FAST)
    assert cfg.cache == 'auto'
    split = load_split(cfg, 'train', verbose=False)
    small = train_data.TrainDataset(split, cfg)
    assert small.cache is not None and small.cache_bytes() == len(split.image_paths) * SIZE * SIZE * 3
    assert 0 < train_data.ram_cache_budget() <= 2 << 30
    monkeypatch.setattr(train_data, 'ram_cache_budget', lambda: small.cache_bytes() - 1)   # one byte short
    assert train_data.TrainDataset(split, cfg).cache is None


# ------------------------------------------------------------------------------------------------ training

def test_training_learns_the_dataset(dataset, tmp_path):
    """A short CPU run must beat the untrained model's mAP@0.5 by a clear margin (pycocotools via the evaluator)."""
    from model.build import build_model
    from utils.evaluator import evaluate
    from utils.train.trainer import TrainOptions, train
    # Started, as users do, from the ImageNet backbone; 4 shape classes at 96x96, 22 epochs of 12 steps. Short runs
    # vary with the seed and the float summation order (another CPU is another draw); across seeds lr 0.003 keeps
    # the result further above the bar than 0.001.
    backbone = shared_path('weights/yolo-fastestv2/shufflenetv2-0.5x-imagenet-backbone.pth')
    cfg = load_config(dataset, epochs=22, eval_interval=22, steps=(19,), close_mosaic=4, backbone_weights=backbone,
                      learning_rate=0.003, **FAST)
    torch.manual_seed(0)
    untrained = evaluate(build_model(cfg, log=lambda s: None).eval(), cfg, progress=False)
    (tmp_path / 'results.csv').write_text('epoch,lr\n1,0.5\n')   # an earlier run's record in the same folder
    report = train(cfg, TrainOptions(out_dir=tmp_path, device='cpu', workers=0))
    assert (tmp_path / 'results.previous.csv').read_text() == 'epoch,lr\n1,0.5\n'
    trained = evaluate(load_trained(cfg, tmp_path / 'best.pt'), cfg, progress=False)
    print(f'mAP@0.5 untrained {untrained.map50:.4f}, trained {trained.map50:.4f}')
    assert trained.map50 > max(0.05, 10 * untrained.map50)
    assert report['best_map50_95'] == pytest.approx(trained.map50_95, abs=1e-6)
    assert results_epochs(tmp_path) == list(range(1, 23))
    assert (tmp_path / 'results.png').stat().st_size > 1000


def load_trained(cfg, path):
    from model.build import build_model
    from model.weights import load_weights
    model = build_model(cfg, log=lambda s: None)
    load_weights(model, path)   # the models helper's loader: our checkpoint, EMA preferred
    return model.eval()


def test_a_stop_signal_while_workers_start_neither_kills_them_nor_gets_lost():
    """The race CI hit: SIGTERM to the process group just as a DataLoader worker was forked, before its init made it
    ignore the signal (torch's worker re-raises a SIGTERM not from its parent with the default action: death).
    The main process may get it at once (through another thread) or on release, but gets it once."""
    from utils.train.signals import ignore_stop_signals, stop_signals_held
    received = []
    previous = signal.signal(signal.SIGTERM, lambda signum, _frame: received.append(signum))
    try:
        with stop_signals_held():
            pid = os.fork()
            if pid == 0:   # a worker in the window: default action for SIGTERM, not yet initialised
                signal.signal(signal.SIGTERM, signal.SIG_DFL)
                os.kill(os.getpid(), signal.SIGTERM)
                ignore_stop_signals(0)
                os._exit(7)
            os.kill(os.getpid(), signal.SIGTERM)
        assert received == [signal.SIGTERM]
        _, status = os.waitpid(pid, 0)
        assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 7, f'the worker died: status {status}'
    finally:
        signal.signal(signal.SIGTERM, previous)


def test_sigterm_saves_and_resume_finishes_the_same_schedule(dataset, tmp_path):
    epochs = 3
    # With a data-loading worker, SIGTERM to the whole process group, as Slurm and `docker stop` send it: the
    # worker must not die before the main process has saved.
    first = run_train('--data', dataset, '--out', tmp_path, '--device', 'cpu', '--epochs', epochs,
                      '--batch-size', 8, '--workers', 1, new_session=True)
    deadline = time.time() + 300
    while not (tmp_path / 'last.pt').exists():   # written at the end of epoch 1
        assert first.poll() is None, first.stdout.read()
        assert time.time() < deadline, 'no last.pt after 300 s'
        time.sleep(0.2)
    os.killpg(first.pid, signal.SIGTERM)
    output = first.communicate(timeout=300)[0]
    assert first.returncode == 128 + signal.SIGTERM, output
    stopped = load_checkpoint(tmp_path / 'last.pt')
    assert 1 <= stopped['epoch'] < epochs   # stopped after epoch 1, before the end

    second = run_train('--resume', tmp_path / 'last.pt', '--device', 'cpu', '--workers', 0)
    output = second.communicate(timeout=600)[0]
    assert second.returncode == 0, output
    assert 'resuming' in output
    assert results_epochs(tmp_path) == [1, 2, 3]
    final = load_checkpoint(tmp_path / 'last.pt')
    assert final['epoch'] == epochs and final['batches_done'] == 0
    # the same number of optimizer steps as an uninterrupted run: 96 images / batch 8 = 12 per epoch
    assert final['schedule']['optimizer_steps'] == 12 * epochs
    # Exactly where an uninterrupted run ends: same data order, augmentations, schedule and optimizer state.
    straight = run_train('--data', dataset, '--out', tmp_path / 'straight', '--device', 'cpu', '--epochs', epochs,
                         *FAST_ARGS)
    output = straight.communicate(timeout=600)[0]
    assert straight.returncode == 0, output
    reference = load_checkpoint(tmp_path / 'straight' / 'last.pt')
    for name, tensor in reference['model'].items():
        assert torch.allclose(final['model'][name].float(), tensor.float(), atol=1e-5), name
    best = load_checkpoint(tmp_path / 'best.pt')
    assert 'ema' in best and best['best_map50_95'] >= 0
    load_trained(load_config(dataset), tmp_path / 'best.pt')


def test_nonfinite_losses_are_skipped_then_abort(dataset, tmp_path, monkeypatch):
    import utils.train.trainer as trainer
    real_build_loss = trainer.build_loss
    calls = {'n': 0}

    def poisoned(bad_calls):
        def build(model, cfg):
            loss_fn = real_build_loss(model, cfg)

            def loss(outputs, targets):
                calls['n'] += 1
                value, parts = loss_fn(outputs, targets)
                return (value * float('nan') if calls['n'] in bad_calls else value), parts
            return loss
        return build

    cfg = load_config(dataset, epochs=1, eval_interval=5, **FAST)
    monkeypatch.setattr(trainer, 'build_loss', poisoned({2, 3}))
    with pytest.warns(UserWarning, match='step skipped'):
        trainer.train(cfg, trainer.TrainOptions(out_dir=tmp_path / 'a', device='cpu', workers=0))
    assert load_checkpoint(tmp_path / 'a' / 'last.pt')['epoch'] == 1

    calls['n'] = 0
    monkeypatch.setattr(trainer, 'build_loss', poisoned(set(range(1, 100))))
    with pytest.warns(UserWarning), pytest.raises(ConfigError, match=rf'^{cfg.where("learning_rate")}: 5 '
                                                                      'non-finite losses in a row at epoch 1'):
        trainer.train(cfg, trainer.TrainOptions(out_dir=tmp_path / 'b', device='cpu', workers=0))


# A training run in its own process whose disk fills up at epoch 2's last.pt: epoch 1's is written whole, epoch 2's
# stops half-way (files._write_all, the one place bytes are written, fails as a full disk does). The CheckpointError
# is left uncaught, as a bug's exception would be: the process must still end, its data-loading worker with it.
FULL_DISK_RUN = """
import errno, os, sys
sys.path.insert(0, {repo!r})
import torch
torch.set_num_threads(1)
import utils.train.files as files
from utils.config import load_config
from utils.train.trainer import TrainOptions, train

real_write_all = files._write_all
checkpoints = []


def disk_full_at_the_second_last_pt(handle, data):
    if '.last.pt.' in os.readlink(f'/proc/self/fd/{{handle}}'):
        checkpoints.append(handle)
        if len(checkpoints) == 2:
            real_write_all(handle, bytes(data[:len(data) // 2]))
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    real_write_all(handle, data)


files._write_all = disk_full_at_the_second_last_pt
cfg = load_config({data!r}, epochs=3, eval_interval=1, batch_size=8, warmup_epochs=1)
train(cfg, TrainOptions(out_dir={out!r}, device='cpu', workers=1))
"""


def kill_group(pid):
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGKILL)


@pytest.mark.skipif(not os.path.isdir('/proc/self/fd'), reason='finds the file of a descriptor in /proc')
def test_a_full_disk_stops_training_at_once_and_keeps_the_previous_checkpoint(dataset, tmp_path):
    from utils.train.trainer import TrainOptions, train
    out = tmp_path / 'out'
    script = FULL_DISK_RUN.format(repo=str(REPO), data=str(dataset), out=str(out))
    run = subprocess.Popen([sys.executable, '-c', script], cwd=REPO, env=dict(os.environ, OMP_NUM_THREADS='1'),
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    watchdog = threading.Timer(300, kill_group, (run.pid,))   # whatever happens, the test ends
    watchdog.start()
    try:
        output = []
        for line in run.stdout:   # up to the traceback's last line, the error
            output.append(line)
            if line.startswith('utils.errors.CheckpointError: '):
                break
        try:
            run.wait(timeout=30)
        except subprocess.TimeoutExpired:
            pytest.fail('the process hung after the error:\n' + ''.join(output)[-3000:])
    finally:
        watchdog.cancel()
        kill_group(run.pid)   # a hung run and its worker
    error = output[-1].strip()
    assert run.returncode == 1, ''.join(output)[-3000:]
    assert re.fullmatch(rf'utils.errors.CheckpointError: {re.escape(str(out / "last.pt"))}: cannot write it '
                        rf'\(No space left on device\): [\d.]+ [kMGT]?B free on {re.escape(str(out))}, '
                        rf'[\d.]+ [kM]B needed; the previous last.pt is intact', error), error
    assert load_checkpoint(out / 'last.pt')['epoch'] == 1   # epoch 1's, whole
    assert not [p.name for p in out.iterdir() if p.suffix == '.tmp']
    assert results_epochs(out) == [1, 2]   # epoch 2's row was written before its checkpoint failed
    # With room again, the run resumes from epoch 1's last.pt and lists epoch 2 once.
    train(load_config(dataset, epochs=3, eval_interval=1, **FAST),
          TrainOptions(out_dir=out, device='cpu', workers=0, resume=out / 'last.pt'))
    assert results_epochs(out) == [1, 2, 3]
    assert load_checkpoint(out / 'last.pt')['epoch'] == 3


def test_what_the_trainer_cannot_use_is_one_clear_error(dataset, tmp_path):
    from model.build import build_model
    from utils.train.trainer import TrainOptions, train
    cfg = load_config(dataset, **FAST)
    uneven = load_config(dataset, batch_size=9, subdivisions=2, workers=0)
    with pytest.raises(ConfigError, match=rf'^{uneven.where("batch_size")}: batch_size 9 must be divisible by '
                                          r'subdivisions 2 x 1 processes$'):
        train(uneven, TrainOptions(out_dir=tmp_path, device='cpu'))
    with pytest.raises(ConfigError, match=r'^--device gpu: expected cpu, cuda or a CUDA index such as 0$'):
        train(cfg, TrainOptions(out_dir=tmp_path, device='gpu'))
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match=r'^--device cuda: CUDA is not available here \(use --device cpu\)$'):
            train(cfg, TrainOptions(out_dir=tmp_path, device='cuda'))
    # best.pt: the weights and the record, no optimizer state
    model_state = build_model(cfg, log=lambda s: None).state_dict()
    best = tmp_path / 'best.pt'
    save_atomic(dict(model=model_state, ema=model_state, epoch=1, batches_done=0, best_map50_95=0.1, best_epoch=0,
                     data=str(dataset)), best)
    with pytest.raises(CheckpointError, match=rf'^{best}: cannot resume from it, it has no optimizer, scaler, '
                                              r'schedule, rng \(best.pt holds no optimizer state: resume from '
                                              r'last.pt\)$'):
        train(cfg, TrainOptions(out_dir=tmp_path, device='cpu', workers=0, resume=best))
    # a last.pt of another model: a tensor of another shape
    name = next(iter(model_state))
    foreign = tmp_path / 'foreign.pt'
    save_atomic(dict(load_checkpoint(best), model={**model_state, name: torch.zeros(1)}, optimizer={}, scaler={},
                     schedule={}, rng={}), foreign)
    with pytest.raises(CheckpointError, match=rf'^{foreign}: does not fit the model of {dataset} \(.*{name}'):
        train(cfg, TrainOptions(out_dir=tmp_path, device='cpu', workers=0, resume=foreign))


def test_ddp_two_cpu_processes(dataset, tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS='1', PYTHONPATH=str(REPO))
    with socket.socket() as s:   # a free port for the rendezvous
        s.bind(('127.0.0.1', 0))
        port = s.getsockname()[1]
    torchrun = [sys.executable, '-m', 'torch.distributed.run', '--nproc_per_node', '2', '--master_port', str(port)]
    done = subprocess.run([*torchrun, str(REPO / 'train.py'), '--data', str(dataset), '--out', str(tmp_path),
                           '--device', 'cpu', '--epochs', '1', '--sync-bn', *map(str, FAST_ARGS)],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert '--sync-bn ignored' in done.stdout + done.stderr   # SyncBatchNorm is CUDA-only
    assert results_epochs(tmp_path) == [1]
    checkpoint = load_checkpoint(tmp_path / 'last.pt')
    assert checkpoint['epoch'] == 1 and checkpoint['schedule']['world'] == 2
    # 96 images, batch 8 split over 2 processes: 12 optimizer steps
    assert checkpoint['schedule']['optimizer_steps'] == 12
