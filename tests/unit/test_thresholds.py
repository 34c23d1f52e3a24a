"""Threshold tuning: the fast evaluator against brute force and czii.metric, planted optima,
cross-fitting, the thresholds file and ``czii tune`` on a hand-made run directory."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from conftest import _write_oof_spec

from czii.cli import main
from czii.errors import ConfigError, DataError
from czii.metric import score as metric_score
from czii.particles import BY_NAME, PARTICLE_NAMES, PARTICLES, TOTAL_WEIGHT
from czii.postprocess.thresholds import (
    BOOTSTRAP, MARGIN, TOLERANCE, class_curves, cross_fitted_score, score_at, tune_run_dir, tune_thresholds,
)
from czii.predictor import DEFAULT_THRESHOLDS, load_thresholds, save_thresholds

COLS = ["experiment", "particle_type", "x", "y", "z"]


def _synthetic(seed: int, runs=("TS_a", "TS_b", "TS_c", "TS_d")) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Truth on integer Å positions and candidates around them: hits at random distances, a hit exactly
    on the match radius, one candidate covering two truths, far false positives, an FP-only class,
    and a run with candidates but no truth (ignored by the metric)."""
    rng = np.random.default_rng(seed)
    truth, cand = [], []

    def add_cand(run, name, xyz):
        cand.append((run, name, *xyz, float(rng.uniform(0.05, 1.0))))

    for run in runs:
        for p in PARTICLES:
            r = p.match_radius_A
            n = 0 if (run == runs[0] and p.name == "ribosome") else int(rng.integers(3, 9))
            pts = rng.integers(0, 3000, size=(n, 3)).astype(np.float64)
            truth += [(run, p.name, *xyz) for xyz in pts]
            for xyz in pts:
                for _ in range(int(rng.integers(0, 3))):
                    d = rng.normal(size=3)
                    add_cand(run, p.name, xyz + d / np.linalg.norm(d) * rng.uniform(0, 0.98 * r))
            if n:
                add_cand(run, p.name, pts[0] + [r, 0.0, 0.0])  # exactly on the match radius: inclusive
                add_cand(run, p.name, pts[-1] + [0.0, 1.02 * r, 0.0])  # just outside
            for _ in range(int(rng.integers(2, 10))):
                add_cand(run, p.name, rng.uniform(0, 3000, 3))
        a = rng.integers(3100, 4000, size=3).astype(np.float64)
        truth += [(run, "apo-ferritin", *a), (run, "apo-ferritin", *(a + [40.0, 0, 0]))]
        add_cand(run, "apo-ferritin", a + [20.0, 0, 0])  # within 30 Å of both
    for _ in range(5):
        add_cand("TS_not_in_truth", "thyroglobulin", rng.uniform(0, 3000, 3))
    return (pd.DataFrame(cand, columns=COLS + ["score"]), pd.DataFrame(truth, columns=COLS))


def _brute_counts(cands: pd.DataFrame, truth: pd.DataFrame, thr_of_run, classes=PARTICLE_NAMES) -> dict:
    """(tp, fp, fn) per class from pairwise distances; class ``name`` in run ``run`` keeps
    ``score >= thr_of_run(name, run)``."""
    out = {}
    for name in classes:
        r = BY_NAME[name].match_radius_A
        tp = fp = fn = 0
        for run in truth["experiment"].unique():
            t = truth[(truth.experiment == run) & (truth.particle_type == name)][["x", "y", "z"]].to_numpy()
            c = cands[(cands.experiment == run) & (cands.particle_type == name)]
            c = c[c.score >= thr_of_run(name, run)][["x", "y", "z"]].to_numpy()
            hit = 0
            if len(t) and len(c):
                hit = int((np.sqrt(((t[:, None, :] - c[None, :, :]) ** 2).sum(-1)) <= r).any(axis=1).sum())
            tp, fp, fn = tp + hit, fp + len(c) - hit, fn + len(t) - hit
        out[name] = (tp, fp, fn)
    return out


