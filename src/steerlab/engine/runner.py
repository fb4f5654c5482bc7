"""The runner seam: what executes rows, below the engine's front doors.

:func:`~steerlab.engine.generate.generate` and logit scoring check and encode their rows, then
hand them to a :class:`Runner`:

- ``generate(requests, config, on_finish, stats) -> list[RowResult]``: decode every request;
  ``on_finish(indices, results)`` as requests finish (for streaming writes and progress);
- ``score(encoded, interventions, ...)``: next-token log-probabilities after each prompt.

:class:`LocalRunner` runs the loops of this package over a backend's forward pass and KV cache:
the continuous loop when the cache comes apart into tensors
(:attr:`~steerlab.backends.base.Backend.kv_cache`), fixed batches otherwise. An engine that owns
its scheduler and paged KV cache implements the same two calls with its own requests (each row
carries its interventions; the compiled plan's
:meth:`~steerlab.engine.plan.SteeringPlan.apply_tokens` steers a flat token layout), and nothing
above the engine changes.
"""

from __future__ import annotations

from collections.abc import Sequence

from steerlab.engine.continuous import Engine
from steerlab.engine.fixed import run_fixed
from steerlab.engine.forward import local_backend
from steerlab.engine.rows import GenerationConfig, OnFinish, Request, RowResult, result
from steerlab.engine.score_prefix import next_token_batches
from steerlab.engine.seam import Runner, ScoreBatches
from steerlab.interventions import Intervention
from steerlab.models import Model

__all__ = ["LocalRunner", "Runner", "ScoreBatches", "runner_for"]


class LocalRunner(Runner):
    """The loops of this package, in this process, over the model's backend."""

    name = "local"

    def __init__(self, model: Model) -> None:
        self.model = model
        self.backend = local_backend(model)

    def generate(
        self,
        requests: Sequence[Request],
        config: GenerationConfig,
        on_finish: OnFinish | None = None,
        stats: dict[str, int] | None = None,
    ) -> list[RowResult]:
        results: list[RowResult | None] = [None] * len(requests)

        def finished(idx: list[int], out: list[RowResult]) -> None:
            for i, res in zip(idx, out, strict=True):
                results[i] = res
            if on_finish is not None and idx:
                on_finish(idx, out)

        # Longest first: memory peaks early, and similar lengths share batches (less padding);
        # one prompt's rows adjacent, so the continuous loop shares their lower layers.
        order = sorted(
            range(len(requests)),
            key=lambda i: (-len(requests[i].ids), requests[i].ids, i),
        )
        kv_cache = self.backend.kv_cache
        if config.use_cache and config.continuous and kv_cache is not None:
            engine = Engine(self.model, self.backend, kv_cache, requests, config)

            def done(idx: list[int]) -> None:
                finished(
                    idx,
                    [
                        result(self.model.decode, engine.tracks[i], len(requests[i].ids))
                        for i in idx
                    ],
                )

            engine.run(order, done)
            if stats is not None:
                stats.update(engine.stats)
        else:
            run_fixed(self.model, self.backend, requests, order, config, finished)
        return [r for r in results if r is not None]

    def score(
        self,
        encoded: Sequence[Sequence[int]],
        interventions: Sequence[tuple[Intervention, ...]],
        batch_size: int,
        share_prefix: bool = True,
        stats: dict[str, int] | None = None,
    ) -> ScoreBatches:
        return next_token_batches(
            self.model, encoded, interventions, batch_size, share_prefix=share_prefix, stats=stats
        )


def runner_for(model: Model) -> Runner:
    """The runner that executes ``model``'s rows: vLLM's engine for the ``vllm`` backend, the
    local loops for every other."""
    if model.backend.name == "vllm":
        from steerlab.engine.vllm_runner import VLLMRunner

        return VLLMRunner(model)
    return LocalRunner(model)
