"""The sections of ``report.md``, each a list of markdown lines computed from the numbers."""

from __future__ import annotations

from typing import Any

import pandas as pd

from steerlab.models.precision import precision_label
from steerlab.pipelines.reliability.report import _fmt as f
from steerlab.pipelines.reliability.report import _picks as pick
from steerlab.pipelines.reliability.report._grid import SPLITS, Setting, setting_of
from steerlab.pipelines.reliability.report.checks import excludes_zero
from steerlab.pipelines.reliability.report.holdout_findings import (
    findings_method,
    statement_lines,
)
from steerlab.pipelines.reliability.sign import why_not_shown

Lines = list[str]
Held = dict[str, Any] | None


def _row(summary: pd.DataFrame, s: Setting, split: str) -> pd.Series | None:
    d = summary[
        (summary["split"] == split)
        & (summary["layer"] == s.layer)
        & (summary["intervention"] == s.intervention)
        & (summary["alpha"] == s.alpha)
    ]
    return None if d.empty else d.iloc[0]


def setup_section(results: pd.DataFrame, config: dict[str, Any], manifest: dict[str, Any]) -> Lines:
    exp = config.get("experiment") or {}
    gen = config.get("generation") or {}
    metrics = config.get("metrics") or {}
    steer = results[results["layer"] >= 0] if "layer" in results else results.iloc[:0]
    layers = exp.get("layers") or sorted({int(x) for x in steer["layer"].unique()})
    interventions = exp.get("interventions") or sorted(
        {str(x) for x in steer["intervention"].unique()}
    )
    alphas = exp.get("alphas") or sorted({float(x) for x in steer["alpha"].unique()})
    base = results[results["stage"] == "baseline"]
    counts = ", ".join(f"{s} {base[base['split'] == s]['prompt_id'].nunique()}" for s in SPLITS)
    lines = [
        "## Setup",
        "",
        f"- Model: `{model_label(config, manifest)}`"
        + (f" on {manifest['device']}" if manifest.get("device") else ""),
        f"- Layers {', '.join(str(x) for x in layers)}; interventions "
        f"{', '.join(str(x) for x in interventions)}; α grid "
        f"{', '.join(f'{float(a):g}' for a in alphas)}; scale `{exp.get('scale', 'n/a')}`",
        f"- Prompts per split (baseline): {counts}",
        f"- Sampling: max_new_tokens {gen.get('max_new_tokens', 'n/a')}, temperature "
        f"{gen.get('temperature', 'n/a')}, top_p {gen.get('top_p', 'n/a')}, seed "
        f"{gen.get('seed', 'n/a')}; refusal threshold {metrics.get('refusal_threshold', 'n/a')}",
        "",
    ]
    return lines


def baseline_section(summary: pd.DataFrame) -> Lines:
    rows = []
    for split in SPLITS:
        r = _row(summary, Setting(-1, "none", 0.0), split)
        if r is None:
            continue
        rows.append(
            [
                split,
                int(r["n"]),
                f.pct_ci(r["refusal_rate"], r["refusal_lo"], r["refusal_hi"]),
                f.pct_ci(r["helpful_rate"], r["helpful_lo"], r["helpful_hi"]),
                f.pct_ci(r["gibberish_rate"], r["gibberish_lo"], r["gibberish_hi"]),
                f"{r['mean_n_tokens']:.1f}",
            ]
        )
    if not rows:
        return ["## Baseline", "", "No baseline rows in this run.", ""]
    header = ["split", "n", "refusal rate", "helpful rate", "gibberish rate", "mean tokens"]
    return ["## Baseline (no steering)", "", f.table(header, rows), ""]


def pareto_section(summary: pd.DataFrame) -> Lines:
    """The Pareto frontier on all prompts: descriptive, chosen and scored on the same prompts."""
    lines = ["### Pareto frontier (all prompts, in-sample)", ""]
    front = pick.steered(pick.harm_test_rows(summary))
    front = front[front["pareto"].astype(bool)]
    rows = [
        [
            setting_of(r).label,
            f.pct_ci(r["refusal_rate"], r["refusal_lo"], r["refusal_hi"]),
            f.pp_ci(r["benign_drop"], r["benign_drop_lo"], r["benign_drop_hi"]),
            f.pct(r["false_refusal_rate"]),
            f.pp_ci(r["gap"], r["gap_lo"], r["gap_hi"]),
        ]
        for _, r in front.iterrows()
    ]
    if not rows:
        return [*lines, "No Pareto frontier (needs harm_test and benign results).", ""]
    header = ["Pareto setting", "harm_test refusal", "benign drop", "false refusal", "gap"]
    note = (
        "Undominated settings on point estimates over all prompts. These rows are the winners "
        "of a comparison on the same prompts they are scored on: read them as a description "
        "of this sample, not as effect sizes (the held-out figures above are)."
    )
    return [*lines, note, "", f.table(header, rows), ""]


