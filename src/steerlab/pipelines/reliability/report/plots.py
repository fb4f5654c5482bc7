"""Figures of a reliability run, saved atomically as PNG.

Figures are built on :class:`~matplotlib.figure.Figure` with an Agg canvas, never through
``pyplot``, so no global backend state changes and nothing is left open. All functions take the
:func:`~steerlab.pipelines.reliability.report.aggregate.summarize` frame (or the confound check, for
:func:`plot_confounds`) and write one file; :func:`make_figures` writes them all.
"""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.transforms import blended_transform_factory

from steerlab._util.io import atomic_path
from steerlab.pipelines.reliability.report._grid import KEY
from steerlab.pipelines.reliability.report.layers import EFFECTS, checklist_note

MARKERS = {"add": "o", "ablate": "s", "clamp": "^"}
DPI = 120


def _figure(w: float, h: float) -> Figure:
    fig = Figure(figsize=(w, h), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Figure, path: Path) -> Path:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=DPI, bbox_inches="tight")
    return path


def _settings(summary: pd.DataFrame) -> pd.DataFrame:
    return summary.drop_duplicates(KEY).sort_values(KEY)


def _layer_colors(layers: list[int]) -> dict[int, Any]:
    cmap = colormaps["viridis"]
    n = max(1, len(layers) - 1)
    return {layer: cmap(0.85 * i / n) for i, layer in enumerate(sorted(layers))}


def _interventions(summary: pd.DataFrame) -> list[str]:
    return sorted(i for i in summary["intervention"].unique() if i != "none")


def _empty(path: Path, title: str) -> Path:
    fig = _figure(6, 3)
    ax = fig.subplots()
    ax.text(0.5, 0.5, "no steered settings in this run", ha="center", va="center")
    ax.set_axis_off()
    ax.set_title(title)
    return _save(fig, path)


def plot_gap_vs_alpha(summary: pd.DataFrame, path: Path) -> Path:
    """Generalization gap refusal(harm_train) − refusal(harm_test) vs α, per layer, 95% band."""
    title = "Generalization gap vs α"
    settings = _settings(summary)
    interventions = _interventions(summary)
    if not interventions:
        return _empty(path, title)
    layers = sorted(int(x) for x in settings["layer"].unique() if x >= 0)
    colors = _layer_colors(layers)
    fig = _figure(5.2 * len(interventions), 4)
    axes = fig.subplots(1, len(interventions), sharey=True, squeeze=False)
    for ax, intervention in zip(axes[0], interventions, strict=True):
        for layer in layers:
            d = settings[(settings["layer"] == layer) & (settings["intervention"] == intervention)]
            if d.empty:
                continue
            d = d.sort_values("alpha")
            ax.plot(d["alpha"], d["gap"], marker="o", color=colors[layer], label=f"layer {layer}")
            ax.fill_between(d["alpha"], d["gap_lo"], d["gap_hi"], color=colors[layer], alpha=0.2)
        ax.axhline(0, color="grey", lw=0.8, ls="--")
        alphas = sorted(settings[settings["intervention"] == intervention]["alpha"].unique())
        ax.set_xticks(alphas, [f"{a:g}" for a in alphas])
        ax.set_title(f"{intervention}")
        ax.set_xlabel("α (steering coefficient)")
        ax.grid(alpha=0.3)
    axes[0, 0].set_ylabel("refusal(harm_train) − refusal(harm_test)")
    axes[0, -1].legend(title="layer (95% CI band)", fontsize=8)
    fig.suptitle(title + " (positive: steering works better on train prompts)")
    return _save(fig, path)


def _differing_alphas(layers: dict[str, Any] | None, effect: str, intervention: str) -> list[float]:
    """α values at which some layer pair differs on ``effect`` with a CI excluding 0."""
    rows = (layers or {}).get("comparisons") or []
    return sorted(
        {
            float(r["alpha"])
            for r in rows
            if r["effect"] == effect and r["intervention"] == intervention and r["excludes_zero"]
        }
    )


