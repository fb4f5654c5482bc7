"""``steerlab run`` (the whole reliability pipeline), its stage commands (``baseline``,
``build-directions``, ``sweep``, ``sanity``, ``report``), and ``make-prompts``, which writes the
prompt sets the pipeline reads."""

from __future__ import annotations

import contextlib
import logging
import time
from pathlib import Path
from typing import Annotated, Any

import typer

from steerlab.cli.options import (
    BackendOverride,
    EngineArgOpt,
    ExecutorOpt,
    OutDirOpt,
    QuietOpt,
    RayAddressOpt,
    ThreadsOpt,
    WorkersOpt,
    engine_args,
)
from steerlab.errors import SteerlabError
from steerlab.pipelines.reliability.config import STAGES


def register(app: typer.Typer) -> None:
    """Add this module's commands to ``app``: ``run``, one command per stage, ``make-prompts``."""
    _stage_command(
        app,
        "run",
        STAGES,
        "The whole reliability pipeline (resumable: rerun the same command after a crash).",
    )
    _stage_command(
        app, "baseline", ("baseline",), "Unsteered completions for every split (alpha = 0)."
    )
    _stage_command(
        app, "build-directions", ("build-directions",), "Forced-prefix direction per layer."
    )
    _stage_command(
        app, "sweep", ("sign-check", "sweep"), "Sign check, then the layer x kind x alpha grid."
    )
    _stage_command(app, "sanity", ("sanity",), "Template and seed robustness reruns.")
    _stage_command(
        app, "report", ("report",), "results.parquet, summary.csv, figures, examples, report."
    )
    app.command("make-prompts")(make_prompts_cmd)


ConfigOpt = Annotated[
    Path | None,
    typer.Option("--config", "-c", help="pipeline YAML file, or a shipped one: default, fast"),
]
FastOpt = Annotated[bool, typer.Option("--fast", help="use the shipped fast config")]
RunIdOpt = Annotated[str | None, typer.Option(help="run id (default: model + config hash)")]
RunDirOpt = Annotated[Path | None, typer.Option(help="an existing run directory")]
ModelOverride = Annotated[str | None, typer.Option("--model", "-m", help="override model.name")]


def _stages(
    stages: tuple[str, ...],
    config: Path | None,
    fast: bool,
    run_id: str | None,
    run_dir: Path | None,
    model: str | None,
    quiet: bool,
    output_dir: str | None,
    executor: str = "local",
    ray_address: str | None = None,
    workers: int | None = None,
    threads: int | None = None,
    backend: str | None = None,
    engine_arg: list[str] | None = None,
) -> None:
    from steerlab.pipelines.reliability.run import resolve_config, run_stages
    from steerlab.pipelines.reliability.store import RunDir
    from steerlab.runs.executor import ExecutorSpec

    t0 = time.perf_counter()
    spec = ExecutorSpec(executor, ray_address, workers, threads)  # type: ignore[arg-type]

    logging.getLogger("steerlab").setLevel(logging.INFO)
    pairs = (
        ("model.name", model),
        ("model.backend", backend),
        ("experiment.output_dir", output_dir),
    )
    overrides: dict[str, Any] = {k: v for k, v in pairs if v}
    if engine_arg:
        overrides["model.engine_args"] = engine_args(engine_arg)
    if run_dir is not None and config is None and not fast:
        cfg = RunDir.existing(run_dir).load_config()
        if overrides:
            raise SteerlabError(
                "--model/--backend/--engine-arg/--output-dir cannot change an existing run "
                "directory"
            )
    else:
        cfg, _ = resolve_config(config, fast, overrides)
    run = run_stages(cfg, stages, run_id=run_id, run_dir=run_dir, progress=not quiet, executor=spec)
    typer.echo(f"run directory: {run.path}")
    typer.echo(timing_lines(run.read_json("manifest.json"), time.perf_counter() - t0))


def _duration(seconds: float) -> str:
    m, s = divmod(round(seconds), 60)
    return f"{m} min {s:02d} s" if m else f"{s} s"


def timing_lines(manifest: dict[str, Any], wall_s: float) -> str:
    """The command's wall time and the run's recorded stage times (``manifest.json``), with the
    precision it ran in."""
    timings = manifest.get("timings_s") or {}
    stages = ", ".join(f"{k} {float(v):.0f} s" for k, v in timings.items())
    total = sum(float(v) for v in timings.values())
    precision = manifest.get("precision")
    return (
        f"wall time {_duration(wall_s)} (this command, model loading included"
        + (f"; {precision}" if precision else "")
        + ")\n"
        + f"stage times (recorded in manifest.json, {_duration(total)} in all): {stages or 'none'}"
    )


def _stage_command(app: typer.Typer, name: str, stages: tuple[str, ...], doc: str) -> None:
    def cmd(
        config: ConfigOpt = None,
        fast: FastOpt = False,
        run_id: RunIdOpt = None,
        run_dir: RunDirOpt = None,
        model: ModelOverride = None,
        backend: BackendOverride = None,
        engine_arg: EngineArgOpt = None,
        quiet: QuietOpt = False,
        output_dir: OutDirOpt = None,
        executor: ExecutorOpt = "local",
        ray_address: RayAddressOpt = None,
        workers: WorkersOpt = None,
        threads_per_worker: ThreadsOpt = None,
    ) -> None:
        _stages(
            stages,
            config,
            fast,
            run_id,
            run_dir,
            model,
            quiet,
            output_dir,
            executor,
            ray_address,
            workers,
            threads_per_worker,
            backend,
            engine_arg,
        )

    cmd.__doc__ = doc
    app.command(name)(cmd)


def make_prompts_cmd(
    out_dir: Annotated[Path, typer.Option(help="where split JSONL files go")] = Path(
        "data/prompts"
    ),
    n_train: Annotated[int, typer.Option(min=1)] = 150,
    n_test: Annotated[int, typer.Option(min=1)] = 150,
    n_benign: Annotated[int, typer.Option(min=1)] = 200,
    seed: int = 0,
    from_file: Annotated[Path | None, typer.Option("--from", help="CSV/JSON/JSONL")] = None,
    split: Annotated[str | None, typer.Option(help="split name for --from")] = None,
) -> None:
    """Generate the three prompt sets from templates, or ingest a user's file as one split."""
    from steerlab.tasks.prompts import generate_prompt_sets, ingest, write_prompts

    if from_file is not None:
        if not split:
            raise SteerlabError("--from needs --split NAME (e.g. harm_test)")
        from steerlab._util.pathnames import check_name, check_not_input

        check_name(split, "--split")
        check_not_input(out_dir / f"{split}.jsonl", {"--from": from_file})
        rows = ingest(from_file, split)
        write_prompts(rows, out_dir / f"{split}.jsonl")
        typer.echo(f"wrote {len(rows)} prompts to {out_dir / f'{split}.jsonl'}")
        return
    sets = generate_prompt_sets(n_train, n_test, n_benign, seed)
    new = [out_dir / f"{name}.jsonl" for name in sets if not (out_dir / f"{name}.jsonl").exists()]
    try:
        for name, rows in sets.items():
            write_prompts(rows, out_dir / f"{name}.jsonl")
    except BaseException:
        for path in new:  # all three sets or none: a half-written set is removed again
            path.unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            out_dir.rmdir()  # only when it is empty (it was made for them)
        raise
    for name, rows in sets.items():
        typer.echo(f"wrote {len(rows)} prompts to {out_dir / f'{name}.jsonl'}")
