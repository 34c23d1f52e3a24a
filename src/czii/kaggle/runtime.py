""":func:`project_runtime` turns the per-run timings of an inference manifest into a projection
for Kaggle's hidden test set (the notebook prints it).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any


from czii.geometry import CZII_SHAPE_ZYX
from czii.errors import DataError

HIDDEN_TEST_TOMOGRAMS = 500
KAGGLE_LIMIT_HOURS = 12.0


# --------------------------------------------------------------------------- runtime projection


@dataclass(frozen=True)
class RuntimeProjection:
    """Inference time projected to the hidden test set from measured per-run seconds.

    Each run's seconds are scaled by (voxels of a real tomogram at the models' level) / (voxels
    measured), so timings on small volumes still project to full-size ones; fixed costs (model
    loading, everything outside the runs) count once.
    """

    run_seconds: dict[str, float]
    run_shapes_zyx: dict[str, tuple[int, int, int]]
    seconds_per_tomogram: float
    fixed_seconds: float
    n_tomograms: int
    limit_seconds: float

    @property
    def projected_seconds(self) -> float:
        return self.fixed_seconds + self.seconds_per_tomogram * self.n_tomograms

    @property
    def ok(self) -> bool:
        return self.projected_seconds <= self.limit_seconds

    def report(self) -> str:
        """Per-run table, the projection and one ``OK``/``OVER`` line."""
        lines = [f"{'run':<24} {'shape z,y,x':>16} {'seconds':>9}"]
        for run, seconds in self.run_seconds.items():
            lines.append(f"{run:<24} {'x'.join(map(str, self.run_shapes_zyx[run])):>16} {seconds:>9.2f}")
        hours, limit_hours = self.projected_seconds / 3600, self.limit_seconds / 3600
        lines += [
            f"per full-size tomogram: {self.seconds_per_tomogram:.2f} s; fixed: {self.fixed_seconds:.1f} s",
            (f"projected for {self.n_tomograms} tomograms: {hours:.2f} h of the {limit_hours:g} h limit "
             f"({100 * hours / limit_hours:.0f}%)"),
            f"{'OK' if self.ok else 'OVER'}: projected {hours:.2f} h {'<=' if self.ok else '>'} {limit_hours:g} h",
        ]
        return "\n".join(lines)


def project_runtime(
    manifest: Mapping[str, Any],
    *,
    n_tomograms: int = HIDDEN_TEST_TOMOGRAMS,
    limit_hours: float = KAGGLE_LIMIT_HOURS,
    full_shape_zyx: Sequence[int] | None = None,
) -> RuntimeProjection:
    """Project an inference manifest's ``timings`` (and ``total_seconds``) to ``n_tomograms`` runs.

    ``full_shape_zyx`` defaults to a real CZII tomogram (184×630×630 at level 0) at the manifest's
    pyramid ``level``.
    """
    timings = manifest.get("timings") or {}
    if not timings:
        raise DataError("the inference manifest has no per-run timings to project from")
    level = int(manifest.get("level", 0))
    full = tuple(full_shape_zyx) if full_shape_zyx is not None else tuple(
        math.ceil(s / 2**level) for s in CZII_SHAPE_ZYX)
    run_seconds = {run: float(sum(info["seconds"].values())) for run, info in timings.items()}
    shapes = {run: tuple(int(s) for s in info["shape_zyx"]) for run, info in timings.items()}
    scaled = [run_seconds[run] * math.prod(full) / math.prod(shapes[run]) for run in timings]
    total = float(manifest.get("total_seconds", sum(run_seconds.values())))
    return RuntimeProjection(
        run_seconds=run_seconds,
        run_shapes_zyx=shapes,
        seconds_per_tomogram=sum(scaled) / len(scaled),
        fixed_seconds=max(0.0, total - sum(run_seconds.values())),
        n_tomograms=n_tomograms,
        limit_seconds=limit_hours * 3600,
    )
