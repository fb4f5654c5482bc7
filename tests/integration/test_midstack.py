"""``Backend.forward_from``: starting a forward at block L from a recorded residual is exact.

For each Hugging Face architecture that says it can start mid-stack: record ``resid_pre`` at L
with an edit during a plain (unsteered) ``forward``, then run the same tokens with steering edits
at layers >= L twice: a full ``forward`` and ``forward_from(L, recorded, ...)``. Logits and the
KV cache of layers >= L agree; layers < L of the cache are left untouched; no hook is left and
the model's layer list is restored, also after an edit raises.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import pytest
import torch
from tests.conftest import ALL_TINY, TEST_DEVICE, _load_tiny

from steerlab.backends.base import Edits
from steerlab.backends.hf import HFBackend, _get_attr_path
from steerlab.backends.kvcache import KV
from steerlab.models import load_model
from steerlab.models.tiny import VOCAB_SIZE
from steerlab.sites import Site

UNSUPPORTED_TINY = {"tiny-gemma2"}  # alternating sliding/full layers, read by loop position
SUPPORTED_TINY = tuple(k for k in ALL_TINY if k not in UNSUPPORTED_TINY)


def _extra_config(kind: str) -> Any:
    """Tiny configs of architectures without a ``steerlab.models.tiny`` kind (and gemma2 made
    uniform)."""
    import transformers as tf

    common: dict[str, Any] = {
        "vocab_size": VOCAB_SIZE,
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 3,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 512,
        "pad_token_id": 0,
        "initializer_range": 0.15,
    }
    if kind == "qwen3":
        return tf.Qwen3Config(head_dim=16, **common)
    if kind == "gemma":
        return tf.GemmaConfig(head_dim=16, **common)
    if kind == "olmo":
        return tf.OlmoConfig(**common)
    if kind == "phi3":
        return tf.Phi3Config(**common)
    if kind == "mixtral":
        return tf.MixtralConfig(num_local_experts=4, num_experts_per_tok=2, **common)
    if kind == "gemma2-full":
        return tf.Gemma2Config(head_dim=16, layer_types=["full_attention"] * 3, **common)
    if kind == "gemma3-full":
        return tf.Gemma3TextConfig(head_dim=16, layer_types=["full_attention"] * 3, **common)
    raise ValueError(kind)


EXTRA = ("qwen3", "gemma", "olmo", "phi3", "mixtral", "gemma2-full", "gemma3-full")


@functools.cache
def _backend(kind: str) -> HFBackend:
    if kind in ALL_TINY:
        backend = _load_tiny(kind).backend
    elif kind == "embedded":
        backend = load_model("embedded", device=TEST_DEVICE, dtype=torch.float32).backend
    else:
        from transformers import AutoModelForCausalLM

        state = torch.random.get_rng_state()
        try:
            torch.manual_seed(0)
            hf = AutoModelForCausalLM.from_config(_extra_config(kind), dtype=torch.float32)
        finally:
            torch.random.set_rng_state(state)
        backend = HFBackend(hf.to(TEST_DEVICE).eval(), kind)
    assert isinstance(backend, HFBackend)
    return backend


def _layer_list(be: HFBackend) -> Any:
    return _get_attr_path(be.hf, be._layers_path)


def _assert_clean(be: HFBackend, full: Any) -> None:
    assert be.count_hooks() == 0
    assert _layer_list(be) is full and len(full) == be.n_layers


def _positions(mask: torch.Tensor, s: int) -> torch.Tensor:
    return (mask.cumsum(-1) - 1).clamp(min=0)[:, -s:]  # as the engine's _forward


def _copy(be: HFBackend, cache: Any) -> Any:
    kv = be.kv_cache.tensors(cache)
    assert kv is not None
    return be.kv_cache.from_tensors([(k.clone(), v.clone()) for k, v in kv])


def _kv(be: HFBackend, cache: Any) -> KV:
    kv = be.kv_cache.tensors(cache)
    assert kv is not None
    return kv


def _inputs(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(prefix ids, prefix mask, rest ids, rest mask): 3 rows, row 1 left-padded in the prefix,
    row 2 padded at the start of the rest chunk (the engine's shared-prefix layout)."""
    g = torch.Generator().manual_seed(seed)
    pids = torch.randint(3, VOCAB_SIZE, (3, 5), generator=g)
    rids = torch.randint(3, VOCAB_SIZE, (3, 4), generator=g)
    pmask = torch.ones_like(pids)
    pmask[1, :2] = 0
    pids[1, :2] = 0
    rmask = torch.ones_like(rids)
    rmask[2, :1] = 0
    rids[2, :1] = 0
    return tuple(t.to(TEST_DEVICE) for t in (pids, pmask, rids, rmask))  # type: ignore[return-value]


