"""The reliability pipeline's sign check per layer (:mod:`steerlab.pipelines.reliability.sign`):
a verdict only where the paired change over prompts has a CI clear of 0."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from steerlab.pipelines.reliability.sign import LOWERED, NOT_SHOWN, RAISED, layer_sign


def _rows(scores: dict[str, list[float]]) -> pd.DataFrame:
    return pd.DataFrame(
        [{"prompt_id": p, "refusal_score": s} for p, ss in scores.items() for s in ss]
    )


def _pair(base: list[float], steered: list[float]) -> tuple[pd.DataFrame, pd.DataFrame]:
    ids = [f"p{i}" for i in range(len(base))]
    return (
        _rows({i: [s] for i, s in zip(ids, steered, strict=True)}),
        _rows({i: [b] for i, b in zip(ids, base, strict=True)}),
    )


@pytest.mark.parametrize(
    ("base", "steered", "expected"),
    [
        ([0.1, 0.0, 0.2, 0.1, 0.0, 0.1], [0.6, 0.5, 0.7, 0.4, 0.6, 0.5], RAISED),
        ([0.6, 0.5, 0.7, 0.4, 0.6, 0.5], [0.1, 0.0, 0.2, 0.1, 0.0, 0.1], LOWERED),
        # a one-point rise in the mean on six prompts, up on some and down on others: the old rule
        # (steered mean > baseline mean) called it a pass
        ([0.14, 0.40, 0.0, 0.2, 0.1, 0.0], [0.50, 0.05, 0.1, 0.1, 0.1, 0.1], NOT_SHOWN),
    ],
)
def test_a_verdict_needs_a_ci_clear_of_zero(
    base: list[float], steered: list[float], expected: str
) -> None:
    s, b = _pair(base, steered)
    got = layer_sign(s, b, n_boot=2000)
    assert got["verdict"] == expected and got["ok"] is (expected == RAISED)
    c = got["change"]
    assert c["lo"] <= c["value"] <= c["hi"]
    assert c["value"] == pytest.approx(sum(steered) / 6 - sum(base) / 6)
    if expected == NOT_SHOWN:
        assert got["steered_refusal"] > got["baseline_refusal"] and c["lo"] < 0 < c["hi"]


def test_pairs_by_prompt_and_averages_samples() -> None:
    # the baseline has two samples of p0 (mean 0.2) and a prompt the steered side lacks
    base = _rows({"p0": [0.0, 0.4], "p1": [0.1], "p2": [0.1], "stray": [1.0]})
    steered = _rows({"p2": [0.9], "p0": [0.8], "p1": [0.7]})
    got = layer_sign(steered, base, n_boot=500)
    assert got["n"] == 3
    assert got["baseline_refusal"] == pytest.approx((0.2 + 0.1 + 0.1) / 3)
    assert got["change"]["value"] == pytest.approx(((0.8 - 0.2) + 0.6 + 0.8) / 3)
    assert got["verdict"] == RAISED


def test_no_paired_prompt_is_not_shown() -> None:
    got = layer_sign(_rows({"a": [0.5]}), _rows({"b": [0.1]}), n_boot=100)
    assert got["n"] == 0 and got["verdict"] == NOT_SHOWN and not got["ok"]
    assert math.isnan(got["change"]["value"]) and math.isnan(got["baseline_refusal"])
