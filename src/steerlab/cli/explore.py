"""``steerlab demo`` and ``find-layers``: a quick look at steering on a model (a steered-generation
demo, and a one-pass ranking of layers to steer at)."""

from __future__ import annotations

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
    app.command("demo")(demo_cmd)
    app.command("find-layers")(find_layers_cmd)


def demo_cmd(
    model: ModelOpt = "embedded",
    layer: Annotated[int | None, typer.Option(help="layer (default: middle)")] = None,
    max_new_tokens: Annotated[int, typer.Option(min=1)] = 40,
) -> None:
    """Short steered-generation demo: build a refusal direction, steer a few prompts."""
    from steerlab.pipelines.demo import run_demo

    run_demo(model_from_options(model, None, None), layer=layer, max_new_tokens=max_new_tokens)


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
    engine_arg: EngineArgOpt = None,
) -> None:
    """Rank layers by how much steering there raises the target word's probability (one pass)."""
    from steerlab.analysis.layer_finder import find_layers, parse_layers
    from steerlab.vectors import SteeringVector

    if strength == 0:  # the library keeps 0 (the unsteered baseline); as a command it is a typo
        raise SteerlabError(
            "--strength 0 steers nothing: every layer would score 0 (use e.g. 1, or -1 to push "
            "the other way)"
        )
    chosen = parse_layers(layers) if layers is not None else None
    m = model_from_options(model, device, dtype, chat=chat, backend=backend, engine_arg=engine_arg)
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