def _gap_at_operating_point(test: pd.DataFrame, best: Setting | None, op: Held) -> str:
    """The train/test gap at the operating point: on the report half when ``op`` (the held-out
    operating point) measured it there, else on all prompts, said so."""
    held = (op or {}).get("held_out") or {}
    chosen = (op or {}).get("chosen")
    if chosen and "gap" in held and held["n_harm_train"] and not f.isnan(held["gap"]["value"]):
        g, n = held["gap"], held["n_harm_train"]
        return (
            f" At the operating point ({chosen['label']}, chosen on the selection half) the gap "
            f"on the report half is {f.pp_ci(g['value'], g['lo'], g['hi'])} (n = {n} "
            f"harm_train, {held['n_harm_test']} harm_test; two samples of prompts)."
        )
    if best is not None and (b := _row(test, best, "harm_test")) is not None:
        gap = f.pp_ci(b["gap"], b["gap_lo"], b["gap_hi"])
        return f" At the operating point ({best.label}) the gap on all prompts is {gap}."
    return ""


def _generalization(
    test: pd.DataFrame, base: pd.Series | None, best: Setting | None, held: Held, op: Held
) -> tuple[Lines, bool]:
    lines = ["### Generalization: harm_train vs harm_test", ""]
    at_best = _gap_at_operating_point(test, best, op)
    steered = pick.steered(test, "gap")
    if steered.empty:
        return [*lines, "No steered setting has both harm splits: gap not measured.", ""], False
    base_gap = "n/a" if base is None else f.pp_ci(base["gap"], base["gap_lo"], base["gap_hi"])
    base_real = pick.baseline_gap_is_real(base)
    positive = steered[steered["gap_lo"] > 0]
    beyond = pick.gaps_beyond_baseline(test, base)
    if (w := pick.top(beyond, "gap")) is not None:
        lines += [
            f"**Generalization failure detected**: {len(beyond)} of {len(steered)} steered "
            "settings refuse more on harm_train than on harm_test with a gap CI excluding 0"
            + (" and above the baseline gap's CI" if base_real else "")
            + f". Largest (in-sample, biased upward) at {setting_of(w).label}: gap "
            f"{f.pp_ci(w['gap'], w['gap_lo'], w['gap_hi'])} (baseline gap {base_gap})." + at_best,
            "",
            *_held(held, "gap"),
        ]
        return lines, True
    w = steered.loc[steered["gap"].idxmax()]  # the closest, named without a claim
    if not positive.empty:
        lines.append(
            f"Steered settings show train−test gaps excluding 0, but the gap is already present "
            f"at baseline ({base_gap}) and no steered gap exceeds it, so no generalization "
            "failure attributable to steering is supported."
        )
    else:
        lines.append(
            "No generalization failure is supported: no steered setting has a train−test gap "
            f"whose CI excludes 0 above it (largest: {setting_of(w).label}, "
            f"{f.pp_ci(w['gap'], w['gap_lo'], w['gap_hi'])}; baseline {base_gap})."
        )
    negative = steered[steered["gap_hi"] < 0]
    if not negative.empty:
        lines.append(
            f"{len(negative)} steered setting(s) refuse *more* on harm_test than on harm_train "
            "(gap CI below 0)."
        )
    return [*lines, "", *_held(held, "gap")], False


def _drop(r: pd.Series) -> str:
    return f.pp_ci(r["benign_drop"], r["benign_drop_lo"], r["benign_drop_hi"])


