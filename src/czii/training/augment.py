"""Training augmentations of ``[C, Z, Y, X]`` tensors, drawn from a numpy Generator.

- :class:`SpatialAug` (flips of z, y, x, then ``k`` quarter turns in the y–x plane with
  ``torch.rot90(t, k, dims=(-2, -1))``, as in :mod:`czii.inference.tta`) is applied to input and
  target alike and undone exactly by :meth:`SpatialAug.invert`. Quarter turns need square
  y–x patches.
- A small rotation about the z axis (:func:`rotate_z`) resamples the input by trilinear
  interpolation (cut from a crop enlarged by :func:`rotation_margin_zyx`, so no padding
  shows); the target is rendered afterwards from the centres moved by
  :func:`rotate_points_z`, so it stays exact for every target kind.
- Intensity scale, shift and Gaussian noise touch the input only.
- :func:`mixup` blends pairs of samples of a batch, inputs and targets with the same weight.

Every augmentation is off when its setting is false or 0.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import scipy.ndimage
import torch
import torch.nn.functional as F

from czii.config import AugmentConfig


@dataclass(frozen=True)
class SpatialAug:
    """Flip the z, y, x axes marked in ``flip_zyx``, then turn ``rot90_k`` quarter turns in y–x."""

    flip_zyx: tuple[bool, bool, bool] = (False, False, False)
    rot90_k: int = 0

    @classmethod
    def sample(cls, rng: np.random.Generator, cfg: AugmentConfig) -> "SpatialAug":
        flips = tuple(bool(f) for f in rng.integers(0, 2, size=3)) if cfg.flips else (False, False, False)
        k = int(rng.integers(0, 4)) if cfg.rot90_xy else 0
        return cls(flips, k)

    def _flip_dims(self) -> tuple[int, ...]:
        return tuple(d for d, f in zip((-3, -2, -1), self.flip_zyx) if f)

    def apply(self, t: torch.Tensor) -> torch.Tensor:
        dims = self._flip_dims()
        if dims:
            t = torch.flip(t, dims=dims)
        return torch.rot90(t, self.rot90_k, dims=(-2, -1)) if self.rot90_k % 4 else t

    def invert(self, t: torch.Tensor) -> torch.Tensor:
        if self.rot90_k % 4:
            t = torch.rot90(t, -self.rot90_k, dims=(-2, -1))
        dims = self._flip_dims()
        return torch.flip(t, dims=dims) if dims else t


def rotate_points_z(centers_zyx_vox: np.ndarray, angle_deg: float, shape_zyx) -> np.ndarray:
    """Where voxel centres land when :func:`rotate_z` turns a volume of ``shape_zyx`` by ``angle_deg``."""
    pts = np.asarray(centers_zyx_vox, dtype=np.float64).reshape(-1, 3)
    cy, cx = (shape_zyx[1] - 1) / 2, (shape_zyx[2] - 1) / 2
    a = math.radians(angle_deg)
    dy, dx = pts[:, 1] - cy, pts[:, 2] - cx
    out = pts.copy()
    out[:, 1] = cy + math.cos(a) * dy + math.sin(a) * dx
    out[:, 2] = cx - math.sin(a) * dy + math.cos(a) * dx
    return out


def rotate_z(volume_czyx: torch.Tensor, angle_deg: float) -> torch.Tensor:
    """Turn a ``[C, Z, Y, X]`` volume by ``angle_deg`` about the z axis through its centre (trilinear)."""
    _, z, y, x = volume_czyx.shape
    a = math.radians(angle_deg)
    hy, hx = (y - 1) / 2, (x - 1) / 2
    # output voxel offset (dy, dx) samples the input at the inverse rotation; grid coords are (x, y, z) in [-1, 1]
    theta = torch.zeros(1, 3, 4, dtype=torch.float64)
    theta[0, 0, 0] = math.cos(a)
    theta[0, 0, 1] = math.sin(a) * hy / hx if hx else 0.0
    theta[0, 1, 0] = -math.sin(a) * hx / hy if hy else 0.0
    theta[0, 1, 1] = math.cos(a)
    theta[0, 2, 2] = 1.0
    grid = F.affine_grid(theta.float(), [1, volume_czyx.shape[0], z, y, x], align_corners=True)
    return F.grid_sample(volume_czyx[None].float(), grid, mode="bilinear", padding_mode="zeros", align_corners=True)[0]


def rotation_margin_zyx(angle_deg: float, size_zyx) -> np.ndarray:
    """Voxels to add on each side (z, y, x) so a patch turned by ``angle_deg`` about z is covered by data."""
    if not angle_deg:
        return np.zeros(3, dtype=np.int64)
    a = math.radians(angle_deg)
    hy, hx = (size_zyx[1] - 1) / 2, (size_zyx[2] - 1) / 2
    c, s = abs(math.cos(a)), abs(math.sin(a))
    return np.array([0, math.ceil(hy * c + hx * s - hy), math.ceil(hy * s + hx * c - hx)], dtype=np.int64)


def sample_rotation_deg(rng: np.random.Generator, cfg: AugmentConfig) -> float:
    """A uniform angle in ±small_rotation_deg (0 when off)."""
    return float(rng.uniform(-cfg.small_rotation_deg, cfg.small_rotation_deg)) if cfg.small_rotation_deg > 0 else 0.0


def augment_intensity(x: torch.Tensor, rng: np.random.Generator, cfg: AugmentConfig) -> torch.Tensor:
    """Negate with probability invert_prob (the contrast sign varies between reconstructions), blur by a
    Gaussian of σ ~ U(0, blur_sigma) voxels keeping the standard deviation (a stronger low-pass), scale by
    U(1 ± intensity_scale), shift by U(± intensity_shift), add a linear y-x ramp of ± U(0,
    intensity_ramp) at the patch edges along a random direction (an ice thickness gradient), and lower
    the SNR: add N(0, σ²) noise with σ ~ U(0, noise_std) and divide by sqrt(1 + σ²), so the z-scored input keeps
    its unit variance, as a noisier tomogram has after :func:`czii.data.normalize.normalize_volume`
    (noise_std 1 reaches half the SNR). ``x`` is ``[..., Z, Y, X]``."""
    if cfg.invert_prob > 0 and rng.random() < cfg.invert_prob:
        x = -x
    if cfg.blur_sigma > 0:
        sigma = float(rng.uniform(0.0, cfg.blur_sigma))
        blurred = torch.from_numpy(scipy.ndimage.gaussian_filter(x.numpy(), (0,) * (x.ndim - 3) + (sigma,) * 3))
        x = blurred * (x.std() / blurred.std().clamp_min(1e-6))
    if cfg.intensity_scale > 0:
        x = x * float(rng.uniform(1 - cfg.intensity_scale, 1 + cfg.intensity_scale))
    if cfg.intensity_shift > 0:
        x = x + float(rng.uniform(-cfg.intensity_shift, cfg.intensity_shift))
    if cfg.intensity_ramp > 0:
        amplitude, angle = rng.uniform(0.0, cfg.intensity_ramp), rng.uniform(0.0, 2.0 * np.pi)
        y = torch.linspace(-1.0, 1.0, x.shape[-2])[:, None]
        xx = torch.linspace(-1.0, 1.0, x.shape[-1])[None, :]
        along = float(np.cos(angle)) * xx + float(np.sin(angle)) * y
        x = x + float(amplitude) * along / along.abs().max().clamp_min(1e-6)
    if cfg.noise_std > 0:
        sigma = float(rng.uniform(0.0, cfg.noise_std))
        noise = torch.from_numpy(rng.normal(0.0, sigma, size=tuple(x.shape)).astype(np.float32))
        x = (x + noise) / float(np.sqrt(1.0 + sigma**2))
    return x


def mixup(
    x: torch.Tensor, y: torch.Tensor, rng: np.random.Generator, prob: float, alpha: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """With probability ``prob`` blend each sample with a shuffled partner by λ ~ Beta(α, α)."""
    if prob <= 0 or x.shape[0] < 2 or rng.random() >= prob:
        return x, y
    lam = float(rng.beta(alpha, alpha))
    perm = torch.from_numpy(rng.permutation(x.shape[0]))
    return lam * x + (1 - lam) * x[perm], lam * y + (1 - lam) * y[perm]
