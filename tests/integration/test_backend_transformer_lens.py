"""The TransformerLens backend against the Hugging Face backend, on tiny random models.

- ``TransformerBridge`` (``from_hf``), every tiny architecture: logits on a left-padded batch, the
  activation every site's edit sees and the effect of a write at every site all equal the Hugging
  Face backend's; KV-cached decoding == uncached; dropping cache rows == decoding without them;
  no hook is left after a call, an exception inside an edit, or ``stop_at``.
- ``HookedTransformer`` (``from_tl``): random configs (LayerNorm + GELU, learned and rotary
  positions) for the same invariants, plus HookedTransformers built from the tiny GPT-2 and LLaMA
  weights (TransformerLens's own converters, no folding), which must match the Hugging Face
  backend on the same model.
- end to end: ``steerlab.generate`` with interventions gives the Hugging Face model's greedy
  tokens, and ``steerlab.steering`` steers the user's own TransformerLens calls.

The Hugging Face reference and the TransformerLens model are two instances with the same seeded
weights, so each backend runs on a model no other test touches.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import pytest
import torch

pytest.importorskip("transformer_lens")

from transformer_lens import HookedTransformer, HookedTransformerConfig

from steerlab.backends.base import Backend, Edits, SiteFn
from steerlab.backends.transformer_lens import (
    TransformerLensBackend,
    tokenizer_for_tl,
)
from steerlab.engine.generate import GenerationConfig, Row, generate
from steerlab.engine.handle import steering
from steerlab.interventions import Intervention
from steerlab.models import TINY_MODELS, Model, load_model, wrap
from steerlab.models.tiny import VOCAB_SIZE, build_tiny_tokenizer
from steerlab.sites import POINTS, Site, SiteError

ARCHS = TINY_MODELS
PARALLEL = ("tiny-neox", "tiny-phi")
TEXTS = ("Hi", "Hello there", "The cat sat on a mat")
LOGITS_TOL = {"atol": 1e-5, "rtol": 1e-5}
# The bridge recomputes attention eagerly; Hugging Face uses sdpa: ~1e-6 relative apart.
ACT_TOL = {"atol": 5e-5, "rtol": 1e-5}


# ----------------------------------------------------------------------------- models


@functools.cache
def models(kind: str) -> tuple[Model, Model]:
    """(Hugging Face-backed, bridge-backed) steerlab models with the same weights."""
    return load_model(kind, device="cpu"), load_model(
        kind, device="cpu", backend="transformer_lens"
    )


def random_hooked(positional: str, parallel: bool = False) -> HookedTransformer:
    cfg = HookedTransformerConfig(
        d_model=64,
        n_layers=2,
        n_heads=4,
        d_head=16,
        d_mlp=128,
        d_vocab=VOCAB_SIZE,
        n_ctx=128,
        act_fn="gelu",
        normalization_type="LN",
        positional_embedding_type=positional,
        rotary_dim=16 if positional == "rotary" else None,
        parallel_attn_mlp=parallel,
        seed=0,
        device="cpu",
    )
    with warnings.catch_warnings():  # HookedTransformer is deprecated in TransformerLens 3.9
        warnings.simplefilter("ignore", DeprecationWarning)
        ht = HookedTransformer(cfg, tokenizer=tokenizer_for_tl(build_tiny_tokenizer()))
    return ht.eval()


@functools.cache
def hooked_from_hf(kind: str) -> tuple[Model, Model]:
    """(Hugging Face-backed model, HookedTransformer-backed model) with the same weights,
    converted by TransformerLens's own weight converters (no folding or centering)."""
    from transformer_lens.pretrained.weight_conversions.gpt2 import convert_gpt2_weights
    from transformer_lens.pretrained.weight_conversions.llama import convert_llama_weights

    ref = load_model(kind, device="cpu")
    hf = ref.hf
    c = hf.config
    if kind == "tiny-gpt2":
        cfg = HookedTransformerConfig(
            d_model=c.n_embd,
            n_layers=c.n_layer,
            n_heads=c.n_head,
            d_head=c.n_embd // c.n_head,
            d_mlp=4 * c.n_embd,
            d_vocab=c.vocab_size,
            n_ctx=c.n_positions,
            act_fn="gelu_new",
            normalization_type="LN",
            eps=c.layer_norm_epsilon,
            original_architecture="GPT2LMHeadModel",
            device="cpu",
        )
        state = convert_gpt2_weights(hf, cfg)
    else:
        assert kind == "tiny-llama"
        cfg = HookedTransformerConfig(
            d_model=c.hidden_size,
            n_layers=c.num_hidden_layers,
            n_heads=c.num_attention_heads,
            n_key_value_heads=c.num_key_value_heads,
            d_head=c.hidden_size // c.num_attention_heads,
            d_mlp=c.intermediate_size,
            d_vocab=c.vocab_size,
            n_ctx=c.max_position_embeddings,
            act_fn="silu",
            normalization_type="RMS",
            eps=c.rms_norm_eps,
            positional_embedding_type="rotary",
            rotary_dim=c.hidden_size // c.num_attention_heads,
            rotary_base=int(c.rope_parameters["rope_theta"]),
            gated_mlp=True,
            final_rms=True,
            original_architecture="LlamaForCausalLM",
            device="cpu",
        )
        state = convert_llama_weights(hf, cfg)
    with warnings.catch_warnings():  # HookedTransformer is deprecated in TransformerLens 3.9
        warnings.simplefilter("ignore", DeprecationWarning)
        ht = HookedTransformer(cfg, tokenizer=tokenizer_for_tl(ref.tokenizer))
    ht.load_state_dict(state, strict=False)  # rotary tables and unembed bias keep their init
    return ref, wrap(ht.eval(), name=kind)


