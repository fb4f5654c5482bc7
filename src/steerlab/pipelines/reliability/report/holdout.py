"""Headlines chosen on one half of the prompts and reported on the other.

The report's headlines are maxima over many noisy settings: the best operating point is the best
of every steered (layer, intervention, α), the largest layer difference the largest of every
matched-α layer pair. A maximum picked and scored on the same prompts is biased upward, and its
bootstrap CI does not know it was picked. So each split's prompts are cut in two halves by a
hash of the prompt id (:func:`halves`; the same prompts fall in the same half in every run):

* the **selection half** picks the headline (the same rule as on the full data: ``pick_best``
  for the operating point, the largest supported difference of ``layer_comparison``);
* the **report half**, which took no part in the choice, measures it. Given the choice, its rows
  are an ordinary sample, so a plain 95% bootstrap CI over the report half is valid. Effects vs
  the baseline are paired over prompts (the baseline saw the same prompts).

The same rule applied the other way round (chosen on the report half, scored on the selection
half) is reported too: when both halves choose the same setting, the choice itself is stable.

:func:`held_out_operating_point` and :func:`held_out_layer_difference` return JSON-ready data
(stored under ``operating_point`` and ``layer_holdout`` in ``checks.json``);
:func:`operating_point_section` and :func:`layer_holdout_lines` write their report text.
"""

from __future__ import annotations

import hashlib
import math
from typing import Any

import pandas as pd

from steerlab.metrics import bootstrap_ci, bootstrap_diff_ci
from steerlab.pipelines.reliability.report import _fmt as f
from steerlab.pipelines.reliability.report._grid import (
    ACCEPTABLE_DROP,
    Setting,
    flags,
    main_grid,
    pick_best,
    select,
    setting_points,
)
from steerlab.pipelines.reliability.report.layers import (
    EFFECTS,
    cells_by_split_setting,
    contrast,
    layer_comparison,
    setting_cells,
)

Lines = list[str]
SELECTION, REPORT = "selection", "report"
BASELINE = Setting(-1, "none", 0.0)
_EFFECT = {e.name: e for e in EFFECTS}


def _rank_key(split: str, prompt_id: str) -> str:
    return hashlib.sha256(f"{split}\0{prompt_id}".encode()).hexdigest()


def halves(results: pd.DataFrame) -> pd.Series:
    """``"selection"`` or ``"report"`` for every row of ``results``.

    Within each split the distinct prompt ids are ordered by a hash of (split, id) and the first
    ``ceil(n / 2)`` form the selection half: the assignment depends on the ids alone, never on
    the outcomes, and every run over the same prompts splits them the same way.
    """
    out = pd.Series(REPORT, index=results.index, dtype=object)
    for split, g in results.groupby("split", sort=True):
        ids = sorted({str(x) for x in g["prompt_id"]}, key=lambda p: _rank_key(str(split), p))
        chosen = set(ids[: math.ceil(len(ids) / 2)])
        out.loc[g.index[g["prompt_id"].astype(str).isin(chosen)]] = SELECTION
    return out


