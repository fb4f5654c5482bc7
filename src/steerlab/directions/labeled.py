"""Labeled mean difference: mean over class-A texts minus mean over class-B texts."""

from __future__ import annotations

from collections.abc import Sequence

from steerlab.directions.base import (
    BuildResult,
    check_layers,
    diff_stats,
    make_vector,
    mean_resid,
    prompts_hash,
)
from steerlab.directions.contrast import record_texts
from steerlab.errors import SteerlabError
from steerlab.models import Model


def labeled(
    model: Model,
    class_a: Sequence[str],
    class_b: Sequence[str],
    layers: Sequence[int],
    hook_point: str = "resid_post",
    position: str = "last",
    chat: bool = False,
    batch_size: int = 16,
    progress: bool = False,
) -> BuildResult:
    """``mean(act(A)) - mean(act(B))``; the classes need not be paired or equally sized.

    The sign is fixed: +vector points from B to A (a sign that is backwards for the task looks
    like steering that does not work; :mod:`steerlab.analysis.signcheck` tests it).
    ``batch_cosines`` compare the estimate from each batch of A vs the matching batch of B.
    """
    layers = check_layers(model, layers)
    if not class_a or not class_b:
        raise SteerlabError("labeled mean-diff needs at least one text in each class")

    args = (layers, hook_point, position, chat, batch_size, progress)
    rec_a = record_texts(model, class_a, *args, "class A")
    rec_b = record_texts(model, class_b, *args, "class B")
    dirs, stats = {}, {}
    for layer in layers:
        a, b = rec_a.acts[layer], rec_b.acts[layer]
        dirs[layer] = a.mean(0) - b.mean(0)
        # pseudo-pairs (each A against B's mean) give per-example spread and batch stability
        diffs = a - b.mean(0, keepdim=True)
        stats[layer] = diff_stats(
            diffs, dirs[layer], mean_resid(rec_a, rec_b, layer=layer), batch_size
        )
    phash = prompts_hash("labeled", list(class_a), list(class_b), position, chat)
    extra = {"position": position, "chat": chat, "n_a": len(class_a), "n_b": len(class_b)}
    return make_vector(model, dirs, stats, hook_point, "labeled", phash, extra)
