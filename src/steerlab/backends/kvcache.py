"""KV caches as plain tensors, so the engine can reshape its batch between steps.

A cache taken apart is a list with one ``(keys, values)`` pair per layer, each (B, H, T, D),
aligned with the engine's 2-D attention mask (B, T): column ``t`` of every layer belongs to
column ``t`` of the mask. Rotary embeddings are applied before keys are cached and positions
come from the mask, so columns that are padding in every row can be removed and rows can be
padded on the left or stacked without changing what any real token attends to.

A backend whose cache comes apart offers :class:`~steerlab.backends.base.KVCacheOps` (Hugging
Face's ``DynamicCache``: :mod:`steerlab.backends.hf_cache`); this module holds the operations on
the tensors themselves, which know no framework.
"""

from __future__ import annotations

import torch

KV = list[tuple[torch.Tensor, torch.Tensor]]


def pad_left(kv: KV, n: int) -> KV:
    """``kv`` with ``n`` zero columns in front (masked out by the caller's mask)."""
    if n == 0:
        return kv
    out = []
    for k, v in kv:
        zk = k.new_zeros((*k.shape[:2], n, k.shape[3]))
        zv = v.new_zeros((*v.shape[:2], n, v.shape[3]))
        out.append((torch.cat([zk, k], dim=2), torch.cat([zv, v], dim=2)))
    return out


def stack_rows(a: KV, b: KV) -> KV:
    """Rows of ``a`` then rows of ``b`` (same width)."""
    return [
        (torch.cat([ka, kb], dim=0), torch.cat([va, vb], dim=0))
        for (ka, va), (kb, vb) in zip(a, b, strict=True)
    ]


def select_rows(kv: KV, idx: torch.Tensor) -> KV:
    return [(k.index_select(0, idx), v.index_select(0, idx)) for k, v in kv]


def select_columns(kv: KV, cols: torch.Tensor) -> KV:
    return [(k.index_select(2, cols), v.index_select(2, cols)) for k, v in kv]


def gather_prefix(pieces: list[KV], which: list[int]) -> KV:
    """Stack single-row caches ``pieces[w]`` for ``w`` in ``which`` into one (len(which), ...)."""
    n_layers = len(pieces[0])
    return [
        (
            torch.cat([pieces[w][i][0] for w in which], dim=0),
            torch.cat([pieces[w][i][1] for w in which], dim=0),
        )
        for i in range(n_layers)
    ]