def _f4(tp: int, fp: int, fn: int) -> float:
    p = tp / (tp + fp) if tp + fp > 0 else 0.0
    r = tp / (tp + fn) if tp + fn > 0 else 0.0
    return 17 * p * r / (16 * p + r) if p + r > 0 else 0.0


def _brute_score(counts: dict[str, tuple[int, int, int]]) -> float:
    return sum(BY_NAME[n].weight * _f4(*c) for n, c in counts.items()) / TOTAL_WEIGHT


def _rows_for(thr: dict):
    return lambda name, run: thr[name]


@pytest.fixture(scope="module")
def synthetic():
    return _synthetic(0)


def test_fast_evaluator_equals_brute_force_and_the_competition_metric(synthetic):
    cands, truth = synthetic
    rng = np.random.default_rng(1)
    some_score = float(cands[cands.particle_type == "thyroglobulin"].score.iloc[3])
    for thr in [
        dict(DEFAULT_THRESHOLDS),
        {n: float(rng.uniform(0, 1)) for n in PARTICLE_NAMES},
        {n: some_score for n in PARTICLE_NAMES},  # a threshold equal to a score keeps it
        {n: 0.0 for n in PARTICLE_NAMES},
    ]:
        counts = _brute_counts(cands, truth, _rows_for(thr))
        result = score_at(cands, truth, thr)
        table = result.per_class.set_index("particle_type")
        for name, (tp, fp, fn) in counts.items():
            assert tuple(table.loc[name, ["tp", "fp", "fn"]]) == (tp, fp, fn), name
        assert result.score == pytest.approx(_brute_score(counts), abs=1e-12)
        kept = cands[cands.score >= cands.particle_type.map(thr)]
        assert result.score == pytest.approx(metric_score(truth, kept).score, abs=1e-12)


def test_match_radius_is_inclusive_and_one_candidate_can_find_two_truths():
    truth = pd.DataFrame([("r", "apo-ferritin", 100.0, 0.0, 0.0), ("r", "apo-ferritin", 160.0, 0.0, 0.0),
                          ("r", "ribosome", 0.0, 0.0, 0.0)], columns=COLS)
    cands = pd.DataFrame([("r", "apo-ferritin", 130.0, 0.0, 0.0, 0.5),  # 30 Å = 0.5 × 60 Å from both
                          ("r", "ribosome", 0.0, 75.0001, 0.0, 0.5)], columns=COLS + ["score"])
    table = score_at(cands, truth, 0.2).per_class.set_index("particle_type")
    assert tuple(table.loc["apo-ferritin", ["tp", "fp", "fn"]]) == (2, -1, 0)
    assert tuple(table.loc["ribosome", ["tp", "fp", "fn"]]) == (0, 1, 1)
    assert score_at(cands, truth, 0.2).score == pytest.approx(metric_score(truth, cands).score)


def test_class_curves_equal_brute_force_at_every_threshold(synthetic):
    cands, truth = synthetic
    curves = class_curves(cands, truth, ["thyroglobulin", "apo-ferritin"])
    assert set(curves) == {"thyroglobulin", "apo-ferritin"}
    for name, curve in curves.items():
        truth_runs = set(truth.experiment)
        in_runs = cands[(cands.particle_type == name) & cands.experiment.isin(truth_runs)]
        assert np.array_equal(curve["threshold"], np.unique(in_runs.score))
        for row in curve.iloc[::3].itertuples():
            tp, fp, fn = _brute_counts(cands, truth, lambda n, run: row.threshold, [name])[name]
            assert (row.tp, row.fp, row.fn) == (tp, fp, fn)
            assert row.f_beta == pytest.approx(_f4(tp, fp, fn), abs=1e-12)