def _adder(d: int, seed: int, scale: float = 0.5) -> Callable[[torch.Tensor], torch.Tensor]:
    v = (torch.randn(d, generator=torch.Generator().manual_seed(seed)) * scale).to(TEST_DEVICE)
    return lambda h: h + v


def _steering(be: HFBackend, start: int, points: tuple[str, ...]) -> Edits:
    """Adding edits at ``start`` (every point in ``points``) and at the last layer."""
    sites = [Site(start, p) for p in points] + [Site(be.n_layers - 1, "resid_post")]
    return {site: [_adder(be.d_model, i + 1)] for i, site in enumerate(dict.fromkeys(sites))}


def _points(be: HFBackend) -> tuple[str, ...]:
    if be.parallel is None:
        return ("resid_pre", "resid_post")
    if be.parallel:
        return ("resid_pre", "attn_out", "mlp_out", "resid_post")
    return ("resid_pre", "attn_out", "resid_mid", "mlp_out", "resid_post")


def _recorder(seen: list[torch.Tensor]) -> Callable[[torch.Tensor], torch.Tensor]:
    def record(h: torch.Tensor) -> torch.Tensor:
        seen.append(h.clone())
        return h

    return record


def _boom(_h: torch.Tensor) -> torch.Tensor:
    raise AssertionError("an edit below the start layer was called")


def _check_start(be: HFBackend, start: int, seed: int = 0) -> None:
    full = _layer_list(be)
    pids, pmask, rids, rmask = _inputs(seed)
    mask = torch.cat([pmask, rmask], dim=1)
    s = rids.shape[1]
    pos = _positions(mask, s)
    with torch.inference_mode():
        prefix = be.new_cache()
        be.forward(pids, pmask, _positions(pmask, pids.shape[1]), prefix)
        p_len = pids.shape[1]

        seen: list[torch.Tensor] = []
        record = _recorder(seen)
        be.forward(rids, mask, pos, _copy(be, prefix), {Site(start, "resid_pre"): [record]})
        resid = seen.pop()

        steer = _steering(be, start, _points(be))
        ref_cache = _copy(be, prefix)
        ref = be.forward(rids, mask, pos, ref_cache, steer)
        assert ref is not None

        # the resid_pre edit at ``start`` sees the injected residual; lower edits never run
        edits = {
            site: [record, *fns] if site == Site(start, "resid_pre") else list(fns)
            for site, fns in steer.items()
        }
        if start > 0:
            edits[Site(start - 1, "resid_post")] = [_boom]
            edits[Site(0, "resid_pre")] = [_boom]
        cache = _copy(be, prefix)
        out = be.forward_from(start, resid, rids, mask, pos, cache, edits)
        _assert_clean(be, full)
        assert torch.equal(seen.pop(), resid)

    assert out.dtype == torch.float32 and out.shape == ref.shape
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=0)
    before, got, want = _kv(be, prefix), _kv(be, cache), _kv(be, ref_cache)
    for layer in range(be.n_layers):
        if layer < start:  # untouched: still the prefix
            assert got[layer][0].shape[2] == p_len
            assert torch.equal(got[layer][0], before[layer][0])
            assert torch.equal(got[layer][1], before[layer][1])
        else:
            torch.testing.assert_close(got[layer][0], want[layer][0], atol=1e-5, rtol=0)
            torch.testing.assert_close(got[layer][1], want[layer][1], atol=1e-5, rtol=0)


