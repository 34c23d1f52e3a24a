"""czii.io: atomic writes leave the old file or the whole new one, streamed digests, git state of a checkout."""

from __future__ import annotations

import hashlib
import re
import subprocess

import pytest

from czii.io import atomic_path, atomic_write_bytes, atomic_write_text, git_commit, git_dirty, sha256_file, temp_sibling


def test_atomic_writes_create_the_folder_and_leave_no_temporary_file(tmp_path):
    target = tmp_path / "a" / "b" / "out.txt"
    assert atomic_write_text(target, "Å 1\n") == target
    assert target.read_bytes() == "Å 1\n".encode("utf-8")
    assert atomic_write_bytes(target, b"\x00\x01") == target
    assert target.read_bytes() == b"\x00\x01"
    assert [p.name for p in target.parent.iterdir()] == ["out.txt"]


def test_a_failed_write_keeps_the_old_file_and_removes_the_temporary_one(tmp_path):
    target = tmp_path / "out.bin"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError, match="interrupted"):
        with atomic_path(target) as tmp:
            tmp.write_bytes(b"half")
            raise RuntimeError("interrupted")
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.bin"]


def test_temp_sibling_is_a_fresh_hidden_name_in_the_same_folder(tmp_path):
    names = {temp_sibling(tmp_path / "store.zarr").name for _ in range(20)}
    assert len(names) == 20
    assert all(re.fullmatch(r"\.store\.zarr\.tmp-[0-9a-f]{8}", n) for n in names)
    old = temp_sibling(tmp_path / "store.zarr", "old")
    assert old.parent == tmp_path and re.fullmatch(r"\.store\.zarr\.old-[0-9a-f]{8}", old.name)


def test_sha256_file_streams_files_larger_than_one_block(tmp_path):
    data = bytes(range(256)) * 9000  # ~2.2 MiB: three 1 MiB blocks
    path = tmp_path / "blob"
    path.write_bytes(data)
    assert sha256_file(path) == hashlib.sha256(data).hexdigest()


def test_git_state_of_a_checkout_and_outside_git(tmp_path):
    outside = tmp_path / "plain"
    outside.mkdir()
    repo = tmp_path / "repo"
    repo.mkdir()

    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t", *args],
                              check=True, capture_output=True, text=True).stdout

    git("init", "-q")
    (repo / "src").mkdir()
    (repo / "src" / "a.py").write_text("x = 1\n")
    (repo / "notes.txt").write_text("n\n")
    git("add", ".")
    git("commit", "-q", "-m", "first")
    if git_commit(outside) is not None:
        pytest.skip("tmp_path lies inside a git checkout")
    assert git_commit(repo) == git("rev-parse", "HEAD").strip()
    assert git_dirty(repo) is False
    (repo / "notes.txt").write_text("changed\n")
    assert git_dirty(repo) is True
    assert git_dirty(repo, ["src"]) is False  # only the given paths count
    (repo / "src" / "new.py").write_text("")
    assert git_dirty(repo, ["src"]) is True  # untracked files count
    assert git_dirty(outside) is None
