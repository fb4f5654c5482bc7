"""The outputs of ``steerlab classify``: ``results.parquet`` (every grid row, scored),
``generations.parquet`` (logit mode's follow-up generations), ``results.json``, ``report.md``
(backwards vectors first, the sign check, then tables per group, the cross-group tables and
examples before/after), ``accuracy_vs_strength.png``, ``cross_group.png`` and
``cross_group_best.png``.

Rows are scored in the grid's mode. Logit mode: the prediction is the answer whose first tokens
are likelier (margin > 0), ``p_positive`` = P(positive | {positive, negative}), and margin and
AUROC are defined; no answer is uncertain. Generate mode: the prediction is the parsed answer
(an uncertain answer is wrong), ``p_positive`` is 1 where the answer states the positive label,
and margin, AUROC and ``margin_true`` are NaN: they come from the logits at the last prompt
token, which steering at generated positions cannot change.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from steerlab._util.io import atomic_path, atomic_write_text
from steerlab.metrics.stats import bootstrap_ci, wilson_ci
from steerlab.pipelines.classify import checks as sign_checks
from steerlab.pipelines.classify import cross
from steerlab.pipelines.classify.config import BASELINE, POOLED, ClassifyConfig
from steerlab.pipelines.classify.results import generation_results, grid_results, task_of


def scored(df: pd.DataFrame, positive: str, uncertain: str | None = None) -> pd.DataFrame:
    """Predictions per row. Logit mode (a ``margin`` column): the positive label when its
    log-prob beats the other's. Generate mode (a ``parsed`` column and no ``margin``): the
    parsed answer; ``uncertain`` (the task's uncertain label) marks answers stating none."""
    out = df.copy()
    is_pos = out["label"] == positive
    if "margin" in out.columns:
        out["predicted_positive"] = out["margin"] > 0
        out["correct"] = out["predicted_positive"] == is_pos
        out["margin_true"] = np.where(is_pos, out["margin"], -out["margin"])
        return out
    out["predicted_positive"] = out["parsed"] == positive
    out["correct"] = out["parsed"] == out["label"]
    out["uncertain"] = out["parsed"] == uncertain
    out["p_positive"] = out["predicted_positive"].astype(float)
    for col in ("margin", "margin_true"):
        out[col] = math.nan
    return out


def auroc(scores: np.ndarray, positive: np.ndarray) -> float:
    """Mann-Whitney AUROC of ``scores`` for ``positive`` (ties count one half); NaN when a
    class is missing or a score is NaN (generate mode has no scores)."""
    pos, neg = scores[positive], scores[~positive]
    if pos.size == 0 or neg.size == 0 or np.isnan(scores).any():
        return math.nan
    diff = pos[:, None] - neg[None, :]
    return float(((diff > 0) + 0.5 * (diff == 0)).mean())


def metrics(g: pd.DataFrame, positive: str) -> dict[str, Any]:
    is_pos = (g["label"] == positive).to_numpy()
    acc, lo, hi = wilson_ci(int(g["correct"].sum()), len(g))
    m, mlo, mhi = bootstrap_ci(g["margin"].to_numpy(float))
    return {
        "n": len(g),
        "accuracy": acc,
        "accuracy_lo": lo,
        "accuracy_hi": hi,
        "recall_positive": float(g.loc[is_pos, "correct"].mean()) if is_pos.any() else math.nan,
        "recall_negative": float(g.loc[~is_pos, "correct"].mean()) if (~is_pos).any() else math.nan,
        "margin": m,
        "margin_lo": mlo,
        "margin_hi": mhi,
        "p_positive": float(g["p_positive"].mean()),
        "auroc": auroc(g["margin"].to_numpy(float), is_pos),
        "uncertain": float(g["uncertain"].mean()) if "uncertain" in g.columns else math.nan,
    }


def summarize(df: pd.DataFrame, positive: str) -> pd.DataFrame:
    """Per (group, vector, layer, strength), own and pooled vectors and the baseline; a
    ``group`` of ``all`` pools the groups."""
    own = df[(df["vector"] == BASELINE) | (df["vector"] == POOLED) | (df["vector"] == df["group"])]
    rows = []
    keys = ["vector", "layer", "strength"]
    for (group, *key), g in own.groupby(["group", *keys], sort=True):
        rows.append({"group": group, **dict(zip(keys, key, strict=True)), **metrics(g, positive)})
    pooled = own.assign(vector=np.where(own["vector"] == own["group"], "own", own["vector"]))
    for key, g in pooled.groupby(keys, sort=True):
        rows.append({"group": "all", **dict(zip(keys, key, strict=True)), **metrics(g, positive)})
    return pd.DataFrame(rows)


def best_settings(df: pd.DataFrame) -> dict[str, dict[str, Any]]:
    """Per group, its own vector's setting with the highest accuracy (then mean margin toward
    the true label, then the smaller strength). Chosen on the held-out split itself."""
    own = df[df["vector"] == df["group"]]
    out: dict[str, dict[str, Any]] = {}
    for group, g in own.groupby("group", sort=True):
        agg = g.groupby(["layer", "strength"]).agg(
            accuracy=("correct", "mean"), margin_true=("margin_true", "mean")
        )
        agg = agg.reset_index().sort_values(
            ["accuracy", "margin_true", "strength"], ascending=[False, False, True]
        )
        out[str(group)] = agg.iloc[0].to_dict()
    return out


def _fmt(r: pd.Series) -> str:
    if isinstance(r["accuracy"], float) and math.isnan(r["accuracy"]):
        return "–"
    return (
        f"{100 * r['accuracy']:.0f}% [{100 * r['accuracy_lo']:.0f}, {100 * r['accuracy_hi']:.0f}]"
    )


def _num(x: float, fmt: str) -> str:
    """``x`` formatted, or "–" where it is undefined (NaN: margin and AUROC in generate mode)."""
    return "–" if isinstance(x, float) and math.isnan(x) else format(x, fmt)


def _mode_text(cfg: ClassifyConfig) -> str:
    if cfg.grid_mode() == "logit":
        return (
            "Logit mode: each row is one forward pass; the prediction is the answer whose first "
            "tokens are likelier at the last prompt token (no answer is uncertain). 95% Wilson "
            "intervals.\n"
        )
    why = (
        f" Steering at `{cfg.positions}` selects only generated tokens: it cannot change the "
        "next-token logits at the last prompt token (the answer's first token is chosen there, "
        "before any token is generated), so logit mode would report the baseline for every "
        "setting."
        if cfg.mode == "auto"
        else ""
    )
    return (
        f"Generate mode: every row generated greedily (up to {cfg.max_new_tokens} new tokens, "
        "text kept in `results.parquet`) and parsed; accuracy counts an uncertain answer as "
        "wrong, and P(positive) is the rate of answers stating the positive label. Margin and "
        f"AUROC are not defined in this mode (NaN, shown as –).{why} 95% Wilson intervals.\n"
    )


def markdown(
    cfg: ClassifyConfig,
    summary: pd.DataFrame,
    checks: list[dict[str, Any]],
    best: dict[str, dict[str, Any]],
    gen: pd.DataFrame | None,
    grid: pd.DataFrame,
    cross_t: pd.DataFrame | None,
) -> str:
    banner, check_lines = sign_checks.markdown(cfg, checks)
    gen_mode = cfg.grid_mode() == "generate"
    lines = [
        "# Classification steering\n",
        *banner,
        f"Model `{cfg.model.name}`, task `{cfg.task}`, vectors mean(target) − mean(other) at "
        f"`{cfg.hook_point}`, added at `{cfg.positions}` with strengths "
        f"{', '.join(f'{s:g}' for s in cfg.strengths)} ({cfg.scale} scale).",
        _mode_text(cfg),
        *check_lines,
        "\n## Baseline vs best own-group setting\n",
        "Best = highest held-out accuracy (chosen on the held-out split: optimistic).\n",
        "| group | baseline | best steered | layer | strength | margin base → steered | "
        "AUROC base → steered |" + (" uncertain base → steered |" if gen_mode else ""),
        "|---|---|---|---|---|---|---|" + ("---|" if gen_mode else ""),
    ]
    s = summary
    for group in sorted(set(s["group"]) - {"all"}):
        base = s[(s["group"] == group) & (s["vector"] == BASELINE)].iloc[0]
        b = best.get(group)
        if b is None:
            continue
        st = s[
            (s["group"] == group)
            & (s["vector"] == group)
            & (s["layer"] == b["layer"])
            & (s["strength"] == b["strength"])
        ].iloc[0]
        unc = f" {_pct(base['uncertain'])} → {_pct(st['uncertain'])} |" if gen_mode else ""
        lines.append(
            f"| {group} | {_fmt(base)} | {_fmt(st)} | {int(b['layer'])} | {b['strength']:g} | "
            f"{_num(base['margin'], '+.2f')} → {_num(st['margin'], '+.2f')} | "
            f"{_num(base['auroc'], '.2f')} → {_num(st['auroc'], '.2f')} |{unc}"
        )
    lines += ["\n## Every setting (pooled over groups)\n"]
    lines += [
        "| vector | layer | strength | accuracy | recall pos | recall neg | margin | AUROC |"
        + (" uncertain |" if gen_mode else ""),
        "|---|---|---|---|---|---|---|---|" + ("---|" if gen_mode else ""),
    ]
    for _, r in s[s["group"] == "all"].iterrows():
        lines.append(
            f"| {r['vector']} | {r['layer']} | {r['strength']:g} | {_fmt(r)} | "
            f"{r['recall_positive']:.2f} | {r['recall_negative']:.2f} | "
            f"{_num(r['margin'], '+.2f')} | {_num(r['auroc'], '.2f')} |"
            + (f" {_pct(r['uncertain'])} |" if gen_mode else "")
        )
    if cfg.cross_group and cross_t is not None:
        lines += cross.markdown(cross_t, task_of(cfg.task).groups(), _p_name(cfg))
    if gen_mode:
        lines += ["\n## Examples before/after (baseline vs best own-group setting)\n"]
        lines += _examples(gen_mode_pairs(grid, best))
    elif gen is not None:
        lines += ["\n## Generation mode (greedy; parsed answers; text kept)\n"]
        lines += ["| group | setting | accuracy | uncertain |", "|---|---|---|---|"]
        for (group, vector), g in gen.groupby(["group", "vector"], sort=True):
            acc = (g["parsed"] == g["label"]).mean()
            unc = (g["parsed"] == task_of(cfg.task).config.uncertain_label).mean()
            setting = "baseline" if vector == BASELINE else "best own"
            lines.append(f"| {group} | {setting} | {100 * acc:.0f}% | {100 * unc:.0f}% |")
        lines += ["\n### Examples before/after\n"]
        lines += _examples(gen)
    figures = "`accuracy_vs_strength.png`"
    if cfg.cross_group:
        figures += ", `cross_group.png` (per strength), `cross_group_best.png` (best per cell)"
    lines.append(f"\nFigures: {figures}.\n")
    return "\n".join(lines)


def _pct(x: float) -> str:
    return _num(100 * x, ".0f") + ("%" if not math.isnan(x) else "")


def _p_name(cfg: ClassifyConfig) -> str:
    positive = task_of(cfg.task).config.positive
    if cfg.grid_mode() == "generate":
        return f"rate of answers stating {positive!r}"
    return f"P({positive})"


def gen_mode_pairs(grid: pd.DataFrame, best: dict[str, dict[str, Any]]) -> pd.DataFrame:
    """Generate mode: the grid's baseline rows and, per group, its best own-vector setting's
    rows (the frame :func:`_examples` reads)."""
    keep = grid["vector"] == BASELINE
    for group, b in best.items():
        keep |= (
            (grid["vector"] == group)
            & (grid["group"] == group)
            & (grid["layer"] == b["layer"])
            & (grid["strength"] == b["strength"])
        )
    return grid[keep]


def _examples(gen: pd.DataFrame, n: int = 4) -> list[str]:
    base = gen[gen["vector"] == BASELINE].set_index("example_id")
    st = gen[gen["vector"] != BASELINE]
    changed = [r for _, r in st.iterrows() if r["parsed"] != base.loc[r["example_id"], "parsed"]]
    out = []
    for r in changed[:n]:
        b = base.loc[r["example_id"]]
        out.append(
            f"- `{r['example_id']}` ({r['group']}, label {r['label']}): baseline **{b['parsed']}** "
            f"“{_short(b['answer'])}” → steered **{r['parsed']}** “{_short(r['answer'])}”"
        )
    return out or ["(no parsed answer changed)"]


def _short(text: str, n: int = 160) -> str:
    t = " ".join(str(text).split())
    return t if len(t) <= n else t[: n - 1] + "…"


def plots(summary: pd.DataFrame, out: Path, acc_title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    own = summary[(summary["group"] != "all") & (summary["vector"] == summary["group"])]
    base = summary[(summary["group"] != "all") & (summary["vector"] == BASELINE)]
    layer = own["layer"].min() if not own.empty else 0
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.5), constrained_layout=True)
    for i, (group, g) in enumerate(own[own["layer"] == layer].groupby("group", sort=True)):
        g = g.sort_values("strength")
        b = base[base["group"] == group].iloc[0]
        x = [0.0, *g["strength"].tolist()]
        for ax, col in zip(axes, ("accuracy", "margin"), strict=True):
            ax.plot(x, [b[col], *g[col].tolist()], marker="o", color=f"C{i % 10}", label=group)
    for ax, title in zip(
        axes, (acc_title, "mean margin log P(pos) − log P(neg) (logit mode only)"), strict=True
    ):
        ax.set_xlabel(f"strength (own-group vector, layer {layer})")
        ax.set_title(title)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7, ncol=2)
    with atomic_path(out / "accuracy_vs_strength.png") as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)


