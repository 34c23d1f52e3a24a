"""``czii experiment`` / ``report`` / ``leaderboard`` / ``ensemble`` end to end on the tiny simulated dataset.

Two experiments of the same tiny config (two folds, one epoch of two steps) are trained once
per module: ``a`` and ``b`` (same config and seed, another name and run folder) must give
identical score columns.
"""

from __future__ import annotations

import json
import re
import shutil
from datetime import datetime
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from czii.cli import main
from czii.config import config_hash, load_config, with_data_paths
from czii.errors import ConfigError
from czii.experiment import (
    F4_COLUMNS,
    LEADERBOARD_COLUMNS,
    SCORE_COLUMNS,
    build_ensemble,
    read_leaderboard,
    run_experiment,
    upsert_row,
)
from czii.predictor import load_spec
from czii.registry import resolve_tta
from czii.metric import score as metric_score
from czii.particles import PARTICLE_NAMES
from czii.postprocess.thresholds import read_oof
from czii.predictor import DEFAULT_THRESHOLDS
from czii.report import OVERLAY_FIGURE, THRESHOLD_FIGURE, TRAINING_FIGURE, OverlaySlab
from czii.training.loop import train

CPU_TINY = Path(__file__).resolve().parents[2] / "configs" / "cpu_tiny.yaml"
TINY = ["train.epochs=1", "train.steps_per_epoch=2", "train.batch_size=1", "patch.size_zyx=[32,32,32]",
        "val.tile_zyx=[32,96,96]"]
FIGURES = (THRESHOLD_FIGURE, TRAINING_FIGURE, OVERLAY_FIGURE)


def _config(tiny_sim, *overrides):
    return with_data_paths(load_config(CPU_TINY, [*TINY, *overrides]), [tiny_sim.copick_config])


def _experiment(tiny_sim, out: Path, name: str, leaderboard: Path) -> int:
    return main(["experiment", "--config", str(CPU_TINY), "--data", str(tiny_sim.copick_config), "--out", str(out),
                 "--name", name, "--folds", "0", "1", "--device", "cpu", "--leaderboard", str(leaderboard),
                 "--set", *TINY])


@pytest.fixture(scope="module")
def runs(tiny_sim, tmp_path_factory):
    root = tmp_path_factory.mktemp("experiment")
    leaderboard = root / "submissions" / "leaderboard.csv"
    assert _experiment(tiny_sim, root / "runs", "a", leaderboard) == 0
    first = read_leaderboard(leaderboard).iloc[0].to_dict()
    assert _experiment(tiny_sim, root / "runs_b", "b", leaderboard) == 0
    return SimpleNamespace(root=root, leaderboard=leaderboard, first=first, run_dir=root / "runs" / "a")


def _kept_at(candidates: pd.DataFrame, thresholds_of_run) -> pd.DataFrame:
    thr = [thresholds_of_run(run)[cls] for run, cls in zip(candidates.experiment, candidates.particle_type)]
    return candidates[candidates.score >= np.array(thr)]


def test_row_holds_every_column_and_scores_the_metric_confirms(runs, tiny_sim):
    df = read_leaderboard(runs.leaderboard)
    assert list(df.columns) == list(LEADERBOARD_COLUMNS) and list(df.experiment) == ["a", "b"]
    row = runs.first
    assert row["experiment"] == "a" and row["folds"] == "0 1" and row["device"] == "cpu"
    assert row["run_dir"] == str(runs.run_dir) and row["seed"] == _config(tiny_sim).train.seed
    assert row["config_hash"] == config_hash(_config(tiny_sim))
    assert row["config_hash"] == config_hash(load_config(runs.run_dir / "config.yaml"))
    assert row["git_commit"] == "" or re.fullmatch(r"[0-9a-f]{40}", row["git_commit"])
    datetime.fromisoformat(row["timestamp"])
    assert row["train_seconds"] > 0 and row["val_seconds"] > 0
    for column in SCORE_COLUMNS:
        assert 0.0 <= row[column] <= 1.0, column
    assert row["cv_tuned_in_sample"] >= row["cv_default"]  # tuning in-sample can only help

    saved = json.loads((runs.run_dir / "thresholds.json").read_text())
    thresholds = json.loads(row["thresholds"])
    assert thresholds == saved["thresholds"] and set(thresholds) == set(PARTICLE_NAMES)

    # the competition metric on the saved out-of-fold candidates confirms the default and cross-fitted scores
    oof = read_oof(runs.run_dir)
    default = metric_score(oof.truth, _kept_at(oof.candidates, lambda run: DEFAULT_THRESHOLDS))
    assert default.score == pytest.approx(row["cv_default"], abs=1e-12)
    by_fold = saved["thresholds_by_fold"]
    cross = metric_score(oof.truth, _kept_at(oof.candidates, lambda run: by_fold[oof.groups[run]]))
    assert cross.score == pytest.approx(row["cv_tuned"], abs=1e-12)
    for column, name in zip(F4_COLUMNS, PARTICLE_NAMES):
        assert cross.table.loc[name, "f_beta"] == pytest.approx(row[column], abs=1e-12), name


