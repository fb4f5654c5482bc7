"""The continuous-batching decode loop, with shared prompt prefixes.

:func:`steerlab.generation.generate` uses this loop when the backend's KV cache can be taken
apart into tensors (:meth:`~steerlab.backends.base.Backend.cache_kv`); otherwise it decodes one
fixed batch at a time.

**The batch stays full.** Up to ``batch_size`` rows decode together. When rows finish (EOS or
their token budget) and rows are waiting, the finished rows leave and waiting rows take their
places: the newcomers are prefilled in one call, and their KV cache is stacked under the running
rows' cache (padded on the left to a common width; columns that are padding in every row are
dropped). Positions come from the attention mask, so a row's tokens, positions and steering do
not depend on when it joined or who shares its batch.

**Shared prefixes.** Prompts built from one chat template begin with the same tokens (the
embedded model's template puts 24 of a prompt's ~45 tokens before the user's text). A causal
model's activations at those tokens depend only on those tokens and on the steering applied at
them, so their KV cache is computed once per distinct *prefix steering* and copied into every
row that shares it. The key of a row's prefix steering lists each of its interventions that
touches a prefix position (vector, layer, site, kind, strength, scale, SAE) together with the
prefix positions it touches (its window is relative to the row's prompt end, so the positions
are computed per row). Rows with the same key get identical prefix activations by construction;
anything else that could differ (a window that covers part of the prefix in one row and all of
it in another) gives different keys. Rows then prefill only the rest of their prompt.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from steerlab import kvcache
from steerlab.backends.base import call_info_from_mask
from steerlab.hooks import SteeringHandle
from steerlab.interventions import Intervention, SteeringPlan, Window, compile_plan
from steerlab.models import Model
from steerlab.sampling import choose, token_stats

#: shortest common prefix (tokens) worth sharing
MIN_SHARED_PREFIX = 4


@dataclass
class Track:
    ids: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    entropies: list[float] = field(default_factory=list)
    reason: str = "length"


def record(
    tracks: Sequence[Track],
    rows: Sequence[int],
    tok: torch.Tensor,
    logprob: torch.Tensor,
    entropy: torch.Tensor,
    is_eos: torch.Tensor,
    alive: torch.Tensor,
) -> None:
    """Append each live batch row's token (or note its EOS) to ``tracks[rows[i]]``."""
    for r, t, lp, en, e, keep in zip(
        rows,
        tok.tolist(),
        logprob.tolist(),
        entropy.tolist(),
        is_eos.tolist(),
        alive.tolist(),
        strict=True,
    ):
        if not keep:
            continue
        tr = tracks[r]
        if e:
            tr.reason = "eos"
        else:
            tr.ids.append(t)
            tr.logprobs.append(lp)
            tr.entropies.append(en)


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


def shared_prefix_length(encoded: Sequence[Sequence[int]]) -> int:
    """Tokens every prompt starts with, leaving at least one token per prompt to prefill."""
    if len(encoded) < 2:
        return 0
    first = encoded[0]
    n = min(len(x) for x in encoded) - 1
    for x in encoded[1:]:
        i = 0
        while i < n and x[i] == first[i]:
            i += 1
        n = i
        if n < MIN_SHARED_PREFIX:
            return 0
    return n


def _iv_key(iv: Intervention) -> tuple[object, ...]:
    return (
        id(iv.vector),
        iv.layer,
        iv.site.name,
        iv.kind,
        float(iv.alpha),
        iv.scale,
        iv.src,
        id(iv.sae),
    )


def prefix_key(ivs: Sequence[Intervention], prompt_len: int, n_prefix: int) -> tuple[object, ...]:
    """What decides a row's activations on its first ``n_prefix`` prompt tokens."""
    key: list[object] = []
    for iv in ivs:
        lo, hi = Window.parse(iv.positions).bounds  # relative to the prompt end
        a, b = max(0, prompt_len + lo), min(n_prefix, prompt_len + hi)
        if a < b:
            key.append((_iv_key(iv), a, b))
    return tuple(key)


