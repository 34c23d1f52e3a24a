"""Picks tables: their columns, the one validator, and the one truth ↔ prediction matching.

Every table of particle positions in czii is a pandas DataFrame with x, y, z in Ångström:

- picks (truth, solution): :data:`PICK_COLUMNS` ``experiment, particle_type, x, y, z``;
- candidates (predictions with a score, e.g. out-of-fold peaks): :data:`CANDIDATE_COLUMNS`
  (picks + ``score``, the peak probability in [0, 1]);
- submission (the Kaggle CSV): :data:`SUBMISSION_COLUMNS` (``id`` + picks).

:func:`check_picks_table` is the validator all of them go through (the metric, the tuner, the
submission writer, the data layer). :func:`neighbours` is the one matching rule, the
competition's: a truth point is found by a prediction of the same experiment and class within
``distance_multiplier × radius_A`` (inclusive). The metric counts found truth points, the
threshold tuner takes the best score among each truth point's neighbours, and the report marks
found truth points and matched predictions, all from this function.

Torch-free and copick-free.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.spatial import cKDTree

from czii.errors import CziiError, SubmissionError
from czii.particles import BY_NAME, known_names

XYZ: tuple[str, str, str] = ("x", "y", "z")
PICK_COLUMNS: tuple[str, ...] = ("experiment", "particle_type", *XYZ)
CANDIDATE_COLUMNS: tuple[str, ...] = (*PICK_COLUMNS, "score")
SUBMISSION_COLUMNS: tuple[str, ...] = ("id", *PICK_COLUMNS)
MATCH_DISTANCE_MULTIPLIER: float = 0.5


def preview(items: Iterable, n: int = 5) -> str:
    """The first ``n`` items as text, with a count of the rest."""
    items = list(items)
    more = f" (+{len(items) - n} more)" if len(items) > n else ""
    return ", ".join(str(i) for i in items[:n]) + more


def empty_table(columns: Iterable[str] = PICK_COLUMNS) -> pd.DataFrame:
    """A typed empty table: names as object, coordinates and score as float64."""
    return pd.DataFrame({c: pd.Series(dtype=np.float64 if c in (*XYZ, "score") else object) for c in columns})


def unknown_particle_types(df: pd.DataFrame, known: Iterable[str] | None = None) -> list[str]:
    """Particle types in ``df`` that are not in ``known`` (default: every registered class; sorted)."""
    return sorted(set(df["particle_type"].astype(str)) - set(known_names() if known is None else known))


def check_picks_table(
    df: pd.DataFrame,
    what: str,
    *,
    score: bool = False,
    known: Iterable[str] | None = None,
    error: type[CziiError] = SubmissionError,
) -> pd.DataFrame:
    """A copy of ``df`` with ``experiment``/``particle_type`` as str and x, y, z (and score) as float64.

    Raises ``error`` naming ``what`` for: a missing column (:data:`PICK_COLUMNS`, plus ``score``
    when ``score``), empty names, non-numeric or non-finite coordinates, scores outside [0, 1],
    and particle types outside ``known`` (when given). Extra columns are kept.
    """
    if not isinstance(df, pd.DataFrame):
        raise error(f"{what} must be a pandas DataFrame, got {type(df).__name__}")
    need = CANDIDATE_COLUMNS if score else PICK_COLUMNS
    missing = [c for c in need if c not in df.columns]
    if missing:
        raise error(f"{what} is missing columns {missing}; expected {list(need)}, found {list(df.columns)}")
    out = df.copy()
    names_missing = out[["experiment", "particle_type"]].isna().any(axis=1).to_numpy()
    if names_missing.any():
        raise error(f"{what} has empty experiment/particle_type in rows {preview(out.index[names_missing])}")
    out["experiment"] = out["experiment"].astype(str)
    out["particle_type"] = out["particle_type"].astype(str)
    numeric = [*XYZ, "score"] if score else list(XYZ)
    try:
        values = out[numeric].to_numpy(dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise error(f"{what} has non-numeric {', '.join(numeric)} values: {exc}") from None
    bad = ~np.isfinite(values)
    if bad.any():
        rows = out.index[bad.any(axis=1)]
        cols = [numeric[j] for j in np.flatnonzero(bad.any(axis=0))]
        raise error(f"{what} has NaN/inf in columns {cols} at rows {preview(rows)}")
    if score and len(values) and not ((values[:, 3] >= 0) & (values[:, 3] <= 1)).all():
        raise error(f"{what}: scores must lie in [0, 1], found [{values[:, 3].min()}, {values[:, 3].max()}]")
    out[numeric] = values
    if known is not None:
        unknown = unknown_particle_types(out, known)
        if unknown:
            raise error(f"{what} has unknown particle types {unknown}; known: {', '.join(known)}")
    return out


def match_radius_A(particle_type: str, distance_multiplier: float = MATCH_DISTANCE_MULTIPLIER) -> float:
    """How close a prediction must be to find a truth point of ``particle_type`` (Å, inclusive)."""
    return distance_multiplier * BY_NAME[particle_type].radius_A


def neighbours(
    truth: pd.DataFrame,
    predictions: pd.DataFrame,
    *,
    distance_multiplier: float = MATCH_DISTANCE_MULTIPLIER,
    radius_A: Mapping[str, float] | None = None,
) -> list[np.ndarray]:
    """For each truth row (in order), the positions (``iloc``) of the predictions that find it.

    A prediction finds a truth point when both have the same ``experiment`` and
    ``particle_type`` and lie within ``distance_multiplier × radius_A[particle_type]`` Å
    (inclusive; ``radius_A`` defaults to the CZII radii). Both tables must have been checked
    with :func:`check_picks_table`.
    """
    out = [np.empty(0, dtype=np.int64)] * len(truth)
    if not len(truth) or not len(predictions):
        return out
    pred_groups = predictions.groupby(["experiment", "particle_type"], sort=False).indices
    xyz_pred = predictions[list(XYZ)].to_numpy(np.float64)
    xyz_true = truth[list(XYZ)].to_numpy(np.float64)
    for (run, name), t_idx in truth.groupby(["experiment", "particle_type"], sort=False).indices.items():
        p_idx = pred_groups.get((run, name))
        if p_idx is None:
            continue
        r = distance_multiplier * (radius_A[name] if radius_A is not None else BY_NAME[name].radius_A)
        hits = cKDTree(xyz_pred[p_idx]).query_ball_point(xyz_true[t_idx], r=r)
        for t, h in zip(t_idx, hits):
            out[t] = p_idx[np.asarray(sorted(h), dtype=np.int64)]
    return out


def read_picks_csv(path: str | Path, what: str, *, error: type[CziiError] = SubmissionError) -> pd.DataFrame:
    """The CSV at ``path`` (names as str); ``error`` naming ``what`` and the file when it is missing, not a
    CSV or lacks :data:`PICK_COLUMNS`. Values are checked by :func:`check_picks_table`."""
    path = Path(path)
    if not path.is_file():
        raise error(f"{what} file {path} does not exist" + (" (it is a directory)" if path.is_dir() else ""))
    try:
        df = pd.read_csv(path, dtype={"experiment": str, "particle_type": str})
    except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise error(f"{what} file {path} is not a readable CSV: {exc}") from None
    missing = [c for c in PICK_COLUMNS if c not in df.columns]
    if missing:
        raise error(f"{what} file {path} is missing columns {missing}; found {list(df.columns)}")
    return df
