"""Process-group plumbing for ``torchrun`` training and inference (a single process needs none of it).

Under ``torchrun`` (``WORLD_SIZE`` > 1 in the environment) :func:`init_distributed` joins the
process group: NCCL with one GPU per local rank for CUDA, gloo for CPU. Rank 0 is the only
writer. Batch-norm running statistics are local to a rank between synchronisations;
:func:`average_buffers` makes them equal (their mean) so every rank holds the same state.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from czii.errors import ConfigError

# validation runs on rank 0 while the others wait at a barrier: allow it time
_TIMEOUT = datetime.timedelta(hours=2)


@dataclass(frozen=True)
class DistContext:
    rank: int
    world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def resolve_device(device: str) -> torch.device:
    """``cpu``, ``cuda`` or ``cuda:N``; ConfigError when CUDA is asked for but absent."""
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"--device {device}: CUDA is not available on this machine; use --device cpu")
    if dev.type not in ("cpu", "cuda"):
        raise ConfigError(f"--device {device}: expected cpu or cuda")
    return dev


def launched_rank() -> int:
    """This process's rank as torchrun launched it (0 outside torchrun), before any process group exists."""
    return int(os.environ.get("RANK", "0")) if int(os.environ.get("WORLD_SIZE", "1")) > 1 else 0


def init_distributed(device: str) -> DistContext:
    """Join the torchrun process group when there is one; otherwise a single-process context."""
    dev = resolve_device(device)
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size == 1:
        return DistContext(0, 1, dev)
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if dev.type == "cuda":
        dev = torch.device("cuda", local_rank)
        torch.cuda.set_device(dev)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo", timeout=_TIMEOUT)
    return DistContext(dist.get_rank(), dist.get_world_size(), dev)


def barrier(ctx: DistContext) -> None:
    if ctx.enabled:
        dist.barrier()


def mean_across_ranks(value: float, ctx: DistContext) -> float:
    if not ctx.enabled:
        return value
    t = torch.tensor([value], dtype=torch.float64, device=ctx.device)
    dist.all_reduce(t)
    return float(t.item()) / ctx.world_size


def average_buffers(module: torch.nn.Module, ctx: DistContext) -> None:
    """Replace every floating-point buffer by its mean over ranks."""
    if not ctx.enabled:
        return
    for buf in module.buffers():
        if buf.is_floating_point():
            dist.all_reduce(buf)
            buf.div_(ctx.world_size)


def shutdown(ctx: DistContext) -> None:
    if ctx.enabled and dist.is_initialized():
        dist.destroy_process_group()