def tl_backend(model: Model) -> TransformerLensBackend:
    assert isinstance(model.backend, TransformerLensBackend)
    return model.backend


# ----------------------------------------------------------------------------- helpers


def batch(model: Model, texts: Sequence[str] = TEXTS) -> tuple[torch.Tensor, ...]:
    """``(ids, mask, positions)`` (B, W), left-padded; positions from the mask."""
    seqs = [model.encode(t) for t in texts]
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), model.pad_token_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for r, s in enumerate(seqs):
        ids[r, width - len(s) :] = torch.tensor(s)
        mask[r, width - len(s) :] = 1
    return ids, mask, (mask.cumsum(-1) - 1).clamp(min=0)


def run(
    be: Backend,
    ids: torch.Tensor,
    mask: torch.Tensor,
    pos: torch.Tensor,
    edits: Edits | None = None,
    **kw: Any,
) -> torch.Tensor | None:
    with torch.inference_mode():
        return be.forward(ids, mask, pos, edits=edits, **kw)


def recorder(sink: list[torch.Tensor]) -> SiteFn:
    def fn(h: torch.Tensor) -> torch.Tensor:
        sink.append(h.clone())
        return h

    return fn


def adder(delta: torch.Tensor) -> SiteFn:
    return lambda h: h + delta


def all_sites(be: Backend) -> list[Site]:
    out = []
    for layer in range(be.n_layers):
        for point in POINTS:
            site = Site(layer, point)
            try:
                be.check_site(site)
            except SiteError:
                continue
            out.append(site)
    return out


def decode_cached(
    be: Backend,
    ids: torch.Tensor,
    mask: torch.Tensor,
    pos: torch.Tensor,
    prefill: int,
    edits: Edits | None = None,
) -> tuple[torch.Tensor, Any]:
    """Prefill ``prefill`` columns, then feed one column at a time with the growing mask."""
    cache = be.new_cache()
    out = run(be, ids[:, :prefill], mask[:, :prefill], pos[:, :prefill], edits, cache=cache)
    for k in range(prefill, ids.shape[1]):
        out = run(be, ids[:, k : k + 1], mask[:, : k + 1], pos[:, k : k + 1], edits, cache=cache)
    assert out is not None
    return out, cache


# ----------------------------------------------------------------------------- bridge == HF


