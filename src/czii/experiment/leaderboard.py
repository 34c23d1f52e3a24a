"""Leaderboard (default ``submissions/leaderboard.csv``, columns :data:`LEADERBOARD_COLUMNS`,
header stable, created on first write when absent): one row per ``(experiment, config_hash)``.
Re-running an experiment with the same config (seed included in the hash) replaces its row in
place and reports which score columns changed (none when it reproduced); another config appends
a row. A file with another header is refused, never rewritten. Each write holds an exclusive
lock on the folder, reads the file, changes the row, writes a temporary file and renames it.
Rows are named ``NAME`` or ``NAME@HASH`` (a prefix of the config hash is enough). Columns:
``cv_default`` (score at :data:`czii.predictor.DEFAULT_THRESHOLDS`), ``cv_tuned``,
``cv_tuned_in_sample``, ``f4_<class>``; ``thresholds`` (compact JSON of ``thresholds.json``:
tuned on every fold's OOF candidates, what ``czii infer`` uses); ``train_seconds`` (sum of the
folds' ``history.csv`` seconds, periodic validation included, so resumed folds count whole);
``val_seconds`` (the out-of-fold pass's network time over every held-out run, recorded by
``czii train``); ``git_commit`` (empty outside git); ``run_dir`` (as given, relative to
the working directory unless absolute).
"""

from __future__ import annotations

import dataclasses
import fcntl
import math
import os
import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import pandas as pd

from czii.errors import ConfigError, DataError
from czii.io import atomic_write_text
from czii.particles import PARTICLE_NAMES

DEFAULT_LEADERBOARD = Path("submissions/leaderboard.csv")
F4_COLUMNS: tuple[str, ...] = tuple(f"f4_{name}" for name in PARTICLE_NAMES)
SCORE_COLUMNS: tuple[str, ...] = ("cv_default", "cv_tuned", "cv_tuned_in_sample", *F4_COLUMNS)
LEADERBOARD_COLUMNS: tuple[str, ...] = (
    "experiment", "timestamp", "git_commit", "config_hash", "seed", "folds", *SCORE_COLUMNS,
    "thresholds", "train_seconds", "val_seconds", "device", "run_dir",
)
NUMERIC_COLUMNS: tuple[str, ...] = (*SCORE_COLUMNS, "train_seconds", "val_seconds")
SORT_COLUMNS: tuple[str, ...] = (*NUMERIC_COLUMNS, "seed", "timestamp")
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")




def row_id(row: dict) -> str:
    """``experiment@config_hash``: how a row is named on the command line."""
    return f"{row['experiment']}@{row['config_hash']}"


def read_leaderboard(path: str | os.PathLike = DEFAULT_LEADERBOARD) -> pd.DataFrame:
    """The leaderboard table (empty when the file is absent or empty); DataError for another header."""
    path = Path(path)
    if not path.is_file() or path.stat().st_size == 0:
        return pd.DataFrame(columns=list(LEADERBOARD_COLUMNS))
    try:
        df = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (OSError, UnicodeDecodeError, pd.errors.ParserError) as exc:
        raise DataError(f"leaderboard {path}: unreadable CSV ({exc})") from None
    if tuple(df.columns) != LEADERBOARD_COLUMNS:
        raise DataError(f"leaderboard {path}: header {list(df.columns)} differs from the leaderboard header "
                        f"{list(LEADERBOARD_COLUMNS)}; move the file aside (it is never rewritten)")
    for column, parse in [(c, lambda v: float(v) if v else math.nan) for c in NUMERIC_COLUMNS] + [("seed", int)]:
        try:
            df[column] = [parse(v) for v in df[column]]
        except ValueError as exc:
            raise DataError(f"leaderboard {path}: column {column!r} holds a non-number ({exc})") from None
    return df


@contextmanager
def _folder_lock(folder: Path) -> Iterator[None]:
    """Exclusive advisory lock on ``folder`` (serialises read-modify-write of the files in it)."""
    folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _same(a, b) -> bool:
    if isinstance(a, float) and isinstance(b, float):
        return a == b or (math.isnan(a) and math.isnan(b))
    return a == b


