"""Figures of a behaviour benchmark, saved atomically as PNG (matplotlib ``Figure`` on an Agg
canvas, never ``pyplot``): P(matching) against the multiplier per layer, steerability against
the layer, the per-item slope histogram at the best layer, and steerability under the prompt
shifts."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from steerlab._util.io import atomic_path
from steerlab.pipelines.behaviours.config import BASE

DPI = 110


def _figure(n: int, w: float = 4.2, h: float = 3.4) -> tuple[Figure, list[Axes]]:
    fig = Figure(figsize=(w * n, h), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, n, squeeze=False)[0]
    return fig, list(axes)


def _save(fig: Figure, path: Path) -> str:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=DPI)
    return path.name


def write_plots(
    run: Path,
    curve: pd.DataFrame,
    table: pd.DataFrame,
    slopes: pd.DataFrame,
    best: dict[str, int],
) -> list[str]:
    names = sorted(best)
    out = [
        _p_matching(run, curve, names, best),
        _steerability(run, table, names),
        _slope_histogram(run, slopes, names, best),
    ]
    if (table["condition"] != BASE).any():
        out.append(_shifts(run, table, names, best))
    return out


def _p_matching(run: Path, curve: pd.DataFrame, names: list[str], best: dict[str, int]) -> str:
    fig, axes = _figure(len(names))
    cmap = colormaps["viridis"]
    base = curve[curve["condition"] == BASE]
    layers = sorted(base["layer"].unique())
    for ax, name in zip(axes, names, strict=True):
        for layer in layers:
            g = base[(base["behaviour"] == name) & (base["layer"] == layer)].sort_values(
                "multiplier"
            )
            top = layer == best[name]
            color = cmap(layers.index(layer) / max(1, len(layers) - 1))
            ax.plot(
                g["multiplier"],
                g["p_matching"],
                color="crimson" if top else color,
                lw=2.2 if top else 0.9,
                alpha=1.0 if top else 0.7,
                label=f"layer {layer} (best)" if top else None,
            )
            if top:
                ax.fill_between(
                    g["multiplier"],
                    g["p_matching_lo"],
                    g["p_matching_hi"],
                    color="crimson",
                    alpha=0.15,
                )
        ax.axhline(0.5, color="grey", lw=0.6, ls=":")
        ax.set_ylim(0, 1)
        ax.set_title(f"{name}: P(matching answer)")
        ax.set_xlabel("multiplier")
        ax.legend(fontsize=7, loc="best")
    fig.suptitle(f"each line a layer (viridis: shallow to deep, {len(layers)} layers)", fontsize=8)
    return _save(fig, run / "p_matching_vs_multiplier.png")


def _steerability(run: Path, table: pd.DataFrame, names: list[str]) -> str:
    fig, (ax,) = _figure(1, 6.0, 3.6)
    base = table[table["condition"] == BASE]
    for name in names:
        g = base[base["behaviour"] == name].sort_values("layer")
        ax.plot(g["layer"], g["steerability"], marker="o", ms=3, label=name)
        ax.fill_between(g["layer"], g["steerability_lo"], g["steerability_hi"], alpha=0.2)
    ax.axhline(0, color="grey", lw=0.6)
    ax.set_xlabel("layer")
    ax.set_ylabel("steerability (logit diff per unit)")
    ax.set_title("steerability by layer (95% CI)")
    ax.legend(fontsize=8)
    return _save(fig, run / "steerability_vs_layer.png")


def _slope_histogram(
    run: Path, slopes: pd.DataFrame, names: list[str], best: dict[str, int]
) -> str:
    fig, axes = _figure(len(names))
    for ax, name in zip(axes, names, strict=True):
        s = slopes[
            (slopes["behaviour"] == name)
            & (slopes["condition"] == BASE)
            & (slopes["layer"] == best[name])
        ]["slope"].to_numpy(float)
        bins = np.histogram_bin_edges(s, bins=min(20, max(5, len(s) // 3))).tolist()
        ax.hist(s[s >= 0], bins=bins, color="tab:blue", label="steerable")
        ax.hist(s[s < 0], bins=bins, color="tab:red", label="anti-steerable")
        ax.axvline(0, color="black", lw=0.8)
        ax.set_title(f"{name}: item slopes at layer {best[name]}")
        ax.set_xlabel("slope of logit diff per unit")
        ax.legend(fontsize=7)
    return _save(fig, run / "item_slopes_histogram.png")


def _shifts(run: Path, table: pd.DataFrame, names: list[str], best: dict[str, int]) -> str:
    fig, (ax,) = _figure(1, 7.0, 3.6)
    conds = [BASE, *sorted(c for c in table["condition"].unique() if c != BASE)]
    width = 0.8 / len(conds)
    for j, cond in enumerate(conds):
        vals, errs = [], []
        for name in names:
            r = table[
                (table["behaviour"] == name)
                & (table["condition"] == cond)
                & (table["layer"] == best[name])
            ]
            if len(r):
                v = float(r["steerability"].iloc[0])
                vals.append(v)
                errs.append(
                    [
                        v - float(r["steerability_lo"].iloc[0]),
                        float(r["steerability_hi"].iloc[0]) - v,
                    ]
                )
            else:
                vals.append(np.nan)
                errs.append([0.0, 0.0])
        x = np.arange(len(names)) + (j - (len(conds) - 1) / 2) * width
        ax.bar(x, vals, width, yerr=np.array(errs).T, capsize=2, label=cond)
    ax.set_xticks(np.arange(len(names)), [f"{n}\n(layer {best[n]})" for n in names])
    ax.axhline(0, color="grey", lw=0.6)
    ax.set_ylabel("steerability")
    ax.set_title("in-distribution vs shifted prompts (95% CI)")
    ax.legend(fontsize=7)
    return _save(fig, run / "steerability_shifts.png")
