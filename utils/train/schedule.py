"""The optimizer's parameter groups, the learning-rate schedule and the seeded order of each epoch.

Learning rate, per optimizer step (Yolo-FastestV2's step schedule with YOLOv5's warmup):
    lr = learning_rate * 0.1 ** (number of `steps` epochs reached)
    warmup: the first max(warmup_epochs x steps per epoch, WARMUP_MIN_STEPS) optimizer steps (none if warmup_epochs
    is 0); weights and BN ramp linearly from 0, momentum from WARMUP_MOMENTUM up, biases down from
    WARMUP_BIAS_LR_FACTOR * lr when the head starts untrained (a high bias lr lets the objectness prior settle
    first) and up from 0 like the weights when starting from a trained model (--weights or pre_weights).
A minimum in steps, not epochs: on a small dataset 3 epochs are a handful of steps, and a full-lr step on
a trained model right away undoes it; from the released COCO weights, biases starting at 10x lr also cost
accuracy that a start from 0 keeps. Longer fine-tuning still loses mAP on coco128, the more the smaller the batch
(figures: docs/benchmarks.md, bench/finetune.py): the loss is a per-batch mean, so a smaller batch takes more
steps of the same size per epoch.
Weight decay applies to conv and linear weights only, not to BatchNorm weights or biases.
"""
from __future__ import annotations

import torch
from torch import nn

WARMUP_MOMENTUM = 0.8
WARMUP_BIAS_LR_FACTOR = 10.0  # YOLOv5: warmup_bias_lr 0.1 with lr0 0.01 (from-scratch heads only)
WARMUP_MIN_STEPS = 100        # YOLOv5's minimum; Yolo-FastestV2 burns in over 1000 iterations


def optimizer_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Three groups: conv/linear weights (decayed), BatchNorm weights and biases (not decayed)."""
    decayed, norm_weights, biases = [], [], []
    for module in model.modules():
        for name, p in module.named_parameters(recurse=False):
            if not p.requires_grad:
                continue
            if name == 'bias':
                biases.append(p)
            elif isinstance(module, nn.modules.batchnorm._BatchNorm):
                norm_weights.append(p)
            else:
                decayed.append(p)
    return [dict(params=decayed, weight_decay=weight_decay, name='weights'),
            dict(params=norm_weights, weight_decay=0.0, name='norm'),
            dict(params=biases, weight_decay=0.0, name='bias')]


def build_optimizer(model: nn.Module, cfg) -> torch.optim.Optimizer:
    """The .data's `optimizer` over `optimizer_groups`: Nesterov SGD, or AdamW with beta1 = momentum."""
    groups = optimizer_groups(model, cfg.weight_decay)
    # foreach: one call per op over all tensors of a group, which torch picks by itself only on CUDA; on the CPU
    # its per-tensor loop cost ~3 ms a step here (225 tensors of the demo's model) against ~2 ms, same results.
    if cfg.optimizer == 'adamw':
        return torch.optim.AdamW(groups, lr=cfg.learning_rate, betas=(cfg.momentum, 0.999), foreach=True)
    return torch.optim.SGD(groups, lr=cfg.learning_rate, momentum=cfg.momentum, nesterov=True, foreach=True)


def warmup_steps_for(cfg, steps_per_epoch: int) -> int:
    if cfg.warmup_epochs <= 0:
        return 0
    return max(round(cfg.warmup_epochs * steps_per_epoch), WARMUP_MIN_STEPS)


def set_learning_rate(optimizer, cfg, epoch: int, step: int, warmup_steps: int,
                      bias_lr_factor: float = WARMUP_BIAS_LR_FACTOR) -> float:
    """Apply the schedule for optimizer step `step` of epoch `epoch`; return the weights' lr.
    bias_lr_factor: biases start warmup at this multiple of learning_rate (0 when starting from trained weights)."""
    lr = cfg.learning_rate * 0.1 ** sum(epoch >= s for s in cfg.steps)
    for group in optimizer.param_groups:
        momentum = cfg.momentum
        group['lr'] = lr
        if step < warmup_steps:
            progress = step / warmup_steps
            start = cfg.learning_rate * bias_lr_factor if group['name'] == 'bias' else 0.0
            group['lr'] = start + (lr - start) * progress
            momentum = WARMUP_MOMENTUM + (cfg.momentum - WARMUP_MOMENTUM) * progress
        if 'betas' in group:   # AdamW: momentum is beta1
            group['betas'] = (momentum, group['betas'][1])
        else:
            group['momentum'] = momentum
    return optimizer.param_groups[0]['lr']


def epoch_indices(n: int, seed: int, epoch: int, rank: int, world: int) -> list[int]:
    """This process's share of a shuffled epoch, the same for a given (seed, epoch) in every run."""
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 100003 + epoch)).tolist()
    per_rank = -(-n // world)
    order += order[:per_rank * world - n]    # equal shares, so every process runs the same number of steps
    return order[rank::world]
