"""czii.submission: building, validating, writing and reading submission / solution tables."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from czii.data import load_solution
from czii.errors import SubmissionError
from czii.geometry import extent_xyz_A
from czii.submission import (
    read_submission,
    to_submission,
    validate_submission,
    write_submission,
)

SPACING_A = 10.0
SHAPE_ZYX = (32, 48, 64)


def picks(*rows, score: bool = False) -> pd.DataFrame:
    df = pd.DataFrame(list(rows), columns=["experiment", "particle_type", "x", "y", "z"])
    if score:
        df["score"] = np.linspace(0.9, 0.1, len(df))
    return df


@pytest.fixture
def sub() -> pd.DataFrame:
    return to_submission(
        picks(
            ("TS_b", "ribosome", 100.0, 200.0, 50.0),
            ("TS_a", "thyroglobulin", 10.0, 20.0, 30.0),
            ("TS_b", "apo-ferritin", 1.0, 2.0, 3.0),
            ("TS_a", "thyroglobulin", 11.0, 21.0, 31.0),
            ("TS_a", "apo-ferritin", 5.0, 5.0, 5.0),
        )
    )


def test_to_submission_columns_ids_and_stable_order():
    src = picks(
        ("TS_b", "ribosome", 100.0, 200.0, 50.0),
        ("TS_a", "thyroglobulin", 10.0, 20.0, 30.0),
        ("TS_b", "apo-ferritin", 1.0, 2.0, 3.0),
        ("TS_a", "thyroglobulin", 11.0, 21.0, 31.0),
        ("TS_a", "apo-ferritin", 5.0, 5.0, 5.0),
        score=True,
    )
    out = to_submission(src)
    assert list(out.columns) == ["id", "experiment", "particle_type", "x", "y", "z"]
    assert out["id"].tolist() == [0, 1, 2, 3, 4]
    assert list(zip(out.experiment, out.particle_type)) == [
        ("TS_a", "apo-ferritin"),
        ("TS_a", "thyroglobulin"),
        ("TS_a", "thyroglobulin"),
        ("TS_b", "apo-ferritin"),
        ("TS_b", "ribosome"),
    ]
    # equal keys keep their input order (stable sort): x=10 came before x=11
    assert out["x"].tolist()[1:3] == [10.0, 11.0]
    validate_submission(out)


def test_to_submission_requires_pick_columns():
    with pytest.raises(SubmissionError, match=r"picks is missing columns \['particle_type'\]"):
        to_submission(pd.DataFrame({"experiment": ["a"], "x": [1.0], "y": [1.0], "z": [1.0]}))


def test_validate_rejects_wrong_columns(sub):
    with pytest.raises(SubmissionError, match="exactly"):
        validate_submission(sub.drop(columns="id"))
    with pytest.raises(SubmissionError, match="score"):
        validate_submission(sub.assign(score=1.0))


@pytest.mark.parametrize("value", [np.nan, np.inf])
def test_validate_rejects_non_finite(sub, value):
    sub.loc[3, "y"] = value
    with pytest.raises(SubmissionError, match=r"\['y'\] at rows 3"):
        validate_submission(sub)


def test_validate_rejects_unknown_types(sub):
    sub.loc[1, "particle_type"] = "ferritin"
    with pytest.raises(SubmissionError, match="ferritin"):
        validate_submission(sub)


def test_validate_rejects_duplicate_and_non_integer_ids(sub):
    sub.loc[4, "id"] = 2
    with pytest.raises(SubmissionError, match=r"duplicate ids 2"):
        validate_submission(sub)
    sub["id"] = [0, 1, 2.5, 3, 4]
    with pytest.raises(SubmissionError, match="integers.*rows 2"):
        validate_submission(sub)


def test_validate_runs(sub):
    validate_submission(sub, runs=["TS_a", "TS_b", "TS_c"])
    with pytest.raises(SubmissionError, match=r"\['TS_b'\]"):
        validate_submission(sub, runs=["TS_a"])


def test_validate_extents_upper_bound_inclusive(sub):
    extent = extent_xyz_A(SHAPE_ZYX, SPACING_A)  # x: (64 − 0.5)·10 = 635 Å, y: 475 Å, z: 315 Å
    extents = {"TS_a": extent, "TS_b": extent}
    sub.loc[0, ["x", "y", "z"]] = [635.0, 475.0, 315.0]
    validate_submission(sub, extents_xyz_A=extents)
    sub.loc[4, "z"] = 315.5
    with pytest.raises(SubmissionError, match=r"run 'TS_b': row 4 has z=315.500"):
        validate_submission(sub, extents_xyz_A=extents)


def test_validate_extents_lower_bound(sub):
    extents = {"TS_a": extent_xyz_A(SHAPE_ZYX, SPACING_A)}
    sub.loc[2, "y"] = -4.0  # row 2 is TS_a: within half a voxel (5 Å) below the first voxel centre
    validate_submission(sub, extents_xyz_A=extents, spacing_zyx_A=SPACING_A)
    with pytest.raises(SubmissionError, match=r"run 'TS_a': row 2 has y=-4.000"):
        validate_submission(sub, extents_xyz_A=extents)  # without a spacing the bound is 0
    sub.loc[2, "y"] = -6.0
    with pytest.raises(SubmissionError, match=r"row 2 has y=-6.000 Å outside \[-5.000, 475.000\]"):
        validate_submission(sub, extents_xyz_A=extents, spacing_zyx_A=SPACING_A)


def test_write_and_read_roundtrip(tmp_path, sub):
    path = write_submission(sub, tmp_path / "out" / "submission.csv", runs=["TS_a", "TS_b"])
    back = read_submission(path)
    pd.testing.assert_frame_equal(back, sub, check_dtype=False)
    assert [p.name for p in path.parent.iterdir()] == ["submission.csv"]


def test_write_failure_leaves_nothing(tmp_path, sub):
    target = tmp_path / "submission.csv"
    target.write_text("previous\n")
    sub.loc[0, "particle_type"] = "nope"
    with pytest.raises(SubmissionError, match="nope"):
        write_submission(sub, target)
    assert target.read_text() == "previous\n"
    assert [p.name for p in tmp_path.iterdir()] == ["submission.csv"]


def test_read_submission_errors(tmp_path):
    with pytest.raises(SubmissionError, match="does not exist"):
        read_submission(tmp_path / "missing.csv")
    ragged = tmp_path / "ragged.csv"
    ragged.write_text("id,experiment,particle_type,x,y,z\n0,TS_a,ribosome,1,2,3\n1,TS_a,ribosome,1,2,3,4,5\n")
    with pytest.raises(SubmissionError, match=f"{ragged.name} is not a readable CSV"):
        read_submission(ragged)
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    with pytest.raises(SubmissionError, match="not a readable CSV"):
        read_submission(empty)
    no_z = tmp_path / "no_z.csv"
    no_z.write_text("experiment,particle_type,x,y\nTS_a,ribosome,1,2\n")
    with pytest.raises(SubmissionError, match=r"no_z.csv is missing columns \['z'\]"):
        read_submission(no_z)


def test_load_solution_csv_ignores_extra_columns(tmp_path):
    path = tmp_path / "truth.csv"
    path.write_text("x,y,z,particle_type,experiment,fold\n1.5,2,3,ribosome,7,0\n4,5,6,apo-ferritin,TS_a,1\n")
    sol = load_solution(path)
    assert list(sol.columns) == ["experiment", "particle_type", "x", "y", "z"]
    assert sol["experiment"].tolist() == ["7", "TS_a"]  # run names stay strings
    assert sol["x"].tolist() == [1.5, 4.0]


def test_load_solution_errors(tmp_path):
    with pytest.raises(SubmissionError, match="does not exist"):
        load_solution(tmp_path / "nope.csv")
    other = tmp_path / "truth.txt"
    other.write_text("x")
    with pytest.raises(SubmissionError, match="must be a CSV file, a copick config JSON or a Kaggle directory"):
        load_solution(other)
    header_only = tmp_path / "header.csv"
    header_only.write_text("experiment,particle_type,x,y,z\n")
    with pytest.raises(SubmissionError, match="no truth picks"):
        load_solution(header_only)


def test_rows_keep_their_order_within_a_run_and_class_and_scores_travel_with_them():
    """A stable sort: with 200 picks over two runs and two classes, each (run, class) group keeps the order it
    came in (quicksort would reorder equal keys), and keep_score carries each pick's own score."""
    rng = np.random.default_rng(0)
    n = 200
    table = pd.DataFrame({"experiment": rng.choice(["TS_b", "TS_a"], n), "particle_type":
                          rng.choice(["ribosome", "apo-ferritin"], n), "x": np.arange(n, dtype=float), "y": 1.0,
                          "z": 2.0, "score": (np.arange(n) + 0.5) / n})
    out = to_submission(table, keep_score=True)
    assert list(out.columns) == ["id", "experiment", "particle_type", "x", "y", "z", "score"]
    np.testing.assert_array_equal(out["id"], np.arange(n))
    np.testing.assert_allclose(out["score"], (out["x"] + 0.5) / n)
    for (run, cls), rows in out.groupby(["experiment", "particle_type"]):
        original = table[(table.experiment == run) & (table.particle_type == cls)]["x"].to_numpy()
        np.testing.assert_array_equal(rows["x"].to_numpy(), original)
    assert list(out["experiment"]) == sorted(out["experiment"])


