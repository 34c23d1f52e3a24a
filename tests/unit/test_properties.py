"""Property-based tests: random malformed submissions, solutions and picks files either score (or load) or
get a clear czii error, never a traceback of another kind."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from czii.cli import main
from czii.formats.picks_json import read_picks_json
from czii.errors import CziiError
from czii.metric import score
from czii.particles import PARTICLE_NAMES
from czii.picks import SUBMISSION_COLUMNS, check_picks_table
from czii.submission import validate_submission

SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

cell = st.one_of(
    st.none(), st.booleans(), st.integers(-10**12, 10**12), st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=8), st.sampled_from([*PARTICLE_NAMES, "TS_1", "TS_2", "", "ribosomes", "1e3", "nan"]),
)
coordinate = st.one_of(st.floats(-1e4, 1e4), st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=4),
                       st.none())
column_names = st.lists(st.sampled_from([*SUBMISSION_COLUMNS, "score", "extra", "X"]), max_size=8)


@st.composite
def tables(draw, columns=column_names):
    names = draw(columns)
    n = draw(st.integers(0, 6))
    return pd.DataFrame({name: draw(st.lists(cell, min_size=n, max_size=n)) for name in dict.fromkeys(names)})


@st.composite
def plausible_tables(draw, with_id: bool):
    """Mostly well-formed picks tables with the occasional bad value."""
    n = draw(st.integers(0, 8))
    rows = {
        "experiment": draw(st.lists(st.one_of(st.sampled_from(["TS_1", "TS_2"]), cell), min_size=n, max_size=n)),
        "particle_type": draw(st.lists(st.one_of(st.sampled_from(PARTICLE_NAMES), cell), min_size=n, max_size=n)),
        **{axis: draw(st.lists(coordinate, min_size=n, max_size=n)) for axis in "xyz"},
    }
    if with_id:
        rows = {"id": draw(st.lists(st.one_of(st.integers(0, 5), cell), min_size=n, max_size=n)), **rows}
    return pd.DataFrame(rows)


def _clean_or_czii_error(fn, *args):
    try:
        return fn(*args)
    except CziiError:
        return None


@SETTINGS
@given(st.one_of(tables(), plausible_tables(with_id=True)))
def test_the_submission_validator_accepts_or_names_the_problem(df):
    _clean_or_czii_error(validate_submission, df)
    checked = _clean_or_czii_error(check_picks_table, df, "picks")
    if checked is not None:
        assert np.isfinite(checked[["x", "y", "z"]].to_numpy(np.float64)).all()


@SETTINGS
@given(plausible_tables(with_id=False), plausible_tables(with_id=True))
def test_the_metric_scores_in_0_1_or_names_the_problem(solution, submission):
    report = _clean_or_czii_error(score, solution, submission)
    if report is not None:
        assert 0.0 <= report.score <= 1.0
        assert (report.table[["tp", "fn"]] >= 0).all().all()


json_value = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), st.text(max_size=6)),
    lambda children: st.one_of(st.lists(children, max_size=4), st.dictionaries(st.text(max_size=6), children,
                                                                                max_size=4)),
    max_leaves=12,
)


@st.composite
def picks_documents(draw):
    """Picks JSON documents, from well-formed to nonsense."""
    point = st.fixed_dictionaries({"location": st.one_of(
        st.fixed_dictionaries({axis: st.one_of(st.floats(allow_nan=False), st.text(max_size=3), st.none())
                               for axis in "xyz"}), json_value)})
    doc = draw(st.one_of(
        json_value,
        st.fixed_dictionaries({"pickable_object_name": st.one_of(st.sampled_from(PARTICLE_NAMES), json_value),
                               "points": st.one_of(st.lists(point, max_size=4), json_value)}),
    ))
    return json.dumps(doc) if draw(st.booleans()) else json.dumps(doc)[: draw(st.integers(0, 40))]


@SETTINGS
@given(picks_documents())
def test_picks_files_load_or_name_the_file(tmp_path_factory, text):
    path = tmp_path_factory.mktemp("picks") / "curation_0_ribosome.json"
    path.write_text(text)
    try:
        name, xyz = read_picks_json(path)
    except CziiError as exc:
        assert str(path) in str(exc)
        return
    assert xyz.ndim == 2 and xyz.shape[1] == 3 and np.isfinite(xyz).all()


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                  HealthCheck.function_scoped_fixture])
@given(plausible_tables(with_id=True), plausible_tables(with_id=False), st.booleans())
def test_czii_score_exits_0_or_2_with_one_line(tmp_path, capsys, submission, solution, garble):
    sub, sol = tmp_path / "sub.csv", tmp_path / "sol.csv"
    submission.to_csv(sub, index=False)
    solution.to_csv(sol, index=False)
    if garble:
        sub.write_bytes(sub.read_bytes()[: len(sub.read_bytes()) // 2] + b'\n"unterminated')
    rc = main(["score", "--submission", str(sub), "--solution", str(sol), "--json"])
    captured = capsys.readouterr()
    assert rc in (0, 2)
    if rc == 2:
        assert captured.err.startswith("czii score: error: ") and captured.out == ""
    else:
        assert 0.0 <= json.loads(captured.out)["score"] <= 1.0