def test_same_config_and_seed_reproduce_the_score_columns(runs):
    df = read_leaderboard(runs.leaderboard)
    b = df[df.experiment == "b"].iloc[0]
    assert b["config_hash"] == runs.first["config_hash"] and b["run_dir"] != runs.first["run_dir"]
    for column in (*SCORE_COLUMNS, "thresholds"):
        assert b[column] == runs.first[column], column


def test_figures_are_valid_pngs_and_the_report_rebuilds_them_from_saved_outputs(runs, capsys, assert_valid_png):
    report = runs.run_dir / "report"
    before = {}
    for name in FIGURES:
        assert_valid_png(report / name)
        before[name] = (report / name).read_bytes()
        (report / name).unlink()
    slab = OverlaySlab.load(report / "overlay.npz")
    held_out = json.loads((runs.run_dir / slab.fold / "seed.json").read_text())["val_runs"]
    assert slab.run in held_out and slab.heatmaps_cyx.shape[0] == len(slab.classes) and len(slab.truth)

    assert main(["report", "--run-dir", str(runs.run_dir)]) == 0
    assert capsys.readouterr().out.count("wrote ") == len(FIGURES)
    for name in FIGURES:
        assert_valid_png(report / name)
        assert (report / name).read_bytes() == before[name], name


