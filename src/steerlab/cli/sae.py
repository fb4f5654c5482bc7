"""``steerlab sae-train``: train a sparse autoencoder on one site of a model, offline."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated

import typer

from steerlab.cli.options import QuietOpt


def register(app: typer.Typer) -> None:
    """Add this module's commands to ``app`` (the CLI's, also when run as ``python -m``)."""
    app.command("sae-train")(sae_train_cmd)


def sae_train_cmd(
    site: Annotated[
        str,
        typer.Option(help="blocks.L.hook_POINT (blocks.15.hook_resid_post), or POINT + --layer"),
    ],
    model: Annotated[
        str, typer.Option("--model", "-m", help="embedded | tiny-* | model dir | .gguf | hub id")
    ] = "embedded",
    layer: Annotated[int | None, typer.Option(help="the layer when --site is a POINT")] = None,
    architecture: Annotated[str, typer.Option(help="topk | relu (ReLU + L1)")] = "topk",
    width: Annotated[
        int | None, typer.Option(min=1, help="features (default: --expansion x d_model)")
    ] = None,
    expansion: Annotated[int, typer.Option(min=1, help="width as a multiple of d_model")] = 8,
    k: Annotated[int, typer.Option(min=1, help="topk: active features per token")] = 32,
    l1: Annotated[float, typer.Option(min=0.0, help="relu: L1 sparsity coefficient")] = 0.01,
    tokens: Annotated[int, typer.Option(min=1, help="training activations to collect")] = 300_000,
    eval_tokens: Annotated[int, typer.Option(min=1, help="held-out tokens for the metrics")] = 8192,
    epochs: Annotated[int, typer.Option(min=1, help="passes over the training activations")] = 3,
    batch_size: Annotated[int, typer.Option(min=1, help="activations per training step")] = 512,
    lr: Annotated[float, typer.Option(min=0.0, help="Adam learning rate")] = 1e-3,
    outlier_factor: Annotated[
        float,
        typer.Option(min=1.0, help="leave out tokens whose norm exceeds this x the median"),
    ] = 10.0,
    context: Annotated[int, typer.Option(min=2, help="tokens per text window")] = 128,
    generations: Annotated[
        int, typer.Option(min=0, help="prompts the model answers to add its own text")
    ] = 64,
    seed: int = 0,
    out: Annotated[
        Path | None,
        typer.Option("--out", "-o", help="also copy the SAE here (it is always kept in the cache)"),
    ] = None,
    device: Annotated[str | None, typer.Option(help="cpu, cuda, cuda:1 (default: cuda if any)")] = (
        None
    ),
    quiet: QuietOpt = False,
) -> None:
    """Train a sparse autoencoder (sae-lens format) on activations from offline text: shipped
    prompts, the model's own answers, shipped code and the Python standard library. Cached: the
    same settings again reuse the result."""
    from steerlab.models import load_model
    from steerlab.sae_training.corpus import CorpusConfig
    from steerlab.sae_training.train import SAETrainConfig, check_out, train_sae
    from steerlab.sites import parse_site

    logging.getLogger("steerlab").setLevel(logging.WARNING if quiet else logging.INFO)
    where = parse_site(site, layer)
    cfg = SAETrainConfig(
        architecture=architecture,
        width=width,
        expansion=expansion,
        k=k,
        l1=l1,
        tokens=tokens,
        eval_tokens=eval_tokens,
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        outlier_factor=outlier_factor,
        seed=seed,
        corpus=CorpusConfig(context=context, generations=generations, seed=seed),
    )
    if out is not None:
        check_out(out)  # before a model loads or anything is trained
    m = load_model(model, device=device)
    m.backend.check_site(where)
    cfg.d_sae(m.d_model)
    result = train_sae(m, where, cfg, out=out, progress=not quiet)
    met = result.metrics
    sae = result.sae
    what = f"k {sae.k}" if sae.architecture == "topk" else f"l1 {cfg.l1:g}"
    typer.echo(
        f"SAE {sae.architecture}, width {sae.d_sae}, {what}, on {where.name} of {m.name} "
        f"({result.training['train_tokens']} training tokens)"
    )
    typer.echo(
        f"explained variance {met['explained_variance']:.4f}   L0 {met['l0']:.1f}   "
        f"dead features {met['dead_fraction']:.1%}   ({met['eval_tokens']} held-out tokens; "
        f"{met['outlier_tokens']} attention sinks left out)"
    )
    typer.echo(
        f"next-token CE: clean {met['ce_clean']:.4f}   with SAE {met['ce_reconstruction']:.4f} "
        f"({met['ce_delta']:+.4f})   zero-ablated {met['ce_zero_ablation']:.4f}   "
        f"loss recovered {met['ce_loss_recovered']:.1%}"
    )
    state = "reused from the cache (nothing trained)" if result.cached else "trained"
    typer.echo(f"{state}: {result.path}")
    if result.out is not None:
        typer.echo(f"copied to {result.out}")
