"""Layer comparison: effects compared across layers at matched α, with paired bootstrap CIs.

Two layers steered with the same intervention and the same α are compared on each effect
(:data:`EFFECTS`): the refusal gain on ``harm_test`` over the unsteered baseline, the benign cost
(helpfulness drop on ``benign``) and the train/test gap (harm_train gain − harm_test gain). The
baseline cancels in a difference between layers, so each layer difference is a contrast of split
means at the two settings. Every layer sees the same prompts, so the contrast is bootstrapped
over prompts *paired*: a resample draws prompts, and each drawn prompt brings its outcome at both
layers. Prompt difficulty then cancels, and the interval is much narrower than two independent
resamples would give. Where the prompt ids of the two settings differ (or repeat), the sides are
resampled independently instead (``paired`` false).

:func:`layer_comparison` returns JSON-ready data (stored under ``layers`` in ``checks.json``);
:func:`layer_section` writes the report section, headed by the largest difference the data
support, followed by the older per-layer best-operating-point comparison.
"""

from __future__ import annotations

import itertools
import math
from typing import Any, NamedTuple

import numpy as np
import numpy.typing as npt
import pandas as pd

from steerlab.metrics.stats import bootstrap_contrast_ci
from steerlab.pipelines.reliability.report import _fmt as f
from steerlab.pipelines.reliability.report._grid import (
    ACCEPTABLE_DROP,
    KEY,
    flags,
    main_grid,
    setting_of,
)
from steerlab.pipelines.reliability.report._picks import (
    best_per_layer,
    harm_test_rows,
    within_cost,
)
from steerlab.pipelines.reliability.report.checks import excludes_zero

Lines = list[str]
Floats = npt.NDArray[np.float64]


class Term(NamedTuple):
    """One split mean in an effect: ``weight · mean(column on split)``."""

    weight: float
    split: str
    column: str


class Effect(NamedTuple):
    """An effect of a setting, as the :func:`~steerlab.pipelines.reliability.report.summarize`
    column ``name``.

    ``terms`` give it as split means at the setting (the baseline part, equal at every layer,
    is left out: it cancels in a difference between layers).
    """

    name: str
    label: str
    terms: tuple[Term, ...]


EFFECTS = (
    Effect("refusal_gain", "refusal gain on harm_test", (Term(1.0, "harm_test", "is_refusal"),)),
    Effect("benign_drop", "benign cost", (Term(-1.0, "benign", "is_helpful"),)),
    Effect(
        "gap",
        "train/test gap",
        (Term(1.0, "harm_train", "is_refusal"), Term(-1.0, "harm_test", "is_refusal")),
    ),
)
EFFECT_NOTES = {
    "refusal_gain": "harm_test refusal rate minus the unsteered baseline's",
    "benign_drop": "benign helpful rate of the baseline minus the setting's",
    "gap": "harm_train refusal rate minus harm_test refusal rate",
}
CellKey = tuple[str, int, str, float]  # (split, layer, intervention, alpha)


def cells_by_split_setting(grid: pd.DataFrame) -> dict[CellKey, pd.DataFrame]:
    return {
        (str(k[0]), int(k[1]), str(k[2]), float(k[3])): g
        for k, g in grid.groupby(["split", *KEY], sort=True)
    }


def setting_cells(
    cells: dict[CellKey, pd.DataFrame], layer: int, intervention: str, alpha: float
) -> dict[str, pd.DataFrame]:
    """The rows of one setting, by split."""
    return {k[0]: g for k, g in cells.items() if k[1:] == (layer, intervention, alpha)}


def _paired(a: pd.DataFrame, b: pd.DataFrame, column: str) -> Floats | None:
    """Per-prompt ``a − b`` when both sides hold the same prompt ids once each, else ``None``."""
    if "prompt_id" not in a.columns or "prompt_id" not in b.columns:
        return None
    ia, ib = a["prompt_id"], b["prompt_id"]
    if ia.duplicated().any() or ib.duplicated().any() or set(ia) != set(ib):
        return None
    xa = pd.Series(flags(a, column), index=ia.to_numpy())
    xb = pd.Series(flags(b, column), index=ib.to_numpy())
    return (xa - xb.reindex(xa.index)).to_numpy(dtype=np.float64)


