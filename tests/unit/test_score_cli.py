"""``czii score`` run in-process on CSV files, a copick project and a Kaggle directory.

Hand-computed case used throughout (weights: apo-ferritin 1, ribosome 1; total 7):
TS_1 apo-ferritin: 1 truth, 1 prediction 10 Å away (≤ 30 Å) → tp=1, fp=0, fn=0 → F4 = 1
TS_1 ribosome: 2 truths, 1 prediction on the first → tp=1, fp=0, fn=1 → P=1, R=1/2
    → F4 = 17·1·(1/2) / (16 + 1/2) = 17/33
score = (1 + 17/33) / 7 = 50/231
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from czii.cli import main
from czii.formats.picks_json import picks_document, write_picks_json
from czii.particles import PARTICLES

EXPECTED_SCORE = 50 / 231
TRUTH = pd.DataFrame(
    [
        ("TS_1", "apo-ferritin", 1000.0, 1000.0, 1000.0),
        ("TS_1", "ribosome", 2000.0, 2000.0, 500.0),
        ("TS_1", "ribosome", 3000.0, 2000.0, 500.0),
    ],
    columns=["experiment", "particle_type", "x", "y", "z"],
)
PREDICTIONS = pd.DataFrame(
    [
        (0, "TS_1", "apo-ferritin", 1010.0, 1000.0, 1000.0),
        (1, "TS_1", "ribosome", 2000.0, 2000.0, 500.0),
    ],
    columns=["id", "experiment", "particle_type", "x", "y", "z"],
)


@pytest.fixture
def csvs(tmp_path: Path) -> tuple[Path, Path]:
    sub, sol = tmp_path / "submission.csv", tmp_path / "solution.csv"
    PREDICTIONS.to_csv(sub, index=False)
    TRUTH.assign(fold=0).to_csv(sol, index=False)  # an extra column in the solution is ignored
    return sub, sol


def test_score_prints_table_and_weighted_score(csvs, capsys):
    sub, sol = csvs
    assert main(["score", "--submission", str(sub), "--solution", str(sol)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["particle_type", "TP", "FP", "FN", "precision", "recall", "F4", "weight"]
    rows = {line.split()[0]: line.split()[1:] for line in lines[2:-1]}
    assert list(rows) == [p.name for p in PARTICLES]
    assert rows["ribosome"][:3] == ["1", "0", "1"]
    assert float(rows["ribosome"][5]) == pytest.approx(17 / 33, abs=5e-5)
    assert lines[-1] == f"weighted F4: {EXPECTED_SCORE:.6f}"


def test_score_json(csvs, capsys):
    sub, sol = csvs
    assert main(["score", "--submission", str(sub), "--solution", str(sol), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["score"] == pytest.approx(EXPECTED_SCORE)
    assert (data["classes"]["apo-ferritin"]["tp"], data["classes"]["ribosome"]["fn"]) == (1, 1)
    assert set(data["classes"]) == {p.name for p in PARTICLES}


def test_missing_submission_file_exits_2_with_one_line(csvs, capsys):
    _, sol = csvs
    missing = sol.parent / "nope.csv"
    assert main(["score", "--submission", str(missing), "--solution", str(sol)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.count("\n") == 1
    assert captured.err.startswith("czii score: error:") and str(missing) in captured.err


def test_unknown_particle_type_exits_2_with_one_line(csvs, capsys):
    sub, sol = csvs
    PREDICTIONS.assign(particle_type=["apo-ferritin", "ribosomes"]).to_csv(sub, index=False)
    assert main(["score", "--submission", str(sub), "--solution", str(sol)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "['ribosomes']" in err


def _write_run_picks(picks_dir: Path, truth: pd.DataFrame, file_name) -> None:
    for name, rows in truth.groupby("particle_type"):
        doc = picks_document(name, rows["experiment"].iloc[0], rows[["x", "y", "z"]].to_numpy())
        write_picks_json(picks_dir / file_name(name), doc)


def test_score_against_copick_project(tmp_path, csvs, capsys):
    root = tmp_path / "project"
    (root / "static" / "ExperimentRuns" / "TS_1").mkdir(parents=True)
    _write_run_picks(root / "overlay" / "ExperimentRuns" / "TS_1" / "Picks", TRUTH, lambda n: f"curation_0_{n}.json")
    config = root / "copick_config.json"
    config.write_text(json.dumps({
        "config_type": "filesystem",
        "name": "score test",
        "pickable_objects": [
            {"name": p.name, "is_particle": True, "label": p.label, "radius": p.radius_A} for p in PARTICLES
        ],
        "static_root": f"local://{root / 'static'}",
        "overlay_root": f"local://{root / 'overlay'}",
    }))
    sub, _ = csvs
    assert main(["score", "--submission", str(sub), "--solution", str(config), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["score"] == pytest.approx(EXPECTED_SCORE)


def test_score_against_kaggle_directory(tmp_path, csvs, capsys, monkeypatch):
    monkeypatch.setenv("CZII_CACHE", str(tmp_path / "cache"))
    kaggle = tmp_path / "kaggle"
    (kaggle / "train" / "static" / "ExperimentRuns" / "TS_1").mkdir(parents=True)
    _write_run_picks(kaggle / "train" / "overlay" / "ExperimentRuns" / "TS_1" / "Picks", TRUTH, lambda n: f"{n}.json")
    before = sorted(p.relative_to(kaggle) for p in kaggle.rglob("*"))
    sub, _ = csvs
    argv = ["score", "--submission", str(sub), "--solution", str(kaggle)]
    assert main(argv + ["--split", "train", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["score"] == pytest.approx(EXPECTED_SCORE)
    assert sorted(p.relative_to(kaggle) for p in kaggle.rglob("*")) == before  # input untouched
    # the test split has no runs here: a clear one-line error, exit 2
    assert main(argv + ["--split", "test"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "'test'" in err



def test_score_runs_the_submission_validator_duplicate_ids(csvs, capsys):
    sub, sol = csvs
    PREDICTIONS.assign(id=[3, 3]).to_csv(sub, index=False)
    assert main(["score", "--submission", str(sub), "--solution", str(sol)]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.count("\n") == 1 and "duplicate ids 3" in captured.err


def test_score_refuses_a_submission_sharing_no_experiment_and_warns_on_partial_overlap(csvs, capsys):
    sub, sol = csvs
    PREDICTIONS.assign(experiment="TS_other").to_csv(sub, index=False)
    assert main(["score", "--submission", str(sub), "--solution", str(sol)]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.count("\n") == 1
    assert "shares no experiment" in captured.err and "TS_other" in captured.err and "TS_1" in captured.err

    TRUTH.assign(experiment=["TS_1", "TS_1", "TS_2"]).to_csv(sol, index=False)
    PREDICTIONS.to_csv(sub, index=False)
    assert main(["score", "--submission", str(sub), "--solution", str(sol), "--json"]) == 0
    captured = capsys.readouterr()
    assert "1 of the solution's 2 experiments" in captured.err and "TS_2" in captured.err
    assert json.loads(captured.out)["score"] == pytest.approx(EXPECTED_SCORE)  # TS_2 truth was a miss either way
