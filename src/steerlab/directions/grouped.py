"""Labeled mean-difference vectors per group (e.g. per CWE) and pooled, streamed in batches.

Sign convention, fixed: ``+vector = mean(positive) - mean(negative)``, pointing from the negative
class to the positive (target) class, so positive strength should raise P(positive). The positive
class is the one the task wants more of (e.g. ``vulnerable`` when steering toward detection);
:func:`steerlab.analysis.signcheck.sign_check` verifies this on held-out data before a sweep is
read.

Activations are never kept per example: each batch is recorded (the forward pass stops after the
deepest layer) and added into running sums per group and class, so peak memory is one batch plus
``groups x layers x d_model`` sums, whatever the number of examples. Two passes: the negatives
first, then the positives, whose per-example distance to the finished negative mean gives the
same spread statistics as :func:`steerlab.directions.labeled`.

The pooled vector is ``mean(all positives) - mean(all negatives)``: example-weighted, not an
average of the group vectors. A group lacking one class gets no vector of its own (it is listed
in ``skipped``) but still counts toward the pooled vector.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from tqdm.auto import tqdm

from steerlab.directions.base import LayerStats, check_layers, make_vector, token_positions
from steerlab.engine.record import record
from steerlab.errors import SteerlabError
from steerlab.models import Model
from steerlab.sites import parse_point
from steerlab.vectors import SteeringVector

logger = logging.getLogger(__name__)

METHOD = "labeled"
SIGN = "mean(positive) - mean(negative)"
GroupExamples = Mapping[str, tuple[Sequence[str], Sequence[str]]]


@dataclass(frozen=True)
class GroupVectors:
    """Per-group vectors, the pooled vector, and the example counts behind them.

    ``counts[group] = (n_positive, n_negative)``; ``skipped`` lists the groups with no vector of
    their own because one class was empty.
    """

    groups: Mapping[str, SteeringVector]
    pooled: SteeringVector
    counts: Mapping[str, tuple[int, int]]
    skipped: tuple[str, ...] = ()


def group_vectors(
    model: Model,
    examples_by_group: GroupExamples,
    layers: Sequence[int],
    position: str = "last",
    hook_point: str = "resid_post",
    chat: bool = False,
    batch_size: int = 16,
    folds: int = 5,
    positive_label: str | None = None,
    negative_label: str | None = None,
    progress: bool = False,
) -> GroupVectors:
    """``mean(act(positive)) - mean(act(negative))`` per group and pooled over all groups.

    ``examples_by_group[group] = (positive_texts, negative_texts)``; texts are plain (chat
    formatted when ``chat``) and read at ``position`` (``last`` token or ``mean`` over tokens)
    at ``blocks.L.hook_<hook_point>`` for each layer. The result's directions equal
    :func:`steerlab.directions.labeled` on the same texts (class A = positive).

    Stats per layer follow :func:`~steerlab.directions.labeled` (``n`` = positives; per-example
    norms of ``positive - mean(negative)``), except ``batch_cosines``: with nothing kept per
    example they are the cosines to the final vector of ``folds`` round-robin folds' own
    estimates (``mean(positive fold k) - mean(negative fold k)``), the same stability signal.
    ``positive_label``/``negative_label`` only go into the metadata.
    """
    if batch_size < 1:
        raise SteerlabError("batch_size must be at least 1")
    if folds < 2:
        raise SteerlabError("folds must be at least 2")
    token_positions(position, 1)  # validates the name
    layers = check_layers(model, layers)
    names, pos_texts, neg_texts = _check_groups(examples_by_group)
    d = model.d_model
    n_groups = len(names)
    neg = _Sums(n_groups, layers, d, folds)
    pos = _Sums(n_groups, layers, d, folds)
    hashers = [_hasher(position, chat, hook_point) for _ in names]
    total = sum(len(t) for t in pos_texts) + sum(len(t) for t in neg_texts)
    bar = tqdm(total=total, desc="group vectors", unit="text", disable=not progress)
    args = (model, layers, hook_point, position, chat, batch_size, folds)
    try:
        # pass 1: negatives, for the negative means
        for grp, fold, texts, acts, norms in _stream(*args, neg_texts):
            neg.add(grp, fold, acts, norms)
            _hash_texts(hashers, grp, "negative", texts)
            bar.update(len(texts))
        neg_mean = {layer: neg.mean(layer) for layer in layers}  # (G, d) float64
        pooled_neg_mean = {layer: neg.pooled_mean(layer) for layer in layers}  # (d,)
        dist = _Distances(n_groups, layers)
        # pass 2: positives, with their distance to the finished negative means
        for grp, fold, texts, acts, norms in _stream(*args, pos_texts):
            pos.add(grp, fold, acts, norms)
            dist.add(grp, acts, neg_mean, pooled_neg_mean)
            _hash_texts(hashers, grp, "positive", texts)
            bar.update(len(texts))
    finally:
        bar.close()

    digests = [h.hexdigest() for h in hashers]
    common = {
        "position": position,
        "chat": chat,
        "sign": SIGN,
        "positive_label": positive_label,
        "negative_label": negative_label,
        "stability": f"batch_cosines are {folds} round-robin folds' cosines to the vector",
    }
    vectors: dict[str, SteeringVector] = {}
    skipped: list[str] = []
    counts: dict[str, tuple[int, int]] = {}
    for g, name in enumerate(names):
        n_a, n_b = int(pos.count[g]), int(neg.count[g])
        counts[name] = (n_a, n_b)
        if not n_a or not n_b:
            skipped.append(name)
            logger.warning(
                "group %r has %d positive and %d negative examples: no vector of its own "
                "(it still counts toward the pooled vector)",
                name,
                n_a,
                n_b,
            )
            continue
        dirs, stats = _finish(layers, pos, neg, dist, g)
        extra = {**common, "group": name, "n_a": n_a, "n_b": n_b}
        vectors[name] = make_vector(
            model, dirs, stats, hook_point, METHOD, digests[g], extra
        ).vector
    dirs, stats = _finish(layers, pos, neg, dist, None)
    n_a, n_b = int(pos.count.sum()), int(neg.count.sum())
    extra = {**common, "group": None, "groups": list(names), "n_a": n_a, "n_b": n_b}
    pooled_hash = hashlib.sha256(json.dumps([names, digests]).encode("utf-8")).hexdigest()
    pooled = make_vector(model, dirs, stats, hook_point, METHOD, pooled_hash, extra).vector
    return GroupVectors(vectors, pooled, counts, tuple(skipped))


# ----------------------------------------------------------------------------- running sums


class _Sums:
    """Running sums of one class's activations, per group and per round-robin fold."""

    def __init__(self, n_groups: int, layers: Sequence[int], d: int, folds: int) -> None:
        self.folds = folds
        self.count = torch.zeros(n_groups, dtype=torch.float64)  # (G,)
        self.fold_count = torch.zeros(n_groups * folds, dtype=torch.float64)  # (G*K,)
        f64 = torch.float64
        self.sum = {layer: torch.zeros(n_groups, d, dtype=f64) for layer in layers}  # (G, d)
        self.fold_sum = {layer: torch.zeros(n_groups * folds, d) for layer in layers}  # (G*K, d)
        self.norm_sum = {layer: torch.zeros(n_groups, dtype=f64) for layer in layers}  # (G,)

    def add(
        self,
        g: torch.Tensor,
        fold: torch.Tensor,
        acts: Mapping[int, torch.Tensor],
        norms: Mapping[int, torch.Tensor],
    ) -> None:
        """Add a batch: ``g``/``fold`` (b,) long; ``acts[layer]`` (b, d); ``norms[layer]`` (b,)."""
        gk = g * self.folds + fold  # (b,)
        ones = torch.ones(g.shape[0], dtype=torch.float64)
        self.count.index_add_(0, g, ones)
        self.fold_count.index_add_(0, gk, ones)
        for layer, a in acts.items():
            self.sum[layer].index_add_(0, g, a.double())
            self.fold_sum[layer].index_add_(0, gk, a.float())
            self.norm_sum[layer].index_add_(0, g, norms[layer].double())

    def mean(self, layer: int) -> torch.Tensor:
        """(G, d) float64 per-group means (zeros for an empty group)."""
        return self.sum[layer] / self.count.clamp(min=1)[:, None]

    def pooled_mean(self, layer: int) -> torch.Tensor:
        """(d,) float64 mean over every example of this class."""
        return self.sum[layer].sum(0) / max(float(self.count.sum()), 1.0)


