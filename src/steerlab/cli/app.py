"""The ``steerlab`` command: parse, validate, call a job. Bad input: one stderr line, exit 2."""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import json
import logging
import signal
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any

import typer

from steerlab.cli.options import (
    BackendOpt,
    ExecutorOpt,
    OutDirOpt,
    QuietOpt,
    RayAddressOpt,
    ThreadsOpt,
    WorkersOpt,
)
from steerlab.errors import SteerlabError
from steerlab.pipelines.reliability.config import STAGES

# recent typer vendors click as typer._click; older typer uses click itself
_click_exc: Any = importlib.import_module(
    "typer._click.exceptions" if importlib.util.find_spec("typer._click") else "click.exceptions"
)
ClickException = _click_exc.ClickException
NoArgsIsHelpError = _click_exc.NoArgsIsHelpError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    help="Activation steering for open language models: build vectors, steer generation, measure.",
)

ModelOpt = Annotated[
    str, typer.Option("--model", "-m", help="embedded | tiny-* | model dir | .gguf | hub id")
]
DeviceOpt = Annotated[str | None, typer.Option(help="cpu, cuda, cuda:1 (default: cuda if any)")]
DtypeOpt = Annotated[str | None, typer.Option(help="float32 | bfloat16 | float16 (default: auto)")]
SITE_HELP = (
    "resid_pre | attn_out | resid_mid | mlp_out | resid_post, or blocks.L.hook_POINT "
    "(TransformerLens names)"
)


def _load(  # type: ignore[no-untyped-def]
    model: str, device: str | None, dtype: str | None, chat: bool = True, backend: str = "hf"
):
    from steerlab.models import load_model

    return load_model(model, device=device, dtype=dtype, chat=chat, backend=backend)


@app.command("build-vector")
def build_vector_cmd(
    out: Annotated[Path, typer.Option("--out", "-o", help="output .safetensors")],
    layer: Annotated[list[int], typer.Option("--layer", "-l", help="layer(s) to build at")],
    method: Annotated[str, typer.Option(help="contrast|single|forced-prefix|labeled|pca")] = (
        "contrast"
    ),
    model: ModelOpt = "embedded",
    positive: Annotated[list[str] | None, typer.Option(help="positive text (repeatable)")] = None,
    negative: Annotated[list[str] | None, typer.Option(help="negative text (repeatable)")] = None,
    prompts: Annotated[
        Path | None,
        typer.Option(help="JSONL input (see docs per method), or a shipped set: harm_train, ..."),
    ] = None,
    label_a: Annotated[str | None, typer.Option(help="labeled: the +direction class")] = None,
    label_b: Annotated[str | None, typer.Option(help="labeled: the other class")] = None,
    refusal_prefix: Annotated[str | None, typer.Option(help="forced-prefix: refusal")] = None,
    compliance_prefix: Annotated[str | None, typer.Option(help="forced-prefix")] = None,
    hook_point: Annotated[str, typer.Option(help=SITE_HELP)] = "resid_post",
    position: Annotated[str | None, typer.Option(help="last|mean or *_prefix")] = None,
    chat: Annotated[bool | None, typer.Option("--chat/--no-chat", help="chat-format")] = None,
    batch_size: Annotated[int, typer.Option(min=1)] = 16,
    device: DeviceOpt = None,
    dtype: DtypeOpt = None,
    backend: BackendOpt = "hf",
) -> None:
    """Build a steering vector and save it (with a .stats.json beside it)."""
    from steerlab.interventions import parse_hook_name
    from steerlab.pipelines.jobs import BuildSpec, build_vector, save_build

    hook_layer, point = parse_hook_name(hook_point)
    if hook_layer is not None and hook_layer not in layer:
        raise SteerlabError(
            f"--hook-point {hook_point} names layer {hook_layer}, which is not among --layer "
            f"{list(layer)}"
        )
    spec = BuildSpec(
        method=method,
        layers=tuple(layer),
        hook_point=point,
        position=position,
        positives=tuple(positive or ()),
        negatives=tuple(negative or ()),
        prompts_file=prompts,
        label_a=label_a,
        label_b=label_b,
        refusal_prefix=refusal_prefix,
        compliance_prefix=compliance_prefix,
        chat=chat,
        batch_size=batch_size,
    )
    from steerlab._util.pathnames import check_not_input

    check_not_input(out, {"--prompts": prompts})
    m = _load(model, device, dtype, backend=backend)
    result = build_vector(m, spec)
    stats_path = save_build(result, out)
    for layer_idx, s in result.stats.items():
        typer.echo(
            f"layer {layer_idx}: raw norm {s.raw_norm:.3f}, mean resid norm "
            f"{s.mean_resid_norm:.3f}, n={s.n}"
        )
    typer.echo(f"wrote {out} and {stats_path}")


