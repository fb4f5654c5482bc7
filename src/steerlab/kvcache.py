"""KV caches as plain tensors, so the decode engine can reshape its batch between steps.

A cache taken apart is a list with one ``(keys, values)`` pair per layer, each (B, H, T, D),
aligned with the engine's 2-D attention mask (B, T): column ``t`` of every layer belongs to
column ``t`` of the mask. Rotary embeddings are applied before keys are cached and positions
come from the mask, so columns that are padding in every row can be removed and rows can be
padded on the left or stacked without changing what any real token attends to.

Hugging Face's ``DynamicCache`` (used by the ``hf`` and ``nnsight`` backends and TransformerLens's
bridge) is supported when every layer is a plain full-attention layer; other caches (sliding
windows, TransformerLens's own cache) report ``None`` and the engine keeps each batch's rows
together instead.
"""

from __future__ import annotations

from typing import Any

import torch

KV = list[tuple[torch.Tensor, torch.Tensor]]


def comes_apart(cache: Any) -> bool:
    """Whether an empty cache from ``Backend.new_cache`` is one :func:`dynamic_cache_kv` reads
    once filled."""
    try:
        from transformers import DynamicCache
    except ImportError:  # pragma: no cover
        return False
    return type(cache) is DynamicCache


def dynamic_cache_kv(cache: Any) -> KV | None:
    """The tensors of a ``DynamicCache`` of plain full-attention layers, else None."""
    try:
        from transformers import DynamicCache
        from transformers.cache_utils import DynamicLayer
    except ImportError:  # pragma: no cover - transformers is a core dependency
        return None
    if type(cache) is not DynamicCache:
        return None
    layers = getattr(cache, "layers", None)
    if not layers or any(type(layer) is not DynamicLayer for layer in layers):
        return None
    if not all(getattr(layer, "is_initialized", False) for layer in layers):
        return None
    return [(layer.keys, layer.values) for layer in layers]


def dynamic_cache_from_kv(kv: KV) -> Any:
    """A ``DynamicCache`` holding ``kv``."""
    from transformers import DynamicCache

    cache = DynamicCache()
    for i, (k, v) in enumerate(kv):
        cache.update(k, v, i)
    return cache


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
