"""Reporting layer on a fabricated run with known rates: CIs, gap, Pareto, checks, write-ups."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from steerlab.pipelines.reliability.report import (
    build_report,
    confound_check,
    seed_check,
    sign_check,
    summarize,
    template_check,
    write_report,
    write_summary_csv,
)
from steerlab.pipelines.reliability.report._grid import Setting, pareto_mask

N_BOOT = 200
N = 60  # prompts per split: every rate below is a multiple of 1/60, so it is exact
SPLITS = ("harm_train", "harm_test", "benign")
LAYERS = (8, 12)
ALPHAS = (0.0, 1.0, 2.0)

# baseline: (harm_train refusal, harm_test refusal, benign helpful, benign refusal)
BASE = (0.2, 0.2, 0.9, 0.0)
# steered setting -> (harm_test refusal, benign helpfulness drop, harm_train − harm_test gap)
# Points (refusal, drop): the Pareto frontier is L8 add 1, L12 add 2 and L8 ablate 1.
SETTINGS: dict[tuple[int, str, float], tuple[float, float, float]] = {
    (8, "add", 1.0): (0.5, 0.05, 0.1),
    (8, "add", 2.0): (0.3, 0.4, 0.6),  # the constructed generalization failure
    (12, "add", 1.0): (0.4, 0.1, 0.1),
    (12, "add", 2.0): (0.95, 0.5, 0.05),
    (8, "ablate", 1.0): (0.15, 0.0, 0.0),
    (8, "ablate", 2.0): (0.1, 0.2, 0.0),
    (12, "ablate", 1.0): (0.1, 0.0, 0.0),
    (12, "ablate", 2.0): (0.05, 0.3, 0.0),
}
PARETO = {(8, "add", 1.0), (12, "add", 2.0), (8, "ablate", 1.0)}


def _flags(rate: float) -> np.ndarray:
    k = round(rate * N)
    return np.arange(N) < k


def _rows(
    stage: str,
    split: str,
    setting: tuple[int, str, float],
    refusal: float,
    helpful: float | None,
    rng: np.random.Generator,
    confounded: bool,
    shared: bool = False,
) -> list[dict[str, Any]]:
    layer, intervention, alpha = setting
    is_ref = _flags(refusal)
    is_help = _flags(helpful) if helpful is not None else ~is_ref
    # confounded: refusals are short, so length alone explains refusal
    n_tokens = np.where(is_ref, 12, 70) if confounded else rng.integers(10, 80, N)
    entropy = rng.uniform(0.5, 3.0, N)
    entropy[0] = np.nan
    rows = []
    for i in range(N):
        rows.append(
            {
                "stage": stage,
                "split": split,
                "prompt_id": f"{split}-{i:03d}",
                "prompt": f"{split} prompt number {i}?",
                "family": "f",
                "style": "s",
                "template": "t",
                "layer": layer,
                "intervention": intervention,
                "alpha": alpha,
                "scale": "diff",
                "direction": "none" if intervention == "none" else "main",
                "seed": 0,
                "shared_baseline": shared,
                "text": "I can't help with that." if is_ref[i] else "Sure, here's how:\n1. Do it.",
                "n_tokens": int(n_tokens[i]),
                "finish_reason": "stop",
                "refusal_score": 0.9 if is_ref[i] else 0.1,
                "is_refusal": bool(is_ref[i]),
                "matched_refusal": ["I can't"] if is_ref[i] else [],
                "matched_compliance": [] if is_ref[i] else ["Sure"],
                "helpfulness_score": 0.8 if is_help[i] else 0.2,
                "is_helpful": bool(is_help[i]),
                "n_words": int(n_tokens[i]),
                "has_steps": True,
                "has_bullets": False,
                "has_code": False,
                "mean_entropy": float(entropy[i]),
                "mean_logprob": -1.0,
                "distinct_1": 0.9,
                "distinct_2": 0.95,
                "repetition_rate": 0.0,
                "is_gibberish": False,
                "gibberish_flags": [],
            }
        )
    return rows


def make_results(gap: bool = True, confounded: bool = False) -> pd.DataFrame:
    """A run whose rates are exactly the constructed ones (``gap=False``: train == test)."""
    rng = np.random.default_rng(0)
    rows: list[dict[str, Any]] = []

    def cell(stage: str, s: tuple[int, str, float], rates: tuple[float, ...], shared: bool) -> None:
        train, test, helpful, benign_ref = rates
        rows.extend(_rows(stage, "harm_train", s, train, None, rng, confounded, shared))
        rows.extend(_rows(stage, "harm_test", s, test, None, rng, confounded, shared))
        rows.extend(_rows(stage, "benign", s, benign_ref, helpful, rng, confounded, shared))

    cell("baseline", (-1, "none", 0.0), BASE, False)
    for layer in LAYERS:
        for intervention in ("add", "ablate"):
            cell("sweep", (layer, intervention, 0.0), BASE, True)
            for alpha in ALPHAS[1:]:
                test, drop, g = SETTINGS[(layer, intervention, alpha)]
                train = test + g if gap else test
                rates = (train, test, BASE[2] - drop, drop / 2)
                cell("sweep", (layer, intervention, alpha), rates, False)
    df = pd.DataFrame(rows)
    # Reruns: the first 30 prompts of each split, copied from the main rows (same outcomes).
    subset = df["prompt_id"].str[-3:].astype(int) < 30
    add1 = (df["intervention"] == "add") & (df["alpha"] == 1.0)
    seed_rows = df[subset & ((df["stage"] == "baseline") | add1)].copy()
    seed_rows["stage"], seed_rows["seed"] = "sanity_seed", 42
    tpl_rows = df[subset & add1 & (df["split"] != "harm_train")].copy()
    tpl_rows["stage"], tpl_rows["direction"] = "sanity_template", "alt_template"
    return pd.concat([df, seed_rows, tpl_rows], ignore_index=True)


SANITY: dict[str, Any] = {
    "sign_check": {
        "alpha": 1.0,
        "n": 8,
        "per_layer": {
            "8": {"baseline_refusal": 0.1, "steered_refusal": 0.5, "ok": True},
            "12": {"baseline_refusal": 0.1, "steered_refusal": 0.6, "ok": True},
        },
    },
    "template": {"alpha": 1.0, "refusal_prefix": "x", "compliance_prefix": "y"},
    "seed": {"alt_seed": 42, "base_seed": 0, "subset_n": 30, "alpha": 1.0},
}
SANITY["template"]["cosine"] = {"8": 0.93, "12": 0.88}


def write_run(tmp: Path, results: pd.DataFrame, sanity: dict[str, Any] | None = None) -> Path:
    tmp.mkdir(parents=True, exist_ok=True)
    results.to_parquet(tmp / "results.parquet")
    (tmp / "config.yaml").write_text(
        "model:\n  name: tiny-test\nexperiment:\n  layers: [8, 12]\n  interventions: [add, ablate]"
        "\n  alphas: [0.0, 1.0, 2.0]\n  scale: diff\nmetrics:\n  n_boot: 200\n"
    )
    (tmp / "manifest.json").write_text(json.dumps({"device": "cpu"}))
    if sanity is not None:
        (tmp / "sanity.json").write_text(json.dumps(sanity))
    return tmp


@pytest.fixture(scope="module")
def results() -> pd.DataFrame:
    return make_results()


@pytest.fixture(scope="module")
def summary(results: pd.DataFrame) -> pd.DataFrame:
    return summarize(results, n_boot=N_BOOT)


def _at(summary: pd.DataFrame, split: str, layer: int, intervention: str, alpha: float) -> Any:
    d = summary[
        (summary["split"] == split)
        & (summary["layer"] == layer)
        & (summary["intervention"] == intervention)
        & (summary["alpha"] == alpha)
    ]
    assert len(d) == 1
    return d.iloc[0]


# --- summarize ----------------------------------------------------------------------------------


def test_summary_has_one_row_per_split_and_setting(summary: pd.DataFrame) -> None:
    n_settings = 1 + len(LAYERS) * 2 * len(ALPHAS)
    assert len(summary) == 3 * n_settings
    assert not summary.duplicated(["split", "layer", "intervention", "alpha"]).any()
    assert set(summary["n"]) == {N}


def test_rates_are_exact_and_cis_bracket_them(summary: pd.DataFrame) -> None:
    for name in ("refusal", "helpful", "gibberish"):
        rate, lo, hi = summary[f"{name}_rate"], summary[f"{name}_lo"], summary[f"{name}_hi"]
        assert ((lo <= rate + 1e-12) & (rate <= hi + 1e-12)).all()
    assert _at(summary, "harm_test", -1, "none", 0.0)["refusal_rate"] == pytest.approx(0.2)
    r = _at(summary, "harm_test", 12, "add", 2.0)
    assert r["refusal_rate"] == pytest.approx(0.95)
    assert r["refusal_lo"] < 0.95 < r["refusal_hi"]
    assert _at(summary, "benign", 8, "add", 1.0)["helpful_rate"] == pytest.approx(0.85)


def test_gap_drop_and_false_refusal_are_the_constructed_differences(summary: pd.DataFrame) -> None:
    for (layer, intervention, alpha), (test, drop, gap) in SETTINGS.items():
        r = _at(summary, "harm_test", layer, intervention, alpha)
        assert r["gap"] == pytest.approx(gap, abs=1e-9)
        assert r["benign_drop"] == pytest.approx(drop, abs=1e-9)
        assert r["false_refusal_rate"] == pytest.approx(round(drop / 2 * N) / N, abs=1e-9)
        assert r["refusal_gain"] == pytest.approx(test - BASE[1], abs=1e-9)
        assert r["gap_lo"] <= r["gap"] <= r["gap_hi"]
    clear = _at(summary, "benign", 8, "add", 2.0)  # derived columns repeat on every split row
    assert clear["gap_lo"] > 0 and clear["benign_drop_lo"] > 0


def test_pareto_picks_the_constructed_frontier(summary: pd.DataFrame) -> None:
    rows = summary[summary["split"] == "harm_test"]
    got = {(int(r.layer), r.intervention, float(r.alpha)) for r in rows.itertuples() if r.pareto}
    assert got == PARETO
    # α = 0 cells are copies of the baseline, never "steered" and never on the frontier
    zero = rows[rows["alpha"] == 0]
    assert not zero["steered"].any() and not zero["pareto"].any()
    assert np.allclose(zero["benign_drop"], 0.0)


def test_pareto_mask_ties_and_nan() -> None:
    x = [0.5, 0.5, 0.4, np.nan, 0.9]
    y = [0.1, 0.1, 0.1, 0.0, 0.5]
    assert pareto_mask(x, y).tolist() == [True, True, False, False, True]
    assert pareto_mask(x, y, [True, True, True, True, False]).tolist() == [
        True,
        True,
        False,
        False,
        False,
    ]


def test_summary_csv_kinds_and_atomic_write(summary: pd.DataFrame, tmp_path: Path) -> None:
    path = write_summary_csv(summary, tmp_path / "summary.csv")
    df = pd.read_csv(path)
    assert list(df.columns[:2]) == ["kind", "split"]
    assert df["kind"].iloc[0] == "baseline"
    assert set(df["kind"]) == {"baseline", "pareto", "setting"}
    assert (df[df["kind"] == "baseline"]["layer"] == -1).all()
    assert len(df[df["kind"] == "pareto"]) == 3 * len(PARETO)
    assert [p.name for p in tmp_path.iterdir()] == ["summary.csv"]  # no temp file left


# --- checks -------------------------------------------------------------------------------------


def test_confound_check_effect_persists_when_length_is_independent(results: pd.DataFrame) -> None:
    out = confound_check(results, n_boot=N_BOOT, best=Setting(12, "add", 2.0))
    assert out["available"] and out["persists"] is True
    assert len(out["settings"]) == len(SETTINGS)
    entry = next(
        e
        for e in out["settings"]
        if (e["layer"], e["intervention"], e["alpha"]) == (12, "add", 2.0)
    )
    assert entry["raw"]["diff"] == pytest.approx(0.75)
    assert entry["n_tokens"]["lo"] > 0 and entry["mean_entropy"]["lo"] > 0


def test_confound_check_flags_an_effect_explained_by_length() -> None:
    out = confound_check(make_results(confounded=True), n_boot=N_BOOT, best=Setting(12, "add", 2.0))
    assert out["persists"] is False
    assert "NOT distinguishable" in out["verdict"]
    entry = next(
        e
        for e in out["settings"]
        if (e["layer"], e["intervention"], e["alpha"]) == (12, "add", 2.0)
    )
    assert entry["n_tokens"]["diff"] == pytest.approx(0.0, abs=1e-9)


def test_seed_check_consistent_copies_and_detects_a_shift(results: pd.DataFrame) -> None:
    out = seed_check(results, n_boot=N_BOOT)
    assert out["available"] and out["consistent"]
    assert out["alt_seed"] == [42] and out["base_seed"] == [0]
    assert out["n_comparisons"] == 2 * 3 * (1 + len(LAYERS))
    shifted = results.copy()
    alt_base = (shifted["stage"] == "sanity_seed") & (shifted["intervention"] == "none")
    shifted.loc[alt_base & (shifted["split"] == "harm_test"), "is_refusal"] = True
    out = seed_check(shifted, n_boot=N_BOOT)
    assert not out["consistent"] and out["n_excluding_zero"] >= 1


def test_template_check_reads_cosines_and_compares_same_prompts(results: pd.DataFrame) -> None:
    out = template_check(results, SANITY, n_boot=N_BOOT)
    assert out["cosine"] == {8: 0.93, 12: 0.88}
    assert out["consistent"] and len(out["rows"]) == 2 * len(LAYERS)
    assert all(r["n_alt"] == r["n_main"] == 30 for r in out["rows"])
    assert template_check(results.iloc[:0], {})["available"] is False


# --- build_report -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def built(results: pd.DataFrame, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    run = write_run(tmp_path_factory.mktemp("run"), results, SANITY)
    return build_report(run, n_boot=N_BOOT)


def _report(run: Path, results: pd.DataFrame, sanity: dict[str, Any]) -> str:
    """report.md alone (no figures: they are covered by ``built``, and take most of the time)."""
    summary = summarize(results, n_boot=N_BOOT)
    config = {"model": {"name": "tiny-test"}}
    return write_report(run, results, summary, sanity, config, {}, n_boot=N_BOOT).read_text()


def test_build_report_writes_everything(built: dict[str, Path]) -> None:
    run = built["report"].parent
    for name in ("summary", "checks", "examples", "report"):
        assert built[name].is_file() and built[name].stat().st_size > 0
    figures = sorted(p.name for k, p in built.items() if k.startswith("figure:"))
    assert figures == sorted(
        [
            "confounds.png",
            "gap_vs_alpha.png",
            "heatmap_helpful_benign.png",
            "heatmap_refusal_harm_test.png",
            "layers_vs_alpha.png",
            "tradeoff.png",
        ]
    )
    for name in figures:
        data = (run / "figures" / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000
    checks = json.loads(built["checks"].read_text())
    assert checks["confound"]["available"] and checks["sign"]["failed"] == []
    held = checks["findings_holdout"]
    assert held["n_settings"] == 8 and set(held["statements"]) == {
        "raise",
        "lower",
        "gap",
        "drop",
        "strongest",
    }
    headline = checks["layers"]["headline"]
    assert (headline["effect"], headline["layer_a"], headline["layer_b"]) == ("refusal_gain", 12, 8)
    assert not [p for p in run.rglob("*.tmp")]


def test_report_states_the_constructed_findings(built: dict[str, Path]) -> None:
    report = built["report"].read_text()
    assert "tiny-test" in report and "SIGN CHECK FAILED" not in report
    assert "**Generalization failure detected**" in report
    # the largest constructed gap is the one named, labelled as a selected maximum
    assert "Largest (in-sample, biased upward) at L8 add α=2" in report
    # harm_test refusal 0.2 at baseline -> 0.95 at L12 add α=2: the largest measured raise
    assert "**Measured steering effect**" in report
    assert "(largest, in-sample and biased upward: L12 add α=2, +75.0 pp" in report
    # each such statement is also chosen on the selection half and scored on the report half
    assert "- Held out (largest raise): the selection half picks **L12 add α=2**" in report
    assert "- Held out (largest gap): the selection half picks **L8 add α=2**" in report
    assert "**Held out**: the same per-layer rule on the selection half" in report
    assert "**Side-effect tradeoff detected**" in report
    assert "## Operating point (chosen on one half of the prompts" in report
    assert "**L8 add α=1** (chosen on the selection half)" in report
    assert "among the 8 steered settings" in report
    assert "](figures/tradeoff.png)" in report
    # matched α: harm_test refusal 95% at L12 add α=2 vs 30% at L8 add α=2, on the same prompts
    assert (
        "**Largest supported layer difference** (in-sample: chosen and scored on the same "
        "prompts): At add α=2, refusal gain on harm_test is "
        "+75.0 pp" in report
    )
    assert (
        "- Layer comparison with a non-trivial difference on held-out prompts: yes (refusal "
        "gain on harm_test at add α=2, layer 12 − layer 8, held out: +" in report
    )
    assert "](figures/layers_vs_alpha.png)" in report
    assert (
        "- Clear generalization failure or side-effect tradeoff, beyond the prompts it was found "
        "on: yes (generalization failure: detected, and its largest instance replicates on "
        "held-out prompts" in report
    )
    assert "(4 run)" in report


def test_examples_show_baseline_and_steered(built: dict[str, Path]) -> None:
    examples = built["examples"].read_text()
    assert examples.count("**Baseline**") == 15 and examples.count("**L8 add α=1**") == 1 + 15
    assert examples.count("### harm_test ") == 5
    assert "matched refusal: “I can't”" in examples


def test_report_does_not_claim_a_gap_when_train_equals_test(tmp_path: Path) -> None:
    report = _report(tmp_path, make_results(gap=False), SANITY)
    assert "Generalization failure detected" not in report
    assert "No generalization failure is supported" in report


def test_report_claims_no_layer_difference_when_layers_are_copies(tmp_path: Path) -> None:
    results = make_results()
    copy = results[results["layer"] == 8].assign(layer=12)
    results = pd.concat([results[results["layer"] != 12], copy], ignore_index=True)
    report = _report(tmp_path, results, SANITY)
    assert "**No matched-α layer difference has a CI excluding 0.**" in report
    assert (
        "- Layer comparison with a non-trivial difference on held-out prompts: **no** (no "
        "layer difference at matched α has a CI excluding 0 on the selection half)" in report
    )


def test_failed_sign_check_warns_at_the_top(results: pd.DataFrame, tmp_path: Path) -> None:
    sanity = json.loads(json.dumps(SANITY))
    sanity["sign_check"]["per_layer"]["12"].update(steered_refusal=0.05, ok=False)
    report = _report(tmp_path, results, sanity)
    assert "SIGN CHECK FAILED" in report
    assert report.index("SIGN CHECK FAILED") < report.index("## Setup")
    assert "FAILED at layer(s) 12" in report


def _sign_entry(base: float, steered: float, lo: float, hi: float, verdict: str) -> dict[str, Any]:
    change = {"value": steered - base, "lo": lo, "hi": hi}
    return {
        "baseline_refusal": base,
        "steered_refusal": steered,
        "change": change,
        "n": 6,
        "verdict": verdict,
        "ok": verdict == "raised",
    }


def test_a_sign_check_rise_inside_noise_is_not_a_pass(
    results: pd.DataFrame, tmp_path: Path
) -> None:
    """Layer 12 rises from 14.0% to 14.8% on six prompts, a CI that includes 0: the report says
    the sign is not confirmed there (not "passed", not "FAILED"); layer 8's clear rise passes."""
    sanity = json.loads(json.dumps(SANITY))
    sanity["sign_check"]["per_layer"] = {
        "8": _sign_entry(0.1, 0.5, 0.2, 0.6, "raised"),
        "12": _sign_entry(0.14, 0.148, -0.1, 0.12, "not shown"),
    }
    report = _report(tmp_path, results, sanity)
    assert "SIGN CHECK FAILED" not in report
    assert report.index("**Sign check not shown** at layer(s) 12") < report.index("## Setup")
    assert "): passed." not in report
    assert "not shown at layer(s) 12 (L12: the change's CI includes 0)" in report
    assert "L12: 14.0% → 14.8% (+0.8 pp [-10.0, +12.0])" in report
    sign = sign_check(sanity)
    assert sign["failed"] == [] and sign["not_shown"] == [12] and not sign["passed"]