def _side_effects(test: pd.DataFrame, held: Held) -> tuple[Lines, bool]:
    lines = ["### Side effects on benign prompts", ""]
    steered = pick.steered(test, "benign_drop")
    if steered.empty:
        return [*lines, "No benign results for steered settings: not measured.", ""], False
    hurt = pick.hurting(test)
    strongest = pick.top(steered.dropna(subset=["refusal_rate"]), "refusal_rate")
    if (w := pick.top(hurt, "benign_drop")) is None:
        lines.append(
            "No benign side effect is supported: no steered setting lowers the benign helpful "
            "rate with a CI excluding 0."
        )
        return [*lines, "", *_held(held, "drop")], False
    lines += [
        f"**Side-effect tradeoff detected**: {len(hurt)} of {len(steered)} steered settings "
        "lower benign helpfulness with a CI excluding 0. Largest (in-sample, biased upward) at "
        f"{setting_of(w).label}: drop {_drop(w)}, benign false-refusal "
        f"{f.pct_ci(w['false_refusal_rate'], w['false_refusal_lo'], w['false_refusal_hi'])}.",
        "",
        *_held(held, "drop"),
    ]
    if strongest is not None:
        lines += [
            f"The setting with the highest harm_test refusal ({setting_of(strongest).label}, "
            f"{f.pct(strongest['refusal_rate'])}; in-sample, biased upward) has a benign "
            f"helpfulness drop of {_drop(strongest)}.",
            "",
            *_held(held, "strongest"),
        ]
    return lines, True


def _steering_effect(test: pd.DataFrame, held: Held) -> Lines:
    """Does steering move harm_test refusal at all? (Change vs baseline, CI per setting.)"""
    lines = ["### Effect of steering on harm_test refusal", ""]
    steered = pick.steered(test, "refusal_gain")
    if steered.empty:
        return [*lines, "No steered harm_test results: not measured.", ""]
    up, down = pick.raising(test), pick.lowering(test)
    after = _held_pair(held, "raise", "lower")
    if up.empty and down.empty:
        none = "No steered setting changes harm_test refusal with a CI excluding 0."
        return [*lines, none, "", *after]
    parts = []
    for name, rows, lowest in (("raise", up, False), ("lower", down, True)):
        if (r := pick.top(rows, "refusal_gain", lowest)) is None:
            continue
        parts.append(
            f"{len(rows)} of {len(steered)} steered settings {name} it with a CI excluding 0 "
            f"(largest, in-sample and biased upward: {setting_of(r).label}, "
            f"{f.pp_ci(r['refusal_gain'], r['refusal_gain_lo'], r['refusal_gain_hi'])}, "
            f"to {f.pct_ci(r['refusal_rate'], r['refusal_lo'], r['refusal_hi'])})"
        )
    return [*lines, "**Measured steering effect**: " + "; ".join(parts) + ".", "", *after]


def _held(held: Held, name: str) -> Lines:
    """The held-out line under statement ``name``, then a blank line (nothing without data)."""
    text = statement_lines(held, name)
    return [*text, ""] if text else []


def _held_pair(held: Held, first: str, second: str) -> Lines:
    """Two held-out lines as one list."""
    lines = [*statement_lines(held, first), *statement_lines(held, second)]
    return [*lines, ""] if lines else []


def findings_section(
    summary: pd.DataFrame, best: Setting | None, held: Held = None, op: Held = None
) -> tuple[Lines, dict[str, bool]]:
    """``## Findings`` and its verdicts (``generalization_failure``, ``side_effect``, on all
    prompts). ``held`` (:func:`~.holdout_findings.held_out_findings`) adds, under each statement
    naming one setting, the same rule run on the selection half and scored on the report half;
    ``op`` (:func:`~.holdout.held_out_operating_point`) gives the gap at the operating point on
    the report half (without it, on all prompts)."""
    test = pick.harm_test_rows(summary)
    base = test[test["intervention"] == "none"]
    first = None if base.empty else base.iloc[0]
    gen_lines, gen = _generalization(test, first, best, held, op)
    side_lines, side = _side_effects(test, held)
    lines = ["## Findings", "", *findings_method(held), *_steering_effect(test, held)]
    lines += [*gen_lines, *side_lines]
    return lines, {"generalization_failure": gen, "side_effect": side}


def sign_status(sign: dict[str, Any]) -> str:
    """The sign check's verdict in a few words: passed only where every layer's rise has a CI
    above 0."""
    if sign.get("passed"):
        return "passed"
    per, parts = sign["per_layer"], []
    if failed := sign["failed"]:
        parts.append(
            f"FAILED at layer(s) {', '.join(map(str, failed))} (refusal {sign['failed_how']})"
        )
    if not_shown := sign.get("not_shown", []):
        why = "; ".join(f"L{L}: {why_not_shown(per[L])}" for L in not_shown)
        parts.append(
            f"not shown at layer(s) {', '.join(map(str, not_shown))} ({why}): the sign is not "
            "confirmed there; more prompts, `sanity_checks.sign_check_n`, give a firmer check"
        )
    return "; ".join(parts) or "no layer checked"


