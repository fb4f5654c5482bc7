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

from collections import Counter, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from steerlab import kvcache
from steerlab.backends.base import Edits, call_info_from_mask
from steerlab.hooks import SteeringHandle
from steerlab.interventions import Intervention, SteeringPlan, Window, compile_plan
from steerlab.layershare import Base, prompt_start, stacked_kv, stacked_resid
from steerlab.models import Model
from steerlab.sampling import choose, token_stats
from steerlab.sites import Site

#: shortest common prefix (tokens) worth sharing
MIN_SHARED_PREFIX = 4
#: leading all-padding columns that trigger a compaction of the live cache
COMPACT_AT = 16


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


def _empty(x: torch.Tensor, b: int) -> torch.Tensor:
    """A (b, H, 0, D) tensor like ``x`` (a layer of an empty cache)."""
    return x.new_zeros((b, x.shape[1], 0, x.shape[3]))


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
        # lower layers shared per prompt (see steerlab.layershare)
        n_layers = self.backend.n_layers
        self.starts = [prompt_start(x, len(e), n_layers) for x, e in zip(ivs, encoded, strict=True)]
        if not self.backend.can_start_midstack:  # share only prompts the steering leaves alone
            self.starts = [st if st == n_layers else 0 for st in self.starts]
        self.layershare = share_prefix and any(st > 0 for st in self.starts)
        self._bases: dict[tuple[int, ...], Base] = {}
        self._uses: Counter[tuple[int, ...]] = Counter()
        if self.layershare:
            self._uses.update(
                tuple(e) for e, st in zip(encoded, self.starts, strict=True) if st > 0
            )
        #: work done: prompt tokens (all rows), prompt tokens computed (shared prefixes once),
        #: generated tokens (EOS included), positions run (pads and finished rows included),
        #: prefill calls (one per group of rows joining the batch), prompt tokens x blocks not
        #: run because a prompt's lower layers were shared
        self.stats = {
            "prompt_tokens": int(self.plens.sum()),
            "prompt_tokens_computed": 0,
            "shared_prefix": self.n_prefix,
            "generated_tokens": 0,
            "positions_run": 0,
            "prefills": 0,
            "prompt_block_tokens_skipped": 0,
        }

    # ------------------------------------------------------------------ steering state

    def _steer_rows(self, rows: torch.Tensor) -> None:
        if self.handle is None or self.plan is None or rows is self._steered:
            return
        self.handle.plan = self.plan.select(rows)
        self.handle.prompt_lens = self.plens.index_select(0, rows)
        self._steered = rows

    def _forward(
        self,
        ids: torch.Tensor,
        mask: torch.Tensor,
        cache: object,
        rows: torch.Tensor,
        start: int = 0,
        resid: torch.Tensor | None = None,
    ) -> torch.Tensor:
        s = ids.shape[1]
        pos = (mask.cumsum(-1) - 1).clamp_(min=0)[:, -s:]  # from the mask, not the chunk
        if self.handle is not None:
            self.handle.observe(call_info_from_mask(mask, s))
        out: torch.Tensor | None
        if start:
            assert resid is not None
            out = self.backend.forward_from(start, resid, ids, mask, pos, cache, self.edits)
        else:
            out = self.backend.forward(ids, mask, pos, cache, self.edits)
        assert out is not None  # (b, V) float32
        logits = out
        self.stats["positions_run"] += ids.numel()
        self._check(logits, None if self.handle is None else self.handle.overflow, rows)
        return logits

    # ------------------------------------------------------------------ prefill

    def _prefix(self, rows: list[int]) -> kvcache.KV:
        """The shared prefix's KV cache for ``rows`` (computing keys not seen before)."""
        keys = [prefix_key(self.ivs[r], len(self.encoded[r]), self.n_prefix) for r in rows]
        return self._prefix_for_keys(keys, rows)

    def _prefix_for_keys(self, keys: list[tuple[object, ...]], rows: list[int]) -> kvcache.KV:
        """The prefix cache under each of ``keys`` (row ``rows[i]`` steers as ``keys[i]`` says)."""
        missing: dict[tuple[object, ...], int] = {}
        for r, k in zip(rows, keys, strict=True):
            if k not in self._prefix_index and k not in missing:
                missing[k] = r
        if () in missing and len(missing) > 1:  # the unsteered prefix runs on its own
            self._prefix_for_keys([()], [missing.pop(())])
        if missing:
            reps = torch.tensor(list(missing.values()), device=self.dev)
            ids = torch.tensor(self.encoded[int(reps[0])][: self.n_prefix], device=self.dev)
            ids = ids[None, :].expand(len(missing), -1).contiguous()
            mask = torch.ones_like(ids)
            cache = self.backend.new_cache()
            if () in missing:  # rows[i] may steer elsewhere in the prefix; this key does not
                pos = (mask.cumsum(-1) - 1)[:, -ids.shape[1] :]
                out = self.backend.forward(ids, mask, pos, cache, None)
                assert out is not None
                self._check(out, None, reps)
            else:
                self._steer_rows(reps)
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
        if not self.layershare:
            return self._prefill_all(rows)
        self._make_bases([r for r in rows if self.starts[r] > 0])
        by_start: dict[int, list[int]] = {}
        for r in rows:
            by_start.setdefault(self.starts[r], []).append(r)
        parts: list[tuple[list[int], kvcache.KV, torch.Tensor, torch.Tensor]] = []
        for start, rs in sorted(by_start.items()):
            if start == 0:
                live, logits = self._prefill_all(rs)
                kv = self.backend.cache_kv(live.cache)
                assert kv is not None
                parts.append((rs, kv, live.mask, logits))
            else:
                parts.append(self._prefill_upper(start, rs))
        for r in rows:
            key = tuple(self.encoded[r])
            if self.starts[r] > 0:
                self._uses[key] -= 1
                if self._uses[key] <= 0:
                    self._bases.pop(key, None)
        return self._stack_parts(parts)

    def _stack_parts(
        self, parts: list[tuple[list[int], kvcache.KV, torch.Tensor, torch.Tensor]]
    ) -> tuple[_Live, torch.Tensor]:
        width = max(m.shape[1] for _, _, m, _ in parts)
        kv: kvcache.KV | None = None
        masks, rows = [], []
        for rs, kvp, m, _ in parts:
            kvp = kvcache.pad_left(kvp, width - m.shape[1])
            kv = kvp if kv is None else kvcache.stack_rows(kv, kvp)
            masks.append(F.pad(m, (width - m.shape[1], 0)))
            rows += rs
        assert kv is not None
        rt = torch.tensor(rows, device=self.dev)
        zeros = torch.zeros(len(rows), dtype=torch.long, device=self.dev)
        live = _Live(
            rt, self.backend.cache_from_kv(kv), torch.cat(masks), zeros, zeros.clone(), zeros.bool()
        )
        return live, torch.cat([lg for _, _, _, lg in parts])

    def _make_bases(self, rows: list[int]) -> None:
        """Compute the bases of ``rows``' prompts not computed yet, in one unsteered call."""
        todo: dict[tuple[int, ...], int] = {}
        for r in rows:
            key = tuple(self.encoded[r])
            if key not in self._bases and key not in todo:
                todo[key] = r
        if not todo:
            return
        reps = list(todo.values())
        p, n_layers = self.n_prefix, self.backend.n_layers
        wanted = sorted({st for st in self.starts if 0 < st < n_layers})
        seen: dict[int, torch.Tensor] = {}

        def keeper(layer: int):  # type: ignore[no-untyped-def]
            def keep(h: torch.Tensor) -> torch.Tensor:
                seen[layer] = h
                return h

            return keep

        edits: Edits = {Site(st, "resid_pre"): [keeper(st)] for st in wanted}
        ids, rest = self._left_pad([self.encoded[r][p:] for r in reps], self.dev)
        if p:
            kv0 = self._prefix_for_keys([()] * len(reps), reps)
            mask = torch.cat([torch.ones_like(rest[:, :1]).expand(-1, p), rest], dim=1)
            cache = self.backend.cache_from_kv(kv0)
        else:
            mask, cache = rest, self.backend.new_cache()
        pos = (mask.cumsum(-1) - 1).clamp_(min=0)[:, -ids.shape[1] :]
        logits = self.backend.forward(ids, mask, pos, cache, edits)
        assert logits is not None
        self._check(logits, None, torch.tensor(reps, device=self.dev))
        kv = self.backend.cache_kv(cache)
        assert kv is not None
        self.stats["prompt_tokens_computed"] += int(rest.sum())
        for j, key in enumerate(todo):
            w = len(key) - p
            self._bases[key] = Base(
                kv=[(k[j : j + 1, :, -w:], v[j : j + 1, :, -w:]) for k, v in kv],
                resid={st: h[j, -w:] for st, h in seen.items()},
                logits=logits[j],
            )

    def _prefill_upper(
        self, start: int, rows: list[int]
    ) -> tuple[list[int], kvcache.KV, torch.Tensor, torch.Tensor]:
        """Rows whose steering starts at block ``start``: blocks below it come from the bases."""
        p, n_layers = self.n_prefix, self.backend.n_layers
        bases = [self._bases[tuple(self.encoded[r])] for r in rows]
        ids, rest = self._left_pad([self.encoded[r][p:] for r in rows], self.dev)
        width = ids.shape[1]
        mask = torch.cat([torch.ones_like(rest[:, :1]).expand(-1, p), rest], dim=1)
        if p:
            pre = self._prefix(rows)
        else:  # no shared prefix: every layer starts empty
            pre = [(_empty(k, len(rows)), _empty(v, len(rows))) for k, v in bases[0].kv]
        lower = stacked_kv(bases, start, width)
        n_rest = int(rest.sum())
        self.stats["prompt_block_tokens_skipped"] += n_rest * start
        if start == n_layers:  # the prompt is untouched: nothing to run
            kv = [
                (torch.cat([pk, lk], 2), torch.cat([pv, lv], 2))
                for (pk, pv), (lk, lv) in zip(pre, lower, strict=True)
            ]
            return rows, kv, mask, torch.stack([b.logits for b in bases])
        rt = torch.tensor(rows, device=self.dev)
        cache = self.backend.cache_from_kv(pre)
        self._steer_rows(rt)
        logits = self._forward(ids, mask, cache, rt, start, stacked_resid(bases, start, width))
        self.stats["prompt_tokens_computed"] += n_rest
        self.stats["prefills"] += 1
        got = self.backend.cache_kv(cache)
        assert got is not None
        kv = [
            (torch.cat([k, lower[i][0]], 2), torch.cat([v, lower[i][1]], 2))
            if i < start
            else (k, v)
            for i, (k, v) in enumerate(got)
        ]
        return rows, kv, mask, logits

    def _prefill_all(self, rows: list[int]) -> tuple[_Live, torch.Tensor]:
        """Prefill ``rows`` through every block."""
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

    def _compact(self, live: _Live) -> None:
        """Drop leading columns that are padding in every row, once there are enough of them."""
        used = live.mask.any(0)
        lead = int(used.int().argmax()) if bool(used.any()) else live.mask.shape[1]
        if lead >= COMPACT_AT:
            kvcache.drop_leading(live.cache, lead)
            live.mask = live.mask[:, lead:]

    def _keep(self, live: _Live, keep: torch.Tensor) -> _Live:
        kvcache.keep_slots(live.cache, keep)
        return _Live(
            live.rows.index_select(0, keep),
            live.cache,
            live.mask.index_select(0, keep),
            live.tok.index_select(0, keep),
            live.n_gen.index_select(0, keep),
            live.done.index_select(0, keep),
        )

    def _join(self, live: _Live, free: torch.Tensor, group: _Live) -> _Live:
        """``group``'s rows take the slots ``free`` (finished rows) of ``live``; newcomers beyond
        them are added as new rows, slots beyond the newcomers are dropped."""
        kv = self.backend.cache_kv(group.cache)
        assert kv is not None
        n, k = len(group.rows), min(len(group.rows), free.numel())
        rows, mask = live.rows.clone(), live.mask  # a new rows tensor: the steering follows it
        tok, n_gen, done = live.tok.clone(), live.n_gen.clone(), live.done.clone()
        if k:
            slots, first = free[:k], torch.arange(k, device=self.dev)
            grow = kvcache.place(live.cache, slots, kvcache.select_rows(kv, first))
            mask = F.pad(mask, (grow, 0)).clone()
            mask[slots] = F.pad(group.mask[:k], (mask.shape[1] - group.mask.shape[1], 0))
            rows[slots], tok[slots] = group.rows[:k], group.tok[:k]
            n_gen[slots], done[slots] = group.n_gen[:k], group.done[:k]
        live = _Live(rows, live.cache, mask, tok, n_gen, done)
        if n > k:
            rest = torch.arange(k, n, device=self.dev)
            grow = kvcache.add_slots(live.cache, kvcache.select_rows(kv, rest))
            w = live.mask.shape[1] + grow
            live = _Live(
                torch.cat([live.rows, group.rows[k:]]),
                live.cache,
                torch.cat(
                    [
                        F.pad(live.mask, (grow, 0)),
                        F.pad(group.mask[k:], (w - group.mask.shape[1], 0)),
                    ]
                ),
                torch.cat([live.tok, group.tok[k:]]),
                torch.cat([live.n_gen, group.n_gen[k:]]),
                torch.cat([live.done, group.done[k:]]),
            )
        elif free.numel() > k:
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
                logits = self._forward(live.tok[:, None], live.mask, live.cache, live.rows)
                self._take(live, logits)
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
        group, logits = self._prefill(new)
        self._take(group, logits)
        if live is None:
            kv = self.backend.cache_kv(group.cache)
            assert kv is not None
            return _Live(
                group.rows, kvcache.slot_cache(kv), group.mask, group.tok, group.n_gen, group.done
            )
        return self._join(live, free, group)
