"""File plumbing shared by every writer: atomic writes, file digests and the git state of the code.

Contract:

- :func:`temp_sibling` ``(path, tag="tmp")``: ``.<name>.<tag>-<8 hex>`` in the folder of ``path``
  (same file system, so ``os.replace``/``rename`` onto ``path`` is atomic). The one naming
  scheme for temporary files and folders in czii.
- :func:`atomic_path` ``(path)``: context manager yielding a temporary sibling to write; on a
  clean exit it is renamed onto ``path``, on any exception it is removed. The parent folder
  is created. :func:`atomic_write_bytes` and :func:`atomic_write_text` (UTF-8) build on it, so
  readers see the old file or the complete new one, never a partial file.
- :func:`check_output` ``(path, what, *, overwrite, kind)``: before any expensive work, an output
  path must be creatable: its nearest existing folder writable (a temporary file is created and
  removed there), nothing of the other kind in the way, and an existing output refused unless
  ``overwrite``. Raises :class:`czii.errors.OutputError` naming the path and what was expected.
- :func:`sha256_file` ``(path)``: hex SHA-256 of a file, read in 1 MiB blocks.
- :func:`git_commit` ``(path=None)``: HEAD of the git checkout holding ``path`` (default: this
  package), None outside git; :func:`git_dirty` ``(path, pathspecs)``: whether those paths
  differ from HEAD or have untracked files, None outside git.
"""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import tempfile
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from czii.errors import OutputError

_GIT_TIMEOUT_S = 30


def temp_sibling(path: str | os.PathLike, tag: str = "tmp") -> Path:
    """A fresh hidden name beside ``path``: ``.<name>.<tag>-<8 hex>``."""
    path = Path(path)
    return path.with_name(f".{path.name}.{tag}-{uuid.uuid4().hex[:8]}")


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary sibling of ``path`` to write; rename it onto ``path`` on success, remove it on failure."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_sibling(path)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically; returns the path."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically; returns the path."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def check_output(path: str | os.PathLike, what: str, *, overwrite: bool = False, kind: str = "file") -> Path:
    """``path`` if an output ``kind`` ("file" or "dir") can be written there; OutputError otherwise.

    An existing file (or non-empty folder) is refused unless ``overwrite``; a folder where a file is
    expected (or the reverse), a file among the parents, or a parent folder that refuses a test
    file (permissions, read-only mount, full disk) is refused whatever ``overwrite`` says.
    """
    path = Path(path)
    if kind == "file" and path.is_dir():
        raise OutputError(f"{what} {path} is a folder; expected a file path")
    if kind == "dir" and path.exists() and not path.is_dir():
        raise OutputError(f"{what} {path} is a file; expected a folder")
    if path.exists() and not overwrite and (kind == "file" or any(path.iterdir())):
        raise OutputError(f"{what} {path} already exists; pass --overwrite to replace it, or choose another path")
    start = path if kind == "dir" else path.parent
    parent = next(p for p in (start, *path.parents) if p.exists() or p == Path(p.anchor))
    if not parent.is_dir():
        raise OutputError(f"{what} {path}: {parent} is a file, not a folder")
    try:
        fd, probe = tempfile.mkstemp(dir=parent, prefix=".czii-write-test-")
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise OutputError(f"{what} {path}: cannot write in {parent} ({exc.strerror or exc})") from None
    return path


def sha256_file(path: str | os.PathLike) -> str:
    """Hex SHA-256 of the file at ``path``."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _git(path: str | os.PathLike | None, *args: str) -> str | None:
    """stdout of ``git -C <folder> args`` (folder: ``path``, default this package), None when git fails."""
    folder = Path(path) if path is not None else Path(__file__).resolve().parent
    try:
        proc = subprocess.run(["git", "-C", str(folder), *args], check=False, capture_output=True, text=True,
                              timeout=_GIT_TIMEOUT_S)
    except (OSError, subprocess.SubprocessError):
        return None
    return proc.stdout if proc.returncode == 0 else None


def git_commit(path: str | os.PathLike | None = None) -> str | None:
    """HEAD of the git checkout holding ``path`` (default: this package), or None (no git, or an installed package)."""
    out = _git(path, "rev-parse", "HEAD")
    commit = out.strip() if out is not None else ""
    return commit if re.fullmatch(r"[0-9a-f]{40}", commit) else None


def git_dirty(path: str | os.PathLike, pathspecs: Sequence[str] = ()) -> bool | None:
    """True when ``pathspecs`` (default: the whole checkout) of the checkout at ``path`` differ from HEAD
    or hold untracked files; None outside git."""
    out = _git(path, "status", "--porcelain", "--", *pathspecs)
    return bool(out.strip()) if out is not None else None
