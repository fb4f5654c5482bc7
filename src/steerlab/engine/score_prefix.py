"""The forward passes behind logit scoring: plain batches, and shared prompt prefixes.

Scoring reads one distribution per row, the next-token logits after the row's last prompt token.
A classification grid scores each example under many settings (vector x layer x strength), and
with ``last-prompt`` steering every position but the last is unsteered, so all rows of one
example compute the same activations there. Those positions are computed once.

**Sharing.** A row's *prefix* is its prompt minus its *tail*: the last token, or the last few
when a row of the same prompt steers a short window at the prompt end (``window:-2:`` steers the
last two prompt tokens, so they form the tail; see :func:`tail_length`). A causal model's
activations on the prefix depend only on the prefix tokens and on the steering applied at them,
which :func:`steerlab.engine.prefill.prefix_key` summarises (empty when no intervention touches
the prefix). Rows with the same prefix tokens and the same key get the same prefix KV cache by
construction: it is computed once (keys batched together, left-padded, steered with the
interventions that touch the prefix), then each row feeds only its tail on a copy of it, with
its own steering and its full prompt length, so every position keeps its place relative to the
prompt end. Rows whose steering reaches into the prefix (``all``, ``prompt``, a window starting
before the last token) share only with rows steered the same way there; a row that shares with
nobody (and a one-token prompt) runs the whole prompt in one forward.

Memory stays that of a plain batch: the prefixes of at most ``batch_size`` keys are held at a
time, and each tail forward copies the prefix cache of at most ``batch_size`` rows.

Sharing needs a KV cache that comes apart into tensors
(:attr:`~steerlab.backends.base.Backend.kv_cache`); otherwise (TransformerLens's own cache) every
row runs the plain way.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch

from steerlab.backends.kvcache import KV, select_columns, select_rows
from steerlab.engine.batch import left_pad
from steerlab.engine.forward import local_backend, steered_forward, steering_for
from steerlab.engine.prefill import prefix_key
from steerlab.interventions import Intervention, Window
from steerlab.models import Model

RowIvs = tuple[Intervention, ...]
Batches = Iterator[tuple[list[int], torch.Tensor]]

#: the longest tail of prompt tokens fed per row on a shared prefix (see :func:`tail_length`)
MAX_TAIL = 8

STAT_KEYS = (
    "rows",
    "prompt_tokens",
    "prompt_tokens_computed",
    "positions_run",
    "forwards",
    "shared_prefixes",
    "shared_rows",
)


def next_token_batches(
    model: Model,
    encoded: Sequence[Sequence[int]],
    ivs: Sequence[RowIvs],
    batch_size: int,
    share_prefix: bool = True,
    stats: dict[str, int] | None = None,
) -> Batches:
    """Yield ``(indices, logp)``: a batch of rows and their (b, V) float32 next-token
    log-probabilities on the model's device; every row exactly once.

    ``encoded[i]`` are row ``i``'s prompt tokens (non-empty), ``ivs[i]`` its interventions
    (checked by the caller). ``stats``, when given, is filled with counts of the work done:
    ``rows``, ``prompt_tokens`` (all rows), ``prompt_tokens_computed`` (real tokens fed: shared
    prefixes once), ``positions_run`` (pads included), ``forwards``, ``shared_prefixes`` (prefixes
    computed once for several rows) and ``shared_rows`` (rows scored from one).
    """
    st = stats if stats is not None else {}
    for k in STAT_KEYS:
        st[k] = 0
    st["rows"] = len(encoded)
    st["prompt_tokens"] = sum(len(x) for x in encoded)
    share = share_prefix and local_backend(model).kv_cache is not None
    plain, groups = split_rows(encoded, ivs) if share else (list(range(len(encoded))), [])
    yield from _plain_batches(model, encoded, ivs, plain, batch_size, st)
    yield from _shared_batches(model, encoded, ivs, groups, batch_size, st)


def split_rows(
    encoded: Sequence[Sequence[int]], ivs: Sequence[RowIvs]
) -> tuple[list[int], list[tuple[int, list[int]]]]:
    """``(plain, groups)``: rows that share their prefix with no other row (or have none), and
    groups ``(tail, rows)`` of rows with the same prefix tokens, tail length and prefix steering
    (each of two rows or more). A prompt's tail (see :func:`tail_length`), the tokens each row
    feeds on a copy of the prefix, is the same for all its rows."""
    by_prompt: dict[int, list[int]] = {}
    for i, toks in enumerate(encoded):
        by_prompt.setdefault(id(toks), []).append(i)
    by_key: dict[tuple[object, ...], tuple[int, list[int]]] = {}
    plain: list[int] = []
    for rows in by_prompt.values():
        toks = encoded[rows[0]]
        k = tail_length([ivs[i] for i in rows], len(toks))
        n = len(toks) - k
        if n < 1:
            plain.extend(rows)
            continue
        ids = tuple(toks[:n])
        for i in rows:
            by_key.setdefault((ids, k, prefix_key(ivs[i], n + k, n)), (k, []))[1].append(i)
    groups: list[tuple[int, list[int]]] = []
    for k, rows in by_key.values():
        if len(rows) > 1:
            groups.append((k, rows))
        else:
            plain.extend(rows)
    plain.sort()
    return plain, groups


def tail_length(ivs: Sequence[RowIvs], prompt_len: int) -> int:
    """How many last prompt tokens the rows of one prompt feed on a copy of the shared prefix:
    1, or the most that any row's steering reaches back from the prompt end (``last-prompt`` is
    1, ``window:-3:`` is 3), up to :data:`MAX_TAIL` and the prompt minus one token. Steering that
    reaches further (``all``, ``prompt``) stays in the prefix key: such rows share only with rows
    steered the same way there."""
    k = 1
    for row in ivs:
        for iv in row:
            start = Window.parse(iv.positions).bounds[0]
            if -MAX_TAIL <= start < 0:
                k = max(k, -start)
    return max(1, min(k, prompt_len - 1))


# ----------------------------------------------------------------------------- one forward


def _forward(
    model: Model,
    ids: torch.Tensor,
    mask: torch.Tensor,
    cache: object | None,
    ivs: Sequence[RowIvs],
    prompt_lens: torch.Tensor,
    st: dict[str, int],
) -> torch.Tensor:
    """(b, V) float32 next-token log-probabilities after feeding ``ids`` (b, S).

    ``mask`` (b, P + S) covers the ``P`` columns already in ``cache`` and the fed ones;
    positions come from it. ``ivs[i]`` steer row ``i`` whose prompt has ``prompt_lens[i]``
    tokens, so windows relative to the prompt end select the same tokens in any chunk.
    """
    s = ids.shape[1]
    handle = steering_for(model, ivs, prompt_lens.to(model.device))
    with torch.inference_mode():
        logits = steered_forward(local_backend(model), ids, mask, cache, steer=handle, check=ivs)
        assert logits is not None  # (b, V) float32
        logp = torch.log_softmax(logits, dim=-1)  # (b, V)
    st["forwards"] += 1
    st["positions_run"] += ids.numel()
    st["prompt_tokens_computed"] += int(mask[:, -s:].sum())
    return logp


def _plain_batches(
    model: Model,
    encoded: Sequence[Sequence[int]],
    ivs: Sequence[RowIvs],
    rows: Sequence[int],
    batch_size: int,
    st: dict[str, int],
) -> Batches:
    """Each row's whole prompt in one forward, ``batch_size`` rows at a time."""
    # Longest first, as in generation: memory peaks early, similar lengths share batches.
    order = sorted(rows, key=lambda i: (-len(encoded[i]), i))
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        ids, mask = left_pad([encoded[i] for i in idx], model.pad_token_id, model.device)  # (b, W)
        yield idx, _forward(model, ids, mask, None, [ivs[i] for i in idx], mask.sum(-1), st)


