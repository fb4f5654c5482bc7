"""The outputs of ``steerlab classify``: ``results.parquet`` (every logit-mode row, scored),
``generations.parquet``, ``results.json``, ``report.md`` (the sign check first, then tables per
group, examples before/after), ``accuracy_vs_strength.png`` and ``cross_group.png``."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from steerlab.io import atomic_path, atomic_write_text
from steerlab.metrics.stats import bootstrap_ci, wilson_ci
from steerlab.pipelines.classify.config import BASELINE, POOLED, ClassifyConfig
from steerlab.pipelines.classify.run import _task, generation_results, grid_results


def scored(df: pd.DataFrame, positive: str) -> pd.DataFrame:
    """Logit-mode predictions: the positive label when its log-prob beats the other's."""
    out = df.copy()
    is_pos = out["label"] == positive
    out["predicted_positive"] = out["margin"] > 0
    out["correct"] = out["predicted_positive"] == is_pos
    out["margin_true"] = np.where(is_pos, out["margin"], -out["margin"])
    return out


def auroc(scores: np.ndarray, positive: np.ndarray) -> float:
    """Mann-Whitney AUROC of ``scores`` for ``positive`` (ties count one half)."""
    pos, neg = scores[positive], scores[~positive]
    if pos.size == 0 or neg.size == 0:
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


def cross_table(df: pd.DataFrame, strength: float, layer: int) -> pd.DataFrame:
    """Rows: the vector's group; columns: the evaluated group; value: the change in mean
    P(positive) against the baseline on that group's examples."""
    base = df[df["vector"] == BASELINE].groupby("group")["p_positive"].mean()
    sel = df[
        (df["strength"] == strength)
        & (df["layer"] == layer)
        & (df["vector"] != BASELINE)
        & (df["vector"] != POOLED)
    ]
    t = sel.groupby(["vector", "group"])["p_positive"].mean().unstack("group")
    return t - base


def _fmt(r: pd.Series) -> str:
    if isinstance(r["accuracy"], float) and math.isnan(r["accuracy"]):
        return "–"
    return (
        f"{100 * r['accuracy']:.0f}% [{100 * r['accuracy_lo']:.0f}, {100 * r['accuracy_hi']:.0f}]"
    )


def _signcheck_md(checks: list[dict[str, Any]], flipped_run: bool) -> list[str]:
    lines = ["## Sign check (held-out split, pooled vector)\n"]
    for c in checks:
        mark = {"ok": "OK", "flipped": "**FLIPPED**", "inconclusive": "inconclusive"}[c["verdict"]]
        lines.append(
            f"- layer {c['layer']}: {mark}. {c['message']} "
            f"(P(target) baseline {c['baseline']:.3f}, +α {c['plus']:.3f}, −α {c['minus']:.3f})"
        )
    if any(c["verdict"] == "flipped" for c in checks) and not flipped_run:
        lines.insert(
            0,
            "> **The vector's sign is backwards**: positive strength moves the target the wrong "
            "way (−α column above shows the flipped vector's effect). Rerun with `--flip-sign`; "
            "the accuracies below are for the sign as built.\n",
        )
    if flipped_run:
        lines.append("\nThis run applies −vector (`--flip-sign`).")
    return lines


