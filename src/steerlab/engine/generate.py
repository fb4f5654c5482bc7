"""The ``generate`` front door: rows in, one result per row out, in the order given.

Every row carries its own interventions (compiled into one
:class:`~steerlab.engine.plan.SteeringPlan`) and its own sampling seed (its own
``torch.Generator``, drawn from only on that row's steps), so a row's text does not depend on
which rows share its batch. The rows are checked against the model here (seeds, sites, vector
widths, prompt lengths) and encoded once, then handed to the model's runner
(:mod:`steerlab.engine.runner`): locally, the continuous loop keeps ``batch_size`` rows decoding
(finished rows leave, waiting rows take their places, and the prompt prefix every row shares is
computed once per distinct steering of it) where the backend's KV cache comes apart into
tensors, and fixed batches decode otherwise.

Per generated token we return its log-probability and the entropy of the full next-token
distribution, both from the model's untempered logits (confound metrics need them).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from tqdm.auto import tqdm

from steerlab.engine.batch import check_interventions
from steerlab.engine.rows import (
    SEED_MAX,
    SEED_MIN,
    GenerationConfig,
    Request,
    Row,
    RowResult,
)
from steerlab.engine.runner import Runner, runner_for
from steerlab.errors import SteerlabError
from steerlab.models import Model

__all__ = [
    "SEED_MAX",
    "SEED_MIN",
    "GenerationConfig",
    "Row",
    "RowResult",
    "check_fits",
    "check_prompt_length",
    "generate",
    "model_max_positions",
]


def generate(
    model: Model,
    rows: Sequence[Row],
    config: GenerationConfig | None = None,
    progress: bool = True,
    on_batch: Callable[[list[int], list[RowResult]], None] | None = None,
    on_rows: Callable[[int], object] | None = None,
    stats: dict[str, int] | None = None,
    runner: Runner | None = None,
) -> list[RowResult]:
    """Generate for every row; results come back in the order of ``rows``.

    ``on_batch(indices, results)`` is called when rows finish (for streaming writes);
    ``on_rows(n)`` whenever ``n`` more rows finish (for an outer progress bar). ``stats``, when
    given, is filled with counts of the work done (continuous loop only): ``prompt_tokens``,
    ``prompt_tokens_computed`` (shared prefixes counted once), ``shared_prefix``,
    ``generated_tokens``, ``positions_run`` (pads and finished rows included), ``prefills``,
    ``prompt_block_tokens_skipped`` (prompt tokens x blocks not run: lower layers shared),
    ``prompt_tokens_reused`` (rows whose steering left the prompt alone) and
    ``midstack_prefills``; ``prefill_ms`` and ``decode_ms``, wall time spent in each.
    ``runner`` executes the rows (default: the model's, :func:`~steerlab.engine.runner.runner_for`).
    """
    cfg = config or GenerationConfig()
    _check_seeds(rows)
    check_interventions(model, [r.interventions for r in rows], "row")
    requests: list[Request] = []
    for i, row in enumerate(rows):
        ids = model.encode(row.prompt)
        if not ids:
            raise SteerlabError(f"row {i}: the prompt encodes to zero tokens")
        budget = row.max_new_tokens or cfg.max_new_tokens
        check_fits(model, len(ids), budget, f"row {i}")
        requests.append(Request(ids, row.interventions, row.seed, budget))
    run = runner or runner_for(model)
    bar = tqdm(total=len(rows), desc="generate", unit="row", disable=not progress)

    def finished(idx: list[int], out: list[RowResult]) -> None:
        bar.update(len(idx))
        if on_rows is not None:
            on_rows(len(idx))
        if on_batch is not None:
            on_batch(idx, out)

    try:
        return run.generate(requests, cfg, on_finish=finished, stats=stats)
    finally:
        bar.close()


def _check_seeds(rows: Sequence[Row]) -> None:
    for i, row in enumerate(rows):
        if not SEED_MIN <= int(row.seed) <= SEED_MAX:
            raise SteerlabError(
                f"row {i}: seed {row.seed} does not fit in 64 bits (use {SEED_MIN} .. {SEED_MAX})"
            )


def model_max_positions(model: Model) -> int | None:
    """How many positions (prompt + generated tokens) the model was built for, from its config
    (``max_position_embeddings``, or ``n_positions`` on GPT-2), or the length its engine serves
    (vLLM's ``max_model_len``); None when unknown."""
    served = getattr(model.backend, "max_model_len", None)
    if isinstance(served, int) and served > 0:
        return served
    config = getattr(model.hf, "config", None)
    for name in ("max_position_embeddings", "n_positions"):
        value = getattr(config, name, None)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return None


def check_fits(model: Model, n_prompt: int, max_new_tokens: int, where: str) -> None:
    """Refuse a row whose prompt tokens plus its token budget exceed the model's positions."""
    max_positions = model_max_positions(model)
    if max_positions is not None and n_prompt + max_new_tokens > max_positions:
        raise _too_long(where, str(n_prompt), max_new_tokens, max_positions)


def _too_long(where: str, n_prompt: str, budget: int, max_positions: int) -> SteerlabError:
    return SteerlabError(
        f"{where}: {n_prompt} prompt tokens + max_new_tokens {budget} > the model's "
        f"{max_positions} positions; shorten the prompt or lower max_new_tokens"
    )


# No token is longer than this many characters in any tokenizer we meet (a generous bound).
_MAX_CHARS_PER_TOKEN = 64


def check_prompt_length(model: Model, text: str, max_new_tokens: int, where: str) -> None:
    """Refuse, cheaply, a raw prompt far too long for the model's positions before it is
    formatted and tokenized (a multi-megabyte prompt would otherwise be tokenized in full only
    to be refused by :func:`generate`): only a prefix is tokenized. Prompts that may fit pass;
    :func:`generate` checks their exact length."""
    max_positions = model_max_positions(model)
    if max_positions is None:
        return
    head_chars = _MAX_CHARS_PER_TOKEN * (max_positions + 64)
    if len(text) <= head_chars:
        return
    n = len(model.tokenizer(text[:head_chars], add_special_tokens=False)["input_ids"])
    if n > max_positions + 16:  # cutting the text may merge a few tokens at the cut
        raise _too_long(where, f"over {n - 16}", max_new_tokens, max_positions)
