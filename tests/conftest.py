"""Shared fixtures: session-wide tiny random models and a seeded random steering vector factory.

The tiny models are 2-4 layers of width 64 built from configs (no download) with a byte-level
tokenizer, so every test here runs on CPU in milliseconds per forward pass.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Sequence

import pytest
import torch

from steerlab.models import TINY_MODELS, Model, load_model
from steerlab.vectors import SteeringVector

# Width-64 models gain nothing from intra-op threads; one thread avoids oversubscribing the two
# CI cores (the slow tests raise it for the embedded model and restore it).
torch.set_num_threads(1)

ALL_TINY = (
    "tiny-llama",
    "tiny-gpt2",
    "tiny-neox",
    "tiny-qwen2",
    "tiny-gemma2",
    "tiny-mistral",
    "tiny-phi",
)
assert set(ALL_TINY) == set(TINY_MODELS)

VectorFactory = Callable[..., SteeringVector]


# STEERLAB_TEST_DEVICE=cuda (and STEERLAB_TEST_DTYPE, default float32) runs the tiny-model tests
# on a GPU; tests that build their own tensors put them on ``model.device``.
TEST_DEVICE = os.environ.get("STEERLAB_TEST_DEVICE", "cpu")
TEST_DTYPE = os.environ.get("STEERLAB_TEST_DTYPE", "float32")


@functools.cache
def _load_tiny(name: str) -> Model:
    """One instance per tiny model for the whole session (tests must not mutate it)."""
    return load_model(name, device=TEST_DEVICE, dtype=TEST_DTYPE)


@pytest.fixture(scope="session")
def tiny_llama() -> Model:
    return _load_tiny("tiny-llama")


@pytest.fixture(scope="session", params=ALL_TINY)
def tiny_model(request: pytest.FixtureRequest) -> Model:
    """Each tiny architecture (llama, gpt2, neox, qwen2, gemma2, mistral, phi)."""
    return _load_tiny(request.param)


def resid_norms(model: Model, text: str = "The quick brown fox jumps.") -> dict[int, float]:
    """Mean residual-stream norm entering each block (resid_pre) on ``text``, from HF's own
    ``output_hidden_states`` (independent of steerlab's recorder)."""
    ids = torch.tensor([model.encode(text)], device=model.device)  # (1, T)
    with torch.inference_mode():
        out = model.hf(input_ids=ids, output_hidden_states=True, use_cache=False)
    # hidden_states[L] is the input of block L for L < n_layers
    return {
        layer: float(out.hidden_states[layer][0].norm(dim=-1).mean())
        for layer in range(model.n_layers)
    }


@pytest.fixture(scope="session")
def make_vector() -> VectorFactory:
    """Factory: a seeded random :class:`SteeringVector` for ``model``.

    Directions are Gaussian with norm ~ ``norm`` at every layer (or ``layers``); ``mean_resid_norm``
    holds the model's real residual norms so ``scale="resid"`` moves the model by a comparable
    amount on every architecture.
    """
    norms_cache: dict[str, dict[int, float]] = {}

    def factory(
        model: Model,
        seed: int = 0,
        layers: Sequence[int] | None = None,
        hook_point: str = "resid_post",
        norm: float = 2.0,
    ) -> SteeringVector:
        if model.name not in norms_cache:
            norms_cache[model.name] = resid_norms(model)
        layers = list(range(model.n_layers)) if layers is None else list(layers)
        gen = torch.Generator().manual_seed(seed)
        dirs = {}
        for layer in layers:
            d = torch.randn(model.d_model, generator=gen)  # (d_model,)
            dirs[layer] = d / d.norm() * norm
        return SteeringVector(
            directions=dirs,
            hook_point=hook_point,
            method="random",
            model_id=model.name,
            raw_norm={layer: norm for layer in layers},
            mean_resid_norm={layer: norms_cache[model.name][layer] for layer in layers},
            prompts_hash=f"seed-{seed}",
            extra={"seed": seed},
        )

    return factory
