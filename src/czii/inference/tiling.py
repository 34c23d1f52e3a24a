"""Sliding-window inference: blended overlapping tiles over a [C_in, Z, Y, X] volume.

Contract: :func:`sliding_window` ``(predict_batch, volume_czyx, out_channels, ...)`` returns
float32 ``[out_channels, Z, Y, X]`` at the input resolution, where ``predict_batch`` maps a
float32 batch ``[B, C_in, tz, ty, tx]`` on ``device`` to ``[B, out_channels, tz, ty, tx]``.

Tiling (per axis, see :func:`plan_tiles`):
- a tile side larger than the volume shrinks to the smallest multiple of ``stride`` that
  covers it; where that still exceeds the volume the tile is padded at the far end by
  reflection (``np.pad(mode="reflect")``). Padding happens only on such an axis, where the
  single tile starts at 0, so it equals padding the whole volume and is cropped away.
- tile starts are spread evenly from 0 to ``size - tile`` (last tile aligned to the end),
  neighbours at most ``floor(tile * (1 - overlap))`` apart.

Blending: each tile's prediction is multiplied by a separable window ``w_z ⊗ w_y ⊗ w_x``
(:func:`blend_window`) and added in place into one accumulator. The tile grid is the
Cartesian product of per-axis starts, so the window sum at a voxel is
``n_z(z) · n_y(y) · n_x(x)`` and normalising is three in-place divisions: no [Z, Y, X]
weight buffer and no stored tiles. Memory: the accumulator (``4 · C · Z · Y · X`` bytes, on
``device``; the returned array shares it on CPU) plus one batch of tiles and the model's
activations.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from tqdm import tqdm

from czii.errors import ConfigError, DataError
from czii.registry import BLEND_MODES

WINDOW_FLOOR = 1e-3  # per-axis lower bound of a blend window: keeps every voxel's weight > 0


def blend_window(side: int, mode: str) -> np.ndarray:
    """1-D float64 blend weights over ``side`` voxels, peak 1, at least :data:`WINDOW_FLOOR`.

    ``gaussian``: sigma = side / 8 around the centre; ``linear``: a tent falling from the
    centre to ~1/side at the edges; ``constant``: ones.
    """
    offset = np.arange(side) - (side - 1) / 2
    if mode == "gaussian":
        window = np.exp(-0.5 * (offset / (side / 8)) ** 2)
    elif mode == "linear":
        window = 1.0 - np.abs(offset) / (side / 2)
    elif mode == "constant":
        window = np.ones(side)
    else:
        raise ConfigError(f"unknown blend mode {mode!r}; valid modes: {', '.join(BLEND_MODES)}")
    return np.maximum(window, WINDOW_FLOOR)


def axis_starts(size: int, tile: int, overlap: float) -> tuple[int, ...]:
    """Tile starts along one axis of ``size`` voxels: 0 … size − tile, evenly spread."""
    if size <= tile:
        return (0,)
    max_step = max(1, math.floor(tile * (1.0 - overlap)))
    n_tiles = math.ceil((size - tile) / max_step) + 1
    return tuple(int(round(s)) for s in np.linspace(0, size - tile, n_tiles))


@dataclass(frozen=True)
class TilePlan:
    """Where the tiles of a volume go: effective tile sides and per-axis starts (voxels)."""

    shape_zyx: tuple[int, int, int]
    tile_zyx: tuple[int, int, int]
    starts_zyx: tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]

    @property
    def n_tiles(self) -> int:
        return math.prod(len(s) for s in self.starts_zyx)

    def origins_zyx(self) -> list[tuple[int, int, int]]:
        """Every tile's first voxel, z-major."""
        return list(itertools.product(*self.starts_zyx))