def plot_layers_vs_alpha(summary: pd.DataFrame, layers: dict[str, Any] | None, path: Path) -> Path:
    """Each effect vs α, one line per layer with its 95% band; ▼ where layers differ (paired CI).

    Rows: refusal gain on harm_test, benign cost, train/test gap (pp); columns: interventions.
    ``layers`` is :func:`~steerlab.pipelines.reliability.report.layers.layer_comparison` (no
    markers when ``None``).
    """
    title = "Effects vs α per layer"
    settings = _settings(summary)
    interventions = _interventions(summary)
    if not interventions:
        return _empty(path, title)
    layer_ids = sorted(int(x) for x in settings["layer"].unique() if x >= 0)
    colors = _layer_colors(layer_ids)
    fig = _figure(5.2 * len(interventions), 3.2 * len(EFFECTS))
    axes = fig.subplots(len(EFFECTS), len(interventions), sharex="col", sharey="row", squeeze=False)
    for row, effect in enumerate(EFFECTS):
        for ax, intervention in zip(axes[row], interventions, strict=True):
            for layer in layer_ids:
                d = settings[
                    (settings["layer"] == layer) & (settings["intervention"] == intervention)
                ].sort_values("alpha")
                if d.empty:
                    continue
                c, x = colors[layer], d["alpha"]
                ax.plot(x, 100 * d[effect.name], marker="o", color=c, label=f"layer {layer}")
                lo, hi = 100 * d[f"{effect.name}_lo"], 100 * d[f"{effect.name}_hi"]
                ax.fill_between(x, lo, hi, color=c, alpha=0.15)
            marks = _differing_alphas(layers, effect.name, intervention)
            if marks:
                top = blended_transform_factory(ax.transData, ax.transAxes)
                ax.scatter(
                    marks,
                    [0.97] * len(marks),
                    marker="v",
                    s=60,
                    color="crimson",
                    transform=top,
                    clip_on=False,
                    label="layers differ (paired CI excl. 0)",
                )
            ax.axhline(0, color="grey", lw=0.8, ls="--")
            alphas = sorted(settings[settings["intervention"] == intervention]["alpha"].unique())
            ax.set_xticks(alphas, [f"{a:g}" for a in alphas])
            ax.grid(alpha=0.3)
            if row == 0:
                ax.set_title(intervention)
            if row == len(EFFECTS) - 1:
                ax.set_xlabel("α (steering coefficient)")
        axes[row, 0].set_ylabel(f"{effect.label} (pp)")
    handles: dict[str, Any] = {}
    for ax in axes.ravel():
        for h, label in zip(*ax.get_legend_handles_labels(), strict=True):
            handles.setdefault(label, h)
    fig.legend(list(handles.values()), list(handles), loc="outside lower center", ncol=4)
    note = checklist_note(layers or {})
    head = f"largest supported layer difference: {note}" if note else "no supported difference"
    fig.suptitle(f"{title} (bands: 95% CI vs baseline)\n{head}", fontsize=10)
    return _save(fig, path)