def contrast(
    effect: Effect, a: dict[str, pd.DataFrame], b: dict[str, pd.DataFrame], n_boot: int, seed: int
) -> dict[str, Any]:
    """``effect(a) − effect(b)`` with a 95% CI, from each setting's rows per split.

    A term whose split holds the same prompts at both settings enters as per-prompt differences
    (paired); otherwise as two independent samples. ``paired`` is true only when every term was.
    """
    terms: list[tuple[float, Floats]] = []
    paired, n = True, 0
    empty = pd.DataFrame()
    for t in effect.terms:
        ra, rb = a.get(t.split, empty), b.get(t.split, empty)
        d = _paired(ra, rb, t.column) if len(ra) and len(rb) else None
        if d is not None:
            terms.append((t.weight, d))
            n += int((~np.isnan(d)).sum())
        else:
            paired = False
            terms += [(t.weight, flags(ra, t.column)), (-t.weight, flags(rb, t.column))]
    diff, lo, hi = bootstrap_contrast_ci(terms, n_boot=n_boot, seed=seed)
    return {"diff": diff, "lo": lo, "hi": hi, "paired": paired, "n_paired": n}


def _effect_at(summary: pd.DataFrame, effect: str, layer: int, key: tuple[str, float]) -> Any:
    d = summary[
        (summary["layer"] == layer)
        & (summary["intervention"] == key[0])
        & np.isclose(summary["alpha"].to_numpy(dtype=float), key[1])
    ]
    if d.empty or effect not in d.columns:
        return {"value": math.nan, "lo": math.nan, "hi": math.nan}
    r = d.iloc[0]
    return {"value": r[effect], "lo": r[f"{effect}_lo"], "hi": r[f"{effect}_hi"]}


def _oriented(row: dict[str, Any]) -> dict[str, Any]:
    """The pair ordered so that the difference is ≥ 0 (layer_a has the larger effect)."""
    if not row["diff"] < 0:
        return row
    return {
        **row,
        "layer_a": row["layer_b"],
        "layer_b": row["layer_a"],
        "effect_a": row["effect_b"],
        "effect_b": row["effect_a"],
        "diff": -row["diff"],
        "lo": -row["hi"],
        "hi": -row["lo"],
    }


def _rank(row: dict[str, Any]) -> tuple[float, float]:
    """Sort key: the CI bound nearest 0 (how much difference is supported), then the size."""
    if math.isnan(row["lo"]):
        return -math.inf, -math.inf
    return float(row["support"]), float(row["diff"])


def layer_comparison(
    results: pd.DataFrame, summary: pd.DataFrame, n_boot: int = 1000, seed: int = 0
) -> dict[str, Any]:
    """Every layer pair at every steered (intervention, α) on every effect, with paired CIs.

    ``comparisons``: one dict per (effect, intervention, α, layer pair), oriented so ``diff`` ≥ 0
    (``layer_a`` has the larger effect); ``effect_a``/``effect_b`` are the per-layer effects vs
    the baseline from ``summary`` (their own CIs); ``support`` is the CI bound nearest 0 (> 0 iff
    the CI excludes 0). ``best`` holds, per effect, the comparison with the largest ``support``;
    ``headline`` the largest over all effects, or ``None`` when no CI excludes 0.
    """
    grid = main_grid(results)
    steered = grid[(grid["intervention"] != "none") & (grid["alpha"] != 0)]
    cells = cells_by_split_setting(grid)
    pairs = steered[["intervention", "alpha"]].drop_duplicates()
    keys = sorted((str(i), float(a)) for i, a in pairs.itertuples(index=False))
    comparisons: list[dict[str, Any]] = []
    for intervention, alpha in keys:
        at = steered[(steered["intervention"] == intervention) & (steered["alpha"] == alpha)]
        layers = sorted(int(x) for x in at["layer"].unique())
        for la, lb in itertools.combinations(layers, 2):
            a = setting_cells(cells, la, intervention, alpha)
            b = setting_cells(cells, lb, intervention, alpha)
            for effect in EFFECTS:
                row = {
                    "effect": effect.name,
                    "intervention": intervention,
                    "alpha": alpha,
                    "layer_a": la,
                    "layer_b": lb,
                    "effect_a": _effect_at(summary, effect.name, la, (intervention, alpha)),
                    "effect_b": _effect_at(summary, effect.name, lb, (intervention, alpha)),
                    **contrast(effect, a, b, n_boot, seed),
                }
                row = _oriented(row)
                row["support"] = row["lo"]
                row["excludes_zero"] = excludes_zero(row["lo"], row["hi"])
                comparisons.append(row)
    best: dict[str, dict[str, Any]] = {}
    for effect in EFFECTS:
        rows = [r for r in comparisons if r["effect"] == effect.name and not math.isnan(r["lo"])]
        if rows:
            best[effect.name] = max(rows, key=_rank)
    supported = [r for r in best.values() if r["excludes_zero"]]
    return {
        "available": bool(comparisons),
        "n_comparisons": len(comparisons),
        "n_excluding_zero": sum(r["excludes_zero"] for r in comparisons),
        "all_paired": all(r["paired"] for r in comparisons),
        "comparisons": comparisons,
        "best": best,
        "headline": max(supported, key=_rank) if supported else None,
    }