class _Distances:
    """Running sums of ``|a - mean_b|`` and its square over the positives: per group (to the
    group's negative mean) and pooled (to the pooled negative mean)."""

    def __init__(self, n_groups: int, layers: Sequence[int]) -> None:
        f64 = torch.float64
        self.group = {layer: torch.zeros(2, n_groups, dtype=f64) for layer in layers}  # (2, G)
        self.pooled = {layer: torch.zeros(2, dtype=f64) for layer in layers}  # (2,)

    def add(
        self,
        g: torch.Tensor,
        acts: Mapping[int, torch.Tensor],
        neg_mean: Mapping[int, torch.Tensor],
        pooled_neg_mean: Mapping[int, torch.Tensor],
    ) -> None:
        for layer, a in acts.items():
            # float32 like directions.labeled, so the statistics agree with it
            mb = neg_mean[layer].float().index_select(0, g)  # (b, d)
            dn = (a.float() - mb).norm(dim=-1).double()  # (b,)
            self.group[layer][0].index_add_(0, g, dn)
            self.group[layer][1].index_add_(0, g, dn * dn)
            pn = (a.float() - pooled_neg_mean[layer].float()).norm(dim=-1).double()  # (b,)
            self.pooled[layer] += torch.stack([pn.sum(), (pn * pn).sum()])

    def moments(self, layer: int, g: int | None) -> tuple[float, float]:
        s = self.pooled[layer] if g is None else self.group[layer][:, g]
        return float(s[0]), float(s[1])


