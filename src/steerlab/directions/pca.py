"""First principal component of paired differences, with a sign rule.

How it lines up with repeng 0.4 (same pairs, same read position): the default (``center=False``)
is repeng's ``pca_center`` (an uncentred component of the differences: repeng centres each pair
on its midpoint, and the ±half-differences it then fits have mean zero), and ``center=True`` is
repeng's ``pca_diff`` (scikit-learn's PCA centres the differences before fitting).

Sign: ``sign="mean"`` (the default) points the component along the mean difference;
``sign="vote"`` does as repeng does: it points along the side more pairs take (the component is
flipped when more pairs have the positive example's projection below the negative's), falling
back to the mean rule on a tie. The two differ when a few large differences outweigh many small
ones of the other sign.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

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

SIGN_RULES = ("mean", "vote")


def first_component(
    diffs: torch.Tensor, center: bool, sign: str = "mean"
) -> tuple[torch.Tensor, float]:
    """Unit first right-singular vector of ``diffs`` (N, d) and its explained variance ratio.

    ``sign="mean"``: it points along the mean difference. ``sign="vote"``: along the side most
    pairs' differences take (a tie falls back to the mean rule).
    """
    if sign not in SIGN_RULES:
        raise SteerlabError(f"unknown sign rule {sign!r}: use one of {SIGN_RULES}")
    x = diffs - diffs.mean(0, keepdim=True) if center else diffs
    _, s, vh = torch.linalg.svd(x.double(), full_matrices=False)
    pc = vh[0].float()  # (d,)
    if float(pc @ diffs.mean(0)) < 0:
        pc = -pc
    if sign == "vote":
        proj = diffs @ pc  # positive minus negative projection, per pair
        if int((proj < 0).sum()) > int((proj > 0).sum()):
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
    sign: Literal["mean", "vote"] = "mean",
) -> BuildResult:
    """PCA direction, signed by ``sign`` and scaled to the size of the mean difference's
    projection on it (see the module docstring for repeng's names of the two variants).

    The stored vector is ``pc * |mean_diff . pc|`` with ``pc`` the signed unit component (with
    the default sign rule that is the mean difference's projection on the component), so
    ``scale="diff"`` is comparable with the contrast method; ``explained_variance`` tells how
    one-dimensional the differences are. Pairs can be given as two lists or as one list of
    ``(positive, negative)`` pairs.
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
        pc, ev = first_component(diffs, center, sign)
        dirs[layer] = pc * abs(float(diffs.mean(0) @ pc))
        stats[layer] = diff_stats(
            diffs, dirs[layer], mean_resid(pos, neg, layer=layer), batch_size, ev
        )
    hashed = (list(positives), list(negatives), position, chat, center)
    phash = prompts_hash("pca", *hashed, *((sign,) if sign != "mean" else ()))
    extra = {"position": position, "chat": chat, "center": center, "n_pairs": len(positives)}
    if sign != "mean":
        extra["sign"] = sign
    return make_vector(model, dirs, stats, hook_point, "pca", phash, extra)
