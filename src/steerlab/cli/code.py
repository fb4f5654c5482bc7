"""``steerlab select-coefficients``: code steering on the command line (a baseline, steering
vectors, a coefficient grid run in the sandbox, and the coefficient the selection rule suggests)."""

from __future__ import annotations

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
)


def register(app: typer.Typer) -> None:
    """Add this module's commands to ``app``."""
    app.command("select-coefficients")(select_coefficients_cmd)


def _floats(text: str, what: str, n: int | None = None) -> list[float]:
    from steerlab.errors import SteerlabError

    try:
        values = [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise SteerlabError(f"{what} {text!r}: give numbers separated by commas") from None
    if not values or (n is not None and len(values) != n):
        raise SteerlabError(f"{what} {text!r}: give {n or 'some'} numbers separated by commas")
    return values


def _overrides(items: list[str]) -> dict[str, float]:
    from steerlab.errors import SteerlabError

    out: dict[str, float] = {}
    for item in items:
        name, sep, value = item.partition("=")
        try:
            if not sep or not name:
                raise ValueError
            out[name] = float(value)
        except ValueError:
            raise SteerlabError(f"--select {item!r}: use VECTOR=COEFFICIENT") from None
    return out


def select_coefficients_cmd(
    out: Annotated[Path, typer.Option(help="the run directory (rerun to resume)")],
    model: Annotated[
        str, typer.Option("--model", "-m", help="embedded | tiny-* | model dir | .gguf | hub id")
    ] = "embedded",
    backend: BackendOpt = "hf",
    engine_arg: EngineArgOpt = None,
    tasks: Annotated[
        str, typer.Option(help="basic | humaneval | mbpp | an MBPP-format .jsonl file")
    ] = "basic",
    max_tasks: Annotated[int | None, typer.Option(min=1, help="use the first N tasks only")] = None,
    prompt_mode: Annotated[
        str, typer.Option(help="chat (the chat template) or completion (raw text)")
    ] = "chat",
    baseline: Annotated[
        Path | None,
        typer.Option(
            help="reuse this baseline.parquet (from an earlier run) instead of generating"
        ),
    ] = None,
    vector: Annotated[
        list[Path] | None, typer.Option(help="a vector file of unknown intent (repeatable)")
    ] = None,
    correct_vector: Annotated[
        list[Path] | None,
        typer.Option(help="a vector meant to make failing code pass (repeatable)"),
    ] = None,
    incorrect_vector: Annotated[
        list[Path] | None,
        typer.Option(help="a vector meant to make passing code fail (repeatable)"),
    ] = None,
    vector_from_baseline: Annotated[
        bool,
        typer.Option(
            help="build 'correct' = mean(act | baseline passed) - mean(act | failed) and its "
            "negation 'incorrect' from the baseline's prompts"
        ),
    ] = False,
    layer: Annotated[
        int | None,
        typer.Option(
            help="apply (and build) vectors at this layer (default: the vector's own; "
            "from the baseline: the middle layer)"
        ),
    ] = None,
    hook_point: Annotated[
        str | None, typer.Option(help="site point, e.g. resid_pre (default: the vector's)")
    ] = None,
    coefficients: Annotated[
        str, typer.Option(help="comma-separated grid")
    ] = "1,3,10,30,100,300,1000",
    scale: Annotated[
        str, typer.Option(help="absolute (coefficients in residual-stream units), diff or resid")
    ] = "absolute",
    positions: Annotated[str, typer.Option(help="all | prompt | generated | window:S:E")] = "all",
    n_per_coefficient: Annotated[int, typer.Option(min=1)] = 10,
    same_problems: Annotated[
        bool, typer.Option(help="one problem sample for every coefficient")
    ] = False,
    sample_seed: int = 0,
    max_new_tokens: Annotated[int, typer.Option(min=1)] = 500,
    batch_size: Annotated[int, typer.Option(min=1)] = 64,
    exec_timeout: Annotated[float, typer.Option(min=0.1, help="wall seconds per program")] = 20.0,
    exec_memory_mb: Annotated[int, typer.Option(min=64)] = 1024,
    exec_workers: Annotated[
        int | None, typer.Option(min=1, help="programs at once (default: CPU count)")
    ] = None,
    unsafe_exec: Annotated[
        bool,
        typer.Option(
            help="run model-written code WITHOUT the bubblewrap sandbox (when it is "
            "missing); only on a machine you can lose"
        ),
    ] = False,
    min_syntax_valid: Annotated[float, typer.Option(min=0.0, max=1.0)] = 0.9,
    similarity_band: Annotated[
        str, typer.Option(help="LO,HI: allowed mean char similarity to the baseline")
    ] = "0.4,1.0",
    select: Annotated[
        list[str] | None,
        typer.Option(help="VECTOR=COEF: use this coefficient instead of the suggestion"),
    ] = None,
    baseline_only: Annotated[
        bool, typer.Option(help="only generate and execute the baseline (its pass rate)")
    ] = False,
    shard_size: Annotated[
        int, typer.Option(min=1, help="rows per part file (the unit of resume)")
    ] = 128,
    quiet: QuietOpt = False,
    executor: ExecutorOpt = "local",
    ray_address: RayAddressOpt = None,
    workers: WorkersOpt = None,
    threads_per_worker: ThreadsOpt = None,
) -> None:
    """Sweep steering coefficients over code problems (stratified by complexity), execute the code
    in a sandbox, and measure flips against a temperature-0 baseline and drift; suggest and save
    a coefficient per vector."""
    from steerlab.errors import SteerlabError
    from steerlab.pipelines.code.config import (
        CodeConfig,
        EvalModelCfg,
        ExecCfg,
        FileRef,
        FromBaselineCfg,
        SelectionCfg,
        vector_refs,
    )
    from steerlab.pipelines.code.run import SelectCoefficients
    from steerlab.runs.executor import ExecutorSpec
    from steerlab.runs.runner import execute

    logging.getLogger("steerlab").setLevel(logging.INFO)
    if prompt_mode not in ("chat", "completion"):
        raise SteerlabError(f"--prompt-mode {prompt_mode!r}: use chat or completion")
    spec = ExecutorSpec(executor, ray_address, workers, threads_per_worker)  # type: ignore[arg-type]
    band = _floats(similarity_band, "--similarity-band", 2)
    if band[0] > band[1]:
        raise SteerlabError(f"--similarity-band {similarity_band} is reversed: give MIN,MAX")
    tasks_value, tasks_sha = _tasks_ref(tasks)
    refs = vector_refs(
        [(p, "unknown") for p in vector or []]
        + [(p, "correct") for p in correct_vector or []]
        + [(p, "incorrect") for p in incorrect_vector or []]
    )
    base_ref = None
    if baseline is not None:
        if not baseline.is_file():
            raise SteerlabError(f"--baseline {baseline}: no such file")
        import hashlib

        base_ref = FileRef(
            path=str(baseline.resolve()), sha256=hashlib.sha256(baseline.read_bytes()).hexdigest()
        )
    data = dict(
        out=str(out.resolve()),
        model=EvalModelCfg(
            name=model,
            backend=backend,
            chat=prompt_mode == "chat",
            engine_args=engine_args(engine_arg),
        ),
        tasks=tasks_value,
        tasks_sha256=tasks_sha,
        max_tasks=max_tasks,
        prompt_mode=prompt_mode,
        baseline=base_ref,
        vectors=refs,
        from_baseline=FromBaselineCfg(layer=layer) if vector_from_baseline else None,
        layer=layer,
        hook_point=hook_point,
        coefficients=_floats(coefficients, "--coefficients"),
        scale=scale,
        positions=positions,
        n_per_coefficient=n_per_coefficient,
        same_problems=same_problems,
        sample_seed=sample_seed,
        max_new_tokens=max_new_tokens,
        batch_size=batch_size,
        execution=ExecCfg(
            wall_s=exec_timeout,
            cpu_s=exec_timeout,
            memory_mb=exec_memory_mb,
            workers=exec_workers,
            unsafe=unsafe_exec,
        ),
        selection=SelectionCfg(
            min_syntax_valid=min_syntax_valid,
            min_similarity=band[0],
            max_similarity=band[1],
            override=_overrides(list(select or [])),
        ),
        shard_size=shard_size,
    )
    cfg = CodeConfig.parse(data, "select-coefficients")
    stages = ("baseline",) if baseline_only else None
    run = execute(SelectCoefficients(), cfg, stages=stages, executor=spec, progress=not quiet)
    typer.echo(f"run directory: {run.path}")
    if baseline_only:
        from steerlab.pipelines.code.results import baseline_summary

        typer.echo(baseline_summary(run.path))
        return
    typer.echo((run.path / "report.md").read_text(encoding="utf-8"))


def _tasks_ref(tasks: str) -> tuple[str, str | None]:
    """Named sets stay names; a file becomes an absolute path with its sha256."""
    import hashlib

    from steerlab.errors import SteerlabError

    if tasks in ("basic", "humaneval", "mbpp"):
        return tasks, None
    p = Path(tasks)
    if not p.is_file():
        raise SteerlabError(f"--tasks {tasks}: no such file (or use basic, humaneval, mbpp)")
    return str(p.resolve()), hashlib.sha256(p.read_bytes()).hexdigest()