def plan_tiles(
    shape_zyx: tuple[int, int, int],
    tile_zyx: tuple[int, int, int],
    overlap: float,
    stride: int = 1,
) -> TilePlan:
    """Tile a volume of ``shape_zyx``; tile sides must be positive multiples of ``stride``."""
    if len(tile_zyx) != 3 or any(int(t) != t or t < 1 or t % stride for t in tile_zyx):
        raise ConfigError(
            f"tile_zyx must be three positive multiples of the model stride {stride}, got {tuple(tile_zyx)}"
        )
    if not 0.0 <= overlap < 1.0:
        raise ConfigError(f"overlap must be in [0, 1), got {overlap}")
    if len(shape_zyx) != 3 or any(s < 1 for s in shape_zyx):
        raise DataError(f"volume shape must be three positive sides (z, y, x), got {tuple(shape_zyx)}")
    tile = tuple(min(int(t), math.ceil(s / stride) * stride) for s, t in zip(shape_zyx, tile_zyx))
    starts = tuple(axis_starts(s, t, overlap) for s, t in zip(shape_zyx, tile))
    return TilePlan(tuple(int(s) for s in shape_zyx), tile, starts)


def _read_tile(volume_czyx: np.ndarray, origin_zyx: tuple[int, int, int], tile_zyx: tuple[int, ...]) -> np.ndarray:
    block = volume_czyx[(slice(None), *(slice(o, o + t) for o, t in zip(origin_zyx, tile_zyx)))]
    pad = [(0, 0)] + [(0, t - n) for t, n in zip(tile_zyx, block.shape[1:])]
    if any(after for _, after in pad):
        block = np.pad(block, pad, mode="reflect")
    return block


def _window_sums(size: int, tile: int, starts: tuple[int, ...], window: np.ndarray) -> np.ndarray:
    total = np.zeros(size)
    for start in starts:
        n = min(tile, size - start)
        total[start : start + n] += window[:n]
    return total


def sliding_window(
    predict_batch: Callable[[torch.Tensor], torch.Tensor],
    volume_czyx: np.ndarray,
    out_channels: int,
    *,
    tile_zyx: tuple[int, int, int],
    overlap: float,
    blend: str,
    batch_size: int,
    stride: int,
    device: torch.device,
    progress: bool = False,
) -> np.ndarray:
    """Blend ``predict_batch`` over overlapping tiles of ``volume_czyx`` (see module docstring)."""
    if batch_size < 1:
        raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
    plan = plan_tiles(volume_czyx.shape[1:], tile_zyx, overlap, stride)
    windows = [blend_window(t, blend) for t in plan.tile_zyx]
    weight = torch.from_numpy(np.einsum("i,j,k->ijk", *windows).astype(np.float32)).to(device)
    acc = torch.zeros((out_channels, *plan.shape_zyx), dtype=torch.float32, device=device)
    origins = plan.origins_zyx()
    with tqdm(total=len(origins), unit="tile", desc="tiles", disable=None if progress else True) as bar:
        for first in range(0, len(origins), batch_size):
            batch_origins = origins[first : first + batch_size]
            tiles = np.stack([_read_tile(volume_czyx, o, plan.tile_zyx) for o in batch_origins])
            x = torch.from_numpy(tiles.astype(np.float32, copy=False)).to(device)
            probs = predict_batch(x)
            expected = (len(batch_origins), out_channels, *plan.tile_zyx)
            if tuple(probs.shape) != expected:
                raise ConfigError(f"prediction of a tile batch has shape {tuple(probs.shape)}, expected {expected}")
            for prob, origin in zip(probs, batch_origins):
                n_z, n_y, n_x = (min(t, s - o) for t, s, o in zip(plan.tile_zyx, plan.shape_zyx, origin))
                z, y, x0 = origin
                acc[:, z : z + n_z, y : y + n_y, x0 : x0 + n_x].addcmul_(
                    prob[:, :n_z, :n_y, :n_x], weight[:n_z, :n_y, :n_x]
                )
            bar.update(len(batch_origins))
    sums = [
        torch.from_numpy(_window_sums(s, t, st, w).astype(np.float32)).to(device)
        for s, t, st, w in zip(plan.shape_zyx, plan.tile_zyx, plan.starts_zyx, windows)
    ]
    acc /= sums[0][:, None, None]
    acc /= sums[1][:, None]
    acc /= sums[2]
    return acc.cpu().numpy()
