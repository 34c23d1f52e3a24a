"""MRC/REC tomograms through ``mrcfile``: header facts without reading voxels, memory-mapped data, a writer.

Axes: an MRC volume is stored z (sections), y (rows), x (columns), as numpy reads it; the header's
``voxel_size`` is Å per voxel along x, y, z and is returned here as z, y, x. The header origin is
not applied (RELION and IMOD coordinates count voxels from the first one; so does czii).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import mrcfile
import numpy as np

from czii.errors import DataError
from czii.io import atomic_path

MRC_SUFFIXES = (".mrc", ".rec", ".mrcs", ".map")


@dataclass(frozen=True)
class MrcHeader:
    """What the header of one MRC file says: ``shape_zyx`` voxels and ``voxel_size_zyx_A`` Å per voxel."""

    path: Path
    shape_zyx: tuple[int, ...]
    voxel_size_zyx_A: tuple[float, float, float]


def _open(path: Path):
    try:
        return mrcfile.mmap(str(path), mode="r", permissive=False)
    except (ValueError, OSError, EOFError) as exc:
        raise DataError(f"{path}: not a readable MRC file ({exc})") from None


def read_mrc_header(path: str | Path) -> MrcHeader:
    """The header facts of ``path`` (the voxels are not read)."""
    path = Path(path)
    with _open(path) as mrc:
        size = mrc.voxel_size
        return MrcHeader(path, tuple(int(s) for s in mrc.data.shape),
                         (float(size.z), float(size.y), float(size.x)))


def read_mrc(path: str | Path) -> np.ndarray:
    """The voxels of ``path`` as float32 z, y, x (read through a memory map)."""
    path = Path(path)
    with _open(path) as mrc:
        if mrc.data.ndim != 3:
            raise DataError(f"{path}: expected a 3-D z,y,x volume, got shape {mrc.data.shape}")
        return np.asarray(mrc.data, dtype=np.float32).copy()


def write_mrc(path: str | Path, volume_zyx: np.ndarray, voxel_size_A: float) -> None:
    """Write ``volume_zyx`` as float32 MRC with an isotropic ``voxel_size_A``, atomically."""
    with atomic_path(path) as tmp:
        with mrcfile.new(str(tmp), overwrite=True) as mrc:
            mrc.set_data(np.ascontiguousarray(volume_zyx, dtype=np.float32))
            mrc.voxel_size = float(voxel_size_A)
