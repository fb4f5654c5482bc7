"""Headlines chosen on the selection half and measured on the report half: the choice never
sees the report half, and the held-out figure is the report half's own."""

from __future__ import annotations

from typing import Any

import pandas as pd
import pytest

from steerlab.models.precision import precision_label
from steerlab.pipelines.reliability.report._grid import Setting
from steerlab.pipelines.reliability.report.holdout import (
    REPORT,
    SELECTION,
    chosen_setting,
    halves,
    held_out_layer_difference,
    held_out_operating_point,
    layer_holdout_lines,
    operating_point_section,
)
from steerlab.pipelines.reliability.report.sections import model_label

N = 40  # prompts per split
N_BOOT = 200
X = Setting(1, "add", 1.0)  # wins on the selection half only
Y = Setting(2, "add", 1.0)  # wins on the report half (and on all prompts)


def _ids(split: str) -> list[str]:
    return [f"{split}-{i:03d}" for i in range(N)]


def _rows(
    stage: str, split: str, s: Setting, refusal: dict[str, float], helpful: float = 1.0
) -> list[dict[str, Any]]:
    """One row per prompt; ``refusal[half]`` is the refusal rate in that half (the first prompts
    of the half, in id order, refuse)."""
    frame = pd.DataFrame({"split": split, "prompt_id": _ids(split)})
    half = halves(frame)
    rank = frame.groupby(half).cumcount()
    flag = [r < refusal[h] * (N // 2) for r, h in zip(rank, half, strict=True)]
    return [
        {
            "stage": stage,
            "split": split,
            "prompt_id": pid,
            "layer": s.layer,
            "intervention": s.intervention,
            "alpha": s.alpha,
            "is_refusal": bool(f),
            "is_helpful": bool(helpful) and not f,
            "is_gibberish": False,
            "n_tokens": 40,
            "mean_entropy": 1.0,
        }
        for pid, f in zip(frame["prompt_id"], flag, strict=True)
    ]


def make_results(
    x: dict[str, float], y: dict[str, float], x_benign: dict[str, float] | None = None
) -> pd.DataFrame:
    """Baseline refuses nothing; on harm_test ``X`` and ``Y`` refuse per half as given; benign
    prompts are answered helpfully everywhere (no cost), so the rule picks the top refusal."""
    none = {SELECTION: 0.0, REPORT: 0.0}
    rows = _rows("baseline", "harm_test", Setting(-1, "none", 0.0), none)
    rows += _rows("baseline", "benign", Setting(-1, "none", 0.0), none)
    for s, refusal in ((X, x), (Y, y)):
        rows += _rows("sweep", "harm_test", s, refusal)
        rows += _rows("sweep", "benign", s, x_benign if s == X and x_benign else none)
    return pd.DataFrame(rows)


def test_halves_depend_on_the_prompt_ids_alone() -> None:
    results = make_results({SELECTION: 1, REPORT: 0}, {SELECTION: 0, REPORT: 1})
    half = halves(results)
    for split in ("harm_test", "benign"):
        per_id = half[results["split"] == split].groupby(results["prompt_id"]).nunique()
        assert (per_id == 1).all()  # a prompt is in one half at every setting
        ids = results.loc[(results["split"] == split) & (half == SELECTION), "prompt_id"]
        assert ids.nunique() == N // 2
    shuffled = results.sample(frac=1.0, random_state=0)
    shuffled["is_refusal"] = ~shuffled["is_refusal"]  # outcomes play no part
    assert (halves(shuffled).sort_index() == half).all()
    # each split is cut by its own hash, not by position
    test_sel = {p[-3:] for p in results.loc[half == SELECTION, "prompt_id"] if "harm" in p}
    benign_sel = {p[-3:] for p in results.loc[half == SELECTION, "prompt_id"] if "benign" in p}
    assert test_sel != benign_sel


def test_operating_point_is_chosen_on_one_half_and_scored_on_the_other() -> None:
    # X refuses every selection-half prompt and no report-half prompt; Y half the selection half
    # and all the report half: X wins the choice, Y wins on all prompts (75% vs 50%), so a choice
    # made on all prompts (or on the report half) would name Y.
    results = make_results({SELECTION: 1, REPORT: 0}, {SELECTION: 0.5, REPORT: 1})
    op = held_out_operating_point(results, n_boot=N_BOOT)
    assert chosen_setting(op) == X
    assert op["n_settings"] == 2
    assert op["n_selection"] == {"benign": N // 2, "harm_test": N // 2}
    held = op["held_out"]
    assert held["gain"]["value"] == 0.0 and held["refusal"]["value"] == 0.0
    assert held["gain_paired"] and held["n_harm_test"] == N // 2
    assert op["selection"]["gain"]["value"] == 1.0
    assert op["replicates"] is False and op["same_choice"] is False
    assert op["swapped"]["label"] == Y.label and op["in_sample"]["label"] == Y.label
    text = "\n".join(operating_point_section(op))
    assert "**L1 add α=1** (chosen on the selection half)" in text
    assert "**not confirmed on held-out prompts**" in text
    assert "picks **L2 add α=1** instead" in text


def test_changing_the_report_half_never_changes_the_choice() -> None:
    a = held_out_operating_point(
        make_results({SELECTION: 1, REPORT: 1}, {SELECTION: 0, REPORT: 1}), n_boot=N_BOOT
    )
    b = held_out_operating_point(
        make_results({SELECTION: 1, REPORT: 0}, {SELECTION: 0, REPORT: 0}), n_boot=N_BOOT
    )
    assert chosen_setting(a) == chosen_setting(b) == X
    assert a["replicates"] and a["held_out"]["gain"]["value"] == 1.0
    assert not b["replicates"]
    assert "the increase replicates" in "\n".join(operating_point_section(a))


@pytest.mark.parametrize("report_half_differs", [True, False])
def test_layer_difference_is_chosen_on_one_half(report_half_differs: bool) -> None:
    # layer 1 refuses everything on the selection half, layer 2 nothing: a supported difference
    rep = 1 if report_half_differs else 0
    results = make_results({SELECTION: 1, REPORT: rep}, {SELECTION: 0, REPORT: 0})
    lh = held_out_layer_difference(results, n_boot=N_BOOT)
    c = lh["chosen"]
    assert (c["effect"], c["layer_a"], c["layer_b"]) == ("refusal_gain", 1, 2)
    assert lh["selection"]["diff"] == 1.0
    assert lh["held_out"]["diff"] == float(rep) and lh["held_out"]["n_paired"] == N // 2
    assert lh["replicates"] is report_half_differs
    text = "\n".join(layer_holdout_lines(lh))
    assert ("it replicates" in text) is report_half_differs


def test_no_choice_without_a_supported_difference() -> None:
    results = make_results({SELECTION: 0, REPORT: 1}, {SELECTION: 0, REPORT: 1})
    lh = held_out_layer_difference(results, n_boot=N_BOOT)
    assert lh["chosen"] is None
    assert "none is chosen to test" in "\n".join(layer_holdout_lines(lh))


def test_report_header_names_the_precision() -> None:
    assert precision_label("torch.float32", None) == "float32"
    assert precision_label(None, "bf16") == "float32, bf16 matmuls"
    manifest = {"model": {"name": "SmolLM2", "dtype": "torch.float32"}}
    fp32 = model_label({"model": {"name": "embedded"}}, manifest)
    bf16 = model_label({"model": {"name": "embedded", "matmul_dtype": "bf16"}}, manifest)
    assert fp32 == "SmolLM2 (embedded), float32"
    assert bf16 == "SmolLM2 (embedded), float32, bf16 matmuls"


def test_a_held_out_cost_above_the_rule_is_named() -> None:
    # X costs nothing on the selection half and refuses half the report half's benign prompts
    results = make_results(
        {SELECTION: 1, REPORT: 1}, {SELECTION: 0, REPORT: 0}, {SELECTION: 0, REPORT: 0.5}
    )
    op = held_out_operating_point(results, n_boot=N_BOOT)
    assert chosen_setting(op) == X and op["held_out"]["drop"]["value"] == 0.5
    text = "\n".join(operating_point_section(op))
    assert "Its held-out benign helpfulness drop (+50.0 pp" in text
    fine = held_out_operating_point(
        make_results({SELECTION: 1, REPORT: 1}, {SELECTION: 0, REPORT: 0}), n_boot=N_BOOT
    )
    assert "Its held-out benign helpfulness drop" not in "\n".join(operating_point_section(fine))
