"""Picks tables ↔ the files other tools read: RELION 5 / RELION 4 (Warp) STAR, Dynamo ``.tbl``, CSV.

A picks table has ``experiment, particle_type, x, y, z`` (Å from the first voxel centre, the czii
and copick convention) and ``score`` (peak height; NaN when unknown). Converting needs each run's
:class:`Frame` (tomogram shape z, y, x, voxel size Å, OME-Zarr translation Å).

Conventions written (and read back by :func:`read_picks`):

=========  =====================================================================================
star       RELION 5: ``rlnTomoName``, ``rlnCenteredCoordinate{X,Y,Z}Angst`` = x − N_x·s/2 (Å from
           the tomogram centre, which RELION 5 puts N/2 voxels from the first voxel centre),
           ``rlnAutopickFigureOfMerit`` = score, ``rlnClassNumber`` (1-based, named in block
           ``czii_classes``).
relion4    RELION 4 / Warp: ``rlnTomoName`` and ``rlnMicrographName`` (the run),
           ``rlnCoordinate{X,Y,Z}`` = x / s (pixels from the first voxel centre, no binning),
           ``rlnPixelSize`` = s, figure of merit and class as above.
tbl        Dynamo: 35 columns per particle; 1 tag, 2–3 aligned/averaged = 1, 10 cc = score,
           20 tomogram index, 22 class, 24–26 x, y, z = x / s + 1 (Dynamo counts from 1). The
           tomogram and class names and voxel sizes go to ``<file>.czii.json`` beside it.
csv        ``experiment, particle_type, x, y, z, score`` in Å, OME-Zarr translation added.
=========  =====================================================================================
"""

from __future__ import annotations

import json
import math
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import numpy as np
import pandas as pd
import starfile

from czii.errors import DataError
from czii.io import atomic_path, atomic_write_text
from czii.picks import PICK_COLUMNS, XYZ, check_picks_table

FORMATS = ("star", "relion4", "tbl", "csv")
TBL_COLUMNS = 35
SIDECAR_SUFFIX = ".czii.json"
CENTRED = [f"rlnCenteredCoordinate{a}Angst" for a in "XYZ"]
PIXELS = [f"rlnCoordinate{a}" for a in "XYZ"]


@dataclass(frozen=True)
class Frame:
    """The tomogram a run's picks refer to: ``shape_zyx`` voxels of ``spacing_A`` Å, ``translation_zyx_A``."""

    shape_zyx: tuple[int, int, int]
    spacing_A: float
    translation_zyx_A: tuple[float, float, float] = (0.0, 0.0, 0.0)

    @property
    def centre_xyz_A(self) -> np.ndarray:
        return np.asarray(self.shape_zyx[::-1], dtype=np.float64) * self.spacing_A / 2.0


def tbl_sidecar(path: str | Path) -> Path:
    """Where a Dynamo table's tomogram and class names go: ``<file>.czii.json``."""
    path = Path(path)
    return path.with_name(path.name + SIDECAR_SUFFIX)


def _frame(frames: Mapping[str, Frame], run: str) -> Frame:
    try:
        return frames[run]
    except KeyError:
        raise DataError(f"run {run!r}: no tomogram frame (shape, voxel size) known; runs known: "
                        f"{', '.join(sorted(frames)) or 'none'}") from None


def _classes(table: pd.DataFrame) -> list[str]:
    return sorted(set(table["particle_type"]))


def _per_run(table: pd.DataFrame, frames: Mapping[str, Frame], column) -> np.ndarray:
    """Stack ``column(frame)`` (a length-3 x, y, z vector) for every row's run."""
    return np.array([column(_frame(frames, r)) for r in table["experiment"]], dtype=np.float64).reshape(-1, 3)


