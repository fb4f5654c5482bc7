"""One batched decode loop for everything: left padding, KV cache, per-row steering and seeds.

Every row carries its own interventions (compiled into one
:class:`~steerlab.interventions.SteeringPlan`) and its own sampling seed (its own
``torch.Generator``, drawn from only on that row's steps), so a row's text does not depend on
which rows share its batch.

Rows are sorted by prompt length. With a KV cache that comes apart into tensors (the ``hf`` and
``nnsight`` backends, TransformerLens's bridge) the continuous engine in :mod:`steerlab.engine.continuous`
keeps ``batch_size`` rows decoding: finished rows leave and waiting rows take their places, and
the prompt prefix every row shares (the chat template) is computed once per distinct steering of
it. Otherwise (``GenerationConfig(continuous=False)``, no cache, TransformerLens's own cache) rows
are cut into fixed batches and finished rows leave their batch (their KV-cache and plan rows are
dropped), so a batch costs what its live rows cost.

Per generated token we return its log-probability and the entropy of the full next-token
distribution, both from the model's untempered logits (confound metrics need them).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from steerlab.backends import kvcache
from steerlab.backends.base import call_info_from_mask
from steerlab.engine.batch import check_finite, left_pad
from steerlab.engine.continuous import Engine, Track, record
from steerlab.engine.handle import SteeringHandle
from steerlab.engine.sampling import choose, token_stats
from steerlab.errors import SteerlabError
from steerlab.interventions import Intervention, compile_plan
from steerlab.models import Model

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class GenerationConfig:
    """Decoding settings shared by all rows. ``temperature == 0`` means greedy."""

    max_new_tokens: int = 64
    temperature: float = 0.0
    top_p: float = 1.0
    batch_size: int = 32
    use_cache: bool = True
    stop_at_eos: bool = True
    #: keep the batch full (finished rows replaced by waiting ones); False: fixed batches
    continuous: bool = True
    #: compute the prompt prefix all rows share once per distinct steering of it
    share_prefix: bool = True

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise SteerlabError("max_new_tokens must be at least 1")
        if not math.isfinite(self.temperature) or self.temperature < 0:
            raise SteerlabError("temperature must be a finite number >= 0 (0 = greedy)")
        if not math.isfinite(self.top_p) or not 0 < self.top_p <= 1:
            raise SteerlabError("top_p must be in (0, 1]")
        if self.batch_size < 1:
            raise SteerlabError("batch_size must be at least 1")


@dataclass(frozen=True)
class Row:
    """One generation request: the exact text to feed (format it first), steering, seed."""

    prompt: str
    interventions: tuple[Intervention, ...] = ()
    seed: int = 0
    max_new_tokens: int | None = None


@dataclass(frozen=True)
class RowResult:
    """What one row produced. ``logprobs``/``entropies`` align with ``token_ids`` (EOS excluded)."""

    text: str
    token_ids: tuple[int, ...]
    logprobs: tuple[float, ...]
    entropies: tuple[float, ...]
    finish_reason: str  # "eos" | "length"
    prompt_tokens: int


def generate(
    model: Model,
    rows: Sequence[Row],
    config: GenerationConfig | None = None,
    progress: bool = True,
    on_batch: Callable[[list[int], list[RowResult]], None] | None = None,
    on_rows: Callable[[int], object] | None = None,
    stats: dict[str, int] | None = None,
) -> list[RowResult]:
    """Generate for every row; results come back in the order of ``rows``.

    ``on_batch(indices, results)`` is called when rows finish (for streaming writes);
    ``on_rows(n)`` whenever ``n`` more rows finish (for an outer progress bar). ``stats``, when
    given, is filled with counts of the work done (continuous engine only): ``prompt_tokens``,
    ``prompt_tokens_computed`` (shared prefixes counted once), ``shared_prefix``,
    ``generated_tokens``, ``positions_run`` (pads and finished rows included), ``prefills``,
    ``prompt_block_tokens_skipped`` (prompt tokens x blocks not run: lower layers shared),
    ``prompt_tokens_reused`` (rows whose steering left the prompt alone) and
    ``midstack_prefills``; ``prefill_ms`` and ``decode_ms``, wall time spent in each.
    """
    cfg = config or GenerationConfig()
    _check_seeds(rows)
    _check_interventions(model, rows)
    encoded = [model.encode(r.prompt) for r in rows]
    for i, ids in enumerate(encoded):
        if not ids:
            raise SteerlabError(f"row {i}: the prompt encodes to zero tokens")
        check_fits(model, len(ids), rows[i].max_new_tokens or cfg.max_new_tokens, f"row {i}")
    # Longest first: memory peaks early, and similar lengths share batches (less padding); one
    # prompt's rows adjacent, so the engine shares their lower layers while they join.
    order = sorted(range(len(rows)), key=lambda i: (-len(encoded[i]), encoded[i], i))
    results: list[RowResult | None] = [None] * len(rows)
    bar = tqdm(total=len(rows), desc="generate", unit="row", disable=not progress)
    advance = _both(bar.update, on_rows)
    try:
        if cfg.use_cache and cfg.continuous and kvcache.comes_apart(model.backend.new_cache()):
            done = _run_continuous(model, encoded, rows, cfg, order, results, advance, on_batch)
            if stats is not None:
                stats.update(done)
        else:
            for start in range(0, len(order), cfg.batch_size):
                idx = order[start : start + cfg.batch_size]
                out = _generate_batch(
                    model, [encoded[i] for i in idx], [rows[i] for i in idx], cfg, advance
                )
                for i, res in zip(idx, out, strict=True):
                    results[i] = res
                if on_batch is not None:
                    on_batch(idx, out)
    finally:
        bar.close()
    return [r for r in results if r is not None]


def _run_continuous(
    model: Model,
    encoded: Sequence[Sequence[int]],
    rows: Sequence[Row],
    cfg: GenerationConfig,
    order: Sequence[int],
    results: list[RowResult | None],
    advance: Callable[[int], None],
    on_batch: Callable[[list[int], list[RowResult]], None] | None,
) -> dict[str, int]:
    ivs = [r.interventions for r in rows]
    engine = Engine(
        model,
        encoded,
        ivs,
        [r.seed for r in rows],
        [r.max_new_tokens or cfg.max_new_tokens for r in rows],
        temperature=cfg.temperature,
        top_p=cfg.top_p,
        batch_size=cfg.batch_size,
        stop_at_eos=cfg.stop_at_eos,
        share_prefix=cfg.share_prefix,
        check=lambda logits, overflow, idx: check_finite(
            logits, overflow, [ivs[int(i)] for i in idx]
        ),
        left_pad=lambda batch, dev: left_pad(batch, model.pad_token_id, dev),
    )

    def finished(idx: list[int]) -> None:
        out = [_result(model, engine.tracks[i], encoded[i]) for i in idx]
        for i, res in zip(idx, out, strict=True):
            results[i] = res
        advance(len(idx))
        if on_batch is not None and idx:
            on_batch(idx, out)

    engine.run(order, finished)
    return engine.stats


def _result(model: Model, tr: Track, prompt: Sequence[int]) -> RowResult:
    return RowResult(
        text=model.decode(tr.ids),
        token_ids=tuple(tr.ids),
        logprobs=tuple(tr.logprobs),
        entropies=tuple(tr.entropies),
        finish_reason=tr.reason,
        prompt_tokens=len(prompt),
    )


# what ``torch.Generator.manual_seed`` accepts
SEED_MIN, SEED_MAX = -(2**63), 2**64 - 1


def _check_seeds(rows: Sequence[Row]) -> None:
    for i, row in enumerate(rows):
        if not SEED_MIN <= int(row.seed) <= SEED_MAX:
            raise SteerlabError(
                f"row {i}: seed {row.seed} does not fit in 64 bits (use {SEED_MIN} .. {SEED_MAX})"
            )


def model_max_positions(model: Model) -> int | None:
    """How many positions (prompt + generated tokens) the model was built for, from its config
    (``max_position_embeddings``, or ``n_positions`` on GPT-2); None when unknown."""
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


def _check_interventions(model: Model, rows: Sequence[Row]) -> None:
    """Fail before any work (and before a progress bar) on a site or vector the model cannot
    take; each distinct (vector, site) is checked once."""
    seen: set[tuple[int, object]] = set()
    for row in rows:
        for iv in row.interventions:
            key = (id(iv.vector), iv.site)
            if key in seen:
                continue
            seen.add(key)
            model.check_layer(iv.layer)
            model.backend.check_site(iv.site)
            iv.vector.check_d_model(model.d_model)


def _both(a: Callable[[int], object], b: Callable[[int], object] | None) -> Callable[[int], None]:
    def advance(n: int) -> None:
        if n:
            a(n)
            if b is not None:
                b(n)

    return advance


def _generate_batch(
    model: Model,
    encoded: Sequence[Sequence[int]],
    rows: Sequence[Row],
    cfg: GenerationConfig,
    advance: Callable[[int], object],
) -> list[RowResult]:
    backend = model.backend
    dev = model.device
    ids, mask = left_pad(encoded, model.pad_token_id, dev)  # (B, L)
    b = ids.shape[0]
    budgets = torch.tensor([r.max_new_tokens or cfg.max_new_tokens for r in rows], device=dev)
    prompt_lens = mask.sum(-1)  # (B,)
    eos = torch.tensor(model.eos_token_ids or (-1,), device=dev)
    gens = [torch.Generator().manual_seed(int(r.seed)) for r in rows]
    tracks = [Track() for _ in rows]
    active = torch.arange(b, device=dev)  # batch row -> index in ``rows``
    finished = torch.zeros(b, dtype=torch.bool, device=dev)  # per live batch row
    handle: SteeringHandle | None = None
    if any(r.interventions for r in rows):
        plan = compile_plan(model, [list(r.interventions) for r in rows])
        handle = SteeringHandle(plan.to(dev), prompt_lens)
    edits = handle.edits() if handle is not None else None
    cache = backend.new_cache() if cfg.use_cache else None
    feed = ids
    with torch.inference_mode():
        for step in range(int(budgets.max())):
            pos_ids = (mask.cumsum(-1) - 1).clamp_(min=0)  # (b, S) from the mask, not the chunk
            if cache is None:
                feed = ids
            s = feed.shape[1]
            if handle is not None:
                handle.observe(call_info_from_mask(mask, s))
            logits = backend.forward(feed, mask, pos_ids[:, -s:], cache, edits)
            assert logits is not None  # (b, V) float32
            if handle is not None:
                check_finite(logits, handle.overflow, [rows[int(i)].interventions for i in active])
            tok = choose(logits, cfg.temperature, cfg.top_p, [gens[int(i)] for i in active])
            tok_lp, ent = token_stats(logits, tok)  # (b,), (b,)
            is_eos = (
                torch.isin(tok, eos) if cfg.stop_at_eos else torch.zeros_like(tok, dtype=torch.bool)
            )
            # rows already finished but not yet dropped keep decoding; their output is ignored
            newly = ~finished & (is_eos | (step + 1 >= budgets[active]))
            record(tracks, active.tolist(), tok, tok_lp, ent, is_eos, ~finished)
            finished |= newly
            advance(int(newly.sum()))
            n_done = int(finished.sum())
            if n_done == len(active):
                break
            ids = torch.cat([ids, tok[:, None]], dim=1)
            mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
            feed = tok[:, None]
            # Dropping rows copies the whole KV cache, so do it once a few rows have finished.
            if n_done >= max(1, len(active) // 8):
                keep = (~finished).nonzero().squeeze(-1)  # (b',)
                active, finished = active.index_select(0, keep), finished[keep]
                ids, mask, feed = ids[keep], mask[keep], feed[keep]
                if cache is not None:
                    cache = backend.select_cache(cache, keep)
                if handle is not None:
                    handle.select(keep)
    return [_result(model, tr, x) for tr, x in zip(tracks, encoded, strict=True)]
