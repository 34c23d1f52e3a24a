"""One writer per output: the lock every czii command that writes a run directory, an inference output or a
Kaggle bundle holds while it writes.

A lock is a file (``czii.lock`` inside a folder it guards, ``<name>.lock`` beside a file or a folder that is
replaced whole) holding the holder's pid, host, command and start time, and an exclusive ``flock`` on it
for as long as the holder runs. The kernel drops the ``flock`` when the holder dies, however it dies, so:

- a second writer finds the ``flock`` taken and refuses at once, naming the output and the holder;
- a lock file whose ``flock`` is free but which still names a holder was left by one that did not end
  cleanly (``kill -9``, a crash, a lost node): it is *stale*, and refused unless ``force`` takes it over
  (a note names the old holder). Only a writer that knows nothing else writes there should force it.

A clean exit (errors, Ctrl-C and SIGTERM included: ``czii.cli`` turns SIGTERM into an exit) removes the
file. Within one process a lock is re-entrant (``czii experiment`` holds its run directory and trains its
folds itself), and :func:`check_free` asks whether another process holds a lock without taking it (a fold's
training and a tuning of its run directory exclude each other). Torch-free.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path

from czii.errors import OutputError

LOCK_NAME = "czii.lock"
LOCK_SUFFIX = ".lock"
_ATTEMPTS = 3  # a check_free probe holds a lock for microseconds: retry a refused flock before reporting it
_RETRY_S = 0.05
_HELD: dict[Path, int] = {}  # lock path -> open descriptor, for the locks this process holds


def folder_lock(folder: str | os.PathLike) -> Path:
    """The lock of a folder that is written in place (a run directory, a fold): ``<folder>/czii.lock``."""
    return Path(folder) / LOCK_NAME


def sibling_lock(path: str | os.PathLike) -> Path:
    """The lock of a file, or of a folder replaced whole: ``<path>.lock`` beside it."""
    path = Path(path)
    return path.with_name(path.name + LOCK_SUFFIX)


def _describe(holder: dict | None) -> str:
    if not holder:
        return "another process"
    return (f"pid {holder.get('pid')} on {holder.get('host')} (`{holder.get('command')}`, started "
            f"{holder.get('started')})")


def _read(fd: int) -> dict | None:
    raw = os.pread(fd, 1 << 16, 0)
    try:
        doc = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        return None
    return doc if isinstance(doc, dict) else None


def _key(path: str | os.PathLike) -> Path:
    return Path(os.path.abspath(path))


def _acquire(path: Path, what: str, target: Path, force: bool) -> int:
    for attempt in range(_ATTEMPTS):
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read(fd)
            os.close(fd)
            if attempt + 1 < _ATTEMPTS:
                time.sleep(_RETRY_S)
                continue
            raise OutputError(f"{what} {target} is being written by {_describe(holder)} (lock {path}); wait for it "
                              "to finish, or choose another path") from None
        try:
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if not same:  # the holder released (and removed) it between our open and our flock: open the new one
            os.close(fd)
            continue
        previous = _read(fd)
        if previous is not None or os.fstat(fd).st_size:
            if not force:
                os.close(fd)
                raise OutputError(f"{what} {target}: stale lock {path} left by {_describe(previous)}, which no "
                                  "longer holds it (killed or crashed); make sure nothing else writes there, then "
                                  "pass --force to take it over")
            print(f"note: {what} {target}: taking over the stale lock {path} of {_describe(previous)} (--force)",
                  file=sys.stderr)
        record = {"pid": os.getpid(), "host": socket.gethostname(), "command": " ".join(sys.argv),
                  "started": datetime.now(timezone.utc).isoformat(timespec="seconds")}
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(record) + "\n").encode("utf-8"), 0)
        return fd
    raise OutputError(f"{what} {target}: could not take its lock {path} (it kept being replaced)")


@contextmanager
def hold(lock: str | os.PathLike, what: str, target: str | os.PathLike, *, force: bool = False) -> Iterator[Path]:
    """Hold the lock file ``lock`` of the output ``target`` (``what`` names it in errors) for the ``with`` block;
    OutputError when another process holds it or a stale one is there without ``force`` (module docstring).
    Folders created for the lock are removed again on release when nothing else was written into them."""
    key = _key(lock)
    if key in _HELD:
        yield key
        return
    created = [p for p in reversed(key.parents) if not p.exists()]
    key.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = _acquire(key, what, Path(target), force)
    except BaseException:
        _remove_empty(created)
        raise
    _HELD[key] = fd
    try:
        yield key
    finally:
        del _HELD[key]
        key.unlink(missing_ok=True)
        os.close(fd)
        _remove_empty(created)


def _remove_empty(folders: list[Path]) -> None:
    for folder in reversed(folders):
        try:
            folder.rmdir()
        except OSError:
            return


def check_free(lock: str | os.PathLike, what: str, target: str | os.PathLike) -> None:
    """OutputError when another live process holds ``lock`` (a stale lock, or one this process holds, is free)."""
    key = _key(lock)
    if key in _HELD:
        return
    try:
        fd = os.open(key, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = _read(fd)
        raise OutputError(f"{what} {target} is being written by {_describe(holder)} (lock {key}); wait for it to "
                          "finish") from None
    finally:
        os.close(fd)
