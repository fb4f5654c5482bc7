"""The Findings' "largest" statements and each layer's best operating point, held out: the
setting is chosen on the selection half alone, measured on the report half, and a maximum that
only the selection half shows is not called a replication."""

from __future__ import annotations

from typing import Any

import pandas as pd
import pytest

from steerlab.pipelines.reliability.report._grid import Setting
from steerlab.pipelines.reliability.report.aggregate import summarize
from steerlab.pipelines.reliability.report.holdout import (
    REPORT,
    SELECTION,
    chosen_setting,
    effects,
    halves,
    held_out_operating_point,
    split_halves,
)
from steerlab.pipelines.reliability.report.holdout_findings import (
    NOT_CONFIRMED,
    REPLICATES,
    REVERSES,
    held_out_findings,
    layer_points_lines,
    statement_lines,
    verdict,
)
from steerlab.pipelines.reliability.report.sections import findings_section
from steerlab.pipelines.reliability.report.writeup import held_out_verdicts

N = 40  # prompts per split, 20 in each half
N_BOOT = 200
BASE = Setting(-1, "none", 0.0)
A = Setting(1, "add", 1.0)
B = Setting(1, "add", 2.0)
C = Setting(2, "add", 1.0)
Halves = tuple[float, float]  # (selection half, report half)


