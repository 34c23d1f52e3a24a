"""Resumable inference: each finished run's picks are kept in a work folder beside the output.

``<out>.work/`` holds ``key.json`` (what every run's picks depend on: the predictor spec, the
thresholds, the member checkpoints' size and modification time, the data source, split and voxel-size
override) and one ``<run>.npz`` per finished run (its scored picks, exact float64, the facts of its
prediction and the identity of its input files: :func:`input_identity`), each written atomically. A
rerun of the same command after an interruption (after kill -9 with ``--force``: :mod:`czii.locks`)
predicts only the runs without a file and produces the same picks. A work folder with another key is
discarded with a note; a stored run whose input files changed since (replaced, rewritten, touched) is
predicted again with a note. The folder is removed once the CSV and manifest are written; nothing is
created before the first run finishes.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from czii.errors import DataError
from czii.io import atomic_path, atomic_write_text
from czii.picks import CANDIDATE_COLUMNS


def input_identity(paths: Sequence[str | os.PathLike]) -> list[list]:
    """``[path, size, mtime_ns]`` of every file of ``paths`` (files, or folders such as zarr stores, walked in
    order): what changes when a tomogram is replaced or rewritten, without reading its voxels."""
    out = []
    for path in map(Path, paths):
        files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
        for f in files:
            st = f.stat()
            out.append([str(f), st.st_size, st.st_mtime_ns])
    return out


def work_dir(out_csv: str | os.PathLike) -> Path:
    """The work folder of ``out_csv``: ``<out_csv>.work``."""
    out_csv = Path(out_csv)
    return out_csv.with_name(out_csv.name + ".work")


class RunStore:
    """Finished runs of one inference, keyed by everything their picks depend on."""

    def __init__(self, folder: Path, key: dict[str, Any] | None) -> None:
        """Open ``folder`` for ``key`` (discarding picks of another key); ``key=None`` opens it as it is
        (the other ranks of a torchrun, once rank 0 has prepared it)."""
        self.folder = folder
        self.key = None if key is None else json.loads(json.dumps(key))
        if key is None:
            return
        key_file = folder / "key.json"
        if key_file.is_file():
            try:
                old = json.loads(key_file.read_text())
            except (OSError, ValueError):
                old = None
            if old != self.key:
                print(f"note: {folder} holds picks of another inference (other models, settings or data); "
                      "starting over", file=sys.stderr)
                shutil.rmtree(folder)

    def _path(self, run: str) -> Path:
        return self.folder / f"{run}.npz"

    def done(self) -> list[str]:
        return sorted(p.stem for p in self.folder.glob("*.npz")) if self.folder.is_dir() else []

    def load(self, run: str, identity: list[list]) -> tuple[pd.DataFrame, dict[str, Any]] | None:
        """The stored picks and facts of ``run``, or None when it has not finished or its input files no longer
        have the ``identity`` (:func:`input_identity`) they had when it was predicted (a note says so)."""
        path = self._path(run)
        if not path.is_file():
            return None
        try:
            with np.load(path, allow_pickle=False) as z:
                picks = pd.DataFrame({
                    "experiment": z["experiment"].astype(str).astype(object),
                    "particle_type": z["particle_type"].astype(str).astype(object),
                    **{c: z[c].astype(np.float64) for c in ("x", "y", "z", "score")},
                })
                info = json.loads(str(z["info"]))
                stored_identity = json.loads(str(z["identity"]))
        except (OSError, KeyError, ValueError) as exc:
            raise DataError(f"{path}: unreadable stored picks ({exc}); delete it to predict the run again") from None
        if stored_identity != json.loads(json.dumps(identity)):
            print(f"note: run {run!r}: its input files changed since its picks were stored in {self.folder} "
                  "(size or modification time); predicting it again", file=sys.stderr)
            return None
        return picks[list(CANDIDATE_COLUMNS)], {**info, "resumed": True}

    def save(self, run: str, picks: pd.DataFrame, info: dict[str, Any], identity: list[list]) -> None:
        """Keep ``run``'s picks with its input files' ``identity`` (the folder and its key are written with the
        first run)."""
        key_file = self.folder / "key.json"
        if self.key is not None and not key_file.is_file():
            atomic_write_text(key_file, json.dumps(self.key, indent=2) + "\n")
        with atomic_path(self._path(run)) as tmp, tmp.open("wb") as fh:
            np.savez(fh, experiment=picks["experiment"].to_numpy(dtype=str),
                     particle_type=picks["particle_type"].to_numpy(dtype=str),
                     **{c: picks[c].to_numpy(dtype=np.float64) for c in ("x", "y", "z", "score")},
                     info=np.array(json.dumps(info)), identity=np.array(json.dumps(identity)))

    def remove(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)
