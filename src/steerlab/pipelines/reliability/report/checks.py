"""Sanity checks on a finished run: length/entropy confound, seed and template robustness, sign.

Each check returns plain JSON-ready data (dicts, lists, floats; NaN where undefined) with an
``available`` flag, so a run whose sanity stages were disabled still gets a report.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd

from steerlab.metrics import bootstrap_ci, bootstrap_diff_ci
from steerlab.pipelines.reliability.report._grid import (
    KEY,
    Setting,
    flags,
    main_grid,
    mean_or_nan,
    pick_best,
    select,
    setting_of,
    setting_points,
)
from steerlab.pipelines.reliability.sign import LOWERED, NOT_SHOWN, RAISED

Floats = npt.NDArray[np.float64]
Ints = npt.NDArray[np.int64]
CONFOUND_VARS = ("n_tokens", "mean_entropy")


def excludes_zero(lo: float, hi: float) -> bool:
    """Whether the interval ``[lo, hi]`` lies strictly on one side of 0 (False when NaN)."""
    return bool(lo > 0 or hi < 0)


def _ci_dict(triple: tuple[float, float, float]) -> dict[str, float]:
    d, lo, hi = triple
    return {"diff": d, "lo": lo, "hi": hi}


# --- confound: refusal difference within length / entropy bins ---------------------------------


def _bin(values: Floats, n_bins: int) -> Ints:
    """Quantile bins of ``values`` (ties stay together, so discrete values never straddle)."""
    inner = np.unique(np.quantile(values, np.linspace(0, 1, n_bins + 1))[1:-1])
    return np.searchsorted(inner, values, side="right").astype(np.int64)


def _bin_stats(y: Floats, b: Ints, k: int, idx: Ints | None) -> tuple[Floats, Floats]:
    """Counts and refusal sums per bin, ``(B, k)`` each, for resample indices ``idx (B, n)``."""
    if idx is None:
        idx = np.arange(y.size)[None, :]
    flat = (np.arange(idx.shape[0])[:, None] * k + b[idx]).ravel()
    size = idx.shape[0] * k
    counts = np.bincount(flat, minlength=size).reshape(-1, k).astype(np.float64)
    sums = np.bincount(flat, weights=y[idx].ravel(), minlength=size).reshape(-1, k)
    return counts, sums.astype(np.float64)


def _stratified(cs: Floats, ss: Floats, cb: Floats, sb: Floats) -> Floats:
    """Bin-weighted mean of within-bin rate differences (steered − baseline), per resample."""
    both = (cs > 0) & (cb > 0)
    with np.errstate(invalid="ignore", divide="ignore"):
        diff = np.where(both, ss / np.maximum(cs, 1) - sb / np.maximum(cb, 1), 0.0)
        w = np.where(both, cs + cb, 0.0)
        total = w.sum(axis=1)
        return np.where(total > 0, (w * diff).sum(axis=1) / np.where(total > 0, total, 1), np.nan)


def _stratified_effect(
    steered: pd.DataFrame, base: pd.DataFrame, var: str, n_bins: int, n_boot: int, seed: int
) -> dict[str, Any] | None:
    ys, xs = flags(steered, "is_refusal"), flags(steered, var)
    yb, xb = flags(base, "is_refusal"), flags(base, var)
    ks, kb = ~np.isnan(xs) & ~np.isnan(ys), ~np.isnan(xb) & ~np.isnan(yb)
    ys, xs, yb, xb = ys[ks], xs[ks], yb[kb], xb[kb]
    if ys.size == 0 or yb.size == 0:
        return None
    bins = _bin(np.concatenate([xs, xb]), n_bins)
    bs, bb = bins[: xs.size], bins[xs.size :]
    k = int(bins.max()) + 1
    cs, ss = _bin_stats(ys, bs, k, None)
    cb, sb = _bin_stats(yb, bb, k, None)
    est = float(_stratified(cs, ss, cb, sb)[0])
    rng = np.random.default_rng(seed)
    boot_s = _bin_stats(ys, bs, k, rng.integers(0, ys.size, (n_boot, ys.size)))
    boot_b = _bin_stats(yb, bb, k, rng.integers(0, yb.size, (n_boot, yb.size)))
    boots = _stratified(*boot_s, *boot_b)
    boots = boots[~np.isnan(boots)]
    lo, hi = (float(q) for q in np.quantile(boots, [0.025, 0.975])) if boots.size else (est, est)
    both = (cs[0] > 0) & (cb[0] > 0)
    pooled = np.concatenate([xs, xb])
    table = [
        {
            "lo": float(pooled[bins == j].min()),
            "hi": float(pooled[bins == j].max()),
            "n_baseline": int(cb[0, j]),
            "n_steered": int(cs[0, j]),
            "rate_baseline": float(sb[0, j] / cb[0, j]) if cb[0, j] else math.nan,
            "rate_steered": float(ss[0, j] / cs[0, j]) if cs[0, j] else math.nan,
        }
        for j in range(k)
        if (bins == j).any()
    ]
    coverage = float((cs[0] + cb[0])[both].sum() / (ys.size + yb.size))
    return {"diff": est, "lo": lo, "hi": hi, "coverage": coverage, "bins": table}


def _confound_verdict(entry: dict[str, Any] | None) -> tuple[str, bool | None]:
    if entry is None:
        return "no steered setting on harm_test to check", None
    raw = entry["raw"]
    if not excludes_zero(raw["lo"], raw["hi"]):
        return (
            f"no refusal effect to explain at {entry['label']}: the raw difference "
            f"{raw['diff']:+.3f} has a CI [{raw['lo']:+.3f}, {raw['hi']:+.3f}] that includes 0",
            None,
        )
    sign = 1.0 if raw["diff"] > 0 else -1.0
    held: list[str] = []
    failed: list[str] = []
    for var in CONFOUND_VARS:
        e = entry.get(var)
        if e is None:
            continue
        ok = sign * e["lo"] > 0 and sign * e["hi"] > 0
        text = f"{var} bins {e['diff']:+.3f} [{e['lo']:+.3f}, {e['hi']:+.3f}]"
        (held if ok else failed).append(text)
    missing = [var for var in CONFOUND_VARS if entry.get(var) is None]
    if not held and not failed:
        return f"no length or entropy values to condition on at {entry['label']}", None
    if missing:
        failed_or_held = failed if failed else held
        failed_or_held[-1] += f" ({', '.join(missing)} not available)"
    if failed:
        return (
            f"at {entry['label']} the refusal effect (raw {raw['diff']:+.3f}) is NOT "
            f"distinguishable from a length/entropy confound: within {'; '.join(failed)} "
            "(CI includes 0 or flips sign)",
            False,
        )
    weakest = min(abs(entry[v]["diff"]) for v in CONFOUND_VARS if entry.get(v) is not None)
    kept = weakest / abs(raw["diff"])
    note = (
        f"; it shrinks to {100 * kept:.0f}% of the raw effect, so length/entropy explain part of it"
        if kept < 0.5
        else ""
    )
    return (
        f"at {entry['label']} the refusal effect (raw {raw['diff']:+.3f}) persists within "
        f"{'; '.join(held)}{note}",
        True,
    )


def confound_check(
    results: pd.DataFrame,
    n_boot: int = 1000,
    seed: int = 0,
    n_bins: int = 4,
    best: Setting | None = None,
) -> dict[str, Any]:
    """Is the harm_test refusal effect still there within length bins and entropy bins?

    For each steered setting vs the baseline on harm_test, completions (both groups pooled) are
    cut into ``n_bins`` quantile bins of ``n_tokens`` and of ``mean_entropy``; the within-bin
    refusal-rate differences are averaged with bin weights (rows of both groups in the bin;
    bins holding only one group are dropped, see ``coverage``). The 95% interval resamples each
    group independently with bins held fixed. ``verdict`` is for ``best`` (default: the best
    operating point from point estimates).
    """
    grid = main_grid(results)
    base = select(grid, Setting(-1, "none", 0.0), "harm_test")
    points = setting_points(results)
    best = best if best is not None else pick_best(points)
    entries = []
    for _, row in points[points["steered"].astype(bool)].iterrows():
        s = setting_of(row)
        steered = select(grid, s, "harm_test")
        if steered.empty or base.empty:
            continue
        raw = bootstrap_diff_ci(
            flags(steered, "is_refusal"), flags(base, "is_refusal"), n_boot=n_boot, seed=seed
        )
        entry: dict[str, Any] = {
            **s.as_dict(),
            "label": s.label,
            "n_steered": len(steered),
            "n_baseline": len(base),
            "raw": _ci_dict(raw),
        }
        for var in CONFOUND_VARS:
            entry[var] = _stratified_effect(steered, base, var, n_bins, n_boot, seed)
        entries.append(entry)
    best_entry = next((e for e in entries if best is not None and setting_of(e) == best), None)
    verdict, persists = _confound_verdict(best_entry)
    return {
        "available": bool(entries),
        "split": "harm_test",
        "n_bins": n_bins,
        "best": None if best is None else best.as_dict(),
        "settings": entries,
        "verdict": verdict,
        "persists": persists,
    }


# --- seed and template robustness: the same prompts rerun, compared with the main rows ----------


def _compare(
    alt_rows: pd.DataFrame, main_rows: pd.DataFrame, n_boot: int, seed: int
) -> list[dict[str, Any]]:
    """Rate comparison alt − main per (split, setting) on the alt rows' prompt ids."""
    out = []
    for key, g in alt_rows.groupby(["split", *KEY], sort=True):
        split = str(key[0])
        s = setting_of(dict(zip(KEY, key[1:], strict=True)))
        ids = set(g["prompt_id"])
        main = select(main_rows, s, split)
        main = main[main["prompt_id"].isin(ids)]
        row: dict[str, Any] = {"split": split, **s.as_dict(), "label": s.label}
        row.update({"n_alt": len(g), "n_main": len(main)})
        for name, col in (("refusal", "is_refusal"), ("helpful", "is_helpful")):
            a, m = flags(g, col), flags(main, col)
            row[f"{name}_alt"] = bootstrap_ci(a, n_boot=n_boot, seed=seed)
            row[f"{name}_main"] = bootstrap_ci(m, n_boot=n_boot, seed=seed)
            row[f"{name}_diff"] = _ci_dict(bootstrap_diff_ci(a, m, n_boot=n_boot, seed=seed))
        out.append(row)
    return out


