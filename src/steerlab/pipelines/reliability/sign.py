"""The reliability pipeline's sign check, per layer: does adding the direction raise refusal on
held-out harm_train prompts by more than noise?

Each held-out prompt is scored unsteered (the baseline stage) and with ``+α`` along the layer's
direction (the sign_check stage). The change is the mean over prompts of the steered minus the
baseline refusal score, paired over prompts, with a 95% percentile-bootstrap CI:

- ``raised``: the CI lies above 0; the check passes at this layer;
- ``lowered``: the CI lies below 0; adding the direction lowers refusal, so its sign, the hook
  point or the intervention is likely wrong;
- ``not shown``: the CI includes 0; too few prompts or too small an effect to tell either way,
  and the sign is not confirmed at this layer.

A one-point rise on six prompts is ``not shown``, not a pass, and a one-point fall is not a
failure: only a change the prompts support gets a verdict.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from steerlab.metrics import bootstrap_ci

RAISED, LOWERED, NOT_SHOWN = "raised", "lowered", "not shown"
VERDICTS = (RAISED, LOWERED, NOT_SHOWN)


def layer_sign(
    steered: pd.DataFrame, baseline: pd.DataFrame, n_boot: int = 1000, seed: int = 0
) -> dict[str, Any]:
    """The sign check at one layer: ``steered`` holds that layer's sign-check rows, ``baseline``
    the unsteered rows of the same prompts (``prompt_id``, ``refusal_score``; several samples of
    a prompt are averaged). Prompts on one side only are left out of the pairing.

    Returns the JSON-ready entry stored in ``sanity.json``: both refusal means over the paired
    prompts, ``change`` (mean, 95% CI), ``n`` prompts, ``verdict`` and ``ok`` (``raised``)."""
    s = steered.groupby("prompt_id")["refusal_score"].mean()
    b = baseline.groupby("prompt_id")["refusal_score"].mean()
    common = s.index.intersection(b.index)
    diff = (s[common] - b[common]).to_numpy(dtype=np.float64)
    mean, lo, hi = bootstrap_ci(diff, n_boot=n_boot, seed=seed)
    verdict = RAISED if lo > 0 else LOWERED if hi < 0 else NOT_SHOWN
    return {
        "baseline_refusal": float(b[common].mean()) if len(common) else float("nan"),
        "steered_refusal": float(s[common].mean()) if len(common) else float("nan"),
        "change": {"value": float(mean), "lo": float(lo), "hi": float(hi)},
        "n": len(common),
        "verdict": verdict,
        "ok": verdict == RAISED,
    }