def _flags(split: str, rates: Halves) -> tuple[list[str], list[bool]]:
    """Prompt ids of ``split`` and a flag per prompt: in each half, the first prompts (in id
    order) are set, as many as the half's rate asks for."""
    frame = pd.DataFrame({"split": split, "prompt_id": [f"{split}-{i:03d}" for i in range(N)]})
    half = halves(frame)
    rank = frame.groupby(half).cumcount()
    rate = {SELECTION: rates[0], REPORT: rates[1]}
    flags = [r < rate[h] * (N // 2) for r, h in zip(rank, half, strict=True)]
    return list(frame["prompt_id"]), flags


def _cell(s: Setting, spec: dict[str, Halves]) -> list[dict[str, Any]]:
    """Rows of one setting; ``spec``: harm_test/harm_train refusal and benign helpful rates."""
    test = spec.get("harm_test", (0.0, 0.0))
    rows = []
    for split, column, rates in (
        ("harm_test", "is_refusal", test),
        ("harm_train", "is_refusal", spec.get("harm_train", test)),
        ("benign", "is_helpful", spec.get("benign", (1.0, 1.0))),
    ):
        ids, flags = _flags(split, rates)
        for pid, flag in zip(ids, flags, strict=True):
            refusal = flag if column == "is_refusal" else False
            helpful = flag if column == "is_helpful" else not flag
            rows.append(
                {
                    "stage": "baseline" if s == BASE else "sweep",
                    "split": split,
                    "prompt_id": pid,
                    **s.as_dict(),
                    "is_refusal": bool(refusal),
                    "is_helpful": bool(helpful),
                    "is_gibberish": False,
                }
            )
    return rows


def make_results(
    settings: dict[Setting, dict[str, Halves]], base: dict[str, Halves] | None = None
) -> pd.DataFrame:
    rows = _cell(BASE, base or {})
    for s, spec in settings.items():
        rows += _cell(s, spec)
    return pd.DataFrame(rows)


def _findings(results: pd.DataFrame) -> tuple[dict[str, Any], str]:
    held = held_out_findings(results, n_boot=N_BOOT)
    lines, _ = findings_section(summarize(results, n_boot=N_BOOT), None, held)
    return held, "\n".join(lines)


def test_a_maximum_only_the_selection_half_shows_does_not_replicate() -> None:
    # A refuses every selection-half prompt and no report-half prompt (50% overall), C 40% in
    # both halves: A is the largest raise in-sample and on the selection half, and held out it
    # raises nothing.
    results = make_results({A: {"harm_test": (1.0, 0.0)}, C: {"harm_test": (0.4, 0.4)}})
    held, text = _findings(results)
    st = held["statements"]["raise"]
    assert st["in_sample"]["label"] == st["chosen"]["label"] == A.label
    assert st["selection"]["value"] == 1.0 and st["held_out"]["value"] == 0.0
    assert st["held_out"]["paired"] and st["held_out"]["n"] == N // 2
    assert st["verdict"] == NOT_CONFIRMED and not st["replicates"]
    assert "(largest, in-sample and biased upward: L1 add α=1, +50.0 pp" in text
    assert (
        "- Held out (largest raise): the selection half picks **L1 add α=1**, the in-sample "
        "pick too (change vs baseline +100.0 pp" in text
    )
    assert "the change vs baseline is **not confirmed on held-out prompts**" in text
    assert "picks it among all 2 steered settings" in text


@pytest.mark.parametrize("report_a", [0.0, 1.0])
def test_the_choice_sees_only_the_selection_half(report_a: float) -> None:
    # On the selection half A (layer 1) refuses everything, B (layer 1) and C (layer 2) half the
    # prompts; on the report half B and C refuse everything and A ``report_a``. Over all prompts
    # B and C win (75%) whenever A fails on the report half, so a choice made on all prompts
    # would name them; the held-out choice must stay A and only the held-out figure move.
    results = make_results(
        {
            A: {"harm_test": (1.0, report_a)},
            B: {"harm_test": (0.5, 1.0)},
            C: {"harm_test": (0.5, 1.0)},
        }
    )
    held = held_out_findings(results, n_boot=N_BOOT)
    for name in ("raise", "strongest"):
        st = held["statements"][name]
        assert st["chosen"]["label"] == A.label
        assert st["held_out"]["refusal"]["value"] == report_a
    assert held["statements"]["raise"]["replicates"] is (report_a == 1.0)
    layer1 = held["layers"][0]
    assert layer1["layer"] == 1 and layer1["chosen"]["label"] == A.label
    assert layer1["n_settings"] == 2  # A and B compete at layer 1
    assert layer1["held_out"]["gain"]["value"] == report_a
    assert layer1["verdict"] == (REPLICATES if report_a else NOT_CONFIRMED)
    table = "\n".join(layer_points_lines(held))
    in_sample_differs = report_a == 0.0  # all prompts: B (75%) beats A (50%) at layer 1
    assert ("L1 add α=1 (of 2) ≠ in-sample" in table) is in_sample_differs
    # the lead: A (layer 1) ahead of C (layer 2) on the selection half
    lead = held["lead"]
    assert (lead["a"]["label"], lead["b"]["label"]) == (A.label, C.label)
    assert lead["held_out"]["diff"] == report_a - 1.0


def test_real_effects_replicate() -> None:
    # Baseline refuses half the harm_test prompts. A raises refusal to 100% and C lowers it to
    # 0% in both halves; B opens a train−test gap and costs all benign helpfulness in both.
    results = make_results(
        {
            A: {"harm_test": (1.0, 1.0)},
            B: {"harm_test": (0.5, 0.5), "harm_train": (1.0, 1.0), "benign": (0.0, 0.0)},
            C: {"harm_test": (0.0, 0.0)},
        },
        base={"harm_test": (0.5, 0.5)},
    )
    held, text = _findings(results)
    expected = {"raise": A, "lower": C, "gap": B, "drop": B, "strongest": A}
    for name, s in expected.items():
        st = held["statements"][name]
        assert st["chosen"]["label"] == st["in_sample"]["label"] == s.label, name
    for name in ("raise", "lower", "gap", "drop"):
        assert held["statements"][name]["verdict"] == REPLICATES, name
    lower = held["statements"]["lower"]["held_out"]
    assert lower["value"] == -0.5 and lower["hi"] < 0
    assert held["statements"]["gap"]["held_out"]["value"] == 0.5
    assert held["statements"]["drop"]["held_out"]["value"] == 1.0
    # A costs nothing, so the strongest setting's benign drop is 0 and cannot replicate
    assert held["statements"]["strongest"]["verdict"] == NOT_CONFIRMED
    assert text.count("replicates on held-out prompts (same sign, CI excludes 0)") == 4
    assert "Largest (in-sample, biased upward) at L1 add α=2: gap +50.0 pp" in text
    assert "- Held out (largest gap): the selection half picks **L1 add α=2**" in text


def test_a_reversal_and_an_empty_choice_are_named() -> None:
    # A lowers refusal on the selection half and raises it on the report half
    results = make_results(
        {A: {"harm_test": (0.0, 1.0)}, C: {"harm_test": (0.5, 0.5)}},
        base={"harm_test": (0.5, 0.5)},
    )
    held = held_out_findings(results, n_boot=N_BOOT)
    lower = held["statements"]["lower"]
    assert lower["chosen"]["label"] == A.label and lower["verdict"] == REVERSES
    assert "is **reversed on held-out prompts**" in "\n".join(statement_lines(held, "lower"))
    # nothing costs benign helpfulness or opens a gap on the selection half
    assert held["statements"]["drop"]["chosen"] is None
    assert statement_lines(held, "gap") == [
        "- Held out (largest gap): no steered setting refuses more on harm_train than on "
        "harm_test on the selection half."
    ]


@pytest.mark.parametrize(
    ("ci", "sign", "expected"),
    [
        ((0.2, 0.1, 0.3), 1, REPLICATES),
        ((-0.2, -0.3, -0.1), -1, REPLICATES),
        ((0.1, -0.1, 0.3), 1, NOT_CONFIRMED),
        ((-0.2, -0.3, -0.1), 1, REVERSES),
        ((0.2, 0.1, 0.3), 0, NOT_CONFIRMED),
    ],
)
def test_verdict(ci: tuple[float, float, float], sign: int, expected: str) -> None:
    assert verdict(*ci, sign=sign) == expected


def test_without_results_nothing_is_held_out() -> None:
    empty = make_results({}).iloc[:0]
    assert held_out_findings(empty, n_boot=N_BOOT) == {"available": False}
    assert statement_lines({"available": False}, "raise") == []
    assert layer_points_lines(None) == []


@pytest.mark.parametrize("report_train", [1.0, 0.5])
def test_a_gap_the_baseline_already_has_does_not_replicate(report_train: float) -> None:
    # The baseline refuses half the harm_train prompts and no harm_test prompt: a real gap of
    # its own. A refuses every harm_train prompt of the selection half and ``report_train`` of
    # the report half's: held out, its gap is above 0 either way, but beyond the baseline's
    # only when ``report_train`` is 1.
    results = make_results(
        {A: {"harm_train": (1.0, report_train)}}, base={"harm_train": (0.5, 0.5)}
    )
    st = held_out_findings(results, n_boot=N_BOOT)["statements"]["gap"]
    assert st["chosen"]["label"] == A.label and st["needs_excess"]
    assert st["held_out"]["lo"] > 0
    assert st["held_out"]["excess"]["value"] == report_train - 0.5
    assert st["replicates"] is (report_train == 1.0)
    text = "\n".join(statement_lines({"available": True, "statements": {"gap": st}}, "gap"))
    assert "beyond the baseline's own gap (paired)" in text


def test_the_gap_at_the_operating_point_is_measured_on_the_report_half() -> None:
    # A, the only steered setting and so the operating point, refuses half of harm_test in both
    # halves, and every harm_train prompt of the selection half but only half of the report
    # half's: its gap is +50 pp where it was chosen, +0 pp held out, +25 pp on all prompts.
    results = make_results({A: {"harm_test": (0.5, 0.5), "harm_train": (1.0, 0.5)}})
    op = held_out_operating_point(results, n_boot=N_BOOT)
    assert chosen_setting(op) == A and op["held_out"]["gap"]["value"] == 0.0
    assert op["held_out"]["n_harm_train"] == N // 2 and "gap" not in op["selection"]
    selection, _ = split_halves(results)
    assert effects(selection, A, N_BOOT, 0, gap=True)["gap"]["value"] == 0.5
    summary = summarize(results, n_boot=N_BOOT)
    held = held_out_findings(results, n_boot=N_BOOT)
    text = "\n".join(findings_section(summary, A, held, op)[0])
    assert (
        "At the operating point (L1 add α=1, chosen on the selection half) the gap on the "
        "report half is +0.0 pp" in text
    )
    without = "\n".join(findings_section(summary, A, held)[0])
    assert "At the operating point (L1 add α=1) the gap on all prompts is +25.0 pp" in without


def _held(**verdicts: str) -> dict[str, Any]:
    return {"available": True, "statements": {k: {"verdict": v} for k, v in verdicts.items()}}


def test_a_finding_counts_only_where_its_largest_instance_replicates() -> None:
    both = {"generalization_failure": True, "side_effect": True}
    ok, why = held_out_verdicts(both, _held(gap=NOT_CONFIRMED, drop=REVERSES))
    assert not ok
    assert why == [
        "generalization failure: detected on all prompts, but its largest instance is not "
        "confirmed on held-out prompts",
        "side-effect tradeoff: detected on all prompts, but its largest instance is reversed on "
        "held-out prompts",
    ]
    ok, why = held_out_verdicts(both, _held(gap=NOT_CONFIRMED, drop=REPLICATES))
    assert ok and why[1].endswith("replicates on held-out prompts")
    gen_only = {"generalization_failure": True, "side_effect": False}
    assert held_out_verdicts(gen_only, _held(gap=NOT_CONFIRMED, drop=REPLICATES))[0] is False
    assert held_out_verdicts(gen_only, _held(gap=REPLICATES, drop=NOT_CONFIRMED))[0] is True
    # the selection half chose nothing to hold out (no verdict): not counted, and said so
    none = {"available": True, "statements": {"gap": {"chosen": None}, "drop": {"chosen": None}}}
    ok, why = held_out_verdicts(gen_only, none)
    assert not ok and why[0] == (
        "generalization failure: detected on all prompts, but the selection half names no instance"
    )
    # without held-out checks the in-sample verdict stands, and says so
    ok, why = held_out_verdicts(gen_only, {"available": False})
    assert ok and why == [
        "generalization failure: detected on all prompts (no held-out check)",
        "side-effect tradeoff: not detected",
    ]
    assert held_out_verdicts({"generalization_failure": False, "side_effect": False}, None) == (
        False,
        ["generalization failure: not detected", "side-effect tradeoff: not detected"],
    )
