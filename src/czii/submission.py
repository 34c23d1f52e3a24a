"""Submission and solution tables: build, check, read and write.

A submission CSV has exactly the columns ``id, experiment, particle_type, x, y, z``
(x, y, z in Å, ``id`` = 0..N-1; :mod:`czii.picks` owns the columns and the shared table check);
:func:`validate_submission` adds the file-format rules; :func:`write_submission` validates, then
writes atomically (temporary name, then rename), so nothing is written when the table is bad.
Truth picks from a copick project or a Kaggle directory: :func:`czii.data.load_solution`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable, Mapping

import numpy as np
import pandas as pd

from czii.errors import SubmissionError
from czii.geometry import Spacing, zyx_vox_to_xyz_A
from czii.io import atomic_write_text
from czii.particles import known_names
from czii.picks import (
    PICK_COLUMNS,
    SUBMISSION_COLUMNS,
    XYZ,
    check_picks_table,
    preview,
    read_picks_csv,
    unknown_particle_types,
)
SCORES_SUFFIX = ".scores.csv"
MANIFEST_SUFFIX = ".manifest.json"


def to_submission(picks: pd.DataFrame, keep_score: bool = False) -> pd.DataFrame:
    """Picks (experiment, particle_type, x, y, z [, extra]) → submission table.

    Columns exactly ``id, experiment, particle_type, x, y, z`` (plus ``score`` with ``keep_score``), rows
    stably sorted by experiment then particle_type, ``id`` = 0..N-1.
    """
    columns = [*PICK_COLUMNS, "score"] if keep_score else list(PICK_COLUMNS)
    table = check_picks_table(picks, "picks", score=keep_score)[columns]
    table = table.sort_values(["experiment", "particle_type"], kind="mergesort").reset_index(drop=True)
    table.insert(0, "id", np.arange(len(table), dtype=np.int64))
    return table


def manifest_path(out_csv: str | Path) -> Path:
    """Where the manifest of a submission CSV written by ``czii infer`` goes: ``<out_csv>.manifest.json``."""
    out_csv = Path(out_csv)
    return out_csv.with_name(out_csv.name + MANIFEST_SUFFIX)


def scores_path(submission_csv: str | Path) -> Path:
    """The score sidecar of a submission: ``<csv>.scores.csv`` with columns ``id, score`` (peak heights)."""
    path = Path(submission_csv)
    return path.with_name(path.name + SCORES_SUFFIX)


def write_scores(scored: pd.DataFrame, submission_csv: str | Path) -> Path:
    """Write the ``id, score`` sidecar of a scored submission table (:func:`to_submission` with ``keep_score``)."""
    return atomic_write_text(scores_path(submission_csv), scored[["id", "score"]].to_csv(index=False))


def read_scored_submission(path: str | Path) -> pd.DataFrame:
    """A submission CSV with its ``score`` column from the sidecar (NaN for every row when there is none);
    SubmissionError when the sidecar does not cover exactly the submission's ids."""
    table = read_submission(path)
    sidecar = scores_path(path)
    if not sidecar.is_file():
        return table.assign(score=np.nan)
    try:
        scores = pd.read_csv(sidecar)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise SubmissionError(f"{sidecar}: unreadable score sidecar ({exc})") from None
    if table["id"].duplicated().any():
        raise SubmissionError(f"{path}: duplicate ids {preview(sorted(set(table['id'][table['id'].duplicated()])))}; "
                              "scores cannot be attached by id")
    if list(scores.columns) != ["id", "score"] or sorted(scores["id"]) != sorted(table["id"]):
        raise SubmissionError(f"{sidecar}: expected columns id, score with the ids of {path}; the sidecar belongs "
                              "to another submission (delete it to export without scores)")
    return table.merge(scores, on="id", how="left")


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
        raise SubmissionError(f"submission has unknown particle types {unknown}; known: {list(known_names())}")
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
        xyz = rows[list(XYZ)].to_numpy()
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


def read_submission(path: str | Path) -> pd.DataFrame:
    """Read a submission CSV; SubmissionError for a missing file, bad CSV or missing columns."""
    return read_picks_csv(Path(path), "submission")


def check_experiments(submission: pd.DataFrame, solution: pd.DataFrame, submission_name: str,
                      solution_name: str) -> str | None:
    """SubmissionError when a non-empty submission shares no experiment with the solution (it would score 0
    for a reason that is not the model's); else a warning with counts when only some are shared (None when
    all are)."""
    predicted, truth = set(submission["experiment"].astype(str)), set(solution["experiment"].astype(str))
    shared = predicted & truth
    if predicted and not shared:
        raise SubmissionError(f"submission {submission_name} shares no experiment with solution {solution_name}: "
                              f"submission has {preview(sorted(predicted))}, solution has {preview(sorted(truth))}")
    if predicted == truth:
        return None
    return (f"warning: {len(shared)} of the solution's {len(truth)} experiments are in the submission "
            f"({len(truth - shared)} missing: {preview(sorted(truth - shared)) or 'none'}); "
            f"{len(predicted - shared)} submission experiments are not in the solution and are ignored "
            f"({preview(sorted(predicted - shared)) or 'none'})")
