"""The continuous engine (``steerlab.engine.continuous``) against the fixed-batch loop and each
row alone.

Continuous batching (finished rows replaced by waiting ones), shared prompt prefixes and a
prompt's lower layers shared across settings are optimizations: with them on, every row's greedy
tokens equal those of the fixed-batch loop and of the row decoded alone, and its log-probabilities
agree to float32 rounding; seeded sampling gives the same tokens too. Checked on every tiny
architecture with every intervention kind and position mode mixed row by row, steering starting at
different blocks, with small batches and staggered budgets so rows join mid-decode.
"""

from __future__ import annotations

import pytest
import torch
from tests.conftest import VectorFactory

from steerlab.engine.generate import GenerationConfig, Row, RowResult, generate
from steerlab.engine.prefill import prefix_key, shared_prefix_length
from steerlab.interventions import Intervention
from steerlab.models import Model

PREFIX = "System: answer briefly.\nUser: "
QUESTIONS = ("Hey!", "Hello there", "The cat sat on a mat", "Why?", "Tell me a story, please")
KINDS = (("add", 6.0), ("ablate", 1.0), ("clamp", 3.0))
MODES = ("all", "prompt", "last-prompt", "generated", "window:-2:1", "window:-40:-30")


def _rows(model: Model, vec_layer: int, make_vector: VectorFactory) -> list[Row]:
    vec = make_vector(model, seed=3, norm=4.0)
    rows: list[Row] = []
    i = 0
    for q in QUESTIONS:
        rows.append(Row(PREFIX + q, (), seed=i, max_new_tokens=3 + i % 7))
        i += 1
        for k, (kind, alpha) in enumerate(KINDS):
            # steering that starts at different blocks: lower layers shared from the middle,
            # from the top, and not at all (block 0)
            layer = (vec_layer, model.n_layers - 1, 0)[k]
            for mode in MODES:
                iv = Intervention(vec, layer, kind, alpha, positions=mode, scale="resid")
                rows.append(Row(PREFIX + q, (iv,), seed=i, max_new_tokens=3 + i % 7))
                i += 1
    return rows


def _assert_same(a: list[RowResult], b: list[RowResult], logprobs: bool = True) -> None:
    assert len(a) == len(b)
    for i, (x, y) in enumerate(zip(a, b, strict=True)):
        assert x.token_ids == y.token_ids, f"row {i}"
        assert x.finish_reason == y.finish_reason, f"row {i}"
        if logprobs:
            torch.testing.assert_close(
                torch.tensor(x.logprobs), torch.tensor(y.logprobs), atol=1e-4, rtol=0
            )
            torch.testing.assert_close(
                torch.tensor(x.entropies), torch.tensor(y.entropies), atol=1e-4, rtol=0
            )


