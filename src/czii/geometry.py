"""The one place where array voxels (z, y, x) meet pick coordinates (x, y, z in Å).

Convention (OME-NGFF, as in the CZII OME-Zarr metadata, which has a scale and no
translation): the *centre* of voxel index ``i`` along an axis lies at
``i * spacing_A``. A pick at ``x_A`` therefore falls in voxel ``round(x_A / spacing_A)``
and the voxel ``(z, y, x)`` maps back to ``(x * sx, y * sy, z * sz)`` Å.

``spacing_zyx_A`` is a scalar (isotropic) or a z, y, x triple; the real CZII spacing
is 10.012444 Å (the x axis differs from z and y in the 8th digit). Coarser pyramid
levels use the spacing of that level, so the same functions serve every level.
"""

from __future__ import annotations

from typing import Sequence, Union

import numpy as np

Spacing = Union[float, Sequence[float], np.ndarray]

# The real CZII tomograms at pyramid level 0 (OME-Zarr metadata of the competition data).
CZII_SHAPE_ZYX: tuple[int, int, int] = (184, 630, 630)
CZII_SPACING_ZYX_A: tuple[float, float, float] = (10.012444196428572, 10.012444196428572, 10.012444537618887)


def spacing_zyx(spacing_zyx_A: Spacing) -> np.ndarray:
    """The spacing as a validated z, y, x float array (a scalar is isotropic)."""
    s = np.asarray(spacing_zyx_A, dtype=np.float64)
    if s.ndim == 0:
        s = np.repeat(s, 3)
    if s.shape != (3,) or not np.all(np.isfinite(s)) or np.any(s <= 0):
        raise ValueError(f"voxel spacing must be a positive scalar or z,y,x triple, got {spacing_zyx_A!r}")
    return s


def _points(arr, what: str) -> np.ndarray:
    a = np.asarray(arr, dtype=np.float64)
    if a.ndim == 1 and a.shape == (3,):
        a = a[None, :]
    if a.ndim != 2 or a.shape[1] != 3:
        raise ValueError(f"{what} must have shape (N, 3), got {a.shape}")
    return a


def xyz_A_to_zyx_vox(xyz_A, spacing_zyx_A: Spacing) -> np.ndarray:
    """Pick coordinates (N, 3) x, y, z in Å → continuous voxel coordinates (N, 3) z, y, x."""
    xyz = _points(xyz_A, "xyz_A")
    return xyz[:, ::-1] / spacing_zyx(spacing_zyx_A)


def zyx_vox_to_xyz_A(zyx_vox, spacing_zyx_A: Spacing) -> np.ndarray:
    """Voxel coordinates (N, 3) z, y, x (integer or sub-voxel) → pick coordinates (N, 3) x, y, z in Å."""
    zyx = _points(zyx_vox, "zyx_vox")
    return (zyx * spacing_zyx(spacing_zyx_A))[:, ::-1]


def extent_xyz_A(shape_zyx: Sequence[int], spacing_zyx_A: Spacing) -> np.ndarray:
    """Largest valid pick coordinate per axis (x, y, z in Å) of a volume: the last voxel centre plus half a voxel."""
    shape = np.asarray(shape_zyx, dtype=np.float64)
    return ((shape - 0.5) * spacing_zyx(spacing_zyx_A))[::-1]


SPACING_TOLERANCE = 0.01  # relative: voxel sizes this close are the same (no resampling)
MAX_UPSAMPLING = 2.0  # data coarser than this factor times the model's voxels is refused


def same_spacing(a_zyx_A: Spacing, b_zyx_A: Spacing) -> bool:
    """True when two voxel sizes agree within :data:`SPACING_TOLERANCE` on every axis."""
    return bool(np.allclose(spacing_zyx(a_zyx_A), spacing_zyx(b_zyx_A), rtol=SPACING_TOLERANCE, atol=0))


def resample_zyx(volume_zyx: np.ndarray, source_zyx_A: Spacing, target_zyx_A: Spacing) -> np.ndarray:
    """``volume_zyx`` (voxels of ``source_zyx_A``) on a grid of ``target_zyx_A`` voxels, in the same frame.

    Output voxel ``j`` is the (trilinear) value at ``j * target`` Å, the position of input voxel
    ``j * target / source``, so picks found on the output grid keep their Å coordinates in the
    input's frame (module convention); the output covers the input's extent. Downsampling first
    smooths with a Gaussian of σ = (factor − 1) / 2 input voxels per axis (anti-aliasing).
    """
    from scipy import ndimage

    step = spacing_zyx(target_zyx_A) / spacing_zyx(source_zyx_A)  # input voxels per output voxel
    shape_in = np.asarray(volume_zyx.shape, dtype=np.float64)
    shape_out = tuple(int(n) for n in np.floor((shape_in - 1) / step + 1e-9) + 1)
    source = np.asarray(volume_zyx, dtype=np.float32)
    sigma = np.maximum(step - 1.0, 0.0) / 2.0
    if np.any(sigma > 0):
        source = ndimage.gaussian_filter(source, sigma=sigma, mode="nearest")
    return ndimage.affine_transform(source, step, output_shape=shape_out, order=1, mode="nearest").astype(
        np.float32, copy=False)