def test_tuned_thresholds_beat_every_threshold_of_a_fine_grid(synthetic):
    cands, truth = synthetic
    exact = tune_thresholds(cands, truth, tolerance=0, bootstrap=0)
    exact_counts = _brute_counts(cands, truth, _rows_for(exact))
    tolerant = tune_thresholds(cands, truth, bootstrap=0)  # lowest threshold within TOLERANCE of the best
    tolerant_counts = _brute_counts(cands, truth, _rows_for(tolerant))
    grid = np.linspace(0, 1, 101)
    for name in sorted(set(truth.particle_type)):
        f_grid = np.array([_f4(*_brute_counts(cands, truth, lambda n, run: t, [name])[name]) for t in grid])
        assert _f4(*exact_counts[name]) >= f_grid.max() - 1e-12
        f_tolerant = _f4(*tolerant_counts[name])
        assert f_tolerant >= _f4(*exact_counts[name]) - TOLERANCE - 1e-12
        assert tolerant[name] <= exact[name]


def test_tolerance_trades_a_little_f_beta_for_a_lower_threshold():
    # 10 ribosome truths: 9 hits at 0.8, 1 hit at 0.3; 21 FPs at 0.31.
    # keep > 0.31: P=1, R=.9 → F4 .905 (the best); keep >= 0.3: P=10/31, R=1 → .890; between: .805
    c, t = _planted("r1", "ribosome", 10, [0.8] * 9 + [0.3], [0.31] * 21)
    f_best, f_low = _f4(9, 0, 1), _f4(10, 21, 0)
    assert f_best - 0.03 < f_low < f_best - 0.01
    assert 0.31 < tune_thresholds(c, t, tolerance=0)["ribosome"] <= 0.8  # exact argmax
    assert 0.31 < tune_thresholds(c, t, tolerance=0.01)["ribosome"] <= 0.8  # .890 is not within 0.01
    assert TOLERANCE >= 0.02 and tune_thresholds(c, t)["ribosome"] == pytest.approx(0.3)  # the default goes low
    table = score_at(c, t, tune_thresholds(c, t)).per_class.set_index("particle_type")
    assert table.loc["ribosome", "f_beta"] == pytest.approx(f_low) and table.loc["ribosome", "recall"] == 1.0
    with pytest.raises(ConfigError, match="tolerance"):
        tune_thresholds(c, t, tolerance=-0.1)


def test_margin_keeps_a_flat_curve_off_its_lowest_end():
    # 10 virus-like particles at 0.99 and 0.98, 8 FPs at 0.10–0.18: F4 is within the tolerance from 0.10
    # to 0.98 (8 FPs cost 0.045), so the tolerance alone goes to the bottom of that range
    c, t = _planted("r1", "virus-like-particle", 10, [0.99] * 9 + [0.98], list(np.linspace(0.10, 0.18, 8)))
    assert 1 - TOLERANCE < _f4(10, 8, 0) < 1 - TOLERANCE + 0.01
    assert tune_thresholds(c, t, margin=0)["virus-like-particle"] < 0.11
    assert MARGIN == 0.5 and tune_thresholds(c, t)["virus-like-particle"] == pytest.approx(0.49)  # 0.5 × 0.98
    table = score_at(c, t, tune_thresholds(c, t)).per_class.set_index("particle_type")
    assert (table.loc["virus-like-particle", "recall"], table.loc["virus-like-particle", "fp"]) == (1.0, 0)
    with pytest.raises(ConfigError, match="margin"):
        tune_thresholds(c, t, margin=1.5)


def test_margin_never_drops_a_kept_truth_point(synthetic):
    cands, truth = synthetic
    loose, tight = (tune_thresholds(cands, truth, margin=m, bootstrap=0) for m in (0, 1.0))
    for name in sorted(set(truth.particle_type)):
        assert tight[name] >= loose[name]
    recall = {m: score_at(cands, truth, th).per_class.set_index("particle_type")["recall"]
              for m, th in (("loose", loose), ("tight", tight))}
    assert recall["tight"].equals(recall["loose"])  # margin 1 sits at the weakest kept truth: same recall


