"""``--executor ray`` gives the rows of a local run, each exactly once, whatever happens to the
processes: shards on Ray actors (one resource each) equal the local run row for row; a worker
SIGKILLed mid-shard costs only that shard, which is computed again elsewhere; an error of the
work itself reaches the driver as its own one-line error and is not retried; so does a worker
that dies while loading; a SIGKILLed driver is resumed by rerunning the same command.

One local Ray cluster (2 CPUs) is started for the whole module; the executor joins it (and leaves
it running) instead of starting its own, and ``steerlab run`` processes join it by address.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import re
import signal
import subprocess
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import ray
import yaml
from tests.pipeline_helpers import KEY, run_cmd, tiny_run_config
from tests.toy_workflow import Toy, ToyConfig

from steerlab.errors import SteerlabError
from steerlab.pipelines.reliability.config import load_config
from steerlab.pipelines.reliability.run import run_stages
from steerlab.runs import ExecutorSpec, RunDir, execute, make_executor

RAY2 = ExecutorSpec("ray", workers=2)
TOY_KEY = ["stage", "i"]


@pytest.fixture(scope="module")
def ray_address() -> Iterator[str]:
    """A local 2-CPU Ray cluster in this process (no GPUs, so the workers are CPU actors on
    every machine); its GCS address lets ``steerlab run`` processes join it."""
    ray.init(num_cpus=2, num_gpus=0, include_dashboard=False, log_to_driver=False)
    try:
        yield ray.get_runtime_context().gcs_address
    finally:
        ray.shutdown()


def _toy(tmp: Path, out: str, **kw: Any) -> ToyConfig:
    return ToyConfig(output_dir=str(tmp / out), offset=7, **kw)


def _manifest(run_dir: Path) -> dict[str, Any]:
    return json.loads((run_dir / "manifest.json").read_text())


def _toy_rows(run_dir: Path) -> pd.DataFrame:
    return pd.read_parquet(run_dir / "results.parquet")


def _pipeline_rows(run_dir: Path) -> pd.DataFrame:
    df = pd.read_parquet(run_dir / "results.parquet").drop(columns="run_id")
    return df.sort_values(KEY).reset_index(drop=True)


# ----------------------------------------------------------------------------- toy workflow


def test_toy_run_on_two_ray_workers_equals_the_local_run(ray_address: str, tmp_path: Path) -> None:
    local = execute(Toy(), _toy(tmp_path, "local"), progress=False)
    on_ray = execute(Toy(), _toy(tmp_path, "ray"), executor=RAY2, progress=False)

    expected = _toy_rows(local.path)
    assert len(expected) == 2 * 20 and not expected.duplicated(TOY_KEY).any()
    # the driver writes part files in shard order, so even the row order is the local one
    pd.testing.assert_frame_equal(_toy_rows(on_ray.path), expected, check_exact=True)

    summary = _manifest(on_ray.path)["executor"]
    assert summary["executor"] == "ray"
    assert summary["workers"] == 2
    assert {w["worker"] for w in summary["where"]} == {"w0", "w1"}
    assert len({w["pid"] for w in summary["where"]}) == 2
    assert os.getpid() not in {w["pid"] for w in summary["where"]}
    per = summary["shards_per_worker"]
    assert set(per) == {"w0", "w1"} and min(per.values()) >= 1, per
    assert sum(per.values()) == 2 * 5  # 20 rows / 4 per shard, two stages: each shard once
    assert summary["retries"] == 0 and summary["retried"] == []
    assert summary["dead_workers"] == []


def test_a_worker_killed_mid_shard_costs_only_that_shard(ray_address: str, tmp_path: Path) -> None:
    cfg = dict(n_rows=12, shard_size=4)  # 3 shards per stage
    local = execute(Toy(), _toy(tmp_path, "local", **cfg), progress=False)
    markers = tmp_path / "markers"
    markers.mkdir()
    slow = _toy(tmp_path, "ray", sleep_s=0.25, **cfg)  # 1 s per shard: time to kill one

    with ThreadPoolExecutor(1) as pool:
        running = pool.submit(execute, Toy(str(markers)), slow, executor=RAY2, progress=False)
        deadline = time.monotonic() + 120
        while not (started := sorted(markers.iterdir())) and not running.done():
            assert time.monotonic() < deadline, "no shard started within 120 s"
            time.sleep(0.02)
        assert started, f"the run ended without starting a shard: {running.exception()!r}"
        victim = int(started[0].name.split("-")[0])
        assert victim != os.getpid()
        os.kill(victim, signal.SIGKILL)
        run = running.result(timeout=300)

    rows = _toy_rows(run.path)
    assert not rows.duplicated(TOY_KEY).any()
    pd.testing.assert_frame_equal(rows, _toy_rows(local.path), check_exact=True)

    summary = _manifest(run.path)["executor"]
    killed = next(w["worker"] for w in summary["where"] if w["pid"] == victim)
    assert summary["retries"] >= 1
    assert killed in {r["worker"] for r in summary["retried"]}, summary["retried"]
    assert all(r["what"].startswith("shard ") for r in summary["retried"])
    # every shard's result was taken once, none twice, though one was computed again
    assert sum(summary["shards_per_worker"].values()) == 2 * 3
    assert summary["dead_workers"] == []  # one death is within the restarts allowed
    # the killed shard was started again (by another pid: the other worker or the restarted one)
    first = started[0].name.split("-", 1)[1]
    again = [m.name for m in markers.iterdir() if m.name.split("-", 1)[1] == first]
    assert len(again) == 2 and sum(m.startswith(f"{victim}-") for m in again) == 1, again


def test_an_error_in_the_work_reaches_the_driver_as_itself_and_is_not_retried(
    ray_address: str, tmp_path: Path
) -> None:
    markers = tmp_path / "markers"
    markers.mkdir()
    cfg = _toy(tmp_path, "ray", n_rows=12, shard_size=4, fail_on=5)  # shard squares/1 fails
    with pytest.raises(SteerlabError) as err:
        execute(Toy(str(markers)), cfg, executor=RAY2, progress=False)
    assert type(err.value) is SteerlabError, type(err.value)
    assert str(err.value) == "row 5: the toy work refuses this row"

    failing = [m.name for m in markers.iterdir() if m.name.endswith("-squares-4")]
    assert len(failing) == 1, f"the failing shard ran {len(failing)} times: {failing}"
    run_dir = tmp_path / "ray" / f"toy-{cfg.digest()}"
    parts = sorted(p.name for p in (run_dir / "parts" / "squares").glob("part-*.parquet"))
    assert not any(p.startswith("part-00001-") for p in parts), parts
    assert not (run_dir / "results.parquet").exists()


def test_a_worker_that_dies_while_loading_stops_the_run_with_one_error_line(
    ray_address: str,
) -> None:
    """A worker process that dies while making its resource (the OOM killer during a model
    load) is an expected failure: one SteerlabError line, not a Ray traceback."""
    ex = make_executor(ExecutorSpec("ray", workers=1, shard_retries=0))
    try:
        with pytest.raises(SteerlabError) as err:
            ex.start(functools.partial(os._exit, 1), progress=False)
    finally:
        ex.close()
    assert "\n" not in str(err.value), str(err.value)


# ----------------------------------------------------------------------------- reliability pipeline


@pytest.mark.parametrize("temperature", [0.7, 0.0], ids=["sampled", "greedy"])
def test_pipeline_on_two_ray_workers_equals_the_local_run(
    ray_address: str, tmp_path: Path, temperature: float
) -> None:
    path = tiny_run_config(tmp_path, "cfg", "ray-parity", prompts=4, alphas=(0, 1))
    data = yaml.safe_load(path.read_text())
    data["generation"]["temperature"] = temperature
    path.write_text(yaml.safe_dump(data))

    def run(out: str, executor: ExecutorSpec | None) -> pd.DataFrame:
        cfg = load_config(path, {"experiment.output_dir": str(tmp_path / out)})
        return _pipeline_rows(run_stages(cfg, executor=executor, progress=False).path)

    expected = run("local", None)
    got = run("ray", RAY2)
    assert not expected.duplicated(KEY).any() and len(got) == len(expected)
    pd.testing.assert_frame_equal(got, expected, check_exact=True)


def _title(pid: int) -> bytes:
    """A process's title (Ray names a worker after the actor method it runs); b"" once gone."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def _our_workers_running(method: bytes) -> list[int]:
    """Pids of this process's Ray workers now running ``method`` (title ``ray::<method>``).
    Only descendants of this process count (the fixture's raylet is its child): other Ray
    clusters may be running on the same machine."""
    parent: dict[int, int] = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError):  # gone meanwhile
                stat = (d / "stat").read_text()
                parent[int(d.name)] = int(stat.rsplit(")", 1)[1].split()[1])

    def ours(pid: int) -> bool:
        while pid > 1:
            pid = parent.get(pid, 0)
            if pid == os.getpid():
                return True
        return False

    return [p for p in parent if ours(p) and _title(p).startswith(b"ray::" + method)]