@app.command("generate")
def generate_cmd(
    out: Annotated[Path, typer.Option("--out", "-o", help="output .jsonl")],
    model: ModelOpt = "embedded",
    prompt: Annotated[list[str] | None, typer.Option(help="prompt text (repeatable)")] = None,
    prompts: Annotated[
        Path | None,
        typer.Option(help="JSONL with a 'prompt' field, or a shipped set: harm_test, benign, ..."),
    ] = None,
    vector: Annotated[Path | None, typer.Option(help="steering vector .safetensors")] = None,
    layer: Annotated[list[int] | None, typer.Option(help="layer(s); default: vector's")] = None,
    alpha: Annotated[list[float] | None, typer.Option(help="coefficient(s) (repeatable)")] = None,
    intervention: Annotated[str, typer.Option(help="add | ablate | clamp")] = "add",
    position: Annotated[str, typer.Option(help="all|prompt|last-prompt|generated|window:S:E")] = (
        "all"
    ),
    scale: Annotated[str, typer.Option(help="absolute | diff | resid")] = "absolute",
    hook_point: Annotated[str | None, typer.Option(help=SITE_HELP + "; default: the vector's")] = (
        None
    ),
    max_new_tokens: Annotated[int, typer.Option(min=1)] = 64,
    temperature: Annotated[float, typer.Option(min=0.0, help="0 = greedy")] = 0.0,
    top_p: Annotated[float, typer.Option(min=0.0, max=1.0)] = 1.0,
    seed: int = 0,
    batch_size: Annotated[int, typer.Option(min=1)] = 32,
    chat: Annotated[bool, typer.Option("--chat/--no-chat", help="apply chat template")] = True,
    system: Annotated[str | None, typer.Option(help="system message")] = None,
    device: DeviceOpt = None,
    dtype: DtypeOpt = None,
    backend: BackendOpt = "hf",
) -> None:
    """Generate (optionally steered; several --layer/--alpha values make a grid) to JSONL."""
    from steerlab.engine.generate import GenerationConfig
    from steerlab.interventions import parse_hook_name
    from steerlab.pipelines.jobs import SteerSpec, read_prompts_for_generate, run_generate

    if (prompt is None) == (prompts is None):
        raise SteerlabError("give exactly one of --prompt TEXT or --prompts FILE.jsonl")
    items = (
        read_prompts_for_generate(prompts)
        if prompts is not None
        else [(f"prompt{i}", p) for i, p in enumerate(prompt or [])]
    )
    point = None
    if hook_point is not None:
        hook_layer, point = parse_hook_name(hook_point)
        if hook_layer is not None and hook_layer not in (layer or []):
            layer = [*(layer or []), hook_layer]
    steer = SteerSpec(
        vector=vector,
        layers=tuple(dict.fromkeys(layer or ())),
        alphas=tuple(alpha or (1.0,)),
        kind=intervention,
        positions=position,
        scale=scale,
        hook_point=point,
    )
    if vector is None and alpha:
        raise SteerlabError("--alpha needs --vector")
    _check_steer_options(intervention, position, scale)
    config = GenerationConfig(
        max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p, batch_size=batch_size
    )
    from steerlab._util.pathnames import check_not_input

    check_not_input(out, {"--prompts": prompts, "--vector": vector})
    m = _load(model, device, dtype, chat=chat, backend=backend)
    n = run_generate(m, items, steer, config, seed, out, chat=chat, system=system)
    typer.echo(f"wrote {n} rows to {out}")


def _check_steer_options(kind: str, positions: str, scale: str) -> None:
    """Validate steering options even when no vector is given (a typo is never ignored)."""
    from steerlab.interventions import SCALES, VECTOR_KINDS, Window

    if kind not in VECTOR_KINDS:
        raise SteerlabError(
            f"unknown --intervention {kind!r}: use one of {', '.join(VECTOR_KINDS)}"
        )
    if scale not in SCALES:
        raise SteerlabError(f"unknown --scale {scale!r}: use one of {', '.join(SCALES)}")
    Window.parse(positions)


