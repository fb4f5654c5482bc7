"""What a coefficient does to code: stratified problem samples, flips against the baseline,
drift (difflib similarity), per-(vector, coefficient) summaries with 95% CIs, and
the selection rule.

Flips compare a steered row's execution status with its problem's temperature-0 baseline:
``pass→fail`` and ``fail→pass`` (any non-pass status counts as fail). Rows whose execution was a
``sandbox_error`` on either side say nothing about the model and are left out of every rate.
"""

from __future__ import annotations

import difflib
import math
import random
import re
from collections.abc import Sequence
from datetime import datetime, timezone
from typing import Any

import numpy as np
import pandas as pd

from steerlab.metrics.stats import bootstrap_ci, wilson_ci
from steerlab.pipelines.code.config import NOISE, SelectionCfg

STATUSES = ("pass", "fail", "error", "syntax_error", "timeout", "oom", "sandbox_error")
_TOKEN = re.compile(r"\w+|[^\w\s]")


# ----------------------------------------------------------------------------- sampling


def strata(complexities: Sequence[int], n_bins: int = 3) -> list[int]:
    """Complexity stratum of each problem: tertiles of the distinct values (low/mid/high), so a
    skewed distribution (most problems at complexity 1) still yields separate strata."""
    values = sorted(set(complexities))
    k = min(n_bins, len(values))
    edges = [values[math.ceil(len(values) * (i + 1) / k) - 1] for i in range(k)]
    return [next(i for i, e in enumerate(edges) if c <= e) for c in complexities]


def stratified_sample(
    ids: Sequence[str], complexities: Sequence[int], n: int, seed: int
) -> list[str]:
    """``n`` ids without replacement, allocated to complexity strata in proportion to their
    size (largest remainder, every non-empty stratum gets at least one while n allows)."""
    if n >= len(ids):
        return list(ids)
    rng = random.Random(seed)
    groups: dict[int, list[str]] = {}
    for i, s in zip(ids, strata(complexities), strict=True):
        groups.setdefault(s, []).append(i)
    keys = sorted(groups)
    quota = {s: n * len(groups[s]) / len(ids) for s in keys}
    alloc = {s: min(len(groups[s]), max(1, int(quota[s]))) for s in keys}
    while sum(alloc.values()) > n:  # more strata than n: drop from the largest allocation
        s = max(keys, key=lambda s: (alloc[s], s))
        alloc[s] -= 1
    by_remainder = sorted(keys, key=lambda s: (-(quota[s] - int(quota[s])), s))
    while sum(alloc.values()) < n:
        for s in by_remainder:
            if sum(alloc.values()) < n and alloc[s] < len(groups[s]):
                alloc[s] += 1
    picked = [i for s in keys for i in rng.sample(groups[s], alloc[s])]
    order = {i: k for k, i in enumerate(ids)}
    return sorted(picked, key=order.__getitem__)


def problem_samples(
    ids: Sequence[str],
    complexities: Sequence[int],
    coefficients: Sequence[float],
    n: int,
    seed: int,
    same: bool,
) -> dict[float, list[str]]:
    """The problems of each coefficient: one stratified sample each, or one
    shared by all (``same``)."""
    return {
        c: stratified_sample(ids, complexities, n, seed if same else seed * 1000 + j)
        for j, c in enumerate(coefficients)
    }


# ----------------------------------------------------------------------------- drift


def tokens(code: str) -> list[str]:
    """Identifiers, numbers and single punctuation marks (whitespace ignored)."""
    return _TOKEN.findall(code)


def similarity(a: str, b: str) -> tuple[float, float]:
    """``(token_level, char_level)`` difflib ratios; two empty texts are identical (1.0)."""
    tok = difflib.SequenceMatcher(None, tokens(a), tokens(b), autojunk=False).ratio()
    char = difflib.SequenceMatcher(None, a, b, autojunk=False).ratio()
    return tok, char


def length_ratio(steered: str, baseline: str) -> float:
    return len(steered) / len(baseline) if baseline else math.nan


def compare(grid: pd.DataFrame, baseline: pd.DataFrame) -> pd.DataFrame:
    """Grid rows joined with their problem's baseline: flips, similarities, length ratio."""
    base = baseline.set_index("task_id")
    missing = sorted(set(grid["task_id"]) - set(base.index))
    if missing:
        raise KeyError(f"grid rows for tasks without a baseline: {missing[:3]}")
    b = base.loc[grid["task_id"]]
    out = grid.copy()
    out["baseline_status"] = b["status"].to_numpy()
    out["baseline_code"] = b["code"].to_numpy()
    valid = (out["status"] != "sandbox_error") & (out["baseline_status"] != "sandbox_error")
    was, now = out["baseline_status"] == "pass", out["status"] == "pass"
    out["valid"] = valid
    out["flipped"] = valid & (was != now)
    out["pass_to_fail"] = valid & was & ~now
    out["fail_to_pass"] = valid & ~was & now
    sims = [similarity(s, t) for s, t in zip(out["code"], out["baseline_code"], strict=True)]
    out["token_similarity"] = [t for t, _ in sims]
    out["char_similarity"] = [c for _, c in sims]
    out["length_ratio"] = [
        length_ratio(s, t) for s, t in zip(out["code"], out["baseline_code"], strict=True)
    ]
    return out


# ----------------------------------------------------------------------------- summaries


def _rate(flags: pd.Series, prefix: str) -> dict[str, float]:
    k, n = int(flags.sum()), int(flags.size)
    rate, lo, hi = wilson_ci(k, n)
    return {prefix: rate, f"{prefix}_lo": lo, f"{prefix}_hi": hi}