def _summarize_rows(rows: list[dict[str, Any]]) -> dict[str, Any]:
    diffs = [r[f"{m}_diff"] for r in rows for m in ("refusal", "helpful")]
    flagged = [d for d in diffs if excludes_zero(d["lo"], d["hi"])]
    finite = [abs(d["diff"]) for d in diffs if not math.isnan(d["diff"])]
    return {
        "n_comparisons": len(diffs),
        "n_excluding_zero": len(flagged),
        "max_abs_diff": max(finite) if finite else math.nan,
        "consistent": not flagged,
    }


def seed_check(results: pd.DataFrame, n_boot: int = 1000, seed: int = 0) -> dict[str, Any]:
    """Stage ``sanity_seed`` (a prompt subset rerun with another sampling seed) vs the main rows.

    Per split and setting: refusal and helpful rates under both seeds on the same prompt ids,
    and the difference alt − main with a 95% CI. ``effects`` gives, per split and steered
    setting, the refusal change vs baseline under each seed (point estimates, same prompts).
    """
    alt = results[results["stage"] == "sanity_seed"]
    if alt.empty:
        return {"available": False}
    grid = main_grid(results)
    rows = _compare(alt, grid, n_boot, seed)
    effects = []
    alt_base = alt[alt["intervention"] == "none"]
    for r in rows:
        if r["intervention"] == "none":
            continue
        split, s = r["split"], setting_of(r)
        ids = set(select(alt, s, split)["prompt_id"])
        b_alt = alt_base[(alt_base["split"] == split) & alt_base["prompt_id"].isin(ids)]
        b_main = select(grid, Setting(-1, "none", 0.0), split)
        b_main = b_main[b_main["prompt_id"].isin(ids)]
        effects.append(
            {
                "split": split,
                **s.as_dict(),
                "effect_main": r["refusal_main"][0] - mean_or_nan(flags(b_main, "is_refusal")),
                "effect_alt": r["refusal_alt"][0] - mean_or_nan(flags(b_alt, "is_refusal")),
            }
        )
    seeds = sorted({int(x) for x in alt["seed"].unique()})
    base_seeds = sorted({int(x) for x in grid["seed"].unique()}) if "seed" in grid else []
    return {
        "available": True,
        "alt_seed": seeds,
        "base_seed": base_seeds,
        "rows": rows,
        "effects": effects,
        **_summarize_rows(rows),
    }


