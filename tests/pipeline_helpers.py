"""Small reliability-pipeline configs on tiny-llama, shared by the tests that run real
``steerlab run`` processes (resume, signals, lock)."""

from __future__ import annotations

import sys
from pathlib import Path

import yaml

# The columns that identify one results row.
KEY = ["stage", "split", "prompt_id", "layer", "intervention", "alpha", "direction", "seed"]


def tiny_run_config(
    tmp: Path,
    out: str,
    run_id: str,
    prompts: int = 4,
    alphas: tuple[float, ...] = (0, 1),
    shard_size: int = 4,
    max_new_tokens: int = 5,
    rerun_subset_n: int = 2,
) -> Path:
    """Write a tiny-llama pipeline config (shipped prompt sets) to ``tmp/<out>.yaml``; its runs go
    under ``tmp/<out>``."""
    cfg = {
        "run_id": run_id,
        "model": {"name": "tiny-llama"},
        "data": {
            "harm_train_path": "harm_train",  # the shipped prompt sets
            "harm_test_path": "harm_test",
            "benign_path": "benign",
            "max_prompts_per_split": prompts,
        },
        "generation": {
            "max_new_tokens": max_new_tokens,
            "batch_size": 8,
            "temperature": 0.7,
            "top_p": 0.9,
        },
        "experiment": {
            "alphas": list(alphas),
            "output_dir": str(tmp / out),
            "shard_size": shard_size,
        },
        "sanity_checks": {"rerun_subset_n": rerun_subset_n, "sign_check_n": 2},
        "metrics": {"n_boot": 100},
    }
    path = tmp / f"{out}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def run_cmd(cfg: Path) -> list[str]:
    """The ``steerlab run`` command line for ``cfg``, as a subprocess argv."""
    return [sys.executable, "-m", "steerlab.cli", "run", "--config", str(cfg), "--quiet"]