def plot_tradeoff(summary: pd.DataFrame, path: Path) -> Path:
    """harm_test refusal rate vs benign helpfulness drop, per steered setting; Pareto frontier."""
    title = "Refusal on held-out harmful prompts vs benign helpfulness cost"
    # Setting columns repeat on every split row; harm_test rows also carry that split's CI.
    settings = _settings(summary[summary["split"] == "harm_test"])
    steered = settings[settings["steered"].astype(bool)]
    if steered.empty:
        return _empty(path, title)
    layers = sorted(int(x) for x in steered["layer"].unique())
    colors = _layer_colors(layers)
    fig = _figure(7.5, 5.5)
    ax = fig.subplots()
    for _, r in steered.iterrows():
        x, y = r["harm_test_refusal"], r["benign_drop"]
        ax.errorbar(
            x,
            y,
            xerr=[[x - r["refusal_lo"]], [r["refusal_hi"] - x]],
            yerr=[[y - r["benign_drop_lo"]], [r["benign_drop_hi"] - y]],
            fmt=MARKERS.get(str(r["intervention"]), "D"),
            color=colors[int(r["layer"])],
            ms=7,
            elinewidth=0.8,
            alpha=0.9,
        )
        ax.annotate(
            f"L{int(r['layer'])} α={r['alpha']:g}",
            (x, y),
            textcoords="offset points",
            xytext=(5, 4),
            fontsize=7,
        )
    front = steered[steered["pareto"].astype(bool)].sort_values("harm_test_refusal")
    if not front.empty:
        ax.plot(
            front["harm_test_refusal"],
            front["benign_drop"],
            color="crimson",
            lw=1.5,
            ls="-",
            zorder=0,
            label="Pareto frontier",
        )
    base = settings[settings["intervention"] == "none"]
    if not base.empty:
        ax.scatter(
            base["harm_test_refusal"],
            [0.0] * len(base),
            marker="*",
            s=220,
            color="black",
            label="baseline (no steering)",
            zorder=5,
        )
    for layer in layers:
        ax.plot([], [], "o", color=colors[layer], label=f"layer {layer}")
    for intervention in sorted(steered["intervention"].unique()):
        ax.plot(
            [], [], MARKERS.get(intervention, "D"), color="grey", mfc="none", label=intervention
        )
    ax.axhline(0, color="grey", lw=0.8, ls="--")
    ax.set_xlabel("refusal rate on harm_test (higher = more refusal)")
    ax.set_ylabel("benign helpfulness drop vs baseline (lower = better)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    return _save(fig, path)


def plot_heatmap(
    summary: pd.DataFrame, split: str, column: str, label: str, cmap: str, path: Path
) -> Path:
    """Layer × α heatmap of ``column`` on ``split``, one panel per intervention, annotated."""
    title = f"{label} on {split} (layer × α)"
    d = summary[(summary["split"] == split) & (summary["intervention"] != "none")]
    interventions = sorted(d["intervention"].unique())
    if not interventions:
        return _empty(path, title)
    fig = _figure(4.8 * len(interventions) + 1, 3.8)
    axes = fig.subplots(1, len(interventions), squeeze=False)
    image = None
    for ax, intervention in zip(axes[0], interventions, strict=True):
        table = d[d["intervention"] == intervention].pivot_table(
            index="layer", columns="alpha", values=column, aggfunc="mean"
        )
        values = table.to_numpy(dtype=float)
        image = ax.imshow(values, vmin=0, vmax=1, cmap=cmap, aspect="auto")
        ax.set_xticks(range(table.shape[1]), [f"{a:g}" for a in table.columns])
        ax.set_yticks(range(table.shape[0]), [str(int(x)) for x in table.index])
        for (i, j), v in np.ndenumerate(values):
            if not np.isnan(v):
                ax.text(
                    j,
                    i,
                    f"{v:.2f}",
                    ha="center",
                    va="center",
                    fontsize=9,
                    color="white" if v > 0.6 else "black",
                )
        ax.set_title(intervention)
        ax.set_xlabel("α")
        ax.set_ylabel("layer")
    if image is not None:
        fig.colorbar(image, ax=axes[0].tolist(), label=label, shrink=0.9)
    fig.suptitle(title)
    return _save(fig, path)


def _bin_panel(ax: Any, entry: dict[str, Any] | None, var: str, name: str) -> None:
    if entry is None or entry.get(var) is None:
        ax.text(0.5, 0.5, f"no {name} data", ha="center", va="center")
        ax.set_axis_off()
        return
    e = entry[var]
    bins = e["bins"]
    x = np.arange(len(bins))
    rb = [b["rate_baseline"] for b in bins]
    rs = [b["rate_steered"] for b in bins]
    ax.bar(x - 0.2, rb, 0.4, color="grey", label="baseline")
    ax.bar(x + 0.2, rs, 0.4, color="crimson", label=entry["label"])
    fmt = "{:.0f}" if var == "n_tokens" else "{:.2f}"
    ticks = [
        f"{fmt.format(b['lo'])}–{fmt.format(b['hi'])}\nn={b['n_baseline']}/{b['n_steered']}"
        for b in bins
    ]
    ax.set_xticks(x, ticks, fontsize=8)
    ax.set_ylim(0, 1.25)
    ax.set_xlabel(f"{name} bin (n = baseline/steered completions)")
    ax.set_ylabel("refusal rate on harm_test")
    ax.set_title(f"within {name} bins: Δ={e['diff']:+.2f} [{e['lo']:+.2f}, {e['hi']:+.2f}]")
    ax.legend(fontsize=8, loc="upper center", ncol=2)


def plot_confounds(confound: dict[str, Any], path: Path) -> Path:
    """Raw vs length/entropy-stratified refusal effects, plus per-bin rates for the best setting."""
    title = "Is the refusal effect only shorter or lower-entropy outputs?"
    entries = confound.get("settings") or []
    if not entries:
        return _empty(path, title)
    best = confound.get("best")
    best_entry = next(
        (e for e in entries if best and all(e[k] == best[k] for k in KEY)), entries[-1]
    )
    fig = _figure(17, max(4.5, 0.32 * len(entries) + 1.5))
    axes = fig.subplots(1, 3)
    _bin_panel(axes[0], best_entry, "n_tokens", "length (tokens)")
    _bin_panel(axes[1], best_entry, "mean_entropy", "mean entropy")
    ax = axes[2]
    y = np.arange(len(entries))
    for offset, key, color, name in (
        (-0.25, "raw", "black", "raw"),
        (0.0, "n_tokens", "tab:blue", "within length bins"),
        (0.25, "mean_entropy", "tab:orange", "within entropy bins"),
    ):
        pts = [(i, e[key]) for i, e in enumerate(entries) if e.get(key) is not None]
        if not pts:
            continue
        idx = np.array([i for i, _ in pts]) + offset
        d = np.array([p["diff"] for _, p in pts])
        err = np.array(
            [[p["diff"] - p["lo"] for _, p in pts], [p["hi"] - p["diff"] for _, p in pts]]
        )
        ax.errorbar(d, idx, xerr=err, fmt="o", color=color, ms=4, label=name, elinewidth=0.9)
    ax.axvline(0, color="grey", lw=0.8, ls="--")
    ax.set_yticks(y, [e["label"] for e in entries], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("refusal rate difference vs baseline on harm_test (95% CI)")
    ax.set_title("effect per setting: raw vs stratified")
    ax.grid(alpha=0.3, axis="x")
    ax.legend(fontsize=8)
    verdict = textwrap.fill(f"Verdict: {confound.get('verdict', '')}", 160)
    fig.suptitle(f"{title}\n{verdict}", fontsize=10)
    return _save(fig, path)


def make_figures(
    summary: pd.DataFrame,
    confound: dict[str, Any],
    fig_dir: str | Path,
    layers: dict[str, Any] | None = None,
) -> list[Path]:
    """Write every figure into ``fig_dir``; return the written paths.

    ``layers`` (the matched-α layer comparison) marks where layers differ in
    ``layers_vs_alpha.png``.
    """
    fig_dir = Path(fig_dir)
    fig_dir.mkdir(parents=True, exist_ok=True)
    return [
        plot_layers_vs_alpha(summary, layers, fig_dir / "layers_vs_alpha.png"),
        plot_gap_vs_alpha(summary, fig_dir / "gap_vs_alpha.png"),
        plot_tradeoff(summary, fig_dir / "tradeoff.png"),
        plot_heatmap(
            summary,
            "harm_test",
            "refusal_rate",
            "refusal rate",
            "Reds",
            fig_dir / "heatmap_refusal_harm_test.png",
        ),
        plot_heatmap(
            summary,
            "benign",
            "helpful_rate",
            "helpful rate",
            "Greens",
            fig_dir / "heatmap_helpful_benign.png",
        ),
        plot_confounds(confound, fig_dir / "confounds.png"),
    ]
