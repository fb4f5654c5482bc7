"""The quantities of the behaviour benchmark, from scored rows (pure pandas/numpy).

Per item and setting: ``logit_diff`` = log P(matching token) - log P(non-matching token) (the
logit difference: both log-probabilities share the softmax normaliser) and ``p_matching`` =
P(matching | {matching, non-matching}) = sigmoid(logit_diff).

*Steerability* (Tan et al.) of a vector at a layer is the slope of the mean logit difference
over the multiplier grid (least squares). Because a least-squares slope is linear in the
responses, it equals the mean of the per-item slopes, so its 95% CI is a bootstrap over items of
those slopes. An item is *anti-steerable* when its own slope is negative. The unsteered row of an
item is its point at multiplier 0 at every layer.
"""

from __future__ import annotations

import logging
import math

import numpy as np
import pandas as pd

from steerlab.metrics.stats import bootstrap_ci, wilson_ci
from steerlab.pipelines.behaviours.config import BASE

logger = logging.getLogger(__name__)
KEYS = ["behaviour", "condition", "layer"]


def with_scores(df: pd.DataFrame) -> pd.DataFrame:
    out = df.copy()
    out["logit_diff"] = out["logp_matching"] - out["logp_not_matching"]
    out["p_matching"] = 1.0 / (1.0 + np.exp(-out["logit_diff"]))
    return out


def full_grid(df: pd.DataFrame) -> pd.DataFrame:
    """Every item x layer x multiplier of each condition: the unsteered row of an item (layer
    -1) stands at multiplier 0 of every layer its condition was steered at (``steered`` False)."""
    scored = with_scores(df)
    base = scored[scored["layer"] < 0]
    steered = scored[scored["layer"] >= 0].assign(steered=True)
    layers = steered[["behaviour", "condition", "layer"]].drop_duplicates()
    at_zero = base.drop(columns=["layer"]).merge(layers, on=["behaviour", "condition"])
    at_zero = at_zero.assign(steered=False)
    out = pd.concat([steered, at_zero], ignore_index=True)
    return out.sort_values([*KEYS, "item_id", "multiplier"], kind="stable").reset_index(drop=True)


def item_slopes(full: pd.DataFrame) -> pd.DataFrame:
    """Per item, condition and layer: the least-squares slope of its logit difference over the
    multipliers."""
    g = full.groupby([*KEYS, "item_id"], sort=True)
    x = full["multiplier"] - g["multiplier"].transform("mean")
    y = full["logit_diff"] - g["logit_diff"].transform("mean")
    parts = pd.DataFrame({k: full[k] for k in [*KEYS, "item_id"]})
    parts["xy"], parts["xx"] = x * y, x * x
    sums = parts.groupby([*KEYS, "item_id"], sort=True)[["xy", "xx"]].sum().reset_index()
    sums["slope"] = sums["xy"] / sums["xx"]
    return sums.drop(columns=["xy", "xx"])


def steerability(slopes: pd.DataFrame, n_boot: int = 1000) -> pd.DataFrame:
    """Per behaviour, condition and layer: steerability (mean item slope) with its bootstrap
    CI, the spread of item slopes, and the anti-steerable fraction with its Wilson CI."""
    rows = []
    for key, g in slopes.groupby(KEYS, sort=True):
        s = g["slope"].to_numpy(float)
        mean, lo, hi = bootstrap_ci(s, n_boot=n_boot)
        neg = int((s < 0).sum())
        frac, flo, fhi = wilson_ci(neg, len(s))
        rows.append(
            {
                **dict(zip(KEYS, key, strict=True)),
                "n_items": len(s),
                "steerability": mean,
                "steerability_lo": lo,
                "steerability_hi": hi,
                "slope_sd": float(s.std(ddof=1)) if len(s) > 1 else math.nan,
                "anti_steerable": frac,
                "anti_steerable_lo": flo,
                "anti_steerable_hi": fhi,
            }
        )
    return pd.DataFrame(rows)


def curves(full: pd.DataFrame, n_boot: int = 1000) -> pd.DataFrame:
    """Per behaviour, condition, layer and multiplier: mean P(matching) and mean logit
    difference over items, each with a bootstrap CI."""
    rows = []
    for key, g in full.groupby([*KEYS, "multiplier"], sort=True):
        p, plo, phi = bootstrap_ci(g["p_matching"].to_numpy(float), n_boot=n_boot)
        d, dlo, dhi = bootstrap_ci(g["logit_diff"].to_numpy(float), n_boot=n_boot)
        rows.append(
            {
                **dict(zip([*KEYS, "multiplier"], key, strict=True)),
                "n_items": len(g),
                "p_matching": p,
                "p_matching_lo": plo,
                "p_matching_hi": phi,
                "logit_diff": d,
                "logit_diff_lo": dlo,
                "logit_diff_hi": dhi,
            }
        )
    return pd.DataFrame(rows)


def best_layers(scores: pd.DataFrame) -> dict[str, int]:
    """Per behaviour, the layer whose unshifted steerability is highest (ties: the lower), from
    scored rows."""
    slopes = item_slopes(full_grid(scores[scores["condition"] == BASE]))
    mean = slopes.groupby(["behaviour", "condition", "layer"], sort=True)["slope"].mean()
    return best_of(mean.rename("steerability").reset_index())


def best_of(table: pd.DataFrame) -> dict[str, int]:
    """Per behaviour, the unshifted layer of highest ``steerability`` in ``table``."""
    base = table[table["condition"] == BASE]
    out = {}
    for name, g in base.groupby("behaviour", sort=True):
        g = g.sort_values(["steerability", "layer"], ascending=[False, True], kind="stable")
        out[str(name)] = int(g["layer"].iloc[0])
    return out


def backwards(table: pd.DataFrame) -> pd.DataFrame:
    """The sign check: behaviour x layer (unshifted) where the vector moves the wrong way, i.e.
    the steerability CI lies entirely below zero."""
    base = table[table["condition"] == BASE]
    return base[base["steerability_hi"] < 0]


def sign_check_lines(table: pd.DataFrame) -> list[str]:
    """One line per behaviour whose vector moves the wrong way at some layer."""
    bad = backwards(table)
    lines = []
    for name, g in bad.groupby("behaviour", sort=True):
        n_all = int((table[(table["condition"] == BASE)]["behaviour"] == name).sum())
        worst = g.sort_values("steerability").iloc[0]
        layers = ", ".join(str(int(x)) for x in g["layer"])
        lines.append(
            f"{name}: the vector moves the wrong way at {len(g)} of {n_all} layers ({layers}); "
            f"worst at layer {int(worst['layer'])}: steerability {worst['steerability']:+.3f} "
            f"[{worst['steerability_lo']:+.3f}, {worst['steerability_hi']:+.3f}]"
        )
    return lines


def log_sign_check(scores: pd.DataFrame, n_boot: int) -> None:
    table = steerability(item_slopes(full_grid(scores)), n_boot)
    lines = sign_check_lines(table)
    for line in lines:
        logger.warning("sign check: %s", line)
    if not lines:
        logger.info("sign check: no vector moves the wrong way at any layer")
