"""The nnsight backend against the Hugging Face backend, on tiny random models.

Both backends run identical copies of one seeded model. The nnsight backend must give the same
logits, show every edit the same activation at every site, apply writes identically, keep the
KV cache correct (cached == uncached, rows dropped), stop where asked, leave nothing behind
(also when an edit raises), and give the same greedy generations through steerlab's engine and
under the steering context.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import pytest
import torch

pytest.importorskip("nnsight")

from steerlab.backends.base import Edits, SiteFn
from steerlab.backends.hf import HFBackend
from steerlab.backends.nnsight import NNsightBackend
from steerlab.engine.generate import GenerationConfig, Row, generate
from steerlab.engine.handle import count_hooks, steering
from steerlab.errors import SteerlabError
from steerlab.interventions import Intervention
from steerlab.models import Model, model_from_hf
from steerlab.models.tiny import build_tiny_model
from steerlab.sites import POINTS, Site, SiteError

# Every tiny architecture; kinds this checkout's steerlab.models.tiny cannot build are skipped.
KINDS = (
    "tiny-llama",
    "tiny-gpt2",
    "tiny-neox",
    "tiny-qwen2",
    "tiny-gemma2",
    "tiny-mistral",
    "tiny-phi",
)
PROMPTS = ((1, 40, 41, 42, 43, 44, 45), (1, 50, 51), (1, 60, 61, 62, 63))
ATOL = 1e-5


@functools.cache
def _hf_copy(kind: str, copy: int) -> tuple[object, object]:
    """One seeded copy of ``kind`` (same weights for every ``copy``; ``copy`` keeps them apart)."""
    del copy
    try:
        return build_tiny_model(kind)
    except ValueError:
        pytest.skip(f"steerlab.models.tiny cannot build {kind} here")


@functools.cache
def _pair(kind: str) -> tuple[HFBackend, NNsightBackend]:
    hf_a, _ = _hf_copy(kind, 0)
    hf_b, tok_b = _hf_copy(kind, 1)
    return HFBackend(hf_a, kind), NNsightBackend.from_hf(hf_b, tok_b, kind)


@pytest.fixture(params=KINDS)
def pair(request: pytest.FixtureRequest) -> tuple[HFBackend, NNsightBackend]:
    return _pair(request.param)


@functools.cache
def _models(kind: str) -> tuple[Model, Model]:
    hf_a, tok_a = _hf_copy(kind, 2)
    hf_b, tok_b = _hf_copy(kind, 3)
    return (
        model_from_hf(hf_a, tok_a, kind),
        model_from_hf(hf_b, tok_b, kind, backend="nnsight"),
    )


@pytest.fixture(params=KINDS)
def models(request: pytest.FixtureRequest) -> tuple[Model, Model]:
    return _models(request.param)


# ----------------------------------------------------------------------------- helpers


def left_pad(
    prompts: tuple[tuple[int, ...], ...] = PROMPTS,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(ids, mask, positions)`` (B, W), left-padded with token 0, positions from the mask."""
    width = max(len(p) for p in prompts)
    ids = torch.zeros((len(prompts), width), dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for r, p in enumerate(prompts):
        ids[r, width - len(p) :] = torch.tensor(p)
        mask[r, width - len(p) :] = 1
    return ids, mask, positions_of(mask)


def positions_of(mask: torch.Tensor) -> torch.Tensor:
    return (mask.cumsum(-1) - 1).clamp(min=0)


def sites_of(backend: HFBackend) -> list[Site]:
    """Every site the model exposes (resid_mid is missing on parallel-residual blocks)."""
    out = []
    for layer in range(backend.n_layers):
        for point in POINTS:
            site = Site(layer, point)
            try:
                backend.check_site(site)
            except SiteError:
                continue
            out.append(site)
    return out


def recorder(sink: dict[Site, torch.Tensor], site: Site) -> SiteFn:
    def record(h: torch.Tensor) -> torch.Tensor:
        sink[site] = h.detach().clone()
        return h

    return record


def shift(site: Site, d_model: int) -> SiteFn:
    """A fixed, site-specific write ``h + delta``."""
    gen = torch.Generator().manual_seed(1000 + 10 * site.layer + POINTS.index(site.point))
    delta = torch.randn(d_model, generator=gen)  # (d,)
    return lambda h: h + delta.to(h.dtype)


def run(
    backend: HFBackend | NNsightBackend,
    ids: torch.Tensor,
    mask: torch.Tensor,
    pos: torch.Tensor,
    cache: object | None = None,
    edits: Edits | None = None,
) -> torch.Tensor:
    with torch.inference_mode():
        out = backend.forward(ids, mask, pos, cache, edits)
    assert out is not None
    return out


# ----------------------------------------------------------------------------- forward parity


def test_logits_equal_hf_on_left_padded_batch(pair: tuple[HFBackend, NNsightBackend]) -> None:
    hf, ns = pair
    ids, mask, pos = left_pad()
    a, b = run(hf, ids, mask, pos), run(ns, ids, mask, pos)
    assert b.dtype == torch.float32
    assert b.shape == (len(PROMPTS), hf.hf.config.vocab_size)
    torch.testing.assert_close(b, a, atol=ATOL, rtol=0)


def test_every_site_sees_the_hf_activation(pair: tuple[HFBackend, NNsightBackend]) -> None:
    """One pass with a recording edit at every site: same activation as the HF hooks see."""
    hf, ns = pair
    ids, mask, pos = left_pad()
    sites = sites_of(hf)
    seen_hf: dict[Site, torch.Tensor] = {}
    seen_ns: dict[Site, torch.Tensor] = {}
    a = run(hf, ids, mask, pos, edits={s: [recorder(seen_hf, s)] for s in sites})
    b = run(ns, ids, mask, pos, edits={s: [recorder(seen_ns, s)] for s in sites})
    assert set(seen_ns) == set(sites)
    for site in sites:
        assert seen_ns[site].shape == (len(PROMPTS), ids.shape[1], hf.d_model), site.name
        torch.testing.assert_close(seen_ns[site], seen_hf[site], atol=ATOL, rtol=0, msg=site.name)
    torch.testing.assert_close(b, a, atol=ATOL, rtol=0)


@pytest.mark.parametrize("point", POINTS)
def test_a_write_at_one_site_gives_the_hf_logits(
    pair: tuple[HFBackend, NNsightBackend], point: str
) -> None:
    hf, ns = pair
    site = Site(1, point)
    try:
        hf.check_site(site)
    except SiteError:
        with pytest.raises(SiteError, match="resid_mid"):
            ns.check_site(site)
        return
    ids, mask, pos = left_pad()
    base = run(hf, ids, mask, pos)
    edits: Edits = {site: [shift(site, hf.d_model)]}
    a, b = run(hf, ids, mask, pos, edits=edits), run(ns, ids, mask, pos, edits=edits)
    assert not torch.allclose(a, base, atol=1e-3)  # the write does reach the logits
    torch.testing.assert_close(b, a, atol=ATOL, rtol=0)


def test_writes_at_every_site_compose_like_hf(pair: tuple[HFBackend, NNsightBackend]) -> None:
    """All sites written in one pass (resid_pre, attn_out, resid_mid, ... of the same block):
    each edit sees every upstream edit, in the same order as the HF hooks."""
    hf, ns = pair
    ids, mask, pos = left_pad()
    sites = sites_of(hf)
    seen_hf: dict[Site, torch.Tensor] = {}
    seen_ns: dict[Site, torch.Tensor] = {}
    edits_hf: Edits = {s: [recorder(seen_hf, s), shift(s, hf.d_model)] for s in sites}
    edits_ns: Edits = {s: [recorder(seen_ns, s), shift(s, hf.d_model)] for s in sites}
    a, b = run(hf, ids, mask, pos, edits=edits_hf), run(ns, ids, mask, pos, edits=edits_ns)
    for site in sites:
        torch.testing.assert_close(seen_ns[site], seen_hf[site], atol=1e-4, rtol=0, msg=site.name)
    torch.testing.assert_close(b, a, atol=1e-4, rtol=0)


# ----------------------------------------------------------------------------- KV cache


def test_cached_decoding_equals_uncached(pair: tuple[HFBackend, NNsightBackend]) -> None:
    _, ns = pair
    site = Site(ns.n_layers - 1, "resid_pre")
    edits: Edits = {site: [shift(site, ns.d_model)]}
    ids, mask, pos = left_pad()
    cache = ns.new_cache()
    logits = run(ns, ids, mask, pos, cache, edits)
    for _ in range(3):
        tok = logits.argmax(-1)[:, None]  # (B, 1)
        ids = torch.cat([ids, tok], dim=1)
        mask = torch.cat([mask, torch.ones_like(tok)], dim=1)
        pos = positions_of(mask)
        logits = run(ns, tok, mask, pos[:, -1:], cache, edits)
        assert cache.get_seq_length() == ids.shape[1]
        full = run(ns, ids, mask, pos, None, edits)
        torch.testing.assert_close(logits, full, atol=1e-4, rtol=0)


def test_select_cache_keeps_the_chosen_rows(pair: tuple[HFBackend, NNsightBackend]) -> None:
    _, ns = pair
    ids, mask, pos = left_pad()
    cache = ns.new_cache()
    logits = run(ns, ids, mask, pos, cache)
    keep = torch.tensor([0, 2])
    cache = ns.select_cache(cache, keep)
    tok = logits.argmax(-1)[keep][:, None]  # (2, 1)
    ids = torch.cat([ids[keep], tok], dim=1)
    mask = torch.cat([mask[keep], torch.ones_like(tok)], dim=1)
    pos = positions_of(mask)
    stepped = run(ns, tok, mask, pos[:, -1:], cache)
    torch.testing.assert_close(stepped, run(ns, ids, mask, pos), atol=1e-4, rtol=0)


# ----------------------------------------------------------------------------- stop, cleanup


def test_stop_at_returns_none_after_that_site(pair: tuple[HFBackend, NNsightBackend]) -> None:
    hf, ns = pair
    ids, mask, pos = left_pad()
    for stop in sites_of(hf):
        seen: dict[Site, torch.Tensor] = {}
        later = [s for s in sites_of(hf) if s.order > stop.order]
        edits = {s: [recorder(seen, s)] for s in [stop, *later]}
        with torch.inference_mode():
            assert ns.forward(ids, mask, pos, None, edits, stop_at=stop) is None
        assert set(seen) == {stop}, stop.name  # its edits ran, nothing after it did
    assert ns.count_hooks() == 0


def test_nothing_left_after_forward_or_a_failing_edit(
    pair: tuple[HFBackend, NNsightBackend],
) -> None:
    hf, ns = pair
    ids, mask, pos = left_pad()
    site = Site(1, "resid_post")
    run(ns, ids, mask, pos, edits={site: [shift(site, ns.d_model)]})
    assert ns.count_hooks() == 0
    assert count_hooks(ns.wrapped_hf) == 0

    def boom(h: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("edit failed")

    with pytest.raises(RuntimeError, match="edit failed"):
        run(ns, ids, mask, pos, edits={site: [boom]})
    assert ns.count_hooks() == 0
    assert count_hooks(ns.wrapped_hf) == 0
    assert not ns.lm.interleaver.interleaving
    # the model runs unsteered again afterwards
    torch.testing.assert_close(run(ns, ids, mask, pos), run(hf, ids, mask, pos), atol=ATOL, rtol=0)


def test_check_site_errors_name_site_and_model(pair: tuple[HFBackend, NNsightBackend]) -> None:
    hf, ns = pair
    with pytest.raises(SiteError, match=rf"blocks\.{ns.n_layers}\.hook_resid_post.*out of range"):
        ns.check_site(Site(ns.n_layers, "resid_post"))
    ids, mask, pos = left_pad()
    with pytest.raises(SiteError, match=ns.label):
        ns.forward(ids, mask, pos, edits={Site(ns.n_layers + 2, "resid_pre"): []})
    if hf.parallel:
        with pytest.raises(SiteError, match=rf"resid_mid.*{ns.label}"):
            ns.check_site(Site(0, "resid_mid"))


# ----------------------------------------------------------------------------- wrapping


def test_from_hf_shares_the_weights() -> None:
    hf, tok = build_tiny_model("tiny-llama")
    ns = NNsightBackend.from_hf(hf, tok, "tiny-llama")
    assert ns.wrapped_hf is hf
    assert ns.wrapped._module is hf
    assert ns.layers[0] is hf.model.layers[0]
    assert (ns.n_layers, ns.d_model, ns.dtype) == (4, 64, torch.float32)


def test_from_language_model_wraps_a_user_model() -> None:
    import nnsight

    hf_a, _ = build_tiny_model("tiny-gpt2")
    hf_b, tok = build_tiny_model("tiny-gpt2")
    lm = nnsight.TransformersModel(hf_b, tokenizer=tok, task="text-generation")
    ns = NNsightBackend.from_language_model(lm, label="mine")
    assert ns.wrapped is lm and ns.label == "mine"
    ids, mask, pos = left_pad()
    torch.testing.assert_close(
        run(ns, ids, mask, pos), run(HFBackend(hf_a, "a"), ids, mask, pos), atol=ATOL, rtol=0
    )
    with pytest.raises(SteerlabError, match="TransformersModel"):
        NNsightBackend.from_language_model(hf_b)


def test_remote_dry_run_serializes_the_interventions() -> None:
    """nnsight's ``remote="local"`` ships the trace through its remote serializer (user modules
    hidden, as on a server) and runs it here: the steering block must survive that."""
    hf_a, _ = build_tiny_model("tiny-llama")
    hf_b, tok = build_tiny_model("tiny-llama")
    ns = NNsightBackend.from_hf(hf_b, tok, "tiny-llama", remote="local")
    edits: Edits = {s: [shift(s, 64)] for s in (Site(0, "resid_pre"), Site(2, "resid_mid"))}
    ids, mask, pos = left_pad()
    torch.testing.assert_close(
        run(ns, ids, mask, pos, edits=edits),
        run(HFBackend(hf_a, "a"), ids, mask, pos, edits=edits),
        atol=ATOL,
        rtol=0,
    )
    with pytest.raises(SteerlabError, match="cache"):
        run(ns, ids, mask, pos, ns.new_cache())


# ----------------------------------------------------------------------------- generation


def _interventions(model: Model, make_vector: Callable) -> tuple[Intervention, ...]:
    point = "mlp_out" if _parallel(model) else "resid_mid"
    v = make_vector(model, seed=3, hook_point=point, norm=6.0)
    w = make_vector(model, seed=4, hook_point="resid_pre")
    return (
        Intervention(v, layer=1, alpha=2.0, positions="generated"),
        Intervention(w, layer=0, kind="ablate", alpha=1.0, positions="prompt"),
    )


def _parallel(model: Model) -> bool:
    try:
        model.backend.check_site(Site(0, "resid_mid"))
    except SiteError:
        return True
    return False


def test_steerlab_generate_matches_hf_backend(
    models: tuple[Model, Model], make_vector: Callable
) -> None:
    m_hf, m_ns = models
    ivs = _interventions(m_hf, make_vector)
    rows = [
        Row("Hello there", ivs),
        Row("The cat sat on a mat"),
        Row("Hi", ivs[:1]),
    ]
    cfg = GenerationConfig(max_new_tokens=8)
    a = generate(m_hf, rows, cfg, progress=False)
    b = generate(m_ns, rows, cfg, progress=False)
    for x, y in zip(a, b, strict=True):
        assert y.token_ids == x.token_ids
        assert y.logprobs == pytest.approx(x.logprobs, abs=1e-4)
    assert m_ns.backend.count_hooks() == 0
    (plain,) = generate(m_ns, [Row("Hello there")], cfg, progress=False)
    assert plain.logprobs != pytest.approx(b[0].logprobs, abs=1e-3)  # the steering did act


def test_steering_context_steers_the_users_generate(
    models: tuple[Model, Model], make_vector: Callable
) -> None:
    m_hf, m_ns = models
    ivs = _interventions(m_hf, make_vector)
    ids = torch.tensor([[0, 0, 1, 40, 41, 42], [1, 50, 51, 52, 53, 54]])  # left-padded
    mask = (ids != 0).long()
    lm = m_ns.backend.wrapped
    kw = {"input_ids": ids, "attention_mask": mask, "max_new_tokens": 6, "do_sample": False}
    with torch.inference_mode():
        with steering(m_hf, ivs):
            want = m_hf.hf.generate(**kw)
        with steering(m_ns, ivs):
            got = lm.generate(**kw)
            # a call on the bare Hugging Face module would run unsteered: refused
            with pytest.raises(SteerlabError, match="nnsight model"):
                m_ns.hf(input_ids=ids, attention_mask=mask)
        plain = lm.generate(**kw)
    assert torch.equal(got, want)
    assert m_ns.backend.count_hooks() == 0
    assert count_hooks(m_ns.hf) == 0
    assert not lm._edits
    with torch.inference_mode():
        assert torch.equal(plain, m_hf.hf.generate(**kw))


def test_steering_context_steers_a_users_trace(
    models: tuple[Model, Model], make_vector: Callable
) -> None:
    m_hf, m_ns = models
    ivs = (Intervention(make_vector(m_hf, seed=5), layer=1, alpha=4.0),)
    ids, mask, pos = left_pad()
    lm = m_ns.backend.wrapped
    with torch.inference_mode():
        with steering(m_hf, ivs):
            want = m_hf.hf(input_ids=ids, attention_mask=mask, position_ids=pos).logits
        with steering(m_ns, ivs):  # noqa: SIM117 - nnsight runs the trace block's body itself
            with lm.trace(input_ids=ids, attention_mask=mask, position_ids=pos):
                got = lm.output.logits.save()
        plain = m_hf.hf(input_ids=ids, attention_mask=mask, position_ids=pos).logits
    torch.testing.assert_close(got, want, atol=1e-4, rtol=0)
    assert not torch.allclose(got, plain, atol=1e-3)  # the steering did act
    assert m_ns.backend.count_hooks() == 0
