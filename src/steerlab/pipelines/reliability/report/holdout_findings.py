"""The Findings' "largest" statements and each layer's best operating point, held out.

The Findings name settings picked out of every steered setting (the largest raise and the
largest lowering of harm_test refusal, the largest train−test gap, the largest benign
helpfulness drop, the setting with the highest harm_test refusal), and the layer comparison
names each layer's best operating point. Picked and scored on the same prompts, each figure is a
selected maximum: biased upward, with a CI that does not know it was picked. So, as for the
operating point (:mod:`.holdout`, whose halves these are), each rule of :mod:`._picks` is run
again on the **selection half** of the prompts, and the setting it names is measured on the
**report half**, which took no part in the choice (effects vs the baseline paired over prompts).

A statement *replicates* when its held-out estimate has the sign it had where it was chosen and
its 95% CI excludes 0; it *reverses* when the CI excludes 0 on the other side; otherwise it is
not confirmed. :func:`held_out_findings` returns JSON-ready data (``findings_holdout`` in
``checks.json``); :func:`statement_lines`, :func:`findings_method` and
:func:`layer_points_lines` write the report text.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, NamedTuple

import pandas as pd

from steerlab.metrics import bootstrap_ci, bootstrap_diff_ci
from steerlab.pipelines.reliability.report import _fmt as f
from steerlab.pipelines.reliability.report import _picks as pick
from steerlab.pipelines.reliability.report._grid import ACCEPTABLE_DROP, Setting, flags, setting_of
from steerlab.pipelines.reliability.report.holdout import (
    BASELINE,
    effects,
    prompts_per_split,
    split_counts,
    split_halves,
)
from steerlab.pipelines.reliability.report.layers import (
    EFFECTS,
    cells_by_split_setting,
    contrast,
    setting_cells,
)

Lines = list[str]
Rule = Callable[[pd.DataFrame, pd.Series | None], pd.Series | None]
_EFFECT = {e.name: e for e in EFFECTS}
REPLICATES, REVERSES, NOT_CONFIRMED = "replicates", "reverses", "not confirmed"


class Statement(NamedTuple):
    """A Findings statement naming one setting.

    ``in_sample`` is the report's rule on all prompts (CI filter included). On the selection
    half the setting is the steered one with the largest ``rank`` in the statement's
    ``direction`` (+1: largest positive; -1: most negative; 0: largest, any sign), without the
    CI filter: testing the choice is the report half's job. ``effect`` is what is measured.
    """

    name: str
    title: str
    rank: str
    direction: int
    effect: str  # "refusal_gain" | "gap" | "benign_drop"
    in_sample: Rule
    none_chosen: str  # why the selection half names no setting


STATEMENTS = (
    Statement(
        "raise",
        "largest raise",
        "refusal_gain",
        1,
        "refusal_gain",
        lambda test, base: pick.top(pick.raising(test), "refusal_gain"),
        "no steered setting raises harm_test refusal",
    ),
    Statement(
        "lower",
        "largest lowering",
        "refusal_gain",
        -1,
        "refusal_gain",
        lambda test, base: pick.top(pick.lowering(test), "refusal_gain", lowest=True),
        "no steered setting lowers harm_test refusal",
    ),
    Statement(
        "gap",
        "largest gap",
        "gap",
        1,
        "gap",
        lambda test, base: pick.top(pick.gaps_beyond_baseline(test, base), "gap"),
        "no steered setting refuses more on harm_train than on harm_test",
    ),
    Statement(
        "drop",
        "largest drop",
        "benign_drop",
        1,
        "benign_drop",
        lambda test, base: pick.top(pick.hurting(test), "benign_drop"),
        "no steered setting lowers benign helpfulness",
    ),
    Statement(
        "strongest",
        "highest harm_test refusal",
        "refusal_rate",
        0,
        "benign_drop",
        lambda test, base: pick.top(
            pick.steered(test, "benign_drop").dropna(subset=["refusal_rate"]), "refusal_rate"
        ),
        "no steered setting has harm_test and benign results",
    ),
)


def choose(st: Statement, test: pd.DataFrame) -> pd.Series | None:
    """The setting ``st`` names on one half's harm_test summary rows (see :class:`Statement`)."""
    rows = pick.steered(test, st.effect).dropna(subset=[st.rank])
    if st.direction:
        rows = rows[st.direction * rows[st.rank] > 0]
    return pick.top(rows, st.rank, lowest=st.direction < 0)


