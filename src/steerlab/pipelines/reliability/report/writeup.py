"""``examples.md`` and ``report.md``: write-ups generated from the numbers, never beyond them.

Every claim in ``report.md`` is gated on an interval: a generalization failure is stated only
when the train−test gap's 95% CI excludes 0 (and is not already present at baseline), a side
effect only when the benign-helpfulness drop's CI excludes 0, a layer difference only when the
paired CI of the difference between two layers at the same intervention and α excludes 0.
Otherwise the report says the data do not show it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from steerlab._util.io import atomic_write_text
from steerlab.pipelines.reliability.report import _fmt as f
from steerlab.pipelines.reliability.report._grid import (
    SPLITS,
    Setting,
    main_grid,
    pick_best,
    select,
    setting_points,
)
from steerlab.pipelines.reliability.report.aggregate import settings_table
from steerlab.pipelines.reliability.report.checks import (
    confound_check,
    seed_check,
    sign_check,
    template_check,
)
from steerlab.pipelines.reliability.report.holdout import (
    chosen_setting,
    held_out_layer_difference,
    held_out_operating_point,
    layer_holdout_lines,
    layer_holdout_note,
    operating_point_section,
)
from steerlab.pipelines.reliability.report.holdout_findings import (
    REPLICATES,
    VERDICT_SHORT,
    held_out_findings,
    layer_points_lines,
)
from steerlab.pipelines.reliability.report.layers import layer_comparison, layer_section
from steerlab.pipelines.reliability.report.sections import (
    baseline_section,
    findings_section,
    model_label,
    pareto_section,
    sanity_section,
    setup_section,
    sign_detail,
)
from steerlab.pipelines.reliability.sign import why_not_shown

FIGURES = (
    ("tradeoff.png", "Refusal on harm_test vs benign helpfulness drop"),
    ("layers_vs_alpha.png", "Effects vs α per layer (matched-α layer comparison)"),
    ("gap_vs_alpha.png", "Generalization gap vs α"),
    ("heatmap_refusal_harm_test.png", "Refusal rate on harm_test, layer × α"),
    ("heatmap_helpful_benign.png", "Helpful rate on benign, layer × α"),
    ("confounds.png", "Length / entropy confound check"),
)


# --- examples.md --------------------------------------------------------------------------------


def _completion(row: pd.Series) -> str:
    return "\n".join(
        [
            f"refusal score {float(row['refusal_score']):.2f} "
            f"({'refusal' if bool(row['is_refusal']) else 'no refusal'}), "
            f"helpfulness {float(row['helpfulness_score']):.2f} "
            f"({'helpful' if bool(row['is_helpful']) else 'not helpful'}), "
            f"{int(row['n_tokens'])} tokens"
            + (" — **gibberish**" if bool(row.get("is_gibberish", False)) else ""),
            "",
            f"matched refusal: {f.phrases(row.get('matched_refusal'))}; "
            f"matched compliance: {f.phrases(row.get('matched_compliance'))}",
            "",
            f.quote(str(row["text"])),
        ]
    )


def write_examples(
    results: pd.DataFrame, path: str | Path, n_per_split: int = 5, best: Setting | None = None
) -> Path:
    """``examples.md``: per split, ``n_per_split`` prompts, baseline vs steered completion.

    Steered is ``best`` (default: the best operating point). Prompts are the first ids in sorted
    order that have both completions, not a selection of striking cases.
    """
    path = Path(path)
    grid = main_grid(results)
    best = best if best is not None else pick_best(setting_points(results))
    lines = ["# Qualitative examples", ""]
    if best is None:
        lines.append("No steered setting in this run: nothing to compare with the baseline.")
        atomic_write_text(path, "\n".join(lines) + "\n")
        return path
    lines += [
        f"Baseline (no steering) vs **{best.label}** (the best operating point; see report.md).",
        f"Prompts: the first {n_per_split} prompt ids per split (sorted) with both completions, "
        "not chosen by outcome.",
        "",
    ]
    base = select(grid, Setting(-1, "none", 0.0))
    steered = select(grid, best)
    for split in SPLITS:
        b = base[base["split"] == split].drop_duplicates("prompt_id").set_index("prompt_id")
        s = steered[steered["split"] == split].drop_duplicates("prompt_id").set_index("prompt_id")
        ids = sorted(set(b.index) & set(s.index), key=str)[:n_per_split]
        lines += [f"## {split}", ""]
        if not ids:
            lines += ["*(no prompts with both completions)*", ""]
        for i, pid in enumerate(ids, 1):
            lines += [
                f"### {split} {i}: `{pid}`",
                "",
                f.quote(str(b.loc[pid, "prompt"])),
                "",
                "**Baseline**: " + _completion(b.loc[pid]),
                "",
                f"**{best.label}**: " + _completion(s.loc[pid]),
                "",
            ]
    atomic_write_text(path, "\n".join(lines))
    return path


# --- report.md ----------------------------------------------------------------------------------


def _sign_warning(sign: dict[str, Any]) -> list[str]:
    per, lines = sign.get("per_layer", {}), []
    if failed := sign["failed"]:
        detail = "; ".join(f"layer {L}: {sign_detail(per[L])}" for L in failed)
        moved = (
            "lowered refusal below the baseline (CI below 0)"
            if sign["failed_how"] == "lowered"
            else "did not raise refusal over the baseline"
        )
        lines += [
            "> **⚠️ WARNING: SIGN CHECK FAILED** at layer(s) "
            + ", ".join(str(L) for L in failed)
            + f". Adding the direction (α={sign.get('alpha')}) {moved} on the sign-check "
            f"prompts ({detail}). The direction's sign, the hook point or the "
            "intervention may be wrong; treat every steering result below for these layers as "
            "suspect.",
            "",
        ]
    if not_shown := sign.get("not_shown", []):
        why = "; ".join(
            f"layer {L}: {sign_detail(per[L])}, {why_not_shown(per[L])}" for L in not_shown
        )
        lines += [
            "> **Sign check not shown** at layer(s) "
            + ", ".join(str(L) for L in not_shown)
            + f": adding the direction (α={sign.get('alpha')}) did not clearly raise refusal on "
            f"the sign-check prompts ({why}), so the direction's sign is "
            "not confirmed there. More prompts (`sanity_checks.sign_check_n`) give a firmer "
            "check.",
            "",
        ]
    return lines


FINDINGS_HELD = (
    ("generalization_failure", "gap", "generalization failure"),
    ("side_effect", "drop", "side-effect tradeoff"),
)


def held_out_verdicts(
    findings: dict[str, bool], held: dict[str, Any] | None
) -> tuple[bool, list[str]]:
    """Whether a generalization failure or side-effect tradeoff holds beyond the prompts it was
    found on, and why, a phrase per finding.

    A finding detected on all prompts counts when its largest instance, chosen on the selection
    half, replicates on the report half (:mod:`.holdout_findings`). Without held-out checks
    (``held`` missing or unavailable) the in-sample verdict stands, and the phrase says so."""
    statements = (held or {}).get("statements") if (held or {}).get("available") else None
    confirmed, why = False, []
    for key, name, label in FINDINGS_HELD:
        if not findings[key]:
            why.append(f"{label}: not detected")
        elif statements is None or name not in statements:
            confirmed = True
            why.append(f"{label}: detected on all prompts (no held-out check)")
        elif (v := statements[name].get("verdict")) is None:  # the selection half chose none
            why.append(
                f"{label}: detected on all prompts, but the selection half names no instance"
            )
        else:
            confirmed = confirmed or v == REPLICATES
            found = "detected, and" if v == REPLICATES else "detected on all prompts, but"
            why.append(
                f"{label}: {found} its largest instance {VERDICT_SHORT[v]} on held-out prompts"
            )
    return confirmed, why


def _acceptance(
    findings: dict[str, bool],
    n_sanity: int,
    layer_note: tuple[bool, str],
    held: dict[str, Any] | None = None,
) -> list[str]:
    def mark(ok: bool) -> str:
        return "yes" if ok else "**no**"

    either, why = held_out_verdicts(findings, held)
    layer = f"{mark(layer_note[0])} ({layer_note[1]})"
    return [
        "## Research acceptance criteria",
        "",
        f"- Clear generalization failure or side-effect tradeoff, beyond the prompts it was found "
        f"on: {mark(either)} ({'; '.join(why)})",
        f"- At least two sanity checks run: {mark(n_sanity >= 2)} ({n_sanity} run)",
        f"- Layer comparison with a non-trivial difference on held-out prompts: {layer}",
        "",
    ]


def _figures(run_dir: Path) -> list[str]:
    lines = ["## Figures", ""]
    for name, caption in FIGURES:
        if (run_dir / "figures" / name).is_file():
            lines += [f"![{caption}](figures/{name})", ""]
    return lines


LIMITATIONS = (
    "## Limitations",
    "",
    "Refusal and helpfulness are rule-based phrase and structure proxies, not human or model "
    "judgments: a completion that refuses in unusual words, or complies in a refusal-like tone, "
    "is misclassified. A completion counts as helpful only when the helpfulness proxy says so "
    "and the gibberish flag (empty, repetitive, low token diversity, mostly non-letters) is not "
    "raised: steered text that keeps an answer's shape but no longer reads is not helpful. "
    "Each prompt gets one sampled completion per setting, so rates carry "
    "sampling noise on top of prompt noise. Intervals are percentile bootstraps; a layer "
    "difference at matched α resamples prompts paired (both layers saw them), but an effect vs "
    "the baseline resamples its two sides independently, ignoring that they share prompts "
    "(usually conservative). No correction is made for the many settings compared, so a single "
    "interval excluding 0 among dozens is weak evidence on its own. The prompt splits are "
    "templated, so the harm_train/harm_test shift is a controlled but narrow stand-in for "
    "real distribution shift, and results are for one small model and one direction method.",
    "",
)


def write_report(
    run_dir: str | Path,
    results: pd.DataFrame,
    summary: pd.DataFrame,
    sanity: dict[str, Any],
    config: dict[str, Any],
    manifest: dict[str, Any],
    checks: dict[str, dict[str, Any]] | None = None,
    n_boot: int = 1000,
    seed: int = 0,
) -> Path:
    """Write ``run_dir/report.md`` from the summary and sanity checks; return its path.

    ``checks`` holds ``operating_point``/``layer_holdout``/``findings_holdout``/``confound``/
    ``seed``/``template``/``layers`` results (computed here when missing). The operating point
    named everywhere in the report is the one chosen on the selection half (:mod:`.holdout`);
    the Findings' statements and the per-layer best points carry their held-out checks
    (:mod:`.holdout_findings`).
    """
    run_dir = Path(run_dir)
    checks = dict(checks or {})
    if "operating_point" not in checks:
        checks["operating_point"] = held_out_operating_point(results, n_boot=n_boot, seed=seed)
    if "layer_holdout" not in checks:
        checks["layer_holdout"] = held_out_layer_difference(results, n_boot=n_boot, seed=seed)
    if "findings_holdout" not in checks:
        checks["findings_holdout"] = held_out_findings(results, n_boot, seed, summary)
    best = chosen_setting(checks["operating_point"]) or pick_best(settings_table(summary))
    if "confound" not in checks:
        checks["confound"] = confound_check(results, n_boot=n_boot, seed=seed, best=best)
    if "seed" not in checks:
        checks["seed"] = seed_check(results, n_boot=n_boot, seed=seed)
    if "template" not in checks:
        checks["template"] = template_check(results, sanity, n_boot=n_boot, seed=seed)
    if "layers" not in checks:
        checks["layers"] = layer_comparison(results, summary, n_boot=n_boot, seed=seed)
    sign = sign_check(sanity)
    model = model_label(config, manifest)

    lines = [f"# Steering reliability report: {model}", ""]
    lines += _sign_warning(sign)
    lines += [
        f"Run `{run_dir.name}`. Intervals are 95% percentile-bootstrap CIs ({n_boot} resamples); "
        "pp = percentage points. A difference is called a finding only when its CI excludes 0.",
        "",
    ]
    lines += setup_section(results, config, manifest)
    lines += baseline_section(summary)
    lines += operating_point_section(checks["operating_point"])
    lines += pareto_section(summary)
    lines += layer_section(
        results,
        summary,
        checks["layers"],
        n_boot=n_boot,
        seed=seed,
        held_out=layer_holdout_lines(checks["layer_holdout"]),
        held_out_points=layer_points_lines(checks["findings_holdout"]),
    )
    finding_lines, findings = findings_section(
        summary, best, checks["findings_holdout"], checks["operating_point"]
    )
    lines += finding_lines
    sanity_lines, n_sanity = sanity_section(sign, checks)
    lines += sanity_lines
    layer_note = layer_holdout_note(checks["layer_holdout"])
    lines += _acceptance(findings, n_sanity, layer_note, checks["findings_holdout"])
    lines += _figures(run_dir)
    lines += LIMITATIONS
    path = run_dir / "report.md"
    atomic_write_text(path, "\n".join(lines))
    return path