def write_report(run: Path, cfg: ClassifyConfig) -> dict[str, Path]:
    task = task_of(cfg.task)
    c = task.config
    df = scored(grid_results(run), c.positive, c.uncertain_label)
    summary = summarize(df, c.positive)
    best = best_settings(df)
    checks = json.loads((run / "signcheck.json").read_text())
    cross_t = cross.cross_frame(df) if cfg.cross_group else None
    gen = generation_results(run)
    paths = {"results": run / "results.parquet", "json": run / "results.json"}
    with atomic_path(paths["results"]) as tmp:
        df.to_parquet(tmp, index=False)
    if gen is not None:
        with atomic_path(run / "generations.parquet") as tmp:
            gen.to_parquet(tmp, index=False)
    advice = sign_checks.advise(cfg, checks)
    doc = {
        "mode": cfg.grid_mode(),
        "sign_check": checks,
        "sign_check_advice": {
            "backwards": list(advice.backwards),
            "mixed": list(advice.mixed),
            "flips": list(advice.flips),
            "command": advice.command,
        },
        "best": best,
        "summary": json.loads(summary.to_json(orient="records")),
        "cross_group": None if cross_t is None else json.loads(cross_t.to_json(orient="records")),
    }
    atomic_write_text(paths["json"], json.dumps(doc, indent=2) + "\n")
    mode = cfg.grid_mode()
    plots(summary, run, f"accuracy ({mode} mode)")
    if cross_t is not None:
        cross.plots(cross_t, task.groups(), _p_name(cfg), run)
    paths["report"] = run / "report.md"
    atomic_write_text(paths["report"], markdown(cfg, summary, checks, best, gen, df, cross_t))
    return paths