def write_picks(table: pd.DataFrame, path: str | Path, fmt: str, frames: Mapping[str, Frame]) -> list[Path]:
    """Write ``table`` (with ``score``) as ``fmt`` to ``path`` atomically; returns every file written."""
    if fmt not in FORMATS:
        raise DataError(f"unknown export format {fmt!r}; formats: {', '.join(FORMATS)}")
    # a score may be unknown (NaN: a submission without its sidecar); every known one must lie in [0, 1]
    unknown_score = table["score"].isna().to_numpy() if "score" in table.columns else None
    table = check_picks_table(table.fillna({"score": 0.0}), "picks", score=True).reset_index(drop=True)
    table.loc[unknown_score, "score"] = np.nan
    path = Path(path)
    xyz = table[list(XYZ)].to_numpy(np.float64)
    classes = _classes(table)
    class_number = table["particle_type"].map({c: i + 1 for i, c in enumerate(classes)}).to_numpy()
    spacing = _per_run(table, frames, lambda f: (f.spacing_A,) * 3)
    if fmt == "csv":
        out = table[[*PICK_COLUMNS, "score"]].copy()
        out[list(XYZ)] = xyz + _per_run(table, frames, lambda f: f.translation_zyx_A[::-1])
        atomic_write_text(path, out.to_csv(index=False))
        return [path]
    if fmt == "tbl":
        runs = sorted(set(table["experiment"]))
        rows = np.zeros((len(table), TBL_COLUMNS))
        rows[:, 0] = np.arange(1, len(table) + 1)
        rows[:, 1:3] = 1
        rows[:, 9] = table["score"].fillna(0).to_numpy()
        rows[:, 19] = table["experiment"].map({r: i + 1 for i, r in enumerate(runs)}).to_numpy()
        rows[:, 21] = class_number
        rows[:, 23:26] = xyz / spacing + 1.0
        sidecar = tbl_sidecar(path)
        doc = {"format": "dynamo-tbl", "tomograms": {str(i + 1): r for i, r in enumerate(runs)},
               "classes": {str(i + 1): c for i, c in enumerate(classes)},
               "voxel_size_A": {r: _frame(frames, r).spacing_A for r in runs}}
        with atomic_path(path) as tmp:
            np.savetxt(tmp, rows, fmt="%.10g")
        try:
            atomic_write_text(sidecar, json.dumps(doc, indent=2) + "\n")
        except BaseException:
            path.unlink(missing_ok=True)  # the table means nothing without its names
            raise
        return [path, sidecar]
    particles = pd.DataFrame({"rlnTomoName": table["experiment"]})
    if fmt == "star":
        particles[CENTRED] = xyz - _per_run(table, frames, lambda f: f.centre_xyz_A)
    else:
        particles["rlnMicrographName"] = table["experiment"]
        particles[PIXELS] = xyz / spacing
        particles["rlnPixelSize"] = spacing[:, 0]
    particles["rlnAutopickFigureOfMerit"] = table["score"].to_numpy()
    particles["rlnClassNumber"] = class_number
    blocks = {"particles": particles,
              "czii_classes": pd.DataFrame({"rlnClassNumber": range(1, len(classes) + 1), "cziiParticleType": classes})}
    with atomic_path(path) as tmp:
        starfile.write(blocks, tmp, overwrite=True)
    return [path]


def _class_names(numbers: np.ndarray, names: Mapping[int, str], particle: str | None, where: str) -> list[str]:
    if particle is not None:
        return [particle] * len(numbers)
    missing = sorted({int(n) for n in numbers} - set(names))
    if missing:
        raise DataError(f"{where}: class numbers {missing} have no particle name (no czii class table); pass "
                        "--particle NAME to import every pick as one particle")
    return [names[int(n)] for n in numbers]


