"""The reliability pipeline's sign check, per layer: does adding the direction raise refusal on
held-out harm_train prompts by more than noise?

Each held-out prompt is scored unsteered (the baseline stage) and with ``+α`` along the layer's
direction (the sign_check stage). The change is the mean over prompts of the steered minus the
baseline refusal score, paired over prompts, with a 95% percentile-bootstrap CI:

- ``raised``: the CI lies above 0; the check passes at this layer;
- ``lowered``: the CI lies below 0; adding the direction lowers refusal, so its sign, the hook
  point or the intervention is likely wrong;
- ``not shown``: the CI includes 0, or fewer than :data:`MIN_PROMPTS` prompts were paired (a
  percentile bootstrap over one or two prompts excludes 0 whenever they all move the same way);
  the sign is not confirmed at this layer.

A rise in the mean that goes up on some prompts and down on others is ``not shown``, not a pass,
and such a fall is not a failure: only a change the prompts support gets a verdict.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import pandas as pd

from steerlab.metrics import bootstrap_ci

RAISED, LOWERED, NOT_SHOWN = "raised", "lowered", "not shown"
VERDICTS = (RAISED, LOWERED, NOT_SHOWN)
#: Fewer paired prompts than this get no verdict (``not shown``).
MIN_PROMPTS = 5


def layer_sign(
    steered: pd.DataFrame, baseline: pd.DataFrame, n_boot: int = 1000, seed: int = 0
) -> dict[str, Any]:
    """The sign check at one layer: ``steered`` holds that layer's sign-check rows, ``baseline``
    the unsteered rows of the same prompts (``prompt_id``, ``refusal_score``; several samples of
    a prompt are averaged). Prompts on one side only, or with no score on one side, are left out.

    Returns the JSON-ready entry stored in ``sanity.json``: both refusal means over the paired
    prompts, ``change`` (mean, 95% CI), ``n`` paired prompts, ``verdict`` and ``ok``
    (``raised``)."""
    s = steered.groupby("prompt_id")["refusal_score"].mean()
    b = baseline.groupby("prompt_id")["refusal_score"].mean()
    common = s.index.intersection(b.index)
    pairs = pd.DataFrame({"s": s[common], "b": b[common]}).dropna()
    diff = (pairs["s"] - pairs["b"]).to_numpy(dtype=np.float64)
    mean, lo, hi = bootstrap_ci(diff, n_boot=n_boot, seed=seed)
    n = len(pairs)
    verdict = (
        NOT_SHOWN if n < MIN_PROMPTS else RAISED if lo > 0 else LOWERED if hi < 0 else NOT_SHOWN
    )
    return {
        "baseline_refusal": float(pairs["b"].mean()) if n else float("nan"),
        "steered_refusal": float(pairs["s"].mean()) if n else float("nan"),
        "change": {"value": float(mean), "lo": float(lo), "hi": float(hi)},
        "n": n,
        "verdict": verdict,
        "ok": verdict == RAISED,
    }


def why_not_shown(entry: dict[str, Any]) -> str:
    """Why a layer has no verdict: too few paired prompts, or a CI that includes 0."""
    n = entry.get("n")
    if n is not None and n < MIN_PROMPTS:
        return f"{n} paired prompt(s), fewer than the {MIN_PROMPTS} a verdict needs"
    return "the change's CI includes 0"


def log_sign_warnings(
    per_layer: dict[str, dict[str, Any]], alpha: float, logger: logging.Logger
) -> None:
    """One warning for the layers that failed and one for those not shown (none when all
    passed)."""
    for verdict, what, moves in (
        (LOWERED, "SIGN CHECK FAILED", "lowers"),
        (NOT_SHOWN, "sign check: sign not shown", "does not clearly raise"),
    ):
        bad = {k: v for k, v in per_layer.items() if v["verdict"] == verdict}
        if bad:
            logger.warning(
                "%s: +%.2f along the direction %s the refusal score on held-out prompts (%s)",
                what,
                alpha,
                moves,
                "; ".join(
                    f"layer {k}: {v['baseline_refusal']:.3f} -> {v['steered_refusal']:.3f}, "
                    f"n={v['n']}" + ("" if verdict == LOWERED else f": {why_not_shown(v)}")
                    for k, v in bad.items()
                ),
            )