def test_bounds_are_checked_for_every_run_with_an_extent(tmp_path):
    extent = extent_xyz_A(SHAPE_ZYX, (SPACING_A,) * 3)
    table = to_submission(picks(("TS_a", "ribosome", 1e6, 0.0, 0.0), ("TS_b", "ribosome", 0.0, 0.0, 0.0),
                                ("TS_c", "ribosome", float(extent[0]) + 1.0, 0.0, 0.0)))
    with pytest.raises(SubmissionError, match="run 'TS_c'"):
        validate_submission(table, extents_xyz_A={"TS_b": extent, "TS_c": extent})  # TS_a has none: skipped
    validate_submission(table.iloc[:2].reset_index(drop=True), extents_xyz_A={"TS_b": extent})  # 0 Å is inside
    with pytest.raises(SubmissionError, match="run 'TS_c'"):
        write_submission(table, tmp_path / "s.csv", extents_xyz_A={"TS_c": extent})
    assert not (tmp_path / "s.csv").exists()


def test_a_score_sidecar_of_other_ids_is_refused(tmp_path):
    from czii.submission import read_scored_submission, scores_path

    table = to_submission(picks(("TS_a", "ribosome", 1.0, 2.0, 3.0), ("TS_a", "ribosome", 4.0, 5.0, 6.0)))
    table.to_csv(tmp_path / "s.csv", index=False)
    pd.DataFrame({"id": [0, 7], "score": [0.5, 0.6]}).to_csv(scores_path(tmp_path / "s.csv"), index=False)
    with pytest.raises(SubmissionError, match="belongs to another submission"):
        read_scored_submission(tmp_path / "s.csv")
    scores_path(tmp_path / "s.csv").unlink()
    assert read_scored_submission(tmp_path / "s.csv")["score"].isna().all()
