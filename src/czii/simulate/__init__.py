"""The simulator: CZII-like copick projects and Kaggle directories with truth picks.

:mod:`czii.simulate.config` holds the config (:class:`SimConfig`, presets, families),
:mod:`czii.simulate.dataset` writes a dataset (:func:`simulate_dataset`); :mod:`czii.simulate.scene`
places particles and other density, :mod:`czii.simulate.shapes` draws them, :mod:`czii.simulate.imaging`
turns a scene into tomograms. The names below are loaded on first use, so that importing the package
does not import copick, zarr or the scene code.
"""

from __future__ import annotations

import importlib

_HOME = {
    **dict.fromkeys(["DEFAULT_REAL_PICKS_CSV", "FAMILIES", "PORTAL_OBJECT_NAMES", "PRESETS", "TEST_TOMO_TYPE",
                     "SimConfig"], "czii.simulate.config"),
    **dict.fromkeys(["SIMULATOR_VERSION", "SimResult", "simulate_dataset"], "czii.simulate.dataset"),
}
__all__ = sorted(_HOME)


def __getattr__(name: str):
    if name in _HOME:
        return getattr(importlib.import_module(_HOME[name]), name)
    raise AttributeError(f"module 'czii.simulate' has no attribute {name!r}")