def _planted(run: str, name: str, n_truth: int, tp_scores, fp_scores, x0: float = 0.0):
    """Truth on a line 1000 Å apart; candidate i < len(tp_scores) sits on truth i; FPs far away."""
    truth = pd.DataFrame([(run, name, x0 + 1000.0 * i, 500.0, 500.0) for i in range(n_truth)], columns=COLS)
    hits = [(run, name, x0 + 1000.0 * i, 505.0, 500.0, s) for i, s in enumerate(tp_scores)]
    fps = [(run, name, x0 + 1000.0 * i + 400.0, 9000.0, 500.0, s) for i, s in enumerate(fp_scores)]
    return pd.DataFrame(hits + fps, columns=COLS + ["score"]), truth


def test_tuning_recovers_a_planted_optimum():
    # apo-ferritin: 10 truths; 8 hits at 0.6–0.9, 2 hits at 0.30; 20 FPs at 0.35, 200 FPs at 0.10.
    # F4 on (0.35, 0.6]: P=1, R=.8 → .810; on (0.30, 0.35]: P=8/28 → .723; on (0.10, 0.30]: P=1/3, R=1 → .895;
    # at <= 0.10: P=10/230 → .436. The optimum is the interval (0.10, 0.30].
    c1, t1 = _planted("r1", "apo-ferritin", 10, list(np.linspace(0.6, 0.9, 8)) + [0.3, 0.3], [0.35] * 20 + [0.1] * 200)
    # thyroglobulin: the same hits but 200 FPs at 0.32 → its optimum is (0.32, 0.6] (F4 .810 vs .436)
    c2, t2 = _planted("r1", "thyroglobulin", 10, list(np.linspace(0.6, 0.9, 8)) + [0.3, 0.3], [0.32] * 200, x0=20000)
    cands, truth = pd.concat([c1, c2]), pd.concat([t1, t2])

    exact = tune_thresholds(cands, truth, tolerance=0)
    assert 0.10 < exact["apo-ferritin"] <= 0.30
    assert exact["apo-ferritin"] == pytest.approx(0.20)  # midpoint of the optimal gap
    assert 0.32 < exact["thyroglobulin"] <= 0.6
    table = score_at(cands, truth, exact).per_class.set_index("particle_type")
    assert table.loc["apo-ferritin", "f_beta"] == pytest.approx(_f4(10, 20, 0))
    assert table.loc["thyroglobulin", "f_beta"] == pytest.approx(_f4(8, 0, 2))

    on_grid = tune_thresholds(cands, truth, grid=np.round(np.arange(0, 1.0001, 0.05), 2), tolerance=0)
    assert on_grid["apo-ferritin"] in (0.15, 0.2, 0.25, 0.3)
    assert on_grid["apo-ferritin"] == 0.15  # ties go to the lowest threshold
    # classes without truth keep the default
    assert exact["ribosome"] == DEFAULT_THRESHOLDS["ribosome"]
    assert tune_thresholds(cands, truth, default={n: 0.42 for n in PARTICLE_NAMES})["ribosome"] == 0.42


def test_cross_fitted_score_is_honest_where_folds_disagree():
    # fold A: hits score 0.6 and FPs 0.4 (best: keep > 0.4); fold B: hits 0.4 and FPs 0.6 (best: keep all)
    ca, ta = _planted("runA", "apo-ferritin", 10, [0.6] * 10, [0.4] * 30)
    cb, tb = _planted("runB", "apo-ferritin", 10, [0.4] * 10, [0.6] * 30, x0=50000)
    cands, truth = pd.concat([ca, cb]), pd.concat([ta, tb])
    groups = {"runA": "fold0", "runB": "fold1"}

    in_sample = score_at(cands, truth, tune_thresholds(cands, truth, bootstrap=0))
    cross = cross_fitted_score(cands, truth, groups, bootstrap=0)
    assert 0.4 < cross.thresholds_by_fold["fold1"]["apo-ferritin"] <= 0.6  # tuned on fold A
    assert cross.thresholds_by_fold["fold0"]["apo-ferritin"] <= 0.4  # tuned on fold B
    counts = _brute_counts(cands, truth, lambda n, run: cross.thresholds_by_fold[groups[run]][n])
    assert cross.score == pytest.approx(_brute_score(counts), abs=1e-12)
    f_in = in_sample.per_class.set_index("particle_type").loc["apo-ferritin", "f_beta"]
    f_cross = cross.per_class.set_index("particle_type").loc["apo-ferritin", "f_beta"]
    assert f_in == pytest.approx(_f4(20, 60, 0)) and f_cross == pytest.approx(_f4(10, 60, 10))
    assert cross.score < in_sample.score

    # folds that agree: cross-fitting reproduces the in-sample score
    cc, tc = _planted("runC", "apo-ferritin", 10, [0.6] * 10, [0.4] * 30, x0=90000)
    agree_c, agree_t = pd.concat([ca, cc]), pd.concat([ta, tc])
    same = cross_fitted_score(agree_c, agree_t, {"runA": 0, "runC": 1}, bootstrap=0)
    assert same.score == pytest.approx(score_at(agree_c, agree_t, tune_thresholds(agree_c, agree_t, bootstrap=0)).score)

    with pytest.raises(ConfigError, match="at least 2 folds"):
        cross_fitted_score(cands, truth, {"runA": 0, "runB": 0})
    with pytest.raises(DataError, match="runB"):
        cross_fitted_score(cands, truth, {"runA": 0})


