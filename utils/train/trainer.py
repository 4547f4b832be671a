"""The training loop: SGD or AdamW, warmup and step decay, gradient accumulation, EMA, AMP, checkpoints, resume, DDP.

One run, in stages (YOLOX's Trainer is the model):
    Trainer.__init__   set-up: model, optimizer, EMA, loss, the checkpoint to resume from, DDP, data loader,
                       output folder (a new run draws labels.png and batch0.jpg there: utils/data/plots.py)
    train_one_epoch    for each mini-batch (batch_size / subdivisions images, split again across DDP processes):
                       forward (autocast on CUDA) -> loss / subdivisions -> backward; every `subdivisions`
                       mini-batches one SGD step, then the EMA follows the weights
    after_epoch        evaluate the EMA model every `eval_interval` epochs and after the last (then redraw
                       results.png), append a row to results.csv, write last.pt (and best.pt when mAP@0.5:0.95
                       improved)
    after_train        report the best epoch

Knowledge distillation from a teacher (`teacher_weights`): utils/train/distill.py.
The optimizer and its schedule: utils/train/schedule.py. results.csv and results.png: utils/train/results_log.py.
The device and DDP: utils/train/distributed.py. Checkpoints and what they hold: utils/train/checkpoint.py.

Crash safety: every output is written atomically (utils/train/files.py). SIGINT / SIGTERM finish the current
mini-batch, write last.pt with the position inside the epoch, and raise `TrainingInterrupted`
(utils/train/signals.py); `resume` starts again at that batch with the same schedule, data order and augmentations
(both are seeded by epoch). Whatever ends training, the data loader's worker processes end with it.
"""
from __future__ import annotations

import signal
import time
import warnings
from contextlib import nullcontext
from dataclasses import dataclass, fields
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from model.build import build_model
from model.summary import summarize
from model.weights import load_weights
from utils.data.dataset import load_split
from utils.data.plots import plot_training_data
from utils.data.train_data import EpochSampler, TrainDataset, collate
from utils.errors import CheckpointError, ConfigError
from utils.loss import build_loss
from utils.memory import keep_freed_memory
from utils.train.checkpoint import load_checkpoint, rng_states, save_atomic, set_rng_states
from utils.train.distill import Distiller, restore_adapters
from utils.train.distributed import any_process, barrier, end_processes, init_processes, pick_device, wrap_model
from utils.train.ema import ModelEMA
from utils.train.results_log import append_results, drop_results_after
from utils.train.schedule import (
    WARMUP_BIAS_LR_FACTOR,
    build_optimizer,
    epoch_indices,
    set_learning_rate,
    warmup_steps_for,
)
from utils.train.signals import StopRequest, ignore_stop_signals, stop_signals_held

MAX_BAD_STEPS = 5              # non-finite losses in a row before we give up
# Channels-last (NHWC) activations spare oneDNN's convolutions their layout reorders, a large share of a CPU
# training step in NCHW.
MEMORY_FORMAT = torch.channels_last
# What `resume` reads from last.pt (best.pt has no optimizer state, see utils/train/checkpoint.py)
RESUME_KEYS = ('model', 'optimizer', 'scaler', 'epoch', 'batches_done', 'schedule', 'best_map50_95', 'best_epoch',
               'rng')


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
    rank, world, local_rank = init_processes(options.device)
    try:
        return Trainer(cfg, options, rank, world, local_rank).train()
    finally:
        end_processes(world)


def config_record(cfg) -> dict:
    return {f.name: str(getattr(cfg, f.name)) for f in fields(cfg) if f.name != 'lines'}


