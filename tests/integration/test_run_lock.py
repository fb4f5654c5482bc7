"""One process at a time works in a run directory: a second one fails at once naming the holder,
a lock left by a dead process is taken over, and a live writer's temp files are never removed."""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from tests.pipeline_helpers import KEY, run_cmd, tiny_run_config

from steerlab.errors import SteerlabError
from steerlab.pipelines.reliability.config import load_config
from steerlab.pipelines.reliability.run import run_stages
from steerlab.pipelines.reliability.store import LOCK_NAME, RunDir


def _config(tmp: Path, out: str = "runs") -> Path:
    return tiny_run_config(tmp, out, "locked", max_new_tokens=3)


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONUNBUFFERED": "1"}


def _open_in_child(cfg: Path, run_dir: Path | None = None) -> subprocess.CompletedProcess[str]:
    """``RunDir.open`` (or ``run_stages``' opening of ``--run-dir``) in another process."""
    if run_dir is None:
        call = f"RunDir.open(load_config({str(cfg)!r}))"
    else:
        call = f"open_run(load_config({str(cfg)!r}), None, Path({str(run_dir)!r}))"
    code = (
        "import sys\nfrom pathlib import Path\n"
        "from steerlab.errors import SteerlabError\n"
        "from steerlab.pipelines.reliability.config import load_config\n"
        "from steerlab.pipelines.reliability.run import open_run\n"
        "from steerlab.pipelines.reliability.store import RunDir\n"
        f"try:\n    {call}\nexcept SteerlabError as e:\n    print(e, file=sys.stderr)\n"
        "    sys.exit(2)\n"
    )
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=_env()
    )


def test_second_process_fails_naming_the_holder(tmp_path: Path) -> None:
    cfg_path = _config(tmp_path)
    cfg = load_config(cfg_path)
    run = RunDir.open(cfg)
    try:
        holder = json.loads((run.path / LOCK_NAME).read_text())
        assert holder["pid"] == os.getpid()
        # a second opening in this very process is refused as well (flock is per open file)
        with pytest.raises(SteerlabError, match=rf"in use by pid {os.getpid()}\b"):
            RunDir.open(cfg)
        # the CLI: one error line naming this pid, exit 2, before any model is loaded
        done = subprocess.run(
            run_cmd(cfg_path), capture_output=True, text=True, timeout=300, env=_env()
        )
        assert done.returncode == 2, done.stderr[-2000:]
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1, done.stderr
        assert re.fullmatch(
            rf"error: run directory {re.escape(str(run.path))} is in use by pid {os.getpid()} "
            r"\(started [^)]+\); wait for it to finish or stop it",
            lines[0],
        ), lines[0]
        # the same through --run-dir
        child = _open_in_child(cfg_path, run.path)
        assert child.returncode == 2 and f"pid {os.getpid()}" in child.stderr, child.stderr
    finally:
        run.release()
    # released: the next one gets it
    assert (run.path / LOCK_NAME).read_text() == ""
    child = _open_in_child(cfg_path)
    assert child.returncode == 0, child.stderr


def test_lock_of_a_dead_process_is_taken_over(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cfg = load_config(_config(tmp_path))
    run = RunDir.open(cfg)
    run.release()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = {"pid": dead.pid, "host": "h", "started": "2000-01-01T00:00:00"}
    (run.path / LOCK_NAME).write_text(json.dumps(stale))
    # and a process that died holding the flock (SIGKILL): the kernel dropped it
    killed = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time\n"
            "from steerlab.pipelines.reliability.config import load_config\n"
            "from steerlab.pipelines.reliability.store import RunDir\n"
            f"RunDir.open(load_config({str(_config(tmp_path))!r}))\n"
            "print('locked', flush=True)\ntime.sleep(600)\n",
        ],
        stdout=subprocess.PIPE,
        text=True,
        env=_env(),
    )
    assert killed.stdout is not None
    assert killed.stdout.readline().strip() == "locked"
    killed.kill()
    killed.wait()
    assert json.loads((run.path / LOCK_NAME).read_text())["pid"] == killed.pid

    with caplog.at_level(logging.INFO, logger="steerlab"):
        again = RunDir.open(cfg)
    try:
        assert f"taking over the lock of pid {killed.pid}" in caplog.text
        assert json.loads((run.path / LOCK_NAME).read_text())["pid"] == os.getpid()
    finally:
        again.release()


def test_temp_files_of_a_live_holder_are_not_touched(tmp_path: Path) -> None:
    cfg_path = _config(tmp_path)
    run = RunDir.open(load_config(cfg_path))
    tmp = run.parts("baseline") / ".part-00000-abc.parquet.x1y2.tmp"
    try:
        tmp.parent.mkdir(parents=True)
        tmp.write_bytes(b"half a shard")
        child = _open_in_child(cfg_path)
        assert child.returncode == 2 and f"pid {os.getpid()}" in child.stderr, child.stderr
        assert tmp.read_bytes() == b"half a shard"
    finally:
        run.release()
    # a left-over temp file of a holder that is gone is removed by the next opener
    child = _open_in_child(cfg_path)
    assert child.returncode == 0, child.stderr
    assert not tmp.exists()


@pytest.mark.timeout(600)
def test_two_run_processes_on_one_run_directory(tmp_path: Path) -> None:
    cfg = _config(tmp_path)
    run_dir = tmp_path / "runs" / "locked"
    procs = [
        subprocess.Popen(
            run_cmd(cfg),
            cwd=tmp_path,
            env=_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    outs = [p.communicate(timeout=540) for p in procs]
    codes = sorted(p.returncode for p in procs)
    assert codes == [0, 2], [
        (p.returncode, out[1][-2000:]) for p, out in zip(procs, outs, strict=True)
    ]
    winner, loser = (0, 1) if procs[0].returncode == 0 else (1, 0)
    lines = outs[loser][1].strip().splitlines()
    assert len(lines) == 1, outs[loser][1]
    assert lines[0].startswith(f"error: run directory {run_dir} is in use by pid ")
    assert f"pid {procs[winner].pid} " in lines[0]
    # the loser never got as far as loading a model or writing anything
    assert "loaded" not in outs[loser][1]

    parts = sorted(run_dir.glob("parts/*/part-*.parquet"))
    assert parts
    for stage_dir in {p.parent for p in parts}:
        indices = [p.name.split("-")[1] for p in stage_dir.glob("part-*.parquet")]
        assert len(indices) == len(set(indices)), f"{stage_dir.name}: a shard written twice"
    assert not list(run_dir.rglob(".*.tmp"))
    results = pd.read_parquet(run_dir / "results.parquet")
    assert not results.duplicated(KEY).any()
    stacked = pd.concat([pd.read_parquet(p) for p in parts], ignore_index=True)
    assert not stacked.duplicated(KEY).any()
    # the lock is free again: the same command now resumes (nothing to compute) and succeeds
    mtimes = {p: p.stat().st_mtime_ns for p in parts}
    again = run_stages(load_config(cfg), progress=False)
    assert again.path == run_dir
    assert {p: p.stat().st_mtime_ns for p in parts} == mtimes
