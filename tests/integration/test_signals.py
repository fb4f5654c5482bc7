"""SIGINT / SIGTERM: a real ``steerlab run`` interrupted mid-sweep prints one line, exits 130 / 143,
leaves no temp or half-written file, and the same command resumes to the uninterrupted rows. The
entry point itself (exit codes typer returns, Abort, signals) is checked in-process."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pytest
import typer
from tests.pipeline_helpers import KEY, run_cmd, tiny_run_config

from steerlab import cli
from steerlab._util.io import atomic_path
from steerlab.pipelines.reliability.config import load_config
from steerlab.pipelines.reliability.run import run_stages

COLS = [*KEY, "text", "n_tokens", "refusal_score"]
MESSAGE = "interrupted; rerun the same command to resume"


def _config(tmp: Path, out: str) -> Path:
    # long enough completions that the sweep lasts seconds: the signal must land inside it,
    # not after the report was written (a race on a loaded machine with 5-token completions)
    return tiny_run_config(tmp, out, "signals", max_new_tokens=40)


def _rows(run_dir: Path) -> pd.DataFrame:
    df = pd.read_parquet(run_dir / "results.parquet")
    return df.sort_values(KEY).reset_index(drop=True)[COLS]


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> pd.DataFrame:
    tmp = tmp_path_factory.mktemp("reference")
    return _rows(run_stages(load_config(_config(tmp, "ref")), progress=False).path)


@pytest.mark.timeout(300)
@pytest.mark.parametrize(
    ("sig", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)], ids=["INT", "TERM"]
)
def test_signal_mid_sweep_one_line_exit_code_and_resume(
    sig: signal.Signals, code: int, reference: pd.DataFrame, tmp_path: Path
) -> None:
    cfg = _config(tmp_path, "run")
    run_dir = tmp_path / "run" / "signals"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        run_cmd(cfg),
        cwd=tmp_path,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 120
        while not list(run_dir.glob("parts/sweep/part-*.parquet")):
            assert proc.poll() is None, f"run ended before the sweep: {proc.stderr}"
            assert time.monotonic() < deadline, "the sweep did not start in time"
            time.sleep(0.05)
        assert proc.poll() is None, "run finished before it could be interrupted"
        proc.send_signal(sig)
        _, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()

    assert proc.returncode == code, stderr
    assert "Traceback" not in stderr, stderr
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert lines[-1] == MESSAGE and lines.count(MESSAGE) == 1, stderr  # the run's log lines above
    assert not list(run_dir.rglob(".*.tmp")), "temp files left behind"
    assert not (run_dir / "results.parquet").exists()
    parts = sorted(run_dir.glob("parts/*/*.parquet"))
    sweep_parts = [p for p in parts if p.parent.name == "sweep"]
    assert sweep_parts, "no sweep part survived"
    for p in parts:  # every part file left is complete
        pd.read_parquet(p)
    mtimes = {p: p.stat().st_mtime_ns for p in parts}

    done = subprocess.run(
        run_cmd(cfg), cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-2000:]
    for p, mtime in mtimes.items():
        assert p.stat().st_mtime_ns == mtime, f"finished part {p.name} was recomputed"
    resumed = _rows(run_dir)
    assert not resumed.duplicated(KEY).any()
    pd.testing.assert_frame_equal(resumed, reference)


# ----------------------------------------------------------------------------- entry point


_get_command = typer.main.get_command


def _main_with(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], body: Callable[[], None]
) -> tuple[int, list[str]]:
    """Run ``cli.main`` on a one-command app whose command calls ``body``: (exit code, stderr)."""
    app = typer.Typer()
    app.command()(body)
    monkeypatch.setattr(typer.main, "get_command", lambda _app: _get_command(app))
    with pytest.raises(SystemExit) as exc:
        cli.main([])
    code = exc.value.code
    assert isinstance(code, int)
    return code, capsys.readouterr().err.strip().splitlines()


def _raise(e: BaseException) -> Callable[[], None]:
    def body() -> None:
        raise e

    return body


def test_typer_exit_code_is_not_dropped(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    assert _main_with(monkeypatch, capsys, _raise(typer.Exit(3))) == (3, [])


def test_keyboard_interrupt_is_one_line_and_130(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    assert _main_with(monkeypatch, capsys, _raise(KeyboardInterrupt())) == (130, [MESSAGE])


@pytest.mark.parametrize(
    ("sig", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)], ids=["INT", "TERM"]
)
def test_signal_runs_cleanup_and_restores_handlers(
    sig: signal.Signals,
    code: int,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
) -> None:
    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    target = tmp_path / "out.txt"

    def body() -> None:
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            os.kill(os.getpid(), sig)
            time.sleep(5)  # the handler raises before this ends

    assert _main_with(monkeypatch, capsys, body) == (code, [MESSAGE])
    assert list(tmp_path.iterdir()) == []  # neither the target nor its temp file
    assert {s: signal.getsignal(s) for s in before} == before


def test_abort_from_a_prompt(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    assert _main_with(monkeypatch, capsys, _raise(typer.Abort())) == (130, ["aborted"])
    click_exc = pytest.importorskip("click.exceptions")
    assert _main_with(monkeypatch, capsys, _raise(click_exc.Abort())) == (130, ["aborted"])

    def prompt() -> None:  # what click.prompt does with Ctrl-C
        try:
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(5)
        except KeyboardInterrupt:
            raise typer.Abort() from None

    assert _main_with(monkeypatch, capsys, prompt) == (130, [MESSAGE])
