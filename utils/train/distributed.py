"""The device and, under torchrun, the DDP process group: set-up, model wrapping, and the agreements between
processes that keep their collective operations in step."""
from __future__ import annotations

import os

import torch
import torch.distributed as dist
from torch import nn

from utils.errors import ConfigError


def pick_device(name: str, local_rank: int = 0) -> torch.device:
    """`--device`: '' (CUDA if available, else the CPU), 'cpu', 'cuda' (this process's GPU under torchrun), or a
    CUDA index '0', '1', ... ('cuda:1' too)."""
    index = name[len('cuda:'):] if name.startswith('cuda:') else name
    if name not in ('', 'cpu', 'cuda') and not index.isdigit():
        raise ConfigError(f'--device {name}: expected cpu, cuda or a CUDA index such as 0')
    if name == 'cpu' or (name == '' and not torch.cuda.is_available()):
        return torch.device('cpu')
    if not torch.cuda.is_available():
        raise ConfigError(f'--device {name}: CUDA is not available here (use --device cpu)')
    if index.isdigit():
        if int(index) >= torch.cuda.device_count():
            raise ConfigError(f'--device {name}: there are {torch.cuda.device_count()} CUDA devices here '
                              f'(indices from 0)')
        return torch.device(f'cuda:{index}')
    return torch.device(f'cuda:{local_rank}')


def init_processes(device_name: str) -> tuple[int, int, int]:
    """(rank, world size, local rank): (0, 1, 0) for a plain run; under torchrun, joins its process group."""
    world = int(os.environ.get('WORLD_SIZE', 1))
    if world == 1:
        return 0, 1, 0
    local_rank = int(os.environ['LOCAL_RANK'])
    cuda = device_name != 'cpu' and torch.cuda.is_available()
    if cuda:
        torch.cuda.set_device(local_rank)
    dist.init_process_group('nccl' if cuda else 'gloo')
    return dist.get_rank(), world, local_rank


def end_processes(world: int) -> None:
    if world > 1:
        dist.destroy_process_group()


def wrap_model(model: nn.Module, device: torch.device, world: int) -> nn.Module:
    """The module the training step calls: `model` itself, or under DDP its DistributedDataParallel wrapper."""
    if world == 1:
        return model
    device_ids = [device.index] if device.type == 'cuda' else None
    return nn.parallel.DistributedDataParallel(model, device_ids=device_ids)


def any_process(device: torch.device, world: int, *flags: bool) -> tuple[bool, ...]:
    """Each flag, true if it is true in any process. In DDP every process must skip (or stop at) the same batch,
    or the gradient all-reduce hangs."""
    if world == 1:
        return flags
    values = torch.tensor([float(f) for f in flags], device=device)
    dist.all_reduce(values, op=dist.ReduceOp.MAX)
    return tuple(bool(v) for v in values)


def barrier(world: int) -> None:
    if world > 1:
        dist.barrier()
