"""Shared pieces of direction construction: stats, hashing, and the mean-difference reducer."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from steerlab._util.version import __version__
from steerlab.engine.record import Recording
from steerlab.errors import SteerlabError
from steerlab.models import Model
from steerlab.sites import parse_point
from steerlab.vectors import SteeringVector


@dataclass(frozen=True)
class LayerStats:
    """Construction diagnostics for one layer.

    ``batch_cosines``: cosine of each batch's own estimate to the final vector (stability);
    ``diff_norm_mean/std``: per-example difference norms; ``explained_variance``: PCA only.
    """

    raw_norm: float
    mean_resid_norm: float
    n: int
    batch_cosines: tuple[float, ...]
    diff_norm_mean: float
    diff_norm_std: float
    explained_variance: float | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "raw_norm": self.raw_norm,
            "mean_resid_norm": self.mean_resid_norm,
            "n": self.n,
            "batch_cosines": list(self.batch_cosines),
            "diff_norm_mean": self.diff_norm_mean,
            "diff_norm_std": self.diff_norm_std,
            "explained_variance": self.explained_variance,
        }


@dataclass(frozen=True)
class BuildResult:
    """A built vector and its per-layer stats."""

    vector: SteeringVector
    stats: dict[int, LayerStats] = field(default_factory=dict)

    def stats_dict(self) -> dict[str, Any]:
        return {str(k): v.as_dict() for k, v in self.stats.items()}


def prompts_hash(*parts: Any) -> str:
    blob = json.dumps(parts, sort_keys=True, ensure_ascii=False, default=str)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


def check_layers(model: Model, layers: Sequence[int]) -> list[int]:
    if not layers:
        raise SteerlabError("choose at least one layer")
    for layer in layers:
        model.check_layer(layer)
    return sorted(set(int(x) for x in layers))


def batch_cosines(diffs: torch.Tensor, final: torch.Tensor, batch_size: int) -> tuple[float, ...]:
    """Cosine of each batch's mean difference (rows of ``diffs`` (N, d)) to ``final`` (d,)."""
    out = []
    for start in range(0, diffs.shape[0], batch_size):
        est = diffs[start : start + batch_size].mean(0)
        out.append(float(torch.nn.functional.cosine_similarity(est, final, dim=0)))
    return tuple(out)


def diff_stats(
    diffs: torch.Tensor,
    final: torch.Tensor,
    resid_norm: float,
    batch_size: int,
    explained_variance: float | None = None,
) -> LayerStats:
    norms = diffs.norm(dim=-1)
    return LayerStats(
        raw_norm=float(final.norm()),
        mean_resid_norm=resid_norm,
        n=int(diffs.shape[0]),
        batch_cosines=batch_cosines(diffs, final, batch_size),
        diff_norm_mean=float(norms.mean()),
        diff_norm_std=float(norms.std()) if diffs.shape[0] > 1 else 0.0,
        explained_variance=explained_variance,
    )


def mean_resid(*recs: Recording, layer: int) -> float:
    return float(torch.cat([r.norms[layer] for r in recs]).mean())


def make_vector(
    model: Model,
    dirs: dict[int, torch.Tensor],
    stats: dict[int, LayerStats],
    hook_point: str,
    method: str,
    phash: str,
    extra: dict[str, Any],
) -> BuildResult:
    named, point = parse_point(hook_point)
    if named is not None and set(dirs) != {named}:
        raise SteerlabError(
            f"hook point {hook_point!r} names layer {named}, but the vector is built at layers "
            f"{sorted(dirs)}: give the point ({point!r}) for several layers"
        )
    hook_point = point
    for layer, d in dirs.items():
        if float(d.norm()) == 0.0:
            raise SteerlabError(
                f"the {method} direction at layer {layer} is exactly zero: the two sides give "
                "identical activations at the chosen positions"
            )
    vec = SteeringVector(
        directions=dirs,
        hook_point=hook_point,
        method=method,
        model_id=model.name,
        raw_norm={k: s.raw_norm for k, s in stats.items()},
        mean_resid_norm={k: s.mean_resid_norm for k, s in stats.items()},
        prompts_hash=phash,
        steerlab_version=__version__,
        extra={**extra, "stats": {str(k): v.as_dict() for k, v in stats.items()}},
    )
    return BuildResult(vec, stats)


Pairs = Sequence[Any]


def split_pairs(
    positives: Sequence[Any], negatives: Sequence[str] | None
) -> tuple[list[str], list[str]]:
    """Positives and negatives from either two parallel lists or one list of pairs.

    Pairs may be ``(positive, negative)`` tuples (steering-vectors / repeng style) or objects
    with ``positive_str`` / ``negative_str`` (steering-vectors' training samples) or
    ``positive`` / ``negative`` attributes.
    """
    if negatives is not None:
        return [str(p) for p in positives], [str(n) for n in negatives]
    pos: list[str] = []
    neg: list[str] = []
    for i, pair in enumerate(positives):
        if isinstance(pair, str):
            raise SteerlabError(
                "give negatives too, or pass pairs as [(positive, negative), ...] "
                f"(item {i} is a lone string)"
            )
        if isinstance(pair, (tuple, list)) and len(pair) == 2:
            a, b = pair
        elif hasattr(pair, "positive_str") and hasattr(pair, "negative_str"):
            a, b = pair.positive_str, pair.negative_str
        elif hasattr(pair, "positive") and hasattr(pair, "negative"):
            a, b = pair.positive, pair.negative
        else:
            raise SteerlabError(f"pair {i} is not a (positive, negative) pair: {pair!r:.80}")
        if not isinstance(a, str) or not isinstance(b, str):
            raise SteerlabError(f"pair {i}: both sides must be strings")
        pos.append(a)
        neg.append(b)
    return pos, neg


def token_positions(spec: str, n_tokens: int) -> list[int]:
    """Positions for plain texts: ``last`` token or ``mean`` over all tokens."""
    if spec == "last":
        return [n_tokens - 1]
    if spec == "mean":
        return list(range(n_tokens))
    raise SteerlabError(f"unknown position {spec!r}: use 'last' or 'mean'")
