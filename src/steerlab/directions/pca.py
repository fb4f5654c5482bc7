"""First principal component of paired differences (repeng's pca_diff), sign-aligned."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from steerlab.directions.base import (
    BuildResult,
    check_layers,
    diff_stats,
    make_vector,
    mean_resid,
    prompts_hash,
    split_pairs,
)
from steerlab.directions.contrast import paired_activations
from steerlab.errors import SteerlabError
from steerlab.models import Model


def first_component(diffs: torch.Tensor, center: bool) -> tuple[torch.Tensor, float]:
    """Unit first right-singular vector of ``diffs`` (N, d) and its explained variance ratio.

    Its sign is chosen so it points along the mean difference.
    """
    x = diffs - diffs.mean(0, keepdim=True) if center else diffs
    _, s, vh = torch.linalg.svd(x.double(), full_matrices=False)
    pc = vh[0].float()  # (d,)
    if float(pc @ diffs.mean(0)) < 0:
        pc = -pc
    var = s.pow(2)
    return pc, float(var[0] / var.sum()) if float(var.sum()) > 0 else 0.0


def pca(
    model: Model,
    positives: Sequence[Any],
    negatives: Sequence[str] | None = None,
    layers: Sequence[int] = (),
    hook_point: str = "resid_post",
    position: str = "last",
    chat: bool = False,
    center: bool = False,
    batch_size: int = 16,
    progress: bool = False,
) -> BuildResult:
    """PCA direction scaled to the mean difference's projection on it.

    The stored vector is ``pc * (mean_diff . pc)``, so ``scale="diff"`` is comparable with the
    contrast method; ``explained_variance`` tells how one-dimensional the differences are.
    Pairs can be given as two lists or as one list of ``(positive, negative)`` pairs.
    """
    positives, negatives = split_pairs(positives, negatives)
    layers = check_layers(model, layers)
    if len(positives) < 2:
        raise SteerlabError("PCA needs at least two pairs")
    pos, neg = paired_activations(
        model, positives, negatives, layers, hook_point, position, chat, batch_size, progress
    )
    dirs, stats = {}, {}
    for layer in layers:
        diffs = pos.acts[layer] - neg.acts[layer]  # (N, d)
        pc, ev = first_component(diffs, center)
        dirs[layer] = pc * float(diffs.mean(0) @ pc)
        stats[layer] = diff_stats(
            diffs, dirs[layer], mean_resid(pos, neg, layer=layer), batch_size, ev
        )
    phash = prompts_hash("pca", list(positives), list(negatives), position, chat, center)
    extra = {"position": position, "chat": chat, "center": center, "n_pairs": len(positives)}
    return make_vector(model, dirs, stats, hook_point, "pca", phash, extra)