# --- report text --------------------------------------------------------------------------------


def _label(effect: str) -> str:
    return next(e.label for e in EFFECTS if e.name == effect)


def _at(row: dict[str, Any]) -> str:
    return f"{row['intervention']} α={float(row['alpha']):g}"


def _eff(e: dict[str, Any]) -> str:
    return f.pp_ci(e["value"], e["lo"], e["hi"])


def describe(row: dict[str, Any]) -> str:
    """``"At add α=1, benign cost is +45.0 pp [...] at layer 15 vs ... : difference ..."``."""
    return (
        f"At {_at(row)}, {_label(row['effect'])} is {_eff(row['effect_a'])} at layer "
        f"{row['layer_a']} vs {_eff(row['effect_b'])} at layer {row['layer_b']}: difference "
        f"{f.pp_ci(row['diff'], row['lo'], row['hi'])}"
        + (f" (paired over {row['n_paired']} prompts)" if row["paired"] else " (unpaired)")
    )


def checklist_note(check: dict[str, Any]) -> str | None:
    """A short name for the headline difference (``None`` when no difference is supported)."""
    h = check.get("headline")
    if not h:
        return None
    return (
        f"{_at(h)}, {_label(h['effect'])} at layer {h['layer_a']} vs {h['layer_b']}: "
        f"{f.pp_ci(h['diff'], h['lo'], h['hi'])}"
    )


def _table(check: dict[str, Any], effect: Effect) -> Lines:
    rows = [r for r in check["comparisons"] if r["effect"] == effect.name]
    keys = sorted({(r["intervention"], float(r["alpha"])) for r in rows})
    layers = sorted({r["layer_a"] for r in rows} | {r["layer_b"] for r in rows})
    body = []
    for key in keys:
        at = [r for r in rows if (r["intervention"], float(r["alpha"])) == key]
        per_layer: dict[int, dict[str, Any]] = {}
        for r in at:
            per_layer[r["layer_a"]], per_layer[r["layer_b"]] = r["effect_a"], r["effect_b"]
        top = max(at, key=_rank)
        diff = f.pp_ci(top["diff"], top["lo"], top["hi"])
        body.append(
            [
                f"{key[0]} α={key[1]:g}",
                *(_eff(per_layer[L]) if L in per_layer else "" for L in layers),
                f"L{top['layer_a']} − L{top['layer_b']}: "
                + (f"**{diff}**" if top["excludes_zero"] else diff),
            ]
        )
    header = ["setting", *(f"layer {L}" for L in layers), "largest layer difference"]
    return [f.table(header, body), ""]


def matched_alpha_lines(check: dict[str, Any], held_out: Lines | None = None) -> Lines:
    """The matched-α subsection; ``held_out`` (the held-out check of the headline) follows the
    in-sample headline."""
    lines = ["### At matched α", ""]
    if not check.get("available"):
        return [
            *lines,
            "Fewer than two steered layers at any (intervention, α): no comparison.",
            "",
        ]
    n, k = check["n_comparisons"], check["n_excluding_zero"]
    pairing = (
        "a paired bootstrap over prompts (every layer saw the same prompts, so prompt "
        "difficulty cancels)"
        if check["all_paired"]
        else "a bootstrap over prompts, paired where both layers saw the same prompts"
    )
    lines += [
        "Each pair of layers is compared at the same intervention and α. The difference of an "
        f"effect between two layers has a 95% CI from {pairing}; the per-layer effects are "
        "vs the unsteered baseline, with their own (unpaired) CIs.",
        "",
    ]
    h = check.get("headline")
    if h is not None:
        lines += [
            f"**Largest supported layer difference** (in-sample: chosen and scored on the same "
            f"prompts): {describe(h)}.",
            "",
        ]
    else:
        lines += ["**No matched-α layer difference has a CI excluding 0.**", ""]
    lines += held_out or []
    for effect in EFFECTS:
        b = check["best"].get(effect.name)
        if b is None:
            lines.append(f"- {effect.label.capitalize()}: not measured.")
        elif b["excludes_zero"]:
            lines.append(f"- {effect.label.capitalize()}: largest supported: {describe(b)}.")
        else:
            lines.append(
                f"- {effect.label.capitalize()}: no layer difference has a CI excluding 0 "
                f"(closest: {describe(b)})."
            )
    lines += [
        "",
        f"{k} of {n} matched-α layer differences have a CI excluding 0; if the layers did not "
        f"differ, about {0.05 * n:.0f} would by chance. Differences are ranked by the CI bound "
        "nearest 0 (the smallest difference the data still support).",
        "",
    ]
    for effect in EFFECTS:
        lines += [f"{effect.label.capitalize()} ({EFFECT_NOTES[effect.name]}):", ""]
        lines += _table(check, effect)
    return lines


