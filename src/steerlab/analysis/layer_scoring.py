"""Scoring layers in batched forward passes: next-token log-probabilities with each row steered
by its own interventions, and per layer the rise of ``log P(target)`` on test prompts (effect)
and ``KL(unsteered ‖ steered)`` on neutral prompts (cost).

Unsteered and steered rows share each pass (the unsteered test and neutral prompts, then one copy
of them per layer, each copy carrying that layer's intervention in a compiled per-row
:class:`~steerlab.engine.plan.SteeringPlan`), so a zero strength gives exactly 0.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from steerlab.engine.score import steered_logprobs
from steerlab.errors import SteerlabError
from steerlab.interventions import Intervention
from steerlab.models import Model
from steerlab.vectors import SteeringVector


def _kl(base: torch.Tensor, steered: torch.Tensor) -> torch.Tensor:
    """KL(base ‖ steered) per row; ``base``/``steered`` (N, V) log-probabilities."""
    p = base.exp()
    terms = torch.where(p > 0, p * (base - steered), torch.zeros_like(p))  # (N, V)
    return terms.sum(-1).clamp(min=0.0)


def score_layers(
    model: Model,
    vector: SteeringVector,
    layers: Sequence[int],
    test_ids: Sequence[Sequence[int]],
    neutral_ids: Sequence[Sequence[int]],
    targets: Sequence[int],
    strength: float,
    point: str,
    positions: str,
    per_batch: int,
) -> tuple[dict[int, float], dict[int, float], float]:
    """Effect and cost per layer, and the unsteered mean log P(target).

    Each pass holds the unsteered rows (test prompts, then neutral prompts) followed by one
    copy of them per layer of the chunk, each copy steered at its layer.
    """
    base_rows = [*test_ids, *neutral_ids]
    n_rows, n_test = len(base_rows), len(test_ids)
    target_idx = list(targets)
    effects: dict[int, float] = {}
    costs: dict[int, float] = {}
    baseline_logp = math.nan
    for start in range(0, len(layers), per_batch):
        group = layers[start : start + per_batch]
        ivs: list[tuple[Intervention, ...]] = [()] * n_rows
        for layer in group:
            iv = Intervention(vector, layer, "add", strength, point, positions, scale="resid")
            ivs += [(iv,)] * n_rows
        logp, overflow = steered_logprobs(model, base_rows * (len(group) + 1), ivs)
        bad = ~torch.isfinite(logp).all(-1)  # (B,)
        if overflow is not None:
            bad = bad | overflow.to(bad.device)
        if bool(bad.any()):
            first = int(bad.nonzero()[0, 0])
            if first < n_rows:
                raise SteerlabError(
                    "the unsteered model's next-token logits are non-finite (NaN/inf): try "
                    "dtype float32"
                )
            raise SteerlabError(
                f"steering at layer {group[first // n_rows - 1]} made the model's output "
                f"non-finite (NaN/inf): strength {strength:g} is far too large"
            )
        base = logp[:n_rows]  # (T + N, V)
        base_target = base[:n_test, target_idx].logsumexp(-1)  # (T,)
        baseline_logp = float(base_target.mean())
        for g, layer in enumerate(group):
            rows = logp[(g + 1) * n_rows : (g + 2) * n_rows]  # (T + N, V)
            target = rows[:n_test, target_idx].logsumexp(-1)  # (T,)
            effects[layer] = float((target - base_target).mean())
            costs[layer] = float(_kl(base[n_test:], rows[n_test:]).mean())
    return effects, costs, baseline_logp