@app.command("info")
def info_cmd(
    path: Annotated[Path, typer.Argument(help="a steering vector .safetensors")],
    as_json: Annotated[bool, typer.Option("--json", help="print raw JSON metadata")] = False,
) -> None:
    """Print a steering vector's metadata."""
    from steerlab.vectors import SteeringVector

    vec = SteeringVector.load(path)
    meta = vec.metadata()
    if as_json:
        typer.echo(json.dumps(meta, indent=2))
        return
    typer.echo(f"{path}: steerlab vector ({meta['method']}) built on {meta['model_id']}")
    typer.echo(f"  hook point : {meta['hook_point']}    d_model: {meta['d_model']}")
    for layer in vec.layers:
        typer.echo(
            f"  layer {layer:>3}: norm {vec.norm(layer):.4g}  raw norm "
            f"{vec.raw_norm.get(layer, float('nan')):.4g}  mean resid norm "
            f"{vec.mean_resid_norm.get(layer, float('nan')):.4g}"
        )
    typer.echo(f"  created    : {meta['created']} (steerlab {meta['steerlab_version']})")
    typer.echo(f"  prompts    : sha256 {meta['prompts_hash'][:16]}")
    extra = {k: v for k, v in meta["extra"].items() if k != "stats"}
    if extra:
        typer.echo(f"  details    : {json.dumps(extra)}")


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
) -> None:
    from steerlab.pipelines.reliability.run import resolve_config, run_stages
    from steerlab.pipelines.reliability.store import RunDir
    from steerlab.runs.executor import ExecutorSpec

    spec = ExecutorSpec(executor, ray_address, workers, threads)  # type: ignore[arg-type]

    logging.getLogger("steerlab").setLevel(logging.INFO)
    overrides = {
        k: v for k, v in (("model.name", model), ("experiment.output_dir", output_dir)) if v
    }
    if run_dir is not None and config is None and not fast:
        cfg = RunDir.existing(run_dir).load_config()
        if overrides:
            raise SteerlabError("--model/--output-dir cannot change an existing run directory")
    else:
        cfg, _ = resolve_config(config, fast, overrides)
    run = run_stages(cfg, stages, run_id=run_id, run_dir=run_dir, progress=not quiet, executor=spec)
    typer.echo(f"run directory: {run.path}")


def _stage_command(name: str, stages: tuple[str, ...], doc: str) -> None:
    def cmd(
        config: ConfigOpt = None,
        fast: FastOpt = False,
        run_id: RunIdOpt = None,
        run_dir: RunDirOpt = None,
        model: ModelOverride = None,
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
        )

    cmd.__doc__ = doc
    app.command(name)(cmd)


_stage_command(
    "run",
    STAGES,
    "The whole reliability pipeline (resumable: rerun the same command after a crash).",
)
_stage_command("baseline", ("baseline",), "Unsteered completions for every split (alpha = 0).")
_stage_command("build-directions", ("build-directions",), "Forced-prefix direction per layer.")
_stage_command("sweep", ("sign-check", "sweep"), "Sign check, then the layer x kind x alpha grid.")
_stage_command("sanity", ("sanity",), "Template and seed robustness reruns.")
_stage_command("report", ("report",), "results.parquet, summary.csv, figures, examples, report.")


@app.command("make-prompts")
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
    for name, rows in sets.items():
        write_prompts(rows, out_dir / f"{name}.jsonl")
        typer.echo(f"wrote {len(rows)} prompts to {out_dir / f'{name}.jsonl'}")


@app.command("demo")
def demo_cmd(
    model: ModelOpt = "embedded",
    layer: Annotated[int | None, typer.Option(help="layer (default: middle)")] = None,
    max_new_tokens: Annotated[int, typer.Option(min=1)] = 40,
) -> None:
    """Short steered-generation demo: build a refusal direction, steer a few prompts."""
    from steerlab.pipelines.demo import run_demo

    run_demo(_load(model, None, None), layer=layer, max_new_tokens=max_new_tokens)


