"""Slot caches (steerlab.backends.hf_cache.SlotLayer): the engine's KV cache with spare columns.

Each operation is checked against the same thing done with plain tensors: appends in place equal
``torch.cat``, a newcomer placed in a slot is right-aligned with zeros in front, growing, dropping
leading columns and keeping rows keep every other row's columns.
"""

from __future__ import annotations

import torch

from steerlab.backends import hf_cache as kvcache


def _kv(b: int, t: int, seed: int, layers: int = 2) -> kvcache.KV:
    g = torch.Generator().manual_seed(seed)
    return [
        (torch.randn(b, 3, t, 4, generator=g), torch.randn(b, 3, t, 4, generator=g))
        for _ in range(layers)
    ]


def _tensors(cache: object) -> kvcache.KV:
    kv = kvcache.dynamic_cache_kv(cache)
    assert kv is not None
    return kv


def _same(a: kvcache.KV, b: kvcache.KV) -> None:
    assert len(a) == len(b)
    for (ka, va), (kb, vb) in zip(a, b, strict=True):
        assert torch.equal(ka, kb) and torch.equal(va, vb)


def test_appends_equal_cat_past_the_headroom() -> None:
    kv = _kv(2, 5, 0)
    cache = kvcache.slot_cache(kv)
    want = kv
    for step in range(kvcache.HEADROOM + 7):  # forces at least one regrowth
        new = _kv(2, 1, 100 + step)
        for i, (k, v) in enumerate(new):
            cache.layers[i].update(k, v)
        pairs = zip(want, new, strict=True)
        want = [(torch.cat([a, c], 2), torch.cat([b, d], 2)) for (a, b), (c, d) in pairs]
    _same(_tensors(cache), want)
    assert cache.get_seq_length() == 5 + kvcache.HEADROOM + 7


def test_place_right_aligns_and_zeroes_the_slot() -> None:
    kv = _kv(3, 6, 1)
    cache = kvcache.slot_cache(kv)
    new = _kv(1, 4, 2)
    assert kvcache.place(cache, torch.tensor([1]), new) == 0
    got = _tensors(cache)
    for (k, v), (k0, v0), (kn, vn) in zip(got, kv, new, strict=True):
        assert torch.equal(k[[0, 2]], k0[[0, 2]]) and torch.equal(v[[0, 2]], v0[[0, 2]])
        assert torch.equal(k[1, :, 2:], kn[0]) and torch.equal(v[1, :, 2:], vn[0])
        assert not k[1, :, :2].any() and not v[1, :, :2].any()


def test_place_wider_than_the_cache_pads_every_row() -> None:
    kv = _kv(2, 3, 3)
    cache = kvcache.slot_cache(kv)
    new = _kv(1, 5, 4)
    assert kvcache.place(cache, torch.tensor([0]), new) == 2
    got = _tensors(cache)
    for (k, _), (k0, _), (kn, _) in zip(got, kv, new, strict=True):
        assert torch.equal(k[0], kn[0])
        assert torch.equal(k[1, :, 2:], k0[1]) and not k[1, :, :2].any()


def test_drop_columns_and_keep_rows() -> None:
    kv = _kv(3, 8, 5)
    cache = kvcache.slot_cache(kv)
    kvcache.drop_leading(cache, 3)
    _same(_tensors(cache), [(k[:, :, 3:], v[:, :, 3:]) for k, v in kv])
    kvcache.keep_slots(cache, torch.tensor([2, 0]))
    _same(_tensors(cache), [(k[[2, 0], :, 3:], v[[2, 0], :, 3:]) for k, v in kv])