def test_leaderboard_cli_prints_rows_sorted(runs, capsys):
    df = read_leaderboard(runs.leaderboard)
    assert main(["leaderboard", "--leaderboard", str(runs.leaderboard), "--sort", "train_seconds"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    expected = list(df.sort_values("train_seconds", ascending=False).experiment)
    assert [line.split()[1] for line in lines[1:]] == expected
    assert main(["leaderboard", "--leaderboard", str(runs.leaderboard), "--top", "1"]) == 0
    assert len(capsys.readouterr().out.strip().splitlines()) == 2


def test_rerun_in_place_reuses_the_folds_and_replaces_the_row(runs, tiny_sim, capsys):
    best = runs.run_dir / "fold0" / "checkpoints" / "best.pt"
    mtime = best.stat().st_mtime_ns
    assert _experiment(tiny_sim, runs.root / "runs", "a", runs.leaderboard) == 0
    out = capsys.readouterr().out
    assert "fold0 reused, fold1 reused" in out
    assert f"replaced row a@{runs.first['config_hash']} (scores unchanged)" in out
    assert best.stat().st_mtime_ns == mtime
    df = read_leaderboard(runs.leaderboard)
    assert list(df.experiment) == ["a", "b"]
    assert all(df[c][0] == runs.first[c] for c in SCORE_COLUMNS)


def test_experiment_refuses_stray_or_foreign_folds(runs, tiny_sim):
    before = runs.leaderboard.read_bytes()
    kwargs = {"name": "a", "out_root": runs.root / "runs", "leaderboard": runs.leaderboard}
    with pytest.raises(ConfigError, match="holds fold1, which the requested folds"):
        run_experiment(_config(tiny_sim), folds=[0], **kwargs)
    with pytest.raises(ConfigError, match="fold0 was trained with config"):
        run_experiment(_config(tiny_sim, "train.seed=7"), folds=[0, 1], **kwargs)
    with pytest.raises(ConfigError, match=r"folds \[5\] do not exist: the config has 3 folds"):
        run_experiment(_config(tiny_sim), folds=[5], **kwargs)
    with pytest.raises(ConfigError, match="experiment name"):
        run_experiment(_config(tiny_sim), folds=[0], name="a@b", out_root=runs.root / "runs",
                       leaderboard=runs.leaderboard)
    assert runs.leaderboard.read_bytes() == before


def test_ensemble_of_a_model_with_its_reproduction_scores_like_the_model(runs, capsys):
    out = runs.root / "ensembles" / "ab.yaml"
    assert main(["ensemble", "--rows", "a", "b", "--out", str(out), "--leaderboard", str(runs.leaderboard),
                 "--device", "cpu"]) == 0
    assert "tuned cross-fitted" in capsys.readouterr().out
    tuned = json.loads((runs.root / "ensembles" / "ab" / "thresholds.json").read_text())
    # a and b are the same weights, so their average is each of them and every score must equal the row's
    # (up to the float rounding of averaging 2 models x 4 TTA transforms, which can move a tuned threshold)
    assert tuned["score_default"] == pytest.approx(runs.first["cv_default"], abs=2e-3)
    assert tuned["score_tuned_in_sample"] == pytest.approx(runs.first["cv_tuned_in_sample"], abs=2e-3)
    assert tuned["score_cross_fitted"] == pytest.approx(runs.first["cv_tuned"], abs=2e-3)

    source = load_spec(out)
    expected = {(runs.root / d / n / f"fold{k}" / "checkpoints" / "best.pt").resolve()
                for d, n in (("runs", "a"), ("runs_b", "b")) for k in (0, 1)}
    assert {Path(m.checkpoint).resolve() for m in source.members} == expected
    assert [m.weight for m in source.members] == [1.0] * 4
    assert Path(source.thresholds).resolve() == (runs.root / "ensembles" / "ab" / "thresholds.json").resolve()
    assert source.tta == list(resolve_tta(load_config(runs.run_dir / "config.yaml").infer.tta))
    assert tuned["spec_hash"] == source.hash, "the ensemble's thresholds were tuned under the spec it ships"
    with pytest.raises(ConfigError, match="already exist"):
        build_ensemble(["a", "b"], out, leaderboard=runs.leaderboard)


def test_ensemble_refuses_rows_whose_folds_differ(runs):
    single = runs.root / "runs_c" / "c"
    shutil.copytree(runs.run_dir, single)
    shutil.rmtree(single / "fold1")
    leaderboard = runs.root / "leaderboard_c.csv"
    shutil.copy(runs.leaderboard, leaderboard)
    upsert_row(leaderboard, {**runs.first, "experiment": "c", "folds": "0", "run_dir": str(single)})
    out = runs.root / "ensembles" / "ac.yaml"
    with pytest.raises(ConfigError, match=r"differ in folds.*a@[0-9a-f]+: \{'fold0'.*'fold1'.*c@[0-9a-f]+: \{'fold0'"):
        build_ensemble(["a", "c"], out, leaderboard=leaderboard)
    with pytest.raises(ConfigError, match="2 given for 1 rows"):
        build_ensemble(["a"], out, weights=[1, 2], leaderboard=leaderboard)
    assert not out.exists() and not out.with_suffix("").exists()
    assert not list(out.parent.glob(".ac*"))


@pytest.mark.slow
def test_an_interrupted_experiment_resumes_to_the_same_row(tiny_sim, tmp_path, assert_valid_png):
    config = _config(tiny_sim, "train.epochs=2", "train.steps_per_epoch=3", "train.val_every=1")
    straight = run_experiment(config, name="s", out_root=tmp_path / "straight", folds=[0, 1],
                              leaderboard=tmp_path / "lb.csv")
    train(config, fold=0, out_dir=tmp_path / "resumed" / "r", max_epochs=1)
    resumed = run_experiment(config, name="r", out_root=tmp_path / "resumed", folds=[0, 1],
                             leaderboard=tmp_path / "lb.csv")
    assert straight.folds == {0: "trained", 1: "trained"} and resumed.folds == {0: "resumed", 1: "trained"}
    for column in (*SCORE_COLUMNS, "thresholds"):
        assert resumed.row[column] == straight.row[column] or (
            np.isnan(resumed.row[column]) and np.isnan(straight.row[column])), column
    history = pd.read_csv(tmp_path / "resumed" / "r" / "fold0" / "history.csv")
    assert list(history.epoch) == [1, 2] and history.val_score.notna().all()
    for name in FIGURES:
        assert_valid_png(tmp_path / "resumed" / "r" / "report" / name)
