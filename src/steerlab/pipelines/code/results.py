"""Reading a ``select-coefficients`` run directory: the baseline, the grid's rows, and what each
vector is meant to do."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from steerlab.errors import SteerlabError
from steerlab.pipelines.code.config import CodeConfig
from steerlab.runs.shards import stage_results


def baseline_path(run: Path) -> Path:
    return run / "baseline.parquet"


def load_baseline(run: Path) -> pd.DataFrame:
    path = baseline_path(run)
    if not path.is_file():
        raise SteerlabError(f"{run}: no baseline yet; run the baseline stage first")
    return pd.read_parquet(path)


def baseline_summary(run: Path) -> str:
    """One paragraph: the baseline's pass rate overall and per complexity."""
    df = load_baseline(run)
    ok = df["status"] == "pass"
    by = df.assign(ok=ok).groupby("complexity")["ok"].agg(["sum", "size"])
    strata = ", ".join(f"{c}: {int(r['sum'])}/{int(r['size'])}" for c, r in by.iterrows())
    mix = ", ".join(f"{k} {v}" for k, v in df["status"].value_counts().items())
    return (
        f"baseline: {int(ok.sum())} of {len(df)} pass ({100 * ok.mean():.1f}%); statuses {mix}; "
        f"passing by complexity {strata}"
    )


def intents(cfg: CodeConfig) -> dict[str, str]:
    out: dict[str, str] = {r.name: r.intent for r in cfg.vectors}
    if cfg.from_baseline is not None:
        out |= {"correct": "correct", "incorrect": "incorrect"}
    return out


def grid_results(run: Path) -> pd.DataFrame:
    return stage_results(run, "grid")
