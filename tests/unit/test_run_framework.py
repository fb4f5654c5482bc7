"""The run framework's guarantees, each checked once on the toy workflow (no model) with the
local executor: the run directory and manifest, changed configs refused, atomic part files and
idempotent reruns, resume after SIGKILL, strays and duplicate keys refused, work errors, the
lock, progress bars, executor specs, checks before writing, and the stages argument.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import yaml
from tests.toy_workflow import STAGES, Toy, ToyConfig, ToyRow

from steerlab.errors import SteerlabError
from steerlab.runs import ExecutorSpec, RunDir, execute, make_executor, plan_shards, read_part

REPO = Path(__file__).resolve().parents[2]
SHARDED = ("squares", "cubes")
PART_RE = re.compile(r"part-\d{5}-[0-9a-f]{10}\.parquet")
DEADLINE_S = 60.0  # a generous bound on waiting for a subprocess; never a timing assert


# ------------------------------------------------------------ helpers


def make_cfg(root: Path, **overrides: Any) -> ToyConfig:
    """A toy config whose runs go under ``root/runs``, validated like a user's YAML."""
    return ToyConfig.parse({"output_dir": str(root / "runs"), **overrides}, "test config")


def with_changes(cfg: ToyConfig, **changes: Any) -> ToyConfig:
    return ToyConfig.parse({**cfg.model_dump(mode="json"), **changes}, "test config")


def snapshot(path: Path) -> dict[str, bytes]:
    """Every file under ``path`` (relative name -> content)."""
    return {
        str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()
    }


def manifest(run_path: Path) -> dict[str, Any]:
    return json.loads((run_path / "manifest.json").read_text())


def expected_names(cfg: ToyConfig, stage: str) -> list[str]:
    rows = [ToyRow(stage, i) for i in range(cfg.n_rows)]
    return [s.name for s in plan_shards(stage, rows, cfg.shard_size)]


def part_names(run_path: Path, stage: str) -> list[str]:
    return sorted(p.name for p in (run_path / "parts" / stage).glob("part-*.parquet"))


def markers(marker_dir: Path) -> set[tuple[str, int]]:
    """(stage, first row) of every shard a ``Toy(marker_dir=...)`` computed."""
    out = set()
    for p in marker_dir.iterdir():
        _pid, stage, first = p.name.split("-")
        out.add((stage, int(first)))
    return out


def results(run_path: Path) -> pd.DataFrame:
    return pd.read_parquet(run_path / "results.parquet")


def assert_every_row_once(df: pd.DataFrame, n_rows: int) -> None:
    got = sorted(zip(df["stage"], df["i"], strict=True))
    assert got == sorted((s, i) for s in SHARDED for i in range(n_rows))


def write_cfg_file(tmp_path: Path, cfg: ToyConfig) -> Path:
    p = tmp_path / "toy.yaml"
    p.write_text(cfg.dump())
    return p


