"""Submission and solution tables: build, check, read and write.

A submission CSV has exactly the columns ``id, experiment, particle_type, x, y, z``
(x, y, z in Å, ``id`` = 0..N-1). :func:`check_picks_table` is the shared check the
metric also uses on both of its inputs; :func:`validate_submission` adds the
file-format rules; :func:`write_submission` validates, then writes atomically
(temporary name, then rename), so nothing is written when the table is bad.
:func:`load_solution` reads truth picks from a CSV, a copick config or a Kaggle
directory.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable, Mapping

import numpy as np
import pandas as pd

from czii.errors import SubmissionError
from czii.geometry import Spacing, zyx_vox_to_xyz_A
from czii.io import atomic_write_text
from czii.particles import PARTICLE_NAMES

PICK_COLUMNS: tuple[str, ...] = ("experiment", "particle_type", "x", "y", "z")
SUBMISSION_COLUMNS: tuple[str, ...] = ("id",) + PICK_COLUMNS
XYZ = ["x", "y", "z"]


def preview(items, n: int = 5) -> str:
    """The first ``n`` items as text, with a count of the rest."""
    items = list(items)
    more = f" (+{len(items) - n} more)" if len(items) > n else ""
    return ", ".join(str(i) for i in items[:n]) + more


def check_picks_table(df: pd.DataFrame, what: str) -> pd.DataFrame:
    """Return a copy of ``df`` with ``experiment``/``particle_type`` as str and x, y, z as float.

    Raises SubmissionError naming ``what`` and the missing columns, or the rows holding
    NaN/inf coordinates or empty names. Extra columns are kept.
    """
    if not isinstance(df, pd.DataFrame):
        raise SubmissionError(f"{what} must be a pandas DataFrame, got {type(df).__name__}")
    missing = [c for c in PICK_COLUMNS if c not in df.columns]
    if missing:
        raise SubmissionError(
            f"{what} is missing columns {missing}; expected {list(PICK_COLUMNS)}, found {list(df.columns)}"
        )
    out = df.copy()
    names_missing = out[["experiment", "particle_type"]].isna().any(axis=1).to_numpy()
    if names_missing.any():
        raise SubmissionError(
            f"{what} has empty experiment/particle_type in rows {preview(out.index[names_missing])}"
        )
    out["experiment"] = out["experiment"].astype(str)
    out["particle_type"] = out["particle_type"].astype(str)
    try:
        xyz = out[XYZ].to_numpy(dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise SubmissionError(f"{what} has non-numeric x, y, z values: {exc}") from None
    bad = ~np.isfinite(xyz)
    if bad.any():
        rows = out.index[bad.any(axis=1)]
        cols = [XYZ[j] for j in np.flatnonzero(bad.any(axis=0))]
        raise SubmissionError(f"{what} has NaN/inf in columns {cols} at rows {preview(rows)}")
    out[XYZ] = xyz
    return out


def unknown_particle_types(df: pd.DataFrame) -> list[str]:
    """Particle types in ``df`` that are not one of the six CZII classes (sorted)."""
    return sorted(set(df["particle_type"].astype(str)) - set(PARTICLE_NAMES))


def to_submission(picks: pd.DataFrame) -> pd.DataFrame:
    """Picks (experiment, particle_type, x, y, z [, extra]) → submission table.

    Columns exactly ``id, experiment, particle_type, x, y, z``, rows stably sorted by
    experiment then particle_type, ``id`` = 0..N-1.
    """
    table = check_picks_table(picks, "picks")[list(PICK_COLUMNS)]
    table = table.sort_values(["experiment", "particle_type"], kind="mergesort").reset_index(drop=True)
    table.insert(0, "id", np.arange(len(table), dtype=np.int64))
    return table


def validate_submission(
    df: pd.DataFrame,
    *,
    extents_xyz_A: Mapping[str, np.ndarray] | None = None,
    spacing_zyx_A: Spacing | None = None,
    runs: Iterable[str] | None = None,
) -> None:
    """Raise SubmissionError unless ``df`` is a well-formed submission.

    Checks: columns exactly :data:`SUBMISSION_COLUMNS`; finite coordinates; known particle
    types; unique integer ids; experiments within ``runs`` (when given); coordinates within
    ``[lower, extents_xyz_A[run]]`` per axis for runs in ``extents_xyz_A`` (build the upper
    bounds with :func:`czii.geometry.extent_xyz_A`). ``lower`` is −0.5 voxel when
    ``spacing_zyx_A`` is given, else 0 (the first voxel centre).
    """
    if not isinstance(df, pd.DataFrame) or list(df.columns) != list(SUBMISSION_COLUMNS):
        found = list(df.columns) if isinstance(df, pd.DataFrame) else type(df).__name__
        raise SubmissionError(f"submission columns must be exactly {list(SUBMISSION_COLUMNS)}, found {found}")
    table = check_picks_table(df, "submission")
    unknown = unknown_particle_types(table)
    if unknown:
        raise SubmissionError(f"submission has unknown particle types {unknown}; known: {list(PARTICLE_NAMES)}")
    ids = pd.to_numeric(table["id"], errors="coerce").to_numpy(dtype=np.float64)
    not_int = ~(np.isfinite(ids) & (ids == np.round(ids)))
    if not_int.any():
        raise SubmissionError(f"submission ids must be integers; bad ids in rows {preview(table.index[not_int])}")
    dup = table["id"].duplicated(keep=False).to_numpy()
    if dup.any():
        raise SubmissionError(f"submission has duplicate ids {preview(sorted(set(table['id'][dup])))}")
    if runs is not None:
        allowed = {str(r) for r in runs}
        extra = sorted(set(table["experiment"]) - allowed)
        if extra:
            raise SubmissionError(f"submission has experiments {extra} that are not among the runs {sorted(allowed)}")
    if extents_xyz_A is not None:
        lower_xyz_A = np.zeros(3) if spacing_zyx_A is None else zyx_vox_to_xyz_A(np.full(3, -0.5), spacing_zyx_A)[0]
        _check_bounds(table, extents_xyz_A, lower_xyz_A)


def _check_bounds(table: pd.DataFrame, extents_xyz_A: Mapping[str, np.ndarray], lower_xyz_A: np.ndarray) -> None:
    for run, rows in table.groupby("experiment", sort=True):
        if run not in extents_xyz_A:
            continue
        upper = np.asarray(extents_xyz_A[run], dtype=np.float64).reshape(3)
        xyz = rows[XYZ].to_numpy()
        outside = (xyz < lower_xyz_A) | (xyz > upper)
        if outside.any():
            i, axis = np.argwhere(outside)[0]
            raise SubmissionError(
                f"run {run!r}: row {rows.index[i]} has {XYZ[axis]}={xyz[i, axis]:.3f} Å outside "
                f"[{lower_xyz_A[axis]:.3f}, {upper[axis]:.3f}] Å ({int(outside.any(axis=1).sum())} rows outside)"
            )


def write_submission(df: pd.DataFrame, path: str | Path, **validate_kwargs) -> Path:
    """Validate ``df`` (keyword arguments go to :func:`validate_submission`) and write it as CSV atomically."""
    validate_submission(df, **validate_kwargs)
    return atomic_write_text(path, df.to_csv(index=False))


def _read_csv(path: Path, what: str) -> pd.DataFrame:
    if not path.is_file():
        raise SubmissionError(f"{what} file {path} does not exist" + (" (it is a directory)" if path.is_dir() else ""))
    try:
        df = pd.read_csv(path, dtype={"experiment": str, "particle_type": str})
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise SubmissionError(f"{what} file {path} is not a readable CSV: {exc}") from None
    missing = [c for c in PICK_COLUMNS if c not in df.columns]
    if missing:
        raise SubmissionError(f"{what} file {path} is missing columns {missing}; found {list(df.columns)}")
    return df


def read_submission(path: str | Path) -> pd.DataFrame:
    """Read a submission CSV; SubmissionError for a missing file, bad CSV or missing columns."""
    return _read_csv(Path(path), "submission")


def load_solution(path: str | Path, split: str | None = None) -> pd.DataFrame:
    """Truth picks (experiment, particle_type, x, y, z Å) from a CSV, a copick config JSON or a Kaggle directory.

    ``split`` ("train"/"test") selects the split of a Kaggle directory and is passed to
    :func:`czii.data.open_dataset`; it is not used for a CSV.
    """
    path = Path(path)
    if path.suffix.lower() == ".csv":
        table = _read_csv(path, "solution")
    elif path.is_dir() or (path.is_file() and path.suffix.lower() == ".json"):
        from czii.data import open_dataset

        table = open_dataset(path, split=split).picks()
    else:
        raise SubmissionError(
            f"solution {path} must be a CSV file, a copick config JSON or a Kaggle directory"
            + ("" if path.exists() else " (it does not exist)")
        )
    if table.empty:
        raise SubmissionError(f"solution {path} holds no truth picks" + (f" (split {split!r})" if split else ""))
    return table[list(PICK_COLUMNS)]