@pytest.mark.parametrize("temperature", [0.0, 0.9])
def test_continuous_equals_fixed_batches_and_alone(
    tiny_model: Model, make_vector: VectorFactory, temperature: float
) -> None:
    rows = _rows(tiny_model, tiny_model.n_layers // 2, make_vector)
    base = dict(max_new_tokens=9, temperature=temperature, top_p=0.9)
    fixed = generate(
        tiny_model, rows, GenerationConfig(**base, continuous=False, batch_size=64), progress=False
    )
    stats: dict[str, int] = {}
    cont = generate(
        tiny_model, rows, GenerationConfig(**base, batch_size=5), progress=False, stats=stats
    )
    # not vacuous: the prefix was shared, rows joined mid-decode, and steering changed tokens
    assert stats["shared_prefix"] >= len(PREFIX) - 2
    assert stats["prompt_tokens_computed"] < stats["prompt_tokens"]
    assert stats["prefills"] > len(rows) // 5
    if tiny_model.backend.can_start_midstack:  # each prompt's lower layers were shared
        assert stats["midstack_prefills"] > 0 and stats["prompt_block_tokens_skipped"] > 0
    assert stats["prompt_tokens_reused"] > 0  # rows that leave the prompt alone: no prefill
    assert sum(r.token_ids != fixed[0].token_ids for r in fixed[1 : 1 + len(KINDS) * 6]) > 0
    _assert_same(cont, fixed, logprobs=temperature == 0)
    for i in (0, 1, 7, 14, len(rows) - 1):
        solo = GenerationConfig(**base, share_prefix=False)  # nothing shared at all
        alone = generate(tiny_model, [rows[i]], solo, progress=False)
        _assert_same([cont[i]], alone, logprobs=temperature == 0)
    assert tiny_model.backend.count_hooks() == 0


def test_prefix_sharing_on_equals_off(tiny_llama: Model, make_vector: VectorFactory) -> None:
    rows = _rows(tiny_llama, 1, make_vector)
    cfg = GenerationConfig(max_new_tokens=9, batch_size=7)
    off = generate(tiny_llama, rows, GenerationConfig(**{**cfg.__dict__, "share_prefix": False}))
    stats: dict[str, int] = {}
    on = generate(tiny_llama, rows, cfg, progress=False, stats=stats)
    assert stats["shared_prefix"] > 0
    assert stats["midstack_prefills"] > 0
    _assert_same(on, off)


def test_prefix_keys_follow_the_steered_prefix_positions(
    tiny_llama: Model, make_vector: VectorFactory
) -> None:
    v = make_vector(tiny_llama, seed=1)

    def key(pos: str, plen: int, alpha: float = 2.0) -> tuple[object, ...]:
        return prefix_key((Intervention(v, 1, "add", alpha, positions=pos),), plen, 10)

    # a window relative to the prompt end: all / prompt cover the whole prefix at any length
    assert key("all", 14) == key("all", 30) == key("prompt", 20) != ()
    # windows that miss the prefix leave it unsteered (shared with unsteered rows)
    assert key("last-prompt", 14) == key("generated", 14) == key("window:-3:0", 14) == ()
    # a window that reaches into the prefix by different amounts gives different keys
    assert key("window:-6:0", 14) != key("window:-6:0", 15) != ()
    assert key("all", 14, alpha=2.0) != key("all", 14, alpha=3.0)


def test_shared_prefix_length_leaves_a_token_to_prefill() -> None:
    assert shared_prefix_length([[1, 2, 3, 4, 5, 6], [1, 2, 3, 4, 5, 6, 7]]) == 5
    assert shared_prefix_length([[1, 2, 3, 4, 5, 9], [1, 2, 3, 4, 5, 6, 7]]) == 5
    assert shared_prefix_length([[1, 2, 3], [1, 2, 3, 4]]) == 0  # shorter than worth sharing
    assert shared_prefix_length([[1, 2, 3, 4, 5, 6]]) == 0
    assert shared_prefix_length([[9, 2, 3, 4, 5, 6], [1, 2, 3, 4, 5, 6]]) == 0


def test_cache_comes_apart_and_back(tiny_llama: Model) -> None:
    be = tiny_llama.backend
    ids = torch.tensor([tiny_llama.encode("Hello there")], device=tiny_llama.device)
    mask = torch.ones_like(ids)
    cache = be.new_cache()
    with torch.inference_mode():
        be.forward(ids, mask, mask.cumsum(-1) - 1, cache)
        kv = be.kv_cache.tensors(cache)
        assert kv is not None and len(kv) == tiny_llama.n_layers
        again = be.kv_cache.tensors(be.kv_cache.from_tensors(kv))
    assert again is not None
    for (k1, v1), (k2, v2) in zip(kv, again, strict=True):
        assert torch.equal(k1, k2) and torch.equal(v1, v2)


def test_lower_layer_sharing_edge_cases(tiny_model: Model, make_vector: VectorFactory) -> None:
    """Rows with interventions at several layers (one touching only generated tokens), prompts
    with no common prefix and different lengths, and budgets of one token: sharing on == off ==
    fixed batches."""
    vec = make_vector(tiny_model, seed=5, norm=4.0)
    top, mid = tiny_model.n_layers - 1, tiny_model.n_layers // 2
    prompts = ("Hey!", "Tell me a story, please", "Why is the sky blue today?", "Ok")
    settings: list[tuple[Intervention, ...]] = [
        (),
        (  # steering starts at `mid` for the prompt; layer 0 acts on generated tokens only
            Intervention(vec, 0, "add", 6.0, positions="generated", scale="resid"),
            Intervention(vec, mid, "ablate", 1.0, scale="resid"),
        ),
        (
            Intervention(vec, 1, "add", 3.0, positions="last-prompt", scale="resid"),
            Intervention(vec, top, "clamp", 3.0, scale="resid"),
        ),
        (Intervention(vec, top, "add", 6.0, positions="window:-3:-1", scale="resid"),),
    ]
    rows = [
        Row(p, s, seed=i * 7 + j, max_new_tokens=1 + (i + j) % 4)
        for i, p in enumerate(prompts)
        for j, s in enumerate(settings)
    ]
    cfg = GenerationConfig(max_new_tokens=4, batch_size=3)
    stats: dict[str, int] = {}
    on = generate(tiny_model, rows, cfg, progress=False, stats=stats)
    off = generate(tiny_model, rows, GenerationConfig(max_new_tokens=4, share_prefix=False))
    fixed = generate(tiny_model, rows, GenerationConfig(max_new_tokens=4, continuous=False))
    assert stats["shared_prefix"] == 0  # the prompts share no prefix
    if tiny_model.backend.can_start_midstack:
        assert stats["midstack_prefills"] > 0
    _assert_same(on, off)
    _assert_same(on, fixed)
    assert tiny_model.backend.count_hooks() == 0
