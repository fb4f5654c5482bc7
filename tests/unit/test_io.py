"""Atomic writes: finished files get the usual mode; errors name the user's path."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from steerlab._util.io import atomic_path, atomic_write_text


@pytest.mark.parametrize("mask", [0o022, 0o077, 0o002])
def test_finished_file_has_the_umask_default_mode(tmp_path: Path, mask: int) -> None:
    old = os.umask(mask)
    try:
        atomic_write_text(tmp_path / "a.txt", "hi\n")
        expected = 0o666 & ~mask
        with open(tmp_path / "b.txt", "w") as f:  # what any new file would get
            f.write("hi\n")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "a.txt").stat().st_mode) == expected
    assert stat.S_IMODE((tmp_path / "b.txt").stat().st_mode) == expected


def test_error_names_the_users_path_not_the_temp_file(tmp_path: Path) -> None:
    target = tmp_path / "out.jsonl"
    target.mkdir()  # replacing a directory with a file fails
    with pytest.raises(OSError) as exc:
        atomic_write_text(target, "hi\n")
    assert str(exc.value).endswith(f": '{target}'")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.jsonl"]


def test_error_while_writing_names_the_users_path(tmp_path: Path) -> None:
    target = tmp_path / "out.txt"
    with pytest.raises(OSError) as exc, atomic_path(target) as tmp:
        raise FileNotFoundError(2, "No such file or directory", str(tmp))
    assert str(target) in str(exc.value)
    assert ".tmp" not in str(exc.value)
    assert list(tmp_path.iterdir()) == []