class Engine:
    """One :func:`~steerlab.generation.generate` call's continuous decode (see the module doc)."""

    def __init__(
        self,
        model: Model,
        encoded: Sequence[Sequence[int]],
        ivs: Sequence[Sequence[Intervention]],
        seeds: Sequence[int],
        budgets: Sequence[int],
        *,
        temperature: float,
        top_p: float,
        batch_size: int,
        stop_at_eos: bool,
        share_prefix: bool,
        check: Callable[[torch.Tensor, torch.Tensor | None, torch.Tensor], None],
        left_pad: Callable[..., tuple[torch.Tensor, torch.Tensor]],
    ) -> None:
        self.model, self.backend, self.dev = model, model.backend, model.device
        self.encoded, self.ivs = encoded, ivs
        self.temperature, self.top_p, self.batch_size = temperature, top_p, batch_size
        self.stop_at_eos = stop_at_eos
        self._check, self._left_pad = check, left_pad
        n = len(encoded)
        self.plens = torch.tensor([len(x) for x in encoded], device=self.dev)
        self.budgets = torch.tensor(list(budgets), device=self.dev)
        self.gens = [torch.Generator().manual_seed(int(s)) for s in seeds]
        self.tracks = [Track() for _ in range(n)]
        self.eos = torch.tensor(model.eos_token_ids or (-1,), device=self.dev)
        self.plan: SteeringPlan | None = None
        self.handle: SteeringHandle | None = None
        if any(ivs):
            self.plan = compile_plan(model, [list(x) for x in ivs]).to(self.dev)
            self.handle = SteeringHandle(self.plan, self.plens)
        self.edits = self.handle.edits() if self.handle is not None else None
        self._steered: torch.Tensor | None = None  # the rows the handle is set up for
        self.n_prefix = shared_prefix_length(encoded) if share_prefix else 0
        self._prefix_index: dict[tuple[object, ...], int] = {}
        self._prefix_kv: list[kvcache.KV] = []
        #: work done: prompt tokens (all rows), prompt tokens computed (shared prefixes once),
        #: generated tokens (EOS included), positions run (pads and finished rows included),
        #: prefill calls (one per group of rows joining the batch)
        self.stats = {
            "prompt_tokens": int(self.plens.sum()),
            "prompt_tokens_computed": 0,
            "shared_prefix": self.n_prefix,
            "generated_tokens": 0,
            "positions_run": 0,
            "prefills": 0,
        }

    # ------------------------------------------------------------------ steering state

    def _steer_rows(self, rows: torch.Tensor) -> None:
        if self.handle is None or self.plan is None or rows is self._steered:
            return
        self.handle.plan = self.plan.select(rows)
        self.handle.prompt_lens = self.plens.index_select(0, rows)
        self._steered = rows

    def _forward(
        self, ids: torch.Tensor, mask: torch.Tensor, cache: object, rows: torch.Tensor
    ) -> torch.Tensor:
        s = ids.shape[1]
        pos = (mask.cumsum(-1) - 1).clamp_(min=0)[:, -s:]  # from the mask, not the chunk
        if self.handle is not None:
            self.handle.observe(call_info_from_mask(mask, s))
        logits = self.backend.forward(ids, mask, pos, cache, self.edits)
        assert logits is not None  # (b, V) float32
        self.stats["positions_run"] += ids.numel()
        self._check(logits, None if self.handle is None else self.handle.overflow, rows)
        return logits

    # ------------------------------------------------------------------ prefill

    def _prefix(self, rows: list[int]) -> kvcache.KV:
        """The shared prefix's KV cache for ``rows`` (computing keys not seen before)."""
        keys = [prefix_key(self.ivs[r], len(self.encoded[r]), self.n_prefix) for r in rows]
        missing: dict[tuple[object, ...], int] = {}
        for r, k in zip(rows, keys, strict=True):
            if k not in self._prefix_index and k not in missing:
                missing[k] = r
        if missing:
            reps = torch.tensor(list(missing.values()), device=self.dev)
            ids = torch.tensor(self.encoded[int(reps[0])][: self.n_prefix], device=self.dev)
            ids = ids[None, :].expand(len(missing), -1).contiguous()
            mask = torch.ones_like(ids)
            self._steer_rows(reps)
            cache = self.backend.new_cache()
            self._forward(ids, mask, cache, reps)
            self.stats["prompt_tokens_computed"] += ids.numel()
            kv = self.backend.cache_kv(cache)
            assert kv is not None  # the engine runs only on caches that come apart
            for j, k in enumerate(missing):
                self._prefix_index[k] = len(self._prefix_kv)
                self._prefix_kv.append(kvcache.select_rows(kv, torch.tensor([j], device=self.dev)))
        return kvcache.gather_prefix(self._prefix_kv, [self._prefix_index[k] for k in keys])

    def _prefill(self, rows: list[int]) -> tuple[_Live, torch.Tensor]:
        """Prefill ``rows``; returns them as a live group and their next-token logits."""
        rt = torch.tensor(rows, device=self.dev)
        p = self.n_prefix
        if p:
            kv = self._prefix(rows)
            ids, rest = self._left_pad([self.encoded[r][p:] for r in rows], self.dev)
            mask = torch.cat([torch.ones_like(rest[:, :1]).expand(-1, p), rest], dim=1)
            cache = self.backend.cache_from_kv(kv)
        else:
            ids, mask = self._left_pad([self.encoded[r] for r in rows], self.dev)
            cache = self.backend.new_cache()
        self._steer_rows(rt)
        logits = self._forward(ids, mask, cache, rt)
        self.stats["prompt_tokens_computed"] += sum(len(self.encoded[r]) - p for r in rows)
        self.stats["prefills"] += 1
        zeros = torch.zeros(len(rows), dtype=torch.long, device=self.dev)
        live = _Live(rt, cache, mask, zeros, zeros.clone(), zeros.bool())
        return live, logits

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

    def _keep(self, live: _Live, keep: torch.Tensor) -> _Live:
        cache = self.backend.select_cache(live.cache, keep)
        return _Live(
            live.rows.index_select(0, keep),
            cache,
            live.mask.index_select(0, keep),
            live.tok.index_select(0, keep),
            live.n_gen.index_select(0, keep),
            live.done.index_select(0, keep),
        )

    def _merge(self, a: _Live, b: _Live) -> _Live:
        """``a``'s rows then ``b``'s, in one cache (padded on the left to one width)."""
        kva, kvb = self.backend.cache_kv(a.cache), self.backend.cache_kv(b.cache)
        assert kva is not None and kvb is not None
        wa, wb = a.mask.shape[1], b.mask.shape[1]
        width = max(wa, wb)
        kv = kvcache.stack_rows(
            kvcache.pad_left(kva, width - wa), kvcache.pad_left(kvb, width - wb)
        )
        mask = torch.cat(
            [
                torch.nn.functional.pad(a.mask, (width - wa, 0)),
                torch.nn.functional.pad(b.mask, (width - wb, 0)),
            ]
        )
        used = mask.any(0)
        if not bool(used.all()):  # columns that are padding in every row
            cols = used.nonzero().squeeze(-1)
            kv, mask = kvcache.select_columns(kv, cols), mask.index_select(1, cols)
        return _Live(
            torch.cat([a.rows, b.rows]),
            self.backend.cache_from_kv(kv),
            mask,
            torch.cat([a.tok, b.tok]),
            torch.cat([a.n_gen, b.n_gen]),
            torch.cat([a.done, b.done]),
        )

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
                logits = self._forward(live.tok[:, None], live.mask, live.cache, live.rows)
                self._take(live, logits)
        return self.tracks

    def _drop_done(self, live: _Live, on_finish: Callable[[list[int]], None]) -> _Live | None:
        on_finish(live.rows[live.done].tolist())
        keep = (~live.done).nonzero().squeeze(-1)
        return self._keep(live, keep) if keep.numel() else None

    def _refill(
        self, live: _Live | None, waiting: deque[int], on_finish: Callable[[list[int]], None]
    ) -> _Live | None:
        if live is not None:
            live = self._drop_done(live, on_finish)
        room = self.batch_size - (0 if live is None else len(live.rows))
        new = [waiting.popleft() for _ in range(min(room, len(waiting)))]
        group, logits = self._prefill(new)
        self._take(group, logits)
        return group if live is None else self._merge(live, group)
