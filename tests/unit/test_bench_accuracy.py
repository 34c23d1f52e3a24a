"""The accuracy benchmark's fold layout: which runs each fold holds out (benchmarks/accuracy.py)."""

import importlib.util
import json
import sys
from pathlib import Path

import pandas as pd
import pytest

_PATH = Path(__file__).resolve().parents[2] / "benchmarks" / "accuracy.py"
sys.path.insert(0, str(_PATH.parent))  # its sibling modules, as when it runs as a script
_spec = importlib.util.spec_from_file_location("bench_accuracy", _PATH)
bench = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench)

RUNS = [f"TS_{i}" for i in range(5)]


def test_round_robin_holds_out_every_run_once():
    folds = bench.fold_layout(RUNS, 2)
    assert folds == [["TS_0", "TS_2", "TS_4"], ["TS_1", "TS_3"]]
    assert sorted(r for f in folds for r in f) == RUNS


def test_one_fold_holds_out_the_last_run():
    assert bench.fold_layout(RUNS, 1) == [["TS_4"]]


def test_holdout_keeps_the_other_runs_in_every_fold():
    folds = bench.fold_layout(RUNS, 2, holdout=1)
    assert folds == [["TS_0"], ["TS_1"]]
    trained = [set(RUNS) - set(f) for f in folds]
    assert all(len(t) == 4 for t in trained) and set.intersection(*trained) == {"TS_2", "TS_3", "TS_4"}


def test_blocks_may_cover_every_run_so_that_each_fold_holds_out_one_family():
    runs = ["A_0", "A_1", "A_2", "B_0", "B_1", "B_2"]
    assert bench.fold_layout(runs, 2, holdout=3) == [["A_0", "A_1", "A_2"], ["B_0", "B_1", "B_2"]]


@pytest.mark.parametrize("n_folds, holdout, words", [
    (3, 2, "holds out 6 of the 5"),
    (1, 5, "holds out 5 of the 5"),
    (6, 0, "exceeds the 5"),
    (0, 0, "must be ≥ 1"),
])
def test_impossible_layouts_are_refused(n_folds, holdout, words):
    with pytest.raises(SystemExit, match=words):
        bench.fold_layout(RUNS, n_folds, holdout)


def test_family_sets_join_runs_of_each_family_without_sharing_any(tmp_path, monkeypatch):
    import family_sets

    from czii.data import load_solution, open_dataset

    monkeypatch.setattr(family_sets, "PRESET", "tiny")
    monkeypatch.setattr(family_sets, "TRAIN_RUNS_PER_FAMILY", 2)
    monkeypatch.setattr(family_sets, "TEST_RUNS_PER_FAMILY", 1)
    monkeypatch.setattr(family_sets, "OUT_OF_FAMILY_RUNS", 2)
    train, tests = family_sets.family_sets(tmp_path, ["A", "B"], "C", seed=3)

    def runs(kaggle, split):
        return sorted(p.name for p in (kaggle / split / "static" / "ExperimentRuns").iterdir())

    assert runs(train, "train") == ["A_TS_sim_00", "A_TS_sim_01", "B_TS_sim_00", "B_TS_sim_01"]
    assert runs(tests["in_family"], "test") == ["A_TS_test_00", "B_TS_test_00"]
    assert runs(tests["out_of_family"], "test") == ["C_TS_test_00", "C_TS_test_01"]
    dataset = open_dataset(train, split="train", workdir=tmp_path / "stage")  # copick reads the linked runs
    assert sorted(dataset.runs()) == runs(train, "train")
    assert len(dataset.picks("B_TS_sim_01")) > 0
    for kaggle in tests.values():
        solution = load_solution(kaggle / "solution.csv")  # a valid solution file
        assert sorted(solution["experiment"].unique()) == runs(kaggle, "test")
        assert pd.read_csv(kaggle / "solution.csv")["id"].tolist() == list(range(len(solution)))
    seeds = {json.loads(p.read_text())["config"]["seed"] for p in (tmp_path / "sims").glob("*/simulation.json")}
    assert len(seeds) == 5  # A, B train and test, C test: five datasets, five seeds
    with pytest.raises(SystemExit, match="test on another one"):
        family_sets.family_sets(tmp_path, ["A", "C"], "C", seed=3)
