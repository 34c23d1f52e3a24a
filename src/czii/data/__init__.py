"""Data layer: open a copick project or Kaggle directory as a :class:`Dataset` of runs, tomograms and picks.

The names below are loaded on first use (copick takes a second to import), so that the simulator,
the file-format modules and ``czii <command> --help`` do not pay for it.
"""

from __future__ import annotations

import importlib

__all__ = ["Dataset", "TomogramFolder", "Volume", "load_solution", "open_dataset", "open_input"]
_HOMES = {"TomogramFolder": "czii.data.folder", "open_input": "czii.data.folder"}


def __getattr__(name: str):
    if name in __all__:
        return getattr(importlib.import_module(_HOMES.get(name, "czii.data.dataset")), name)
    raise AttributeError(f"module 'czii.data' has no attribute {name!r}")
