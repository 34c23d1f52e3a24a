"""Leaderboard file: stable header, atomic locked upsert keyed by experiment + config hash, sorting, row names, CLI."""

from __future__ import annotations

import json
import math
import multiprocessing
from pathlib import Path

import pandas as pd
import pytest

from czii.cli import main
from czii.errors import ConfigError, DataError
from czii.experiment import (
    F4_COLUMNS,
    LEADERBOARD_COLUMNS,
    SCORE_COLUMNS,
    format_leaderboard,
    read_leaderboard,
    resolve_rows,
    sort_leaderboard,
    upsert_row,
)

REPO = Path(__file__).resolve().parents[2]


def _row(name: str, cv_tuned: float | None, config_hash: str = "abcdef123456", **extra) -> dict:
    row = {
        "experiment": name, "timestamp": "2025-01-01T00:00:00+00:00", "git_commit": None,
        "config_hash": config_hash, "seed": 42, "folds": "0 1 2",
        "cv_default": 0.1 + 0.2, "cv_tuned": cv_tuned, "cv_tuned_in_sample": 0.9,
        **{c: 0.5 for c in F4_COLUMNS},
        "thresholds": json.dumps({"ribosome": 0.25}), "train_seconds": 12.5, "val_seconds": 1.5,
        "device": "cpu", "run_dir": f"runs/{name}",
    }
    row.update(extra)
    return row


def test_shipped_leaderboard_has_the_header():
    shipped = REPO / "submissions" / "leaderboard.csv"
    assert shipped.read_text().splitlines()[0].split(",") == list(LEADERBOARD_COLUMNS)
    assert list(read_leaderboard(shipped).columns) == list(LEADERBOARD_COLUMNS)


def test_upsert_appends_new_keys_and_replaces_same_key(tmp_path):
    path = tmp_path / "sub" / "leaderboard.csv"
    assert read_leaderboard(path).empty
    assert upsert_row(path, _row("a", 0.4)).action == "appended"
    assert upsert_row(path, _row("b", 0.6)).action == "appended"
    assert upsert_row(path, _row("a", 0.5, config_hash="0123456789ab")).action == "appended"  # another config
    same = upsert_row(path, _row("a", 0.4, timestamp="2025-02-02T00:00:00+00:00"))
    assert (same.action, same.changed) == ("replaced", [])
    changed = upsert_row(path, _row("b", 0.7, f4_ribosome=0.1))
    assert (changed.action, changed.changed) == ("replaced", ["cv_tuned", "f4_ribosome"])

    df = read_leaderboard(path)
    assert path.read_text().splitlines()[0] == ",".join(LEADERBOARD_COLUMNS)
    assert list(zip(df.experiment, df.config_hash)) == [("a", "abcdef123456"), ("b", "abcdef123456"),
                                                        ("a", "0123456789ab")]
    assert df.timestamp[0] == "2025-02-02T00:00:00+00:00" and df.cv_tuned[1] == 0.7
    assert df.cv_default[0] == 0.1 + 0.2  # floats round-trip exactly
    assert df.git_commit[0] == "" and df.seed[0] == 42
    assert [p.name for p in path.parent.iterdir()] == ["leaderboard.csv"]


def test_missing_scores_stay_missing(tmp_path):
    path = tmp_path / "leaderboard.csv"
    upsert_row(path, _row("single-fold", None, **{c: math.nan for c in F4_COLUMNS}))
    df = read_leaderboard(path)
    assert math.isnan(df.cv_tuned[0]) and all(math.isnan(df[c][0]) for c in F4_COLUMNS)
    again = upsert_row(path, _row("single-fold", None, **{c: math.nan for c in F4_COLUMNS}))
    assert again.changed == []
    assert "n/a" in format_leaderboard(df)


