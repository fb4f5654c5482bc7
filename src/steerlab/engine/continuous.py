"""The continuous-batching decode loop, with shared prompt prefixes.

The local runner (:mod:`steerlab.engine.runner`) uses this loop when the backend's KV cache can
be taken apart into tensors (:attr:`~steerlab.backends.base.Backend.kv_cache`); otherwise it
decodes fixed batches (:mod:`steerlab.engine.fixed`).

**The batch stays full.** Up to ``batch_size`` rows decode together. When rows finish (EOS or
their token budget) and rows are waiting, the finished rows leave and waiting rows take their
places: the newcomers are prefilled in one call, and their KV cache joins the running rows'
cache, which lives in slot buffers (:meth:`~steerlab.backends.base.KVCacheOps.slots`; a decode
step writes one column in place): a newcomer takes a finished row's slot, right-aligned with the
running rows, and leading columns that are padding in every row are dropped from time to time.
Positions come from the attention mask, so a row's tokens, positions and steering do not depend
on when it joined or who shares its batch.

**Prefill is shared** where the math allows (:mod:`steerlab.engine.prefill`): the prompt prefix
common to every row, once per distinct prefix steering, and a prompt's layers below the first
block its steering touches, once per prompt.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from steerlab.backends.base import Backend, KVCacheOps
from steerlab.backends.kvcache import KV
from steerlab.engine.batch import check_finite, left_pad
from steerlab.engine.forward import steered_forward, steering_for
from steerlab.engine.prefill import Prefill
from steerlab.engine.rows import GenerationConfig, Request, Track, record
from steerlab.engine.sampling import choose, token_stats
from steerlab.interventions import Intervention
from steerlab.models import Model

#: leading all-padding columns that trigger a compaction of the live cache
COMPACT_AT = 16


@dataclass
class _Live:
    """The rows decoding together: ``rows`` (b,) index the call's rows; ``mask`` (b, T) is the
    attention mask of everything in ``cache``; ``tok`` (b,) the token each row feeds next."""

    rows: torch.Tensor
    cache: object
    mask: torch.Tensor
    tok: torch.Tensor
    n_gen: torch.Tensor
    done: torch.Tensor


class Engine:
    """One call's continuous decode of ``requests`` (see the module doc)."""

    def __init__(
        self,
        model: Model,
        backend: Backend,
        kv_cache: KVCacheOps,
        requests: Sequence[Request],
        cfg: GenerationConfig,
    ) -> None:
        self.model, self.backend, self.kv, self.dev = model, backend, kv_cache, model.device
        self.requests = requests
        self.temperature, self.top_p, self.batch_size = cfg.temperature, cfg.top_p, cfg.batch_size
        self.stop_at_eos = cfg.stop_at_eos
        encoded = [r.ids for r in requests]
        ivs = [r.interventions for r in requests]
        self.ivs = ivs
        self.plens = torch.tensor([len(x) for x in encoded], device=self.dev)
        self.budgets = torch.tensor([r.max_new_tokens for r in requests], device=self.dev)
        self.gens = [torch.Generator().manual_seed(int(r.seed)) for r in requests]
        self.tracks = [Track() for _ in requests]
        self.eos = torch.tensor(model.eos_token_ids or (-1,), device=self.dev)
        # one handle for every row of the call; its plan rows follow the live batch
        self.handle = steering_for(model, ivs, self.plens)
        self.plan = None if self.handle is None else self.handle.plan
        self._steered: torch.Tensor | None = None  # the rows the handle is set up for
        #: work done: prompt tokens (all rows), prompt tokens computed (shared prefixes once),
        #: generated tokens (EOS included), positions run (pads and finished rows included),
        #: prefill calls (one per group of rows joining the batch), prompt tokens x blocks not
        #: run because a prompt's lower layers were shared, prompt tokens of rows whose steering
        #: left the prompt alone (no prefill: their prompt's unsteered cache is reused), prefill
        #: calls that started mid-stack, wall time in prefill and in decode steps (ms)
        self.stats = {
            "prompt_tokens": int(self.plens.sum()),
            "prompt_tokens_computed": 0,
            "shared_prefix": 0,
            "generated_tokens": 0,
            "positions_run": 0,
            "prefills": 0,
            "prompt_block_tokens_skipped": 0,
            "prompt_tokens_reused": 0,
            "midstack_prefills": 0,
            "prefill_ms": 0,
            "decode_ms": 0,
        }
        self.prefill = Prefill(
            backend,
            kv_cache,
            encoded,
            ivs,
            share=cfg.share_prefix,
            run=self._forward,
            steer=self._steer_rows,
            check=self._check_unsteered,
            left_pad=lambda batch, dev: left_pad(batch, model.pad_token_id, dev),
            stats=self.stats,
            device=self.dev,
        )
        self.stats["shared_prefix"] = self.prefill.n_prefix

    # ------------------------------------------------------------------ steering state

    def _steer_rows(self, rows: torch.Tensor) -> None:
        if self.handle is None or self.plan is None or rows is self._steered:
            return
        self.handle.plan = self.plan.select(rows)
        self.handle.prompt_lens = self.plens.index_select(0, rows)
        self._steered = rows

    def _rows_ivs(self, rows: torch.Tensor) -> list[tuple[Intervention, ...]]:
        return [self.ivs[int(i)] for i in rows]

    def _check_unsteered(self, logits: torch.Tensor, rows: torch.Tensor) -> None:
        check_finite(logits, None, self._rows_ivs(rows))

    def _forward(
        self,
        ids: torch.Tensor,
        mask: torch.Tensor,
        cache: object,
        rows: torch.Tensor,
        start: int = 0,
        resid: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Next-token logits (b, V) of batch rows ``rows`` (the handle is already set up for
        them by :meth:`_steer_rows`)."""
        logits = steered_forward(
            self.backend,
            ids,
            mask,
            cache,
            steer=self.handle,
            start=start,
            resid=resid,
            check=self._rows_ivs(rows),
        )
        assert logits is not None  # (b, V) float32
        self.stats["positions_run"] += ids.numel()
        return logits

    # ------------------------------------------------------------------ tokens

    def _take(self, live: _Live, logits: torch.Tensor) -> int:
        """Choose each live row's next token, record it, mark finished rows; returns how many
        rows finished now."""
        rows = live.rows.tolist()
        tok = choose(logits, self.temperature, self.top_p, [self.gens[r] for r in rows])
        tok_lp, ent = token_stats(logits, tok)
        if self.stop_at_eos:
            is_eos = torch.isin(tok, self.eos)
        else:
            is_eos = torch.zeros_like(tok, dtype=torch.bool)
        live.n_gen += 1
        was_done = live.done.clone()
        newly = ~live.done & (is_eos | (live.n_gen >= self.budgets.index_select(0, live.rows)))
        # rows already finished but not yet dropped keep decoding; their output is ignored
        record(self.tracks, rows, tok, tok_lp, ent, is_eos, ~live.done)
        live.done |= newly
        live.tok = tok
        self.stats["generated_tokens"] += int((~was_done).sum())
        return int(newly.sum())

    # ------------------------------------------------------------------ batch surgery

    def _compact(self, live: _Live) -> None:
        """Drop leading columns that are padding in every row, once there are enough of them."""
        used = live.mask.any(0)
        lead = int(used.int().argmax()) if bool(used.any()) else live.mask.shape[1]
        if lead >= COMPACT_AT:
            self.kv.drop_leading(live.cache, lead)
            live.mask = live.mask[:, lead:]

    def _keep(self, live: _Live, keep: torch.Tensor) -> _Live:
        self.kv.keep_slots(live.cache, keep)
        return _Live(
            live.rows.index_select(0, keep),
            live.cache,
            live.mask.index_select(0, keep),
            live.tok.index_select(0, keep),
            live.n_gen.index_select(0, keep),
            live.done.index_select(0, keep),
        )

    def _join(self, live: _Live, free: torch.Tensor, group: _Live, kv: KV) -> _Live:
        """``group``'s rows take the slots ``free`` (finished rows) of ``live``; slots beyond the
        newcomers are dropped. (Rows wait only while the batch is full, so newcomers never
        outnumber the free slots.)"""
        k = len(group.rows)
        assert 0 < k <= free.numel()
        slots = free[:k]
        grow = self.kv.place(live.cache, slots, kv)
        mask = F.pad(live.mask, (grow, 0)).clone()
        mask[slots] = F.pad(group.mask, (mask.shape[1] - group.mask.shape[1], 0))
        rows = live.rows.clone()  # a new rows tensor: the steering follows it
        tok, n_gen, done = live.tok.clone(), live.n_gen.clone(), live.done.clone()
        rows[slots], tok[slots], n_gen[slots], done[slots] = (
            group.rows,
            group.tok,
            group.n_gen,
            group.done,
        )
        live = _Live(rows, live.cache, mask, tok, n_gen, done)
        if free.numel() > k:
            drop = torch.zeros(len(live.rows), dtype=torch.bool, device=self.dev)
            drop[free[k:]] = True
            live = self._keep(live, (~drop).nonzero().squeeze(-1))
        self._compact(live)
        return live

    # ------------------------------------------------------------------ the loop

    def run(self, order: Sequence[int], on_finish: Callable[[list[int]], None]) -> list[Track]:
        """Decode every row (taken in ``order``); ``on_finish(rows)`` when rows leave."""
        waiting = deque(order)
        live: _Live | None = None
        refill_at = max(1, self.batch_size // 16)
        with torch.inference_mode():
            while waiting or live is not None:
                n_live = 0 if live is None else int((~live.done).sum())
                n_done = 0 if live is None else int(live.done.sum())
                if waiting and (n_live == 0 or n_done >= refill_at or live is None):
                    live = self._refill(live, waiting, on_finish)
                    continue
                if live is None:
                    break
                if n_live == 0:
                    on_finish(live.rows.tolist())
                    live = None
                    continue
                if not waiting and n_done >= max(1, len(live.rows) // 8):
                    live = self._drop_done(live, on_finish)
                    continue
                live.mask = torch.cat([live.mask, torch.ones_like(live.mask[:, :1])], dim=1)
                self._steer_rows(live.rows)
                t0 = time.perf_counter()
                logits = self._forward(live.tok[:, None], live.mask, live.cache, live.rows)
                self._take(live, logits)
                self.stats["decode_ms"] += round((time.perf_counter() - t0) * 1000)
        return self.tracks

    def _drop_done(self, live: _Live, on_finish: Callable[[list[int]], None]) -> _Live | None:
        on_finish(live.rows[live.done].tolist())
        keep = (~live.done).nonzero().squeeze(-1)
        if not keep.numel():
            return None
        live = self._keep(live, keep)
        self._compact(live)
        return live

    def _refill(
        self, live: _Live | None, waiting: deque[int], on_finish: Callable[[list[int]], None]
    ) -> _Live | None:
        free = torch.zeros(0, dtype=torch.long, device=self.dev)
        if live is not None:
            free = live.done.nonzero().squeeze(-1)
            if free.numel():
                on_finish(live.rows.index_select(0, free).tolist())
        room = self.batch_size - (0 if live is None else len(live.rows) - free.numel())
        new = [waiting.popleft() for _ in range(min(room, len(waiting)))]
        t0 = time.perf_counter()
        rows, kv, mask, logits = self.prefill(new)
        self.stats["prefill_ms"] += round((time.perf_counter() - t0) * 1000)
        zeros = torch.zeros(len(rows), dtype=torch.long, device=self.dev)
        rt = torch.tensor(rows, device=self.dev)
        group = _Live(rt, None, mask, zeros, zeros.clone(), zeros.bool())
        self._take(group, logits)
        if live is None:
            group.cache = self.kv.slots(kv)
            return group
        return self._join(live, free, group, kv)
