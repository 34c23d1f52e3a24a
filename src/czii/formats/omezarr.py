"""OME-Zarr v0.4 tomograms exactly as the CZII data ships them.

Layout of ``<type>.zarr``: a zarr v2 group with levels ``"0"``, ``"1"``, ``"2"`` (each a
factor 2 coarser, sizes rounded up), float32, chunks 256³, blosc lz4 (clevel 5,
byte shuffle), ``/`` dimension separator, and ``.zattrs`` ``multiscales`` (version 0.4,
axes z, y, x in Ångström, one ``scale`` transformation per level).

With a scale and no translation, the metadata says voxel ``i`` of level ``L`` lies at
``i * 2**L * s0`` Å, on top of level-0 voxel ``2**L * i``. The coarser levels written here are
made to match that (:func:`downsample2`: anti-aliased, then every second voxel), so every level
agrees with its metadata; a 2×2×2 block mean would put level-1 voxel ``i`` at ``(2i + 0.5) * s0``,
half a level-0 voxel (5 Å) off on every axis, a bias that a model trained at level 1 with flip
augmentation cannot learn away (it measured −5 Å per axis in the picks).
"""

from __future__ import annotations

import json
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Sequence

import numcodecs.blosc
import numpy as np
import zarr
from numcodecs import Blosc

from czii.errors import DataError
from czii.geometry import resample_zyx
from czii.io import temp_sibling

CHUNKS_ZYX = (256, 256, 256)
COMPRESSOR = Blosc(cname="lz4", clevel=5, shuffle=Blosc.SHUFFLE, blocksize=0)


def downsample2(volume_zyx: np.ndarray) -> np.ndarray:
    """The next pyramid level: Gaussian anti-aliasing (σ = 0.5 voxel), then voxels ``0, 2, 4, …`` of every axis
    (sides rounded up, so 315 → 158 as in the real data); output voxel ``i`` sits where input voxel ``2i`` does:
    :func:`czii.geometry.resample_zyx` by a factor 2."""
    return resample_zyx(volume_zyx, 1.0, 2.0)


def _spacing_triple(spacing_zyx_A: float | Sequence[float]) -> list[float]:
    s = np.broadcast_to(np.asarray(spacing_zyx_A, dtype=np.float64), (3,))
    return [float(v) for v in s]


def multiscales_attrs(spacing_zyx_A: float | Sequence[float], n_levels: int) -> dict:
    """The ``.zattrs`` document of a tomogram with ``n_levels`` levels."""
    base = _spacing_triple(spacing_zyx_A)
    datasets = [
        {"coordinateTransformations": [{"scale": [s * 2**level for s in base], "type": "scale"}], "path": str(level)}
        for level in range(n_levels)
    ]
    axes = [{"name": a, "type": "space", "unit": "angstrom"} for a in "zyx"]
    return {"multiscales": [{"axes": axes, "datasets": datasets, "metadata": {}, "name": "/", "version": "0.4"}]}


@contextmanager
def _single_threaded_blosc() -> Iterator[None]:
    """Threaded blosc compresses identical data to different bytes from run to run; one thread makes
    the chunk files byte-identical for identical volumes (reproducible simulations, stable checksums)."""
    previous = numcodecs.blosc.use_threads
    numcodecs.blosc.use_threads = False
    try:
        yield
    finally:
        numcodecs.blosc.use_threads = previous


def write_ome_zarr(
    path: str | Path, volume_zyx: np.ndarray, spacing_zyx_A: float | Sequence[float], n_levels: int = 3
) -> None:
    """Write ``volume_zyx`` (level 0) and its coarser levels to ``path`` atomically.

    The store is written under a temporary sibling name and renamed when complete, so an
    interrupted write leaves nothing at ``path``. An existing ``path`` is replaced.
    """
    path = Path(path)
    vol = np.ascontiguousarray(volume_zyx, dtype=np.float32)
    if vol.ndim != 3:
        raise ValueError(f"volume must be 3-D z,y,x, got shape {vol.shape}")
    tmp = temp_sibling(path)
    try:
        with _single_threaded_blosc():
            _write_levels(tmp, vol, spacing_zyx_A, n_levels)
        if path.exists():
            shutil.rmtree(path)
        tmp.rename(path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


def _write_levels(store_path: Path, vol: np.ndarray, spacing_zyx_A, n_levels: int) -> None:
    group = zarr.group(store=zarr.DirectoryStore(str(store_path), dimension_separator="/"), overwrite=True)
    level_data = vol
    for level in range(n_levels):
        if level:
            level_data = downsample2(level_data)
        group.create_dataset(
            str(level), data=level_data, chunks=CHUNKS_ZYX, dtype="<f4",
            compressor=COMPRESSOR, fill_value=0.0, order="C", overwrite=True,
        )
    group.attrs.put(multiscales_attrs(spacing_zyx_A, n_levels))


def level_spacing_zyx_A(zattrs: dict, level: int, where: str) -> tuple[float, float, float]:
    """Voxel spacing (z, y, x Å) of ``level`` from a ``.zattrs`` document; ``where`` names the file in errors."""
    try:
        datasets = zattrs["multiscales"][0]["datasets"]
    except (KeyError, IndexError, TypeError):
        raise DataError(f"{where}: no OME-Zarr 'multiscales' metadata in .zattrs") from None
    paths = [d.get("path") for d in datasets]
    for d in datasets:
        if d.get("path") == str(level):
            for t in d.get("coordinateTransformations", []):
                if t.get("type") == "scale" and len(t.get("scale", [])) == 3:
                    return tuple(float(s) for s in t["scale"])
            raise DataError(f"{where}: level {level} has no 3-D 'scale' transformation")
    raise DataError(f"{where}: no pyramid level {level!r}; levels present: {paths}")


def read_ome_zarr(path: str | Path, level: int = 0) -> tuple[np.ndarray, tuple[float, float, float]]:
    """Read one level of a tomogram as float32 z,y,x with its spacing; errors name the file and what is missing."""
    path = Path(path)
    zattrs_path = path / ".zattrs"
    if not zattrs_path.is_file():
        raise DataError(f"{path}: not an OME-Zarr tomogram (no .zattrs)")
    try:
        zattrs = json.loads(zattrs_path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise DataError(f"{zattrs_path}: unreadable metadata ({exc})") from None
    spacing = level_spacing_zyx_A(zattrs, level, str(path))
    try:
        arr = zarr.open_array(zarr.DirectoryStore(str(path / str(level)), dimension_separator="/"), mode="r")
        data = np.asarray(arr[...], dtype=np.float32)
    except Exception as exc:  # zarr raises many types for broken stores
        raise DataError(f"{path}/{level}: unreadable zarr array ({type(exc).__name__}: {exc})") from None
    if data.ndim != 3:
        raise DataError(f"{path}/{level}: expected a 3-D z,y,x array, got shape {data.shape}")
    return data, spacing
