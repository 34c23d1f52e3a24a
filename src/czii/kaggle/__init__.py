"""Offline Kaggle submission: the dataset folder a notebook without internet installs and runs from.

- :mod:`czii.kaggle.bundle`: :func:`build_kaggle_dataset` (what ``czii kaggle-build`` calls) writes the folder
  (wheels, checkpoints, thresholds, predictor spec, manifest) and :func:`verify_dataset` checks one;
- :mod:`czii.kaggle.wheels`: the target (Python, platforms), the packages Kaggle's image provides and the
  dependency closure of czii's wheel;
- :mod:`czii.kaggle.runtime`: :func:`project_runtime`, the projection of an inference's timings onto the hidden
  test set that the notebook prints.

The names below are loaded on first use (the notebook imports only the runtime projection).
"""

from __future__ import annotations

import importlib

_HOMES = {
    **dict.fromkeys(("BuildResult", "ENSEMBLE_NAME", "KAGGLE_METADATA_NAME", "MANIFEST_NAME", "THRESHOLDS_NAME",
                     "build_kaggle_dataset", "verify_dataset"), "bundle"),
    **dict.fromkeys(("Closure", "KAGGLE_PLATFORMS", "KAGGLE_PYTHON_VERSION", "PACKAGE_NAME",
                     "PROVIDED_NOTE", "PROVIDED_PATTERNS", "WheelSource", "WheelTarget", "build_package_wheel",
                     "default_cache_dir", "is_provided", "read_pins", "resolve_closure", "wheel_requirements"),
                    "wheels"),
    **dict.fromkeys(("HIDDEN_TEST_TOMOGRAMS", "KAGGLE_LIMIT_HOURS", "RuntimeProjection", "project_runtime"),
                    "runtime"),
}
__all__ = sorted(_HOMES)


def __getattr__(name: str):
    if name in _HOMES:
        return getattr(importlib.import_module(f"czii.kaggle.{_HOMES[name]}"), name)
    raise AttributeError(f"module 'czii.kaggle' has no attribute {name!r}")
