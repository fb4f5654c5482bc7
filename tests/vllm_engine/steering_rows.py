"""Rows that exercise every steering feature at once, for the vLLM parity tests: every
intervention kind at every point and every position mode, alpha = 0 and unsteered rows, two
interventions in one row, all mixed in one call."""

from __future__ import annotations

from pathlib import Path

import torch

import steerlab as sl
from steerlab.models import Model
from steerlab.sites import POINTS

GREEDY = sl.GenerationConfig(max_new_tokens=10)
PROMPTS = (
    "Tell me about your day.",
    "How do I pick a lock?",
    "Write a haiku about the sea.",
    "What is the capital of France?",
)


def random_vector(model: Model, seed: int, point: str = "resid_post") -> sl.SteeringVector:
    g = torch.Generator().manual_seed(seed)
    dirs = {layer: torch.randn(model.d_model, generator=g) for layer in range(model.n_layers)}
    return sl.SteeringVector(dirs, hook_point=point, model_id=model.name)


def mixed_rows(model: Model) -> list[sl.Row]:
    """Every kind at every point and every position mode, α = 0 and unsteered rows, mixed."""
    v = random_vector(model, 1)
    kinds = (("add", 6.0), ("ablate", 1.0), ("clamp", 3.0))
    modes = (
        "all",
        "prompt",
        "last-prompt",
        "generated",
        "last-prompt-and-generated",
        "window:-3:2",
    )
    ivs: list[tuple[sl.Intervention, ...]] = [(), (sl.Intervention(v, 5, alpha=0.0),)]
    i = 0
    for point in POINTS:
        for kind, alpha in kinds:
            mode = modes[i % len(modes)]
            layer = 3 + (i % 20)
            ivs.append(
                (
                    sl.Intervention(
                        v,
                        layer,
                        kind=kind,
                        alpha=alpha,
                        hook_point=point,
                        positions=mode,
                        scale="diff" if kind == "add" else "absolute",
                    ),
                )
            )
            i += 1
    # two interventions in one row, at two sites of one layer
    ivs.append(
        (
            sl.Intervention(v, 9, alpha=-4.0, hook_point="resid_pre"),
            sl.Intervention(v, 9, kind="ablate", alpha=1.0, hook_point="resid_mid"),
        )
    )
    return [
        sl.Row(model.format_prompt(PROMPTS[k % len(PROMPTS)]), iv, seed=k)
        for k, iv in enumerate(ivs)
    ]


def write_tiny_llama(
    target: Path, width: int, layers: int, heads: int, kv_heads: int, init_std: float
) -> None:
    """A tiny random Llama (tiny-llama's byte tokenizer, seed 0) written to ``target``, with
    heads vLLM's CPU attention can run (``width / heads`` must be 32, 64, ...)."""
    from transformers import AutoModelForCausalLM, LlamaConfig

    from steerlab.models.tiny import VOCAB_SIZE, build_tiny_tokenizer

    config = LlamaConfig(
        vocab_size=VOCAB_SIZE,
        hidden_size=width,
        intermediate_size=2 * width,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        max_position_embeddings=1024,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
        initializer_range=init_std,
    )
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.generation_config.pad_token_id = 0
    model.save_pretrained(target)
    build_tiny_tokenizer().save_pretrained(target)
