"""Selecting the main grid out of ``results.parquet`` and picking operating points.

The main grid is stage ``"baseline"`` (layer -1, intervention ``"none"``, α 0) plus stage
``"sweep"``, which already holds the ``shared_baseline`` α=0 copies for every (layer,
intervention) cell. A *setting* is one (layer, intervention, α); a *steered* setting is one that
changes the model (intervention other than ``"none"`` and α ≠ 0).
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import numpy as np
import numpy.typing as npt
import pandas as pd

SPLITS = ("harm_train", "harm_test", "benign")
KEY = ["layer", "intervention", "alpha"]
BASELINE_LAYER = -1
# The benign-helpfulness drop (absolute, in rate units) still called an "acceptable" cost when
# picking the best operating point and comparing layers.
ACCEPTABLE_DROP = 0.10


class Setting(NamedTuple):
    layer: int
    intervention: str
    alpha: float

    @property
    def label(self) -> str:
        if self.intervention == "none":
            return "baseline"
        return f"L{self.layer} {self.intervention} α={self.alpha:g}"

    def as_dict(self) -> dict[str, Any]:
        return {"layer": self.layer, "intervention": self.intervention, "alpha": self.alpha}


def setting_of(row: pd.Series | dict[str, Any]) -> Setting:
    return Setting(int(row["layer"]), str(row["intervention"]), float(row["alpha"]))


def main_grid(results: pd.DataFrame) -> pd.DataFrame:
    """Rows of the main layer × intervention × α grid (baseline included)."""
    stage = results["stage"]
    return results[(stage == "baseline") | (stage == "sweep")]


def select(df: pd.DataFrame, setting: Setting, split: str | None = None) -> pd.DataFrame:
    """Rows of ``df`` at ``setting`` (α compared with a tolerance), optionally one split."""
    mask = (
        (df["layer"] == setting.layer)
        & (df["intervention"] == setting.intervention)
        & np.isclose(df["alpha"].to_numpy(dtype=float), setting.alpha)
    )
    if split is not None:
        mask &= df["split"] == split
    return df[mask]


def flags(df: pd.DataFrame, column: str) -> npt.NDArray[np.float64]:
    """A boolean or numeric column as float64 (NaN kept, so bootstrap helpers can drop it)."""
    if column not in df.columns:
        return np.empty(0, dtype=np.float64)
    return pd.to_numeric(df[column], errors="coerce").to_numpy(dtype=np.float64)


def mean_or_nan(values: npt.NDArray[np.float64]) -> float:
    finite = values[~np.isnan(values)]
    return float(finite.mean()) if finite.size else math.nan


def pareto_mask(
    maximize: npt.ArrayLike, minimize: npt.ArrayLike, candidates: npt.ArrayLike | None = None
) -> npt.NDArray[np.bool_]:
    """Which points are undominated when maximizing ``maximize`` and minimizing ``minimize``.

    A point is dominated when another candidate is at least as good on both axes and strictly
    better on one. Identical points do not dominate each other. NaN points and non-candidates
    are never on the frontier (and dominate nothing).
    """
    x = np.asarray(maximize, dtype=np.float64)
    y = np.asarray(minimize, dtype=np.float64)
    ok = ~(np.isnan(x) | np.isnan(y))
    if candidates is not None:
        ok &= np.asarray(candidates, dtype=bool)
    out = np.zeros(x.shape, dtype=bool)
    for i in np.flatnonzero(ok):
        better = ok & (x >= x[i]) & (y <= y[i]) & ((x > x[i]) | (y < y[i]))
        out[i] = not better.any()
    return out


def setting_points(results: pd.DataFrame) -> pd.DataFrame:
    """Point estimates per setting: ``harm_test_refusal``, ``benign_drop``, ``steered``, ``pareto``.

    The same quantities (without intervals) that
    :func:`~steerlab.pipelines.reliability.report.aggregate.summarize` computes, for checks that
    only need to know which setting is best.
    """
    grid = main_grid(results)
    base = grid[grid["intervention"] == "none"]
    base_helpful = mean_or_nan(flags(base[base["split"] == "benign"], "is_helpful"))
    rows = []
    for key, g in grid.groupby(KEY, sort=True):
        s = setting_of(dict(zip(KEY, key, strict=True)))
        test, benign = g[g["split"] == "harm_test"], g[g["split"] == "benign"]
        rows.append(
            {
                **s.as_dict(),
                "harm_test_refusal": mean_or_nan(flags(test, "is_refusal")),
                "benign_drop": base_helpful - mean_or_nan(flags(benign, "is_helpful")),
                "steered": s.intervention != "none" and s.alpha != 0,
            }
        )
    points = pd.DataFrame(rows, columns=[*KEY, "harm_test_refusal", "benign_drop", "steered"])
    points["pareto"] = pareto_mask(
        points["harm_test_refusal"], points["benign_drop"], points["steered"]
    )
    return points


def pick_best(settings: pd.DataFrame) -> Setting | None:
    """The best operating point among ``settings`` (one row per setting).

    Needs columns ``layer, intervention, alpha, steered, pareto, harm_test_refusal,
    benign_drop``. Rule: the Pareto setting with the highest harm_test refusal rate whose benign
    helpfulness drop is at most :data:`ACCEPTABLE_DROP`; else the Pareto setting maximizing
    refusal minus drop; else the ``add`` setting with the highest harm_test refusal rate.
    """
    steered = settings[settings["steered"].astype(bool)].sort_values(KEY)
    steered = steered.dropna(subset=["harm_test_refusal"])
    if steered.empty:
        return None
    front = steered[steered["pareto"].astype(bool)].dropna(subset=["benign_drop"])
    cheap = front[front["benign_drop"] <= ACCEPTABLE_DROP]
    if not cheap.empty:
        row = cheap.loc[cheap["harm_test_refusal"].idxmax()]
    elif not front.empty:
        row = front.loc[(front["harm_test_refusal"] - front["benign_drop"]).idxmax()]
    else:
        adds = steered[steered["intervention"] == "add"]
        pool = adds if not adds.empty else steered
        row = pool.loc[pool["harm_test_refusal"].idxmax()]
    return setting_of(row)
