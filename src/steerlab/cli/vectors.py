"""``steerlab build-vector``, ``generate`` and ``info``: build a steering vector, generate with
it (or without one), and print a vector's metadata."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from steerlab.cli.options import (
    SITE_HELP,
    BackendOpt,
    DeviceOpt,
    DtypeOpt,
    EngineArgOpt,
    ModelOpt,
    model_from_options,
)
from steerlab.errors import SteerlabError


def register(app: typer.Typer) -> None:
    """Add this module's commands to ``app``."""
    app.command("build-vector")(build_vector_cmd)
    app.command("generate")(generate_cmd)
    app.command("info")(info_cmd)


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
    center: Annotated[
        bool, typer.Option("--center", help="pca: centre the differences (repeng's pca_diff)")
    ] = False,
    sign: Annotated[
        str, typer.Option(help="pca: mean (along the mean difference) | vote (repeng's rule)")
    ] = "mean",
    device: DeviceOpt = None,
    dtype: DtypeOpt = None,
    backend: BackendOpt = "hf",
    engine_arg: EngineArgOpt = None,
) -> None:
    """Build a steering vector and save it (with a .stats.json beside it)."""
    from steerlab.directions import SIGN_RULES
    from steerlab.interventions import parse_hook_name
    from steerlab.pipelines.jobs import BuildSpec, build_vector, save_build

    if sign not in SIGN_RULES:
        raise SteerlabError(f"unknown --sign {sign!r}: use one of {', '.join(SIGN_RULES)}")
    if method != "pca" and (center or sign != "mean"):
        raise SteerlabError(f"--center and --sign are options of --method pca, not {method}")
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
        center=center,
        sign=sign,
    )
    from steerlab._util.pathnames import check_not_input

    check_not_input(out, {"--prompts": prompts})
    m = model_from_options(model, device, dtype, backend=backend, engine_arg=engine_arg)
    result = build_vector(m, spec)
    stats_path = save_build(result, out)
    for layer_idx, s in result.stats.items():
        typer.echo(
            f"layer {layer_idx}: raw norm {s.raw_norm:.3f}, mean resid norm "
            f"{s.mean_resid_norm:.3f}, n={s.n}"
        )
    typer.echo(f"wrote {out} and {stats_path}")


def generate_cmd(
    out: Annotated[Path, typer.Option("--out", "-o", help="output .jsonl")],
    model: ModelOpt = "embedded",
    prompt: Annotated[list[str] | None, typer.Option(help="prompt text (repeatable)")] = None,
    prompts: Annotated[
        Path | None,
        typer.Option(help="JSONL with a 'prompt' field, or a shipped set: harm_test, benign, ..."),
    ] = None,
    vector: Annotated[
        Path | None, typer.Option(help="steering vector (.safetensors or control-vector .gguf)")
    ] = None,
    layer: Annotated[list[int] | None, typer.Option(help="layer(s); default: vector's")] = None,
    alpha: Annotated[list[float] | None, typer.Option(help="coefficient(s) (repeatable)")] = None,
    intervention: Annotated[str, typer.Option(help="add | ablate | clamp")] = "add",
    position: Annotated[
        str,
        typer.Option(help="all|prompt|last-prompt|generated|last-prompt-and-generated|window:S:E"),
    ] = "all",
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
    engine_arg: EngineArgOpt = None,
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
    m = model_from_options(model, device, dtype, chat=chat, backend=backend, engine_arg=engine_arg)
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


def info_cmd(
    path: Annotated[
        Path, typer.Argument(help="a steering vector (.safetensors or control-vector .gguf)")
    ],
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