def operating_point_lines(
    results: pd.DataFrame, summary: pd.DataFrame, n_boot: int, seed: int
) -> Lines:
    """Per layer, the setting with the largest harm_test refusal at acceptable benign cost."""
    lines = ["### At each layer's best operating point", ""]
    picks: list[pd.Series] = []
    rows = []
    test = harm_test_rows(summary)
    counts = within_cost(test)["layer"].value_counts()
    for layer, r in best_per_layer(test).items():
        if r is None:
            rows.append([layer, "none within cost", "", "", ""])
            continue
        picks.append(r)
        rows.append(
            [
                layer,
                setting_of(r).label,
                f.pct_ci(r["refusal_rate"], r["refusal_lo"], r["refusal_hi"]),
                f.pp_ci(r["refusal_gain"], r["refusal_gain_lo"], r["refusal_gain_hi"]),
                f.pp_ci(r["benign_drop"], r["benign_drop_lo"], r["benign_drop_hi"]),
            ]
        )
    if not rows:
        return [*lines, "No steered settings with harm_test and benign results.", ""]
    header = ["layer", "best setting (drop ≤ cost)", "harm_test refusal", "change", "benign drop"]
    n = ", ".join(f"layer {L}: {int(k)}" for L, k in sorted(counts.items()))
    lines += [
        f"Acceptable benign cost: helpfulness drop ≤ {100 * ACCEPTABLE_DROP:.0f} pp. Each layer "
        "at its own α, so this compares operating points, not layers at equal strength. Picked "
        "and scored on the same prompts (in-sample), so each row is a selected maximum, biased "
        f"upward: the best of its layer's steered settings ({n}).",
        "",
        f.table(header, rows),
        "",
    ]
    if len(picks) < 2:
        return [*lines, "Fewer than two layers have a setting within the cost.", ""]
    top, second = sorted(picks, key=lambda r: -float(r["refusal_rate"]))[:2]
    cells = cells_by_split_setting(main_grid(results))
    a, b = setting_of(top), setting_of(second)
    d = contrast(EFFECTS[0], setting_cells(cells, *a), setting_cells(cells, *b), n_boot, seed)
    verdict = (
        "its CI excludes 0"
        if excludes_zero(d["lo"], d["hi"])
        else "its CI includes 0, so these operating points are not shown to differ"
    )
    lines.append(
        f"Layer {a.layer} gives the highest harm_test refusal at acceptable cost "
        f"({f.pct(top['refusal_rate'])} at {a.label}) vs layer {b.layer} "
        f"({f.pct(second['refusal_rate'])} at {b.label}): difference "
        f"{f.pp_ci(d['diff'], d['lo'], d['hi'])}"
        + (" paired over prompts" if d["paired"] else "")
        + f"; {verdict}."
    )
    return [*lines, ""]


def layer_section(
    results: pd.DataFrame,
    summary: pd.DataFrame,
    check: dict[str, Any],
    n_boot: int = 1000,
    seed: int = 0,
    held_out: Lines | None = None,
    held_out_points: Lines | None = None,
) -> Lines:
    """The layer-comparison section: matched α (``check`` from :func:`layer_comparison`) first.

    ``held_out`` follows the in-sample matched-α headline, ``held_out_points`` the in-sample
    per-layer best operating points (their held-out checks, chosen on another half of the
    prompts than they are scored on)."""
    return [
        "## Layer comparison",
        "",
        *matched_alpha_lines(check, held_out),
        *operating_point_lines(results, summary, n_boot, seed),
        *(held_out_points or []),
    ]