# ----------------------------------------------------------------------------- shared prefixes


def _shared_batches(
    model: Model,
    encoded: Sequence[Sequence[int]],
    ivs: Sequence[RowIvs],
    groups: Sequence[tuple[int, Sequence[int]]],
    batch_size: int,
    st: dict[str, int],
) -> Batches:
    """The rows of ``groups``: each group's prefix once, then every row's tail alone (groups of
    one tail length at a time, so a batch feeds tails of one width)."""
    dev = model.device
    # Longest prefixes first; a chunk holds the prefix caches of at most batch_size groups.
    ordered = sorted(groups, key=lambda g: (g[0], -len(encoded[g[1][0]]), g[1][0]))
    chunks: list[list[tuple[int, Sequence[int]]]] = []
    for g in ordered:
        if chunks and chunks[-1][0][0] == g[0] and len(chunks[-1]) < batch_size:
            chunks[-1].append(g)
        else:
            chunks.append([g])
    for c, chunk in enumerate(chunks):
        tail = chunk[0][0]
        got = _prefixes(model, encoded, ivs, [g[1][0] for g in chunk], tail, st)
        if got is None:  # this backend's cache does not come apart after all
            rest = sorted(r for later in chunks[c:] for g in later for r in g[1])
            yield from _plain_batches(model, encoded, ivs, rest, batch_size, st)
            return
        kv, pmask = got  # KV (k, H, W, D); pmask (k, W)
        st["shared_prefixes"] += len(chunk)
        pairs = [(r, j) for j, g in enumerate(chunk) for r in g[1]]  # (row, its group in chunk)
        st["shared_rows"] += len(pairs)
        for s in range(0, len(pairs), batch_size):
            part = pairs[s : s + batch_size]
            idx = [r for r, _ in part]
            which = torch.tensor([j for _, j in part], device=dev)
            yield idx, _tails(model, encoded, ivs, idx, kv, pmask, which, tail, st)