@pytest.mark.parametrize("kind", ARCHS)
def test_bridge_logits_match_hf(kind: str) -> None:
    ref, tl = models(kind)
    ids, mask, pos = batch(ref)
    assert tl_backend(tl).is_bridge
    torch.testing.assert_close(
        run(tl.backend, ids, mask, pos), run(ref.backend, ids, mask, pos), **LOGITS_TOL
    )


@pytest.mark.parametrize("kind", ARCHS)
def test_bridge_sites_match_hf(kind: str) -> None:
    """Every site exists on both or neither; its edit sees the same activation (real tokens;
    a pad query attends to nothing, where eager and sdpa attention give different junk), and a
    write there changes the logits the same way."""
    ref, tl = models(kind)
    ids, mask, pos = batch(ref)
    sites = all_sites(ref.backend)
    assert sites == all_sites(tl.backend)
    assert any(s.point == "resid_mid" for s in sites) == (kind not in PARALLEL)
    base = run(ref.backend, ids, mask, pos)
    real = mask.bool()
    gen = torch.Generator().manual_seed(0)
    for site in sites:
        seen: dict[str, list[torch.Tensor]] = {"hf": [], "tl": []}
        run(ref.backend, ids, mask, pos, {site: [recorder(seen["hf"])]})
        run(tl.backend, ids, mask, pos, {site: [recorder(seen["tl"])]})
        torch.testing.assert_close(
            seen["tl"][0][real], seen["hf"][0][real], **ACT_TOL, msg=site.name
        )
        delta = torch.randn(ref.d_model, generator=gen) * 3
        want = run(ref.backend, ids, mask, pos, {site: [adder(delta)]})
        got = run(tl.backend, ids, mask, pos, {site: [adder(delta)]})
        assert want is not None and base is not None
        assert (want - base).abs().max() > 0.1, f"{site.name}: the write did nothing"
        torch.testing.assert_close(got, want, **LOGITS_TOL, msg=site.name)


@pytest.mark.parametrize("kind", ARCHS)
def test_bridge_edits_at_one_site_run_in_order(kind: str) -> None:
    ref, tl = models(kind)
    ids, mask, pos = batch(ref)
    site = Site(0, "attn_out")
    fns: list[SiteFn] = [lambda h: h * 2, lambda h: h + 1]
    torch.testing.assert_close(
        run(tl.backend, ids, mask, pos, {site: fns}),
        run(ref.backend, ids, mask, pos, {site: fns}),
        **LOGITS_TOL,
    )


# ----------------------------------------------------------------------------- cache


@pytest.mark.parametrize("kind", ARCHS)
def test_bridge_cached_equals_uncached(kind: str) -> None:
    ref, tl = models(kind)
    ids, mask, pos = batch(ref)
    site = Site(tl.n_layers - 1, "resid_pre")
    edits = {site: [adder(torch.full((tl.d_model,), 0.5))]}
    for e in (None, edits):
        want = run(tl.backend, ids, mask, pos, e)
        got, _ = decode_cached(tl.backend, ids, mask, pos, prefill=ids.shape[1] - 3, edits=e)
        torch.testing.assert_close(got, want, **LOGITS_TOL)


@pytest.mark.parametrize("kind", ARCHS)
def test_bridge_select_cache_keeps_rows(kind: str) -> None:
    ref, tl = models(kind)
    ids, mask, pos = batch(ref)
    be = tl.backend
    cache = be.new_cache()
    cut = ids.shape[1] - 2
    run(be, ids[:, :cut], mask[:, :cut], pos[:, :cut], cache=cache)
    keep = torch.tensor([0, 2])
    cache = be.select_cache(cache, keep)
    out = None
    for k in range(cut, ids.shape[1]):
        sl = slice(k, k + 1)
        out = run(be, ids[keep, sl], mask[keep, : k + 1], pos[keep, sl], cache=cache)
    torch.testing.assert_close(out, run(be, ids[keep], mask[keep], pos[keep]), **LOGITS_TOL)


# ----------------------------------------------------------------------------- hooks, stop_at


