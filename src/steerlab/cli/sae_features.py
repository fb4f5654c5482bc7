"""``steerlab sae-features``: SAE features that separate problems whose baseline code passed from
those that failed, exported as vectors for ``steerlab select-coefficients``."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import typer

from steerlab.cli.options import BackendOpt, EngineArgOpt, QuietOpt, engine_args
from steerlab.errors import SteerlabError

# a baseline's statuses are the sandbox's; ``sandbox_error`` says nothing about the model and is
# left out, every other status but ``pass`` is a failure
PASS = "pass"
IGNORED = "sandbox_error"
NEEDED_COLUMNS = ("prompt", "status")
MIN_PER_CLASS = 2


def register(app: typer.Typer) -> None:
    """Add this module's commands to ``app`` (the CLI's, also when run as ``python -m``)."""
    app.command("sae-features")(sae_features_cmd)


@dataclass(frozen=True)
class Baseline:
    """The prompts of a baseline, split by outcome."""

    path: Path
    passed: list[str]
    failed: list[str]
    n_ignored: int  # sandbox errors


def read_baseline(path: Path) -> Baseline:
    """Passing and failing prompts of a ``baseline.parquet``, or one clear error."""
    if not path.is_file():
        raise SteerlabError(f"--baseline {path}: no such file (a run's baseline.parquet)")
    try:
        import pandas as pd

        df = pd.read_parquet(path)
    except ImportError as e:
        raise SteerlabError(
            f"reading --baseline needs pandas and pyarrow: pip install 'steerlab[analysis]' ({e})"
        ) from None
    except (OSError, ValueError) as e:
        raise SteerlabError(f"--baseline {path}: not a readable Parquet file ({e})") from None
    missing = [c for c in NEEDED_COLUMNS if c not in df.columns]
    if missing:
        raise SteerlabError(
            f"--baseline {path}: missing column {missing[0]!r} (a baseline has task_id, prompt, "
            "code, status, complexity)"
        )
    from steerlab.execution.sandbox import STATUSES

    status = df["status"].astype(str)
    unknown = sorted(set(status) - set(STATUSES))
    if unknown:
        raise SteerlabError(
            f"--baseline {path}: unknown status {unknown[0]!r} (expected one of "
            f"{', '.join(STATUSES)})"
        )
    from steerlab.pipelines.code.results import check_baseline_format

    check_baseline_format(path)  # labels from an earlier sandbox mean something else
    failing = [x for x in STATUSES if x not in (PASS, IGNORED)]
    prompts = df["prompt"]
    bad = [i for i, p in enumerate(prompts) if not isinstance(p, str) or not p]
    if bad:
        raise SteerlabError(f"--baseline {path}: row {bad[0]} has no prompt text")
    passed = prompts[status == PASS].tolist()
    failed = prompts[status.isin(failing)].tolist()
    if len(passed) < MIN_PER_CLASS or len(failed) < MIN_PER_CLASS:
        raise SteerlabError(
            f"--baseline {path}: needs at least {MIN_PER_CLASS} passing and {MIN_PER_CLASS} "
            f"failing problems; it has {len(passed)} passing and {len(failed)} failing"
        )
    return Baseline(path, passed, failed, int((status == IGNORED).sum()))


def sae_features_cmd(
    sae: Annotated[
        str,
        typer.Option(
            help="an SAE: a sae-lens directory, a Gemma Scope params.npz, or a sae-lens release "
            "(with --sae-id)"
        ),
    ],
    baseline: Annotated[Path, typer.Option(help="baseline.parquet of a select-coefficients run")],
    out: Annotated[Path, typer.Option("--out", "-o", help="directory for the results")],
    model: Annotated[
        str, typer.Option("--model", "-m", help="embedded | tiny-* | model dir | .gguf | hub id")
    ] = "embedded",
    backend: BackendOpt = "hf",
    engine_arg: EngineArgOpt = None,
    sae_id: Annotated[
        str | None, typer.Option(help="the SAE's id within the release given as --sae")
    ] = None,
    hook: Annotated[
        str | None,
        typer.Option(help="blocks.L.hook_POINT, for an SAE that does not record its site"),
    ] = None,
    position: Annotated[
        str,
        typer.Option(help="last (the last prompt token) or mean (prompt tokens but the first)"),
    ] = "last",
    top: Annotated[int, typer.Option(min=1, help="features of each direction to report")] = 10,
    export_top: Annotated[
        int, typer.Option(min=1, help="features of each direction to export as vector files")
    ] = 1,
    n_perm: Annotated[int, typer.Option(min=1, help="label permutations for the p-values")] = 1000,
    seed: Annotated[int, typer.Option(help="seed of the permutations")] = 0,
    batch_size: Annotated[int, typer.Option(min=1)] = 16,
    device: Annotated[
        str | None, typer.Option(help="cpu, cuda, cuda:1 (default: cuda if any)")
    ] = None,
    dtype: Annotated[
        str | None, typer.Option(help="float32 | bfloat16 | float16 (default: auto)")
    ] = None,
    quiet: QuietOpt = False,
) -> None:
    """Rank SAE features by how well their activation on a problem's prompt separates problems
    whose baseline code passed from those that failed (AUROC, mean difference, permutation
    p-value), and export the best features' decoder rows for select-coefficients
    (--correct-vector / --incorrect-vector)."""
    from steerlab.analysis.sae_features import (
        DIRECTIONS,
        POSITIONS,
        encode_prompts,
        feature_scores,
        write_results,
    )
    from steerlab.engine.plan import same_model
    from steerlab.models import load_model
    from steerlab.sae.load import load_sae

    logging.getLogger("steerlab").setLevel(logging.WARNING if quiet else logging.INFO)
    if position not in POSITIONS:
        raise SteerlabError(f"--position {position!r}: use one of {', '.join(POSITIONS)}")
    if out.exists() and not out.is_dir():
        raise SteerlabError(f"--out {out} exists and is not a directory")
    if export_top > top:
        raise SteerlabError(
            f"--export-top {export_top} is more than --top {top}: the exported features are the "
            "best of those reported; raise --top or lower --export-top"
        )
    base = read_baseline(baseline)
    extra = engine_args(engine_arg)
    m = load_model(model, device=device, dtype=dtype, backend=backend, **extra)
    s = load_sae(sae, sae_id, hook=hook, model=m)
    s.check_model(m)
    if s.model_name != "unknown" and not same_model(s.model_name, m.name):
        raise SteerlabError(
            f"{s.describe()} was trained on {s.model_name!r}, but --model is {m.name!r}: its "
            "features read another model's activations"
        )
    acts = encode_prompts(
        m,
        s,
        base.passed + base.failed,
        position=position,
        batch_size=batch_size,
        progress=not quiet,
    )  # (n_pass + n_fail, d_sae)
    n_pass = len(base.passed)
    scores = feature_scores(acts[:n_pass], acts[n_pass:], n_perm=n_perm, seed=seed)
    if scores.n_tested == 0:
        raise SteerlabError(
            f"every feature of {s.describe()} is inactive on all {len(acts)} prompts at "
            f"position {position!r}: nothing to rank"
        )
    written = write_results(
        out,
        scores,
        s,
        position=position,
        top=top,
        export_top=export_top,
        model=m,
        details={
            "model": m.name,
            "baseline": str(baseline.resolve()),
            "n_sandbox_error": base.n_ignored,
        },
    )
    typer.echo(
        f"{s.describe()} on {m.name}, position {position}: {scores.n_pass} passing, "
        f"{scores.n_fail} failing problems"
        + (f" ({base.n_ignored} sandbox errors left out)" if base.n_ignored else "")
    )
    typer.echo(
        f"{scores.n_tested} live features tested ({scores.n_dead} dead); p from {scores.n_perm} "
        f"permutations (smallest possible {scores.min_p:.2g}); p_bonf = p x {scores.n_tested}"
    )
    labels = {
        "correct": "correct-preferring (more active when the code passed)",
        "incorrect": "incorrect-preferring (more active when the code failed)",
    }
    for direction in DIRECTIONS:
        rows = scores.top(direction, top)
        label = labels[direction]
        typer.echo(f"\n{label}:")
        if not rows:
            typer.echo("  none")
            continue
        typer.echo(
            f"  {'feature':>8} {'AUROC':>6} {'diff':>9} {'fires pass':>10} {'fires fail':>10} "
            f"{'p':>7} {'p_bonf':>7}"
        )
        for r in rows:
            typer.echo(
                f"  {r.feature:>8} {r.auroc:>6.3f} {r.diff:>9.3g} {r.frac_pass:>10.0%} "
                f"{r.frac_fail:>10.0%} {r.p_value:>7.3g} {r.p_bonferroni:>7.3g}"
            )
    typer.echo("")
    for role, paths in written.vectors.items():
        for p in paths:
            typer.echo(f"{role} vector: {p}  (select-coefficients --{role}-vector {p})")
    typer.echo(f"wrote {written.features_csv} and {written.top_json}")