def template_check(
    results: pd.DataFrame, sanity: dict[str, Any], n_boot: int = 1000, seed: int = 0
) -> dict[str, Any]:
    """Stage ``sanity_template`` (direction from alternative prefixes) vs the main direction.

    Cosines between the main and alternative directions come from ``sanity.json``; rates are
    compared on the same prompt ids at the same layer, intervention and α (alt − main, 95% CI).
    """
    tpl = sanity.get("template") or {}
    cosine = {int(k): float(v) for k, v in (tpl.get("cosine") or {}).items()}
    alt = results[results["stage"] == "sanity_template"]
    sweep = results[(results["stage"] == "sweep")]
    if "direction" in sweep.columns:
        sweep = sweep[sweep["direction"] == "main"]
    rows = _compare(alt, sweep, n_boot, seed) if not alt.empty else []
    alphas = sorted({float(a) for a in alt["alpha"].unique()}) if not alt.empty else []
    return {
        "available": bool(rows) or bool(cosine),
        "alpha": tpl.get("alpha", alphas[0] if len(alphas) == 1 else alphas or None),
        "refusal_prefix": tpl.get("refusal_prefix"),
        "compliance_prefix": tpl.get("compliance_prefix"),
        "cosine": cosine,
        "min_cosine": min(cosine.values()) if cosine else math.nan,
        "rows": rows,
        **_summarize_rows(rows),
    }