@pytest.mark.skipif(not Path("/proc/self/cmdline").exists(), reason="finds workers in /proc")
def test_pipeline_worker_killed_mid_sweep_costs_one_shard_and_changes_no_row(
    ray_address: str, tmp_path: Path
) -> None:
    def config(out: str) -> Path:
        # 36 sweep shards of 4 rows x 64 tokens: a busy worker is busy for a while
        return tiny_run_config(
            tmp_path, out, "kill", prompts=8, alphas=(0, 1), shard_size=4, max_new_tokens=64
        )

    expected = _pipeline_rows(run_stages(load_config(config("local")), progress=False).path)
    run_dir = tmp_path / "ray" / "kill"
    cfg = load_config(config("ray"))

    with ThreadPoolExecutor(1) as pool:
        running = pool.submit(run_stages, cfg, executor=RAY2, progress=False)
        victim = None
        deadline = time.monotonic() + 180
        while victim is None and not running.done():
            assert time.monotonic() < deadline, "no worker busy with the sweep within 180 s"
            if any(run_dir.glob("parts/sweep/part-*.parquet")):  # the sweep is under way
                for pid in _our_workers_running(b"_Worker.run"):
                    # checked again just before the kill: only a shard in progress may die
                    if _title(pid).startswith(b"ray::_Worker.run"):
                        os.kill(pid, signal.SIGKILL)
                        victim = pid
                        break
            time.sleep(0.01)
        assert victim is not None, f"the run ended before the kill: {running.exception()!r}"
        run = running.result(timeout=300)

    got = _pipeline_rows(run.path)
    assert not got.duplicated(KEY).any() and len(got) == len(expected)
    pd.testing.assert_frame_equal(got, expected, check_exact=True)

    summary = _manifest(run.path)["executor"]
    killed = next(w["worker"] for w in summary["where"] if w["pid"] == victim)
    # one death, one lost shard: work sent to the worker while Ray restarts it would fail too
    assert summary["retries"] == 1, summary["retried"]
    (retried,) = summary["retried"]
    assert retried["worker"] == killed and retried["what"].startswith("shard sweep/"), retried
    # each shard's result was taken once, none twice, though one was computed again
    parts = list(run.path.glob("parts/*/part-*.parquet"))
    assert sum(summary["shards_per_worker"].values()) == len(parts)
    assert summary["dead_workers"] == []


