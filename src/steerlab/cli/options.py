"""Command-line options shared by :mod:`steerlab.cli` and the command modules beside it."""

from __future__ import annotations

from typing import Annotated

import typer

BackendOpt = Annotated[
    str, typer.Option(help="hf | transformer_lens | nnsight (who runs the model)")
]

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