def _finish(
    layers: Sequence[int],
    pos: _Sums,
    neg: _Sums,
    dist: _Distances,
    g: int | None,
) -> tuple[dict[int, torch.Tensor], dict[int, LayerStats]]:
    """Directions and stats of group ``g`` (None: pooled over all groups)."""

    def pick(t: torch.Tensor) -> torch.Tensor:  # (G, ...) -> (...) for g, summed when pooled
        return t.sum(0) if g is None else t[g]

    k = pos.folds
    n_a, n_b = float(pick(pos.count)), float(pick(neg.count))
    fold_a = pick(pos.fold_count.view(-1, k))  # (K,)
    fold_b = pick(neg.fold_count.view(-1, k))
    dirs: dict[int, torch.Tensor] = {}
    stats: dict[int, LayerStats] = {}
    for layer in layers:
        direction = pick(pos.sum[layer]) / n_a - pick(neg.sum[layer]) / n_b  # (d,) float64
        dirs[layer] = direction.float()
        d = direction.shape[0]
        fa = pick(pos.fold_sum[layer].view(-1, k, d))  # (K, d)
        fb = pick(neg.fold_sum[layer].view(-1, k, d))
        cosines = tuple(
            float(
                torch.nn.functional.cosine_similarity(
                    fa[j].double() / fold_a[j] - fb[j].double() / fold_b[j], direction, dim=0
                )
            )
            for j in range(k)
            if fold_a[j] > 0 and fold_b[j] > 0
        )
        s1, s2 = dist.moments(layer, g)
        mean = s1 / n_a
        var = (s2 - n_a * mean * mean) / (n_a - 1) if n_a > 1 else 0.0
        resid = (float(pick(pos.norm_sum[layer])) + float(pick(neg.norm_sum[layer]))) / (n_a + n_b)
        stats[layer] = LayerStats(
            raw_norm=float(direction.norm()),
            mean_resid_norm=resid,
            n=int(n_a),
            batch_cosines=cosines,
            diff_norm_mean=mean,
            diff_norm_std=math.sqrt(max(var, 0.0)),
        )
    return dirs, stats


# ----------------------------------------------------------------------------- streaming


def _stream(
    model: Model,
    layers: Sequence[int],
    hook_point: str,
    position: str,
    chat: bool,
    batch_size: int,
    folds: int,
    per_group: Sequence[Sequence[str]],
) -> Iterator[
    tuple[torch.Tensor, torch.Tensor, list[str], dict[int, torch.Tensor], dict[int, torch.Tensor]]
]:
    """Yield ``(group, fold, texts, acts, norms)`` per batch of at most ``batch_size`` texts;
    batches cross group boundaries so they stay full. Texts are encoded batch by batch."""

    def items() -> Iterator[tuple[int, int, str]]:
        for g, texts in enumerate(per_group):
            for j, text in enumerate(texts):
                yield g, j % folds, text

    it = items()
    while True:
        chunk = [x for _, x in zip(range(batch_size), it, strict=False)]
        if not chunk:
            return
        texts = [t for _, _, t in chunk]
        seqs = [model.encode(model.format_prompt(t, chat=chat)) for t in texts]
        positions = [token_positions(position, len(s)) for s in seqs]
        rec = record(model, seqs, positions, layers, hook_point, batch_size=len(seqs))
        g = torch.tensor([c[0] for c in chunk], dtype=torch.long)
        fold = torch.tensor([c[1] for c in chunk], dtype=torch.long)
        yield g, fold, texts, rec.acts, rec.norms


def _check_groups(
    examples_by_group: GroupExamples,
) -> tuple[list[str], list[Sequence[str]], list[Sequence[str]]]:
    if not examples_by_group:
        raise SteerlabError("no groups given")
    names: list[str] = []
    pos: list[Sequence[str]] = []
    neg: list[Sequence[str]] = []
    for name, value in examples_by_group.items():
        if not isinstance(value, (tuple, list)) or len(value) != 2:
            raise SteerlabError(
                f"group {name!r}: give (positive_texts, negative_texts), got {type(value).__name__}"
            )
        a, b = value
        for side, texts in (("positive", a), ("negative", b)):
            if isinstance(texts, str) or not all(isinstance(t, str) for t in texts):
                raise SteerlabError(f"group {name!r}: the {side} texts must be a list of strings")
        names.append(str(name))
        pos.append(a)
        neg.append(b)
    if not any(pos) or not any(neg):
        raise SteerlabError(
            "the pooled vector needs at least one positive and one negative text across groups"
        )
    return names, pos, neg


def _hasher(position: str, chat: bool, hook_point: str) -> Any:
    h = hashlib.sha256()
    h.update(json.dumps([METHOD, SIGN, position, chat, parse_point(hook_point)[1]]).encode())
    return h


def _hash_texts(hashers: Sequence[Any], g: torch.Tensor, side: str, texts: Sequence[str]) -> None:
    """Streamed provenance hash: no blob of all texts is ever built."""
    for gi, text in zip(g.tolist(), texts, strict=True):
        hashers[gi].update(json.dumps([side, text], ensure_ascii=False).encode("utf-8"))