class Trainer:
    """One training run, in the stages the module docstring lists."""

    def __init__(self, cfg, options: TrainOptions, rank: int, world: int, local_rank: int):
        """Everything the epochs need, in this order: a resumed run's random states are restored after the model's
        initialisation has drawn its numbers, as in the run that wrote them."""
        self.cfg, self.options, self.rank, self.world = cfg, options, rank, world
        self.main = rank == 0
        self.device = pick_device(options.device, local_rank)
        self.out_dir = Path(options.out_dir)
        self.mini_batch = self._mini_batch_size()
        self.stop = StopRequest(self.log)
        keep_freed_memory()   # before the first tensors: faster steps on the CPU (utils/memory.py)
        torch.manual_seed(options.seed + rank)
        if self.device.type == 'cuda':
            torch.backends.cudnn.benchmark = True
        checkpoint = load_checkpoint(options.resume) if options.resume else None
        if checkpoint is not None:
            missing = [key for key in RESUME_KEYS if key not in checkpoint]
            if missing:
                raise CheckpointError(f'{options.resume}: cannot resume from it, it has no {", ".join(missing)} '
                                      f'(best.pt holds no optimizer state: resume from last.pt)')

        # model, optimizer, EMA, loss
        self.model = self._build_model(load_pretrained=checkpoint is None)
        # A trained head's biases need no head start; a 10x bias lr is what wrecks it in the first steps.
        self.bias_lr_factor = 0.0 if (options.weights or cfg.pre_weights) else WARMUP_BIAS_LR_FACTOR
        # distillation: the teacher and the student's adapters to it (utils/train/distill.py), trained with the model
        self.distiller = Distiller(cfg, self.model, self.device, world, self.log) if cfg.teacher_weights else None
        trained = self.model if self.distiller is None else nn.ModuleList([self.model, self.distiller.adapters])
        self.optimizer = build_optimizer(trained, cfg)
        self.amp = self.device.type == 'cuda'
        self.scaler = torch.amp.GradScaler('cuda', enabled=self.amp)
        self.ema = ModelEMA(self.model) if (cfg.ema and self.main) else None
        self.loss_fn = build_loss(self.model, cfg)

        # where training starts: epoch 0, or where the checkpoint stopped
        self.start_epoch, self.skip_batches, self.optimizer_steps = 0, 0, 0
        self.best_score, self.best_epoch = -1.0, -1
        if checkpoint is not None:
            self._restore(checkpoint)
        self.net = wrap_model(self.model, self.device, self.world)

        # data: workers persist across epochs (no fork and cold prefetch each epoch); the sampler tells them the epoch
        self.dataset = TrainDataset(load_split(cfg, 'train'), cfg, augment=True, seed=options.seed)
        self.workers = cfg.workers if options.workers is None else options.workers
        self.sampler = EpochSampler()
        shard = len(epoch_indices(len(self.dataset), 0, 0, 0, self.world))
        self.loader = DataLoader(self.dataset, batch_size=self.mini_batch, sampler=self.sampler,
                                 num_workers=self.workers, persistent_workers=self.workers > 0,
                                 collate_fn=collate, pin_memory=self.amp, drop_last=shard >= 2 * self.mini_batch,
                                 worker_init_fn=ignore_stop_signals,
                                 generator=torch.Generator())   # its own: a loader never draws from the global RNG
        self.steps_per_epoch = max(1, -(-max(shard // self.mini_batch, 1) // cfg.subdivisions))
        self.warmup_steps = warmup_steps_for(cfg, self.steps_per_epoch)

        self._prepare_output_folder(resuming=checkpoint is not None)
        if self.main and checkpoint is None:   # a new run: its labels and first batch, before they cost a run
            first_batch = epoch_indices(len(self.dataset), options.seed, 0, 0, self.world)[:self.mini_batch]
            drawn = plot_training_data(cfg, self.dataset, first_batch, self.out_dir)
            self.log(f'training data drawn: {drawn["path"]}, {drawn["batch_path"]}')
        self._log_start()

    # ------------------------------------------------------------------------------------------------ set-up

    def _mini_batch_size(self) -> int:
        cfg = self.cfg
        if cfg.batch_size % (cfg.subdivisions * self.world):
            raise ConfigError(f'{cfg.where("batch_size")}: batch_size {cfg.batch_size} must be divisible by '
                              f'subdivisions {cfg.subdivisions} x {self.world} processes')
        return cfg.batch_size // (cfg.subdivisions * self.world)

    def _build_model(self, load_pretrained: bool) -> nn.Module:
        """The model on its device; with `--weights` loaded unless a checkpoint is about to replace them."""
        cfg, options = self.cfg, self.options
        model = build_model(cfg, log=self.log)
        if options.weights and load_pretrained:
            report = load_weights(model, options.weights, strict=False)
            self.log(f'weights {options.weights}: loaded {report["loaded"]}/{report["total"]} tensors'
                     + (f', skipped (shape differs): {len(report["wrong_shape"])}' if report['wrong_shape'] else ''))
        self._print_summary(model)
        if options.sync_bn and self.world > 1:
            if self.device.type == 'cuda':
                model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
            else:
                self.log('--sync-bn ignored: PyTorch synchronises BatchNorm only on CUDA')
        return model.to(self.device, memory_format=MEMORY_FORMAT)

    def _restore(self, checkpoint: dict) -> None:
        """Continue from `checkpoint` (last.pt, its keys checked by __init__)."""
        restore_adapters(self.distiller, checkpoint, self.options.resume)
        try:
            self.model.load_state_dict(checkpoint['model'])
            if self.ema is not None and 'ema' in checkpoint:
                self.ema.model.load_state_dict(checkpoint['ema'])
            self.optimizer.load_state_dict(checkpoint['optimizer'])
        except (RuntimeError, ValueError) as error:   # names or shapes differ: another model or number of classes
            lines = str(error).strip().splitlines()
            raise CheckpointError(f'{self.options.resume}: does not fit the model of {self.cfg.data_path} '
                                  f'({lines[min(1, len(lines) - 1)].strip()})') from None
        self.scaler.load_state_dict(checkpoint['scaler'])
        if self.ema is not None and 'ema' in checkpoint:
            self.ema.updates = checkpoint['ema_updates']
        self.start_epoch, self.skip_batches = checkpoint['epoch'], checkpoint['batches_done']
        self.optimizer_steps = checkpoint['schedule']['optimizer_steps']
        self.bias_lr_factor = checkpoint['schedule'].get('bias_lr_factor', self.bias_lr_factor)
        self.best_score, self.best_epoch = checkpoint['best_map50_95'], checkpoint['best_epoch']
        set_rng_states(checkpoint['rng'])
        self.log(f'resuming {self.options.resume} at epoch {self.start_epoch + 1}'
                 + (f' batch {self.skip_batches}' if self.skip_batches else '')
                 + f' (best mAP@0.5:0.95 so far {self.best_score:.4f})')

    def _prepare_output_folder(self, resuming: bool) -> None:
        if not self.main:
            return
        try:
            self.out_dir.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise CheckpointError(f'{self.out_dir}: cannot create the output folder ({error.strerror})') from None
        results = self.out_dir / 'results.csv'
        if resuming:   # epochs after the checkpoint's are trained again: their rows go
            drop_results_after(self.out_dir, self.start_epoch)
        elif results.exists():   # a new run: its record must not continue an older one's
            results.replace(self.out_dir / 'results.previous.csv')
            self.log(f'{results}: an earlier run\'s, moved to results.previous.csv')

    def _print_summary(self, model) -> None:
        if not self.main:
            return
        s = summarize(model, self.cfg.width, self.cfg.height)
        parts = ', '.join(f'{part} {macs / 1e6:.1f}M' for part, macs in s['macs_by_part'].items())
        self.log(f'{self.cfg.model} {self.cfg.width}x{self.cfg.height}: {s["params"]:,} parameters, '
                 f'{s["flops"] / 1e9:.3f} GFLOPs (MACs by part: {parts})')

    def _log_start(self) -> None:
        cfg = self.cfg
        cached = (f'decoded images cached in RAM ({self.dataset.cache_bytes() / 2**20:.0f} MB at most)'
                  if self.dataset.cache is not None else 'images read from disk each epoch')
        self.log(f'training {cfg.model} on {len(self.dataset)} images ({cached}), {cfg.epochs} epochs, '
                 f'batch {cfg.batch_size} ({self.world} x {cfg.subdivisions} x {self.mini_batch}), '
                 f'device {self.device}, output {self.out_dir}')
        if self.start_epoch >= cfg.epochs:
            self.log(f'{self.options.resume} already finished its {cfg.epochs} epochs (--epochs N to train longer)')

    def log(self, text: str) -> None:
        if self.main:
            tqdm.write(text)

    # ------------------------------------------------------------------------------------------------ the run

    def train(self) -> dict:
        try:
            with self.stop:   # SIGINT / SIGTERM: save and stop after the current mini-batch
                for epoch in range(self.start_epoch, self.cfg.epochs):
                    stats = self.train_one_epoch(epoch)
                    self.after_epoch(epoch, stats)
                    stop, = any_process(self.device, self.world, self.stop.requested)   # during evaluation, saving
                    if stop and epoch + 1 < self.cfg.epochs:
                        raise TrainingInterrupted(self.stop.signum or signal.SIGTERM, self.out_dir / 'last.pt')
        finally:
            self._end_workers()
        return self.after_train()

    def train_one_epoch(self, epoch: int) -> dict:
        """Train one epoch (a resumed one from the batch it stopped at); return its results.csv entries."""
        cfg = self.cfg
        first_batch, self.skip_batches = self.skip_batches, 0
        indices = epoch_indices(len(self.dataset), self.options.seed, epoch, self.rank, self.world)
        self.sampler.set_epoch(epoch, indices[first_batch * self.mini_batch:])
        with stop_signals_held():   # the first epoch forks the workers
            batches_iter = iter(self.loader)
        self.model.train()
        sums, batches, images_seen, bad_in_row, pending = {}, 0, 0, 0, 0
        lr = self._set_learning_rate(epoch)
        started = time.time()
        bar = tqdm(batches_iter, total=len(self.loader), desc=f'epoch {epoch + 1}/{cfg.epochs}',
                   disable=not self.main, leave=True, dynamic_ncols=True)
        for batch_index, (images, targets) in enumerate(bar, start=first_batch):
            images = images.to(self.device, non_blocking=True).contiguous(memory_format=MEMORY_FORMAT)
            targets = targets.to(self.device)
            with torch.autocast('cuda', enabled=True) if self.amp else nullcontext():
                outputs = self.net(images)
            loss, parts = self.loss_fn(outputs, targets)
            if self.distiller is not None:   # the teacher's lesson on the same batch
                lesson, lesson_parts = self.distiller(images, outputs)
                loss, parts = loss + lesson, parts | lesson_parts
            bad, stop = any_process(self.device, self.world, not torch.isfinite(loss).item(), self.stop.requested)
            if bad:
                bad_in_row += 1
                self.optimizer.zero_grad(set_to_none=True)
                pending = 0
                self._check_divergence(epoch, batch_index, loss.item(), bad_in_row)
            else:
                bad_in_row = 0
                self.scaler.scale(loss / cfg.subdivisions).backward()
                pending += 1
                if pending == cfg.subdivisions:
                    self._optimizer_step()
                    pending = 0
                    lr = self._set_learning_rate(epoch)
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
                self.save_checkpoint('last.pt', epoch, batch_index + 1)
                raise TrainingInterrupted(self.stop.signum or signal.SIGTERM, self.out_dir / 'last.pt')
        if pending:   # the epoch's last, incomplete accumulation window
            self._optimizer_step()
        bar.close()
        seconds = time.time() - started
        return dict(lr=lr, **{k: v / max(batches, 1) for k, v in sums.items()},
                    images_per_s=images_seen / seconds, epoch_s=seconds)

    def _set_learning_rate(self, epoch: int) -> float:
        return set_learning_rate(self.optimizer, self.cfg, epoch, self.optimizer_steps, self.warmup_steps,
                                 self.bias_lr_factor)

    def _check_divergence(self, epoch: int, batch_index: int, loss: float, bad_in_row: int) -> None:
        """A non-finite loss skips its step; MAX_BAD_STEPS in a row mean training diverged."""
        warnings.warn(f'epoch {epoch + 1} batch {batch_index}: loss is {loss}; step skipped ({bad_in_row} in a row)')
        if bad_in_row >= MAX_BAD_STEPS:
            raise ConfigError(f'{self.cfg.where("learning_rate")}: {bad_in_row} non-finite losses in a row at epoch '
                              f'{epoch + 1}: training diverged (lower learning_rate, or check the labels)')

    def _optimizer_step(self) -> None:
        # Clipping is the loss's call (`max_grad_norm`): the LeYOLO loss asks for it (its fine-tuning diverges
        # without), the anchor loss does not: there a from-scratch backbone has gradient norms in the tens of
        # thousands for its first steps (small weights before BatchNorm) and clipping froze learning in our runs;
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

    def after_epoch(self, epoch: int, stats: dict) -> None:
        """Evaluate when due, append the results row, write last.pt and (when mAP@0.5:0.95 improved) best.pt."""
        cfg = self.cfg
        last = epoch + 1 == cfg.epochs
        if self.main:
            map50 = map50_95 = None
            if (epoch + 1) % cfg.eval_interval == 0 or last:
                map50, map50_95 = self.evaluate(epoch)
            improved = map50_95 is not None and map50_95 > self.best_score
            if improved:
                self.best_score, self.best_epoch = map50_95, epoch
            append_results(self.out_dir, dict(epoch=epoch + 1, **stats, map50=map50, map50_95=map50_95),
                           draw=map50 is not None)
            self.save_checkpoint('last.pt', epoch + 1, 0)
            if improved or (last and not (self.out_dir / 'best.pt').exists()):
                self.save_checkpoint('best.pt', epoch + 1, 0, light=True)
        barrier(self.world)

    def evaluate(self, epoch: int) -> tuple[float, float]:
        """mAP@0.5 and mAP@0.5:0.95 of the EMA model (the plain one without EMA) on the val split."""
        from utils.evaluator import evaluate
        # Held: the evaluator's own workers would die of a stop signal; it takes effect once this epoch is saved.
        with stop_signals_held():
            result = evaluate(self.eval_model(), self.cfg)
        self.model.train()
        map50, map50_95 = float(result.map50), float(result.map50_95)
        self.log(f'epoch {epoch + 1}: mAP@0.5 {map50:.4f}  mAP@0.5:0.95 {map50_95:.4f}')
        return map50, map50_95

    def eval_model(self) -> nn.Module:
        model = self.ema.model if self.ema is not None else self.model
        return model.eval()

    def save_checkpoint(self, name: str, epoch: int, batches_done: int, light: bool = False) -> None:
        """Write out_dir/name (the keys: utils/train/checkpoint.py). epoch: the epoch to continue at; batches_done:
        mini-batches of it already trained; light: without what only resuming needs (best.pt)."""
        if not self.main:
            return
        cfg = self.cfg
        checkpoint = dict(model=self.model.state_dict(), epoch=epoch, batches_done=batches_done,
                          best_map50_95=self.best_score, best_epoch=self.best_epoch, spec=self.model.spec.to_dict(),
                          data=str(cfg.data_path), overrides=dict(epochs=cfg.epochs, batch_size=cfg.batch_size),
                          config=config_record(cfg), date=time.strftime('%Y-%m-%d %H:%M:%S'))
        if self.ema is not None:
            checkpoint['ema'] = self.ema.model.state_dict()
        if self.distiller is not None and not light:
            checkpoint['distill'] = self.distiller.adapters.state_dict()
        if not light:
            checkpoint.update(optimizer=self.optimizer.state_dict(), scaler=self.scaler.state_dict(),
                              schedule=dict(optimizer_steps=self.optimizer_steps, world=self.world,
                                            bias_lr_factor=self.bias_lr_factor),
                              ema_updates=self.ema.updates if self.ema is not None else 0, rng=rng_states())
        save_atomic(checkpoint, self.out_dir / name)

    def _end_workers(self) -> None:
        """End the loader's worker processes, however training ended. Dropping the loader is not enough after
        an exception: its traceback keeps the loader's iterator alive, and at exit multiprocessing sends the workers
        SIGTERM, which they ignore (utils/train/signals.py), then waits for them forever."""
        iterator = self.loader._iterator   # torch's: the persistent workers' iterator (None before the first epoch)
        if iterator is not None and hasattr(iterator, '_shutdown_workers'):
            iterator._shutdown_workers()

    def after_train(self) -> dict:
        self.log(f'done: best mAP@0.5:0.95 {self.best_score:.4f} at epoch {self.best_epoch + 1}; {self.out_dir}')
        return dict(best_map50_95=self.best_score, best_epoch=self.best_epoch + 1, epochs=self.cfg.epochs,
                    last=self.out_dir / 'last.pt', best=self.out_dir / 'best.pt')
