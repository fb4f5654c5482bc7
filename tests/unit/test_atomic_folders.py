"""A write that fails leaves neither its temp file nor the folders made for it, and an OSError
without a file name gets the path that was being written; make-prompts writes its three sets
or none."""

from __future__ import annotations

import errno
from pathlib import Path

import pytest

from steerlab._util.io import atomic_path


def test_a_failed_write_removes_the_folders_it_made(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    target = tmp_path / "a" / "b" / "c" / "out.txt"
    with pytest.raises(OSError) as e, atomic_path(target) as tmp:
        tmp.write_text("half")
        raise OSError(errno.ENOSPC, "No space left on device")
    assert e.value.filename == str(target)
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["a"]  # "a" was there before


def test_make_prompts_writes_all_sets_or_none(tmp_path: Path, monkeypatch) -> None:
    from steerlab.cli import reliability
    from steerlab.tasks import prompts

    real = prompts.write_prompts
    calls = []

    def second_fails(rows: object, path: Path) -> None:
        calls.append(path)
        if len(calls) == 2:
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        real(rows, path)  # type: ignore[arg-type]

    monkeypatch.setattr(prompts, "write_prompts", second_fails)
    out = tmp_path / "p"
    with pytest.raises(OSError):
        reliability.make_prompts_cmd(out_dir=out, n_train=3, n_test=3, n_benign=3)
    assert len(calls) == 2 and not out.exists()