def sign_check(sanity: dict[str, Any]) -> dict[str, Any]:
    """The pipeline's sign check from ``sanity.json``: which layers failed (refusal lowered, CI
    below 0), which are ``not_shown`` (no verdict), and whether it ``passed`` (every layer
    raised); see :mod:`..sign`. In a ``sanity.json`` from before the verdicts (``ok`` only),
    every layer without ``ok`` counts as failed (``ok`` then meant "steered mean above the
    baseline's")."""
    sc = sanity.get("sign_check")
    if not sc:
        return {"available": False, "passed": False, "failed": [], "not_shown": []}
    per_layer = {int(k): dict(v) for k, v in (sc.get("per_layer") or {}).items()}

    def verdict(v: dict[str, Any]) -> str:
        return str(v.get("verdict") or (RAISED if v.get("ok", False) else LOWERED))

    return {
        "available": True,
        "alpha": sc.get("alpha"),
        "n": sc.get("n"),
        "per_layer": per_layer,
        "passed": bool(per_layer) and all(verdict(v) == RAISED for v in per_layer.values()),
        "failed": (failed := sorted(k for k, v in per_layer.items() if verdict(v) == LOWERED)),
        # "lowered" where the run stored the paired change; older runs stored means only
        "failed_how": "lowered" if all("change" in per_layer[k] for k in failed) else "not raised",
        "not_shown": sorted(k for k, v in per_layer.items() if verdict(v) == NOT_SHOWN),
    }
