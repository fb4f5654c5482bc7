"""``steerlab classify``: classification steering on the command line (per-group labeled vectors,
sign check, sweep over layers and strengths, report)."""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import Annotated

import typer

from steerlab.cli.options import (
    BackendOpt,
    EngineArgOpt,
    ExecutorOpt,
    QuietOpt,
    RayAddressOpt,
    ThreadsOpt,
    WorkersOpt,
    engine_args,
    parse_numbers,
)


def register(app: typer.Typer) -> None:
    app.command("classify")(classify_cmd)


def _task_ref(task: str) -> tuple[str, str]:
    """``(stored reference, sha256 of the config and its data)``; errors name the file."""
    from steerlab.tasks.classification import load_task

    loaded = load_task(task)
    p = Path(task)
    stored = str(p.resolve()) if p.is_file() else task
    digest = hashlib.sha256()
    digest.update(repr(loaded.config.model_dump(mode="json")).encode())
    for ex in loaded.examples:
        digest.update(repr((ex.id, ex.text, ex.label, ex.group, ex.split)).encode())
    return stored, digest.hexdigest()


def classify_cmd(
    out: Annotated[Path, typer.Option(help="the run directory (rerun to resume)")],
    task: Annotated[
        str, typer.Option(help="task config YAML (e.g. data/vuln/task.yaml) or a shipped task")
    ] = "vuln",
    model: Annotated[
        str, typer.Option("--model", "-m", help="embedded | tiny-* | model dir | .gguf | hub id")
    ] = "embedded",
    backend: BackendOpt = "hf",
    engine_arg: EngineArgOpt = None,
    layers: Annotated[
        str | None, typer.Option(help="comma-separated layers (default: the middle layer)")
    ] = None,
    positions: Annotated[
        str,
        typer.Option(
            help="where vectors are added: last-prompt (default), prompt, all, generated, "
            "last-prompt-and-generated, window:START:END"
        ),
    ] = "last-prompt",
    mode: Annotated[
        str,
        typer.Option(
            help="how the grid is scored: logit (next-token margin at the last prompt token, one "
            "forward pass a row), generate (every row generated and parsed, text kept), auto "
            "(generate when the positions select only generated tokens, else logit)"
        ),
    ] = "auto",
    strengths: Annotated[str, typer.Option(help="comma-separated, positive")] = "0.05,0.1,0.2,0.4",
    scale: Annotated[
        str, typer.Option(help="resid (fraction of the residual norm), diff or absolute")
    ] = "resid",
    build_position: Annotated[
        str, typer.Option(help="where activations are read for vectors: last or mean")
    ] = "last",
    flip_sign: Annotated[
        bool,
        typer.Option(help="apply -vector for every vector (the sign check says all are backwards)"),
    ] = False,
    flip_groups: Annotated[
        str | None,
        typer.Option(
            help="comma-separated vectors to apply negated (group ids, 'pooled'): those the sign "
            "check says are backwards"
        ),
    ] = None,
    cross_group: Annotated[bool, typer.Option(help="every group's vector on every group")] = True,
    generate: Annotated[
        bool,
        typer.Option(help="logit mode: also generate and parse answers (baseline, best setting)"),
    ] = True,
    max_new_tokens: Annotated[int, typer.Option(min=1)] = 48,
    batch_size: Annotated[int, typer.Option(min=1)] = 32,
    quiet: QuietOpt = False,
    executor: ExecutorOpt = "local",
    ray_address: RayAddressOpt = None,
    workers: WorkersOpt = None,
    threads_per_worker: ThreadsOpt = None,
) -> None:
    """Build per-group and pooled labeled mean-diff vectors, check every vector's sign on
    held-out data, sweep layers x strengths (logit mode, or generate mode for generated
    positions), and report accuracy, recall, uncertain rate, margin and AUROC per group, with
    cross-group tables at every strength."""
    from steerlab.pipelines.classify.config import ClassifyConfig, EvalModelCfg
    from steerlab.pipelines.classify.run import Classify
    from steerlab.runs.executor import ExecutorSpec
    from steerlab.runs.runner import execute

    logging.getLogger("steerlab").setLevel(logging.INFO)
    spec = ExecutorSpec(executor, ray_address, workers, threads_per_worker)  # type: ignore[arg-type]
    stored, digest = _task_ref(task)
    data = dict(
        out=str(out.resolve()),
        model=EvalModelCfg(
            name=model, backend=backend, chat=True, engine_args=engine_args(engine_arg)
        ),
        task=stored,
        task_sha256=digest,
        layers=parse_numbers(layers, "--layers", int) if layers is not None else None,
        positions=positions,
        mode=mode,
        strengths=parse_numbers(strengths, "--strengths"),
        scale=scale,
        build_position=build_position,
        flip_sign=flip_sign,
        flip_groups=_flip_groups(flip_groups),
        cross_group=cross_group,
        generate=generate,
        max_new_tokens=max_new_tokens,
        batch_size=batch_size,
    )
    cfg = ClassifyConfig.parse(data, "classify")
    run = execute(Classify(), cfg, executor=spec, progress=not quiet)
    typer.echo(f"run directory: {run.path}")
    typer.echo((run.path / "report.md").read_text(encoding="utf-8"))


def _flip_groups(value: str | None) -> list[str]:
    """``--flip-groups a,b`` as a list; given but naming no group is an error, not a no-op."""
    if value is None:
        return []
    from steerlab.errors import SteerlabError

    groups = [g.strip() for g in value.split(",") if g.strip()]
    if not groups:
        raise SteerlabError(f"--flip-groups {value!r} names no vector group: give NAME[,NAME...]")
    return groups