def verdict(value: float, lo: float, hi: float, sign: float) -> str:
    """:data:`REPLICATES` when ``[lo, hi]`` excludes 0 on the side of ``sign`` (the sign where
    the statement was chosen), :data:`REVERSES` on the other side, else :data:`NOT_CONFIRMED`."""
    if (sign > 0 and lo > 0) or (sign < 0 and hi < 0):
        return REPLICATES
    if (sign > 0 and hi < 0) or (sign < 0 and lo > 0):
        return REVERSES
    return NOT_CONFIRMED


def _ci(value: float, lo: float, hi: float, **extra: Any) -> dict[str, Any]:
    return {"value": value, "lo": lo, "hi": hi, **extra}


def measure(
    cells: dict[Any, pd.DataFrame], s: Setting, effect: str, n_boot: int, seed: int
) -> dict[str, Any]:
    """``effect`` of ``s`` on one half's rows (``cells`` from ``layers.cells_by_split_setting``).

    ``refusal_gain`` and ``benign_drop`` are vs the baseline, paired over prompts; ``gap`` is
    harm_train minus harm_test refusal (different prompts, so unpaired), with ``excess``, the
    gap beyond the baseline's own (paired per split). ``refusal``: harm_test refusal rate.
    """
    at, base = setting_cells(cells, *s), setting_cells(cells, *BASELINE)
    empty = pd.DataFrame()
    test = flags(at.get("harm_test", empty), "is_refusal")
    out: dict[str, Any] = {"refusal": _ci(*bootstrap_ci(test, n_boot=n_boot, seed=seed))}
    if effect == "gap":
        train = flags(at.get("harm_train", empty), "is_refusal")
        gap = bootstrap_diff_ci(train, test, n_boot=n_boot, seed=seed)
        excess = contrast(_EFFECT["gap"], at, base, n_boot, seed)
        return {
            **out,
            **_ci(*gap, paired=False, n=int(len(train) + len(test))),
            "excess": _ci(excess["diff"], excess["lo"], excess["hi"], paired=excess["paired"]),
        }
    c = contrast(_EFFECT[effect], at, base, n_boot, seed)
    return {**out, **_ci(c["diff"], c["lo"], c["hi"], paired=c["paired"], n=c["n_paired"])}


def _setting(row: pd.Series | None) -> dict[str, Any] | None:
    if row is None:
        return None
    s = setting_of(row)
    return {**s.as_dict(), "label": s.label}


def _as_setting(d: dict[str, Any]) -> Setting:
    return Setting(int(d["layer"]), str(d["intervention"]), float(d["alpha"]))


def _base_row(test: pd.DataFrame) -> pd.Series | None:
    base = test[test["intervention"] == "none"]
    return None if base.empty else base.iloc[0]


def _statement(
    st: Statement, halves: dict[str, Any], in_sample: pd.Series | None, n_boot: int, seed: int
) -> dict[str, Any]:
    test, sel_cells, rep_cells = halves["test"], halves["sel_cells"], halves["rep_cells"]
    base = _base_row(test)
    row = choose(st, test)
    out: dict[str, Any] = {
        "title": st.title,
        "effect": st.effect,
        "chosen": _setting(row),
        "in_sample": _setting(in_sample),
        "none_chosen": st.none_chosen,
    }
    if row is None:
        return out
    s = setting_of(row)
    sel = measure(sel_cells, s, st.effect, n_boot, seed)
    held = measure(rep_cells, s, st.effect, n_boot, seed)
    sign = float(sel["value"])
    v = verdict(held["value"], held["lo"], held["hi"], sign)
    # where the rule asked for a gap above the baseline's, the held-out gap must beat it too
    needs_excess = st.effect == "gap" and pick.baseline_gap_is_real(base)
    if needs_excess and v == REPLICATES:
        e = held["excess"]
        v = verdict(e["value"], e["lo"], e["hi"], 1.0)
        v = REPLICATES if v == REPLICATES else NOT_CONFIRMED
    out.update(
        selection=sel,
        held_out=held,
        needs_excess=needs_excess,
        verdict=v,
        replicates=v == REPLICATES,
    )
    return out


