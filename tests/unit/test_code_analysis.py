"""The analysis behind ``select-coefficients``: samples, flips, drift, CIs and the rule."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from steerlab.metrics.stats import wilson_ci
from steerlab.pipelines.code.analysis import (
    compare,
    noise_floor,
    problem_samples,
    select,
    selection_record,
    similarity,
    strata,
    stratified_sample,
    summarize,
)
from steerlab.pipelines.code.config import NOISE, SelectionCfg


def test_wilson_known_values() -> None:
    # textbook: 0 of 10 -> [0, 0.2775]; 10 of 10 -> [0.7225, 1]; 5 of 10 -> [0.2366, 0.7634]
    assert wilson_ci(0, 10)[1:] == pytest.approx((0.0, 0.27753), abs=1e-4)
    assert wilson_ci(10, 10)[1:] == pytest.approx((0.72247, 1.0), abs=1e-4)
    assert wilson_ci(5, 10) == pytest.approx((0.5, 0.23659, 0.76341), abs=1e-4)
    assert all(math.isnan(x) for x in wilson_ci(0, 0))
    with pytest.raises(ValueError):
        wilson_ci(3, 2)


def test_strata_are_tertiles_of_distinct_values() -> None:
    assert strata([1, 1, 1, 2, 3, 4, 5, 6]) == [0, 0, 0, 0, 1, 1, 2, 2]
    assert strata([2, 2, 2]) == [0, 0, 0]


def test_stratified_sample_covers_strata_and_is_deterministic() -> None:
    ids = [f"t{i}" for i in range(30)]
    cx = [1] * 20 + [3] * 6 + [7] * 4  # skewed: most problems are simple
    a = stratified_sample(ids, cx, 10, seed=1)
    assert a == stratified_sample(ids, cx, 10, seed=1)
    assert len(a) == len(set(a)) == 10
    got = {cx[ids.index(i)] for i in a}
    assert got == {1, 3, 7}  # every stratum is represented
    # proportional: the 20 simple problems get the most
    assert sum(cx[ids.index(i)] == 1 for i in a) >= 5
    assert stratified_sample(ids, cx, 10, seed=2) != a
    assert stratified_sample(ids[:4], cx[:4], 10, seed=0) == ids[:4]  # n >= len: all of them


def test_problem_samples_differ_per_coefficient_unless_shared() -> None:
    ids = [f"t{i}" for i in range(40)]
    cx = [i % 5 + 1 for i in range(40)]
    per = problem_samples(ids, cx, [1.0, 3.0, 10.0], 10, 0, same=False)
    assert len({tuple(v) for v in per.values()}) == 3
    same = problem_samples(ids, cx, [1.0, 3.0, 10.0], 10, 0, same=True)
    assert len({tuple(v) for v in same.values()}) == 1


def test_similarity() -> None:
    assert similarity("def f(x):\n    return x", "def f(x):\n    return x") == (1.0, 1.0)
    assert similarity("", "") == (1.0, 1.0)
    tok, char = similarity("def f(x): return x + 1", "def f(x):  return x+1")
    assert tok == 1.0  # whitespace is not a token
    assert char < 1.0
    assert similarity("abc", "xyz") == (0.0, 0.0)


def _baseline() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "task_id": ["a", "b", "c", "d"],
            "status": ["pass", "pass", "fail", "sandbox_error"],
            "code": ["x = 1", "y = 2", "z = 3", "w = 4"],
        }
    )


def _grid(rows: list[tuple[str, str, float, str, str]]) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "task_id": [r[0] for r in rows],
            "vector": [r[1] for r in rows],
            "coefficient": [r[2] for r in rows],
            "status": [r[3] for r in rows],
            "code": [r[4] for r in rows],
            "syntax_ok": [r[3] != "syntax_error" for r in rows],
        }
    )


def test_compare_flips_and_sandbox_errors() -> None:
    grid = _grid(
        [
            ("a", "v", 1.0, "fail", "x = 2"),  # pass -> fail
            ("b", "v", 1.0, "pass", "y = 2"),  # unchanged
            ("c", "v", 1.0, "pass", "z = 3"),  # fail -> pass
            ("d", "v", 1.0, "fail", "w = 4"),  # baseline sandbox error: left out
            ("a", "v", 3.0, "sandbox_error", ""),  # our error: left out
        ]
    )
    cmp = compare(grid, _baseline())
    assert cmp["valid"].tolist() == [True, True, True, False, False]
    assert cmp["pass_to_fail"].tolist() == [True, False, False, False, False]
    assert cmp["fail_to_pass"].tolist() == [False, False, True, False, False]
    assert cmp["flipped"].sum() == 2
    assert cmp.loc[1, "char_similarity"] == 1.0
    with pytest.raises(KeyError):
        compare(_grid([("zz", "v", 1.0, "pass", "")]), _baseline())


def test_summarize_rates_and_intended_flip() -> None:
    grid = _grid(
        [
            ("a", "good", 1.0, "pass", "x = 1"),
            ("b", "good", 1.0, "pass", "y = 2"),
            ("c", "good", 1.0, "pass", "z = 3"),  # the only fail->pass possible: it flips
            ("a", NOISE, 0.0, "pass", "x = 1"),
            ("c", NOISE, 0.0, "fail", "z = 3"),
        ]
    )
    s = summarize(compare(grid, _baseline()), {"good": "correct"})
    good = s[s["vector"] == "good"].iloc[0]
    assert good["n_valid"] == 3 and good["flips"] == 1
    assert good["flip_rate"] == pytest.approx(1 / 3)
    assert good["intended_rate"] == 1.0 and good["n_could_flip"] == 1
    assert good["status_pass"] == 3
    floor = noise_floor(s)
    assert floor["n"] == 2 and floor["flips"] == 0 and floor["flip_rate_hi"] > 0


def _summary(rows: list[dict[str, float]]) -> pd.DataFrame:
    base = {
        "vector": "v",
        "intent": "correct",
        "flip_rate": 0.0,
        "flip_rate_lo": 0.0,
        "flip_rate_hi": 0.0,
        "intended_rate_lo": 0.0,
        "intended_rate_hi": 1.0,
        "token_similarity": 0.9,
        "n_valid": 10,
    }
    return pd.DataFrame([{**base, **r} for r in rows])


def test_select_rule() -> None:
    s = _summary(
        [
            {
                "coefficient": 1,
                "intended_rate": 0.1,
                "syntax_valid_rate": 1.0,
                "char_similarity": 0.95,
            },
            {
                "coefficient": 10,
                "intended_rate": 0.4,
                "syntax_valid_rate": 0.95,
                "char_similarity": 0.7,
            },
            {
                "coefficient": 30,
                "intended_rate": 0.4,
                "syntax_valid_rate": 0.9,
                "char_similarity": 0.6,
            },
            # more flips, but the code is broken or unrecognizable: not allowed
            {
                "coefficient": 100,
                "intended_rate": 0.8,
                "syntax_valid_rate": 0.5,
                "char_similarity": 0.6,
            },
            {
                "coefficient": 300,
                "intended_rate": 0.9,
                "syntax_valid_rate": 1.0,
                "char_similarity": 0.1,
            },
        ]
    )
    sel = SelectionCfg()
    got = select(s, sel, floor_hi=0.05)["v"]
    assert got["suggested"] == 10.0  # the tie at 0.4 goes to the smaller coefficient
    assert got["selected"] == 10.0 and not got["overridden"]
    # nothing above the noise floor: no suggestion
    assert select(s, sel, floor_hi=0.95)["v"]["suggested"] is None
    over = select(s, SelectionCfg(override={"v": 30.0}), floor_hi=0.05)["v"]
    assert over["selected"] == 30.0 and over["suggested"] == 10.0 and over["overridden"]
    rec = selection_record(s, sel, {"n": 0})
    assert "rule" in rec and "timestamp" in rec and rec["vectors"]["v"]["suggested"] == 10.0
