"""The training loop: SGD with warmup and step decay, gradient accumulation, EMA, AMP, checkpoints, resume, DDP.

One epoch:  for each mini-batch (batch_size / subdivisions images, split again across DDP processes):
    forward (autocast on CUDA) -> loss / subdivisions -> backward; every `subdivisions` mini-batches one SGD step,
    then the EMA follows the weights. At the end of the epoch: evaluate the EMA model every `eval_interval` epochs
    and after the last, append a row to results.csv, redraw results.png, write last.pt (and best.pt when
    mAP@0.5:0.95 improved).

The optimizer and its schedule: utils/train/schedule.py. results.csv and results.png: utils/train/results_log.py.

Crash safety: checkpoints are written atomically (utils/train/checkpoint.py). SIGINT / SIGTERM finish the current
mini-batch, write last.pt with the position inside the epoch, and raise `TrainingInterrupted`; `resume` starts
again at that batch with the same schedule, data order and augmentations (both are seeded by epoch).
"""
from __future__ import annotations

import os
import signal
import time
import warnings
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, fields
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from model.build import build_model
from model.weights import load_weights
from utils.data.dataset import load_split
from utils.data.train_data import EpochSampler, TrainDataset, collate
from utils.loss import build_loss
from utils.train.checkpoint import load_checkpoint, rng_states, save_atomic, set_rng_states
from utils.train.ema import ModelEMA
from utils.train.results_log import append_results
from utils.train.schedule import (
    WARMUP_BIAS_LR_FACTOR,
    epoch_indices,
    optimizer_groups,
    set_learning_rate,
    warmup_steps_for,
)

MAX_BAD_STEPS = 5              # non-finite losses in a row before we give up
# Channels-last (NHWC) activations spare oneDNN's convolutions their layout reorders. Measured: a training step
# (forward, loss, backward, SGD; batch 32 at 352, 2 CPU threads) took 0.73 s against 1.21 s in NCHW.
MEMORY_FORMAT = torch.channels_last


class TrainingInterrupted(Exception):
    def __init__(self, signum: int, checkpoint: Path):
        super().__init__(f'stopped by signal {signal.Signals(signum).name}; state saved to {checkpoint}')
        self.signum = signum


@dataclass
class TrainOptions:
    out_dir: Path
    device: str = ''               # '' (CUDA if available), 'cpu', 'cuda', or a CUDA index '0', '1', ...
    workers: int | None = None     # None: cfg.workers
    weights: Path | None = None    # start from these weights (shapes that differ, e.g. classes, are skipped)
    resume: Path | None = None     # a last.pt to continue from
    sync_bn: bool = False          # DDP: synchronise BatchNorm statistics across processes
    seed: int = 0


def train(cfg, options: TrainOptions) -> dict:
    """Train; return {'best_map50_95', 'best_epoch', 'epochs', 'last', 'best'}. Raises TrainingInterrupted."""
    rank, world, local_rank = _setup_distributed(options.device)
    try:
        return _Run(cfg, options, rank, world, local_rank).run()
    finally:
        if world > 1:
            dist.destroy_process_group()


def pick_device(name: str, local_rank: int = 0) -> torch.device:
    if name == 'cpu' or (name == '' and not torch.cuda.is_available()):
        return torch.device('cpu')
    if not torch.cuda.is_available():
        raise RuntimeError(f'--device {name}: CUDA is not available here (use --device cpu)')
    if name.isdigit():
        return torch.device(f'cuda:{name}')
    return torch.device(f'cuda:{local_rank}')


def _setup_distributed(device_name: str) -> tuple[int, int, int]:
    world = int(os.environ.get('WORLD_SIZE', 1))
    if world == 1:
        return 0, 1, 0
    local_rank = int(os.environ['LOCAL_RANK'])
    cuda = device_name != 'cpu' and torch.cuda.is_available()
    if cuda:
        torch.cuda.set_device(local_rank)
    dist.init_process_group('nccl' if cuda else 'gloo')
    return dist.get_rank(), world, local_rank


STOP_SIGNALS = {signal.SIGINT, signal.SIGTERM}