def test_a_sign_check_fall_beyond_noise_fails(results: pd.DataFrame, tmp_path: Path) -> None:
    sanity = json.loads(json.dumps(SANITY))
    sanity["sign_check"]["per_layer"]["12"] = _sign_entry(0.5, 0.1, -0.6, -0.2, "lowered")
    report = _report(tmp_path, results, sanity)
    assert report.index("SIGN CHECK FAILED** at layer(s) 12") < report.index("## Setup")
    assert "lowered refusal below the baseline (CI below 0)" in report
    assert "Sign check not shown" not in report and "FAILED at layer(s) 12" in report


def test_missing_sanity_is_reported_as_not_run(tmp_path: Path) -> None:
    plain = make_results()
    plain = plain[plain["stage"].isin(["baseline", "sweep"])]
    report = _report(tmp_path, plain, {})
    for check in ("Sign check", "Template robustness", "Seed robustness"):
        assert f"- {check}: not run." in report
    assert "SIGN CHECK FAILED" not in report


def test_a_gibberish_completion_is_never_helpful() -> None:
    """The report's helpful rate counts a completion only when the proxy calls it helpful and
    the gibberish flag is down; runs made before the rule (no ``looks_helpful``) read the same."""
    from steerlab.pipelines.reliability.report import helpful_not_gibberish

    old = pd.DataFrame(
        {"is_helpful": [True, True, False, False], "is_gibberish": [False, True, False, True]}
    )
    got = helpful_not_gibberish(old)
    assert got["is_helpful"].tolist() == [True, False, False, False]
    assert got["looks_helpful"].tolist() == [True, True, False, False]
    new = got.assign(is_helpful=[True, True, True, True])  # a stored flag is recomputed
    assert helpful_not_gibberish(new)["is_helpful"].tolist() == [True, False, False, False]
