"""Reporting for the steering-reliability pipeline: aggregation, sanity checks, figures, write-ups.

:func:`build_report` turns a finished run directory (``results.parquet``, ``config.yaml``,
``manifest.json``, ``sanity.json``) into ``summary.csv``, ``checks.json``, ``figures/*.png``,
``examples.md`` and ``report.md``, every file written atomically.

* :mod:`~steerlab.pipelines.reliability.report.aggregate`: :func:`summarize` (rates, CIs, gap,
  benign drop, Pareto) and :func:`write_summary_csv`.
* :mod:`~steerlab.pipelines.reliability.report.checks`: confound, seed, template and sign checks.
* :mod:`~steerlab.pipelines.reliability.report.layers`: layers compared at matched α, paired
  bootstrap CIs.
* :mod:`~steerlab.pipelines.reliability.report.holdout`: the operating point and the largest
  layer difference chosen on one half of the prompts and reported on the other.
* :mod:`~steerlab.pipelines.reliability.report.holdout_findings`: the same for the Findings'
  "largest" statements and each layer's best operating point.
* :mod:`~steerlab.pipelines.reliability.report.plots`: the figures.
* :mod:`~steerlab.pipelines.reliability.report.writeup`: ``examples.md`` and ``report.md``.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

from steerlab._util.io import atomic_write_text
from steerlab.errors import SteerlabError
from steerlab.pipelines.reliability.report.aggregate import (
    best_setting,
    summarize,
    write_summary_csv,
)
from steerlab.pipelines.reliability.report.checks import (
    confound_check,
    seed_check,
    sign_check,
    template_check,
)
from steerlab.pipelines.reliability.report.holdout import (
    chosen_setting,
    held_out_layer_difference,
    held_out_operating_point,
)
from steerlab.pipelines.reliability.report.holdout_findings import held_out_findings
from steerlab.pipelines.reliability.report.layers import layer_comparison
from steerlab.pipelines.reliability.report.plots import make_figures
from steerlab.pipelines.reliability.report.writeup import write_examples, write_report

__all__ = [
    "build_report",
    "confound_check",
    "layer_comparison",
    "make_figures",
    "seed_check",
    "sign_check",
    "summarize",
    "template_check",
    "write_examples",
    "write_report",
    "write_summary_csv",
]

log = logging.getLogger(__name__)


def helpful_not_gibberish(results: pd.DataFrame) -> pd.DataFrame:
    """``is_helpful`` as the report defines it: the helpfulness proxy's verdict and not flagged
    as gibberish. Runs made before the definition stored the proxy's verdict alone; it is kept
    as ``looks_helpful`` either way."""
    out = results.copy()
    if "looks_helpful" not in out.columns:
        out["looks_helpful"] = out["is_helpful"].astype(bool)
    if "is_gibberish" in out.columns:
        out["is_helpful"] = out["looks_helpful"].astype(bool) & ~out["is_gibberish"].astype(bool)
    return out


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        log.info("%s missing; treating it as empty", path)
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise SteerlabError(
            f"{path}: damaged ({type(e).__name__}); restore it or rerun the stage that writes it"
        ) from None
    if not isinstance(data, dict):
        raise SteerlabError(f"{path}: expected a JSON object; restore it or rerun its stage")
    return data


def _read_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        log.info("%s missing; treating it as empty", path)
        return {}
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    return data if isinstance(data, dict) else {}


def _plain(x: Any) -> Any:
    """JSON-ready data: NaN -> None, numpy scalars -> Python, tuples -> lists, keys -> str."""
    if isinstance(x, dict):
        return {str(k): _plain(v) for k, v in x.items()}
    if isinstance(x, list | tuple | np.ndarray):
        return [_plain(v) for v in x]
    if isinstance(x, np.generic):
        x = x.item()
    if isinstance(x, float) and math.isnan(x):
        return None
    return x


def build_report(run_dir: str | Path, n_boot: int | None = None, seed: int = 0) -> dict[str, Path]:
    """Write the reporting layer of a run directory; return ``{name: path}`` of what was written.

    ``n_boot`` defaults to ``metrics.n_boot`` of the run's config (1000 when absent).
    Names: ``summary``, ``checks``, ``examples``, ``report`` and ``figure:<file name>``.
    """
    run_dir = Path(run_dir)
    results_path = run_dir / "results.parquet"
    if not results_path.is_file():
        raise SteerlabError(f"{results_path}: no such file (is this a finished run directory?)")
    try:
        results = pd.read_parquet(results_path)
    except Exception as e:  # pyarrow raises ArrowInvalid, OSError, ... depending on the damage
        reason = (str(e).strip().splitlines() or [type(e).__name__])[0]
        reason = reason.split(f"{results_path}': ", 1)[-1]  # pyarrow repeats the path first
        raise SteerlabError(
            f"{results_path}: unreadable ({reason}); delete it and rerun the report stage"
        ) from e
    results = helpful_not_gibberish(results)
    config = _read_yaml(run_dir / "config.yaml")
    manifest = _read_json(run_dir / "manifest.json")
    sanity = _read_json(run_dir / "sanity.json")
    if n_boot is None:
        n_boot = int((config.get("metrics") or {}).get("n_boot", 1000))

    summary = summarize(results, n_boot=n_boot, seed=seed)
    op = held_out_operating_point(results, n_boot=n_boot, seed=seed)
    best = chosen_setting(op) or best_setting(summary)
    checks = {
        "operating_point": op,
        "layer_holdout": held_out_layer_difference(results, n_boot=n_boot, seed=seed),
        "findings_holdout": held_out_findings(results, n_boot, seed, summary),
        "confound": confound_check(results, n_boot=n_boot, seed=seed, best=best),
        "seed": seed_check(results, n_boot=n_boot, seed=seed),
        "template": template_check(results, sanity, n_boot=n_boot, seed=seed),
        "sign": sign_check(sanity),
        "layers": layer_comparison(results, summary, n_boot=n_boot, seed=seed),
    }
    out: dict[str, Path] = {"summary": write_summary_csv(summary, run_dir / "summary.csv")}
    checks_path = run_dir / "checks.json"
    atomic_write_text(checks_path, json.dumps(_plain(checks), indent=2) + "\n")
    out["checks"] = checks_path
    figures = make_figures(summary, checks["confound"], run_dir / "figures", checks["layers"])
    for path in figures:
        out[f"figure:{path.name}"] = path
    out["examples"] = write_examples(results, run_dir / "examples.md", best=best)
    out["report"] = write_report(
        run_dir, results, summary, sanity, config, manifest, checks=checks, n_boot=n_boot, seed=seed
    )
    return out