def read_picks(path: str | Path, fmt: str, frames: Mapping[str, Frame], *, particle: str | None = None,
               voxel_size_A: float | None = None) -> pd.DataFrame:
    """Read a file written by :func:`write_picks` (or by the tools it mimics) back to a picks table in Å.

    ``frames`` gives the runs' tomograms (RELION 5 centring; pixel sizes a file lacks). ``particle``
    names every pick's class when the file has no class names; ``voxel_size_A`` overrides the file's
    pixel size (pixel formats).
    """
    path = Path(path)
    if fmt not in FORMATS:
        raise DataError(f"unknown import format {fmt!r}; formats: {', '.join(FORMATS)}")
    if not path.is_file():
        raise DataError(f"{path}: no such picks file")
    if fmt == "csv":
        table = pd.read_csv(path)
        if particle is not None:
            table["particle_type"] = particle
        if "score" not in table.columns:
            table["score"] = np.nan
        table = check_picks_table(table, str(path), score=False)
        xyz = table[list(XYZ)].to_numpy(np.float64) - _per_run(table, frames, lambda f: f.translation_zyx_A[::-1])
        table[list(XYZ)] = xyz
        return table[[*PICK_COLUMNS, "score"]].reset_index(drop=True)
    if fmt == "tbl":
        return _read_tbl(path, frames, particle, voxel_size_A)
    blocks = starfile.read(path, always_dict=True)
    particles = blocks.get("particles", next(iter(blocks.values())) if len(blocks) == 1 else None)
    if not isinstance(particles, pd.DataFrame) or "rlnTomoName" not in particles:
        raise DataError(f"{path}: no particles block with rlnTomoName")
    wanted = CENTRED if fmt == "star" else PIXELS
    missing = [c for c in wanted if c not in particles]
    if missing:
        raise DataError(f"{path}: missing columns {missing} for format {fmt!r}; columns: {list(particles.columns)}")
    runs = particles["rlnTomoName"].astype(str)
    table = pd.DataFrame({"experiment": runs})
    if fmt == "star":
        centre = _per_run(table, frames, lambda f: f.centre_xyz_A)
        xyz = particles[CENTRED].to_numpy(np.float64) + centre
    else:
        if voxel_size_A is not None:
            size = np.full(len(particles), float(voxel_size_A))
        elif "rlnPixelSize" in particles:
            size = particles["rlnPixelSize"].to_numpy(np.float64)
        else:
            size = _per_run(table, frames, lambda f: (f.spacing_A,) * 3)[:, 0]
        xyz = particles[PIXELS].to_numpy(np.float64) * size[:, None]
    table[list(XYZ)] = xyz
    names = {}
    if isinstance(blocks.get("czii_classes"), pd.DataFrame):
        names = dict(zip(blocks["czii_classes"]["rlnClassNumber"].astype(int),
                         blocks["czii_classes"]["cziiParticleType"].astype(str)))
    numbers = particles["rlnClassNumber"].to_numpy() if "rlnClassNumber" in particles else np.zeros(len(particles))
    table.insert(1, "particle_type", _class_names(numbers, names, particle, str(path)))
    fom = "rlnAutopickFigureOfMerit"
    table["score"] = particles[fom].to_numpy(np.float64) if fom in particles else np.nan
    return check_picks_table(table, str(path)).reset_index(drop=True)


def _read_tbl(path: Path, frames: Mapping[str, Frame], particle: str | None,
              voxel_size_A: float | None) -> pd.DataFrame:
    try:
        with warnings.catch_warnings():  # an empty table is a valid one with no picks, not a warning
            warnings.simplefilter("ignore", UserWarning)
            rows = np.atleast_2d(np.loadtxt(path, ndmin=2))
    except ValueError as exc:
        raise DataError(f"{path}: not a numeric Dynamo table ({exc})") from None
    if rows.size and rows.shape[1] < 26:
        raise DataError(f"{path}: a Dynamo table needs at least 26 columns, found {rows.shape[1]}")
    sidecar = tbl_sidecar(path)
    doc = json.loads(sidecar.read_text()) if sidecar.is_file() else {}
    tomograms = {int(k): v for k, v in doc.get("tomograms", {}).items()}
    indices = rows[:, 19].astype(int) if rows.size else np.zeros(0, int)
    unknown = sorted(set(indices) - set(tomograms))
    if unknown:
        if len(frames) == 1 and not tomograms:
            tomograms = {i: next(iter(frames)) for i in unknown}
        else:
            raise DataError(f"{path}: tomogram indices {unknown} have no run name ({sidecar} is missing or lacks "
                            "them); write it as {\"tomograms\": {\"1\": \"<run>\"}}")
    runs = [tomograms[i] for i in indices]
    table = pd.DataFrame({"experiment": runs})
    sizes = doc.get("voxel_size_A", {})
    if voxel_size_A is not None:
        size = np.full(len(runs), float(voxel_size_A))
    else:
        size = np.array([sizes.get(r, _frame(frames, r).spacing_A) for r in runs], dtype=np.float64)
    if not all(math.isfinite(s) and s > 0 for s in size):
        raise DataError(f"{path}: voxel sizes must be positive")
    names = {int(k): v for k, v in doc.get("classes", {}).items()}
    table.insert(1, "particle_type", _class_names(rows[:, 21] if rows.size else [], names, particle, str(path)))
    table[list(XYZ)] = (rows[:, 23:26] - 1.0) * size[:, None] if rows.size else np.zeros((0, 3))
    table["score"] = rows[:, 9] if rows.size else []
    return check_picks_table(table, str(path)).reset_index(drop=True)
