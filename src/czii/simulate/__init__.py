"""The simulator: CZII-like copick projects and Kaggle directories with truth picks.

:mod:`czii.simulate.dataset` holds the config (:class:`SimConfig`, presets) and writes a dataset
(:func:`simulate_dataset`); :mod:`czii.simulate.scene` places particles and other density,
:mod:`czii.simulate.imaging` turns a scene into tomograms. The names below are loaded on first use, so
that importing the package does not import copick, zarr or the scene code.
"""

from __future__ import annotations

import importlib

__all__ = ["DEFAULT_REAL_PICKS_CSV", "FAMILIES", "PORTAL_OBJECT_NAMES", "PRESETS", "SIMULATOR_VERSION",
           "TEST_TOMO_TYPE", "SimConfig", "SimResult", "simulate_dataset"]


def __getattr__(name: str):
    if name in __all__:
        return getattr(importlib.import_module("czii.simulate.dataset"), name)
    raise AttributeError(f"module 'czii.simulate' has no attribute {name!r}")
