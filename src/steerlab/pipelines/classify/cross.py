"""The cross-group tables of ``steerlab classify``: the vector built from group a evaluated on
group b, at every layer and strength of the grid.

Two readings of the same rows, both against the unsteered baseline on group b:

- per (layer, strength): the change in mean P(positive) (logit mode: P(positive | {positive,
  negative}) from the answer margin; generate mode: the rate of answers stating the positive
  label), one table and one heatmap panel each;
- per cell: the change in accuracy at the cell's best (layer, strength), with the strength
  (and layer) named. Chosen on the held-out split itself, so optimistic.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from steerlab._util.io import atomic_path
from steerlab.pipelines.classify.config import BASELINE, POOLED

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.image import AxesImage

KEYS = ["layer", "strength", "vector", "group"]


def cross_frame(df: pd.DataFrame) -> pd.DataFrame:
    """One row per (layer, strength, vector, group) over the group vectors of a scored grid
    (``correct`` and ``p_positive`` per row): ``n``, ``accuracy``, ``p_positive`` and their
    changes ``d_accuracy`` / ``d_p_positive`` against the baseline on ``group``."""
    base = (
        df[df["vector"] == BASELINE]
        .groupby("group")
        .agg(base_accuracy=("correct", "mean"), base_p_positive=("p_positive", "mean"))
    )
    sel = df[(df["vector"] != BASELINE) & (df["vector"] != POOLED)]
    t = (
        sel.groupby(KEYS, sort=True)
        .agg(
            n=("correct", "size"),
            accuracy=("correct", "mean"),
            p_positive=("p_positive", "mean"),
        )
        .reset_index()
        .join(base, on="group")
    )
    t["d_accuracy"] = t["accuracy"] - t["base_accuracy"]
    t["d_p_positive"] = t["p_positive"] - t["base_p_positive"]
    return t


def best_cells(t: pd.DataFrame) -> pd.DataFrame:
    """Per (vector, group): the (layer, strength) with the largest accuracy change (ties: the
    smaller strength, then the lower layer); ``every`` is True where all of the cell's settings
    tie (no strength is better than another)."""
    order = t.sort_values(
        ["vector", "group", "d_accuracy", "strength", "layer"],
        ascending=[True, True, False, True, True],
    )
    cells = order.groupby(["vector", "group"], sort=True)
    spread = cells["d_accuracy"].agg(lambda x: x.max() - x.min())
    best = cells.head(1).set_index(["vector", "group"])
    best["every"] = spread.loc[best.index] == 0
    return best.reset_index()


def _where(b: pd.Series, many_layers: bool) -> str:
    if b["every"]:
        return "every α"
    return f"α={b['strength']:g}" + (f", L{int(b['layer'])}" if many_layers else "")


def _order(t: pd.DataFrame, groups: list[str]) -> tuple[list[str], list[str]]:
    rows = [g for g in groups if g in set(t["vector"])]
    cols = [g for g in groups if g in set(t["group"])]
    return rows, cols


def markdown(t: pd.DataFrame, groups: list[str], p_name: str) -> list[str]:
    """The best-per-cell table, then one Δ P(positive) table per layer and strength."""
    if t.empty:
        return []
    rows, cols = _order(t, groups)
    many_layers = t["layer"].nunique() > 1
    best = best_cells(t).set_index(["vector", "group"])
    head = [
        "| vector ↓ / evaluated on → | " + " | ".join(cols) + " |",
        "|---" * (len(cols) + 1) + "|",
    ]
    lines = [
        "\n## Cross-group: the vector of group a (rows) on group b (columns)\n",
        "### Best setting per cell\n",
        "Change in accuracy vs unsteered on group b (percentage points) at the cell's best "
        + ("layer and strength" if many_layers else "strength")
        + ' (chosen on the held-out split: optimistic; "every α": all settings tie).\n',
        *head,
    ]
    for r in rows:
        cells = []
        for c in cols:
            if (r, c) not in best.index:
                cells.append("–")
                continue
            b = best.loc[(r, c)]
            cells.append(f"{100 * b['d_accuracy']:+.0f} ({_where(b, many_layers)})")
        lines.append(f"| {r} | " + " | ".join(cells) + " |")
    lines.append(f"\n### Change in mean {p_name} vs unsteered, per strength\n")
    for (layer, strength), g in t.groupby(["layer", "strength"], sort=True):
        lines += [f"Layer {layer}, strength {strength:g}:\n", *head]
        m = g.set_index(["vector", "group"])["d_p_positive"]
        for r in rows:
            vals = [f"{m[(r, c)]:+.3f}" if (r, c) in m.index else "–" for c in cols]
            lines.append(f"| {r} | " + " | ".join(vals) + " |")
        lines.append("")
    return lines


def plots(t: pd.DataFrame, groups: list[str], p_name: str, out: Path) -> None:
    """``cross_group.png``: one Δ P(positive) panel per (layer, strength), one colour scale;
    ``cross_group_best.png``: the best accuracy change per cell, its strength written in it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows, cols = _order(t, groups) if not t.empty else ([], [])
    layers = sorted(set(t["layer"])) if not t.empty else [0]
    strengths = sorted(set(t["strength"])) if not t.empty else [0.0]
    size = max(3.0, 0.45 * max(len(cols), 1) + 1.5)
    fig, axes = plt.subplots(
        len(layers),
        len(strengths),
        figsize=(size * len(strengths) + 1.5, size * len(layers)),
        squeeze=False,
        constrained_layout=True,
    )
    mats = {
        (layer, s): _matrix(t[(t["layer"] == layer) & (t["strength"] == s)], rows, cols)
        for layer in layers
        for s in strengths
    }
    finite = [np.abs(m[np.isfinite(m)]).max() for m in mats.values() if np.isfinite(m).any()]
    v = max(finite) if finite and max(finite) > 0 else 1.0
    im: AxesImage | None = None
    for i, layer in enumerate(layers):
        for j, s in enumerate(strengths):
            ax = axes[i][j]
            im = _heat(ax, mats[(layer, s)], rows, cols, v, "{:+.2f}")
            ax.set_title(f"layer {layer}, strength {s:g}", fontsize=9)
            if i == len(layers) - 1:
                ax.set_xlabel("evaluated on group")
            if j == 0:
                ax.set_ylabel("vector built from group")
    if im is not None:
        fig.colorbar(im, ax=axes, label=f"Δ mean {p_name} vs unsteered", shrink=0.8)
    fig.suptitle(f"cross-group: Δ mean {p_name} vs unsteered, per layer and strength")
    with atomic_path(out / "cross_group.png") as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(size + 2.5, size + 0.5), constrained_layout=True)
    if not t.empty:
        best = best_cells(t)
        acc = 100 * _matrix(best, rows, cols, "d_accuracy")
        strength = _matrix(best, rows, cols, "strength")
        every = _matrix(best, rows, cols, "every")
        finite_acc = np.abs(acc[np.isfinite(acc)])
        va = float(finite_acc.max()) if finite_acc.size and finite_acc.max() > 0 else 1.0
        im = _heat(ax, acc, rows, cols, va, None)
        for (r, c), val in np.ndenumerate(acc):
            if np.isfinite(val):
                where = "every α" if every[r, c] == 1 else f"α={strength[r, c]:g}"
                ax.text(c, r, f"{val:+.0f}\n{where}", ha="center", va="center", fontsize=6)
        fig.colorbar(im, ax=ax, label="Δ accuracy vs unsteered (pp), best strength")
    ax.set_xlabel("evaluated on group")
    ax.set_ylabel("vector built from group")
    ax.set_title("cross-group: best strength per cell")
    with atomic_path(out / "cross_group_best.png") as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)


def _matrix(
    t: pd.DataFrame, rows: list[str], cols: list[str], col: str = "d_p_positive"
) -> np.ndarray:
    """(len(rows), len(cols)) float; NaN where a cell has no rows."""
    m = np.full((len(rows), len(cols)), np.nan)
    ri, ci = {r: i for i, r in enumerate(rows)}, {c: j for j, c in enumerate(cols)}
    for vec, grp, val in zip(t["vector"], t["group"], t[col], strict=True):
        if vec in ri and grp in ci:
            m[ri[vec], ci[grp]] = float(val)
    return m


def _heat(
    ax: Axes, m: np.ndarray, rows: list[str], cols: list[str], v: float, fmt: str | None
) -> AxesImage:
    im = ax.imshow(m, cmap="RdBu_r", vmin=-v, vmax=v)
    ax.set_xticks(range(len(cols)), cols, rotation=45, ha="right", fontsize=7)
    ax.set_yticks(range(len(rows)), rows, fontsize=7)
    if fmt is not None and len(cols) <= 12:
        for (r, c), val in np.ndenumerate(m):
            if np.isfinite(val):
                ax.text(c, r, fmt.format(val), ha="center", va="center", fontsize=6)
    return im