class Boom(RuntimeError):
    pass


def boom(h: torch.Tensor) -> torch.Tensor:
    raise Boom


def assert_hooks_cleaned(model: Model) -> None:
    be = model.backend
    ids, mask, pos = batch(model)
    run(be, ids, mask, pos)  # the bridge wires its own internal hooks on the first call
    before_all = sum(
        len(m._forward_hooks) + len(m._forward_pre_hooks) for m in be.wrapped.modules()
    )
    assert be.count_hooks() == 0
    sites = all_sites(be)
    run(be, ids, mask, pos, {s: [recorder([])] for s in sites})
    assert be.count_hooks() == 0
    with pytest.raises(Boom):
        run(be, ids, mask, pos, {sites[-1]: [boom]})
    assert be.count_hooks() == 0
    with pytest.raises(Boom):
        decode_cached(be, ids, mask, pos, prefill=2, edits={sites[0]: [boom]})
    assert be.count_hooks() == 0
    assert run(be, ids, mask, pos, {s: [recorder([])] for s in sites}, stop_at=sites[1]) is None
    assert be.count_hooks() == 0
    after_all = sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in be.wrapped.modules())
    assert after_all == before_all
    for name, point in be.wrapped.hook_dict.items():
        assert not point.fwd_hooks, name


@pytest.mark.parametrize("kind", ARCHS)
def test_bridge_leaves_no_hooks(kind: str) -> None:
    assert_hooks_cleaned(models(kind)[1])


@pytest.mark.parametrize("kind", ("tiny-llama", "tiny-neox"))
def test_stop_at_returns_none_after_its_edits(kind: str) -> None:
    ref, tl = models(kind)
    ids, mask, pos = batch(ref)
    stop = Site(0, "attn_out")
    seen: dict[str, list[torch.Tensor]] = {"at": [], "after": []}
    edits = {stop: [recorder(seen["at"])], Site(0, "resid_post"): [recorder(seen["after"])]}
    assert run(tl.backend, ids, mask, pos, edits, stop_at=stop) is None
    assert len(seen["at"]) == 1 and not seen["after"]


@pytest.mark.parametrize("kind", ARCHS)
def test_check_site_names_site_and_model(kind: str) -> None:
    _, tl = models(kind)
    with pytest.raises(SiteError, match=rf"blocks\.{tl.n_layers}\.hook_resid_post.*{kind}"):
        tl.backend.check_site(Site(tl.n_layers, "resid_post"))
    if kind in PARALLEL:
        with pytest.raises(SiteError, match=rf"resid_mid.*{kind}"):
            tl.backend.check_site(Site(0, "resid_mid"))
        ids, mask, pos = batch(tl)
        with pytest.raises(SiteError):
            run(tl.backend, ids, mask, pos, {Site(0, "resid_mid"): [recorder([])]})
        assert tl.backend.count_hooks() == 0


def test_bridge_facts() -> None:
    ref, tl = models("tiny-llama")
    be = tl_backend(tl)
    assert be.name == "transformer_lens"
    assert (be.n_layers, be.d_model) == (ref.n_layers, ref.d_model)
    assert be.device == torch.device("cpu") and be.dtype == torch.float32
    assert be.wrapped.original_model is be.wrapped_hf
    assert be.wrapped.hook_dict["blocks.0.hook_resid_pre"] is not None


