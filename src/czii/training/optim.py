"""The learning-rate schedule and the EMA of the weights: small pure functions the training loop steps.

- :func:`lr_factor`: linear warm-up over ``warmup_steps`` (step 0 gets ``1 / warmup_steps``), then
  cosine decay from 1 to ``min_factor`` at ``total_steps`` (or constant 1).
- :func:`ema_update`: ``ema ← decay · ema + (1 − decay) · model`` for parameters, buffers copied;
  :func:`ema_warmup_decay` is the decay at a step: ``min(ema_decay, (1 + step) / (10 + step))``, so
  the first steps follow the model closely.
- :func:`plan_epochs`: under ``train.max_minutes``, the number of epochs that fit the budget, re-planned
  after every epoch from the mean epoch time; the cosine schedule anneals over the planned epochs.
"""

from __future__ import annotations

import math

import torch


def lr_factor(step: int, total_steps: int, warmup_steps: int, schedule: str, min_factor: float) -> float:
    """Multiplier of the base learning rate at optimiser step ``step`` (0-based)."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule == "constant":
        return 1.0
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return min_factor + (1 - min_factor) * 0.5 * (1 + math.cos(math.pi * progress))


@torch.no_grad()
def copy_buffers(dst: torch.nn.Module, src: torch.nn.Module) -> None:
    for d, s in zip(dst.buffers(), src.buffers()):
        d.copy_(s)


@torch.no_grad()
def ema_update(ema: torch.nn.Module, model: torch.nn.Module, decay: float) -> None:
    """``ema ← decay · ema + (1 − decay) · model`` for parameters; buffers are copied."""
    for e, p in zip(ema.parameters(), model.parameters()):
        e.lerp_(p.detach(), 1.0 - decay)
    copy_buffers(ema, model)


def ema_warmup_decay(ema_decay: float, step: int) -> float:
    """The EMA decay used after optimiser step ``step`` (1-based): the configured one, lower early on."""
    return min(ema_decay, (1 + step) / (10 + step))


def plan_epochs(done: int, configured: int, seconds_left: float, seconds_per_epoch: float) -> int:
    """How many epochs a run under a wall-clock budget should have in all, after ``done`` of them: as many
    more as fit in ``seconds_left`` at ``seconds_per_epoch`` (validation included), never more than
    ``configured``, and never fewer than ``done`` (the run stops now)."""
    more = math.floor(seconds_left / seconds_per_epoch) if seconds_per_epoch > 0 else configured
    return max(done, min(configured, done + max(0, more)))
