"""Test-time augmentation: named spatial transforms of [..., Z, Y, X] tensors and their inverses.

A transform name is one primitive or several joined by ``+`` and applied left to right:

- ``identity``
- ``flip_z``, ``flip_y``, ``flip_x``: reverse one axis
- ``rot90_xy_1``, ``rot90_xy_2``, ``rot90_xy_3``: ``torch.rot90(t, k, dims=(-2, -1))``,
  k quarter turns in the y–x plane, from the y axis towards the x axis

Every transform is a permutation of voxels, so ``invert_tta(apply_tta(t, n), n) == t``
exactly. A rotation swaps the y and x sides: a non-square tile stays valid for any model
whose sides only need to be multiples of a stride, so TTA is applied per tile
(transform the tile, predict, invert the prediction).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from czii.errors import ConfigError

PRIMITIVES: tuple[str, ...] = (
    "identity",
    "flip_z",
    "flip_y",
    "flip_x",
    "rot90_xy_1",
    "rot90_xy_2",
    "rot90_xy_3",
)

_FLIP_DIM = {"flip_z": -3, "flip_y": -2, "flip_x": -1}
_ROT_K = {"rot90_xy_1": 1, "rot90_xy_2": 2, "rot90_xy_3": 3}

_D4_XY = ("identity", "rot90_xy_1", "rot90_xy_2", "rot90_xy_3",
          "flip_x", "flip_x+rot90_xy_1", "flip_x+rot90_xy_2", "flip_x+rot90_xy_3")

TTA_PRESETS: dict[str, tuple[str, ...]] = {
    "none": ("identity",),
    "flips": ("identity", "flip_z", "flip_y", "flip_x"),
    "flips_rot90": ("identity", "flip_z", "flip_y", "flip_x", "rot90_xy_1", "rot90_xy_2", "rot90_xy_3"),
    "full16": _D4_XY + tuple(f"flip_z+{name}" if name != "identity" else "flip_z" for name in _D4_XY),
}


def _steps(name: str) -> tuple[str, ...]:
    steps = tuple(name.split("+"))
    unknown = [s for s in steps if s not in PRIMITIVES]
    if not name or unknown:
        raise ConfigError(
            f"unknown TTA transform {name!r}; valid transforms: {', '.join(PRIMITIVES)} "
            f"(or several joined by '+', e.g. 'flip_z+rot90_xy_1'); "
            f"presets: {', '.join(TTA_PRESETS)}"
        )
    return steps


def _apply_step(t: torch.Tensor, step: str, inverse: bool) -> torch.Tensor:
    if step in _FLIP_DIM:
        return torch.flip(t, dims=(_FLIP_DIM[step],))
    if step in _ROT_K:
        k = _ROT_K[step]
        return torch.rot90(t, -k if inverse else k, dims=(-2, -1))
    return t


def resolve_tta(spec: str | Sequence[str]) -> tuple[str, ...]:
    """Transform names for ``spec``: a preset name, one transform name, or a list of names.

    Raises ConfigError listing the valid names when one is unknown or the list is empty.
    """
    names = TTA_PRESETS.get(spec, (spec,)) if isinstance(spec, str) else tuple(spec)
    if not names:
        raise ConfigError(f"empty TTA list; use ('identity',) or a preset: {', '.join(TTA_PRESETS)}")
    for name in names:
        _steps(name)
    return names


def apply_tta(t: torch.Tensor, name: str) -> torch.Tensor:
    """Transform the last three (z, y, x) axes of ``t`` by the named transform."""
    for step in _steps(name):
        t = _apply_step(t, step, inverse=False)
    return t


def invert_tta(t: torch.Tensor, name: str) -> torch.Tensor:
    """Undo :func:`apply_tta` ``name`` on the last three axes (steps reversed, each inverted)."""
    for step in reversed(_steps(name)):
        t = _apply_step(t, step, inverse=True)
    return t