def spawn_toy(cfg_file: Path, marker_dir: Path | None = None) -> subprocess.Popen[str]:
    """``python -m tests.toy_workflow CONFIG local`` as a process of its own."""
    argv = [sys.executable, "-m", "tests.toy_workflow", str(cfg_file), "local"]
    if marker_dir is not None:
        argv += ["-", str(marker_dir)]
    return subprocess.Popen(
        argv, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def wait_until(proc: subprocess.Popen[str], ready: Callable[[], bool]) -> None:
    """Poll ``ready()`` while ``proc`` runs; fail (with its output) if it exits first."""
    deadline = time.monotonic() + DEADLINE_S
    while not ready():
        if proc.poll() is not None:
            out, err = proc.communicate()
            pytest.fail(f"toy process exited ({proc.returncode}) too early:\n{out}\n{err}")
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail("toy process never got there")
        time.sleep(0.01)


def kill(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGKILL)
    proc.communicate()


# ------------------------------------------------------------ 1. run dir


def test_run_dir_config_and_manifest(tmp_path: Path) -> None:
    cfg = make_cfg(tmp_path, offset=3)
    path = Toy().run_path(cfg, None)

    execute(Toy(), cfg, stages=["squares"], progress=False)
    m = manifest(path)
    assert set(m["stage_wall_s"]) == {"squares"}
    assert set(m["timings_s"]) == set(m["stages"]) == {"squares"}
    summary = {k: v for k, v in m["executor"].items() if k != "finished"}
    assert summary == {"executor": "local", "workers": 1, "shards": 5, "rows": 20}
    assert [r["shards"] for r in m["executor_runs"]] == [5]  # one entry per invocation
    assert "total_wall_s" not in m  # not every stage ran

    run = execute(Toy(), cfg, progress=False)
    assert run.path == path == tmp_path / "runs" / f"toy-{cfg.digest()}"
    # saved as validated: every field (defaults included), and it parses back to the same config
    saved = yaml.safe_load((path / "config.yaml").read_text())
    assert set(saved) == set(ToyConfig.model_fields)
    assert ToyConfig.parse(saved, "config.yaml") == cfg
    m = manifest(path)
    assert set(m["stage_wall_s"]) == set(STAGES)
    assert set(m["timings_s"]) == set(m["stages"]) == set(SHARDED)
    assert m["stages"]["cubes"]["rows"] == m["stages"]["cubes"]["computed"] == 20
    summary = {k: v for k, v in m["executor"].items() if k != "finished"}
    assert summary == {"executor": "local", "workers": 1, "shards": 5, "rows": 20}
    assert [r["shards"] for r in m["executor_runs"]] == [5, 5]  # one entry per invocation
    assert isinstance(m["total_wall_s"], float)


# ------------------------------------------------------------ 2. changed config


def test_changed_config_is_refused_and_run_id_is_not_a_change(tmp_path: Path) -> None:
    cfg = make_cfg(tmp_path, run_id="r1", n_rows=8)
    run = execute(Toy(), cfg, progress=False)
    before = snapshot(run.path)
    changed = with_changes(cfg, offset=5)

    with pytest.raises(SteerlabError, match=r"differs in: offset\)"):
        execute(Toy(), changed, progress=False)  # same run id, so the same directory
    assert snapshot(run.path) == before
    with pytest.raises(SteerlabError, match=r"differs in: offset\)"):
        execute(Toy(), changed, run_dir=run.path, progress=False)
    assert snapshot(run.path) == before

    marker_dir = tmp_path / "markers"
    marker_dir.mkdir()
    renamed = with_changes(cfg, run_id="another-name")
    execute(Toy(marker_dir=str(marker_dir)), renamed, run_dir=run.path, progress=False)
    assert markers(marker_dir) == set()  # accepted as the same run: nothing to compute
    assert (run.path / "config.yaml").read_bytes() == before["config.yaml"]


# ------------------------------------------------------------ 3. parts, rerun


def test_part_files_and_a_rerun_computes_nothing(tmp_path: Path) -> None:
    cfg = make_cfg(tmp_path)
    first, second = tmp_path / "m1", tmp_path / "m2"
    first.mkdir()
    second.mkdir()

    run = execute(Toy(marker_dir=str(first)), cfg, progress=False)
    assert markers(first) == {(s, i) for s in SHARDED for i in range(0, 20, 4)}
    for stage in SHARDED:
        files = sorted((run.path / "parts" / stage).iterdir())
        assert [p.name for p in files] == expected_names(cfg, stage)
        assert all(PART_RE.fullmatch(p.name) for p in files)
    parts_before = {
        p: (p.read_bytes(), p.stat().st_mtime_ns) for p in (run.path / "parts").rglob("part-*")
    }
    res_before = results(run.path)
    assert_every_row_once(res_before, cfg.n_rows)

    execute(Toy(marker_dir=str(second)), cfg, progress=False)
    assert markers(second) == set()
    parts_after = {
        p: (p.read_bytes(), p.stat().st_mtime_ns) for p in (run.path / "parts").rglob("part-*")
    }
    assert parts_after == parts_before
    pd.testing.assert_frame_equal(results(run.path), res_before)


# ------------------------------------------------------------ 4. SIGKILL


def test_resume_after_sigkill(tmp_path: Path) -> None:
    cfg = make_cfg(tmp_path, n_rows=24, shard_size=3, sleep_s=0.04)  # 8 shards a stage
    path = Toy().run_path(cfg, None)
    squares = path / "parts" / "squares"
    proc = spawn_toy(write_cfg_file(tmp_path, cfg))
    try:
        wait_until(proc, lambda: len(list(squares.glob("part-*.parquet"))) >= 3)
    finally:
        kill(proc)
    assert proc.returncode == -signal.SIGKILL  # killed mid-run, not finished

    finished = {stage: part_names(path, stage) for stage in SHARDED}
    for stage in SHARDED:
        stage_dir = path / "parts" / stage
        if not stage_dir.is_dir():
            continue
        for p in stage_dir.iterdir():
            # a shard in flight is only ever a hidden temp file, never a part file
            assert PART_RE.fullmatch(p.name) or (p.name.startswith(".") and p.name.endswith(".tmp"))
        for name in finished[stage]:
            assert len(read_part(stage_dir / name, stage)) == 3

    marker_dir = tmp_path / "rerun-markers"
    marker_dir.mkdir()
    execute(Toy(marker_dir=str(marker_dir)), cfg, progress=False)
    expected_recomputed = {
        (stage, int(shard_first))
        for stage in SHARDED
        for name, shard_first in zip(
            expected_names(cfg, stage), range(0, cfg.n_rows, cfg.shard_size), strict=True
        )
        if name not in finished[stage]
    }
    assert expected_recomputed  # the kill left work to do
    assert markers(marker_dir) == expected_recomputed  # and only that work was done
    assert not list(path.rglob("*.tmp"))

    ref_cfg = make_cfg(tmp_path / "ref", n_rows=24, shard_size=3)
    ref = execute(Toy(), ref_cfg, progress=False)
    for stage in SHARDED:
        assert part_names(path, stage) == part_names(ref.path, stage)
    res = results(path)
    assert_every_row_once(res, cfg.n_rows)
    pd.testing.assert_frame_equal(res, results(ref.path))


# ------------------------------------------------------------ 5. strays, keys


def test_stray_part_file_and_duplicate_keys_are_refused(tmp_path: Path) -> None:
    other = execute(Toy(), make_cfg(tmp_path / "other", n_rows=8, shard_size=3), progress=False)
    cfg = make_cfg(tmp_path, n_rows=8, shard_size=4)
    run = execute(Toy(), cfg, progress=False)
    stray_src = other.path / "parts" / "squares" / expected_names(other.load_config(), "squares")[0]
    stray = run.path / "parts" / "squares" / stray_src.name
    assert stray.name not in expected_names(cfg, "squares")
    stray.write_bytes(stray_src.read_bytes())
    res_before = (run.path / "results.parquet").read_bytes()

    with pytest.raises(SteerlabError, match="part files this config does not produce") as exc:
        execute(Toy(), cfg, progress=False)
    assert str(stray) in str(exc.value)
    assert (run.path / "results.parquet").read_bytes() == res_before  # nothing mixed in

    with pytest.raises(ValueError, match=r"share the key 'squares\|1'"):
        plan_shards("squares", [ToyRow("squares", i) for i in (0, 1, 1)], 2)


# ------------------------------------------------------------ 6. work error


def test_work_error_propagates_and_keeps_finished_shards(tmp_path: Path) -> None:
    cfg = make_cfg(tmp_path, n_rows=12, shard_size=4, fail_on=9)  # fails in the third shard
    path = Toy().run_path(cfg, None)
    with pytest.raises(SteerlabError, match="row 9: the toy work refuses this row"):
        execute(Toy(), cfg, progress=False)
    assert part_names(path, "squares") == sorted(expected_names(cfg, "squares")[:2])
    for name in part_names(path, "squares"):
        assert len(read_part(path / "parts" / "squares" / name, "squares")) == 4
    assert not (path / "parts" / "cubes").exists()
    RunDir.check_free(path)  # the lock was given back

    # resume-able: the same command redoes only the failing shard (and fails the same way)
    marker_dir = tmp_path / "markers"
    marker_dir.mkdir()
    with pytest.raises(SteerlabError, match="row 9"):
        execute(Toy(marker_dir=str(marker_dir)), cfg, progress=False)
    assert markers(marker_dir) == {("squares", 8)}


# ------------------------------------------------------------ 7. lock


def test_second_process_fails_at_once_naming_the_holder(tmp_path: Path) -> None:
    cfg = make_cfg(tmp_path, n_rows=40, shard_size=4, sleep_s=0.2)  # ~16 s: killed long before
    cfg_file = write_cfg_file(tmp_path, cfg)
    lock = Toy().run_path(cfg, None) / ".lock"

    def holder_pid() -> int | None:
        try:
            return json.loads(lock.read_text() or "{}").get("pid")
        except (OSError, ValueError):
            return None

    holder = spawn_toy(cfg_file)
    try:
        wait_until(holder, lambda: holder_pid() == holder.pid)
        second = subprocess.run(
            [sys.executable, "-m", "tests.toy_workflow", str(cfg_file), "local"],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=DEADLINE_S,
        )
        assert holder.poll() is None  # the second one gave up without waiting for the holder
    finally:
        kill(holder)
    assert second.returncode != 0
    assert f"is in use by pid {holder.pid} (started " in second.stderr


# ------------------------------------------------------------ 8. progress


@pytest.mark.parametrize("progress", [True, False])
def test_progress_bars(tmp_path: Path, capsys: pytest.CaptureFixture[str], progress: bool) -> None:
    cfg = make_cfg(tmp_path, n_rows=8, shard_size=4)
    execute(Toy(), cfg, progress=progress)
    err = capsys.readouterr().err
    for stage in SHARDED:
        bar = re.search(rf"{stage}: +\d+%.*8/8 \[\d\d:\d\d<\d\d:\d\d, .*row/s\]", err)
        assert (bar is not None) == progress, err
    assert "report:" not in err
    if not progress:
        assert "row/s" not in err and "%|" not in err


# ------------------------------------------------------------ 9. executor spec


def test_executor_spec_validation(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(SteerlabError, match="unknown executor 'dask': use one of local, ray"):
        ExecutorSpec("dask")  # type: ignore[arg-type]
    with pytest.raises(SteerlabError, match="need --executor ray"):
        ExecutorSpec(workers=2)
    with pytest.raises(SteerlabError, match="need --executor ray"):
        ExecutorSpec(address="auto")
    with pytest.raises(SteerlabError, match="--workers must be >= 1, got 0"):
        ExecutorSpec("ray", workers=0)

    monkeypatch.setitem(sys.modules, "ray", None)  # as if Ray were not installed
    with pytest.raises(SteerlabError, match=re.escape("steerlab[ray]")):
        make_executor(ExecutorSpec("ray"))


# ------------------------------------------------------------ 10. check


def test_workflow_check_runs_before_anything_is_written(tmp_path: Path) -> None:
    cfg = make_cfg(tmp_path, n_rows=20000)
    with pytest.raises(SteerlabError, match="n_rows"):
        execute(Toy(), cfg, progress=False)
    assert not Toy().run_path(cfg, None).exists()
    assert not (tmp_path / "runs").exists()


# ------------------------------------------------------------ 11. stages


def test_stages_argument(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = make_cfg(tmp_path, n_rows=8)
    with pytest.raises(
        SteerlabError, match="unknown stage 'plot': use one of squares, cubes, report"
    ):
        execute(Toy(), cfg, stages=["squares", "plot"], progress=False)
    assert not (tmp_path / "runs").exists()

    run = execute(Toy(), cfg, stages=list(SHARDED), progress=False)
    assert not (run.path / "results.parquet").exists()

    def no_executor(spec: ExecutorSpec) -> Any:
        raise AssertionError("a driver-only stage started the executor")

    monkeypatch.setattr("steerlab.runs.runner.make_executor", no_executor)
    execute(Toy(), cfg, stages=["report"], progress=False)
    assert_every_row_once(results(run.path), cfg.n_rows)
    assert "report" in manifest(run.path)["stage_wall_s"]