@dataclasses.dataclass
class Upsert:
    """What :func:`upsert_row` did: ``appended`` or ``replaced`` (then the score columns that changed)."""

    action: str
    changed: list[str]


def upsert_row(path: str | os.PathLike, row: dict) -> Upsert:
    """Replace the row with the same (experiment, config_hash), or append ``row``; atomic and locked."""
    path = Path(path)
    missing = [c for c in LEADERBOARD_COLUMNS if c not in row]
    if missing:
        raise ValueError(f"leaderboard row lacks columns {missing}")
    new = {c: row[c] for c in LEADERBOARD_COLUMNS}
    for column in NUMERIC_COLUMNS:
        new[column] = math.nan if new[column] is None else float(new[column])
    with _folder_lock(path.parent):
        records = read_leaderboard(path).to_dict("records")
        same_key = [i for i, r in enumerate(records) if row_id(r) == row_id(new)]
        if same_key:
            old = records[same_key[0]]
            result = Upsert("replaced", [c for c in (*SCORE_COLUMNS, "thresholds") if not _same(old[c], new[c])])
            records[same_key[0]] = new
        else:
            result = Upsert("appended", [])
            records.append(new)
        atomic_write_text(path, pd.DataFrame(records, columns=list(LEADERBOARD_COLUMNS)).to_csv(index=False))
    return result


def sort_leaderboard(df: pd.DataFrame, by: str = "cv_tuned", *, top: int | None = None,
                     ascending: bool = False) -> pd.DataFrame:
    """Rows sorted by ``by`` (best first: descending unless ``ascending``; empty values last), first ``top``."""
    if by not in SORT_COLUMNS:
        raise ConfigError(f"cannot sort the leaderboard by {by!r}; choose one of {', '.join(SORT_COLUMNS)}")
    if top is not None and top < 1:
        raise ConfigError(f"--top must be >= 1, got {top}")
    out = df.sort_values(by, ascending=ascending, na_position="last", kind="stable")
    return out.head(top) if top is not None else out


def format_leaderboard(df: pd.DataFrame, *, per_class: bool = False) -> str:
    """Aligned text table with a rank column; scores to 4 decimals, empty ones as ``n/a``."""
    columns = ["experiment", "config_hash", "seed", "folds", "cv_tuned", "cv_default", "cv_tuned_in_sample",
               *(F4_COLUMNS if per_class else ()), "train_seconds", "val_seconds", "device", "timestamp"]
    view = df[columns].copy()
    view.insert(0, "rank", range(1, len(view) + 1))

    formatters = {c: "{:.4f}".format for c in SCORE_COLUMNS}
    formatters |= {c: "{:.1f}".format for c in ("train_seconds", "val_seconds")}
    return view.to_string(index=False, na_rep="n/a", formatters={c: f for c, f in formatters.items() if c in columns})


def resolve_rows(df: pd.DataFrame, specs: Sequence[str]) -> list[dict]:
    """Rows named ``NAME`` or ``NAME@HASH`` (hash prefix); ConfigError for unknown or ambiguous names."""
    records = df.to_dict("records")
    available = ", ".join(row_id(r) for r in records) or "none (the leaderboard is empty)"
    rows = []
    for spec in specs:
        name, _, prefix = spec.partition("@")
        found = [r for r in records if r["experiment"] == name and r["config_hash"].startswith(prefix)]
        if not found:
            raise ConfigError(f"no leaderboard row {spec!r}; rows: {available}")
        if len(found) > 1:
            raise ConfigError(f"{spec!r} names {len(found)} rows ({', '.join(row_id(r) for r in found)}); "
                              "give NAME@HASH")
        if any(row_id(r) == row_id(found[0]) for r in rows):
            raise ConfigError(f"row {row_id(found[0])} is named twice")
        rows.append(found[0])
    return rows