@pytest.mark.parametrize("kind", ("tiny-llama", "tiny-gpt2"))
def test_from_hf_shares_weights_and_leaves_hf_model_alone(kind: str) -> None:
    """The bridge rebuilds the module tree it wraps; the caller's model keeps its own modules,
    every one of its weights is used by the bridge as is, and its cached ``generate`` still
    works."""
    model = load_model(kind, device="cpu")
    hf = model.hf
    before = [(name, type(m)) for name, m in hf.named_modules()]
    ids = torch.tensor([model.encode("Hello there")])
    with torch.inference_mode():
        want = hf.generate(ids, max_new_tokens=6, do_sample=False)
    be = TransformerLensBackend.from_hf(hf, model.tokenizer, kind)
    assert [(name, type(m)) for name, m in hf.named_modules()] == before
    assert be.wrapped_hf is not hf
    assert {p.data_ptr() for p in hf.parameters()} <= {
        p.data_ptr() for p in be.wrapped_hf.parameters()
    }
    # No weight memory is copied: the only new storage is the bridge's zero unembedding bias
    # (GPT-2's split q/k/v are views of c_attn).
    storages = {p.untyped_storage().data_ptr() for p in hf.parameters()}
    new = [p for p in be.wrapped_hf.parameters() if p.untyped_storage().data_ptr() not in storages]
    assert sum(p.numel() for p in new) <= hf.config.vocab_size
    with torch.inference_mode():
        torch.testing.assert_close(hf.generate(ids, max_new_tokens=6, do_sample=False), want)


# ----------------------------------------------------------------------------- HookedTransformer


@pytest.fixture(scope="module", params=["standard", "rotary"])
def hooked(request: pytest.FixtureRequest) -> Model:
    return wrap(random_hooked(request.param), name=f"hooked-{request.param}")


def test_hooked_batched_equals_alone(hooked: Model) -> None:
    be = hooked.backend
    assert tl_backend(hooked).wrapped_hf is None
    ids, mask, pos = batch(hooked)
    edits = {Site(1, "resid_mid"): [adder(torch.full((be.d_model,), 0.5))]}
    for e in (None, edits):
        full = run(be, ids, mask, pos, e)
        assert full is not None
        for r in range(ids.shape[0]):
            real = mask[r].bool()
            alone = run(be, ids[r : r + 1, real], mask[r : r + 1, real], pos[r : r + 1, real], e)
            torch.testing.assert_close(full[r : r + 1], alone, **LOGITS_TOL)


def test_hooked_cached_equals_uncached(hooked: Model) -> None:
    be = hooked.backend
    ids, mask, pos = batch(hooked)
    edits = {Site(0, "mlp_out"): [adder(torch.full((be.d_model,), 0.5))]}
    for e in (None, edits):
        got, cache = decode_cached(be, ids, mask, pos, prefill=ids.shape[1] - 3, edits=e)
        torch.testing.assert_close(got, run(be, ids, mask, pos, e), **LOGITS_TOL)
        assert cache.kv.previous_attention_mask.shape == mask.shape


def test_hooked_select_cache_keeps_rows(hooked: Model) -> None:
    be = hooked.backend
    ids, mask, pos = batch(hooked)
    cache = be.new_cache()
    assert be.select_cache(cache, torch.tensor([0])) is cache  # nothing cached yet
    cut = ids.shape[1] - 2
    run(be, ids[:, :cut], mask[:, :cut], pos[:, :cut], cache=cache)
    keep = torch.tensor([1, 2])
    cache = be.select_cache(cache, keep)
    out = None
    for k in range(cut, ids.shape[1]):
        sl = slice(k, k + 1)
        out = run(be, ids[keep, sl], mask[keep, : k + 1], pos[keep, sl], cache=cache)
    torch.testing.assert_close(out, run(be, ids[keep], mask[keep], pos[keep]), **LOGITS_TOL)


def test_hooked_leaves_no_hooks(hooked: Model) -> None:
    assert_hooks_cleaned(hooked)


def test_hooked_sites_are_tl_hook_points(hooked: Model) -> None:
    """An edit at a site is TransformerLens's own hook on the point of that name."""
    ht = hooked.backend.wrapped
    ids, mask, pos = batch(hooked)
    for site in all_sites(hooked.backend):
        mine: list[torch.Tensor] = []
        theirs: list[torch.Tensor] = []
        theirs_fn = recorder(theirs)
        with ht.hooks(fwd_hooks=[(site.name, lambda h, hook, fn=theirs_fn: fn(h))]):
            run(hooked.backend, ids, mask, pos, {site: [recorder(mine)]})
        torch.testing.assert_close(mine[0], theirs[0], atol=0, rtol=0)


