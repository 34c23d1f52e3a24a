"""Training targets rendered from particle centres, one channel per class.

Centres are continuous voxel coordinates (z, y, x) relative to the target's origin; each is
snapped to its nearest voxel, so that voxel holds the peak value 1 whatever the kind:

- ``gaussian``: ``exp(-d² / 2σ²)`` per axis with ``σ = sigma_factor · radius_A / spacing``,
  drawn out to 3σ;
- ``sphere``: 1 within ``sphere_factor · radius_A / spacing`` of the centre voxel;
- ``point``: 1 at the centre voxel only.

Overlapping particles of one class combine by maximum. For the softmax loss,
:func:`class_probabilities` turns these channels into a one-hot ``[C + 1, Z, Y, X]`` map with
background at index 0 (the label volume ``argmax + 1`` where any class reaches 0.5, else 0),
as floats so mixup can blend it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from czii.config import TargetsConfig
from czii.particles import get_particle


def class_radii_zyx_vox(classes: Sequence[str], spacing_zyx_A: Sequence[float]) -> np.ndarray:
    """(C, 3) particle radius of each class in voxels along z, y, x."""
    radii_A = np.array([get_particle(c).radius_A for c in classes], dtype=np.float64)
    return radii_A[:, None] / np.asarray(spacing_zyx_A, dtype=np.float64)[None, :]


@dataclass(frozen=True)
class TargetRenderer:
    """Renders ``[C, Z, Y, X]`` float32 targets for one voxel spacing (see the module docstring)."""

    kind: str
    radius_zyx_vox: np.ndarray  # (C, 3)
    sigma_factor: float
    sphere_factor: float

    @classmethod
    def from_config(
        cls, cfg: TargetsConfig, classes: Sequence[str], spacing_zyx_A: Sequence[float]
    ) -> "TargetRenderer":
        return cls(cfg.kind, class_radii_zyx_vox(classes, spacing_zyx_A), cfg.sigma_factor, cfg.sphere_factor)

    @property
    def n_classes(self) -> int:
        return len(self.radius_zyx_vox)

    def reach_zyx_vox(self) -> np.ndarray:
        """(C, 3) how far from its centre voxel a particle's target extends (voxels)."""
        if self.kind == "gaussian":
            return np.ceil(3 * self.sigma_factor * self.radius_zyx_vox)
        if self.kind == "sphere":
            return np.floor(self.sphere_factor * self.radius_zyx_vox)
        return np.zeros_like(self.radius_zyx_vox)

    def __call__(self, centers_zyx_vox: np.ndarray, class_index: np.ndarray, shape_zyx: Sequence[int]) -> np.ndarray:
        shape = tuple(int(s) for s in shape_zyx)
        target = np.zeros((self.n_classes, *shape), dtype=np.float32)
        centres = np.rint(np.asarray(centers_zyx_vox, dtype=np.float64).reshape(-1, 3)).astype(np.int64)
        reach = self.reach_zyx_vox().astype(np.int64)
        for centre, c in zip(centres, np.asarray(class_index, dtype=np.int64).reshape(-1)):
            lo = np.maximum(centre - reach[c], 0)
            hi = np.minimum(centre + reach[c] + 1, shape)
            if np.any(hi <= lo):
                continue
            axes = [np.arange(lo[a], hi[a]) - centre[a] for a in range(3)]
            blob = self._blob(axes, c)
            region = target[c, lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]]
            np.maximum(region, blob, out=region)
        return target

    def _blob(self, offsets_zyx: list[np.ndarray], c: int) -> np.ndarray:
        dz, dy, dx = np.meshgrid(*offsets_zyx, indexing="ij", sparse=True)
        if self.kind == "gaussian":
            sz, sy, sx = self.sigma_factor * self.radius_zyx_vox[c]
            return np.exp(-0.5 * ((dz / sz) ** 2 + (dy / sy) ** 2 + (dx / sx) ** 2)).astype(np.float32)
        if self.kind == "sphere":
            rz, ry, rx = np.maximum(self.sphere_factor * self.radius_zyx_vox[c], 1e-6)
            return ((dz / rz) ** 2 + (dy / ry) ** 2 + (dx / rx) ** 2 <= 1.0).astype(np.float32)
        return np.ones((len(offsets_zyx[0]), len(offsets_zyx[1]), len(offsets_zyx[2])), dtype=np.float32)


def class_probabilities(heat_czyx: np.ndarray) -> np.ndarray:
    """One-hot ``[C + 1, Z, Y, X]`` float32 labels (background first) from per-class channels."""
    label = np.where(heat_czyx.max(axis=0) >= 0.5, heat_czyx.argmax(axis=0) + 1, 0)
    n = heat_czyx.shape[0] + 1
    return (label[None] == np.arange(n).reshape(n, 1, 1, 1)).astype(np.float32)
