"""benchmarks/mutation_report.py sorts surviving mutants by what they change; every rule file entry is valid."""

from __future__ import annotations

import re
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))

from mutation_report import classify  # noqa: E402

RULES = [{"verdict": "equivalent", "why": "a dtype already there", "match": r"dtype=np.float64\) ⟶ .*dtype=None"}]


def _diff(old: str, new: str, after: str = "    return x") -> str:
    return f"--- a.py\n+++ a.py\n@@ -1,3 +1,3 @@\n def f(x):\n-{old}\n+{new}\n {after}\n"


@pytest.mark.parametrize(("old", "new", "after", "verdict"), [
    ('    log = "starting over"', '    log = "XXstarting overXX"', "    return x", "message"),
    ('    raise DataError(f"{path}: bad")', '    raise DataError(f"{path}: bad", None)', "    return x", "message"),
    ("    if size < 1:", "    if size <= 1:", '        raise DataError("too small")', "refused input"),
    ("    a = np.asarray(x, dtype=np.float64)", "    a = np.asarray(x, dtype=None)", "    return a", "equivalent"),
    ("    step = (size - 1) / 2", "    step = (size + 1) / 2", "    return step", "unreviewed"),
])
def test_survivors_are_sorted_by_what_they_change(old, new, after, verdict):
    assert classify("czii.m.x_f__mutmut_1", _diff(old, new, after), RULES)[0] == verdict


def test_every_shipped_rule_is_a_valid_regex_with_a_verdict_and_a_reason():
    rules = tomllib.loads((ROOT / "benchmarks" / "mutation_verdicts.toml").read_text())["rule"]
    assert len(rules) > 10
    for rule in rules:
        re.compile(rule["match"])
        assert rule["verdict"] in {"message", "equivalent", "refused input"} and len(rule["why"]) > 20
