"""Runs dealt over torchrun ranks, per-rank results gathered back (one process: no communication).

Contract:
- :func:`shard_runs` ``(runs, rank, world_size)``: deterministic round-robin over the *sorted*
  run list, so every rank computes the same assignment without talking to the others.
- :func:`gather_outcomes` ``(work, ctx)``: runs ``work()`` on this rank and returns every rank's
  result in rank order, on every rank (``all_gather_object``: gloo on CPU, NCCL on CUDA). A rank
  whose ``work`` raised sends its exception instead (a :class:`czii.errors.CziiError` as it is,
  anything else as a RuntimeError naming it); a failing rank then re-raises its own (traceback
  intact) and every other rank raises that of the lowest failing rank, so no rank waits forever
  on a peer that died.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TypeVar

import torch.distributed as dist

from czii.errors import CziiError
from czii.distributed import DistContext

T = TypeVar("T")


def shard_runs(runs: Sequence[str], rank: int, world_size: int) -> list[str]:
    """The runs of ``rank``: every ``world_size``-th run of the sorted list, starting at ``rank``."""
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is not in a world of size {world_size}")
    return sorted(runs)[rank::world_size]


def _portable(exc: Exception, rank: int) -> Exception:
    """``exc`` itself when it is a user-facing error (picklable, message names the problem), else a RuntimeError."""
    if isinstance(exc, CziiError):
        return exc
    return RuntimeError(f"rank {rank} failed: {type(exc).__name__}: {exc}")


def gather_outcomes(work: Callable[[], T], ctx: DistContext) -> list[T]:
    """Every rank's ``work()`` result in rank order; raises on every rank when any rank failed."""
    if not ctx.enabled:
        return [work()]
    local_error: Exception | None = None
    try:
        outcome: tuple[T | None, Exception | None] = (work(), None)
    except Exception as exc:  # sent to the peers, then re-raised below
        local_error = exc
        outcome = (None, _portable(exc, ctx.rank))
    gathered: list = [None] * ctx.world_size
    dist.all_gather_object(gathered, outcome)
    if local_error is not None:
        raise local_error
    for _, error in gathered:
        if error is not None:
            raise error
    return [result for result, _ in gathered]
