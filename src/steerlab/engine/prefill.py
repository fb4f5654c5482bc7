"""The decode engine's prefill: shared prompt prefixes and a prompt's shared lower layers.

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

**Shared lower layers.** Within one call, a prompt's activations below the first block its
steering touches are the unsteered ones; they are computed once per prompt and the rows run only
the blocks above (see :mod:`steerlab.engine.layershare`).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

from steerlab.backends.base import Backend, Edits, KVCacheOps
from steerlab.backends.kvcache import KV, gather_prefix, pad_left, select_rows, stack_rows
from steerlab.engine.forward import steered_forward
from steerlab.engine.layershare import Base, prompt_start, stacked_kv, stacked_resid
from steerlab.interventions import Intervention, Window
from steerlab.sites import Site

#: shortest common prefix (tokens) worth sharing
MIN_SHARED_PREFIX = 4

#: rows (in the order of the other items), their KV cache, attention mask (b, T) and logits (b, V)
Part = tuple[list[int], KV, torch.Tensor, torch.Tensor]
#: the engine's forward: (ids, mask, cache, rows, start block, residual entering it) -> logits
Run = Callable[
    [torch.Tensor, torch.Tensor, object, torch.Tensor, int, torch.Tensor | None], torch.Tensor
]


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


class Prefill:
    """Computes joining rows' caches for one :class:`~steerlab.engine.continuous.Engine` (see the
    module doc). ``run`` and ``steer`` are the engine's forward and its choice of steered rows;
    ``stats`` is the engine's work counter."""

    def __init__(
        self,
        backend: Backend,
        kv_cache: KVCacheOps,
        encoded: Sequence[Sequence[int]],
        ivs: Sequence[Sequence[Intervention]],
        *,
        share: bool,
        run: Run,
        steer: Callable[[torch.Tensor], None],
        check: Callable[[torch.Tensor, torch.Tensor], None],
        left_pad: Callable[..., tuple[torch.Tensor, torch.Tensor]],
        stats: dict[str, int],
        device: torch.device,
    ) -> None:
        self.backend, self.kv, self.encoded, self.ivs, self.dev = (
            backend,
            kv_cache,
            encoded,
            ivs,
            device,
        )
        self._run, self._steer, self._check, self._left_pad = run, steer, check, left_pad
        self.stats = stats
        self.n_prefix = shared_prefix_length(encoded) if share else 0
        self._prefix_index: dict[tuple[object, ...], int] = {}
        self._prefix_kv: list[KV] = []
        n_layers = backend.n_layers
        self.starts = [prompt_start(x, len(e), n_layers) for x, e in zip(ivs, encoded, strict=True)]
        # Share only prompts the steering leaves alone when the backend cannot start mid-stack,
        # or when hooks from outside the engine are on the model (an edit of theirs at a start
        # block would see the injected residual, already edited, a second time).
        if not backend.can_start_midstack or backend.count_hooks():
            self.starts = [st if st == n_layers else 0 for st in self.starts]
        self.layershare = share and any(st > 0 for st in self.starts)
        self._bases: dict[tuple[int, ...], Base] = {}
        self._uses: Counter[tuple[int, ...]] = Counter()
        if self.layershare:
            pairs = zip(encoded, self.starts, strict=True)
            self._uses.update(tuple(e) for e, st in pairs if st > 0)

    def _prefix(self, rows: list[int]) -> KV:
        """The shared prefix's KV cache for ``rows`` (computing keys not seen before)."""
        keys = [prefix_key(self.ivs[r], len(self.encoded[r]), self.n_prefix) for r in rows]
        return self._prefix_for_keys(keys, rows)

    def _prefix_for_keys(self, keys: list[tuple[object, ...]], rows: list[int]) -> KV:
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
                self._unsteered(ids, mask, cache, reps, {})
            else:
                self._steer(reps)
                self._run(ids, mask, cache, reps, 0, None)
            self.stats["prompt_tokens_computed"] += ids.numel()
            kv = self.kv.tensors(cache)
            assert kv is not None  # the engine runs only on caches that come apart
            for j, k in enumerate(missing):
                self._prefix_index[k] = len(self._prefix_kv)
                self._prefix_kv.append(select_rows(kv, torch.tensor([j], device=self.dev)))
        return gather_prefix(self._prefix_kv, [self._prefix_index[k] for k in keys])

    def __call__(self, rows: list[int]) -> Part:
        """Prefill ``rows``: their rows (reordered), cache, mask and next-token logits."""
        if not self.layershare:
            return self._prefill_all(rows)
        self._make_bases([r for r in rows if self.starts[r] > 0])
        by_start: dict[int, list[int]] = {}
        for r in rows:
            by_start.setdefault(self.starts[r], []).append(r)
        parts: list[Part] = []
        for start, rs in sorted(by_start.items()):
            if start == 0:
                parts.append(self._prefill_all(rs))
            else:
                parts.append(self._prefill_upper(start, rs))
        for r in rows:
            key = tuple(self.encoded[r])
            if self.starts[r] > 0:
                self._uses[key] -= 1
                if self._uses[key] <= 0:
                    self._bases.pop(key, None)
        return self._stack_parts(parts)

    def _stack_parts(self, parts: list[Part]) -> Part:
        width = max(m.shape[1] for _, _, m, _ in parts)
        kv: KV | None = None
        masks, rows = [], []
        for rs, kvp, m, _ in parts:
            kvp = pad_left(kvp, width - m.shape[1])
            kv = kvp if kv is None else stack_rows(kv, kvp)
            masks.append(F.pad(m, (width - m.shape[1], 0)))
            rows += rs
        assert kv is not None
        return rows, kv, torch.cat(masks), torch.cat([lg for _, _, _, lg in parts])

    def _unsteered(
        self, ids: torch.Tensor, mask: torch.Tensor, cache: object, reps: torch.Tensor, edits: Edits
    ) -> torch.Tensor:
        """A forward without the rows' steering (``edits`` only record); next-token logits."""
        logits = steered_forward(self.backend, ids, mask, cache, record=edits)
        assert logits is not None
        self._check(logits, reps)
        self.stats["positions_run"] += ids.numel()
        return logits

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
            cache = self.kv.from_tensors(kv0)
        else:
            mask, cache = rest, self.backend.new_cache()
        logits = self._unsteered(ids, mask, cache, torch.tensor(reps, device=self.dev), edits)
        kv = self.kv.tensors(cache)
        assert kv is not None
        self.stats["prompt_tokens_computed"] += int(rest.sum())
        self.stats["prefills"] += 1
        for j, key in enumerate(todo):
            w = len(key) - p
            self._bases[key] = Base(  # copies: a view would keep the whole batch alive
                kv=[(k[j : j + 1, :, -w:].clone(), v[j : j + 1, :, -w:].clone()) for k, v in kv],
                resid={st: h[j, -w:].clone() for st, h in seen.items()},
                logits=logits[j].clone(),
            )

    def _prefill_upper(self, start: int, rows: list[int]) -> Part:
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
        if start == n_layers:  # the prompt is untouched: nothing to run
            self.stats["prompt_tokens_reused"] += n_rest
            kv = [
                (torch.cat([pk, lk], 2), torch.cat([pv, lv], 2))
                for (pk, pv), (lk, lv) in zip(pre, lower, strict=True)
            ]
            return rows, kv, mask, torch.stack([b.logits for b in bases])
        rt = torch.tensor(rows, device=self.dev)
        cache = self.kv.from_tensors(pre)
        self._steer(rt)
        logits = self._run(ids, mask, cache, rt, start, stacked_resid(bases, start, width))
        self.stats["prompt_tokens_computed"] += n_rest
        self.stats["prompt_block_tokens_skipped"] += n_rest * start
        self.stats["prefills"] += 1
        self.stats["midstack_prefills"] += 1
        got = self.kv.tensors(cache)
        assert got is not None
        kv = [
            (torch.cat([k, lower[i][0]], 2), torch.cat([v, lower[i][1]], 2))
            if i < start
            else (k, v)
            for i, (k, v) in enumerate(got)
        ]
        return rows, kv, mask, logits

    def _prefill_all(self, rows: list[int]) -> Part:
        """Prefill ``rows`` through every block."""
        rt = torch.tensor(rows, device=self.dev)
        p = self.n_prefix
        if p:
            kv = self._prefix(rows)
            ids, rest = self._left_pad([self.encoded[r][p:] for r in rows], self.dev)
            mask = torch.cat([torch.ones_like(rest[:, :1]).expand(-1, p), rest], dim=1)
            cache = self.kv.from_tensors(kv)
        else:
            ids, mask = self._left_pad([self.encoded[r] for r in rows], self.dev)
            cache = self.backend.new_cache()
        self._steer(rt)
        logits = self._run(ids, mask, cache, rt, 0, None)
        self.stats["prompt_tokens_computed"] += sum(len(self.encoded[r]) - p for r in rows)
        self.stats["prefills"] += 1
        got = self.kv.tensors(cache)
        assert got is not None  # the engine runs only on caches that come apart
        return rows, got, mask, logits
