"""The outputs of ``steerlab behaviours``: ``results.parquet`` (one row per item x setting,
shifted conditions included), ``summary.csv`` (P(matching) and logit difference per behaviour x
condition x layer x multiplier, with CIs), ``steerability.csv`` (per behaviour x condition x
layer), ``item_slopes.csv``, ``open_ended.parquet``, the plots and ``report.md`` (backwards
vectors first, then the headline per behaviour)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pandas as pd

from steerlab._util.io import atomic_path, atomic_write_text
from steerlab.pipelines.behaviours import metrics, plots
from steerlab.pipelines.behaviours.config import AFTER_INSTRUCTION, BASE, BehavioursConfig
from steerlab.pipelines.behaviours.prompts import data_of
from steerlab.runs.shards import stage_results
from steerlab.tasks.behaviours import BehaviourData

SCALE_WORDS = {
    "diff": "1 adds the vector as built",
    "resid": "1 adds a vector as long as the mean residual norm at its layer",
    "absolute": "1 adds the unit direction",
}


def _ci(row: Any, col: str, fmt: str = "+.3f") -> str:
    return f"{row[col]:{fmt}} [{row[col + '_lo']:{fmt}}, {row[col + '_hi']:{fmt}}]"


def _pct(row: Any, col: str) -> str:
    return f"{100 * row[col]:.0f}% [{100 * row[col + '_lo']:.0f}, {100 * row[col + '_hi']:.0f}]"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return out


def _write_parquet(path: Path, df: pd.DataFrame) -> None:
    with atomic_path(path) as tmp:
        df.to_parquet(tmp, index=False)


def _write_csv(path: Path, df: pd.DataFrame) -> None:
    atomic_write_text(path, df.to_csv(index=False))


def _open_ended(run: Path) -> pd.DataFrame | None:
    judged = run / "open_ended_judged.parquet"
    if judged.is_file():
        return pd.read_parquet(judged)
    if (run / "parts" / "open-ended").is_dir():
        return stage_results(run, "open-ended")
    return None


def write_report(run: Path, cfg: BehavioursConfig) -> None:
    data = data_of(cfg)
    scored = [stage_results(run, "scores")]
    if (run / "parts" / "shifts").is_dir():
        scored.append(stage_results(run, "shifts"))
    full = metrics.full_grid(pd.concat(scored, ignore_index=True))
    slopes = metrics.item_slopes(full)
    table = metrics.steerability(slopes, cfg.n_boot)
    curve = metrics.curves(full, cfg.n_boot)
    best = metrics.best_of(table)
    open_df = _open_ended(run)

    _write_parquet(run / "results.parquet", full)
    _write_csv(run / "summary.csv", curve)
    _write_csv(run / "steerability.csv", table)
    _write_csv(run / "item_slopes.csv", slopes)
    if open_df is not None:
        _write_parquet(run / "open_ended.parquet", open_df)
    figures = plots.write_plots(run, curve, table, slopes, best)

    manifest = json.loads((run / "manifest.json").read_text(encoding="utf-8"))
    model = manifest.get("model", {}).get("name", cfg.model.name)
    n_layers = int(table[table["condition"] == BASE]["layer"].nunique())
    lines = [f"# Behaviour benchmark: {cfg.data} on {model}", ""]
    lines += _sign_check(table)
    lines += _headline(data, table, curve, best, n_layers, cfg)
    lines += _reads_options(data, full)
    lines += _shifts(data, table, curve, best)
    lines += _per_layer(table)
    lines += _anti_steerable(data, slopes, best)
    if open_df is not None:
        lines += _open_section(open_df)
    lines += _method(data, cfg, manifest)
    lines += ["## Plots", ""] + [f"- `{f}`" for f in figures] + [""]
    atomic_write_text(run / "report.md", "\n".join(lines))


def _sign_check(table: pd.DataFrame) -> list[str]:
    bad = metrics.sign_check_lines(table)
    if not bad:
        return [
            "**Sign check:** no vector moves the wrong way at any layer (a layer would count "
            "when its steerability's 95% CI lies below 0).",
            "",
        ]
    out = ["**Sign check: vectors that move the wrong way**", ""]
    out += [f"- {line}" for line in bad]
    out += ["", "At these layers +multiplier lowers the matching answer's probability.", ""]
    return out


def _at(curve: pd.DataFrame, name: str, cond: str, layer: int, m: float) -> str:
    row = curve[
        (curve["behaviour"] == name)
        & (curve["condition"] == cond)
        & (curve["layer"] == layer)
        & (curve["multiplier"] == m)
    ]
    return f"{row['p_matching'].iloc[0]:.2f}" if len(row) else "-"


def _headline(
    data: BehaviourData,
    table: pd.DataFrame,
    curve: pd.DataFrame,
    best: dict[str, int],
    n_layers: int,
    cfg: BehavioursConfig,
) -> list[str]:
    lo, hi = min(cfg.multipliers), max(cfg.multipliers)
    rows = []
    for name in data.behaviours:
        r = table[
            (table["behaviour"] == name)
            & (table["condition"] == BASE)
            & (table["layer"] == best[name])
        ].iloc[0]
        rows.append(
            [
                name,
                str(best[name]),
                _ci(r, "steerability"),
                _pct(r, "anti_steerable"),
                " / ".join(_at(curve, name, BASE, best[name], m) for m in (lo, 0.0, hi)),
                str(int(r["n_items"])),
            ]
        )
    header = [
        "behaviour",
        "best layer",
        "steerability [95% CI]",
        "anti-steerable items [95% CI]",
        f"P(matching) at {lo:g} / 0 / {hi:g}",
        "test items",
    ]
    return [
        "## Headline per behaviour",
        "",
        *_table(header, rows),
        "",
        f"Steerability: the slope of the mean logit difference (matching - non-matching) per "
        f"unit multiplier. The best layer is the highest of {n_layers} layers on these same test "
        "items, so its steerability is biased upward by the choice and its CI does not account "
        "for it; compare layers with the per-layer table.",
        "",
    ]


def _reads_options(data: BehaviourData, full: pd.DataFrame) -> list[str]:
    """Does the model answer by the options' content or by the letter? Unsteered, an item whose
    options are swapped between the letters should keep its preferred answer: count the items
    that prefer the matching answer in both orders, and those that keep their answer (matching
    in both or non-matching in both). A model that picks a letter whatever the options say keeps
    almost none."""
    unsteered = full[~full["steered"]].drop_duplicates(["item_id", "condition"])
    base = unsteered[unsteered["condition"] == BASE].set_index("item_id")["p_matching"]
    swapped = unsteered[unsteered["condition"] == "swapped"].set_index("item_id")["p_matching"]
    both = base.to_frame("base").join(swapped.rename("swapped"), how="inner")
    if both.empty:
        return []
    rows = []
    for name in data.behaviours:
        ids = [i.id for i in data.split(name, "test") if i.id in both.index]
        if not ids:
            continue
        g = both.loc[ids]
        matching = int(((g["base"] > 0.5) & (g["swapped"] > 0.5)).sum())
        kept = matching + int(((g["base"] < 0.5) & (g["swapped"] < 0.5)).sum())
        rows.append([name, f"{matching} / {len(g)}", f"{kept} / {len(g)}"])
    header = ["behaviour", "prefer the matching answer in both orders", "keep their answer"]
    return [
        "## Does the model read the options? (unsteered, options swapped between letters)",
        "",
        *_table(header, rows),
        "",
        "An item keeps its answer when the model prefers the same option whichever letter it sits "
        "under. A model that picks by letter alone keeps almost none; CAA-style vectors need a "
        "model that reads the options.",
        "",
    ]


def _shifts(
    data: BehaviourData, table: pd.DataFrame, curve: pd.DataFrame, best: dict[str, int]
) -> list[str]:
    conds = [c for c in table["condition"].unique() if c != BASE]
    if not conds:
        return []
    rows = []
    for name in data.behaviours:
        for cond in [BASE, *sorted(conds)]:
            r = table[
                (table["behaviour"] == name)
                & (table["condition"] == cond)
                & (table["layer"] == best[name])
            ]
            if not len(r):
                continue
            row = r.iloc[0]
            rows.append(
                [
                    name,
                    cond,
                    _ci(row, "steerability"),
                    _pct(row, "anti_steerable"),
                    _at(curve, name, cond, best[name], 0.0),
                    str(int(row["n_items"])),
                ]
            )
    header = [
        "behaviour",
        "prompts",
        "steerability",
        "anti-steerable",
        "P(matching) unsteered",
        "items",
    ]
    return [
        "## Generalization: steerability under prompt shifts (at the best layer)",
        "",
        *_table(header, rows),
        "",
        "system-toward / system-against: a system prompt pushing toward / against the behaviour; "
        "swapped: the two options exchanged between the letters (the vector was built on the "
        "unswapped generate items).",
        "",
    ]


def _per_layer(table: pd.DataFrame) -> list[str]:
    base = table[table["condition"] == BASE]
    rows = [
        [
            str(r["behaviour"]),
            str(int(r["layer"])),
            _ci(r, "steerability"),
            _pct(r, "anti_steerable"),
        ]
        for _, r in base.iterrows()
    ]
    header = ["behaviour", "layer", "steerability [95% CI]", "anti-steerable"]
    return ["## Steerability per layer", "", *_table(header, rows), ""]


def _anti_steerable(
    data: BehaviourData, slopes: pd.DataFrame, best: dict[str, int], k: int = 5
) -> list[str]:
    out = ["## Most anti-steerable items (at the best layer)", ""]
    for name in data.behaviours:
        s = slopes[
            (slopes["behaviour"] == name)
            & (slopes["condition"] == BASE)
            & (slopes["layer"] == best[name])
        ].sort_values("slope")
        neg = s[s["slope"] < 0].head(k)
        out.append(
            f"**{name}** ({int((s['slope'] < 0).sum())} of {len(s)} items have a negative slope)"
        )
        out.append("")
        for _, r in neg.iterrows():
            q = data.item(r["item_id"]).question.split("\n")[0]
            out.append(f"- `{r['item_id']}` slope {r['slope']:+.3f}: {q[:140]}")
        out.append("")
    return out


def _open_section(df: pd.DataFrame) -> list[str]:
    out = ["## Open-ended answers", ""]
    if "judge_score" in df.columns:
        g = df.groupby(["behaviour", "multiplier"])["judge_score"].agg(["mean", "count"])
        rows = [
            [
                str(b),
                f"{m:g}",
                "-" if math.isnan(r["mean"]) else f"{r['mean']:.1f}",
                str(int(r["count"])),
            ]
            for (b, m), r in g.iterrows()
        ]
        out += _table(["behaviour", "multiplier", "mean judge score (0-100)", "scored"], rows)
        out += [""]
    for name, g in df.groupby("behaviour", sort=True):
        first = g["item_id"].iloc[0]
        out.append(f"**{name}**, layer {int(g['layer'].iloc[0])}: {g['question'].iloc[0][:200]}")
        out.append("")
        for _, r in g[g["item_id"] == first].sort_values("multiplier").iterrows():
            text = " ".join(str(r["answer"]).split())[:300]
            out.append(f"- multiplier {r['multiplier']:+g}: {text}")
        out.append("")
    return out


def _method(data: BehaviourData, cfg: BehavioursConfig, manifest: dict[str, Any]) -> list[str]:
    model = manifest.get("model", {}).get("name", cfg.model.name)
    counts = ", ".join(
        f"{b} {len(data.split(b, 'generate'))}/{len(data.split(b, 'test'))}"
        for b in data.behaviours
    )
    steer = (
        "CAA's after-instruction positions: from the chat template's last token before the answer "
        "(the `[/INST]` of CAA's Llama 2 prompts) through the answer's opening `(` and every "
        "generated token"
        if cfg.steer_positions == AFTER_INSTRUCTION
        else f"positions `{cfg.steer_positions}`"
    )
    read = (
        "the answer letter (the token after `(`), as CAA reads it"
        if cfg.read_position == "answer"
        else "the last token of the answer as written (the `)` of `(A)`)"
    )
    return [
        "## Method",
        "",
        f"- Data: `{cfg.data}` ({data.layout} layout); items generate/test per behaviour: "
        f"{counts}.",
        f"- Vectors: per behaviour and layer, mean activation at {read} after the matching answer "
        f"minus after the non-matching one, over the generate items, at `{cfg.hook_point}`; the "
        "question is the user turn of the chat template and the answer starts the assistant turn.",
        f"- Steering: `add` at {steer}; multipliers {', '.join(f'{m:g}' for m in cfg.multipliers)} "
        f"(scale `{cfg.scale}`: {SCALE_WORDS[cfg.scale]}).",
        "- Scoring: next-token log-probabilities where the answer letter comes; P(matching) is "
        "normalized over the two answers; the logit difference is matching minus non-matching.",
        f"- CIs: 95%, bootstrap over items ({cfg.n_boot} resamples); anti-steerable fractions: "
        "Wilson intervals.",
        f"- Chat template: {'on' if cfg.model.chat else 'off'}; model `{model}`, backend "
        f"`{cfg.model.backend}`.",
        "",
    ]