def markdown(
    cfg: ClassifyConfig,
    summary: pd.DataFrame,
    checks: list[dict[str, Any]],
    best: dict[str, dict[str, Any]],
    gen: pd.DataFrame | None,
) -> str:
    lines = [
        "# Classification steering\n",
        f"Model `{cfg.model.name}`, task `{cfg.task}`, vectors mean(target) − mean(other) at "
        f"`{cfg.hook_point}`, added at `{cfg.positions}` with strengths "
        f"{', '.join(f'{s:g}' for s in cfg.strengths)} ({cfg.scale} scale). Accuracy in logit "
        "mode (the answer whose first tokens are likelier), 95% Wilson intervals.\n",
        *_signcheck_md(checks, cfg.flip_sign),
        "\n## Baseline vs best own-group setting\n",
        "Best = highest held-out accuracy (chosen on the held-out split: optimistic).\n",
        "| group | baseline | best steered | layer | strength | margin base → steered | "
        "AUROC base → steered |",
        "|---|---|---|---|---|---|---|",
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
        lines.append(
            f"| {group} | {_fmt(base)} | {_fmt(st)} | {int(b['layer'])} | {b['strength']:g} | "
            f"{base['margin']:+.2f} → {st['margin']:+.2f} | {base['auroc']:.2f} → "
            f"{st['auroc']:.2f} |"
        )
    lines += ["\n## Every setting (pooled over groups)\n"]
    lines += [
        "| vector | layer | strength | accuracy | recall pos | recall neg | margin | AUROC |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for _, r in s[s["group"] == "all"].iterrows():
        lines.append(
            f"| {r['vector']} | {r['layer']} | {r['strength']:g} | {_fmt(r)} | "
            f"{r['recall_positive']:.2f} | {r['recall_negative']:.2f} | {r['margin']:+.2f} | "
            f"{r['auroc']:.2f} |"
        )
    if gen is not None:
        lines += ["\n## Generation mode (greedy; parsed answers; text kept)\n"]
        lines += ["| group | setting | accuracy | uncertain |", "|---|---|---|---|"]
        for (group, vector), g in gen.groupby(["group", "vector"], sort=True):
            acc = (g["parsed"] == g["label"]).mean()
            unc = (g["parsed"] == _task(cfg.task).config.uncertain_label).mean()
            setting = "baseline" if vector == BASELINE else "best own"
            lines.append(f"| {group} | {setting} | {100 * acc:.0f}% | {100 * unc:.0f}% |")
        lines += ["\n### Examples before/after\n"]
        lines += _examples(gen)
    lines.append("\nFigures: `accuracy_vs_strength.png`, `cross_group.png`.\n")
    return "\n".join(lines)


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


def plots(summary: pd.DataFrame, cross: pd.DataFrame | None, out: Path) -> None:
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
        axes, ("accuracy (logit mode)", "mean margin log P(pos) − log P(neg)"), strict=True
    ):
        ax.set_xlabel(f"strength (own-group vector, layer {layer})")
        ax.set_title(title)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7, ncol=2)
    with atomic_path(out / "accuracy_vs_strength.png") as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(7.5, 6), constrained_layout=True)
    if cross is not None and not cross.empty:
        v = np.nanmax(np.abs(cross.to_numpy(float))) or 1.0
        im = ax.imshow(cross.to_numpy(float), cmap="RdBu_r", vmin=-v, vmax=v)
        ax.set_xticks(range(len(cross.columns)), cross.columns, rotation=45, ha="right")
        ax.set_yticks(range(len(cross.index)), cross.index)
        for (r, c), val in np.ndenumerate(cross.to_numpy(float)):
            ax.text(c, r, f"{val:+.2f}", ha="center", va="center", fontsize=7)
        fig.colorbar(im, ax=ax, label="Δ mean P(positive) vs baseline")
    ax.set_xlabel("evaluated on group")
    ax.set_ylabel("vector built from group")
    ax.set_title("cross-group effect")
    with atomic_path(out / "cross_group.png") as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)


def write_report(run: Path, cfg: ClassifyConfig) -> dict[str, Path]:
    task = _task(cfg.task)
    positive = task.config.positive
    df = scored(grid_results(run), positive)
    summary = summarize(df, positive)
    best = best_settings(df)
    checks = json.loads((run / "signcheck.json").read_text())
    layers = sorted(set(df.loc[df["vector"] != BASELINE, "layer"]))
    cross = cross_table(df, cfg.check_strength(), layers[0]) if cfg.cross_group and layers else None
    gen = generation_results(run)
    paths = {"results": run / "results.parquet", "json": run / "results.json"}
    with atomic_path(paths["results"]) as tmp:
        df.to_parquet(tmp, index=False)
    if gen is not None:
        with atomic_path(run / "generations.parquet") as tmp:
            gen.to_parquet(tmp, index=False)
    doc = {
        "sign_check": checks,
        "best": best,
        "summary": json.loads(summary.to_json(orient="records")),
        "cross_group": None if cross is None else json.loads(cross.to_json()),
    }
    atomic_write_text(paths["json"], json.dumps(doc, indent=2) + "\n")
    plots(summary, cross, run)
    paths["report"] = run / "report.md"
    atomic_write_text(paths["report"], markdown(cfg, summary, checks, best, gen))
    return paths