def _prefixes(
    model: Model,
    encoded: Sequence[Sequence[int]],
    ivs: Sequence[RowIvs],
    reps: Sequence[int],
    tail: int,
    st: dict[str, int],
) -> tuple[KV, torch.Tensor] | None:
    """The KV cache of rows ``reps``' prefixes (each prompt minus its last ``tail`` tokens),
    computed together (left-padded), and its mask (k, W); None when the backend's cache cannot
    be taken apart.

    Each prefix is steered by the row's interventions that touch it, at the positions they take
    in the full prompt (the group's key says those are the same for every row of the group).
    """
    plens = [len(encoded[r]) for r in reps]
    ids, mask = left_pad([encoded[r][:-tail] for r in reps], model.pad_token_id, model.device)
    steer = [
        tuple(iv for iv in ivs[r] if prefix_key((iv,), n, n - tail))
        for r, n in zip(reps, plens, strict=True)
    ]
    backend = local_backend(model)
    kv_cache = backend.kv_cache
    assert kv_cache is not None  # rows share only where the cache comes apart
    cache = backend.new_cache()
    _forward(model, ids, mask, cache, steer, torch.tensor(plens), st)
    kv = kv_cache.tensors(cache)
    return None if kv is None else (kv, mask)


def _tails(
    model: Model,
    encoded: Sequence[Sequence[int]],
    ivs: Sequence[RowIvs],
    idx: Sequence[int],
    kv: KV,
    pmask: torch.Tensor,
    which: torch.Tensor,
    tail: int,
    st: dict[str, int],
) -> torch.Tensor:
    """Rows ``idx``: feed each its last ``tail`` prompt tokens on a copy of prefix
    ``which[i]``."""
    dev = model.device
    with torch.inference_mode():
        mask = pmask.index_select(0, which)  # (b, W)
        rows_kv = select_rows(kv, which)
        used = mask.any(0)
        if not bool(used.all()):  # columns that are padding in every row of this batch
            cols = used.nonzero().squeeze(-1)
            rows_kv, mask = select_columns(rows_kv, cols), mask.index_select(1, cols)
        mask = torch.cat([mask, torch.ones_like(mask[:, :1]).expand(-1, tail)], dim=1)
        kv_cache = local_backend(model).kv_cache
        assert kv_cache is not None
        cache = kv_cache.from_tensors(rows_kv)
    ids = torch.tensor([list(encoded[r][-tail:]) for r in idx], device=dev)  # (b, tail)
    plens = torch.tensor([len(encoded[r]) for r in idx])
    return _forward(model, ids, mask, cache, [ivs[r] for r in idx], plens, st)
