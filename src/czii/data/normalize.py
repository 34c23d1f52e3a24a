"""Per-tomogram intensity normalisation, identical in training and inference.

Raw intensities differ in scale between sources (real CZII tomograms are ~1e-5, simulated
ones are not), so every tomogram is mapped on its own: clip to its ``[low, high]``
percentiles, then subtract the mean and divide by the standard deviation of the clipped
values (a robust z-score). The result does not depend on the raw scale or offset: for
``a > 0``, ``normalize_volume(a * v + b) == normalize_volume(v)`` up to float rounding.
Statistics come from every second voxel along each axis (an eighth of the voxels), which
keeps a 184×630×630 tomogram to about a second on one core.

:func:`load_run_input` builds a model's input from a run: one normalised channel per
tomogram type, stacked; training (:func:`czii.training.data.load_input`) and inference
(:mod:`czii.inference.pipeline`) both use it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

import numpy as np

from czii.errors import DataError

if TYPE_CHECKING:
    from czii.data.dataset import Dataset

DEFAULT_CLIP_PERCENTILES: tuple[float, float] = (0.5, 99.5)


def normalize_volume(data: np.ndarray, clip_percentiles: Sequence[float] = DEFAULT_CLIP_PERCENTILES) -> np.ndarray:
    """Robust z-score of a z, y, x volume as float32 (a constant volume becomes zeros)."""
    volume = np.asarray(data, dtype=np.float32)
    if volume.ndim != 3:
        raise ValueError(f"expected a 3-D z,y,x volume, got shape {volume.shape}")
    sample = volume[::2, ::2, ::2].astype(np.float64)
    low, high = np.percentile(sample, [float(clip_percentiles[0]), float(clip_percentiles[1])])
    clipped_sample = np.clip(sample, low, high)
    mean = clipped_sample.mean()
    std = clipped_sample.std()
    out = np.clip(volume, np.float32(low), np.float32(high))
    out -= np.float32(mean)
    if std > 0:
        out *= np.float32(1.0 / std)
    return out


def load_run_input(
    dataset: Dataset,
    run: str,
    input_channels: Sequence[str],
    *,
    level: int = 0,
    clip_percentiles: Sequence[float] = DEFAULT_CLIP_PERCENTILES,
    nan_policy: str = "error",
) -> tuple[np.ndarray, tuple[float, float, float]]:
    """Normalised float32 ``[C_in, Z, Y, X]`` model input of ``run`` (one channel per tomogram type, in the
    order of ``input_channels``) and its spacing; DataError when the channels differ in shape or spacing.
    ``nan_policy`` (``data.nan_policy``): ``error`` or ``repair`` non-finite voxels (:meth:`Dataset.tomogram`)."""
    channels: list[np.ndarray] = []
    spacing_zyx_A: tuple[float, float, float] | None = None
    for tomo_type in input_channels:
        vol = dataset.tomogram(run, tomo_type=tomo_type, level=level, nan_policy=nan_policy)
        aligned = not channels or (
            vol.data.shape == channels[0].shape and np.allclose(vol.spacing_zyx_A, spacing_zyx_A, rtol=1e-4)
        )
        if not aligned:
            raise DataError(
                f"run {run!r}: tomogram {tomo_type!r} has shape {vol.data.shape} at {vol.spacing_zyx_A} Å, but "
                f"{input_channels[0]!r} has {channels[0].shape} at {spacing_zyx_A} Å; input channels must align"
            )
        channels.append(normalize_volume(vol.data, clip_percentiles))
        spacing_zyx_A = vol.spacing_zyx_A
    return np.stack(channels), spacing_zyx_A
