"""MRC/REC tomograms through ``mrcfile``: header facts without reading voxels, memory-mapped data, a writer.

Axes: an MRC volume is stored z (sections), y (rows), x (columns), as numpy reads it; the header's
``voxel_size`` is Å per voxel along x, y, z and is returned here as z, y, x. The header origin is
not applied (RELION and IMOD coordinates count voxels from the first one; so does czii).

Mode 0 (bytes) is signed in MRC2014, which ``mrcfile`` follows, but IMOD writes unsigned bytes unless
its header says otherwise: a file with IMOD's stamp (``imodStamp`` = 1146047817 at byte 152) whose
``imodFlags`` (byte 156) lacks bit 0 ("bytes are signed") holds unsigned bytes, and is read so; read as
signed, every voxel above 127 would wrap to a negative value.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import mrcfile
import numpy as np

from czii.errors import DataError
from czii.io import atomic_path

MRC_SUFFIXES = (".mrc", ".rec", ".mrcs", ".map")
IMOD_STAMP = 1146047817
_IMOD_STAMP_OFFSET = 152  # then imodFlags at 156, both int32 in the header's byte order
IMOD_FLAG_SIGNED_BYTES = 1


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


def _unsigned_bytes(header: np.recarray) -> bool:
    """True when a mode-0 header was written by IMOD without its signed-bytes flag (module docstring)."""
    if int(header.mode) != 0:
        return False
    order = header.nx.dtype.byteorder
    stamp, flags = np.frombuffer(header.tobytes(), dtype=np.dtype(np.int32).newbyteorder(order), count=2,
                                 offset=_IMOD_STAMP_OFFSET)
    return int(stamp) == IMOD_STAMP and not int(flags) & IMOD_FLAG_SIGNED_BYTES


def read_mrc(path: str | Path) -> np.ndarray:
    """The voxels of ``path`` as float32 z, y, x (read through a memory map; IMOD's unsigned bytes as such)."""
    path = Path(path)
    with _open(path) as mrc:
        if mrc.data.ndim != 3:
            raise DataError(f"{path}: expected a 3-D z,y,x volume, got shape {mrc.data.shape}")
        data = mrc.data.view(np.uint8) if _unsigned_bytes(mrc.header) else mrc.data
        return np.asarray(data, dtype=np.float32).copy()


def write_mrc(path: str | Path, volume_zyx: np.ndarray, voxel_size_A: float) -> None:
    """Write ``volume_zyx`` as float32 MRC with an isotropic ``voxel_size_A``, atomically."""
    with atomic_path(path) as tmp:
        with mrcfile.new(str(tmp), overwrite=True) as mrc:
            mrc.set_data(np.ascontiguousarray(volume_zyx, dtype=np.float32))
            mrc.voxel_size = float(voxel_size_A)
