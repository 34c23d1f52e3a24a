"""czii.metric: one hand-computed case per Kaggle-scorer quirk, plus a brute-force cross-check.

Weights (czii.particles): apo-ferritin 1, beta-amylase 0, beta-galactosidase 2, ribosome 1,
thyroglobulin 2, virus-like-particle 1; the score divides by their sum, 7. F4 with
P = precision, R = recall is 17·P·R / (16·P + R).
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from czii.errors import SubmissionError
from czii.metric import format_table, score
from czii.particles import PARTICLE_NAMES, PARTICLES, TOTAL_WEIGHT, get_particle

APO = "apo-ferritin"
R_APO = get_particle(APO).match_radius_A  # 0.5 × 60 Å = 30 Å
ORIGIN = (1000.0, 1000.0, 1000.0)


def picks(*rows) -> pd.DataFrame:
    """rows: (experiment, particle_type, x, y, z)."""
    return pd.DataFrame(list(rows), columns=["experiment", "particle_type", "x", "y", "z"])


def shifted(dx: float = 0.0, dy: float = 0.0, dz: float = 0.0) -> tuple[float, float, float]:
    return ORIGIN[0] + dx, ORIGIN[1] + dy, ORIGIN[2] + dz


def f4(p: float, r: float) -> float:
    return 17 * p * r / (16 * p + r)


def test_weights_sum_to_seven():
    assert TOTAL_WEIGHT == 7.0


def test_exact_radius_is_inclusive():
    # truth and prediction exactly 30 Å apart along x (1030 − 1000 is exact in float):
    # tp=1, fp=0, fn=0 → F4(apo)=1 → score = 1·1 / 7
    sol = picks(("TS_A", APO, *ORIGIN))
    sub = picks(("TS_A", APO, *shifted(dx=R_APO)))
    report = score(sol, sub)
    assert report.table.loc[APO, ["tp", "fp", "fn"]].tolist() == [1, 0, 0]
    assert report.score == pytest.approx(1 / 7)


def test_exact_radius_on_a_diagonal_is_inclusive():
    # offset (18, 24, 0): 18² + 24² = 900 = 30² exactly → still a hit
    sol = picks(("TS_A", APO, *ORIGIN))
    sub = picks(("TS_A", APO, *shifted(dx=0.6 * R_APO, dy=0.8 * R_APO)))
    assert score(sol, sub).table.loc[APO, "tp"] == 1


def test_just_outside_radius_is_not_found():
    # 30.001 Å apart: tp=0, fp=1, fn=1 → P=R=0 → F4=0 → score 0
    sol = picks(("TS_A", APO, *ORIGIN))
    sub = picks(("TS_A", APO, *shifted(dx=R_APO + 1e-3)))
    report = score(sol, sub)
    assert report.table.loc[APO, ["tp", "fp", "fn"]].tolist() == [0, 1, 1]
    assert report.score == 0.0


def test_duplicate_predictions_on_one_truth_give_one_tp_and_fps():
    # 3 predictions within 30 Å of the single truth point: matched set {0} → tp=1, fp=3−1=2, fn=0
    # P=1/3, R=1 → F4 = 17·(1/3) / (16/3 + 1) = 17/19 → score = 17/19 / 7
    sol = picks(("TS_A", APO, *ORIGIN))
    sub = picks(*[("TS_A", APO, *shifted(dx=d)) for d in (0.0, 5.0, -10.0)])
    report = score(sol, sub)
    assert report.table.loc[APO, ["tp", "fp", "fn"]].tolist() == [1, 2, 0]
    assert report.table.loc[APO, "f_beta"] == pytest.approx(17 / 19)
    assert report.score == pytest.approx(17 / 19 / 7)


def test_one_prediction_between_two_truths_gives_two_tps_and_negative_fp():
    # ribosome radius 150 Å → match radius 75 Å; truths 100 Å apart, prediction in the middle
    # is 50 Å from both: matched set {0, 1} → tp=2, fp=1−2=−1, fn=2−2=0
    # P = 2/(2−1) = 2, R = 2/2 = 1 → F4 = 17·2·1 / (16·2 + 1) = 34/33; weight 1 → score = 34/33 / 7
    rib = "ribosome"
    assert get_particle(rib).match_radius_A == 75.0
    sol = picks(("TS_A", rib, *shifted(dx=-50.0)), ("TS_A", rib, *shifted(dx=50.0)))
    sub = picks(("TS_A", rib, *ORIGIN))
    report = score(sol, sub)
    assert report.table.loc[rib, ["tp", "fp", "fn"]].tolist() == [2, -1, 0]
    assert report.table.loc[rib, "precision"] == pytest.approx(2.0)
    assert report.score == pytest.approx(34 / 33 / 7)


def test_runs_outside_solution_are_ignored():
    # run TS_A: 1 truth, 1 exact prediction → tp=1, fp=0. The 5 predictions in TS_B (not in the
    # solution), one of an unknown type, are dropped before anything is checked or counted.
    # score = F4(apo)=1 · 1 / 7
    sol = picks(("TS_A", APO, *ORIGIN))
    sub = picks(
        ("TS_A", APO, *ORIGIN),
        *[("TS_B", APO, *shifted(dx=100.0 * i)) for i in range(4)],
        ("TS_B", "not-a-protein", *ORIGIN),
    )
    report = score(sol, sub)
    assert report.table.loc[APO, ["tp", "fp", "fn"]].tolist() == [1, 0, 0]
    assert report.score == pytest.approx(1 / 7)


def test_unknown_particle_type_is_rejected():
    sol = picks(("TS_A", APO, *ORIGIN))
    sub = picks(("TS_A", APO, *ORIGIN), ("TS_A", "apoferritin", *ORIGIN), ("TS_A", "Ribosome", *ORIGIN))
    with pytest.raises(SubmissionError, match=r"apoferritin.*Ribosome|Ribosome.*apoferritin"):
        score(sol, sub)


def test_class_absent_from_solution_still_counts_in_denominator():
    # solution: one point of every class except thyroglobulin (weight 2); perfect predictions for
    # those five plus thyroglobulin predictions (ignored: no thyroglobulin in the solution).
    # score = (1 + 0 + 2 + 1 + 1) / 7 = 5/7, not 5/5
    present = [n for n in PARTICLE_NAMES if n != "thyroglobulin"]
    sol = picks(*[("TS_A", n, *shifted(dx=1000.0 * i)) for i, n in enumerate(present)])
    sub = pd.concat([sol, picks(("TS_A", "thyroglobulin", *ORIGIN))], ignore_index=True)
    report = score(sol, sub)
    assert report.score == pytest.approx(5 / 7)
    assert report.table.loc["thyroglobulin", ["tp", "fp", "fn", "f_beta"]].tolist() == [0, 0, 0, 0.0]


def test_beta_amylase_weight_zero_does_not_change_score():
    # apo-ferritin perfect (F4=1, weight 1); beta-amylase either perfect or entirely missed:
    # score = (1·1 + 0·F) / 7 = 1/7 in both cases, while the beta-amylase F4 differs (1 vs 0)
    amy = "beta-amylase"
    sol = picks(("TS_A", APO, *ORIGIN), ("TS_A", amy, *shifted(dx=500.0)))
    hit = score(sol, sol)
    miss = score(sol, picks(("TS_A", APO, *ORIGIN)))
    assert hit.table.loc[amy, "f_beta"] == 1.0
    assert miss.table.loc[amy, "f_beta"] == 0.0
    assert hit.score == pytest.approx(1 / 7)
    assert miss.score == pytest.approx(1 / 7)


def test_counts_are_summed_over_runs_before_f_beta():
    # TS_A: 1 truth, 1 exact prediction → (tp, fp, fn) = (1, 0, 0)
    # TS_B: 3 truths, no predictions      → (0, 0, 3)
    # summed: tp=1, fp=0, fn=3 → P=1, R=1/4 → F4 = 17·1·(1/4) / (16 + 1/4) = 17/65
    # (averaging per-run F4 would give (1 + 0)/2 = 1/2)
    sol = picks(("TS_A", APO, *ORIGIN), *[("TS_B", APO, *shifted(dx=200.0 * i)) for i in range(3)])
    sub = picks(("TS_A", APO, *ORIGIN))
    report = score(sol, sub)
    assert report.table.loc[APO, ["tp", "fp", "fn"]].tolist() == [1, 0, 3]
    assert report.table.loc[APO, "f_beta"] == pytest.approx(17 / 65)
    assert report.score == pytest.approx(17 / 65 / 7)


def _random_solution(rng: np.random.Generator, n_per_class: int = 5) -> pd.DataFrame:
    rows = [
        (run, n, *rng.uniform(0, 6000, 3))
        for run in ("TS_A", "TS_B")
        for n in PARTICLE_NAMES
        for _ in range(n_per_class)
    ]
    return picks(*rows)


def test_perfect_submission_scores_one():
    # every truth point predicted exactly: tp = n_truth, fp = 0, fn = 0 for all six classes → Σw·1 / 7 = 1
    sol = _random_solution(np.random.default_rng(0))
    report = score(sol, sol.sample(frac=1.0, random_state=1))
    assert (report.table["fp"] == 0).all() and (report.table["fn"] == 0).all()
    assert report.score == pytest.approx(1.0)


def test_empty_submission_scores_zero():
    # no predictions: tp=0, fn=n_truth → R=0, P=0 → F4=0 for every class → 0
    sol = _random_solution(np.random.default_rng(0))
    report = score(sol, picks())
    assert report.score == 0.0
    assert report.table["fn"].sum() == len(sol)


def test_distance_multiplier_and_beta_are_used():
    # prediction 40 Å from truth: outside 0.5·60=30 Å, inside 1.0·60=60 Å.
    # beta=1, fp=1 extra: tp=1, fp=1, fn=0 → P=1/2, R=1 → F1 = 2·(1/2)/(3/2) = 2/3 → score 2/3 / 7
    sol = picks(("TS_A", APO, *ORIGIN))
    sub = picks(("TS_A", APO, *shifted(dx=40.0)), ("TS_A", APO, *shifted(dx=500.0)))
    assert score(sol, sub).table.loc[APO, "tp"] == 0
    report = score(sol, sub, beta=1.0, distance_multiplier=1.0)
    assert report.score == pytest.approx(2 / 3 / 7)


def test_duplicate_solution_rows_are_rejected():
    sol = picks(("TS_A", APO, *ORIGIN), ("TS_A", "ribosome", *ORIGIN))
    with pytest.raises(SubmissionError, match="duplicate"):
        score(sol, picks())


def test_missing_columns_and_nan_are_named():
    sol = picks(("TS_A", APO, *ORIGIN))
    with pytest.raises(SubmissionError, match=r"submission is missing columns \['z'\]"):
        score(sol, picks(("TS_A", APO, *ORIGIN)).drop(columns="z"))
    with pytest.raises(SubmissionError, match=r"solution has NaN/inf in columns \['y'\] at rows 1"):
        score(picks(("TS_A", APO, *ORIGIN), ("TS_A", APO, 1.0, np.nan, 2.0)), picks())


def test_report_table_json_and_text():
    # duplicate-prediction case: apo tp=1, fp=2 → F4 = 17/19; score = 17/19 / 7
    sol = picks(("TS_A", APO, *ORIGIN))
    sub = picks(*[("TS_A", APO, *shifted(dx=d)) for d in (0.0, 5.0, -10.0)])
    report = score(sol, sub)
    assert list(report.table.index) == list(PARTICLE_NAMES)
    assert list(report.table.columns) == ["tp", "fp", "fn", "precision", "recall", "f_beta", "weight"]
    assert report.table["weight"].tolist() == [p.weight for p in PARTICLES]
    data = json.loads(json.dumps(report.to_dict()))
    assert data["score"] == pytest.approx(17 / 19 / 7)
    assert data["classes"][APO] == {
        "tp": 1, "fp": 2, "fn": 0, "precision": pytest.approx(1 / 3), "recall": 1.0,
        "f_beta": pytest.approx(17 / 19), "weight": 1.0,
    }
    text = format_table(report)
    lines = text.splitlines()
    assert lines[0].split() == ["particle_type", "TP", "FP", "FN", "precision", "recall", "F4", "weight"]
    assert lines[2].split()[:4] == [APO, "1", "2", "0"]
    assert len({len(line) for line in lines[:-1]}) == 1  # columns aligned
    assert lines[-1] == f"weighted F4: {17 / 19 / 7:.6f}"


def _brute_force_score(sol: pd.DataFrame, sub: pd.DataFrame) -> tuple[float, dict[str, tuple[int, int, int]]]:
    """O(N·M) reference: full distance matrix per run and class."""
    runs = set(sol["experiment"])
    sub = sub[sub["experiment"].isin(runs)]
    counts = {}
    total = 0.0
    for p in PARTICLES:
        tp = fp = fn = 0
        if (sol["particle_type"] == p.name).any():
            for run in runs:
                t = sol[(sol.experiment == run) & (sol.particle_type == p.name)][["x", "y", "z"]].to_numpy()
                c = sub[(sub.experiment == run) & (sub.particle_type == p.name)][["x", "y", "z"]].to_numpy()
                dist = np.sqrt(((c[:, None, :] - t[None, :, :]) ** 2).sum(axis=-1))
                found = int((dist <= 0.5 * p.radius_A).any(axis=0).sum()) if len(c) else 0
                tp, fp, fn = tp + found, fp + len(c) - found, fn + len(t) - found
        prec = tp / (tp + fp) if tp + fp > 0 else 0.0
        rec = tp / (tp + fn) if tp + fn > 0 else 0.0
        total += p.weight * (f4(prec, rec) if prec + rec > 0 else 0.0)
        counts[p.name] = (tp, fp, fn)
    return total / 7.0, counts


def _random_case(seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Crowded truth points (some classes absent), predictions jittered around them, repeated and random."""
    rng = np.random.default_rng(seed)
    types = list(PARTICLE_NAMES[: 3 + seed % 4])
    box_A = rng.uniform(200, 500)  # small boxes: truths close together, predictions hitting several
    sol = picks(
        *[
            (run, t, *rng.uniform(0, box_A, 3))
            for run in ("r1", "r2", "r3")
            for t in types
            for _ in range(rng.integers(10))
        ]
    )
    near = sol.sample(frac=1.5, replace=True, random_state=seed)
    near[["x", "y", "z"]] += rng.normal(0, 30, (len(near), 3))
    far = picks(
        *[
            (run, t, *rng.uniform(0, box_A, 3))
            for run in ("r1", "r2", "other")
            for t in PARTICLE_NAMES
            for _ in range(rng.integers(5))
        ]
    )
    return sol, pd.concat([near, far], ignore_index=True)


@pytest.mark.parametrize("seed", range(8))
def test_matches_brute_force_on_random_points(seed):
    sol, sub = _random_case(seed)
    expected_score, expected_counts = _brute_force_score(sol, sub)
    report = score(sol, sub)
    for name, counts in expected_counts.items():
        assert tuple(report.table.loc[name, ["tp", "fp", "fn"]]) == counts, name
    assert report.score == pytest.approx(expected_score, abs=1e-12)