def _mean(values: pd.Series, prefix: str) -> dict[str, float]:
    mean, lo, hi = bootstrap_ci(values.to_numpy(dtype=float))
    return {prefix: mean, f"{prefix}_lo": lo, f"{prefix}_hi": hi}


def intended_flip(intent: str) -> str | None:
    return {"correct": "fail_to_pass", "incorrect": "pass_to_fail"}.get(intent)


def summarize(cmp: pd.DataFrame, intents: dict[str, str]) -> pd.DataFrame:
    """One row per (vector, coefficient): rates with Wilson intervals, means with bootstrap
    intervals. ``intended_rate`` is the intended flip among the problems that could flip that
    way (baseline failing for a ``correct`` vector, passing for an ``incorrect`` one)."""
    rows: list[dict[str, Any]] = []
    for (vector, coef), g in cmp.groupby(["vector", "coefficient"], sort=True):
        v = g[g["valid"]]
        row: dict[str, Any] = {
            "vector": vector,
            "coefficient": float(coef),
            "intent": intents.get(str(vector), "none"),
            "n": len(g),
            "n_valid": len(v),
            "flips": int(v["flipped"].sum()),
            "n_sandbox_error": int((g["status"] == "sandbox_error").sum()),
            "n_baseline_pass": int((v["baseline_status"] == "pass").sum()),
        }
        row |= _rate(v["flipped"], "flip_rate")
        row |= _rate(v["pass_to_fail"], "pass_to_fail_rate")
        row |= _rate(v["fail_to_pass"], "fail_to_pass_rate")
        row |= _rate(v["status"] == "pass", "pass_rate")
        row |= _rate(v["syntax_ok"], "syntax_valid_rate")
        row |= _mean(v["token_similarity"], "token_similarity")
        row |= _mean(v["char_similarity"], "char_similarity")
        row |= _mean(v["length_ratio"], "length_ratio")
        flip = intended_flip(row["intent"])
        if flip is not None:
            could = v[(v["baseline_status"] == "pass") == (flip == "pass_to_fail")]
            row |= _rate(could[flip], "intended_rate")
            row["n_could_flip"] = len(could)
        for s in STATUSES:
            row[f"status_{s}"] = int((g["status"] == s).sum())
        rows.append(row)
    return pd.DataFrame(rows)


def noise_floor(summary: pd.DataFrame) -> dict[str, Any]:
    """The flip rate of the unsteered rows (same problems, another batch layout)."""
    row = summary[summary["vector"] == NOISE]
    if row.empty:
        return {"n": 0}
    r = row.iloc[0]
    return {
        "n": int(r["n_valid"]),
        "flip_rate": float(r["flip_rate"]),
        "flip_rate_lo": float(r["flip_rate_lo"]),
        "flip_rate_hi": float(r["flip_rate_hi"]),
        "flips": int(r["flips"]),
    }


# ----------------------------------------------------------------------------- selection


def rule_text(sel: SelectionCfg) -> str:
    return (
        f"among coefficients with syntax-valid rate >= {sel.min_syntax_valid:g} and mean "
        f"character similarity to the baseline in [{sel.min_similarity:g}, "
        f"{sel.max_similarity:g}], the largest intended flip rate (fail->pass for a 'correct' "
        "vector, pass->fail for an 'incorrect' one, any flip for a vector of unknown intent); "
        "ties go to the smaller coefficient; a flip rate not above the noise floor's upper "
        "bound is no effect"
    )


def select(summary: pd.DataFrame, sel: SelectionCfg, floor_hi: float) -> dict[str, Any]:
    """The suggested coefficient of each steered vector, with the numbers behind it."""
    out: dict[str, Any] = {}
    for vector, g in summary[summary["vector"] != NOISE].groupby("vector", sort=True):
        intent = str(g["intent"].iloc[0])
        metric = "intended_rate" if intended_flip(intent) is not None else "flip_rate"
        ok = g[
            (g["syntax_valid_rate"] >= sel.min_syntax_valid)
            & (g["char_similarity"] >= sel.min_similarity)
            & (g["char_similarity"] <= sel.max_similarity)
            & (g[metric] > floor_hi)
        ]
        entry: dict[str, Any] = {"intent": intent, "metric": metric}
        if ok.empty:
            entry |= {
                "suggested": None,
                "reason": "no coefficient meets the rule; see the table below",
            }
        else:
            best = ok.sort_values([metric, "coefficient"], ascending=[False, True]).iloc[0]
            entry |= {
                "suggested": float(best["coefficient"]),
                "reason": f"{metric} {best[metric]:.2f} at coefficient {best['coefficient']:g}",
                "numbers": {
                    k: _plain(best[k])
                    for k in (
                        metric,
                        f"{metric}_lo",
                        f"{metric}_hi",
                        "flip_rate",
                        "syntax_valid_rate",
                        "char_similarity",
                        "token_similarity",
                        "n_valid",
                    )
                },
            }
        override = sel.override.get(str(vector))
        entry["selected"] = override if override is not None else entry["suggested"]
        entry["overridden"] = override is not None
        out[str(vector)] = entry
    return out


def selection_record(
    summary: pd.DataFrame, sel: SelectionCfg, floor: dict[str, Any]
) -> dict[str, Any]:
    hi = float(floor.get("flip_rate_hi", 0.0)) if floor.get("n") else 0.0
    return {
        "rule": rule_text(sel),
        "parameters": sel.model_dump(mode="json"),
        "noise_floor": floor,
        "vectors": select(summary, sel, 0.0 if math.isnan(hi) else hi),
        "timestamp": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def _plain(v: Any) -> Any:
    if isinstance(v, (np.integer,)):
        return int(v)
    if isinstance(v, (np.floating, float)):
        return None if math.isnan(float(v)) else float(v)
    return v
