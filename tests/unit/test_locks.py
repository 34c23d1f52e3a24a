"""Output locks: a second writer is refused while the first runs, a killed writer's lock is stale and needs
--force, a clean exit removes the lock. Holders are real processes (SIGTERM through the CLI: tests/e2e)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from czii import locks
from czii.errors import OutputError

HOLDER = textwrap.dedent("""
    import sys, time
    from czii import locks
    with locks.hold(sys.argv[1], "output", sys.argv[2]):
        print("held", flush=True)
        time.sleep(60)
""")


def _start_holder(lock: Path, target: Path) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(lock), str(target)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_a_second_writer_is_refused_naming_the_output_and_the_holder(tmp_path):
    lock = locks.folder_lock(tmp_path / "run")
    holder = _start_holder(lock, tmp_path / "run")
    try:
        with pytest.raises(OutputError) as err:
            with locks.hold(lock, "run directory", tmp_path / "run"):
                pass
        message = str(err.value)
        assert f"run directory {tmp_path / 'run'} is being written by pid {holder.pid}" in message
        assert str(lock) in message
        with pytest.raises(OutputError, match=f"pid {holder.pid}"):
            locks.check_free(lock, "run directory", tmp_path / "run")
        assert json.loads(lock.read_text())["pid"] == holder.pid  # the refused writer left the holder's record
    finally:
        holder.kill()
        holder.wait()


def test_a_killed_holder_leaves_a_stale_lock_that_only_force_takes_over(tmp_path, capsys):
    lock = locks.sibling_lock(tmp_path / "out.csv")
    assert lock == tmp_path / "out.csv.lock"
    holder = _start_holder(lock, tmp_path / "out.csv")
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    assert lock.is_file()
    locks.check_free(lock, "output", tmp_path / "out.csv")  # nobody holds it
    with pytest.raises(OutputError, match=f"stale lock {lock} left by pid {holder.pid}.*--force"):
        with locks.hold(lock, "output", tmp_path / "out.csv"):
            pass
    assert json.loads(lock.read_text())["pid"] == holder.pid
    with locks.hold(lock, "output", tmp_path / "out.csv", force=True):
        assert json.loads(lock.read_text())["pid"] == os.getpid()
        assert f"taking over the stale lock {lock} of pid {holder.pid}" in capsys.readouterr().err
    assert not lock.exists()


def test_locks_are_reentrant_in_one_process_and_remove_the_folders_they_created(tmp_path):
    lock = locks.folder_lock(tmp_path / "new" / "run")
    with locks.hold(lock, "run directory", lock.parent):
        with locks.hold(lock, "run directory", lock.parent):  # e.g. an experiment training its own folds
            locks.check_free(lock, "run directory", lock.parent)
        assert lock.is_file()
    assert not (tmp_path / "new").exists()  # nothing else was written: no empty folders left behind
    with locks.hold(lock, "run directory", lock.parent):
        (lock.parent / "kept.txt").write_text("output")
    assert (lock.parent / "kept.txt").is_file() and not lock.exists()


def test_a_lock_is_released_when_its_block_raises(tmp_path):
    lock = tmp_path / "a.lock"
    with pytest.raises(RuntimeError):
        with locks.hold(lock, "output", tmp_path / "a"):
            raise RuntimeError("boom")
    assert not lock.exists()
    started = time.monotonic()
    with locks.hold(lock, "output", tmp_path / "a"):
        pass
    assert time.monotonic() - started < 1