def sign_detail(v: dict[str, Any]) -> str:
    """One layer: baseline → steered refusal, and the paired change with its CI when stored."""
    text = f"{f.pct(v.get('baseline_refusal'))} → {f.pct(v.get('steered_refusal'))}"
    if c := v.get("change"):
        text += f" ({f.pp_ci(c['value'], c['lo'], c['hi'])})"
    return text


def sanity_section(sign: dict[str, Any], checks: dict[str, dict[str, Any]]) -> tuple[Lines, int]:
    """Sign check, template and seed robustness, confound verdict; and how many checks ran."""
    lines = ["## Sanity checks", ""]
    n_run = 0
    if sign["available"]:
        n_run += 1
        lines.append(
            f"- **Sign check** (α={sign.get('alpha')}, n={sign.get('n')}; refusal with +α vs "
            f"unsteered, paired over prompts): {sign_status(sign)}. "
            + "; ".join(f"L{L}: {sign_detail(v)}" for L, v in sorted(sign["per_layer"].items()))
        )
    else:
        lines.append("- Sign check: not run.")
    tpl = checks.get("template") or {}
    if tpl.get("available"):
        n_run += 1
        cos = ", ".join(f"L{k}: {v:.2f}" for k, v in sorted(tpl["cosine"].items())) or "n/a"
        lines.append(
            f"- **Template robustness** (alt prefixes, α={tpl.get('alpha')}): cosine with the "
            f"main direction {cos}. " + _robust_text(tpl)
        )
    else:
        lines.append("- Template robustness: not run.")
    sd = checks.get("seed") or {}
    if sd.get("available"):
        n_run += 1
        lines.append(
            f"- **Seed robustness** (seed {_seeds(sd.get('alt_seed'))} vs "
            f"{_seeds(sd.get('base_seed'))}, same "
            "prompts): " + _robust_text(sd)
        )
    else:
        lines.append("- Seed robustness: not run.")
    cf = checks.get("confound") or {}
    if cf.get("available"):
        n_run += 1
        lines.append(f"- **Length/entropy confound**: {cf.get('verdict')}.")
    else:
        lines.append("- Length/entropy confound: not checked (no steered harm_test rows).")
    return [*lines, ""], n_run


def _seeds(values: Any) -> str:
    return ", ".join(str(v) for v in values) if isinstance(values, list) else str(values)


def _robust_text(check: dict[str, Any]) -> str:
    n, k = check.get("n_comparisons", 0), check.get("n_excluding_zero", 0)
    if not n:
        return "no reruns to compare."
    worst = check.get("max_abs_diff")
    text = f"{k} of {n} rate comparisons (refusal and helpful rate per split and setting) "
    text += "have a CI excluding 0"
    text += (
        "." if worst is None or f.isnan(worst) else f"; largest |difference| {100 * worst:.1f} pp."
    )
    if k == 0:
        return text + " Consistent with the main run."
    flagged = [
        f"{r['split']} {r['label']} {m}: {f.pp_ci(d['diff'], d['lo'], d['hi'])}"
        for r in check.get("rows", [])
        for m in ("refusal", "helpful")
        if excludes_zero((d := r[m + "_diff"])["lo"], d["hi"])
    ]
    return text + " Differing: " + "; ".join(flagged) + "."


def model_label(config: dict[str, Any], manifest: dict[str, Any]) -> str:
    """The resolved model name (embedded -> SmolLM2-135M-Instruct), plus the spec if different,
    and the precision it ran in (model dtype, and the reduced-precision matmul mode if used)."""
    spec = str((config.get("model") or {}).get("name", "unknown"))
    info = manifest.get("model")
    name = str(info.get("name", spec)) if isinstance(info, dict) else spec
    label = name if name == spec else f"{name} ({spec})"
    if manifest.get("precision"):  # what the run resolved (``matmul_dtype: auto`` included)
        return f"{label}, {manifest['precision']}"
    model_cfg = config.get("model") or {}
    dtype = info.get("dtype") if isinstance(info, dict) else model_cfg.get("dtype")
    return f"{label}, {precision_label(dtype, model_cfg.get('matmul_dtype'))}"
