"""Three one-call helpers on steerlab's engine: build a contrast vector, generate with a list of
steering dicts, and score every layer for steering toward a target word::

    from transformer_lens import HookedTransformer
    import steerlab as sl

    model = HookedTransformer.from_pretrained("gpt2")   # or any steerlab Model
    v = sl.create_contrast_vector(model, "I provide helpful information.",
                                  "I provide unhelpful information.", layer=10)
    text = sl.generate_with_steering(model, "How can I help you today?",
                                     [{"vector": v, "layer": 10, "coefficient": 2.0}])
    best = sl.find_best_layers_for_steering(model, "I am helpful and honest.",
                                            "I am unhelpful and deceptive.",
                                            "Tell me about", "helpful")

``model`` is a steerlab :class:`~steerlab.models.Model` or anything :func:`steerlab.wrap` takes
without a tokenizer (a TransformerLens ``HookedTransformer`` or ``TransformerBridge``, an nnsight
``LanguageModel``); wrap a Hugging Face model yourself: ``sl.wrap(hf_model, tokenizer)``.
Prompts are raw text (no chat template) unless ``chat=True``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, overload

import torch

from steerlab.analysis.layer_finder import (
    LayerScore,
    encode_prompt,
    find_layers,
    record_content_means,
)
from steerlab.engine.generate import GenerationConfig, Row, generate
from steerlab.errors import SteerlabError
from steerlab.interventions import Intervention
from steerlab.models import Model, wrap
from steerlab.sites import parse_point
from steerlab.vectors import SteeringVector

__all__ = [
    "as_model",
    "create_contrast_vector",
    "find_best_layers_for_steering",
    "generate_with_steering",
]

_REQUIRED = ("vector", "layer", "coefficient")
_OPTIONAL = ("hook_point", "positions")


def as_model(model: Any) -> Model:
    """``model`` itself when it is a steerlab :class:`Model`, else :func:`steerlab.wrap` of it."""
    return model if isinstance(model, Model) else wrap(model)


def create_contrast_vector(
    model: Any,
    positive_prompt: str,
    negative_prompt: str,
    layer: int,
    hook_point: str = "resid_post",
    chat: bool = False,
) -> torch.Tensor:
    """``act(positive_prompt) - act(negative_prompt)`` at ``blocks.{layer}.hook_{hook_point}``.

    Each side is the activation averaged over its prompt's tokens after the first (the first
    token is an attention sink with a huge, nearly prompt-independent activation that would
    otherwise leak in when the prompts differ in length).
    Returns a ``(d_model,)`` float32 CPU tensor, for ``generate_with_steering``'s ``vector``.
    """
    m = as_model(model)
    named, point = parse_point(hook_point)
    if named is not None and named != layer:
        raise SteerlabError(f"hook_point {hook_point!r} names layer {named}, but layer is {layer}")
    m.check_layer(layer)
    pos = encode_prompt(m, positive_prompt, chat, "positive prompt")
    neg = encode_prompt(m, negative_prompt, chat, "negative prompt")
    rec = record_content_means(m, [pos, neg], [layer], point)
    acts = rec.acts[layer]  # (2, d_model)
    return acts[0] - acts[1]


def _steering(model: Model, specs: Sequence[Mapping[str, Any]]) -> tuple[Intervention, ...]:
    """Interventions adding ``coefficient × vector`` (the raw vector: ``scale="diff"``)."""
    if isinstance(specs, Mapping):
        raise SteerlabError("steering_vectors must be a list of dicts, got one dict")
    out: list[Intervention] = []
    for i, spec in enumerate(specs):
        where = f"steering_vectors[{i}]"
        if not isinstance(spec, Mapping):
            raise SteerlabError(
                f"{where} must be a dict with keys vector, layer, coefficient; got "
                f"{type(spec).__name__}"
            )
        missing = [k for k in _REQUIRED if k not in spec]
        unknown = sorted(str(k) for k in spec if k not in _REQUIRED + _OPTIONAL)
        if missing or unknown:
            raise SteerlabError(
                f"{where} has keys {sorted(str(k) for k in spec)}: it needs vector, layer and "
                f"coefficient (optional: hook_point, positions)"
            )
        layer, coef = spec["layer"], spec["coefficient"]
        if isinstance(layer, bool) or not isinstance(layer, int):
            raise SteerlabError(f"{where}: layer must be an int, got {layer!r}")
        if isinstance(coef, bool) or not isinstance(coef, (int, float)) or not math.isfinite(coef):
            raise SteerlabError(f"{where}: coefficient must be a finite number, got {coef!r}")
        model.check_layer(layer, f"{where}: layer")
        raw = spec["vector"]
        if isinstance(raw, SteeringVector):
            vec = raw
        elif isinstance(raw, torch.Tensor):
            if raw.shape != (model.d_model,):
                raise SteerlabError(
                    f"{where}: vector must have shape ({model.d_model},) (d_model), got "
                    f"{tuple(raw.shape)}"
                )
            vec = SteeringVector(
                directions={layer: raw},
                hook_point=parse_point(spec.get("hook_point", "resid_post"))[1],
                method="tensor",
                model_id=model.name,
            )
        else:
            raise SteerlabError(
                f"{where}: vector must be a tensor or a SteeringVector, got {type(raw).__name__}"
            )
        if vec.norm(layer) == 0.0:
            continue  # adding a zero vector changes nothing
        out.append(
            Intervention(
                vec,
                layer,
                "add",
                alpha=float(coef),
                hook_point=spec.get("hook_point"),
                positions=spec.get("positions", "all"),
                scale="diff",
            )
        )
    return tuple(out)


@overload
def generate_with_steering(
    model: Any,
    prompt: str,
    steering_vectors: Sequence[Mapping[str, Any]] = ...,
    max_new_tokens: int = ...,
    temperature: float = ...,
    top_p: float = ...,
    seed: int = ...,
    chat: bool = ...,
) -> str: ...


@overload
def generate_with_steering(
    model: Any,
    prompt: Sequence[str],
    steering_vectors: Sequence[Mapping[str, Any]] = ...,
    max_new_tokens: int = ...,
    temperature: float = ...,
    top_p: float = ...,
    seed: int = ...,
    chat: bool = ...,
) -> list[str]: ...


def generate_with_steering(
    model: Any,
    prompt: str | Sequence[str],
    steering_vectors: Sequence[Mapping[str, Any]] = (),
    max_new_tokens: int = 50,
    temperature: float = 0.0,
    top_p: float = 1.0,
    seed: int = 0,
    chat: bool = False,
) -> str | list[str]:
    """Generate with every entry of ``steering_vectors`` applied together.

    Each entry is ``{"vector": tensor or SteeringVector, "layer": L, "coefficient": c}`` and adds
    ``c × vector`` (the raw vector, not normalised) to ``blocks.L.hook_resid_post`` at every token,
    prompt and generated (optional keys: ``hook_point``, ``positions``). Entries at one layer add
    up. ``temperature`` 0 is greedy; sampling draws from ``seed``, per prompt.

    ``prompt`` may be a list of prompts: they run as one batch through the decode engine and a
    list of texts comes back, each the same as for that prompt alone. Returns only the generated
    continuation, not the prompt.
    """
    m = as_model(model)
    texts = [prompt] if isinstance(prompt, str) else list(prompt)
    if not texts:
        raise SteerlabError("give at least one prompt")
    ivs = _steering(m, steering_vectors)
    config = GenerationConfig(max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p)
    rows = []
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise SteerlabError(f"prompt {i} must be a string, got {type(text).__name__}")
        rows.append(Row(m.format_prompt(text, chat=chat), ivs, seed=seed))
    out = [r.text for r in generate(m, rows, config, progress=False)]
    return out[0] if isinstance(prompt, str) else out


def find_best_layers_for_steering(
    model: Any,
    positive_prompt: str | Sequence[str],
    negative_prompt: str | Sequence[str],
    test_prompt: str | Sequence[str],
    target_word: str,
    layers: Sequence[int] | None = None,
    strength: float = 1.0,
    neutral_prompts: Sequence[str] | None = None,
    top_k: int = 5,
    chat: bool = False,
) -> list[LayerScore]:
    """The ``top_k`` layers where the positive-minus-negative contrast direction most raises
    ``log P(target_word)`` as the next token after ``test_prompt``, best first.

    Every layer (or ``layers``) is steered at ``strength`` × its mean residual norm; see
    :func:`steerlab.analysis.layer_finder.find_layers` (which also returns the cost and a plot).
    """
    if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
        raise SteerlabError(f"top_k must be a positive integer, got {top_k!r}")
    report = find_layers(
        as_model(model),
        test_prompt,
        target_word,
        positive=positive_prompt,
        negative=negative_prompt,
        layers=layers,
        strength=strength,
        neutral_prompts=neutral_prompts,
        chat=chat,
    )
    return list(report.table[:top_k])
