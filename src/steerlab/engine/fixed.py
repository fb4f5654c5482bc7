"""The fixed-batch decode loop: rows cut into batches of ``batch_size`` that decode together.

Used when the backend's KV cache cannot be taken apart into tensors (TransformerLens's own
cache), without a cache, or when asked (``GenerationConfig(continuous=False)``). Finished rows
leave their batch (their KV-cache and plan rows are dropped, a few at a time, since dropping
copies the cache), so a batch costs what its live rows cost. Every row carries its own
interventions and its own sampling seed, so its tokens do not depend on its batch.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from steerlab.backends.base import Backend
from steerlab.engine.batch import left_pad
from steerlab.engine.forward import steered_forward, steering_for
from steerlab.engine.rows import GenerationConfig, OnFinish, Request, Track, record, result
from steerlab.engine.sampling import choose, token_stats
from steerlab.models import Model


def run_fixed(
    model: Model,
    backend: Backend,
    requests: Sequence[Request],
    order: Sequence[int],
    cfg: GenerationConfig,
    on_finish: OnFinish,
) -> None:
    """Decode ``requests`` in batches of ``cfg.batch_size`` taken in ``order``;
    ``on_finish(indices, results)`` after each batch."""
    for start in range(0, len(order), cfg.batch_size):
        idx = list(order[start : start + cfg.batch_size])
        tracks = _decode_batch(model, backend, [requests[i] for i in idx], cfg)
        out = [
            result(model.decode, tr, len(requests[i].ids))
            for i, tr in zip(idx, tracks, strict=True)
        ]
        on_finish(idx, out)


def _decode_batch(
    model: Model, backend: Backend, reqs: Sequence[Request], cfg: GenerationConfig
) -> list[Track]:
    dev = model.device
    ids, mask = left_pad([r.ids for r in reqs], model.pad_token_id, dev)  # (B, L)
    b = ids.shape[0]
    budgets = torch.tensor([r.max_new_tokens for r in reqs], device=dev)
    eos = torch.tensor(model.eos_token_ids or (-1,), device=dev)
    gens = [torch.Generator().manual_seed(int(r.seed)) for r in reqs]
    tracks = [Track() for _ in reqs]
    active = torch.arange(b, device=dev)  # batch row -> index in ``reqs``
    finished = torch.zeros(b, dtype=torch.bool, device=dev)  # per live batch row
    handle = steering_for(model, [r.interventions for r in reqs], mask.sum(-1))
    cache = backend.new_cache() if cfg.use_cache else None
    feed = ids
    with torch.inference_mode():
        for step in range(int(budgets.max())):
            if cache is None:
                feed = ids
            check = None if handle is None else [reqs[int(i)].interventions for i in active]
            logits = steered_forward(backend, feed, mask, cache, steer=handle, check=check)
            assert logits is not None  # (b, V) float32
            tok = choose(logits, cfg.temperature, cfg.top_p, [gens[int(i)] for i in active])
            tok_lp, ent = token_stats(logits, tok)  # (b,), (b,)
            is_eos = (
                torch.isin(tok, eos) if cfg.stop_at_eos else torch.zeros_like(tok, dtype=torch.bool)
            )
            # rows already finished but not yet dropped keep decoding; their output is ignored
            newly = ~finished & (is_eos | (step + 1 >= budgets[active]))
            record(tracks, active.tolist(), tok, tok_lp, ent, is_eos, ~finished)
            finished |= newly
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
    return tracks
