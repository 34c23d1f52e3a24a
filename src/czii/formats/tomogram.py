"""Tomograms outside a copick project: a folder (or glob) of MRC/REC files, or bare OME-Zarr stores.

:func:`find_tomograms` lists them as :class:`TomogramFile` (run name = file stem) with their voxel
size, checked before any voxel is read:

- MRC: ``voxel_size`` from the header; OME-Zarr: the level-0 ``scale`` (and its ``translation``,
  which is added to the picks' coordinates so they land in the store's own frame).
- ``voxel_size_A`` (``--voxel-size``) overrides the header / metadata for every file.
- Refused with a :class:`czii.errors.DataError` naming the file: a header voxel size of 0 or 1
  (unset by many programs) with no override, anisotropic voxels (axes more than 1 % apart),
  a volume that is not 3-D, two files with the same run name, nothing found.
"""

from __future__ import annotations

import glob
import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from czii.errors import DataError
from czii.formats.mrc import MRC_SUFFIXES, read_mrc, read_mrc_header
from czii.formats.omezarr import level_spacing_zyx_A, read_ome_zarr

UNSET_VOXEL_SIZES_A = (0.0, 1.0)
ANISOTROPY_TOLERANCE = 0.01


@dataclass(frozen=True)
class TomogramFile:
    """One tomogram file: its run name, format, shape and the voxel size used (with where it came from)."""

    run: str
    path: Path
    format: str  # "mrc" | "ome-zarr"
    shape_zyx: tuple[int, int, int]
    spacing_zyx_A: tuple[float, float, float]
    header_spacing_zyx_A: tuple[float, float, float]
    spacing_source: str  # "header" | "--voxel-size"
    translation_zyx_A: tuple[float, float, float] = (0.0, 0.0, 0.0)

    def read(self) -> np.ndarray:
        """The level-0 voxels as float32 z, y, x."""
        return read_mrc(self.path) if self.format == "mrc" else read_ome_zarr(self.path, 0)[0]


def is_bare_omezarr(path: Path) -> bool:
    """True for a zarr store with a ``.zattrs`` that is named ``*.zarr`` (whatever its metadata holds: a broken
    one is reported as such by :func:`find_tomograms`) or holds OME ``multiscales`` metadata."""
    zattrs = path / ".zattrs"
    if not (path.is_dir() and zattrs.is_file()):
        return False
    if path.suffix.lower() == ".zarr":
        return True
    try:
        return "multiscales" in json.loads(zattrs.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return False


def _read_zattrs(path: Path) -> dict:
    zattrs = path / ".zattrs"
    try:
        doc = json.loads(zattrs.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"{zattrs}: unreadable OME-Zarr metadata ({exc}); expected a JSON object with "
                        "'multiscales'") from None
    if not isinstance(doc, dict):
        raise DataError(f"{zattrs}: OME-Zarr metadata must be a JSON object with 'multiscales', got "
                        f"{type(doc).__name__}")
    return doc


def _is_tomogram_file(path: Path) -> bool:
    return (path.is_file() and path.suffix.lower() in MRC_SUFFIXES) or is_bare_omezarr(path)


def is_tomogram_source(source: str | Path) -> bool:
    """True when ``source`` names MRC/OME-Zarr tomograms (a glob, a file, a store, or a folder holding them)."""
    text = str(source)
    if any(c in text for c in "*?["):
        return True
    path = Path(text).expanduser()
    if _is_tomogram_file(path):
        return True
    return path.is_dir() and any(_is_tomogram_file(p) for p in path.iterdir())


def _omezarr_facts(path: Path) -> tuple[tuple[int, int, int], tuple[float, ...], tuple[float, float, float]]:
    zattrs = _read_zattrs(path)
    spacing = level_spacing_zyx_A(zattrs, 0, str(path))
    translation = (0.0, 0.0, 0.0)
    for dataset in zattrs["multiscales"][0]["datasets"]:
        if dataset.get("path") == "0":
            for t in dataset.get("coordinateTransformations", []):
                if t.get("type") == "translation" and len(t.get("translation", [])) == 3:
                    translation = tuple(float(v) for v in t["translation"])
    zarray = path / "0" / ".zarray"
    if not zarray.is_file():
        raise DataError(f"{path}: no level-0 array ({zarray} is missing)")
    try:
        shape = tuple(int(s) for s in json.loads(zarray.read_text())["shape"])
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError) as exc:
        raise DataError(f"{zarray}: unreadable zarr array metadata ({type(exc).__name__}: {exc})") from None
    return shape, spacing, translation


