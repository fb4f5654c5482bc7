"""The outputs of ``steerlab select-coefficients``: ``results.parquet`` (every grid row joined
with its baseline), ``summary.json``, ``selected_coefficients.json``, ``report.md``,
``coefficient_analysis.png`` and ``examples/`` (per coefficient: flips first, baseline and steered
code side by side)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from steerlab._util.io import atomic_path, atomic_write_text
from steerlab.pipelines.code.analysis import (
    compare,
    noise_floor,
    selection_record,
    summarize,
)
from steerlab.pipelines.code.config import NOISE, CodeConfig
from steerlab.pipelines.code.results import grid_results, intents, load_baseline

N_EXAMPLES = 4


def _ci(r: pd.Series, k: str, pct: bool = True) -> str:
    v, lo, hi = r[k], r[f"{k}_lo"], r[f"{k}_hi"]
    if any(isinstance(x, float) and math.isnan(x) for x in (v, lo, hi)):
        return "–"
    if pct:
        return f"{100 * v:.0f}% [{100 * lo:.0f}, {100 * hi:.0f}]"
    return f"{v:.2f} [{lo:.2f}, {hi:.2f}]"


def table(summary: pd.DataFrame) -> str:
    head = (
        "| vector | coef | n | flips | pass→fail | fail→pass | intended | syntax-valid | "
        "token sim | char sim | length ratio | statuses |\n"
        "|---|---|---|---|---|---|---|---|---|---|---|---|\n"
    )
    lines = []
    for _, r in summary.iterrows():
        mix = ", ".join(
            f"{c[7:]} {int(r[c])}" for c in summary.columns if c.startswith("status_") and r[c]
        )
        intended = (
            _ci(r, "intended_rate")
            if "intended_rate" in r
            and r["intent"]
            in (
                "correct",
                "incorrect",
            )
            else "–"
        )
        lines.append(
            f"| {r['vector']} | {r['coefficient']:g} | {r['n_valid']} | {_ci(r, 'flip_rate')} | "
            f"{_ci(r, 'pass_to_fail_rate')} | {_ci(r, 'fail_to_pass_rate')} | {intended} | "
            f"{_ci(r, 'syntax_valid_rate')} | {_ci(r, 'token_similarity', False)} | "
            f"{_ci(r, 'char_similarity', False)} | {_ci(r, 'length_ratio', False)} | {mix} |"
        )
    return head + "\n".join(lines) + "\n"


def _fence(code: str) -> str:
    return "```python\n" + (code.rstrip() or "# (no code)") + "\n```\n"


def examples(cmp: pd.DataFrame, out: Path) -> list[Path]:
    """``examples/coef_<c>.md``: per vector, flips first, then the least similar rows."""
    out.mkdir(exist_ok=True)
    paths = []
    for coef, g in cmp[cmp["vector"] != NOISE].groupby("coefficient", sort=True):
        parts = [f"# Coefficient {coef:g}\n"]
        for vector, h in g.groupby("vector", sort=True):
            h = h.sort_values(["flipped", "char_similarity"], ascending=[False, True])
            parts.append(f"\n## {vector}\n")
            for _, r in h.head(N_EXAMPLES).iterrows():
                parts.append(
                    f"\n### {r['task_id']}: {r['baseline_status']} → {r['status']}"
                    f"{' (flip)' if r['flipped'] else ''}; char similarity "
                    f"{r['char_similarity']:.2f}\n\n{r['detail'] or ''}\n\nBaseline:\n\n"
                    f"{_fence(r['baseline_code'])}\nSteered:\n\n{_fence(r['code'])}"
                )
        path = out / f"coef_{coef:g}.md"
        atomic_write_text(path, "".join(parts))
        paths.append(path)
    return paths


def plot(summary: pd.DataFrame, floor: dict[str, Any], path: Path) -> Path:
    """Flip rates, syntax-valid rate and similarity against the coefficient (log axis)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2), constrained_layout=True)
    steered = summary[summary["vector"] != NOISE]
    panels = (
        ("flip_rate", "flip rate vs baseline"),
        ("syntax_valid_rate", "syntax-valid rate"),
        ("char_similarity", "char similarity to baseline"),
    )
    colors = {v: f"C{i}" for i, v in enumerate(sorted(steered["vector"].unique()))}
    for ax, (metric, title) in zip(axes, panels, strict=True):
        for vector, g in steered.groupby("vector", sort=True):
            color = colors[vector]
            g = g.sort_values("coefficient")
            x = g["coefficient"].to_numpy(dtype=float)
            y = g[metric].to_numpy(dtype=float)
            lo, hi = g[f"{metric}_lo"].to_numpy(float), g[f"{metric}_hi"].to_numpy(float)
            # a percentile interval can sit a rounding error off its mean; NaN: no interval
            err = np.nan_to_num(np.clip(np.stack([y - lo, hi - y]), 0.0, None))
            ax.errorbar(x, y, yerr=err, marker="o", capsize=3, color=color, label=str(vector))
            if metric == "flip_rate" and "intended_rate" in g:
                iy = g["intended_rate"].to_numpy(dtype=float)
                if not all(math.isnan(v) for v in iy):
                    ax.plot(
                        x,
                        iy,
                        ls="--",
                        marker="x",
                        color=color,
                        alpha=0.7,
                        label=f"{vector}: intended flip",
                    )
        if metric == "flip_rate" and floor.get("n"):
            ax.axhspan(0, floor["flip_rate_hi"], color="grey", alpha=0.2, label="noise floor")
        ax.set_xscale("log")
        ax.set_xlabel("coefficient")
        ax.set_ylim(-0.02, 1.02)
        ax.set_title(title)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
    return path


