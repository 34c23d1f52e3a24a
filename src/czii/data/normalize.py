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
(:mod:`czii.inference.pipeline`) both use it. Given the voxel size a model works at
(``target_spacing_zyx_A``), it reads the coarsest pyramid level whose voxels are not coarser than
that (:func:`plan_input`) and resamples it to exactly that voxel size
(:func:`czii.geometry.resample_zyx`, anti-aliased; skipped within 1 %), so picks come back in the
source's frame in Å. Data more than :data:`czii.geometry.MAX_UPSAMPLING` times coarser is refused.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Sequence

import numpy as np

from czii.errors import DataError
from czii.geometry import MAX_UPSAMPLING, resample_zyx, same_spacing

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


@dataclass(frozen=True)
class InputPlan:
    """How a run's input is read: pyramid ``level`` at ``source_spacing_zyx_A``, resampled by ``factor``
    (source / target voxel size; 1 = read as it is) to ``spacing_zyx_A``."""

    level: int
    source_spacing_zyx_A: tuple[float, float, float]
    spacing_zyx_A: tuple[float, float, float]

    @property
    def resampled(self) -> bool:
        return not same_spacing(self.source_spacing_zyx_A, self.spacing_zyx_A)

    @property
    def factor(self) -> float:
        return float(self.source_spacing_zyx_A[-1] / self.spacing_zyx_A[-1])

    def to_dict(self) -> dict:
        return {"level": self.level, "source_spacing_zyx_A": list(self.source_spacing_zyx_A),
                "spacing_zyx_A": list(self.spacing_zyx_A), "resampled": self.resampled, "factor": self.factor}


def plan_input(dataset: Dataset, run: str, tomo_type: str, level: int,
               target_spacing_zyx_A: Sequence[float] | None) -> InputPlan:
    """Which level of ``run`` to read and at what voxel size to predict (module docstring); metadata only."""
    levels = dataset.levels(run, tomo_type)
    if target_spacing_zyx_A is None:
        spacing = dict(levels).get(level)
        if spacing is None:
            raise DataError(f"run {run!r} has no pyramid level {level}; levels: {[lv for lv, _ in levels]}")
        return InputPlan(level, tuple(spacing), tuple(spacing))
    target = tuple(float(s) for s in target_spacing_zyx_A)
    fine_enough = [(lv, sp) for lv, sp in levels if max(sp) <= max(target) * 1.01]
    lv, spacing = fine_enough[-1] if fine_enough else levels[0]
    if not fine_enough and max(spacing) > MAX_UPSAMPLING * max(target):
        raise DataError(
            f"run {run!r}: its finest voxels are {max(spacing):.4g} Å, more than {MAX_UPSAMPLING:g}× the "
            f"{max(target):.4g} Å the model works at; it cannot be brought to the model's voxel size without "
            "inventing detail (use a model trained at a coarser voxel size)"
        )
    return InputPlan(lv, tuple(spacing), tuple(spacing) if same_spacing(spacing, target) else target)


def load_run_input(
    dataset: Dataset,
    run: str,
    input_channels: Sequence[str],
    *,
    level: int = 0,
    clip_percentiles: Sequence[float] = DEFAULT_CLIP_PERCENTILES,
    nan_policy: str = "error",
    target_spacing_zyx_A: Sequence[float] | None = None,
    plan: InputPlan | None = None,
) -> tuple[np.ndarray, tuple[float, float, float]]:
    """Normalised float32 ``[C_in, Z, Y, X]`` model input of ``run`` (one channel per tomogram type, in the
    order of ``input_channels``) and its spacing; DataError when the channels differ in shape or spacing.
    ``nan_policy`` (``data.nan_policy``): ``error`` or ``repair`` non-finite voxels (:meth:`Dataset.tomogram`).
    ``target_spacing_zyx_A``: the voxel size to bring the input to (module docstring); None reads ``level``.
    ``plan``: the :func:`plan_input` of these arguments when the caller already made it."""
    plan = plan or plan_input(dataset, run, input_channels[0], level, target_spacing_zyx_A)
    channels: list[np.ndarray] = []
    first: tuple[tuple[int, ...], tuple[float, float, float]] | None = None
    for tomo_type in input_channels:
        vol = dataset.tomogram(run, tomo_type=tomo_type, level=plan.level, nan_policy=nan_policy)
        if first is None:
            first = (vol.data.shape, vol.spacing_zyx_A)
        elif vol.data.shape != first[0] or not np.allclose(vol.spacing_zyx_A, first[1], rtol=1e-4):
            raise DataError(
                f"run {run!r}: tomogram {tomo_type!r} has shape {vol.data.shape} at {vol.spacing_zyx_A} Å, but "
                f"{input_channels[0]!r} has {first[0]} at {first[1]} Å; input channels must align"
            )
        data = resample_zyx(vol.data, vol.spacing_zyx_A, plan.spacing_zyx_A) if plan.resampled else vol.data
        channels.append(normalize_volume(data, clip_percentiles))
    return np.stack(channels), plan.spacing_zyx_A
