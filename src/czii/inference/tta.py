"""Test-time augmentation: named spatial transforms of [..., Z, Y, X] tensors and their inverses.

A transform name is one primitive or several joined by ``+`` and applied left to right:

- ``identity``
- ``flip_z``, ``flip_y``, ``flip_x``: reverse one axis
- ``rot90_xy_1``, ``rot90_xy_2``, ``rot90_xy_3``: ``torch.rot90(t, k, dims=(-2, -1))``,
  k quarter turns in the y–x plane, from the y axis towards the x axis

Every transform is a permutation of voxels, so ``invert_tta(apply_tta(t, n), n) == t``
exactly. A rotation swaps the y and x sides: a non-square tile stays valid for any model
whose sides only need to be multiples of a stride, so TTA is applied per tile
(transform the tile, predict, invert the prediction). The names and presets live in the
torch-free :mod:`czii.registry` (re-exported here).
"""

from __future__ import annotations

import torch

from czii.registry import TTA_PRESETS, TTA_PRIMITIVES, resolve_tta, tta_steps

_FLIP_DIM = {"flip_z": -3, "flip_y": -2, "flip_x": -1}
_ROT_K = {"rot90_xy_1": 1, "rot90_xy_2": 2, "rot90_xy_3": 3}


def _apply_step(t: torch.Tensor, step: str, inverse: bool) -> torch.Tensor:
    if step in _FLIP_DIM:
        return torch.flip(t, dims=(_FLIP_DIM[step],))
    if step in _ROT_K:
        k = _ROT_K[step]
        return torch.rot90(t, -k if inverse else k, dims=(-2, -1))
    return t


def apply_tta(t: torch.Tensor, name: str) -> torch.Tensor:
    """Transform the last three (z, y, x) axes of ``t`` by the named transform."""
    for step in tta_steps(name):
        t = _apply_step(t, step, inverse=False)
    return t


def invert_tta(t: torch.Tensor, name: str) -> torch.Tensor:
    """Undo :func:`apply_tta` ``name`` on the last three axes (steps reversed, each inverted)."""
    for step in reversed(tta_steps(name)):
        t = _apply_step(t, step, inverse=True)
    return t


__all__ = ["TTA_PRESETS", "TTA_PRIMITIVES", "apply_tta", "invert_tta", "resolve_tta"]
