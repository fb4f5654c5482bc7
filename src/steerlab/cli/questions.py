"""``steerlab eval-questions``: question sets answered under steering configs, on the command
line. The underscore spellings ``--n_per_question`` and ``--steering_config_path`` are accepted
beside ``--n-per-question`` and ``--steering-config``."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated

import typer

from steerlab.cli.options import (
    BackendOpt,
    EngineArgOpt,
    ExecutorOpt,
    JudgeBudgetOpt,
    JudgeConcurrencyOpt,
    JudgeKeyEnvOpt,
    JudgeModelOpt,
    JudgeRetriesOpt,
    JudgeTimeoutOpt,
    JudgeUrlOpt,
    QuietOpt,
    RayAddressOpt,
    ThreadsOpt,
    WorkersOpt,
    engine_args,
    judge_cfg,
)


def register(app: typer.Typer) -> None:
    """Add this module's commands to ``app`` (the CLI's, also when run as ``python -m``)."""
    app.command("eval-questions")(eval_questions_cmd)


def eval_questions_cmd(
    questions: Annotated[
        str, typer.Option(help="question YAML (emergent-misalignment format) or a shipped set")
    ],
    out: Annotated[Path, typer.Option(help="the run directory (rerun to resume)")],
    model: Annotated[
        str, typer.Option("--model", "-m", help="embedded | tiny-* | model dir | .gguf | hub id")
    ] = "embedded",
    backend: BackendOpt = "hf",
    engine_arg: EngineArgOpt = None,
    steering_config: Annotated[
        list[Path] | None,
        typer.Option(
            "--steering-config",
            "--steering_config_path",
            help="steering_config.yaml (repeatable: each file is one steering config)",
        ),
    ] = None,
    n_per_question: Annotated[
        int | None,
        typer.Option(
            "--n-per-question",
            "--n_per_question",
            min=1,
            help="samples per paraphrase (overrides the file's samples_per_paraphrase)",
        ),
    ] = None,
    max_new_tokens: Annotated[int, typer.Option(min=1)] = 200,
    temperature: Annotated[float, typer.Option(min=0.0)] = 1.0,
    top_p: Annotated[float, typer.Option(min=0.0, max=1.0)] = 1.0,
    seed: int = 0,
    batch_size: Annotated[int, typer.Option(min=1)] = 32,
    shard_size: Annotated[
        int, typer.Option(min=1, help="rows per part file (the unit of resume)")
    ] = 64,
    chat: Annotated[bool, typer.Option(help="format questions with the chat template")] = True,
    judge_url: JudgeUrlOpt = None,
    judge_model: JudgeModelOpt = None,
    judge_key_env: JudgeKeyEnvOpt = "OPENAI_API_KEY",
    judge_timeout: JudgeTimeoutOpt = 60.0,
    judge_retries: JudgeRetriesOpt = 4,
    judge_retry_budget: JudgeBudgetOpt = 600.0,
    judge_concurrency: JudgeConcurrencyOpt = 8,
    quiet: QuietOpt = False,
    executor: ExecutorOpt = "local",
    ray_address: RayAddressOpt = None,
    workers: WorkersOpt = None,
    threads_per_worker: ThreadsOpt = None,
) -> None:
    """Ask every question N times, unsteered and under each steering config, in shared batches;
    score with rule-based metrics and, with --judge-url/--judge-model, an LLM judge."""
    from steerlab.pipelines.questions.config import (
        EvalConfig,
        EvalGenerationCfg,
        EvalModelCfg,
        FileRef,
        JudgeCfg,
        file_ref,
        steering_refs,
    )
    from steerlab.pipelines.questions.run import EvalQuestions
    from steerlab.runs.executor import ExecutorSpec
    from steerlab.runs.runner import execute

    logging.getLogger("steerlab").setLevel(logging.INFO)
    judge = judge_cfg(
        JudgeCfg,
        judge_url,
        judge_model,
        judge_key_env,
        judge_timeout,
        judge_retries,
        judge_retry_budget,
        judge_concurrency,
    )
    spec = ExecutorSpec(executor, ray_address, workers, threads_per_worker)  # type: ignore[arg-type]
    qpath, qhash = file_ref("questions", questions, "--questions")
    cfg = EvalConfig(
        out=str(out.resolve()),
        model=EvalModelCfg(
            name=model, backend=backend, chat=chat, engine_args=engine_args(engine_arg)
        ),
        questions=FileRef(path=qpath, sha256=qhash),
        steering=steering_refs(list(steering_config or [])),
        n_per_question=n_per_question,
        generation=EvalGenerationCfg(
            max_new_tokens=max_new_tokens,
            temperature=temperature,
            top_p=top_p,
            seed=seed,
            batch_size=batch_size,
        ),
        shard_size=shard_size,
        judge=judge,
    )
    run = execute(EvalQuestions(), cfg, executor=spec, progress=not quiet)
    typer.echo(f"run directory: {run.path}")
    typer.echo((run.path / "report.md").read_text(encoding="utf-8"))
