"""``steerlab behaviours``: the A/B behaviour benchmark (CAA's datasets and vectors; Tan et
al.'s steerability, anti-steerable items and prompt shifts)."""

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
    JudgeBudgetOpt,
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
    parse_numbers,
)


def register(app: typer.Typer) -> None:
    app.command("behaviours")(behaviours_cmd)


def _names(text: str | None, what: str) -> list[str] | None:
    from steerlab.errors import SteerlabError

    if text is None:
        return None
    names = [x.strip() for x in text.split(",") if x.strip()]
    if not names:
        raise SteerlabError(f"{what} {text!r} names nothing: give NAME[,NAME...]")
    return names


def _data_ref(
    data: str, keep: list[str] | None, test_fraction: float, seed: int
) -> tuple[str, str]:
    """``(stored reference, sha256 of the loaded items and descriptions)``; errors name the
    file and item."""
    from steerlab.tasks.behaviours import HUB_PREFIX, SHIPPED, load_behaviours

    if not 0.0 < test_fraction < 1.0:
        from steerlab.errors import SteerlabError

        raise SteerlabError(f"--test-fraction {test_fraction}: give a number between 0 and 1")
    loaded = load_behaviours(data, keep, test_fraction, seed)
    stored = data if data in SHIPPED or data.startswith(HUB_PREFIX) else str(Path(data).resolve())
    digest = hashlib.sha256()
    for item in loaded.items:
        digest.update(
            repr((item.id, item.question, item.answer_matching, item.answer_not_matching)).encode()
        )
    for o in loaded.open_items:
        digest.update(repr((o.id, o.question)).encode())
    for name, info in sorted(loaded.info.items()):
        digest.update(repr((name, info.model_dump())).encode())
    return stored, digest.hexdigest()


def behaviours_cmd(
    out: Annotated[Path, typer.Option(help="the run directory (rerun to resume)")],
    data: Annotated[
        str,
        typer.Option(
            help="core (shipped), a directory in CAA's layout, a model-written-evals .jsonl "
            "file or directory, or hf://datasets/OWNER/NAME/FILE.jsonl"
        ),
    ] = "core",
    behaviours: Annotated[
        str | None, typer.Option(help="comma-separated behaviours (default: all)")
    ] = None,
    model: Annotated[
        str, typer.Option("--model", "-m", help="embedded | tiny-* | model dir | .gguf | hub id")
    ] = "embedded",
    backend: BackendOpt = "hf",
    engine_arg: EngineArgOpt = None,
    chat: Annotated[
        bool, typer.Option(help="apply the chat template (question as the user turn)")
    ] = True,
    layers: Annotated[
        str | None, typer.Option(help="comma-separated layers to score (default: every layer)")
    ] = None,
    multipliers: Annotated[
        str, typer.Option(help="comma-separated multipliers (in units of the vector by default)")
    ] = "-2,-1.5,-1,-0.5,0,0.5,1,1.5,2",
    scale: Annotated[
        str, typer.Option(help="diff (units of the vector), resid or absolute")
    ] = "diff",
    read_position: Annotated[
        str, typer.Option(help="where vectors are read: answer (the letter, CAA) or answer-end")
    ] = "answer",
    steer_positions: Annotated[
        str,
        typer.Option(
            help="after-instruction (CAA: from the template's last token before the answer on), "
            "or all, prompt, last-prompt, window:START:END"
        ),
    ] = "after-instruction",
    hook_point: Annotated[
        str, typer.Option(help="where vectors are read and added")
    ] = "resid_post",
    shifts: Annotated[
        str,
        typer.Option(help="prompt shifts: system-toward, system-against, swapped; 'none' for none"),
    ] = "system-toward,system-against,swapped",
    shift_layers: Annotated[
        str, typer.Option(help="best (the layer of highest steerability) or all")
    ] = "best",
    open_ended: Annotated[
        bool, typer.Option(help="generate the open-ended items at the best layer")
    ] = True,
    open_multipliers: Annotated[str, typer.Option(help="multipliers for open-ended")] = "-1,0,1",
    max_new_tokens: Annotated[int, typer.Option(min=1, max=4096)] = 64,
    test_fraction: Annotated[
        float, typer.Option(help="JSONL data: the fraction of items scored (the rest build)")
    ] = 0.5,
    split_seed: Annotated[int, typer.Option(min=0, help="JSONL data: the split's seed")] = 0,
    judge_url: JudgeUrlOpt = None,
    judge_model: JudgeModelOpt = None,
    judge_key_env: JudgeKeyEnvOpt = "OPENAI_API_KEY",
    judge_timeout: JudgeTimeoutOpt = 60.0,
    judge_retries: JudgeRetriesOpt = 4,
    judge_retry_budget: JudgeBudgetOpt = 600.0,
    batch_size: Annotated[int, typer.Option(min=1)] = 32,
    quiet: QuietOpt = False,
    executor: ExecutorOpt = "local",
    ray_address: RayAddressOpt = None,
    workers: WorkersOpt = None,
    threads_per_worker: ThreadsOpt = None,
) -> None:
    """The A/B behaviour benchmark: CAA vectors per behaviour and layer from the generate items,
    the test items scored at every layer x multiplier (P(matching) and logit difference),
    steerability with CIs, anti-steerable items, prompt shifts, the sign check, plots and a
    report."""
    from steerlab.pipelines.behaviours.config import BehavioursConfig, EvalModelCfg, JudgeCfg
    from steerlab.pipelines.behaviours.run import Behaviours
    from steerlab.runs.executor import ExecutorSpec
    from steerlab.runs.runner import execute

    logging.getLogger("steerlab").setLevel(logging.INFO)
    spec = ExecutorSpec(executor, ray_address, workers, threads_per_worker)  # type: ignore[arg-type]
    judge = judge_cfg(
        JudgeCfg,
        judge_url,
        judge_model,
        judge_key_env,
        judge_timeout,
        judge_retries,
        judge_retry_budget,
    )
    keep = _names(behaviours, "--behaviours")
    stored, digest = _data_ref(data, keep, test_fraction, split_seed)
    shift_list = [] if shifts.strip() == "none" else _names(shifts, "--shifts")
    cfg = BehavioursConfig.parse(
        dict(
            out=str(out.resolve()),
            model=EvalModelCfg(
                name=model, backend=backend, chat=chat, engine_args=engine_args(engine_arg)
            ),
            data=stored,
            data_sha256=digest,
            behaviours=keep,
            test_fraction=test_fraction,
            split_seed=split_seed,
            layers=parse_numbers(layers, "--layers", int) if layers is not None else None,
            hook_point=hook_point,
            read_position=read_position,
            steer_positions=steer_positions,
            multipliers=parse_numbers(multipliers, "--multipliers"),
            scale=scale,
            shifts=shift_list,
            shift_layers=shift_layers,
            open_ended=open_ended,
            open_multipliers=parse_numbers(open_multipliers, "--open-multipliers"),
            max_new_tokens=max_new_tokens,
            judge=judge,
            batch_size=batch_size,
        ),
        "behaviours",
    )
    run = execute(Behaviours(), cfg, executor=spec, progress=not quiet)
    typer.echo(f"run directory: {run.path}")
    typer.echo((run.path / "report.md").read_text(encoding="utf-8"))
