"""The reliability pipeline's sign check per layer (:mod:`steerlab.pipelines.reliability.sign`):
a verdict only where the paired change over prompts has a CI clear of 0."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from steerlab.pipelines.reliability.sign import (
    LOWERED,
    MIN_PROMPTS,
    NOT_SHOWN,
    RAISED,
    layer_sign,
    why_not_shown,
)


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
        # a two-point rise in the mean on six prompts, up on some and down on others: the old
        # rule (steered mean > baseline mean) called it a pass
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


def test_the_change_is_paired_by_prompt() -> None:
    # every prompt rises by 5 points over a baseline that varies widely between prompts: paired,
    # a clear rise; compared as two unpaired samples (or paired in the wrong order) it is noise.
    # The rows come in different orders on the two sides.
    base = [0.0, 0.45, 0.9, 0.2, 0.7, 0.3]
    b = _rows({f"p{i}": [v] for i, v in enumerate(base)})
    s = _rows({f"p{i}": [base[i] + 0.05] for i in reversed(range(6))})
    got = layer_sign(s, b, n_boot=2000)
    assert got["verdict"] == RAISED and got["change"]["lo"] == pytest.approx(0.05)
    shuffled = _rows({f"p{i}": [base[(i + 1) % 6] + 0.05] for i in range(6)})
    assert layer_sign(shuffled, b, n_boot=2000)["verdict"] == NOT_SHOWN


def test_samples_are_averaged_and_unpaired_or_unscored_prompts_left_out() -> None:
    # the baseline has two samples of p0 (mean 0.2), a prompt the steered side lacks, and a
    # prompt whose steered score is missing
    base = _rows({"p0": [0.0, 0.4], "p1": [0.1], "p2": [0.1], "p3": [0.0], "p4": [0.2]})
    base = pd.concat([base, _rows({"stray": [1.0], "p5": [0.1]})])
    steered = _rows({"p4": [0.6], "p2": [0.9], "p0": [0.8], "p1": [0.7], "p3": [0.5]})
    steered = pd.concat([steered, _rows({"p5": [float("nan")]})])
    got = layer_sign(steered, base, n_boot=500)
    assert got["n"] == 5
    assert got["baseline_refusal"] == pytest.approx((0.2 + 0.1 + 0.1 + 0.0 + 0.2) / 5)
    assert got["change"]["value"] == pytest.approx((0.6 + 0.6 + 0.8 + 0.5 + 0.4) / 5)
    assert got["verdict"] == RAISED


@pytest.mark.parametrize("n", [1, 2, MIN_PROMPTS - 1])
def test_too_few_prompts_get_no_verdict(n: int) -> None:
    # every prompt rises by 50 points: with this few prompts the bootstrap CI excludes 0 anyway
    s, b = _pair([0.1] * n, [0.6] * n)
    got = layer_sign(s, b, n_boot=500)
    assert got["change"]["lo"] > 0 and got["verdict"] == NOT_SHOWN and not got["ok"]
    assert "fewer than the" in why_not_shown(got)
    s, b = _pair([0.1] * MIN_PROMPTS, [0.6] * MIN_PROMPTS)
    assert layer_sign(s, b, n_boot=500)["verdict"] == RAISED


def test_a_ci_touching_zero_is_not_a_verdict() -> None:
    # five prompts unchanged and one up: every bootstrap mean is >= 0, so the CI's low end is 0
    s, b = _pair([0.1] * 6, [0.1] * 5 + [0.9])
    got = layer_sign(s, b, n_boot=2000)
    assert got["change"]["lo"] == 0.0 and got["verdict"] == NOT_SHOWN
    assert why_not_shown(got) == "the change's CI includes 0"


def test_no_paired_prompt_is_not_shown() -> None:
    got = layer_sign(_rows({"a": [0.5]}), _rows({"b": [0.1]}), n_boot=100)
    assert got["n"] == 0 and got["verdict"] == NOT_SHOWN and not got["ok"]
    assert math.isnan(got["change"]["value"]) and math.isnan(got["baseline_refusal"])
