"""Tensor parallelism 2 keeps the parity contract (issue 23).

vLLM shards attention heads and MLP columns across ranks and all-reduces their outputs, so every
hooked site (the residual stream, the attention and MLP outputs) holds the full hidden state on
every rank: each rank applies the same steering, and recording and scores are read from rank 0.
vLLM's CPU build runs two ranks as two processes, each bound to its own cores
(:func:`steerlab.backends.vllm.cpu_binding`).

The model is a tiny random Llama whose heads split evenly over two ranks (four 32-wide heads,
two KV heads, 24 layers; the embedded model's nine heads do not). One engine for the module.
Runs in the vLLM environment (``.venv-vllm``, ``make test``); skipped where vLLM is missing.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

pytest.importorskip("vllm")

import torch
from tests.vllm_engine.steering_rows import (
    GREEDY,
    PROMPTS,
    mixed_rows,
    random_vector,
    write_tiny_llama,
)

import steerlab as sl
from steerlab.engine.score import steered_logprobs
from steerlab.models import Model

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="two ranks need two cores"),
]


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Model, Model]]:
    """(the tiny model on vLLM with tensor_parallel_size=2, the same weights on HF)."""
    target = Path(tmp_path_factory.mktemp("tiny-llama-tp"))
    write_tiny_llama(target, width=128, layers=24, heads=4, kv_heads=2, init_std=0.1)
    torch.set_num_threads(2)
    vm = sl.load_model(str(target), backend="vllm", max_model_len=1024, tensor_parallel_size=2)
    yield vm, sl.load_model(str(target))
    vm.backend.close()  # type: ignore[attr-defined]


def test_the_engine_has_two_ranks_and_each_holds_the_hooks_of_a_call(
    models: tuple[Model, Model],
) -> None:
    vm, _ = models
    assert vm.backend.tensor_parallel == 2  # type: ignore[attr-defined]
    assert len(vm.backend.llm.collective_rpc("steerlab_hooks")) == 2  # type: ignore[attr-defined]


def test_mixed_rows_match_the_hf_backend_token_for_token(models: tuple[Model, Model]) -> None:
    vm, hm = models
    rows = mixed_rows(hm)
    got = sl.generate(vm, rows, GREEDY)
    want = sl.generate(hm, rows, GREEDY)
    plain = sl.generate(hm, [sl.Row(r.prompt) for r in rows], GREEDY)
    assert sum(w.token_ids != p.token_ids for w, p in zip(want, plain, strict=True)) > len(rows) / 2
    for k, (a, b) in enumerate(zip(got, want, strict=True)):
        assert a.token_ids == b.token_ids, f"row {k}: {rows[k].interventions}"
        assert a.logprobs == pytest.approx(b.logprobs, abs=2e-3)
    assert vm.backend.count_hooks() == 0


def test_directions_and_steered_scores_equal_the_hf_backend(models: tuple[Model, Model]) -> None:
    vm, hm = models
    pairs = [
        ("I love this, it is wonderful.", "I hate this, it is awful."),
        ("What a great day!", "What a terrible day!"),
    ]
    got = sl.contrast(vm, pairs, layers=[1, 12, 23]).vector
    want = sl.contrast(hm, pairs, layers=[1, 12, 23]).vector
    for layer in (1, 12, 23):
        a, b = got.directions[layer], want.directions[layer]
        assert float((a - b).norm() / b.norm()) < 1e-4, layer
    v = random_vector(hm, 7)
    seqs = [vm.encode(vm.format_prompt(p)) for p in PROMPTS[:2]]
    ivs = [[sl.Intervention(v, 4, alpha=3.0, scale="diff")], []]
    a_scores, _ = steered_logprobs(vm, seqs, ivs)
    b_scores, _ = steered_logprobs(hm, seqs, ivs)
    assert torch.allclose(a_scores, b_scores, atol=1e-3)
    assert vm.backend.count_hooks() == 0