def test_hooked_parallel_has_no_resid_mid() -> None:
    model = wrap(random_hooked("rotary", parallel=True), name="hooked-parallel")
    with pytest.raises(SiteError, match=r"resid_mid.*hooked-parallel"):
        model.backend.check_site(Site(0, "resid_mid"))
    model.backend.check_site(Site(0, "mlp_out"))


@pytest.mark.parametrize("kind", ("tiny-gpt2", "tiny-llama"))
def test_hooked_from_hf_weights_matches_hf(kind: str) -> None:
    ref, ht = hooked_from_hf(kind)
    ids, mask, pos = batch(ref)
    torch.testing.assert_close(
        run(ht.backend, ids, mask, pos), run(ref.backend, ids, mask, pos), **LOGITS_TOL
    )
    real = mask.bool()
    gen = torch.Generator().manual_seed(1)
    for site in all_sites(ref.backend):
        seen: dict[str, list[torch.Tensor]] = {"hf": [], "tl": []}
        run(ref.backend, ids, mask, pos, {site: [recorder(seen["hf"])]})
        run(ht.backend, ids, mask, pos, {site: [recorder(seen["tl"])]})
        torch.testing.assert_close(
            seen["tl"][0][real], seen["hf"][0][real], **ACT_TOL, msg=site.name
        )
        delta = torch.randn(ref.d_model, generator=gen) * 3
        want = run(ref.backend, ids, mask, pos, {site: [adder(delta)]})
        got = run(ht.backend, ids, mask, pos, {site: [adder(delta)]})
        torch.testing.assert_close(got, want, **LOGITS_TOL, msg=site.name)


# ----------------------------------------------------------------------------- end to end


def interventions(model: Model, make_vector: Callable[..., Any]) -> list[tuple[Intervention, ...]]:
    """Per-row settings: unsteered, three sites, a resid_mid one where the model has it."""
    v = make_vector(model, seed=3)
    rows: list[tuple[Intervention, ...]] = [
        (),
        (Intervention(v, 1, "add", 0.8, positions="all", scale="resid"),),
        (Intervention(v, 0, "add", 2.0, hook_point="attn_out", positions="prompt"),),
        (
            Intervention(v, 0, "ablate", 1.0, hook_point="resid_pre", positions="all"),
            Intervention(
                v, 1, "add", -0.8, hook_point="mlp_out", positions="generated", scale="resid"
            ),
        ),
    ]
    if any(s.point == "resid_mid" for s in all_sites(model.backend)):
        rows.append((Intervention(v, 1, "add", 0.8, hook_point="resid_mid", scale="resid"),))
    return rows