def _describe(path: Path, voxel_size_A: float | None) -> TomogramFile:
    if path.is_dir():
        fmt = "ome-zarr"
        shape, header, translation = _omezarr_facts(path)
    else:
        fmt = "mrc"
        facts = read_mrc_header(path)
        shape, header, translation = facts.shape_zyx, facts.voxel_size_zyx_A, (0.0, 0.0, 0.0)
    if len(shape) != 3 or min(shape) < 2:
        raise DataError(f"{path}: expected a 3-D z,y,x tomogram, got shape {shape}")
    where = "header" if fmt == "mrc" else "OME-Zarr scale"
    if voxel_size_A is not None:
        spacing, source = (float(voxel_size_A),) * 3, "--voxel-size"
    else:
        unset = [s for s in header if any(math.isclose(s, u, abs_tol=1e-6) for u in UNSET_VOXEL_SIZES_A)]
        if unset:
            raise DataError(
                f"{path}: the {where} gives a voxel size of {_fmt(header)} Å, which looks unset (0 or 1); "
                "pass the real one with --voxel-size (Å)"
            )
        if max(header) > min(header) * (1 + ANISOTROPY_TOLERANCE):
            raise DataError(
                f"{path}: anisotropic voxels {_fmt(header)} Å (z, y, x); czii needs cubic voxels: resample the "
                "tomogram, or pass --voxel-size if the header is wrong"
            )
        spacing, source = tuple(float(s) for s in header), where
    return TomogramFile(
        run=path.name[: -len(".zarr")] if path.name.endswith(".zarr") else path.stem, path=path, format=fmt,
        shape_zyx=tuple(shape), spacing_zyx_A=spacing, header_spacing_zyx_A=tuple(header),
        spacing_source=source, translation_zyx_A=translation,
    )


def _fmt(values) -> str:
    return "(" + ", ".join(f"{v:g}" for v in values) + ")"


def find_tomograms(source: str | Path, voxel_size_A: float | None = None) -> list[TomogramFile]:
    """The tomograms ``source`` names (module docstring), sorted by run name."""
    if voxel_size_A is not None and not (math.isfinite(voxel_size_A) and voxel_size_A > 0):
        raise DataError(f"--voxel-size must be a positive number of Å, got {voxel_size_A!r}")
    text = str(source)
    if any(c in text for c in "*?["):
        paths = [Path(p) for p in sorted(glob.glob(str(Path(text).expanduser())))]
        paths = [p for p in paths if _is_tomogram_file(p)]
    else:
        path = Path(text).expanduser()
        if not path.exists():
            raise DataError(f"{path}: does not exist")
        paths = [path] if _is_tomogram_file(path) else sorted(p for p in path.iterdir() if _is_tomogram_file(p))
    if not paths:
        raise DataError(f"{source}: no tomograms found (expected {', '.join(MRC_SUFFIXES)} files or .zarr OME-Zarr "
                        "stores)")
    files = [_describe(p, voxel_size_A) for p in paths]
    seen: dict[str, Path] = {}
    for f in files:
        if f.run in seen:
            raise DataError(f"two tomograms give the run name {f.run!r}: {seen[f.run]} and {f.path}")
        seen[f.run] = f.path
    return sorted(files, key=lambda f: f.run)