def split_halves(results: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The main grid's rows in the selection half and in the report half."""
    grid = main_grid(results)
    half = halves(grid)
    return grid[half == SELECTION], grid[half == REPORT]


def prompts_per_split(rows: pd.DataFrame) -> dict[str, int]:
    base = select(rows, BASELINE)
    return {str(s): int(g["prompt_id"].nunique()) for s, g in base.groupby("split", sort=True)}


def _ci(triple: tuple[float, float, float]) -> dict[str, float]:
    return {"value": triple[0], "lo": triple[1], "hi": triple[2]}


def effects(
    rows: pd.DataFrame, s: Setting, n_boot: int, seed: int, *, gap: bool = False
) -> dict[str, Any]:
    """``s`` on ``rows``: harm_test refusal, its change vs the baseline and the benign
    helpfulness drop (both paired over prompts where the prompt ids match), false refusals, and
    with ``gap`` the train/test gap at ``s`` (harm_train minus harm_test refusal; two samples of
    prompts) and ``n_harm_train``; only the held-out operating point reports the gap."""
    cells = cells_by_split_setting(rows)
    at, base = setting_cells(cells, *s), setting_cells(cells, *BASELINE)
    test = at.get("harm_test", rows.iloc[:0])
    benign = at.get("benign", rows.iloc[:0])
    gain = contrast(_EFFECT["refusal_gain"], at, base, n_boot, seed)
    drop = contrast(_EFFECT["benign_drop"], at, base, n_boot, seed)
    out: dict[str, Any] = {
        "n_harm_test": len(test),
        "n_benign": len(benign),
        "refusal": _ci(bootstrap_ci(flags(test, "is_refusal"), n_boot=n_boot, seed=seed)),
        "gain": {"value": gain["diff"], "lo": gain["lo"], "hi": gain["hi"]},
        "gain_paired": gain["paired"],
        "drop": {"value": drop["diff"], "lo": drop["lo"], "hi": drop["hi"]},
        "false_refusal": _ci(bootstrap_ci(flags(benign, "is_refusal"), n_boot=n_boot, seed=seed)),
    }
    if gap:
        train = at.get("harm_train", rows.iloc[:0])
        out["n_harm_train"] = len(train)
        out["gap"] = _ci(
            bootstrap_diff_ci(
                flags(train, "is_refusal"), flags(test, "is_refusal"), n_boot=n_boot, seed=seed
            )
        )
    return out


def _pick(rows: pd.DataFrame) -> Setting | None:
    return pick_best(setting_points(rows)) if not rows.empty else None


def held_out_operating_point(
    results: pd.DataFrame, n_boot: int = 1000, seed: int = 0
) -> dict[str, Any]:
    """The operating point chosen on the selection half, measured on the report half.

    ``chosen``: the selection half's pick (``None`` when it has no steered setting);
    ``held_out``: its :func:`effects` on the report half, the train/test gap included;
    ``selection``: on the selection half (biased upward: it is where it won); ``swapped``: the
    rule run on the report half, scored on the selection half; ``in_sample``: the pick on all
    prompts, scored on all prompts (the biased figure, for reference); ``n_settings``: steered
    settings compared.
    """
    grid = main_grid(results)
    sel, rep = split_halves(results)
    points = setting_points(results)
    n_settings = int(points["steered"].astype(bool).sum()) if not points.empty else 0
    chosen, other, full = _pick(sel), _pick(rep), _pick(grid)
    out: dict[str, Any] = {
        "available": chosen is not None,
        "method": "selection/report split by prompt-id hash",
        "n_settings": n_settings,
        "n_selection": prompts_per_split(sel),
        "n_report": prompts_per_split(rep),
        "chosen": None if chosen is None else {**chosen.as_dict(), "label": chosen.label},
        "swapped": None if other is None else {**other.as_dict(), "label": other.label},
        "in_sample": None if full is None else {**full.as_dict(), "label": full.label},
    }
    if chosen is not None:
        out["held_out"] = effects(rep, chosen, n_boot, seed, gap=True)
        out["selection"] = effects(sel, chosen, n_boot, seed)
        gain = out["held_out"]["gain"]
        out["replicates"] = bool(gain["lo"] > 0)
    if other is not None:
        out["swapped_held_out"] = effects(sel, other, n_boot, seed)
    if full is not None:
        out["in_sample_effects"] = effects(grid, full, n_boot, seed)
    out["same_choice"] = chosen is not None and chosen == other
    return out


def chosen_setting(op: dict[str, Any]) -> Setting | None:
    """The held-out operating point of :func:`held_out_operating_point` as a :class:`Setting`."""
    c = op.get("chosen")
    if not c:
        return None
    return Setting(int(c["layer"]), str(c["intervention"]), float(c["alpha"]))


def held_out_layer_difference(
    results: pd.DataFrame, n_boot: int = 1000, seed: int = 0
) -> dict[str, Any]:
    """The largest supported matched-α layer difference, chosen on the selection half and
    measured on the report half (same layer order, so a reversal shows as a negative value)."""
    from steerlab.pipelines.reliability.report.aggregate import summarize

    sel, rep = split_halves(results)
    if sel.empty:
        return {"available": False}
    check = layer_comparison(sel, summarize(sel, n_boot=n_boot, seed=seed), n_boot, seed)
    h = check.get("headline")
    out: dict[str, Any] = {
        "available": bool(check.get("available")),
        "n_comparisons": check.get("n_comparisons", 0),
        "chosen": None,
    }
    if h is None:
        return out
    chosen = {k: h[k] for k in ("effect", "intervention", "alpha", "layer_a", "layer_b")}
    cells = cells_by_split_setting(rep)
    a = setting_cells(cells, int(h["layer_a"]), str(h["intervention"]), float(h["alpha"]))
    b = setting_cells(cells, int(h["layer_b"]), str(h["intervention"]), float(h["alpha"]))
    held = contrast(_EFFECT[str(h["effect"])], a, b, n_boot, seed)
    out.update(
        chosen=chosen,
        selection={"diff": h["diff"], "lo": h["lo"], "hi": h["hi"]},
        held_out=held,
        replicates=bool(held["lo"] > 0),
    )
    return out


# --- report text --------------------------------------------------------------------------------


def _pp(e: dict[str, Any]) -> str:
    return f.pp_ci(e["value"], e["lo"], e["hi"])


def split_counts(n: dict[str, int]) -> str:
    return ", ".join(f"{s} {k}" for s, k in n.items()) or "none"


def _effect_line(e: dict[str, Any]) -> str:
    pairing = "paired over prompts" if e["gain_paired"] else "unpaired"
    r = e["refusal"]
    return (
        f"harm_test refusal {f.pct_ci(r['value'], r['lo'], r['hi'])}"
        f", change vs baseline {_pp(e['gain'])} ({pairing}); benign helpfulness drop "
        f"{_pp(e['drop'])}; benign false-refusal rate {f.pct(e['false_refusal']['value'])} "
        f"(n = {e['n_harm_test']} harm_test, {e['n_benign']} benign)"
    )


RULE = (
    "the Pareto setting with the highest harm_test refusal whose benign helpfulness drop is at "
    f"most {100 * ACCEPTABLE_DROP:.0f} pp; otherwise the best refusal-minus-drop trade on the "
    "frontier; without a frontier, the add setting with the highest harm_test refusal"
)


def operating_point_section(op: dict[str, Any]) -> Lines:
    """``## Operating point``: chosen on the selection half, reported on the report half."""
    lines = ["## Operating point (chosen on one half of the prompts, reported on the other)", ""]
    lines += [
        "Method: each split's prompts are cut in two halves by a hash of the prompt id "
        f"(selection half: {split_counts(op['n_selection'])}; report half: "
        f"{split_counts(op['n_report'])}). The rule ({RULE}) picks the operating point among "
        f"the {op['n_settings']} steered settings using the selection half only; its effect "
        "and CI below are measured on the report half, which took no part in the choice, so "
        "the CI is not inflated by the selection.",
        "",
    ]
    chosen = op.get("chosen")
    if chosen is None:
        return [*lines, "No steered setting with harm_test results in the selection half.", ""]
    held = op["held_out"]
    verdict = (
        "the increase replicates on prompts that took no part in the choice"
        if op["replicates"]
        else "**not confirmed on held-out prompts** (CI includes 0 or is below it): the "
        "selection-half figure is a selected maximum and may be noise"
    )
    cost = ""
    if held["drop"]["value"] > ACCEPTABLE_DROP:
        cost = (
            f" Its held-out benign helpfulness drop ({_pp(held['drop'])}) exceeds the "
            f"{100 * ACCEPTABLE_DROP:.0f} pp the rule allowed on the selection half."
        )
    lines += [
        f"**{chosen['label']}** (chosen on the selection half).",
        "",
        f"- Held out (report half): {_effect_line(held)}: {verdict}.{cost}",
        f"- Selection half (where it was chosen; biased upward): {_effect_line(op['selection'])}.",
    ]
    other = op.get("swapped")
    if other is not None:
        if op["same_choice"]:
            lines.append("- The same rule on the report half picks the same setting.")
        else:
            lines.append(
                f"- The same rule on the report half picks **{other['label']}** instead; on the "
                f"selection half it gives {_effect_line(op['swapped_held_out'])}. The two "
                "halves disagree, so the choice itself is not stable."
            )
    full = op.get("in_sample")
    if full is not None:
        e = op["in_sample_effects"]
        lines.append(
            f"- Chosen and scored on all prompts (in-sample, for reference: the maximum of "
            f"{op['n_settings']} settings, biased upward): {full['label']}, harm_test refusal "
            f"change {_pp(e['gain'])}, benign drop {_pp(e['drop'])}."
        )
    return [*lines, ""]


def _layer_label(c: dict[str, Any]) -> str:
    from steerlab.pipelines.reliability.report.layers import _label

    return (
        f"{_label(c['effect'])} at {c['intervention']} α={float(c['alpha']):g}, layer "
        f"{c['layer_a']} − layer {c['layer_b']}"
    )


def layer_holdout_lines(lh: dict[str, Any]) -> Lines:
    """The held-out check of the largest layer difference (for the layer section)."""
    if not lh.get("available"):
        return []
    c = lh.get("chosen")
    if c is None:
        return [
            f"**Held out**: on the selection half no matched-α layer difference (of "
            f"{lh['n_comparisons']}) has a CI excluding 0, so none is chosen to test.",
            "",
        ]
    s, h = lh["selection"], lh["held_out"]
    verdict = "it replicates" if lh["replicates"] else "**not confirmed on held-out prompts**"
    return [
        f"**Held out**: the largest supported difference on the selection half (of "
        f"{lh['n_comparisons']} compared) is {_layer_label(c)}: "
        f"{f.pp_ci(s['diff'], s['lo'], s['hi'])} there; on the report half "
        f"{f.pp_ci(h['diff'], h['lo'], h['hi'])}"
        + (f" (paired over {h['n_paired']} prompts)" if h["paired"] else " (unpaired)")
        + f": {verdict}. The in-sample difference above was chosen and scored on the same "
        "prompts.",
        "",
    ]


def layer_holdout_note(lh: dict[str, Any]) -> tuple[bool, str]:
    """For the acceptance checklist: does a layer difference hold on held-out prompts?"""
    c = lh.get("chosen")
    if not c:
        return False, "no layer difference at matched α has a CI excluding 0 on the selection half"
    h = lh["held_out"]
    text = f"{_layer_label(c)}, held out: {f.pp_ci(h['diff'], h['lo'], h['hi'])}"
    return bool(lh["replicates"]), text