def prompts(n: int) -> list[str]:
    return [TEXTS[i % len(TEXTS)] + "!" * (i // len(TEXTS)) for i in range(n)]


@pytest.mark.parametrize("kind", ARCHS)
@pytest.mark.parametrize("use_cache", [True, False])
def test_generate_matches_hf(kind: str, use_cache: bool, make_vector: Callable[..., Any]) -> None:
    ref, tl = models(kind)
    settings = interventions(ref, make_vector)
    rows = [Row(p, ivs) for p, ivs in zip(prompts(len(settings)), settings, strict=True)]
    cfg = GenerationConfig(max_new_tokens=8, use_cache=use_cache)
    want = generate(ref, rows, cfg, progress=False)
    got = generate(tl, rows, cfg, progress=False)
    for a, b in zip(want, got, strict=True):
        assert b.token_ids == a.token_ids
        assert b.logprobs == pytest.approx(a.logprobs, abs=1e-4)
    plain = generate(ref, [Row(r.prompt) for r in rows], cfg, progress=False)
    assert any(p.token_ids != w.token_ids for p, w in zip(plain, want, strict=True))
    assert tl.backend.count_hooks() == 0


@pytest.mark.parametrize("kind", ("tiny-gpt2", "tiny-llama"))
def test_generate_hooked_matches_hf(kind: str, make_vector: Callable[..., Any]) -> None:
    ref, ht = hooked_from_hf(kind)
    settings = interventions(ref, make_vector)
    rows = [Row(p, ivs) for p, ivs in zip(prompts(len(settings)), settings, strict=True)]
    cfg = GenerationConfig(max_new_tokens=8)
    want = generate(ref, rows, cfg, progress=False)
    got = generate(ht, rows, cfg, progress=False)
    assert [r.token_ids for r in got] == [r.token_ids for r in want]


def user_call(
    model: Model, ids: torch.Tensor, mask: torch.Tensor, pos: torch.Tensor
) -> torch.Tensor:
    """The user's own forward call on the wrapped object (last-position logits)."""
    obj = model.backend.wrapped if model.backend.name == "transformer_lens" else model.hf
    with torch.inference_mode():
        if model.backend.name != "transformer_lens":
            out = obj(input_ids=ids, attention_mask=mask, position_ids=pos).logits
        elif tl_backend(model).is_bridge:
            out = obj(ids, attention_mask=mask, position_ids=pos)
        else:
            out = obj(ids, attention_mask=mask)
    return out[:, -1].float()  # type: ignore[no-any-return]


@pytest.mark.parametrize("which", ["tiny-llama", "tiny-gpt2", "hooked:tiny-llama"])
def test_steering_context_steers_user_calls(which: str, make_vector: Callable[..., Any]) -> None:
    """``steerlab.steering`` on the user's own TransformerLens call == on the HF model's call;
    positions come from the call's mask (last-prompt: one position per row, pads excluded)."""
    kind = which.split(":")[-1]
    ref, tl = hooked_from_hf(kind) if which.startswith("hooked") else models(kind)
    ids, mask, pos = batch(ref)
    v = make_vector(ref, seed=5)
    ivs = [
        Intervention(v, 1, "add", 1.5, positions="last-prompt", scale="resid"),
        Intervention(v, 0, "add", 2.0, hook_point="attn_out", positions="all"),
    ]
    base = user_call(tl, ids, mask, pos)
    with steering(ref, ivs):
        want = user_call(ref, ids, mask, pos)
    with steering(tl, ivs):
        got = user_call(tl, ids, mask, pos)
    assert (want - base).abs().max() > 0.1
    torch.testing.assert_close(got, want, **LOGITS_TOL)
    assert tl.backend.count_hooks() == 0
    torch.testing.assert_close(user_call(tl, ids, mask, pos), base, atol=0, rtol=0)


# TransformerLens's own generate still passes ``past_key_values`` to the Hugging Face model.
@pytest.mark.filterwarnings("ignore:`past_key_values` is deprecated:FutureWarning")
@pytest.mark.parametrize("which", ["tiny-llama", "tiny-gpt2", "hooked:tiny-llama"])
def test_steering_context_steers_user_generate(which: str, make_vector: Callable[..., Any]) -> None:
    """The user's own TransformerLens ``generate`` (KV-cached, one token per call) under
    ``steerlab.steering`` == Hugging Face ``generate`` under it, with positions that depend on
    the prompt length (last-prompt)."""
    kind = which.split(":")[-1]
    ref, tl = hooked_from_hf(kind) if which.startswith("hooked") else models(kind)
    ids = torch.tensor([ref.encode("Hello there")])  # (1, T)
    v = make_vector(ref, seed=7)
    ivs = [Intervention(v, 1, "add", 1.5, positions="last-prompt", scale="resid")]
    n = 6
    with torch.inference_mode():
        base = ref.hf.generate(ids, max_new_tokens=n, do_sample=False)[0, ids.shape[1] :]
        with steering(ref, ivs):
            want = ref.hf.generate(ids, max_new_tokens=n, do_sample=False)[0, ids.shape[1] :]
        with steering(tl, ivs):
            got = tl.backend.wrapped.generate(
                ids,
                max_new_tokens=n,
                do_sample=False,
                use_past_kv_cache=True,
                stop_at_eos=False,
                verbose=False,
            )[0, ids.shape[1] :]
    assert want.tolist() != base.tolist()
    assert got[: len(want)].tolist() == want.tolist()
    assert tl.backend.count_hooks() == 0