def markdown(
    cfg: CodeConfig,
    baseline: pd.DataFrame,
    summary: pd.DataFrame,
    selection: dict[str, Any],
    timing: dict[str, float],
) -> str:
    n_pass = int((baseline["status"] == "pass").sum())
    floor = selection["noise_floor"]
    lines = [
        "# Steering coefficient selection\n",
        f"Model `{cfg.model.name}`, tasks `{cfg.tasks}` ({cfg.prompt_mode} prompts), "
        f"coefficients {', '.join(f'{c:g}' for c in cfg.coefficients)} ({cfg.scale} scale, "
        f"positions `{cfg.positions}`), {cfg.n_per_coefficient} problems per coefficient "
        f"(stratified by cyclomatic complexity), greedy, up to {cfg.max_new_tokens} new tokens.\n",
        f"Baseline: **{n_pass} of {len(baseline)} pass** "
        f"({100 * n_pass / max(1, len(baseline)):.0f}%); statuses "
        + ", ".join(f"{k} {v}" for k, v in baseline["status"].value_counts().items())
        + ".\n",
    ]
    if floor.get("n"):
        lines.append(
            f"Noise floor (the same problems unsteered, another batch layout): "
            f"{floor['flips']} flips of {floor['n']} "
            f"({100 * floor['flip_rate']:.0f}% [{100 * floor['flip_rate_lo']:.0f}, "
            f"{100 * floor['flip_rate_hi']:.0f}]).\n"
        )
    lines.append("\n## Suggested coefficients\n")
    lines.append(f"Rule: {selection['rule']}.\n")
    for vector, e in selection["vectors"].items():
        chosen = "none" if e["selected"] is None else f"{e['selected']:g}"
        how = "overridden" if e["overridden"] else e["reason"]
        lines.append(f"- **{vector}** ({e['intent']}): {chosen} ({how})")
    lines.append("\n## Flips and drift per coefficient (95% CIs)\n")
    lines.append(table(summary))
    lines.append(
        "\nRates are Wilson intervals over the valid rows (a sandbox error on either side "
        "leaves a row out); 'intended' is the intended flip among the problems that could flip "
        "that way. Similarities are difflib ratios between the steered and the baseline code.\n"
    )
    lines.append(
        f"\nTime: generation {timing['gen_s']:.0f} s, sandboxed execution "
        f"{timing['exec_s']:.0f} s (grid rows).\n"
        "\nFigures: `coefficient_analysis.png`; examples: `examples/`.\n"
    )
    return "\n".join(lines)


def write_report(run: Path, cfg: CodeConfig) -> dict[str, Path]:
    baseline = load_baseline(run)
    grid = grid_results(run)
    cmp = compare(grid, baseline)
    summary = summarize(cmp, intents(cfg))
    floor = noise_floor(summary)
    selection = selection_record(summary, cfg.selection, floor)
    timing = {"gen_s": float(grid["gen_s"].sum()), "exec_s": float(grid["exec_s"].sum())}
    paths = {"results": run / "results.parquet", "summary": run / "summary.json"}
    with atomic_path(paths["results"]) as tmp:
        cmp.to_parquet(tmp, index=False)
    base_pass = int((baseline["status"] == "pass").sum())
    summary_doc = {
        "baseline": {
            "n": len(baseline),
            "pass": base_pass,
            "pass_rate": base_pass / max(1, len(baseline)),
            "statuses": {str(k): int(v) for k, v in baseline["status"].value_counts().items()},
        },
        "noise_floor": floor,
        "timing_s": timing,
        "per_coefficient": json.loads(summary.to_json(orient="records")),
        "selection": selection["vectors"],
    }
    atomic_write_text(paths["summary"], json.dumps(summary_doc, indent=2) + "\n")
    paths["selected"] = run / "selected_coefficients.json"
    atomic_write_text(paths["selected"], json.dumps(selection, indent=2) + "\n")
    paths["plot"] = plot(summary, floor, run / "coefficient_analysis.png")
    examples(cmp, run / "examples")
    paths["report"] = run / "report.md"
    atomic_write_text(paths["report"], markdown(cfg, baseline, summary, selection, timing))
    return paths
