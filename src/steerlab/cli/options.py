"""Command-line option types shared by the command modules of :mod:`steerlab.cli`, and
:func:`model_from_options`, which loads the model those options name (lazily: no torch here)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any

import typer

from steerlab.backends.registry import BACKENDS, unknown_backend

if TYPE_CHECKING:
    from steerlab.models import Model


def _known_backend(value: str) -> str:
    """Refuse a backend not in the registry before anything loads (one line naming the
    option and the names it takes)."""
    if value not in BACKENDS:
        raise typer.BadParameter(unknown_backend(value))
    return value


BackendOpt = Annotated[
    str,
    typer.Option(help=f"{' | '.join(BACKENDS)} (who runs the model)", callback=_known_backend),
]

ModelOpt = Annotated[
    str, typer.Option("--model", "-m", help="embedded | tiny-* | model dir | .gguf | hub id")
]
DeviceOpt = Annotated[str | None, typer.Option(help="cpu, cuda, cuda:1 (default: cuda if any)")]
DtypeOpt = Annotated[str | None, typer.Option(help="float32 | bfloat16 | float16 (default: auto)")]
SITE_HELP = (
    "resid_pre | attn_out | resid_mid | mlp_out | resid_post, or blocks.L.hook_POINT "
    "(TransformerLens names)"
)

QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="no progress bars")]
OutDirOpt = Annotated[
    str | None, typer.Option("--output-dir", help="override experiment.output_dir")
]

ExecutorOpt = Annotated[
    str,
    typer.Option(
        "--executor",
        help="where shards run: local (this process) or ray (Ray actors, one model each; "
        "needs steerlab[ray])",
    ),
]

ThreadsOpt = Annotated[
    int | None,
    typer.Option(
        "--threads-per-worker",
        help="torch threads per Ray CPU worker (default: a local run's count, which makes "
        "results equal a local run's; fewer avoid oversubscribed cores)",
    ),
]

RayAddressOpt = Annotated[
    str | None,
    typer.Option(
        "--ray-address", help="Ray cluster to join (host:port, auto); default: start a local one"
    ),
]

WorkersOpt = Annotated[
    int | None,
    typer.Option(
        "--workers", help="Ray actors (default: one per GPU in the cluster, else one per CPU, <= 8)"
    ),
]


def model_from_options(
    model: str, device: str | None, dtype: str | None, chat: bool = True, backend: str = "hf"
) -> Model:
    """The model that ``--model``/``--device``/``--dtype``/``--backend`` name (imported here,
    when a command runs, so that ``steerlab --help`` does not import torch)."""
    from steerlab.models import load_model

    return load_model(model, device=device, dtype=dtype, chat=chat, backend=backend)


JudgeTimeoutOpt = Annotated[
    float,
    typer.Option(
        "--judge-timeout",
        help="seconds one judge request may take (each socket wait, and the whole reply)",
    ),
]
JudgeRetriesOpt = Annotated[
    int, typer.Option("--judge-retries", min=0, max=100, help="retries of a failed judge request")
]
JudgeBudgetOpt = Annotated[
    float,
    typer.Option(
        "--judge-retry-budget",
        help="seconds one judge prompt may spend on retries and their waits, in all",
    ),
]


def parse_numbers(text: str, what: str, kind: type = float) -> list[Any]:
    """``"1,2,3"`` as numbers of ``kind``; one error naming the option ``what`` otherwise."""
    from steerlab.errors import SteerlabError

    try:
        values = [kind(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise SteerlabError(f"{what} {text!r}: give numbers separated by commas") from None
    if not values:
        raise SteerlabError(f"{what} {text!r}: give numbers separated by commas")
    return values
