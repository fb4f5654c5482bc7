"""The outputs of ``eval-questions``: ``results.parquet`` (one row per sample, judge scores
joined), ``summary.csv`` (per question x steering config x metric: n, mean, 95% bootstrap CI, and
the shift from the unsteered baseline with its CI), ``report.md`` (a per-question table steered
vs unsteered) and ``figures/shift.png`` (the metric shift per steering config per question)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pandas as pd

from steerlab._util.io import atomic_path, atomic_write_text
from steerlab.metrics.stats import bootstrap_ci, bootstrap_diff_ci
from steerlab.pipelines.questions.config import EvalConfig
from steerlab.pipelines.questions.results import answers

BASELINE = "baseline"
RULE_METRICS = ("refusal_score", "helpfulness_score", "n_tokens", "mean_entropy")
N_BOOT = 1000


def assemble(run: Path) -> pd.DataFrame:
    df = answers(run)
    judged = run / "parts" / "judge" / "judge.parquet"
    if judged.is_file():
        key = ["question_id", "paraphrase_index", "sample", "config"]
        df = df.merge(pd.read_parquet(judged), on=key, how="left", validate="one_to_one")
    df.insert(0, "run_id", run.name)
    return df.sort_values(["question_id", "config", "paraphrase_index", "sample"]).reset_index(
        drop=True
    )


def metrics_of(df: pd.DataFrame) -> list[str]:
    judge = [c for c in df.columns if c.startswith("judge_") and not c.endswith("_kind")]
    return [*RULE_METRICS, *judge]


def summarize(df: pd.DataFrame) -> pd.DataFrame:
    rows: list[dict[str, Any]] = []
    for qid, q in df.groupby("question_id", sort=True):
        base = q[q.config == BASELINE]
        for config, g in q.groupby("config", sort=False):
            for metric in metrics_of(df):
                vals = pd.to_numeric(g[metric], errors="coerce").dropna().to_numpy(float)
                mean, lo, hi = bootstrap_ci(vals, N_BOOT)
                row = {
                    "question_id": qid,
                    "config": config,
                    "metric": metric,
                    "n": int(vals.size),
                    "mean": mean,
                    "ci_lo": lo,
                    "ci_hi": hi,
                }
                if config != BASELINE:
                    b = pd.to_numeric(base[metric], errors="coerce").dropna().to_numpy(float)
                    d, dlo, dhi = bootstrap_diff_ci(vals, b, N_BOOT)
                    row.update(shift=d, shift_lo=dlo, shift_hi=dhi)
                rows.append(row)
    out = pd.DataFrame(rows)
    order = {BASELINE: 0}
    out["_o"] = out.config.map(lambda c: order.get(c, 1))
    return out.sort_values(["question_id", "_o", "config", "metric"]).drop(columns="_o")


def _fmt(mean: float, lo: float, hi: float) -> str:
    if math.isnan(mean):
        return "–"
    return f"{mean:.3g} [{lo:.3g}, {hi:.3g}]"


def markdown(summary: pd.DataFrame, cfg: EvalConfig, resolved: dict[str, Any]) -> str:
    metrics = list(dict.fromkeys(summary.metric))
    lines = [
        "# Question-set evaluation",
        "",
        f"Model `{cfg.model.name}` ({cfg.model.backend}); questions `{cfg.questions.path}`; "
        f"temperature {cfg.generation.temperature}, up to {cfg.generation.max_new_tokens} new "
        "tokens. Cells: mean [95% bootstrap CI]; steered rows also give the shift from the "
        "unsteered baseline (same questions, paraphrases and sampling seeds).",
        "",
    ]
    for name, info in resolved.items():
        vecs = "; ".join(
            f"{v.get('name')}: layer {v.get('layer')}, coefficient {v.get('coefficient')} "
            f"({v.get('meaning', '')}"
            + (f"; adds a norm of {v['applied_norm']:.3g}" if v.get("applied_norm") else "")
            + ")"
            for v in info.get("vectors", [])
        )
        lines.append(f"- steering `{name}` ({info.get('file')}): {vecs}")
    lines.append("")
    header = "| question | config | " + " | ".join(metrics) + " |"
    lines += [header, "|" + "---|" * (len(metrics) + 2)]
    for (qid, config), g in summary.groupby(["question_id", "config"], sort=False):
        by = g.set_index("metric")
        cells = []
        for m in metrics:
            r = by.loc[m]
            cell = _fmt(r["mean"], r["ci_lo"], r["ci_hi"])
            if config != BASELINE and not math.isnan(r.get("shift", math.nan)):
                cell += f"<br>shift {r['shift']:+.3g} [{r['shift_lo']:+.3g}, {r['shift_hi']:+.3g}]"
            cells.append(cell)
        lines.append(f"| {qid} | {config} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot_shift(summary: pd.DataFrame, path: Path) -> Path:
    """One panel per metric: each question's shift from baseline per steering config, with CI."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    if "shift" not in summary.columns:  # no steering configs: only the baseline
        summary = summary.assign(shift=float("nan"), shift_lo=float("nan"), shift_hi=float("nan"))
    steered = summary[summary.config != BASELINE].dropna(subset=["shift"])
    metrics = list(dict.fromkeys(steered.metric)) or ["refusal_score"]
    questions = sorted(summary.question_id.unique())
    configs = list(dict.fromkeys(steered.config))
    fig = Figure(figsize=(4 * len(metrics), 0.35 * len(questions) + 1.5), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(metrics), squeeze=False)[0]
    height = 0.8 / max(1, len(configs))
    for ax, metric in zip(axes, metrics, strict=True):
        sub = steered[steered.metric == metric]
        for k, config in enumerate(configs):
            c = sub[sub.config == config].set_index("question_id").reindex(questions)
            ys = [i + k * height for i in range(len(questions))]
            err = [(c["shift"] - c.shift_lo).fillna(0), (c.shift_hi - c["shift"]).fillna(0)]
            ax.barh(ys, c["shift"].fillna(0), height, xerr=err, label=config)
        ax.axvline(0, color="black", lw=0.8)
        ax.set_yticks([i + 0.4 - height / 2 for i in range(len(questions))], questions)
        ax.set_title(f"shift in {metric}")
        ax.invert_yaxis()
    if not configs:
        axes[0].set_title("no steering configs: nothing to compare with the baseline")
    else:
        axes[-1].legend(fontsize=8)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    return path


def write_report(run: Path, cfg: EvalConfig) -> dict[str, Path]:
    df = assemble(run)
    with atomic_path(run / "results.parquet") as tmp:
        df.to_parquet(tmp, index=False)
    summary = summarize(df)
    with atomic_path(run / "summary.csv") as tmp:
        summary.to_csv(tmp, index=False)
    resolved_path = run / "steering_resolved.json"
    resolved = json.loads(resolved_path.read_text()) if resolved_path.is_file() else {}
    atomic_write_text(run / "report.md", markdown(summary, cfg, resolved))
    plot = plot_shift(summary, run / "figures" / "shift.png")
    return {
        "results": run / "results.parquet",
        "summary": run / "summary.csv",
        "report": run / "report.md",
        "plot": plot,
    }