def test_a_foreign_header_is_refused_and_left_alone(tmp_path):
    path = tmp_path / "leaderboard.csv"
    path.write_text("experiment,score\nold,0.5\n")
    with pytest.raises(DataError, match="differs from the leaderboard header"):
        upsert_row(path, _row("a", 0.4))
    assert path.read_text() == "experiment,score\nold,0.5\n"
    bad = tmp_path / "bad.csv"
    bad.write_text(",".join(LEADERBOARD_COLUMNS) + "\n" + pd.DataFrame([_row("a", 0.4)]).assign(
        cv_tuned="high").to_csv(index=False, header=False))
    with pytest.raises(DataError, match="'cv_tuned' holds a non-number"):
        read_leaderboard(bad)


def test_upsert_rejects_incomplete_rows(tmp_path):
    row = _row("a", 0.4)
    del row["device"]
    with pytest.raises(ValueError, match="device"):
        upsert_row(tmp_path / "leaderboard.csv", row)
    assert not (tmp_path / "leaderboard.csv").exists()


def _append_many(path: str, worker: int) -> None:
    for i in range(5):
        upsert_row(path, _row(f"w{worker}-{i}", 0.1 * worker))


def test_concurrent_writers_lose_no_row(tmp_path):
    path = tmp_path / "leaderboard.csv"
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_append_many, args=(str(path), w)) for w in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert all(p.exitcode == 0 for p in procs)
    assert sorted(read_leaderboard(path).experiment) == sorted(f"w{w}-{i}" for w in range(4) for i in range(5))


def test_sort_puts_best_first_and_missing_last(tmp_path):
    df = pd.DataFrame([_row("low", 0.2), _row("none", None), _row("high", 0.8), _row("mid", 0.5)])
    df["cv_tuned"] = df["cv_tuned"].astype(float)
    assert list(sort_leaderboard(df).experiment) == ["high", "mid", "low", "none"]
    assert list(sort_leaderboard(df, top=2).experiment) == ["high", "mid"]
    assert list(sort_leaderboard(df, ascending=True).experiment) == ["low", "mid", "high", "none"]
    with pytest.raises(ConfigError, match="cannot sort the leaderboard by 'score'"):
        sort_leaderboard(df, "score")
    with pytest.raises(ConfigError, match="--top"):
        sort_leaderboard(df, top=0)
    assert set(SCORE_COLUMNS) <= set(df.columns)


def test_rows_are_named_by_experiment_or_experiment_at_hash():
    df = pd.DataFrame([_row("a", 0.4), _row("a", 0.5, config_hash="0123456789ab"), _row("b", 0.6)])
    assert [r["config_hash"] for r in resolve_rows(df, ["a@0123", "b"])] == ["0123456789ab", "abcdef123456"]
    with pytest.raises(ConfigError, match="names 2 rows .*a@abcdef123456.*a@0123456789ab"):
        resolve_rows(df, ["a"])
    with pytest.raises(ConfigError, match="no leaderboard row 'c'; rows: a@abcdef123456"):
        resolve_rows(df, ["c"])
    with pytest.raises(ConfigError, match="named twice"):
        resolve_rows(df, ["b", "b@abc"])


def test_cli_prints_the_table_sorted(tmp_path, capsys):
    path = tmp_path / "leaderboard.csv"
    assert main(["leaderboard", "--leaderboard", str(path)]) == 0
    assert "no rows yet" in capsys.readouterr().out
    for name, cv in (("mid", 0.5), ("high", 0.8), ("single", None), ("low", 0.2)):
        upsert_row(path, _row(name, cv, train_seconds=100 * (cv or 0)))
    assert main(["leaderboard", "--leaderboard", str(path)]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].split()[:2] == ["rank", "experiment"]
    assert [line.split()[1] for line in lines[1:]] == ["high", "mid", "low", "single"]
    assert [line.split()[0] for line in lines[1:]] == ["1", "2", "3", "4"]
    assert main(["leaderboard", "--leaderboard", str(path), "--sort", "train_seconds", "--ascending",
                 "--top", "2", "--per-class"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert "f4_ribosome" in lines[0] and [line.split()[1] for line in lines[1:]] == ["single", "low"]
    assert main(["leaderboard", "--leaderboard", str(path), "--sort", "nope"]) == 2
    assert "cannot sort" in capsys.readouterr().err
