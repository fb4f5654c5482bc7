"""Which layer should I steer? Score every layer at one relative strength, in one batched pass.

For each candidate layer ``L`` the same intervention is tried: add ``strength × r_L`` along the
layer's unit direction at every prompt token, where ``r_L`` is the mean residual norm at ``L``
(measured on the test and neutral prompts), so layers are compared at a fixed *relative* strength
(``scale="resid"``) and not at one absolute size that is large early and tiny late. Two numbers
come out per layer:

- **effect**: the mean, over the test prompts, of the rise in ``log P(target)`` as the next token;
  ``P(target)`` sums the probabilities of the *first tokens* of the target word's spellings
  (``"helpful"``, ``" helpful"``, ``"Helpful"``, ``" Helpful"``; token ids deduplicated), i.e.
  ``log P = logsumexp`` of their log-probabilities;
- **cost**: the mean, over neutral prompts, of ``KL(unsteered ‖ steered)`` of the next-token
  distribution: how much the steering disturbs text that has nothing to do with the target.

The direction per layer is either given (a :class:`~steerlab.vectors.SteeringVector` with every
layer, or one ``(d_model,)`` tensor used at every layer) or built from contrast prompts:
``act(positive) - act(negative)`` at every layer from one recording pass, each side averaged over
its prompt's tokens after the first (the attention sink, see :func:`content_positions`).

Batching: one recording pass (contrast sides and residual norms, all layers), then one forward
pass whose rows are the unsteered test and neutral prompts followed by one copy of them per layer,
each copy carrying that layer's intervention in a compiled per-row
:class:`~steerlab.engine.plan.SteeringPlan`. Unsteered and steered rows share the pass, so a
zero strength gives effect and cost of exactly 0. ``layers_per_batch`` bounds memory on large
models (each chunk repeats the unsteered rows).

The report (:class:`LayerScore`, :class:`LayerReport`: table, CSV, plot) lives in
:mod:`steerlab.analysis.layer_report`, the batched scoring passes in
:mod:`steerlab.analysis.layer_scoring`; their names are importable from here too.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import torch

from steerlab.analysis.layer_report import CSV_COLUMNS, LayerReport, LayerScore
from steerlab.analysis.layer_scoring import score_layers
from steerlab.engine.generate import check_fits
from steerlab.engine.record import Recording, record
from steerlab.engine.score import steered_logprobs
from steerlab.errors import SteerlabError
from steerlab.interventions import Window
from steerlab.models import Model
from steerlab.sites import Site, parse_point
from steerlab.vectors import SteeringVector

__all__ = [
    "CSV_COLUMNS",
    "DEFAULT_NEUTRAL_PROMPTS",
    "RANK_BY",
    "LayerReport",
    "LayerScore",
    "content_positions",
    "encode_prompt",
    "find_layers",
    "parse_layers",
    "record_content_means",
    "steered_logprobs",
    "target_token_ids",
]

logger = logging.getLogger(__name__)

#: Used for the cost when the caller gives no neutral prompts: plain continuations on unrelated
#: topics, so the cost measures general disturbance rather than movement toward the target.
DEFAULT_NEUTRAL_PROMPTS: tuple[str, ...] = (
    "The weather today is",
    "Here is a list of common fruits:",
    "Once upon a time, there was a",
    "The capital of France is",
    "To boil an egg, first",
)
RANK_BY = ("effect", "effect_per_cost")


# ----------------------------------------------------------------------------- helpers


def target_token_ids(tokenizer: Any, word: str) -> tuple[int, ...]:
    """First token ids of ``word``'s spellings: as given, first letter upper and lower case,
    each with and without a leading space; deduplicated, in that order."""
    base = word.strip()
    if not base:
        raise SteerlabError("the target word is empty")
    cased = (base, base[:1].upper() + base[1:], base[:1].lower() + base[1:])
    ids: list[int] = []
    for spelling in dict.fromkeys(s for c in cased for s in (c, " " + c)):
        toks = tokenizer(spelling, add_special_tokens=False)["input_ids"]
        if toks and int(toks[0]) not in ids:
            ids.append(int(toks[0]))
    if not ids:
        raise SteerlabError(f"the target word {word!r} encodes to zero tokens")
    return tuple(ids)


def content_positions(model: Model, ids: Sequence[int]) -> list[int]:
    """Every position of ``ids`` except the first (when there is more than one).

    The first token of a sequence is an attention sink in most models, BOS or not: its
    activation barely depends on what follows, and its norm is far above the other tokens' (on
    SmolLM2-135M about 4,000-24,000 against about 200 from the middle layers on). Kept in a
    per-prompt mean it would leak into a contrast of prompts of different lengths (with weight
    ``1/n_pos - 1/n_neg``) and inflate the mean residual norm that sets the relative strength.
    """
    return list(range(1, len(ids))) if len(ids) > 1 else [0]


def record_content_means(
    model: Model, sequences: Sequence[Sequence[int]], layers: Sequence[int], hook_point: str
) -> Recording:
    """Per sequence and layer: the activation and residual norm averaged over
    :func:`content_positions`; one batched recording pass for all layers."""
    positions = [content_positions(model, s) for s in sequences]
    return record(model, sequences, positions, layers, hook_point)


def encode_prompt(model: Model, text: str, chat: bool, what: str) -> list[int]:
    """Token ids of ``text`` (chat-formatted when ``chat``); a clear error when there are none."""
    if not isinstance(text, str):
        raise SteerlabError(f"the {what} must be a string, got {type(text).__name__}")
    ids = model.encode(model.format_prompt(text, chat=chat))
    if not ids:
        raise SteerlabError(f"the {what} {text!r} encodes to zero tokens")
    check_fits(model, len(ids), 0, f"the {what} {text[:40]!r}")
    return ids


def parse_layers(spec: str) -> list[int]:
    """``"0,2,4"`` -> ``[0, 2, 4]`` (the command line's ``--layers``)."""
    try:
        out = [int(part) for part in spec.split(",") if part.strip()]
    except ValueError:
        out = []
    if not out:
        raise SteerlabError(f"--layers {spec!r} is not a comma-separated list of layer indices")
    return out


def _texts(value: str | Sequence[str], what: str) -> list[str]:
    texts = [value] if isinstance(value, str) else list(value)
    if not texts:
        raise SteerlabError(f"give at least one {what}")
    return texts


def _check_layers(model: Model, layers: Sequence[int] | None, point: str) -> list[int]:
    if layers is None:
        chosen = list(range(model.n_layers))
    else:
        chosen = list(dict.fromkeys(int(x) for x in layers))
        if not chosen:
            raise SteerlabError("choose at least one layer")
    for layer in chosen:
        model.check_layer(layer)
        model.backend.check_site(Site(layer, point))
    return chosen


def _targets(model: Model, word: str | None, ids: Sequence[int] | None) -> tuple[int, ...]:
    if (word is None) == (ids is None):
        raise SteerlabError("give exactly one of target_word or target_ids")
    if word is not None:
        return target_token_ids(model.tokenizer, word)
    assert ids is not None
    out = tuple(dict.fromkeys(int(i) for i in ids))
    vocab = len(model.tokenizer)
    if not out or any(not 0 <= i < vocab for i in out):
        raise SteerlabError(f"target_ids must be token ids in 0..{vocab - 1}, got {list(ids)}")
    return out


def _given_directions(
    model: Model, vector: SteeringVector | torch.Tensor, layers: Sequence[int]
) -> dict[int, torch.Tensor]:
    if isinstance(vector, SteeringVector):
        vector.check_d_model(model.d_model)
        missing = [layer for layer in layers if layer not in vector.directions]
        if missing:
            raise SteerlabError(
                f"the vector has no direction at layers {missing} (it has {list(vector.layers)}): "
                "score only its layers, or pass one tensor, vector.direction(L), to use the same "
                "direction at every layer"
            )
        return {layer: vector.direction(layer) for layer in layers}
    if isinstance(vector, torch.Tensor):
        if vector.shape != (model.d_model,):
            raise SteerlabError(
                f"a direction tensor must have shape ({model.d_model},) (d_model), got "
                f"{tuple(vector.shape)}"
            )
        t = vector.detach().to("cpu", torch.float32)
        return {layer: t.clone() for layer in layers}
    raise SteerlabError(
        f"vector must be a SteeringVector or a (d_model,) tensor, got {type(vector).__name__}"
    )


def _ratio(effect: float, cost: float) -> float:
    if cost > 0:
        return effect / cost
    return math.nan if effect == 0 else math.copysign(math.inf, effect)


def _rank_key(rank_by: str) -> Any:
    def key(item: tuple[int, float, float]) -> tuple[float, float, int]:
        layer, effect, cost = item
        value = effect if rank_by == "effect" else _ratio(effect, cost)
        return (-value if not math.isnan(value) else math.inf, cost, layer)

    return key


def _contrast_vector(
    model: Model,
    rec: Recording,
    n: int,
    layers: Sequence[int],
    point: str,
    norms: dict[int, float],
    chat: bool,
) -> SteeringVector:
    """Mean over the ``n`` pairs of positive minus negative (rows ``:n`` and ``n:2n`` of
    ``rec``) at every layer."""
    dirs = {layer: (rec.acts[layer][:n] - rec.acts[layer][n : 2 * n]).mean(0) for layer in layers}
    for layer, d in dirs.items():
        if float(d.norm()) == 0.0:
            raise SteerlabError(
                f"the contrast direction at layer {layer} is exactly zero: the positive and "
                "negative prompts give identical activations there"
            )
    return SteeringVector(
        directions=dirs,
        hook_point=point,
        method="contrast",
        model_id=model.name,
        raw_norm={layer: float(d.norm()) for layer, d in dirs.items()},
        mean_resid_norm=norms,
        extra={"position": "mean", "chat": chat, "n_pairs": n},
    )


def _given_vector(
    model: Model,
    vector: SteeringVector | torch.Tensor,
    layers: Sequence[int],
    point: str,
    norms: dict[int, float],
) -> SteeringVector:
    """The caller's direction(s) at ``layers``, carrying the measured residual norms."""
    dirs = _given_directions(model, vector, layers)
    if isinstance(vector, SteeringVector):
        return replace(vector, directions=dirs, mean_resid_norm=norms)
    if float(dirs[layers[0]].norm()) == 0.0:
        raise SteerlabError("the direction tensor is all zeros")
    return SteeringVector(
        directions=dirs,
        hook_point=point,
        method="tensor",
        model_id=model.name,
        mean_resid_norm=norms,
    )


# ----------------------------------------------------------------------------- the finder


def find_layers(
    model: Model,
    test_prompts: str | Sequence[str],
    target_word: str | None = None,
    *,
    vector: SteeringVector | torch.Tensor | None = None,
    positive: str | Sequence[str] | None = None,
    negative: str | Sequence[str] | None = None,
    target_ids: Sequence[int] | None = None,
    layers: Sequence[int] | None = None,
    strength: float = 1.0,
    neutral_prompts: Sequence[str] | None = None,
    hook: str | None = None,
    positions: str = "all",
    chat: bool = False,
    rank_by: str = "effect",
    layers_per_batch: int | None = None,
) -> LayerReport:
    """Rank ``layers`` (default: all) by how much steering there raises ``log P(target)`` as the
    next token after ``test_prompts``, and measure what it costs on ``neutral_prompts``.

    Args:
        model: a steerlab :class:`~steerlab.models.Model` (any backend).
        test_prompts: one prompt or several; the target is scored as the token right after each.
        target_word: the word to promote (its spellings' first tokens, see
            :func:`target_token_ids`); or give ``target_ids``, the exact token ids, instead.
        vector: the direction: a :class:`SteeringVector` with a direction at every scored layer,
            or one ``(d_model,)`` tensor used at every layer. Or give ``positive`` and
            ``negative`` (one prompt each, or equally many): the direction at each layer is the
            mean over pairs of ``act(positive) - act(negative)``, each averaged over its tokens.
        strength: α in units of the mean residual norm at each layer (``scale="resid"``);
            negative steers away; 0 gives effect and cost exactly 0.
        neutral_prompts: prompts for the cost (default :data:`DEFAULT_NEUTRAL_PROMPTS`).
        hook: where to steer and (for contrast prompts) read: a site point such as
            ``resid_post`` (default: the vector's own point, else ``resid_post``).
        positions: which tokens are steered (see :class:`~steerlab.interventions.Window`);
            default every prompt token.
        chat: apply the chat template to every prompt (default: raw text continuation).
        rank_by: ``effect`` (default) or ``effect_per_cost``; ties go to the lower cost, then
            the lower layer.
        layers_per_batch: score at most this many layers per forward pass (default: all in one).

    Returns:
        A :class:`LayerReport`; ``report.best.layer`` is the winner.
    """
    tests = _texts(test_prompts, "test prompt")
    neutrals = _texts(
        DEFAULT_NEUTRAL_PROMPTS if neutral_prompts is None else neutral_prompts, "neutral prompt"
    )
    default_point = vector.hook_point if isinstance(vector, SteeringVector) else "resid_post"
    named, point = parse_point(hook or default_point)
    if named is not None:
        raise SteerlabError(
            f"hook {hook!r} names a layer: give the point ({point!r}) and the layers to score "
            "with layers=[...]"
        )
    chosen = _check_layers(model, layers, point)
    targets = _targets(model, target_word, target_ids)
    if isinstance(strength, bool) or not isinstance(strength, (int, float)):
        raise SteerlabError(f"strength must be a number, got {strength!r}")
    if not math.isfinite(strength):
        raise SteerlabError(f"strength must be a finite number, got {strength!r}")
    if rank_by not in RANK_BY:
        raise SteerlabError(f"unknown rank_by {rank_by!r}: use one of {', '.join(RANK_BY)}")
    if Window.parse(positions).bounds[0] >= 0:
        raise SteerlabError(
            f"positions {positions!r} selects no prompt token: the finder scores the token "
            "right after the prompt, so only prompt tokens can be steered"
        )
    if layers_per_batch is not None and layers_per_batch < 1:
        raise SteerlabError(f"layers_per_batch must be at least 1, got {layers_per_batch}")

    if vector is not None and (positive is not None or negative is not None):
        raise SteerlabError("give either vector or positive/negative prompts, not both")
    pos_texts: list[str] = []
    neg_texts: list[str] = []
    if vector is None:
        if positive is None or negative is None:
            raise SteerlabError("give a vector, or both positive and negative prompts")
        pos_texts = _texts(positive, "positive prompt")
        neg_texts = _texts(negative, "negative prompt")
        if len(pos_texts) != len(neg_texts):
            raise SteerlabError(
                f"contrast pairs need as many positive as negative prompts ({len(pos_texts)} vs "
                f"{len(neg_texts)})"
            )
    pos_ids = [encode_prompt(model, t, chat, "positive prompt") for t in pos_texts]
    neg_ids = [encode_prompt(model, t, chat, "negative prompt") for t in neg_texts]
    test_ids = [encode_prompt(model, t, chat, "test prompt") for t in tests]
    neutral_ids = [encode_prompt(model, t, chat, "neutral prompt") for t in neutrals]

    # One recording pass: the contrast sides (when given) and the residual norms.
    n = len(pos_ids)
    rec = record_content_means(model, pos_ids + neg_ids + test_ids + neutral_ids, chosen, point)
    norms = {layer: float(rec.norms[layer][2 * n :].mean()) for layer in chosen}
    if vector is None:
        steer_vec = _contrast_vector(model, rec, n, chosen, point, norms, chat)
    else:
        steer_vec = _given_vector(model, vector, chosen, point, norms)
    effects, costs, baseline_logp = score_layers(
        model,
        steer_vec,
        chosen,
        test_ids,
        neutral_ids,
        targets,
        float(strength),
        point,
        positions,
        layers_per_batch or len(chosen),
    )
    order = sorted(
        ((layer, effects[layer], costs[layer]) for layer in chosen), key=_rank_key(rank_by)
    )
    table = tuple(
        LayerScore(
            layer=layer,
            effect=effect,
            cost=cost,
            effect_per_cost=_ratio(effect, cost),
            rank=i + 1,
            resid_norm=norms[layer],
        )
        for i, (layer, effect, cost) in enumerate(order)
    )
    logger.info("find_layers: best layer %d of %d scored", table[0].layer, len(table))
    return LayerReport(
        table=table,
        vector=steer_vec,
        target_ids=targets,
        target_word=target_word,
        strength=float(strength),
        hook_point=point,
        positions=positions,
        rank_by=rank_by,
        baseline_logp=baseline_logp,
        test_prompts=tuple(tests),
        neutral_prompts=tuple(neutrals),
    )