def test_bagged_thresholds_average_what_resampled_runs_agree_on():
    # runA alone is best kept above its FPs at 0.4 (threshold in (0.4, 0.6]); runB's hits score 0.4 under
    # FPs at 0.6, so alone it keeps everything (threshold <= 0.4). Pooled, one tuning takes one side.
    ca, ta = _planted("runA", "apo-ferritin", 10, [0.6] * 10, [0.4] * 30)
    cb, tb = _planted("runB", "apo-ferritin", 10, [0.4] * 10, [0.6] * 30, x0=50000)
    cands, truth = pd.concat([ca, cb]), pd.concat([ta, tb])
    alone = {run: tune_thresholds(c, t, bootstrap=0)["apo-ferritin"] for run, c, t in (("A", ca, ta), ("B", cb, tb))}
    assert alone["B"] <= 0.4 < alone["A"] <= 0.6
    bagged = tune_thresholds(cands, truth)["apo-ferritin"]  # BOOTSTRAP resamples: AA, AB, BA, BB
    assert BOOTSTRAP > 0 and alone["B"] < bagged < alone["A"]
    assert bagged not in (alone["A"], alone["B"], tune_thresholds(cands, truth, bootstrap=0)["apo-ferritin"])
    assert tune_thresholds(cands, truth) == tune_thresholds(cands, truth)  # a fixed seed: reproducible
    # one run: every resample is that run
    assert tune_thresholds(ca, ta) == tune_thresholds(ca, ta, bootstrap=0)
    # on a grid: a grid value
    grid = np.round(np.arange(0, 1.0001, 0.05), 2)
    assert tune_thresholds(cands, truth, grid=grid)["apo-ferritin"] in set(grid)
    for bad in (-1, 2.5, True):
        with pytest.raises(ConfigError, match="bootstrap"):
            tune_thresholds(cands, truth, bootstrap=bad)


def test_bad_tables_raise_clear_errors(synthetic):
    cands, truth = synthetic
    with pytest.raises(DataError, match=r"missing columns \['score'\]"):
        score_at(cands.drop(columns="score"), truth, 0.2)
    with pytest.raises(DataError, match="unknown particle types"):
        score_at(cands.assign(particle_type="ribosomes"), truth, 0.2)
    with pytest.raises(DataError, match=r"scores must lie in \[0, 1\]"):
        score_at(cands.assign(score=cands.score * 2), truth, 0.2)
    with pytest.raises(ConfigError, match="no value for"):
        score_at(cands, truth, {"ribosome": 0.2})


