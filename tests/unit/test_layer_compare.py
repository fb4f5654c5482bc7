"""Layer comparison at matched α: planted differences are found, equal layers are not, pairing.

Each fabricated run has one baseline and, per layer, an ``add`` sweep at α ∈ {0, 1} over the same
``N`` prompts per split; outcomes are set prompt by prompt so every rate and every paired
difference is known exactly.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd
import pytest

from steerlab.metrics.stats import bootstrap_ci, bootstrap_contrast_ci, bootstrap_diff_ci
from steerlab.pipelines.reliability.report import summarize
from steerlab.pipelines.reliability.report._fmt import pp_ci
from steerlab.pipelines.reliability.report.layers import (
    EFFECTS,
    checklist_note,
    layer_comparison,
    layer_section,
)

N = 60
N_BOOT = 400
Bools = npt.NDArray[np.bool_]


def first(k: int) -> Bools:
    """Prompts ``0 .. k-1`` true, the rest false."""
    return np.arange(N) < k


def span(start: int, stop: int) -> Bools:
    return (np.arange(N) >= start) & (np.arange(N) < stop)


# A cell: (harm_train refusal, harm_test refusal, benign helpful) flags per prompt.
Cell = tuple[Bools, Bools, Bools]
BASE: Cell = (first(12), first(12), first(54))


def _rows(
    stage: str, layer: int, intervention: str, alpha: float, cell: Cell
) -> list[dict[str, Any]]:
    rows = []
    for split, values in zip(("harm_train", "harm_test", "benign"), cell, strict=True):
        for i in range(N):
            refusal = bool(values[i]) if split != "benign" else False
            rows.append(
                {
                    "stage": stage,
                    "split": split,
                    "prompt_id": f"{split}-{i:03d}",
                    "layer": layer,
                    "intervention": intervention,
                    "alpha": alpha,
                    "is_refusal": refusal,
                    "is_helpful": bool(values[i]) if split == "benign" else not refusal,
                    "is_gibberish": False,
                    "n_tokens": 20,
                    "mean_entropy": 1.0,
                }
            )
    return rows


def make_run(steered: dict[int, Cell]) -> pd.DataFrame:
    """Baseline + per layer ``add`` α=0 (a baseline copy) and α=1 (``steered[layer]``)."""
    rows = _rows("baseline", -1, "none", 0.0, BASE)
    for layer, cell in steered.items():
        rows += _rows("sweep", layer, "add", 0.0, BASE)
        rows += _rows("sweep", layer, "add", 1.0, cell)
    return pd.DataFrame(rows)


def compare(results: pd.DataFrame) -> dict[str, Any]:
    return layer_comparison(results, summarize(results, n_boot=N_BOOT), n_boot=N_BOOT)


def find(check: dict[str, Any], effect: str, a: int, b: int) -> dict[str, Any]:
    (row,) = [
        r
        for r in check["comparisons"]
        if r["effect"] == effect and {r["layer_a"], r["layer_b"]} == {a, b}
    ]
    return row


# --- the contrast helper reuses the existing bootstrap draws ------------------------------------


def test_contrast_ci_reduces_to_the_existing_bootstraps() -> None:
    rng = np.random.default_rng(1)
    a, b = rng.random(50) < 0.4, rng.random(70) < 0.6
    assert bootstrap_contrast_ci([(1.0, a)], seed=3) == bootstrap_ci(a, seed=3)
    got = bootstrap_contrast_ci([(1.0, a), (-1.0, b)], seed=3)
    assert got == pytest.approx(bootstrap_diff_ci(a, b, seed=3), abs=1e-12)
    twice = bootstrap_contrast_ci([(2.0, a)], seed=3)
    assert twice == pytest.approx(tuple(2 * v for v in bootstrap_ci(a, seed=3)), abs=1e-12)
    assert all(math.isnan(v) for v in bootstrap_contrast_ci([(1.0, a), (1.0, [])]))
    assert bootstrap_contrast_ci([(1.0, [0.25]), (-1.0, [1.0])]) == (-0.75, -0.75, -0.75)


# --- layer_comparison ----------------------------------------------------------------------------


def test_planted_benign_cost_difference_is_the_headline() -> None:
    # add α=1: layer 15 loses 24 of the 54 helpful benign answers (+40 pp), layer 22 loses none.
    results = make_run({15: (BASE[0], BASE[1], first(30)), 22: (BASE[0], BASE[1], first(54))})
    check = compare(results)
    h = check["headline"]
    assert h is not None and h["effect"] == "benign_drop"
    assert (h["layer_a"], h["layer_b"], h["intervention"], h["alpha"]) == (15, 22, "add", 1.0)
    assert h["diff"] == pytest.approx(0.4) and h["lo"] > 0.25 and h["paired"]
    assert h["effect_a"]["value"] == pytest.approx(0.4) and h["effect_b"]["value"] == 0.0
    # nothing else differs: refusal and gap are identical at both layers
    assert check["n_excluding_zero"] == 1 and check["n_comparisons"] == len(EFFECTS)
    assert checklist_note(check) == (
        f"add α=1, benign cost at layer 15 vs 22: {pp_ci(h['diff'], h['lo'], h['hi'])}"
    )
    text = "\n".join(layer_section(results, summarize(results, n_boot=N_BOOT), check, N_BOOT))
    assert (
        "**Largest supported layer difference** (in-sample: chosen and scored on the same " in text
    )
    assert "prompts): At add α=1, benign cost is +40.0 pp" in text
    assert "at layer 15 vs +0.0 pp" in text and "(paired over 60 prompts)" in text


def test_equal_layers_support_no_difference() -> None:
    # Same rates at every layer, but different prompts refuse: the paired differences are +1 on
    # 15 prompts and -1 on 15 others, so every contrast is 0 with a CI around it.
    cells = {
        8: (span(0, 30), span(0, 30), span(0, 45)),
        15: (span(15, 45), span(15, 45), span(15, 60)),
        22: (span(30, 60), span(30, 60), span(0, 30) | span(45, 60)),
    }
    check = compare(make_run(cells))
    assert check["n_comparisons"] == 3 * len(EFFECTS)
    assert check["headline"] is None and checklist_note(check) is None
    for r in check["comparisons"]:
        assert r["diff"] == pytest.approx(0.0, abs=1e-12)
        assert r["lo"] < 0 < r["hi"] and not r["excludes_zero"]


def test_shared_prompts_are_paired_and_narrower_than_independent_resampling() -> None:
    # Layers agree on every harm_test prompt but 6, where only layer 8 refuses: +10 pp.
    a = (BASE[0], first(30), BASE[2])
    b = (BASE[0], first(24), BASE[2])
    results = make_run({8: a, 12: b})
    row = find(compare(results), "refusal_gain", 8, 12)
    assert row["paired"] and row["n_paired"] == N
    assert (row["layer_a"], row["layer_b"]) == (8, 12)
    assert row["diff"] == pytest.approx(0.1)
    assert row["excludes_zero"]  # 6 of 60 paired differences, none negative
    independent = bootstrap_diff_ci(a[1], b[1], n_boot=N_BOOT)
    assert independent[1] < 0 < independent[2]  # 50% vs 40% of 60 unpaired: CIs overlap 0
    assert row["hi"] - row["lo"] < 0.6 * (independent[2] - independent[1])


def test_different_prompts_fall_back_to_independent_resampling() -> None:
    a = (BASE[0], first(30), BASE[2])
    b = (BASE[0], first(24), BASE[2])
    results = make_run({8: a, 12: b})
    other = (results["layer"] == 12) & (results["split"] == "harm_test")
    results.loc[other, "prompt_id"] = results.loc[other, "prompt_id"] + "-other"
    row = find(compare(results), "refusal_gain", 8, 12)
    assert not row["paired"] and row["n_paired"] == 0
    d, lo, hi = bootstrap_diff_ci(a[1], b[1], n_boot=N_BOOT)
    assert (row["diff"], row["lo"], row["hi"]) == pytest.approx((d, lo, hi))
    assert not row["excludes_zero"]
    # the other effects still share their prompts
    assert find(compare(results), "benign_drop", 8, 12)["paired"]


def test_gap_difference_is_train_difference_minus_test_difference() -> None:
    # Layer 3 refuses 30 more harm_train prompts than layer 1, on harm_test only 6 more:
    # gap(3) − gap(1) = 0.5 − 0.1 = 0.4.
    results = make_run({1: (first(12), first(12), BASE[2]), 3: (first(42), first(18), BASE[2])})
    check = compare(results)
    row = find(check, "gap", 1, 3)
    assert (row["layer_a"], row["layer_b"]) == (3, 1)
    assert row["diff"] == pytest.approx(0.4) and row["excludes_zero"]
    assert row["paired"] and row["n_paired"] == 2 * N  # harm_train and harm_test pairs
    assert row["effect_a"]["value"] - row["effect_b"]["value"] == pytest.approx(0.4)
    assert check["best"]["gap"] is row


def test_comparisons_are_oriented_and_skip_unsteered_cells() -> None:
    rng = np.random.default_rng(0)
    cells = {
        L: (rng.random(N) < 0.3, rng.random(N) < 0.2 + 0.2 * k, rng.random(N) < 0.9 - 0.2 * k)
        for k, L in enumerate((4, 8, 12))
    }
    check = compare(make_run(cells))
    assert {(r["intervention"], r["alpha"]) for r in check["comparisons"]} == {("add", 1.0)}
    for r in check["comparisons"]:
        assert r["diff"] >= 0 and r["lo"] <= r["hi"]
        assert r["support"] == r["lo"] and r["excludes_zero"] == (r["lo"] > 0)
        va, vb = r["effect_a"]["value"], r["effect_b"]["value"]
        assert va - vb == pytest.approx(r["diff"], abs=1e-12)


def test_a_single_layer_has_nothing_to_compare() -> None:
    check = compare(make_run({8: (BASE[0], first(40), BASE[2])}))
    assert not check["available"] and check["headline"] is None
