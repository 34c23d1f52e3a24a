"""Where training patches come from: a seeded sampler over tomograms held in memory.

A draw picks a source by its sampling weight, a run of that source uniformly, then, with
probability ``positive_fraction``, a particle of that run (class-balanced: a class present in
the run uniformly, then one of its particles; otherwise any particle uniformly) whose
centre is moved off the patch centre by up to ``jitter_fraction`` × half the patch side per axis; otherwise a
uniformly random position. The patch start is clamped into the volume, so a sampled particle
always lies inside its patch. A draw depends only on the Generator it is given.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from czii.config import PatchConfig


@dataclass
class RunData:
    """One training run in memory: normalised input ``[C_in, Z, Y, X]`` and its particle centres."""

    source: str
    run: str
    volume: np.ndarray
    spacing_zyx_A: tuple[float, float, float]
    centers_zyx_vox: np.ndarray  # (N, 3) float64
    class_index: np.ndarray  # (N,) int64, index into the config's class list


@dataclass(frozen=True)
class PatchDraw:
    run_index: int
    start_zyx: tuple[int, int, int]
    particle: int  # index into the run's centres, -1 for a background draw


class PatchSampler:
    """Draws :class:`PatchDraw` s over ``runs`` (see the module docstring)."""

    def __init__(self, runs: Sequence[RunData], source_weights: dict[str, float], cfg: PatchConfig) -> None:
        if not runs:
            raise ValueError("PatchSampler needs at least one run")
        self.runs = list(runs)
        self.cfg = cfg
        self.size_zyx = np.asarray(cfg.size_zyx, dtype=np.int64)
        # the centre voxel sits at size // 2; moving the window by up to this keeps it inside
        self._max_jitter_zyx = np.floor(cfg.jitter_fraction * ((self.size_zyx + 1) // 2 - 1)).astype(np.int64)
        sources = sorted({r.source for r in self.runs})
        weights = np.array([source_weights[s] for s in sources], dtype=np.float64)
        self._sources = sources
        self._source_p = weights / weights.sum()
        self._runs_of = {s: [i for i, r in enumerate(self.runs) if r.source == s] for s in sources}

    def draw(self, rng: np.random.Generator) -> PatchDraw:
        source = self._sources[int(rng.choice(len(self._sources), p=self._source_p))]
        candidates = self._runs_of[source]
        run_index = candidates[int(rng.integers(len(candidates)))]
        run = self.runs[run_index]
        shape = np.asarray(run.volume.shape[1:], dtype=np.int64)
        particle = -1
        if len(run.class_index) and rng.random() < self.cfg.positive_fraction:
            if self.cfg.class_balanced:
                cls = rng.choice(np.unique(run.class_index))
                members = np.flatnonzero(run.class_index == cls)
                particle = int(members[rng.integers(len(members))])
            else:
                particle = int(rng.integers(len(run.class_index)))
            jitter = np.array([int(rng.integers(-j, j + 1)) for j in self._max_jitter_zyx])
            start = np.rint(run.centers_zyx_vox[particle]).astype(np.int64) - self.size_zyx // 2 + jitter
        else:
            start = np.array([int(rng.integers(max(n - s, 0) + 1)) for n, s in zip(shape, self.size_zyx)])
        start = np.clip(start, 0, np.maximum(shape - self.size_zyx, 0))
        return PatchDraw(run_index, tuple(int(v) for v in start), particle)


def crop(volume_czyx: np.ndarray, start_zyx: Sequence[int], size_zyx: Sequence[int]) -> np.ndarray:
    """``volume[:, start:start+size]`` as a new array, zero-filled where the window leaves the volume."""
    out = np.zeros((volume_czyx.shape[0], *(int(n) for n in size_zyx)), dtype=volume_czyx.dtype)
    src, dst = [slice(None)], [slice(None)]
    for s, n, dim in zip(start_zyx, size_zyx, volume_czyx.shape[1:]):
        lo, hi = max(int(s), 0), min(int(s) + int(n), dim)
        if hi <= lo:
            return out
        src.append(slice(lo, hi))
        dst.append(slice(lo - int(s), hi - int(s)))
    out[tuple(dst)] = volume_czyx[tuple(src)]
    return out