def test_thresholds_file_round_trip_and_bad_files(tmp_path):
    path = tmp_path / "out" / "thresholds.json"
    thr = {n: round(0.1 + 0.05 * i, 2) for i, n in enumerate(PARTICLE_NAMES)}
    save_thresholds(path, thr, report={"method": "exact", "score_default": 0.5, "score_cross_fitted": None})
    assert load_thresholds(path) == thr
    doc = json.loads(path.read_text())
    assert doc["method"] == "exact" and doc["score_cross_fitted"] is None and "created" in doc
    assert sorted(p.name for p in path.parent.iterdir()) == ["thresholds.json"]  # no temporary left

    with pytest.raises(ConfigError, match="must be a number in"):
        save_thresholds(tmp_path / "bad.json", {"ribosome": 1.5}, report={})
    assert not (tmp_path / "bad.json").exists()

    bad = {
        "missing.json": None,
        "notjson.json": "{thresholds: 0.2",
        "nokey.json": json.dumps({"apo-ferritin": 0.2}),
        "unknown.json": json.dumps({"thresholds": {"apoferritin": 0.2}}),
        "range.json": json.dumps({"thresholds": {"apo-ferritin": 1.2}}),
        "string.json": json.dumps({"thresholds": {"apo-ferritin": "0.2"}}),
        "bool.json": json.dumps({"thresholds": {"apo-ferritin": True}}),
    }
    for name, text in bad.items():
        if text is not None:
            (tmp_path / name).write_text(text)
        with pytest.raises(ConfigError, match=name):
            load_thresholds(tmp_path / name)


def _write_fold(run_dir, fold: str, cands: pd.DataFrame, truth: pd.DataFrame, overrides=()) -> str:
    oof = run_dir / fold / "oof"
    oof.mkdir(parents=True)
    cands.to_csv(oof / "candidates.csv", index=False)
    truth.to_csv(oof / "truth.csv", index=False)
    return _write_oof_spec(oof, overrides)


def test_tune_records_the_spec_of_the_candidates_and_refuses_mixed_or_unrecorded_specs(tmp_path, capsys):
    cands, truth = _synthetic(5, runs=("TS_1", "TS_2"))
    cands = cands[cands.experiment != "TS_not_in_truth"]
    run_dir = tmp_path / "exp"
    h0 = _write_fold(run_dir, "fold0", cands[cands.experiment == "TS_1"], truth[truth.experiment == "TS_1"])
    h1 = _write_fold(run_dir, "fold1", cands[cands.experiment == "TS_2"], truth[truth.experiment == "TS_2"])
    assert h0 == h1
    report = tune_run_dir(run_dir)
    doc = json.loads((run_dir / "thresholds.json").read_text())
    assert report.spec_hash == doc["spec_hash"] == h0 and doc["spec"]["tta"] == ["identity", "flip_z", "flip_y",
                                                                                 "flip_x"]

    mixed = tmp_path / "mixed"
    _write_fold(mixed, "fold0", cands[cands.experiment == "TS_1"], truth[truth.experiment == "TS_1"])
    h_other = _write_fold(mixed, "fold1", cands[cands.experiment == "TS_2"], truth[truth.experiment == "TS_2"],
                          overrides=("infer.tta=flips_rot90",))
    assert h_other != h0
    assert main(["tune", "--run-dir", str(mixed)]) == 2
    err = capsys.readouterr().err
    assert "different predictor specs" in err and h0 in err and h_other in err
    assert not (mixed / "thresholds.json").exists()

    (run_dir / "fold1" / "oof" / "spec.json").unlink()
    assert main(["tune", "--run-dir", str(run_dir), "--out", str(tmp_path / "t.json")]) == 2
    assert "spec.json not found" in capsys.readouterr().err and not (tmp_path / "t.json").exists()


