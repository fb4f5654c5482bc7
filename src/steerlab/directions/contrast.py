"""Contrast pairs (CAA / ActAdd): mean over pairs of act(positive) - act(negative)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from steerlab.directions.base import (
    BuildResult,
    check_layers,
    diff_stats,
    make_vector,
    mean_resid,
    prompts_hash,
    split_pairs,
    token_positions,
)
from steerlab.engine.record import Recording, record
from steerlab.errors import SteerlabError
from steerlab.models import Model


def record_texts(
    model: Model,
    texts: Sequence[str],
    layers: Sequence[int],
    hook_point: str,
    position: str,
    chat: bool,
    batch_size: int,
    progress: bool,
    desc: str,
) -> Recording:
    """Activations of plain texts (chat-formatted when ``chat``) at ``last`` or ``mean``."""
    seqs = [model.encode(model.format_prompt(t, chat=chat)) for t in texts]
    pos = [token_positions(position, len(s)) for s in seqs]
    return record(model, seqs, pos, layers, hook_point, batch_size, progress, desc)


def paired_activations(
    model: Model,
    positives: Sequence[str],
    negatives: Sequence[str],
    layers: Sequence[int],
    hook_point: str,
    position: str,
    chat: bool,
    batch_size: int,
    progress: bool,
) -> tuple[Recording, Recording]:
    """Activations of both sides of each pair at ``position`` (``last`` or ``mean``)."""
    if len(positives) != len(negatives):
        raise SteerlabError(
            f"contrast pairs need as many positives as negatives ({len(positives)} vs "
            f"{len(negatives)})"
        )
    if not positives:
        raise SteerlabError("contrast needs at least one pair")

    args = (layers, hook_point, position, chat, batch_size, progress)
    return record_texts(model, positives, *args, "positive"), record_texts(
        model, negatives, *args, "negative"
    )


def contrast(
    model: Model,
    positives: Sequence[Any],
    negatives: Sequence[str] | None = None,
    layers: Sequence[int] = (),
    hook_point: str = "resid_post",
    position: str = "last",
    chat: bool = False,
    batch_size: int = 16,
    progress: bool = False,
) -> BuildResult:
    """Mean difference of paired activations; one pair (``["Love"], ["Hate"]``) or many.

    Pairs can also be given as pairs: ``contrast(model, [("Love", "Hate"), ...], layers=[6])``.
    ``hook_point`` is any site point (``resid_post``, ``mlp_out``, ...).
    """
    positives, negatives = split_pairs(positives, negatives)
    layers = check_layers(model, layers)
    pos, neg = paired_activations(
        model, positives, negatives, layers, hook_point, position, chat, batch_size, progress
    )
    dirs, stats = {}, {}
    for layer in layers:
        diffs = pos.acts[layer] - neg.acts[layer]  # (N, d)
        dirs[layer] = diffs.mean(0)
        stats[layer] = diff_stats(diffs, dirs[layer], mean_resid(pos, neg, layer=layer), batch_size)
    phash = prompts_hash("contrast", list(positives), list(negatives), position, chat)
    extra = {"position": position, "chat": chat, "n_pairs": len(positives)}
    return make_vector(model, dirs, stats, hook_point, "contrast", phash, extra)


def single(
    model: Model,
    prompt: str,
    layers: Sequence[int],
    hook_point: str = "resid_post",
    position: str = "last",
    chat: bool = False,
) -> BuildResult:
    """The activation of one prompt as a direction (a steering config entry without a
    ``negative_prompt``)."""
    layers = check_layers(model, layers)
    seq = model.encode(model.format_prompt(prompt, chat=chat))
    rec = record(model, [seq], [token_positions(position, len(seq))], layers, hook_point)
    dirs = {layer: rec.acts[layer][0] for layer in layers}
    stats = {
        layer: diff_stats(rec.acts[layer], dirs[layer], mean_resid(rec, layer=layer), 1)
        for layer in layers
    }
    phash = prompts_hash("single", prompt, position, chat)
    return make_vector(
        model, dirs, stats, hook_point, "single", phash, {"position": position, "chat": chat}
    )


def contrast_sequences(
    model: Model,
    positives: Sequence[Sequence[int]],
    negatives: Sequence[Sequence[int]],
    layers: Sequence[int],
    hook_point: str = "resid_post",
    method: str = "contrast",
    extra: dict[str, Any] | None = None,
    batch_size: int = 16,
    progress: bool = False,
) -> BuildResult:
    """Mean over pairs of act(positive) - act(negative), read at each token sequence's last
    token, at every layer of ``layers`` in one recording pass per side (CAA's A/B vectors: the
    question followed by the matching / non-matching answer letter)."""
    if len(positives) != len(negatives):
        raise SteerlabError(
            f"contrast pairs need as many positives as negatives ({len(positives)} vs "
            f"{len(negatives)})"
        )
    if not positives:
        raise SteerlabError("contrast needs at least one pair")
    layers = check_layers(model, layers)
    last = [[-1]] * len(positives)
    args = (layers, hook_point, batch_size, progress)
    pos = record(model, positives, last, *args, "positive")
    neg = record(model, negatives, last, *args, "negative")
    dirs, stats = {}, {}
    for layer in layers:
        diffs = pos.acts[layer] - neg.acts[layer]  # (N, d)
        dirs[layer] = diffs.mean(0)
        stats[layer] = diff_stats(diffs, dirs[layer], mean_resid(pos, neg, layer=layer), batch_size)
    phash = prompts_hash(method, [list(p) for p in positives], [list(n) for n in negatives])
    info = {"position": "last", "n_pairs": len(positives), **(extra or {})}
    return make_vector(model, dirs, stats, hook_point, method, phash, info)
