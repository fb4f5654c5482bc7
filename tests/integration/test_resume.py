"""The reliability pipeline is resumable: SIGKILL a real run at random points, rerun the same
command, and get exactly the rows of an uninterrupted run — none lost, none duplicated — without
recomputing finished part files."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import time
from pathlib import Path

import pandas as pd
import pytest
from tests.pipeline_helpers import KEY, run_cmd, tiny_run_config

from steerlab.errors import SteerlabError
from steerlab.pipelines.reliability.config import load_config
from steerlab.pipelines.reliability.run import run_stages


def _config(tmp: Path, out: str) -> Path:
    return tiny_run_config(
        tmp, out, "resume", prompts=8, alphas=(0, 1, 4), shard_size=6, rerun_subset_n=3
    )


def _rows(run_dir: Path) -> pd.DataFrame:
    df = pd.read_parquet(run_dir / "results.parquet")
    return df.sort_values(KEY).reset_index(drop=True)


@pytest.mark.timeout(600)
def test_sigkill_at_random_points_then_resume_gives_exactly_the_uninterrupted_rows(
    tmp_path: Path,
) -> None:
    ref_cfg = _config(tmp_path, "ref")
    t0 = time.perf_counter()
    ref_run = run_stages(load_config(ref_cfg), progress=False)
    ref_seconds = time.perf_counter() - t0
    reference = _rows(ref_run.path)
    assert not reference.duplicated(KEY).any()

    cfg = _config(tmp_path, "killed")
    run_dir = tmp_path / "killed" / "resume"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    rng = random.Random(1234)
    kills = 0
    for _ in range(4):
        proc = subprocess.Popen(
            run_cmd(cfg),
            cwd=tmp_path,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        # interpreter start-up is a few seconds; kill somewhere inside the actual work
        time.sleep(rng.uniform(3.0, 3.0 + ref_seconds))
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            kills += 1
        proc.wait()
    assert kills >= 1, "every run finished before it could be killed; the test proved nothing"

    parts = {p: p.stat().st_mtime_ns for p in run_dir.glob("parts/*/*.parquet")}
    done = subprocess.run(
        run_cmd(cfg), cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr[-2000:]
    for p, mtime in parts.items():
        assert p.stat().st_mtime_ns == mtime, f"finished part {p.name} was recomputed"
    assert not list(run_dir.rglob(".*.tmp")), "temp files left behind"

    resumed = _rows(run_dir)
    assert not resumed.duplicated(KEY).any()
    assert len(resumed) == len(reference)
    pd.testing.assert_frame_equal(
        resumed[[*KEY, "text", "n_tokens", "refusal_score"]],
        reference[[*KEY, "text", "n_tokens", "refusal_score"]],
    )


def test_changing_the_config_of_an_existing_run_is_refused(tmp_path: Path) -> None:
    cfg_path = _config(tmp_path, "cfg")
    cfg = load_config(cfg_path)
    run_stages(cfg, ("baseline",), progress=False)
    changed = load_config(cfg_path, {"generation.max_new_tokens": 7})
    with pytest.raises(SteerlabError, match="different config"):
        run_stages(changed, ("baseline",), progress=False)
    # a new run id is the way to change it
    other = load_config(cfg_path, {"generation.max_new_tokens": 7, "run_id": "other"})
    run_stages(other, ("baseline",), progress=False)
