"""The rules that pick the setting a report statement names.

Each rule reads the harm_test rows of a
:func:`~steerlab.pipelines.reliability.report.aggregate.summarize` frame (one row per setting,
carrying the setting's derived columns and their CIs) and returns the rows or the row it names.
The report applies the same rule twice: to all prompts (the in-sample statement, a selected
maximum) and to the selection half of the prompts (the held-out check, scored on the report
half), so both name settings by one rule.
"""

from __future__ import annotations

import pandas as pd

from steerlab.pipelines.reliability.report._grid import ACCEPTABLE_DROP, KEY
from steerlab.pipelines.reliability.report.checks import excludes_zero


def harm_test_rows(summary: pd.DataFrame) -> pd.DataFrame:
    """harm_test rows: every setting column plus the harm_test refusal CI (``refusal_lo/hi``)."""
    return summary[summary["split"] == "harm_test"].sort_values(KEY).reset_index(drop=True)


def steered(test: pd.DataFrame, column: str | None = None) -> pd.DataFrame:
    """Steered settings, those without ``column`` left out."""
    rows = test[test["steered"].astype(bool)]
    return rows if column is None else rows.dropna(subset=[column])


def top(rows: pd.DataFrame, column: str, lowest: bool = False) -> pd.Series | None:
    """The row with the largest (``lowest``: smallest) ``column``; ``None`` when ``rows`` is
    empty. Ties go to the first row in setting order."""
    if rows.empty:
        return None
    return rows.loc[rows[column].idxmin() if lowest else rows[column].idxmax()]


def raising(test: pd.DataFrame) -> pd.DataFrame:
    """Steered settings raising harm_test refusal over the baseline with a CI excluding 0."""
    s = steered(test, "refusal_gain")
    return s[s["refusal_gain_lo"] > 0]


def lowering(test: pd.DataFrame) -> pd.DataFrame:
    """Steered settings lowering harm_test refusal below the baseline with a CI excluding 0."""
    s = steered(test, "refusal_gain")
    return s[s["refusal_gain_hi"] < 0]


def baseline_gap_is_real(base: pd.Series | None) -> bool:
    """Whether the baseline's own train−test gap has a CI excluding 0."""
    return base is not None and excludes_zero(base["gap_lo"], base["gap_hi"])


def gaps_beyond_baseline(test: pd.DataFrame, base: pd.Series | None) -> pd.DataFrame:
    """Steered settings whose train−test gap CI lies above 0, and above the baseline gap's CI
    when the baseline gap is itself real: the generalization failures due to steering."""
    s = steered(test, "gap")
    positive = s[s["gap_lo"] > 0]
    if not baseline_gap_is_real(base):
        return positive
    assert base is not None
    return positive[positive["gap_lo"] > float(base["gap_hi"])]


def hurting(test: pd.DataFrame) -> pd.DataFrame:
    """Steered settings lowering the benign helpful rate with a CI excluding 0."""
    s = steered(test, "benign_drop")
    return s[s["benign_drop_lo"] > 0]


def within_cost(test: pd.DataFrame) -> pd.DataFrame:
    """Steered settings with harm_test and benign results (the candidates per layer)."""
    return steered(test).dropna(subset=["refusal_rate", "benign_drop"])


def best_per_layer(test: pd.DataFrame) -> dict[int, pd.Series | None]:
    """Per steered layer, the setting with the highest harm_test refusal among those whose
    benign helpfulness drop is at most :data:`ACCEPTABLE_DROP` (``None``: none is)."""
    out: dict[int, pd.Series | None] = {}
    for layer, g in within_cost(test).groupby("layer", sort=True):
        out[int(layer)] = top(g[g["benign_drop"] <= ACCEPTABLE_DROP], "refusal_rate")
    return out