def test_a_killed_driver_is_resumed_by_rerunning_the_command(
    ray_address: str, tmp_path: Path
) -> None:
    def config(out: str) -> Path:
        return tiny_run_config(tmp_path, out, "resume", prompts=8, alphas=(0, 1), shard_size=4)

    expected = _pipeline_rows(run_stages(load_config(config("local")), progress=False).path)

    # one torch thread, like this process's local run: the Ray workers take the driver's
    # count, and CPU kernels split some sums by thread (numbers differ in the last bits)
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}

    cmd = [
        *run_cmd(config("ray")),
        *("--executor", "ray", "--workers", "2", "--ray-address", ray_address),
    ]
    run_dir = tmp_path / "ray" / "resume"
    proc = subprocess.Popen(
        cmd, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        deadline = time.monotonic() + 180
        while not list(run_dir.glob("parts/*/part-*.parquet")) and proc.poll() is None:
            assert time.monotonic() < deadline, "no part file within 180 s"
            time.sleep(0.02)
    finally:
        proc.kill()  # SIGKILL: no handler, no cleanup
        proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    assert not (run_dir / "results.parquet").exists()

    parts = {p: p.stat().st_mtime_ns for p in run_dir.glob("parts/*/part-*.parquet")}
    done = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    for p, mtime in parts.items():
        assert p.stat().st_mtime_ns == mtime, f"finished part {p.name} was written again"

    got = _pipeline_rows(run_dir)
    assert not got.duplicated(KEY).any() and len(got) == len(expected)
    pd.testing.assert_frame_equal(got, expected, check_exact=True)

    # the one-line summary: every shard computed by this process, on both workers, no retries
    line = re.search(
        r"ray: 2 workers; shards per worker: w0 (\d+), w1 (\d+); retries: 0$",
        done.stderr,
        re.MULTILINE,
    )
    assert line, done.stderr[-3000:]
    new = len(list(run_dir.glob("parts/*/part-*.parquet"))) - len(parts)
    assert int(line[1]) >= 1 and int(line[2]) >= 1
    assert int(line[1]) + int(line[2]) == new


def test_sigterm_during_a_ray_run_exits_143_and_stops_its_workers(
    ray_address: str, tmp_path: Path
) -> None:
    """Ray installs its own SIGTERM handler (exit 15, C++ stack lines); the CLI's stays: one
    'interrupted' line, exit 143, the lock released, and a rerun resumes."""
    cfg = tiny_run_config(tmp_path, "term", "term", prompts=8, alphas=(0, 1), shard_size=4)
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    cmd = [*run_cmd(cfg), "--executor", "ray", "--workers", "2", "--ray-address", ray_address]
    run_dir = tmp_path / "term" / "term"
    proc = subprocess.Popen(
        cmd, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    deadline = time.monotonic() + 180
    while not list(run_dir.glob("parts/*/part-*.parquet")) and proc.poll() is None:
        assert time.monotonic() < deadline, "no part file within 180 s"
        time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err[-2000:]
    assert err.strip().splitlines()[-1] == "interrupted; rerun the same command to resume"
    RunDir.check_free(run_dir)  # the lock was released
    done = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert not _pipeline_rows(run_dir).duplicated(KEY).any()
