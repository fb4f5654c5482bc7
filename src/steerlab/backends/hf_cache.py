"""Hugging Face's ``DynamicCache`` as the engine's :class:`~steerlab.backends.base.KVCacheOps`:
taken apart into per-layer tensors and back, and held in slot buffers for the continuous loop.

Supported when every layer is a plain full-attention layer; other caches (sliding windows)
report ``None`` from :meth:`DynamicCacheOps.tensors` and the engine keeps each batch's rows
together instead. The ``hf`` and ``nnsight`` backends and TransformerLens's bridge use it.
"""

from __future__ import annotations

from typing import Any

import torch
from transformers.cache_utils import DynamicLayer

from steerlab.backends.base import KVCacheOps
from steerlab.backends.kvcache import KV, pad_left


def dynamic_cache_kv(cache: Any) -> KV | None:
    """The tensors of a ``DynamicCache`` of plain full-attention layers, else None."""
    try:
        from transformers import DynamicCache
    except ImportError:  # pragma: no cover - transformers is a core dependency
        return None
    if type(cache) is not DynamicCache:
        return None
    layers = getattr(cache, "layers", None)
    if not layers or any(type(layer) not in (DynamicLayer, SlotLayer) for layer in layers):
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


# ---------------------------------------------------------------------------- slots

#: spare columns a slot buffer keeps beyond what it holds (appends are in place until they run out)
HEADROOM = 64


class SlotLayer(DynamicLayer):
    """A ``DynamicLayer`` whose keys and values are views into buffers with spare columns.

    Hugging Face's ``DynamicLayer`` appends a decode step's keys with ``torch.cat``, copying the
    whole layer every step (at batch 128 that was ~8% of the step on the embedded model); here a
    step writes one column in place. Rows are *slots*: the engine writes a newcomer's prompt
    cache into a finished row's slot (:func:`place`) instead of rebuilding the batch.
    """

    def __init__(self, keys: torch.Tensor, values: torch.Tensor) -> None:
        super().__init__()
        self.device = keys.device
        self.is_initialized = True
        self._n = keys.shape[2]
        self._kb = _with_room(keys, self._n + HEADROOM)
        self._vb = _with_room(values, self._n + HEADROOM)
        self._views()

    def _views(self) -> None:
        self.kview = self.keys = self._kb[:, :, : self._n]
        self.vview = self.values = self._vb[:, :, : self._n]

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        s = key_states.shape[2]
        if self._n + s > self._kb.shape[2]:
            self.reset_buffers(self.kview, self.vview, room=s + HEADROOM)
        self._kb[:, :, self._n : self._n + s] = key_states
        self._vb[:, :, self._n : self._n + s] = value_states
        self._n += s
        self._views()
        return self.kview, self.vview

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        room = self._kb.shape[2] - self._n
        self.reset_buffers(self.kview[indices], self.vview[indices], room=room)

    def crop(self, tokens_to_remove: int) -> None:
        raise NotImplementedError("a slot cache is not cropped")

    def batch_repeat_interleave(self, repeats: int) -> None:
        raise NotImplementedError("a slot cache does not repeat rows")

    def reset(self) -> None:
        raise NotImplementedError("a slot cache is not reset")

    def reset_buffers(self, keys: torch.Tensor, values: torch.Tensor, room: int = HEADROOM) -> None:
        """Hold (a copy of) ``keys``/``values``, with ``room`` spare columns."""
        self._n = keys.shape[2]
        self._kb = _with_room(keys, self._n + room)
        self._vb = _with_room(values, self._n + room)
        self._views()


def _with_room(x: torch.Tensor, width: int) -> torch.Tensor:
    buf = x.new_zeros((x.shape[0], x.shape[1], width, x.shape[3]))
    buf[:, :, : x.shape[2]] = x
    return buf


def slot_cache(kv: KV) -> Any:
    """A ``DynamicCache`` of :class:`SlotLayer` holding ``kv``."""
    from transformers import DynamicCache

    cache = DynamicCache()
    cache.layers = [SlotLayer(k, v) for k, v in kv]
    return cache


def slot_layers(cache: Any) -> list[SlotLayer]:
    layers = list(cache.layers)
    assert all(isinstance(layer, SlotLayer) for layer in layers)
    return layers


def place(cache: Any, slots: torch.Tensor, kv: KV) -> int:
    """Write ``kv`` (n rows, width w) into rows ``slots`` (n,) of a slot cache, right-aligned
    with its last column; earlier columns of those rows are zeroed (the caller masks them).
    Returns how many zero columns were added on the left of every row when ``w`` exceeded the
    cache's width (the caller pads its mask by as much)."""
    layers = slot_layers(cache)
    width, w = layers[0].kview.shape[2], kv[0][0].shape[2]
    grow = max(0, w - width)
    for layer, (k, v) in zip(layers, kv, strict=True):
        if grow:
            keys, values = pad_left([(layer.kview, layer.vview)], grow)[0]
            layer.reset_buffers(keys, values)
        n = layer.kview.shape[2]
        for buf, new in ((layer._kb, k), (layer._vb, v)):
            buf[slots, :, : n - w] = 0
            buf[slots, :, n - w : n] = new
    return grow


def drop_leading(cache: Any, n: int) -> None:
    """Remove the first ``n`` columns (padding in every row) of a slot cache."""
    for layer in slot_layers(cache):
        layer.reset_buffers(layer.kview[:, :, n:], layer.vview[:, :, n:])


def keep_slots(cache: Any, keep: torch.Tensor) -> None:
    """Keep rows ``keep`` of a slot cache."""
    for layer in slot_layers(cache):
        room = layer._kb.shape[2] - layer.kview.shape[2]
        layer.reset_buffers(
            layer.kview.index_select(0, keep), layer.vview.index_select(0, keep), room=room
        )


class DynamicCacheOps(KVCacheOps):
    """:class:`KVCacheOps` on ``DynamicCache`` (see the module doc)."""

    def tensors(self, cache: Any) -> KV | None:
        return dynamic_cache_kv(cache)

    def from_tensors(self, kv: KV) -> Any:
        return dynamic_cache_from_kv(kv)

    def slots(self, kv: KV) -> Any:
        return slot_cache(kv)

    def place(self, cache: Any, slots: torch.Tensor, kv: KV) -> int:
        return place(cache, slots, kv)

    def drop_leading(self, cache: Any, n: int) -> None:
        drop_leading(cache, n)

    def keep_slots(self, cache: Any, keep: torch.Tensor) -> None:
        keep_slots(cache, keep)


#: the one instance the backends hand out
DYNAMIC_CACHE = DynamicCacheOps()
