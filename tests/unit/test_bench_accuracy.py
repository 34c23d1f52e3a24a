"""The accuracy benchmark's fold layout: which runs each fold holds out (benchmarks/accuracy.py)."""

import importlib.util
from pathlib import Path

import pytest

_PATH = Path(__file__).resolve().parents[2] / "benchmarks" / "accuracy.py"
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


@pytest.mark.parametrize("n_folds, holdout, words", [
    (5, 1, "holds out 5 of the 5"),
    (3, 2, "holds out 6 of the 5"),
    (6, 0, "exceeds the 5"),
    (0, 0, "must be ≥ 1"),
])
def test_impossible_layouts_are_refused(n_folds, holdout, words):
    with pytest.raises(SystemExit, match=words):
        bench.fold_layout(RUNS, n_folds, holdout)