@app.command("find-layers")
def find_layers_cmd(
    out: Annotated[Path, typer.Option("--out", "-o", help="directory for layers.csv/.png")],
    target_word: Annotated[str, typer.Option(help="word whose next-token probability to raise")],
    test_prompt: Annotated[
        list[str], typer.Option(help="prompt the target should follow (repeatable)")
    ],
    model: ModelOpt = "embedded",
    positive: Annotated[list[str] | None, typer.Option(help="positive text (repeatable)")] = None,
    negative: Annotated[list[str] | None, typer.Option(help="negative text (repeatable)")] = None,
    vector: Annotated[Path | None, typer.Option(help="a vector .safetensors instead")] = None,
    layers: Annotated[str | None, typer.Option(help="e.g. 0,2,4 (default: all)")] = None,
    strength: Annotated[float, typer.Option(help="x mean residual norm at each layer")] = 1.0,
    neutral: Annotated[list[str] | None, typer.Option(help="neutral prompt for the cost")] = None,
    hook_point: Annotated[str | None, typer.Option(help=SITE_HELP + " (a point)")] = None,
    rank_by: Annotated[str, typer.Option(help="effect | effect_per_cost")] = "effect",
    chat: Annotated[bool, typer.Option("--chat/--no-chat", help="apply chat template")] = False,
    device: DeviceOpt = None,
    dtype: DtypeOpt = None,
    backend: BackendOpt = "hf",
) -> None:
    """Rank layers by how much steering there raises the target word's probability (one pass)."""
    from steerlab.analysis.layer_finder import find_layers, parse_layers
    from steerlab.vectors import SteeringVector

    chosen = parse_layers(layers) if layers is not None else None
    m = _load(model, device, dtype, chat=chat, backend=backend)
    report = find_layers(
        m,
        test_prompt,
        target_word,
        vector=SteeringVector.load(vector, m.d_model) if vector is not None else None,
        positive=positive,
        negative=negative,
        layers=chosen,
        strength=strength,
        neutral_prompts=neutral,
        hook=hook_point,
        chat=chat,
        rank_by=rank_by,
    )
    typer.echo(report.format())
    typer.echo(f"wrote {report.to_csv(out / 'layers.csv')} and {report.plot(out / 'layers.png')}")


# commands kept in modules of their own (imported here, after the shared options exist)
from steerlab.cli import classify as cli_classify  # noqa: E402
from steerlab.cli import code as cli_code  # noqa: E402
from steerlab.cli import questions as cli_questions  # noqa: E402
from steerlab.cli import sae as cli_sae  # noqa: E402
from steerlab.cli import sae_features as cli_sae_features  # noqa: E402

cli_questions.register(app)
cli_code.register(app)
cli_sae.register(app)
cli_sae_features.register(app)
cli_classify.register(app)

INTERRUPTED = "interrupted; rerun the same command to resume"


class Interrupted(KeyboardInterrupt):
    """Raised by the SIGINT/SIGTERM handler so ``finally`` blocks and context managers run
    (atomic writes remove their temp files); ``signum`` picks the exit code, 128 + signum."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


@contextlib.contextmanager
def _signals_raise() -> Iterator[list[int]]:
    """While active, SIGINT and SIGTERM raise :class:`Interrupted` in the main thread; the
    first signal received is appended to the yielded list and later ones are ignored, so
    cleanup is not cut short. The previous handlers are restored afterwards."""
    received: list[int] = []

    def handler(signum: int, frame: object) -> None:
        if not received:
            received.append(signum)
            raise Interrupted(signum)

    if threading.current_thread() is not threading.main_thread():
        yield received  # signal handlers can only be set from the main thread
        return
    old = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield received
    finally:
        for sig, h in old.items():
            signal.signal(sig, h)


def _abort_types() -> tuple[type[BaseException], ...]:
    """typer's Abort, plus click's own (another class when typer vendors click), if loaded."""
    click_exc = sys.modules.get("click.exceptions")
    return (typer.Abort,) if click_exc is None else (typer.Abort, click_exc.Abort)


def main(argv: list[str] | None = None) -> None:
    """Entry point: every expected failure becomes one line on stderr and exit code 2; SIGINT
    and SIGTERM become one line and exit 130 / 143."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    code: int = 0
    message: str | None = None
    with _signals_raise() as received:
        try:
            command = typer.main.get_command(app)
            # standalone_mode=False: typer turns KeyboardInterrupt into Exit(130) and typer.Exit
            # into a *returned* exit code, so the return value is the exit code
            rv = command.main(args=argv, prog_name="steerlab", standalone_mode=False)
            if isinstance(rv, int) and not isinstance(rv, bool):
                code = rv
            if code == 130:  # a KeyboardInterrupt that typer caught
                message = INTERRUPTED
        except KeyboardInterrupt:
            code, message = 130, INTERRUPTED
        except NoArgsIsHelpError as e:
            code = 2
            message = e.format_message() if hasattr(e, "format_message") else str(e)
        except _abort_types():
            code, message = 130, "aborted"  # e.g. EOF at a prompt (Ctrl-C there: see below)
        except ClickException as e:
            code, message = 2, f"error: {_one_line(e.format_message())}"
        except (SteerlabError, OSError) as e:
            code, message = 2, f"error: {_one_line(str(e))}"
        except typer.Exit as e:
            code = e.exit_code
        if received:  # whatever was being unwound, a signal decides the exit code
            code, message = 128 + received[0], INTERRUPTED
    if message is not None:
        typer.echo(message, err=True)
    if code:
        sys.exit(code)


def _one_line(text: str) -> str:
    """Errors are one line on stderr, whatever a library put into the message."""
    return " ".join(text.split())


if __name__ == "__main__":
    main()
