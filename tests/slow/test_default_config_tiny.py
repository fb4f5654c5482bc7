"""`steerlab run --config default` (shipped) end to end on tiny-llama, from outside the repo."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest


@pytest.mark.slow
@pytest.mark.timeout(5400)  # a hang detector with a wide margin, not a speed limit
def test_default_config_runs_end_to_end_on_tiny_llama(tmp_path: Path) -> None:
    cmd = [
        sys.executable,
        "-m",
        "steerlab.cli",
        "run",
        "--config",
        "default",
        "--model",
        "tiny-llama",
        "--output-dir",
        str(tmp_path),
        "--run-id",
        "ci",
        "--quiet",
    ]
    done = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=5000)
    assert done.returncode == 0, done.stderr[-3000:]
    run = tmp_path / "ci"
    for name in (
        "config.yaml",
        "manifest.json",
        "results.parquet",
        "summary.csv",
        "examples.md",
        "report.md",
        "directions/layer_1.safetensors",
    ):
        assert (run / name).is_file(), name
    figures = sorted(p.name for p in (run / "figures").glob("*.png"))
    assert {
        "gap_vs_alpha.png",
        "tradeoff.png",
        "heatmap_refusal_harm_test.png",
        "heatmap_helpful_benign.png",
        "confounds.png",
    } <= set(figures)
    df = pd.read_parquet(run / "results.parquet")
    sweep = df[df.stage == "sweep"]
    # 150 + 150 + 200 prompts x 3 layers x {add, ablate} x 5 alphas (α = 0 shared, copied)
    assert len(sweep) == 500 * 3 * 2 * 5
    assert sweep.shared_baseline.sum() == 500 * 3 * 2
    key = ["split", "prompt_id", "layer", "intervention", "alpha", "seed", "direction"]
    assert not sweep.duplicated(key).any()
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["layers"] == [1, 2, 3] and manifest["total_wall_s"] > 0