def _layer_points(
    halves: dict[str, Any], in_sample: dict[int, Any], n_boot: int, seed: int
) -> list[dict[str, Any]]:
    test, rep = halves["test"], halves["rep"]
    candidates = pick.within_cost(test)
    rows = []
    for layer, r in pick.best_per_layer(test).items():
        d: dict[str, Any] = {
            "layer": layer,
            "n_settings": int((candidates["layer"] == layer).sum()),
            "chosen": _setting(r),
            "in_sample": _setting(in_sample.get(layer)),
        }
        if r is not None:
            s = setting_of(r)
            d["selection_refusal"] = float(r["refusal_rate"])
            d["held_out"] = effects(rep, s, n_boot, seed)
            g = d["held_out"]["gain"]
            d["verdict"] = verdict(g["value"], g["lo"], g["hi"], float(r["refusal_gain"]))
        rows.append(d)
    return rows


def _lead(
    points: list[dict[str, Any]], rep_cells: dict[Any, pd.DataFrame], n_boot: int, seed: int
) -> dict[str, Any] | None:
    """The layer whose selection-half pick refuses most vs the runner-up, on the report half."""
    picked = [p for p in points if p["chosen"] is not None]
    if len(picked) < 2:
        return None
    a, b = sorted(picked, key=lambda p: -p["selection_refusal"])[:2]
    sa, sb = _as_setting(a["chosen"]), _as_setting(b["chosen"])
    d = contrast(
        _EFFECT["refusal_gain"],
        setting_cells(rep_cells, *sa),
        setting_cells(rep_cells, *sb),
        n_boot,
        seed,
    )
    sign = a["selection_refusal"] - b["selection_refusal"]
    return {
        "a": a["chosen"],
        "b": b["chosen"],
        "selection_diff": sign,
        "held_out": d,
        "verdict": verdict(d["diff"], d["lo"], d["hi"], sign),
    }


def held_out_findings(
    results: pd.DataFrame, n_boot: int = 1000, seed: int = 0, summary: pd.DataFrame | None = None
) -> dict[str, Any]:
    """Each Findings statement and each layer's best operating point, chosen on the selection
    half and measured on the report half.

    ``statements[name]`` (names of :data:`STATEMENTS`): ``chosen`` (the rule on the selection
    half; ``None``: it names none), ``in_sample`` (the rule on all prompts), ``selection`` and
    ``held_out`` (:func:`measure` on each half), ``verdict``, ``replicates``. ``layers``: per
    layer, the pick on the selection half among ``n_settings`` steered settings and its
    held-out effects (:func:`~.holdout.effects`); ``lead``: the top layer vs the runner-up.
    ``summary``: ``summarize(results, n_boot, seed)`` when the caller has it.
    """
    from steerlab.pipelines.reliability.report.aggregate import summarize

    sel, rep = split_halves(results)
    if sel.empty:
        return {"available": False}
    if summary is None:
        summary = summarize(results, n_boot=n_boot, seed=seed)
    full_test = pick.harm_test_rows(summary)
    halves = {
        "test": pick.harm_test_rows(summarize(sel, n_boot=n_boot, seed=seed)),
        "rep": rep,
        "sel_cells": cells_by_split_setting(sel),
        "rep_cells": cells_by_split_setting(rep),
    }
    full_base = _base_row(full_test)
    points = _layer_points(halves, pick.best_per_layer(full_test), n_boot, seed)
    return {
        "available": True,
        "n_settings": len(pick.steered(halves["test"])),
        "n_selection": prompts_per_split(sel),
        "n_report": prompts_per_split(rep),
        "statements": {
            st.name: _statement(st, halves, st.in_sample(full_test, full_base), n_boot, seed)
            for st in STATEMENTS
        },
        "layers": points,
        "lead": _lead(points, halves["rep_cells"], n_boot, seed),
    }


# --- report text --------------------------------------------------------------------------------


def _pp(e: dict[str, Any]) -> str:
    return f.pp_ci(e["value"], e["lo"], e["hi"])


def _pairing(e: dict[str, Any]) -> str:
    return f"paired over {e['n']} prompts" if e.get("paired") else "unpaired"


VERDICT_SHORT = {  # "its largest instance ___ on held-out prompts"
    REPLICATES: "replicates",
    REVERSES: "is reversed",
    NOT_CONFIRMED: "is not confirmed",
}
VERDICT_TEXT = {
    REPLICATES: "replicates on held-out prompts (same sign, CI excludes 0)",
    REVERSES: "is **reversed on held-out prompts** (CI excludes 0 on the other side)",
    NOT_CONFIRMED: "is **not confirmed on held-out prompts** (CI includes 0): the in-sample "
    "figure may be a selected maximum of noise",
}


