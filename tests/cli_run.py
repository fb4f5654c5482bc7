"""Run ``steerlab ARGV`` in-process and capture its exit code, stdout and stderr."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from steerlab.cli import main


@dataclass
class Result:
    code: int
    out: str
    err: str


def cli(capsys: pytest.CaptureFixture[str], *argv: object) -> Result:
    """Run ``steerlab ARGV`` in-process; exit code 0 when ``main`` returns normally."""
    capsys.readouterr()
    try:
        main([str(a) for a in argv])
        code = 0
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
    out, err = capsys.readouterr()
    return Result(code, out, err)
