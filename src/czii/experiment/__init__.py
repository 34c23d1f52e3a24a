"""Experiments, the leaderboard and ensembles: every number comparable and honest.

- :mod:`czii.experiment.runner`: :func:`run_experiment` turns a config into one leaderboard row (train every
  fold, tune, report, row);
- :mod:`czii.experiment.leaderboard`: the leaderboard CSV (one row per experiment and config hash, locked
  writes, stable header);
- :mod:`czii.experiment.ensembles`: :func:`build_ensemble` scores an ensemble of leaderboard rows out of fold
  and writes it as a predictor spec.

The names below are loaded on first use, so that ``czii leaderboard`` does not import torch.
"""

from __future__ import annotations

import importlib

_HOMES = {
    **dict.fromkeys(("DEFAULT_LEADERBOARD", "F4_COLUMNS", "LEADERBOARD_COLUMNS", "SCORE_COLUMNS", "format_leaderboard",
                     "read_leaderboard", "resolve_rows", "row_id", "sort_leaderboard", "upsert_row"), "leaderboard"),
    **dict.fromkeys(("ExperimentResult", "run_experiment"), "runner"),
    **dict.fromkeys(("EnsembleResult", "build_ensemble"), "ensembles"),
}
__all__ = sorted(_HOMES)


def __getattr__(name: str):
    if name in _HOMES:
        return getattr(importlib.import_module(f"czii.experiment.{_HOMES[name]}"), name)
    raise AttributeError(f"module 'czii.experiment' has no attribute {name!r}")