def _ignore_stop_signals(_worker_id):
    # Ctrl-C reaches the whole process group, and so does SIGTERM from Slurm, `docker stop` or `kill -- -PGID`:
    # workers must keep serving batches while the main process saves (the DataLoader ends them afterwards).
    for s in STOP_SIGNALS:
        signal.signal(s, signal.SIG_IGN)   # also discards one that arrived while held (below)
    if hasattr(signal, 'pthread_sigmask'):
        signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)


@contextmanager
def _stop_signals_held():
    """Fork DataLoader workers inside this: they start with SIGINT / SIGTERM blocked (a child inherits the forking
    thread's mask), so one sent to the process group before `_ignore_stop_signals` runs in a new worker cannot kill
    it (seen in CI: torch's worker re-raises a SIGTERM from anyone but its parent with the default action). The
    main process still gets the signal: at once through another of its threads (OpenMP's), else on release."""
    if not hasattr(signal, 'pthread_sigmask'):   # Windows: no masks (and spawned workers, no fork window)
        yield
        return
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def config_record(cfg) -> dict:
    return {f.name: str(getattr(cfg, f.name)) for f in fields(cfg) if f.name != 'lines'}


class _Run:
    def __init__(self, cfg, options: TrainOptions, rank: int, world: int, local_rank: int):
        self.cfg, self.options, self.rank, self.world = cfg, options, rank, world
        self.main = rank == 0
        self.device = pick_device(options.device, local_rank)
        self.out_dir = Path(options.out_dir)
        self.stop_signal = None

    def log(self, text: str) -> None:
        if self.main:
            tqdm.write(text)

    def run(self) -> dict:
        cfg, options = self.cfg, self.options
        if cfg.batch_size % (cfg.subdivisions * self.world):
            raise ValueError(f'{cfg.where("batch_size")}: batch_size {cfg.batch_size} must be divisible by '
                             f'subdivisions {cfg.subdivisions} x {self.world} processes')
        self.mini_batch = cfg.batch_size // (cfg.subdivisions * self.world)
        torch.manual_seed(options.seed + self.rank)
        if self.device.type == 'cuda':
            torch.backends.cudnn.benchmark = True
        checkpoint = load_checkpoint(options.resume) if options.resume else None

        model = build_model(cfg, log=self.log)
        if options.weights and not checkpoint:
            report = load_weights(model, options.weights, strict=False)
            self.log(f'weights {options.weights}: loaded {report["loaded"]}/{report["total"]} tensors'
                     + (f', skipped (shape differs): {len(report["wrong_shape"])}' if report['wrong_shape'] else ''))
        # A trained head's biases need no head start; a 10x bias lr is what wrecks it in the first steps.
        self.bias_lr_factor = 0.0 if (options.weights or cfg.pre_weights) else WARMUP_BIAS_LR_FACTOR
        self._print_summary(model)
        if options.sync_bn and self.world > 1:
            if self.device.type == 'cuda':
                model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
            else:
                self.log('--sync-bn ignored: PyTorch synchronises BatchNorm only on CUDA')
        model.to(self.device, memory_format=MEMORY_FORMAT)
        self.model = model
        self.optimizer = torch.optim.SGD(optimizer_groups(model, cfg.weight_decay), lr=cfg.learning_rate,
                                         momentum=cfg.momentum, nesterov=True)
        self.amp = self.device.type == 'cuda'
        self.scaler = torch.amp.GradScaler('cuda', enabled=self.amp)
        self.ema = ModelEMA(model) if (cfg.ema and self.main) else None
        self.loss_fn = build_loss(model, cfg)
        self.start_epoch, self.skip_batches, self.optimizer_steps = 0, 0, 0
        self.best_score, self.best_epoch = -1.0, -1
        if checkpoint:
            self._restore(checkpoint)
        self.net = model
        if self.world > 1:
            device_ids = [self.device.index] if self.device.type == 'cuda' else None
            self.net = nn.parallel.DistributedDataParallel(model, device_ids=device_ids)

        split = load_split(cfg, 'train')
        self.dataset = TrainDataset(split, cfg, augment=True, seed=options.seed)
        self.workers = cfg.workers if options.workers is None else options.workers
        # Workers persist across epochs (no fork and cold prefetch each epoch); the sampler tells them the epoch.
        self.sampler = EpochSampler()
        shard = len(epoch_indices(len(self.dataset), 0, 0, 0, self.world))
        self.loader = DataLoader(self.dataset, batch_size=self.mini_batch, sampler=self.sampler,
                                 num_workers=self.workers, persistent_workers=self.workers > 0,
                                 collate_fn=collate, pin_memory=self.amp, drop_last=shard >= 2 * self.mini_batch,
                                 worker_init_fn=_ignore_stop_signals,
                                 generator=torch.Generator())   # its own: a loader never draws from the global RNG
        per_epoch = shard // self.mini_batch
        self.steps_per_epoch = max(1, -(-max(per_epoch, 1) // cfg.subdivisions))
        self.warmup_steps = warmup_steps_for(cfg, self.steps_per_epoch)
        if self.main:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            results = self.out_dir / 'results.csv'
            if not checkpoint and results.exists():   # a new run: its record must not continue an older one's
                results.replace(self.out_dir / 'results.previous.csv')
                self.log(f'{results}: an earlier run\'s, moved to results.previous.csv')
        cached = (f'decoded images cached in RAM ({self.dataset.cache_bytes() / 2**20:.0f} MB at most)'
                  if self.dataset.cache is not None else 'images read from disk each epoch')
        self.log(f'training {cfg.model} on {len(self.dataset)} images ({cached}), {cfg.epochs} epochs, '
                 f'batch {cfg.batch_size} ({self.world} x {cfg.subdivisions} x {self.mini_batch}), '
                 f'device {self.device}, output {self.out_dir}')

        if self.start_epoch >= cfg.epochs:
            self.log(f'{options.resume} already finished its {cfg.epochs} epochs (--epochs N to train longer)')
        previous = {s: signal.signal(s, self._on_signal) for s in STOP_SIGNALS}
        try:
            for epoch in range(self.start_epoch, cfg.epochs):
                self._train_epoch(epoch)
                _, stop = self._agree(False, self.stop_signal is not None)   # came during evaluation or saving
                if stop and epoch + 1 < cfg.epochs:
                    raise TrainingInterrupted(self.stop_signal or signal.SIGTERM, self.out_dir / 'last.pt')
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)
            del self.loader   # its persistent workers end with it (after a traceback, once that is dropped)
        self.log(f'done: best mAP@0.5:0.95 {self.best_score:.4f} at epoch {self.best_epoch + 1}; {self.out_dir}')
        return dict(best_map50_95=self.best_score, best_epoch=self.best_epoch + 1, epochs=cfg.epochs,
                    last=self.out_dir / 'last.pt', best=self.out_dir / 'best.pt')

    def _on_signal(self, signum, _frame):
        if self.stop_signal is not None:   # a second Ctrl-C: stop now, without saving
            raise KeyboardInterrupt
        self.stop_signal = signum
        self.log(f'\n{signal.Signals(signum).name}: saving last.pt after this batch (again to abort at once)')

    def _print_summary(self, model) -> None:
        if not self.main:
            return
        try:
            from model.summary import summarize
        except ImportError:   # the summary module is optional
            self.log(f'{self.cfg.model}: {sum(p.numel() for p in model.parameters()):,} parameters')
            return
        s = summarize(model, self.cfg.width, self.cfg.height)
        parts = ', '.join(f'{part} {macs / 1e6:.1f}M' for part, macs in s['macs_by_part'].items())
        self.log(f'{self.cfg.model} {self.cfg.width}x{self.cfg.height}: {s["params"]:,} parameters, '
                 f'{s["flops"] / 1e9:.3f} GFLOPs (MACs by part: {parts})')

    def _train_epoch(self, epoch: int) -> None:
        cfg = self.cfg
        indices = epoch_indices(len(self.dataset), self.options.seed, epoch, self.rank, self.world)
        skip = self.skip_batches * self.mini_batch
        self.skip_batches = 0
        self.sampler.set_epoch(epoch, indices[skip:])
        with _stop_signals_held():   # the first epoch forks the workers
            batches_iter = iter(self.loader)
        self.model.train()
        sums, batches, images_seen, bad_in_row, pending = {}, 0, 0, 0, 0
        lr = set_learning_rate(self.optimizer, cfg, epoch, self.optimizer_steps, self.warmup_steps,
                                       self.bias_lr_factor)
        started = time.time()
        bar = tqdm(batches_iter, total=len(self.loader), desc=f'epoch {epoch + 1}/{cfg.epochs}',
                   disable=not self.main, leave=True, dynamic_ncols=True)
        batch_index = skip // self.mini_batch - 1
        for batch_index, (images, targets) in enumerate(bar, start=skip // self.mini_batch):
            images = images.to(self.device, non_blocking=True).contiguous(memory_format=MEMORY_FORMAT)
            targets = targets.to(self.device)
            with torch.autocast('cuda', enabled=True) if self.amp else nullcontext():
                outputs = self.net(images)
            loss, parts = self.loss_fn(outputs, targets)
            bad, stop = self._agree(not torch.isfinite(loss).item(), self.stop_signal is not None)
            if bad:
                bad_in_row += 1
                self.optimizer.zero_grad(set_to_none=True)
                pending = 0
                warnings.warn(f'epoch {epoch + 1} batch {batch_index}: loss is {loss.item()}; step skipped '
                              f'({bad_in_row} in a row)')
                if bad_in_row >= MAX_BAD_STEPS:
                    raise RuntimeError(f'{bad_in_row} non-finite losses in a row at epoch {epoch + 1}: training '
                                       f'diverged (lower learning_rate in {self.cfg.data_path}, or check labels)')
            else:
                bad_in_row = 0
                self.scaler.scale(loss / cfg.subdivisions).backward()
                pending += 1
                if pending == cfg.subdivisions:
                    self._optimizer_step()
                    pending = 0
                    lr = set_learning_rate(self.optimizer, cfg, epoch, self.optimizer_steps, self.warmup_steps,
                                       self.bias_lr_factor)
                batches += 1
                images_seen += len(images) * self.world
                for key, value in parts.items():
                    if key != 'matches':
                        sums[key] = sums.get(key, 0.0) + value
                sums['loss'] = sums.get('loss', 0.0) + loss.item()
                rate = images_seen / max(time.time() - started, 1e-9)
                bar.set_postfix_str(' '.join(f'{k} {v / batches:.3f}' for k, v in sums.items())
                                    + f' lr {lr:.2g} {rate:.1f} img/s')
            if stop:
                if pending:
                    self._optimizer_step()
                self._save('last.pt', epoch, batch_index + 1)
                raise TrainingInterrupted(self.stop_signal or signal.SIGTERM, self.out_dir / 'last.pt')
        if pending:   # the epoch's last, incomplete accumulation window
            self._optimizer_step()
        bar.close()
        elapsed = time.time() - started
        self._end_epoch(epoch, {k: v / max(batches, 1) for k, v in sums.items()}, lr, images_seen / elapsed, elapsed)

    def _agree(self, bad: bool, stop: bool) -> tuple[bool, bool]:
        """In DDP every process must skip (or stop at) the same batch, or the gradient all-reduce hangs."""
        if self.world == 1:
            return bad, stop
        flags = torch.tensor([float(bad), float(stop)], device=self.device)
        dist.all_reduce(flags, op=dist.ReduceOp.MAX)
        return bool(flags[0]), bool(flags[1])

    def _optimizer_step(self) -> None:
        # Clipping is the loss's call (`max_grad_norm`): the LeYOLO loss asks for it (its fine-tuning diverges
        # without), the anchor loss does not: there a from-scratch backbone has gradient norms in the tens of
        # thousands for its first steps (small weights before BatchNorm) and clipping froze learning (measured);
        # Yolo-FastestV2 does not clip either. The non-finite check in the loop covers true blow-ups.
        max_norm = getattr(self.loss_fn, 'max_grad_norm', None)
        if max_norm:
            self.scaler.unscale_(self.optimizer)
            nn.utils.clip_grad_norm_(self.model.parameters(), max_norm)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.optimizer_steps += 1
        if self.ema is not None:
            self.ema.update(self.model)

    def _end_epoch(self, epoch: int, means: dict, lr: float, images_per_s: float, seconds: float) -> None:
        cfg = self.cfg
        last = epoch + 1 == cfg.epochs
        map50 = map50_95 = None
        if self.main and ((epoch + 1) % cfg.eval_interval == 0 or last):
            from utils.evaluator import evaluate
            # Held: the evaluator's own workers would die of a stop signal; it takes effect once this epoch is saved.
            with _stop_signals_held():
                result = evaluate(self.eval_model(), cfg)
            map50, map50_95 = float(result.map50), float(result.map50_95)
            self.log(f'epoch {epoch + 1}: mAP@0.5 {map50:.4f}  mAP@0.5:0.95 {map50_95:.4f}')
            self.model.train()
        if self.main:
            improved = map50_95 is not None and map50_95 > self.best_score
            if improved:
                self.best_score, self.best_epoch = map50_95, epoch
            append_results(self.out_dir, dict(epoch=epoch + 1, lr=lr, **means, map50=map50, map50_95=map50_95,
                                              images_per_s=images_per_s, epoch_s=seconds))
            self._save('last.pt', epoch + 1, 0)
            if improved or (last and not (self.out_dir / 'best.pt').exists()):
                self._save('best.pt', epoch + 1, 0, light=True)
        if self.world > 1:
            dist.barrier()

    def eval_model(self) -> nn.Module:
        model = self.ema.model if self.ema is not None else self.model
        return model.eval()

    def _save(self, name: str, epoch: int, batches_done: int, light: bool = False) -> None:
        """epoch: the epoch to continue at; batches_done: mini-batches of it already trained."""
        if not self.main:
            return
        checkpoint = dict(model=self.model.state_dict(),
                          ema=self.ema.model.state_dict() if self.ema is not None else None,
                          epoch=epoch, batches_done=batches_done, best_map50_95=self.best_score,
                          best_epoch=self.best_epoch, spec=self.model.spec.to_dict(),
                          data=str(self.cfg.data_path), overrides=dict(epochs=self.cfg.epochs,
                                                                      batch_size=self.cfg.batch_size),
                          config=config_record(self.cfg), date=time.strftime('%Y-%m-%d %H:%M:%S'))
        if checkpoint['ema'] is None:
            del checkpoint['ema']
        if not light:
            checkpoint.update(optimizer=self.optimizer.state_dict(), scaler=self.scaler.state_dict(),
                              schedule=dict(optimizer_steps=self.optimizer_steps, world=self.world,
                                            bias_lr_factor=self.bias_lr_factor),
                              ema_updates=self.ema.updates if self.ema is not None else 0, rng=rng_states())
        save_atomic(checkpoint, self.out_dir / name)

    def _restore(self, checkpoint: dict) -> None:
        if 'optimizer' not in checkpoint:
            raise ValueError(f'{self.options.resume}: has no optimizer state (best.pt?); resume from last.pt')
        self.model.load_state_dict(checkpoint['model'])
        self.optimizer.load_state_dict(checkpoint['optimizer'])
        self.scaler.load_state_dict(checkpoint['scaler'])
        if self.ema is not None and 'ema' in checkpoint:
            self.ema.model.load_state_dict(checkpoint['ema'])
            self.ema.updates = checkpoint['ema_updates']
        self.start_epoch, self.skip_batches = checkpoint['epoch'], checkpoint['batches_done']
        self.optimizer_steps = checkpoint['schedule']['optimizer_steps']
        self.bias_lr_factor = checkpoint['schedule'].get('bias_lr_factor', self.bias_lr_factor)
        self.best_score, self.best_epoch = checkpoint['best_map50_95'], checkpoint['best_epoch']
        set_rng_states(checkpoint['rng'])
        self.log(f'resuming {self.options.resume} at epoch {self.start_epoch + 1}'
                 + (f' batch {self.skip_batches}' if self.skip_batches else '')
                 + f' (best mAP@0.5:0.95 so far {self.best_score:.4f})')
