"""Command-line option types shared by the command modules of :mod:`steerlab.cli`;
:func:`model_from_options`, which loads the model those options name (lazily: no torch here);
:func:`judge_cfg`, the judge options as a run config's judge; :func:`parse_numbers`."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer

from steerlab.backends.registry import BACKENDS, unknown_backend

if TYPE_CHECKING:
    from steerlab.models import Model

T = TypeVar("T")


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


def _known_backend_or_none(value: str | None) -> str | None:
    return None if value is None else _known_backend(value)


#: ``--backend`` as an override of a config's ``model.backend`` (None: the config's)
BackendOverride = Annotated[
    str | None,
    typer.Option(
        "--backend",
        help=f"override model.backend: {' | '.join(BACKENDS)}",
        callback=_known_backend_or_none,
    ),
]


def _engine_pairs(values: list[str] | None) -> list[str] | None:
    for value in values or ():
        engine_args([value])  # refuse a malformed one while the options are parsed
    return values


#: ``--engine-arg KEY=VALUE`` (repeatable): keyword arguments of the vLLM engine
EngineArgOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--engine-arg",
        help="KEY=VALUE for the vLLM engine (--backend vllm; repeatable), e.g. "
        "tensor_parallel_size=2 or gpu_memory_utilization=0.85",
        callback=_engine_pairs,
    ),
]


def engine_args(values: list[str] | None) -> dict[str, Any]:
    """``--engine-arg`` values as keyword arguments: each value read as a Python literal
    (``2``, ``0.85``, ``True``, ``{'mode': 0}``), else kept as text."""
    import ast

    out: dict[str, Any] = {}
    for item in values or ():
        key, sep, text = item.partition("=")
        if not sep or not key.strip().isidentifier():
            raise typer.BadParameter(f"--engine-arg takes KEY=VALUE, got {item!r}")
        try:
            out[key.strip()] = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            out[key.strip()] = text
    return out


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
    model: str,
    device: str | None,
    dtype: str | None,
    chat: bool = True,
    backend: str = "hf",
    engine_arg: list[str] | None = None,
) -> Model:
    """The model that ``--model``/``--device``/``--dtype``/``--backend``/``--engine-arg`` name
    (imported here, when a command runs, so that ``steerlab --help`` does not import torch)."""
    from steerlab.models import load_model

    extra = engine_args(engine_arg)
    return load_model(model, device=device, dtype=dtype, chat=chat, backend=backend, **extra)


# The judge's options, the same on every command that can call a judge; judge_cfg builds them.
JudgeUrlOpt = Annotated[
    str | None,
    typer.Option(help="the judge: an OpenAI-compatible base URL, e.g. http://127.0.0.1:8000/v1"),
]
JudgeModelOpt = Annotated[str | None, typer.Option(help="the judge model's name")]
JudgeKeyEnvOpt = Annotated[
    str, typer.Option(help="environment variable holding the judge's API key")
]
JudgeConcurrencyOpt = Annotated[int, typer.Option(min=1, help="judge requests at once")]
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


def judge_cfg(
    cfg_type: Callable[..., T],
    url: str | None,
    model: str | None,
    key_env: str,
    timeout_s: float,
    retries: int,
    retry_budget_s: float,
    concurrency: int | None = None,
) -> T | None:
    """The run config's judge (a ``cfg_type``, the workflow's ``JudgeCfg``) from the judge
    options, None without ``--judge-url``; one error line when only one of ``--judge-url`` and
    ``--judge-model`` is given, or a value is out of range. ``concurrency`` None: the config's
    default."""
    from steerlab.errors import SteerlabError

    if (url is None) != (model is None):
        raise SteerlabError("--judge-url and --judge-model go together")
    if url is None or model is None:
        return None
    extra = {} if concurrency is None else {"concurrency": concurrency}
    return cfg_type(
        url=url,
        model=model,
        api_key_env=key_env,
        timeout_s=timeout_s,
        max_retries=retries,
        max_total_s=retry_budget_s,
        **extra,
    )


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
