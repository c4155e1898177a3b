"""Atomic writes and what a killed writer leaves behind."""

from __future__ import annotations

import os

import pytest

from microtex import _files

DEAD = 2**22 + 12345  # above Linux's default pid_max: no such process


def test_a_dead_writers_temporaries_are_removed_by_the_next_write(tmp_path):
    target = tmp_path / "features.npz"
    stale_file = tmp_path / f".features.npz.{DEAD}.abc123.tmp"
    stale_file.write_bytes(b"half a table")
    stale_dir = tmp_path / f".features.npz.{DEAD}.xyz789.tmp"
    stale_dir.mkdir()
    (stale_dir / "part").write_text("x")
    alive = tmp_path / f".features.npz.{os.getpid()}.def456.tmp"  # a writer still running
    alive.write_bytes(b"in progress")
    other = tmp_path / f".other.npz.{DEAD}.abc123.tmp"  # another file's: not ours to touch
    other.write_bytes(b"x")
    _files.atomic_write_bytes(target, b"table")
    assert target.read_bytes() == b"table"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["features.npz", alive.name, other.name]
    )


def test_a_bundle_moved_aside_by_a_killed_replace_is_put_back(tmp_path):
    # killed between the two renames of atomic_directory(replace=True): the old version
    # is the only copy, and the next write of that path restores it before anything else
    target = tmp_path / "model"
    aside = tmp_path / f".model.{DEAD}.abc123.old"
    aside.mkdir()
    (aside / "microtex.json").write_text("{}")
    assert _files.remove_stale_temporaries(target) == []
    assert (target / "microtex.json").read_text() == "{}" and not aside.exists()


def test_the_writer_pid_is_in_every_temporary_name(tmp_path):
    with _files.atomic_path(tmp_path / "a.csv") as tmp:
        assert tmp.name.startswith(f".a.csv.{os.getpid()}.") and tmp.name.endswith(".tmp")
    with _files.atomic_directory(tmp_path / "d") as staging:
        assert staging.name.startswith(f".d.{os.getpid()}.")
    with pytest.raises(RuntimeError), _files.atomic_path(tmp_path / "b.csv") as tmp:
        tmp.write_text("partial")
        raise RuntimeError
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.csv", "d"]
