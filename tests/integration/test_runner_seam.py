"""The runner seam: ``generate`` checks and encodes rows, then hands them to a runner.

A runner receives :class:`~steerlab.engine.rows.Request` objects (token ids, interventions, seed,
resolved budget) and nothing model-framework specific; whatever runner executes them, the
front door's results, order, streaming callbacks and progress stay the same. A backend that only
states model facts (an engine that owns its forward passes) has no local loop: one clear error.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytest
import torch
from tests.conftest import VectorFactory

from steerlab.backends.base import Backend, ModelFacts
from steerlab.engine.forward import local_backend
from steerlab.engine.generate import GenerationConfig, Row, RowResult, generate
from steerlab.engine.rows import OnFinish, Request
from steerlab.engine.runner import LocalRunner, Runner, runner_for
from steerlab.errors import SteerlabError
from steerlab.interventions import Intervention
from steerlab.models import Model


class RecordingRunner(Runner):
    """Delegates to the local runner and keeps what crossed the seam."""

    name = "recording"

    def __init__(self, model: Model) -> None:
        self.inner = LocalRunner(model)
        self.requests: list[Request] = []
        self.finished: list[int] = []

    def generate(
        self,
        requests: Sequence[Request],
        config: GenerationConfig,
        on_finish: OnFinish | None = None,
        stats: dict[str, int] | None = None,
    ) -> list[RowResult]:
        self.requests = list(requests)

        def seen(idx: list[int], out: list[RowResult]) -> None:
            self.finished += idx
            if on_finish is not None:
                on_finish(idx, out)

        return self.inner.generate(requests, config, seen, stats)


def _rows(model: Model, make_vector: VectorFactory) -> list[Row]:
    v = make_vector(model, seed=5, norm=4.0)
    return [
        Row("Hello there", (), seed=1, max_new_tokens=3),
        Row("Tell me a story", (Intervention(v, 1, "add", 2.0),), seed=2),
        Row("Why?", (Intervention(v, 0, "ablate", 1.0, positions="generated"),), seed=3),
    ]


def test_default_runner_is_local_and_matches_an_explicit_one(
    tiny_llama: Model, make_vector: VectorFactory
) -> None:
    assert isinstance(runner_for(tiny_llama), LocalRunner)
    rows = _rows(tiny_llama, make_vector)
    cfg = GenerationConfig(max_new_tokens=5, temperature=0.8, top_p=0.9, batch_size=2)
    a = generate(tiny_llama, rows, cfg, progress=False)
    b = generate(tiny_llama, rows, cfg, progress=False, runner=LocalRunner(tiny_llama))
    assert a == b


def test_a_runner_receives_encoded_requests_and_results_come_back_in_order(
    tiny_llama: Model, make_vector: VectorFactory
) -> None:
    rows = _rows(tiny_llama, make_vector)
    cfg = GenerationConfig(max_new_tokens=5, batch_size=2)
    runner = RecordingRunner(tiny_llama)
    streamed: dict[int, RowResult] = {}
    counted: list[int] = []

    def on_batch(idx: list[int], out: list[RowResult]) -> None:
        streamed.update(zip(idx, out, strict=True))

    got = generate(
        tiny_llama,
        rows,
        cfg,
        progress=False,
        on_batch=on_batch,
        on_rows=counted.append,
        runner=runner,
    )
    assert [r.ids for r in runner.requests] == [tiny_llama.encode(r.prompt) for r in rows]
    assert [r.interventions for r in runner.requests] == [r.interventions for r in rows]
    assert [r.seed for r in runner.requests] == [1, 2, 3]
    assert [r.max_new_tokens for r in runner.requests] == [3, 5, 5]  # budgets resolved
    assert sorted(runner.finished) == [0, 1, 2]
    assert [streamed[i] for i in range(3)] == got and sum(counted) == 3
    assert got == generate(tiny_llama, rows, cfg, progress=False)


@pytest.mark.parametrize("continuous", [True, False])
def test_the_local_runner_is_the_same_through_either_loop(
    tiny_llama: Model, make_vector: VectorFactory, continuous: bool
) -> None:
    rows = _rows(tiny_llama, make_vector)
    cfg = GenerationConfig(max_new_tokens=4, batch_size=2, continuous=continuous)
    alone = [generate(tiny_llama, [r], cfg, progress=False)[0] for r in rows]
    assert [r.token_ids for r in generate(tiny_llama, rows, cfg, progress=False)] == [
        r.token_ids for r in alone
    ]


class FactsOnly(ModelFacts):
    """A backend that knows its model but runs no forward pass here."""

    name = "elsewhere"

    def __init__(self, inner: Backend) -> None:
        self.inner, self.label, self.model_type = inner, inner.label, inner.model_type

    n_layers = property(lambda self: self.inner.n_layers)  # type: ignore[assignment]
    d_model = property(lambda self: self.inner.d_model)  # type: ignore[assignment]
    device = property(lambda self: self.inner.device)  # type: ignore[assignment]
    dtype = property(lambda self: self.inner.dtype)  # type: ignore[assignment]
    wrapped = property(lambda self: self.inner.wrapped)  # type: ignore[assignment]


def test_a_backend_with_only_model_facts_has_no_local_loop(tiny_llama: Model) -> None:
    inner = local_backend(tiny_llama)
    facts: Any = FactsOnly(inner)
    model = Model(facts, tiny_llama.tokenizer, "elsewhere", eos_token_ids=(0,))
    assert model.d_model == tiny_llama.d_model and model.n_layers == tiny_llama.n_layers
    with pytest.raises(SteerlabError, match="elsewhere backend runs its forward passes"):
        generate(model, [Row("Hi")], progress=False)


def test_a_cache_that_does_not_come_apart_gets_the_fixed_loop(
    tiny_llama: Model, make_vector: VectorFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without the KV-cache capability the local runner decodes fixed batches, same tokens."""
    rows = _rows(tiny_llama, make_vector)
    cfg = GenerationConfig(max_new_tokens=4, batch_size=2)
    want = generate(tiny_llama, rows, cfg, progress=False)
    backend = local_backend(tiny_llama)
    monkeypatch.setattr(type(backend), "kv_cache", property(lambda self: None))
    stats: dict[str, int] = {}
    got = generate(tiny_llama, rows, cfg, progress=False, stats=stats)
    assert stats == {}  # the continuous loop (which counts its work) did not run
    assert [r.token_ids for r in got] == [r.token_ids for r in want]
    assert torch.allclose(
        torch.tensor([lp for r in got for lp in r.logprobs]),
        torch.tensor([lp for r in want for lp in r.logprobs]),
        atol=1e-5,
    )
