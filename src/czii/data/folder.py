"""A folder (or glob) of MRC/REC tomograms or bare OME-Zarr stores, read like a :class:`czii.data.Dataset`.

Each file is one run (name = file stem) holding one tomogram, presented as type ``tomo_type``
(the channel the model reads). It has one pyramid level (0) at the file's voxel size, checked by
:func:`czii.formats.tomogram.find_tomograms` (``voxel_size_A`` overrides the headers); the
predictor brings it to the model's voxel size (:func:`czii.data.normalize.load_run_input`).
It holds no picks, and predictions cannot be written back into it (no copick overlay).
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from czii.data.dataset import NAN_POLICIES, Dataset, Volume, non_finite_policy, open_dataset
from czii.errors import ConfigError, DataError
from czii.formats.tomogram import TomogramFile, find_tomograms, is_tomogram_source
from czii.picks import PICK_COLUMNS, empty_table


class TomogramFolder:
    """Runs of a tomogram folder (module docstring)."""

    def __init__(self, source: str | Path, *, voxel_size_A: float | None = None, tomo_type: str = "denoised") -> None:
        self.source = Path(source)
        self.split = None
        self.tomo_type = tomo_type
        self.files: dict[str, TomogramFile] = {f.run: f for f in find_tomograms(source, voxel_size_A)}

    def __repr__(self) -> str:
        return f"TomogramFolder({str(self.source)!r}, runs={len(self.files)}, tomo_type={self.tomo_type!r})"

    def runs(self) -> list[str]:
        """Run names (file stems), sorted."""
        return sorted(self.files)

    def file(self, run: str) -> TomogramFile:
        try:
            return self.files[run]
        except KeyError:
            raise DataError(f"unknown run {run!r} in {self.source}; runs: {', '.join(self.runs())}") from None

    def tomogram_types(self, run: str) -> list[str]:
        self.file(run)
        return [self.tomo_type]

    def levels(self, run: str, tomo_type: str | None = None) -> list[tuple[int, tuple[float, float, float]]]:
        """(level, spacing z, y, x Å) of the tomogram: one level, the file's own voxels."""
        return [(0, self.file(run).spacing_zyx_A)]

    def tomogram_path(self, run: str, tomo_type: str | None = None) -> Path:
        """The run's MRC file or OME-Zarr store."""
        self._check(run, tomo_type, 0)
        return self.file(run).path

    def source_facts(self, run: str) -> dict:
        """Where the run's tomogram comes from and where its voxel size was read (for manifests)."""
        f = self.file(run)
        return {"path": str(f.path), "format": f.format, "spacing_source": f.spacing_source,
                "header_spacing_zyx_A": list(f.header_spacing_zyx_A), "translation_zyx_A": list(f.translation_zyx_A)}

    def tomogram_shape(self, run: str, tomo_type: str | None = None, level: int = 0) -> tuple[int, int, int]:
        self._check(run, tomo_type, level)
        return self.file(run).shape_zyx

    def _check(self, run: str, tomo_type: str | None, level: int) -> None:
        if tomo_type not in (None, self.tomo_type):
            raise DataError(f"run {run!r} ({self.file(run).path}) holds one tomogram, presented as "
                            f"{self.tomo_type!r}; a model reading {tomo_type!r} needs a copick project")
        if level != 0:
            raise DataError(f"run {run!r} ({self.file(run).path}) has one level (0); level {level} was asked for")

    def tomogram(self, run: str, tomo_type: str | None = None, level: int = 0, nan_policy: str = "error") -> Volume:
        """The file's voxels as float32 z, y, x with the checked voxel size."""
        if nan_policy not in NAN_POLICIES:
            raise ConfigError(f"nan_policy must be one of {NAN_POLICIES}, got {nan_policy!r}")
        self._check(run, tomo_type, level)
        f = self.file(run)
        data = non_finite_policy(f.read(), nan_policy, f"run {run!r} tomogram {f.path}")
        return Volume(data=data, spacing_zyx_A=f.spacing_zyx_A, run=run, tomo_type=self.tomo_type, level=0)

    def picks(self, runs=None, **_) -> pd.DataFrame:
        """No picks: a tomogram folder holds none."""
        return empty_table(PICK_COLUMNS)

    def write_picks(self, df: pd.DataFrame, **_) -> None:
        raise DataError(f"{self.source}: a tomogram folder has no copick overlay to write picks into; "
                        "use `czii export` (STAR, .tbl, CSV) or `czii import` into a copick project")


def open_input(source: str | Path, *, split: str | None = None, voxel_size_A: float | None = None,
               tomo_type: str = "denoised") -> Dataset | TomogramFolder:
    """What inference reads: a :class:`TomogramFolder` when ``source`` names MRC/OME-Zarr tomograms, else
    :func:`czii.data.open_dataset` (a copick project or Kaggle directory, whose voxel sizes come from their
    OME-Zarr metadata: ``voxel_size_A`` is refused there)."""
    if is_tomogram_source(source):
        return TomogramFolder(source, voxel_size_A=voxel_size_A, tomo_type=tomo_type)
    if voxel_size_A is not None:
        raise DataError(f"{source}: --voxel-size applies to MRC/REC files and bare OME-Zarr stores; a copick project "
                        "or Kaggle directory takes its voxel size from its OME-Zarr metadata")
    return open_dataset(source, split=split)