def _starts(n: int) -> list[int]:
    return sorted({0, n // 2, n - 1})


@pytest.mark.parametrize("kind", SUPPORTED_TINY + EXTRA)
def test_forward_from_matches_forward(kind: str) -> None:
    be = _backend(kind)
    assert be.can_start_midstack
    for start in _starts(be.n_layers):
        _check_start(be, start)


def test_forward_from_embedded() -> None:
    be = _backend("embedded")
    assert be.model_type == "llama" and be.can_start_midstack
    for start in (0, be.n_layers // 2, be.n_layers - 1):
        _check_start(be, start)


@pytest.mark.parametrize("kind", ["tiny-llama", "tiny-gpt2", "tiny-neox"])
def test_forward_from_without_cache(kind: str) -> None:
    be = _backend(kind)
    pids, pmask, rids, rmask = _inputs(1)
    ids, mask = torch.cat([pids, rids], 1), torch.cat([pmask, rmask], 1)
    pos = _positions(mask, ids.shape[1])
    start = be.n_layers // 2
    seen: list[torch.Tensor] = []
    with torch.inference_mode():
        be.forward(ids, mask, pos, None, {Site(start, "resid_pre"): [_recorder(seen)]})
        steer = _steering(be, start, ("resid_pre", "resid_post"))
        ref = be.forward(ids, mask, pos, None, steer)
        out = be.forward_from(start, seen[0], ids, mask, pos, None, steer)
    assert ref is not None
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=0)


def test_forward_from_restores_after_exception() -> None:
    be = _backend("tiny-llama")
    full = _layer_list(be)
    pids, pmask, _, _ = _inputs(2)
    pos = _positions(pmask, pids.shape[1])
    resid = torch.randn(*pids.shape, be.d_model, device=TEST_DEVICE)

    def fail(_h: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("edit failed")

    for site in (Site(1, "resid_pre"), Site(2, "mlp_out"), Site(3, "resid_post")):
        with pytest.raises(RuntimeError, match="edit failed"), torch.inference_mode():
            be.forward_from(1, resid, pids, pmask, pos, be.new_cache(), {site: [fail]})
        _assert_clean(be, full)
    with torch.inference_mode():  # still a working model: a full forward equals start 0
        a = be.forward(pids, pmask, pos)
        seen: list[torch.Tensor] = []
        be.forward(pids, pmask, pos, None, {Site(0, "resid_pre"): [_recorder(seen)]})
        b = be.forward_from(0, seen[0], pids, pmask, pos)
    assert a is not None
    torch.testing.assert_close(a, b, atol=1e-5, rtol=0)
    _assert_clean(be, full)


def test_unsupported_and_bad_arguments() -> None:
    be = _backend("tiny-gemma2")
    assert not be.can_start_midstack
    ids = torch.ones(1, 2, dtype=torch.long)
    with pytest.raises(NotImplementedError):
        be.forward_from(1, torch.zeros(1, 2, be.d_model), ids, ids, ids - 1)
    be = _backend("tiny-llama")
    from steerlab.errors import SteerlabError

    with pytest.raises(SteerlabError, match="out of range"):
        be.forward_from(be.n_layers, torch.zeros(1, 2, be.d_model), ids, ids, ids - 1)
    with pytest.raises(SteerlabError, match="shape"):
        be.forward_from(1, torch.zeros(1, 3, be.d_model), ids, ids, ids - 1)
    _assert_clean(be, _layer_list(be))