def test_cli_tune_on_a_hand_made_run_dir(tmp_path, capsys):
    cands, truth = _synthetic(3, runs=("TS_1", "TS_2", "TS_3", "TS_4"))
    cands = cands[cands.experiment != "TS_not_in_truth"]
    run_dir = tmp_path / "runs" / "exp"
    folds = {"fold0": ["TS_1", "TS_2"], "fold1": ["TS_3"], "fold2": ["TS_4"]}
    for fold, runs in folds.items():
        _write_fold(run_dir, fold, cands[cands.experiment.isin(runs)], truth[truth.experiment.isin(runs)])
    (run_dir / "fold3").mkdir()  # an unfinished fold: skipped with a note

    assert main(["tune", "--run-dir", str(run_dir)]) == 0
    out = capsys.readouterr().out
    tuned = tune_thresholds(cands, truth)
    assert load_thresholds(run_dir / "thresholds.json") == pytest.approx(tuned)
    groups = {run: fold for fold, runs in folds.items() for run in runs}
    expected = {
        "default thresholds": score_at(cands, truth, DEFAULT_THRESHOLDS).score,
        "in-sample": score_at(cands, truth, tuned).score,
        "cross-fitted": cross_fitted_score(cands, truth, groups).score,
    }
    for label, value in expected.items():
        line = next(line for line in out.splitlines() if label in line)
        assert f"{value:.4f}" in line, (label, line)
    assert "skipped fold3" in out
    doc = json.loads((run_dir / "thresholds.json").read_text())
    assert doc["score_cross_fitted"] == pytest.approx(expected["cross-fitted"])
    assert doc["runs"] == ["TS_1", "TS_2", "TS_3", "TS_4"]
    for name in PARTICLE_NAMES:
        assert name in out

    # a single fold: in-sample only, said so; --out and a grid
    single = tmp_path / "single"
    _write_fold(single, "fold0", cands, truth)
    target = tmp_path / "elsewhere" / "thr.json"
    assert main(["tune", "--run-dir", str(single), "--out", str(target), "--grid", "0.05:0.95:0.05"]) == 0
    out = capsys.readouterr().out
    assert "needs >= 2 folds" in out
    assert set(load_thresholds(target).values()) <= {round(v, 2) for v in np.arange(0.05, 0.951, 0.05)}
    assert not (single / "thresholds.json").exists()
    assert json.loads(target.read_text())["margin"] == MARGIN

    # --margin 0: the tolerance alone, recorded
    assert main(["tune", "--run-dir", str(single), "--out", str(target), "--margin", "0"]) == 0
    assert load_thresholds(target) == pytest.approx(tune_thresholds(cands, truth, margin=0))
    assert json.loads(target.read_text())["margin"] == 0

    # --bootstrap 0: one tuning on the runs as they are, recorded (the default's count otherwise)
    assert json.loads((run_dir / "thresholds.json").read_text())["bootstrap"] == BOOTSTRAP
    assert main(["tune", "--run-dir", str(single), "--out", str(target), "--bootstrap", "0"]) == 0
    assert load_thresholds(target) == pytest.approx(tune_thresholds(cands, truth, bootstrap=0))
    assert json.loads(target.read_text())["bootstrap"] == 0
    assert tune_thresholds(cands, truth, bootstrap=0) != tune_thresholds(cands, truth)


def test_cli_tune_errors(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert main(["tune", "--run-dir", str(tmp_path / "empty")]) == 2
    err = capsys.readouterr().err
    assert "fold<K>/oof/candidates.csv" in err and "fold<K>/oof/truth.csv" in err
    assert not (tmp_path / "empty" / "thresholds.json").exists()

    cands, truth = _synthetic(4, runs=("TS_1",))
    _write_fold(tmp_path / "half", "fold0", cands, truth)
    (tmp_path / "half" / "fold0" / "oof" / "truth.csv").unlink()
    assert main(["tune", "--run-dir", str(tmp_path / "half")]) == 2
    assert "has candidates.csv but not truth.csv" in capsys.readouterr().err

    _write_fold(tmp_path / "stray", "fold0", cands, truth[truth.experiment == "nothing"])
    assert main(["tune", "--run-dir", str(tmp_path / "stray")]) == 2
    assert "not in truth.csv" in capsys.readouterr().err

    # a bad argument is refused before any file is read (these candidates also hold a stray run)
    _write_fold(tmp_path / "margin", "fold0", cands, truth)
    assert main(["tune", "--run-dir", str(tmp_path / "margin"), "--margin", "2"]) == 2
    assert "score margin must be in [0, 1]" in capsys.readouterr().err
    assert not (tmp_path / "margin" / "thresholds.json").exists()