def findings_method(held: dict[str, Any] | None) -> Lines:
    """The Findings' method note: what is in-sample and what is held out."""
    if not held or not held.get("available"):
        return []
    n = held["n_settings"]
    return [
        f"Method: a statement naming one setting (a largest or a highest) picks it among all {n} "
        "steered settings. Its in-sample figure is picked and scored on all prompts: a selected "
        "maximum, biased upward, whose CI does not know it was picked. The *held out* line "
        "under it picks the same kind of setting (the largest in the statement's direction, "
        f"among the same {n}) on the selection half of the prompts "
        f"({split_counts(held['n_selection'])}; the operating point's halves), without the CI "
        "filter, and measures it on the report half "
        f"({split_counts(held['n_report'])}), which took no part in the choice. The statement "
        "replicates when the held-out estimate has the sign it had where it was chosen and its "
        "95% CI excludes 0.",
        "",
    ]


WHAT = {"refusal_gain": "change vs baseline", "gap": "gap", "benign_drop": "benign drop"}


def statement_lines(held: dict[str, Any] | None, name: str) -> Lines:
    """The held-out line under the in-sample statement ``name`` (none without ``held``)."""
    if not held or not held.get("available"):
        return []
    st = held["statements"][name]
    c = st["chosen"]
    if c is None:
        return [f"- Held out ({st['title']}): {st['none_chosen']} on the selection half."]
    sel, h = st["selection"], st["held_out"]
    what = WHAT[st["effect"]]
    first = st["in_sample"]
    if first is None:
        vs = ""
    elif first["label"] == c["label"]:
        vs = ", the in-sample pick too"
    else:
        vs = f", not the in-sample {first['label']}"
    there = f"{what} {_pp(sel)}"
    if name == "strongest":
        there = f"harm_test refusal {f.pct(sel['refusal']['value'])}, {there}"
    text = (
        f"- Held out ({st['title']}): the selection half picks **{c['label']}**{vs} ({there} "
        f"there, where it was chosen); on the report half {what} {_pp(h)} ({_pairing(h)})"
    )
    if st.get("needs_excess"):
        text += f", {_pp(h['excess'])} beyond the baseline's own gap (paired)"
    if name in ("raise", "lower", "strongest"):
        r = h["refusal"]
        text += f", harm_test refusal {f.pct_ci(r['value'], r['lo'], r['hi'])}"
    return [text + f": the {what} {VERDICT_TEXT[st['verdict']]}."]


def layer_points_lines(held: dict[str, Any] | None) -> Lines:
    """The held-out table of each layer's best operating point (for the layer section)."""
    if not held or not held.get("available") or not held["layers"]:
        return []
    rows = []
    for p in held["layers"]:
        c = p["chosen"]
        if c is None:
            rows.append([p["layer"], f"none within cost (of {p['n_settings']})", "", "", "", ""])
            continue
        h = p["held_out"]
        r = h["refusal"]
        same = p["in_sample"] is not None and p["in_sample"]["label"] == c["label"]
        rows.append(
            [
                p["layer"],
                f"{c['label']} (of {p['n_settings']})" + ("" if same else " ≠ in-sample"),
                f.pct_ci(r["value"], r["lo"], r["hi"]),
                _pp(h["gain"]),
                _pp(h["drop"]) + (" ⚠ above cost" if h["drop"]["value"] > ACCEPTABLE_DROP else ""),
                p["verdict"],
            ]
        )
    header = [
        "layer",
        "best setting, chosen on the selection half (of n at the layer)",
        "report half: harm_test refusal",
        "change vs baseline",
        "benign drop",
        "increase held out",
    ]
    lines = [
        "**Held out**: the same per-layer rule on the selection half, among each layer's steered "
        "settings (n in the second column), scored on the report half, which took no part in "
        "the choice. Change and drop are vs the baseline, paired over prompts; the last column "
        "says whether the change replicates (sign it had on the selection half, CI excluding "
        "0). A pick marked ≠ in-sample differs from the in-sample table's.",
        "",
        f.table(header, rows),
        "",
    ]
    lead = held.get("lead")
    if lead is not None:
        d = lead["held_out"]
        lines += [
            f"Held out, the lead: on the selection half layer {lead['a']['layer']} "
            f"({lead['a']['label']}) refuses most, ahead of layer {lead['b']['layer']} "
            f"({lead['b']['label']}) by {f.pp_ci(lead['selection_diff'], math.nan, math.nan)}; on "
            f"the report half the difference is {f.pp_ci(d['diff'], d['lo'], d['hi'])}"
            + (" paired over prompts" if d["paired"] else "")
            + f": the difference {VERDICT_TEXT[lead['verdict']]}.",
            "",
        ]
    return lines
