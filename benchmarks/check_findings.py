"""Do a faster CPU precision's findings move more than a second float32 seed's? (A script.)

    python benchmarks/check_findings.py [--out /tmp/findings] [--seeds 0 1] [--modes int8 bf16]
        [--max-prompts N] [--max-new-tokens T] [--n-boot 1000]

(``--modes`` with no names runs and compares the two float32 seeds alone.)

Runs the shipped fast config (``configs/fast.yaml``; ``--max-prompts``/``--max-new-tokens``
give a stated reduced one) three or more times on the same prompts, one after another:

* ``fp32-s<A>``: float32, generation seed A (the reference);
* ``fp32-s<B>``: float32, seed B (the yardstick: how far findings move with the seed alone);
* ``<mode>-s<B>``: each faster mode (``bf16``: linear layers multiply in bfloat16, emulated in
  float32 on a CPU without native bf16: the same rounding, not the same speed; ``int8``: int8
  dynamic quantization of the linear layers, see ``steerlab.models.int8_linear``), seed B.

The faster mode takes the yardstick's seed, so "``<mode>-s<B>`` vs ``fp32-s<A>``" differs from
the yardstick "``fp32-s<B>`` vs ``fp32-s<A>``" in the precision alone. Sampling (T 0.7, top-p
0.9) makes every run's completions differ; what must not change is what the report says.
Existing complete run directories under ``--out`` are reused (the pipeline resumes).

Compared, per run pair (the other run minus ``fp32-s<A>``):

* per setting (split x layer x intervention x alpha, the baseline included; the sweep's alpha=0
  copies of the baseline left out): refusal rate and helpful rate, as paired differences over
  the same prompts with a 95% bootstrap CI; how many of the M comparisons have a CI excluding 0
  ("differ"), and the mean |difference|;
* the headline statements: the operating point (chosen on the selection half) and whether its
  held-out gain replicates, the largest layer difference (chosen on the selection half) and
  whether it replicates, the sign check, the confound verdict at the operating point, and the
  generalization-failure and side-effect verdicts.

Pre-registered criterion (fixed before any faster-mode result was looked at). With M the number
of per-setting comparisons, D and |d| the differing count and mean |difference| of a pair, a
faster mode *does not move the findings* when all three hold:

1. ``D(mode-sB vs fp32-sA) <= D(fp32-sB vs fp32-sA) + ceil(0.05 * M)``: at most 5% of the
   comparisons more than the seed alone moves;
2. ``|d|(mode-sB vs fp32-sA) <= 1.25 * |d|(fp32-sB vs fp32-sA)``;
3. every headline statement on which the two float32 runs agree reads the same in the faster
   mode's run (a headline the two float32 seeds already disagree on is reported, not counted).

Only then may the faster mode become the default of ``configs/fast.yaml``. The speedup is the
sum of the recorded stage times of the float32 runs (mean) over the faster mode's (model
loading excluded). Run it on a quiet machine: several torch processes at once slow each other.

Ends with ``FINDINGS fp32_seed_differ=D/M <mode>_differ=D/M headline_same=yes|no speedup=...``
and one ``VERDICT`` line per faster mode.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path
from typing import Any

import pandas as pd

from steerlab.metrics import bootstrap_ci
from steerlab.models.precision import cpu_has_native_bf16
from steerlab.pipelines.reliability.config import load_config
from steerlab.pipelines.reliability.report import helpful_not_gibberish, summarize
from steerlab.pipelines.reliability.report._grid import main_grid
from steerlab.pipelines.reliability.report.checks import confound_check, sign_check
from steerlab.pipelines.reliability.report.holdout import (
    chosen_setting,
    held_out_layer_difference,
    held_out_operating_point,
)
from steerlab.pipelines.reliability.report.sections import findings_section
from steerlab.pipelines.reliability.run import run_stages

METRICS = (("refusal", "is_refusal"), ("helpful", "is_helpful"))
CELL = ["split", "layer", "intervention", "alpha"]
MATMUL = {"fp32": None, "bf16": "bf16", "int8": "int8"}


def run_one(out: Path, mode: str, seed: int, args: argparse.Namespace) -> Path:
    overrides: dict[str, Any] = {
        "generation.seed": seed,
        "model.matmul_dtype": MATMUL[mode],
        "experiment.output_dir": str(out),
    }
    if args.max_prompts:
        overrides["data.max_prompts_per_split"] = args.max_prompts
    if args.max_new_tokens:
        overrides["generation.max_new_tokens"] = args.max_new_tokens
    cfg = load_config("fast", overrides)
    t0 = time.perf_counter()
    run = run_stages(cfg, run_id=f"{mode}-s{seed}", progress=False)
    print(f"  {run.path.name}: {time.perf_counter() - t0:.0f} s in this call", flush=True)
    return run.path


def load(run_dir: Path) -> pd.DataFrame:
    results = helpful_not_gibberish(pd.read_parquet(run_dir / "results.parquet"))
    grid = main_grid(results)
    copies = (grid["intervention"] != "none") & (grid["alpha"] == 0)
    return grid[~copies]


def ran_emulated(run_dir: Path) -> bool:
    """Whether the run's matmuls were emulated (its manifest says; runs recorded before the
    manifest did: whether this CPU lacks native bf16)."""
    model = json.loads((run_dir / "manifest.json").read_text()).get("model") or {}
    if "matmul_emulated" in model:
        return bool(model["matmul_emulated"])
    return model.get("matmul_dtype") == "bf16" and not cpu_has_native_bf16()


def stage_seconds(run_dir: Path) -> float:
    manifest = json.loads((run_dir / "manifest.json").read_text())
    return float(sum(manifest.get("timings_s", {}).values()))


def compare(a: pd.DataFrame, b: pd.DataFrame, n_boot: int) -> pd.DataFrame:
    """Per cell and metric: rates in ``a`` and ``b`` and the paired ``b − a`` with its CI."""
    rows = []
    groups_b = {k: g for k, g in b.groupby(CELL, sort=True)}
    for key, ga in a.groupby(CELL, sort=True):
        gb = groups_b.get(key)
        if gb is None:
            continue
        xa = ga.drop_duplicates("prompt_id").set_index("prompt_id")
        xb = gb.drop_duplicates("prompt_id").set_index("prompt_id")
        ids = sorted(set(xa.index) & set(xb.index))
        for name, column in METRICS:
            va = xa.loc[ids, column].astype(float).to_numpy()
            vb = xb.loc[ids, column].astype(float).to_numpy()
            d, lo, hi = bootstrap_ci(vb - va, n_boot=n_boot, seed=0)
            rows.append(
                {
                    **dict(zip(CELL, key, strict=True)),
                    "metric": name,
                    "n": len(ids),
                    "rate_a": float(va.mean()),
                    "rate_b": float(vb.mean()),
                    "diff": d,
                    "lo": lo,
                    "hi": hi,
                    "differ": bool(lo > 0 or hi < 0),
                }
            )
    return pd.DataFrame(rows)


def headlines(run_dir: Path, n_boot: int) -> dict[str, str]:
    """What the report says, as short comparable strings."""
    results = helpful_not_gibberish(pd.read_parquet(run_dir / "results.parquet"))
    sanity_path = run_dir / "sanity.json"
    sanity = json.loads(sanity_path.read_text()) if sanity_path.is_file() else {}
    op = held_out_operating_point(results, n_boot=n_boot)
    best = chosen_setting(op)
    lh = held_out_layer_difference(results, n_boot=n_boot)
    _, verdicts = findings_section(summarize(results, n_boot=n_boot), best)
    confound = confound_check(results, n_boot=n_boot, best=best)
    sign = sign_check(sanity)
    c = lh.get("chosen")
    layer = (
        "none"
        if not c
        else f"{c['effect']} {c['intervention']} α={c['alpha']:g} L{c['layer_a']}>L{c['layer_b']}"
    )
    return {
        "operating point": best.label if best else "none",
        "operating point replicates": str(op.get("replicates")),
        "largest layer difference": layer,
        "layer difference replicates": str(lh.get("replicates")),
        "sign check": "passed"
        if sign["passed"]
        else "; ".join(
            f"{what} at " + ",".join(map(str, sign[key]))
            for key, what in (("failed", "failed"), ("not_shown", "not shown"))
            if sign[key]
        )
        or "not run",
        "confound: effect persists": str(confound.get("persists")),
        "generalization failure": str(verdicts["generalization_failure"]),
        "side effect": str(verdicts["side_effect"]),
    }


def pct(x: float) -> str:
    return f"{100 * x:+.1f}"


def print_settings(tables: dict[str, pd.DataFrame]) -> None:
    names = list(tables)
    first = tables[names[0]]
    print("\nper setting: rate in the reference run, then each run minus it (pp, 95% CI; * = CI")
    print("excludes 0)")
    head = ["split", "setting", "metric", "ref"] + [f"{n} − ref" for n in names]
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for i, r in first.iterrows():
        setting = (
            "baseline"
            if r["intervention"] == "none"
            else f"L{r['layer']} {r['intervention']} α={r['alpha']:g}"
        )
        cells = []
        for n in names:
            t = tables[n].loc[i]
            star = "*" if t["differ"] else ""
            cells.append(f"{pct(t['diff'])} [{pct(t['lo'])}, {pct(t['hi'])}]{star}")
        print(
            f"| {r['split']} | {setting} | {r['metric']} | {100 * r['rate_a']:.1f}% | "
            + " | ".join(cells)
            + " |"
        )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=Path("/tmp/steerlab-check-findings"))
    p.add_argument("--seeds", type=int, nargs=2, default=[0, 1])
    p.add_argument("--modes", nargs="*", default=["int8"], choices=["int8", "bf16"])
    p.add_argument("--max-prompts", type=int, default=None)
    p.add_argument("--max-new-tokens", type=int, default=None)
    p.add_argument("--n-boot", type=int, default=1000)
    args = p.parse_args()
    sa, sb = args.seeds
    reduced = [
        f"{k} {v}"
        for k, v in (
            ("max_prompts_per_split", args.max_prompts),
            ("max_new_tokens", args.max_new_tokens),
        )
        if v
    ]
    print(f"config: fast{' reduced: ' + ', '.join(reduced) if reduced else ' (as shipped)'}")
    print(f"runs (in order, one at a time) under {args.out}:", flush=True)
    runs = {f"fp32-s{sa}": run_one(args.out, "fp32", sa, args)}
    runs[f"fp32-s{sb}"] = run_one(args.out, "fp32", sb, args)
    for mode in args.modes:
        runs[f"{mode}-s{sb}"] = run_one(args.out, mode, sb, args)

    ref_name = f"fp32-s{sa}"
    ref = load(runs[ref_name])
    others = [n for n in runs if n != ref_name]
    tables = {n: compare(ref, load(runs[n]), args.n_boot) for n in others}
    if args.modes:  # the faster mode against the float32 run with its own seed (information)
        twin = f"{args.modes[0]}-s{sb} vs fp32-s{sb}"
        same_seed = compare(
            load(runs[f"fp32-s{sb}"]), load(runs[f"{args.modes[0]}-s{sb}"]), args.n_boot
        )
    m = len(tables[others[0]])
    print("\nruns: stage time (s, model loading excluded)")
    secs = {n: stage_seconds(d) for n, d in runs.items()}
    for n, s in secs.items():
        print(f"  {n}: {s:.0f} s")

    print(
        f"\nvs {ref_name} over M = {m} comparisons (refusal and helpful rate per split and "
        "setting):"
    )
    summary: dict[str, tuple[int, float]] = {}
    for n, t in tables.items():
        d, mad = int(t["differ"].sum()), float(t["diff"].abs().mean())
        summary[n] = (d, mad)
        print(
            f"  {n}: {d}/{m} differ ({d / m:.1%}); mean |diff| {100 * mad:.2f} pp; "
            f"mean diff {100 * t['diff'].mean():+.2f} pp"
        )
    if args.modes:
        print(
            f"  ({twin}, same seed, for information: {int(same_seed['differ'].sum())}/"
            f"{len(same_seed)} differ; mean |diff| {100 * same_seed['diff'].abs().mean():.2f}"
            " pp)"
        )
    print_settings(tables)

    heads = {n: headlines(d, args.n_boot) for n, d in runs.items()}
    print("\nheadline statements")
    names = list(runs)
    print("| statement | " + " | ".join(names) + " |")
    print("|" + "---|" * (len(names) + 1))
    for key in heads[ref_name]:
        print(f"| {key} | " + " | ".join(heads[n][key] for n in names) + " |")

    yard = f"fp32-s{sb}"
    stable = [k for k in heads[ref_name] if heads[ref_name][k] == heads[yard][k]]
    unstable = [k for k in heads[ref_name] if k not in stable]
    print(
        f"\nheadlines the two float32 seeds agree on: {len(stable)}/{len(heads[ref_name])}"
        + (f" (they disagree on: {', '.join(unstable)})" if unstable else "")
    )
    d_ref, mad_ref = summary[yard]
    parts = [f"fp32_seed_differ={d_ref}/{m}"]
    fp32_s = (secs[ref_name] + secs[yard]) / 2
    verdicts = []
    all_same = True
    for mode in args.modes:
        name = f"{mode}-s{sb}"
        d, mad = summary[name]
        moved = [k for k in stable if heads[name][k] != heads[ref_name][k]]
        ok1 = d <= d_ref + math.ceil(0.05 * m)
        ok2 = mad <= 1.25 * mad_ref
        ok3 = not moved
        all_same &= ok3
        parts.append(f"{mode}_differ={d}/{m}")
        verdicts.append(
            f"VERDICT {mode}: "
            + ("does not move the findings" if ok1 and ok2 and ok3 else "MOVES the findings")
            + f" (1: {d} <= {d_ref} + {math.ceil(0.05 * m)}: {ok1}; 2: mean |diff| "
            f"{100 * mad:.2f} <= 1.25 x {100 * mad_ref:.2f} pp: {ok2}; 3: stable headlines "
            f"unchanged: {ok3}" + (f", moved: {', '.join(moved)}" if moved else "") + ")"
        )
    if not args.modes:  # the yardstick alone (--modes with no names)
        parts += ["bf16_differ=not-run", "headline_same=n/a", "speedup=n/a"]
        print("\nno faster mode run (--modes empty): the yardstick alone")
        print("FINDINGS " + " ".join(parts))
        return
    emulated = "bf16" in args.modes and ran_emulated(runs[f"bf16-s{sb}"])
    for mode in args.modes:  # per float32 run: one slowed by other work shows here
        each = ", ".join(f"{secs[n] / secs[f'{mode}-s{sb}']:.2f}x vs {n}" for n in (ref_name, yard))
        print(f"speedup of {mode}-s{sb}: {each}")
    if emulated:
        print(
            "bf16 ran emulated in float32 (its CPU had no native bf16): its findings are bf16's "
            "rounding, its speed is not bf16's; speedup marked bf16(emulated)"
        )
    ratios = [f"{fp32_s / secs[f'{mode}-s{sb}']:.2f}x" for mode in args.modes]
    names = ["bf16(emulated)" if m == "bf16" and emulated else m for m in args.modes]
    if len(ratios) > 1 or emulated:
        ratios = [f"{name}:{r}" for name, r in zip(names, ratios, strict=True)]
    if "bf16" not in args.modes:  # the issue's line names bf16 whether or not it ran
        parts.insert(1, "bf16_differ=not-run")
    parts += [f"headline_same={'yes' if all_same else 'no'}", f"speedup={','.join(ratios)}"]
    print()
    for v in verdicts:
        print(v)
    print("FINDINGS " + " ".join(parts))


if __name__ == "__main__":
    main()
