"""SAE interventions on tiny random models: the ``sae_clamp`` algebra and the steering invariants.

With ``a`` the feature's activation (the SAE's own encoder), ``t`` the target and ``d`` the
feature's decoder row, ``sae_clamp`` at the selected positions must give exactly

- ``h' - h == (t - a)·d`` at the selected positions, and ``h' == h`` bit for bit elsewhere;
- ``h' == decode(f with f_i := t) + (h - decode(f))`` computed by sae-lens itself: the edited
  reconstruction plus the SAE's untouched reconstruction error;
- the feature's re-encoded pre-activation moves by exactly ``(t - a)·(d·w_enc_i)``, so with a
  tied unit-norm feature (``d·w = 1``) that stays active the re-encoded activation is ``t``.

And, as every intervention: mixed per-row settings == each row alone, padded == flat token
layout, cached == uncached, α-equivalent forms agree, no hooks are left.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
from tests.conftest import resid_norms
from tests.integration.test_steering_invariants import (
    GREEDY,
    MODES,
    N_NEW,
    PROMPTS,
    assert_same_result,
    capture,
    differs,
    expected_selection,
    forward_logits,
    gen,
    left_pad,
)

from steerlab import directions
from steerlab.engine.generate import GenerationConfig, Row
from steerlab.engine.handle import count_hooks, steering
from steerlab.engine.plan import compile_plan
from steerlab.interventions import Intervention
from steerlab.models import Model
from steerlab.sae import SparseAutoencoder
from steerlab.sites import Site

ARCHS = ("standard", "jumprelu", "topk")
D_SAE = 48


def make_sae(
    model: Model,
    site: Site,
    arch: str,
    seed: int = 0,
    ref: torch.Tensor | None = None,
    d_sae: int = D_SAE,
) -> SparseAutoencoder:
    """A random SAE for ``model`` at ``site``: unit decoder rows, an encoder near their transpose.

    With reference activations ``ref`` (N, d) the encoder bias is minus each feature's median
    pre-activation there, so every feature is active on about half of those tokens (JumpReLU:
    the threshold then switches off the weakest quarter; TopK: k = d_sae / 4).
    """
    d = model.d_model
    gen_ = torch.Generator().manual_seed(seed)
    w_dec = torch.randn(d_sae, d, generator=gen_)
    w_dec = w_dec / w_dec.norm(dim=-1, keepdim=True)  # (d_sae, d)
    w_enc = w_dec.T + 0.3 * torch.randn(d, d_sae, generator=gen_) / d**0.5  # (d, d_sae)
    b_dec = 0.1 * torch.randn(d, generator=gen_)
    b_enc = torch.zeros(d_sae)
    threshold = None
    if ref is not None:
        b_enc = -((ref - b_dec) @ w_enc).median(0).values
    if arch == "jumprelu":
        pre = (ref - b_dec) @ w_enc + b_enc if ref is not None else torch.ones(1, d_sae)
        threshold = 0.25 * pre.clamp(min=0).max(0).values
    return SparseAutoencoder(
        W_enc=w_enc,
        b_enc=b_enc,
        W_dec=w_dec,
        b_dec=b_dec,
        site=site,
        architecture=arch,
        threshold=threshold,
        k=d_sae // 4 if arch == "topk" else None,
        source=f"test-{arch}-{seed}",
        model_name=model.name,
    )


def as_sae_lens(sae: SparseAutoencoder) -> Any:
    """The same SAE as a sae-lens object (the outside implementation)."""
    sl = pytest.importorskip("sae_lens")
    from sae_lens.saes.sae import SAEMetadata

    classes = {
        "standard": (sl.StandardSAE, sl.StandardSAEConfig, {}),
        "jumprelu": (sl.JumpReLUSAE, sl.JumpReLUSAEConfig, {}),
        "topk": (sl.TopKSAE, sl.TopKSAEConfig, {"k": sae.k}),
    }
    cls, cfg_cls, extra = classes[sae.architecture]
    cfg = cfg_cls(
        d_in=sae.d_in,
        d_sae=sae.d_sae,
        apply_b_dec_to_input=sae.apply_b_dec_to_input,
        metadata=SAEMetadata(hook_name=sae.hook_name),
        **extra,
    )
    out = cls(cfg)
    state = {"W_enc": sae.W_enc, "b_enc": sae.b_enc, "W_dec": sae.W_dec, "b_dec": sae.b_dec}
    if sae.threshold is not None:
        state["threshold"] = sae.threshold
    out.load_state_dict(state)
    return out


def base_resid(model: Model, layer: int, point: str) -> tuple[torch.Tensor, ...]:
    """``(ids, mask, h)``: the padded prompts and the unsteered activation (B, W, d) there."""
    ids, mask = left_pad(model, PROMPTS)
    sink: list[torch.Tensor] = []
    with capture(model, layer, point, sink):
        forward_logits(model, ids, mask)
    return ids, mask, sink[0]


def pick_feature(sae: SparseAutoencoder, x: torch.Tensor) -> int:
    """The feature closest to being on at half of the tokens ``x`` (N, d)."""
    on = (sae.encode(x) > 0).float().mean(0)  # (d_sae,)
    return int((on - 0.5).abs().argmin())


# ----------------------------------------------------------------------------- algebra


@pytest.mark.parametrize("point", ["resid_pre", "resid_post"])
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("arch", ARCHS)
def test_sae_clamp_algebra_at_selected_positions(
    tiny_llama: Model, arch: str, mode: str, point: str
) -> None:
    model, layer = tiny_llama, 2
    ids, mask, h0 = base_resid(model, layer, point)
    real = h0[mask.bool()]  # (N, d)
    sae = make_sae(model, Site(layer, point), arch, seed=1, ref=real)
    prompt_lens = mask.sum(-1) - 2  # the last 2 real tokens of each row count as generated
    sel = expected_selection(mask, prompt_lens, mode)
    i = pick_feature(sae, h0[sel])
    t = 2.0 * float(sae.encode(real)[:, i].max()) + 1.0  # differs from every activation
    iv = Intervention(directions.sae(sae, i), layer, "sae_clamp", alpha=t, positions=mode, sae=sae)
    after: list[torch.Tensor] = []
    with steering(model, [iv], prompt_lens=prompt_lens), capture(model, layer, point, after):
        forward_logits(model, ids, mask)
    h1 = after[0]

    assert torch.equal(h1[~sel], h0[~sel])  # pads and unselected tokens: bit for bit
    x0, x1 = h0[sel], h1[sel]  # (N, d)
    a = sae.encode(x0)[:, i]  # (N,)
    assert (a > 0).any() and (a == 0).any(), "the feature should be on at some tokens only"
    d_i = sae.W_dec[i]
    torch.testing.assert_close(x1 - x0, (t - a)[:, None] * d_i, atol=2e-5, rtol=1e-5)

    # the edited reconstruction plus the SAE's untouched error, computed by sae-lens
    theirs = as_sae_lens(sae)
    with torch.no_grad():
        f = theirs.encode(x0)
        edited = f.clone()
        edited[:, i] = t
        expected = theirs.decode(edited) + (x0 - theirs.decode(f))
    torch.testing.assert_close(x1, expected, atol=5e-5, rtol=1e-5)

    # the feature's pre-activation moves by exactly (t - a)·(d·w)
    w_i = sae.W_enc[:, i]
    moved = sae.pre_acts(x1)[:, i] - sae.pre_acts(x0)[:, i]
    torch.testing.assert_close(moved, (t - a) * float(d_i @ w_i), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("arch", ["standard", "jumprelu"])
def test_tied_active_feature_reencodes_to_the_target(tiny_llama: Model, arch: str) -> None:
    """Feature i = a unit vector u on both sides (d·w = 1) with a large bias, so it is on at
    every token: the steered residual re-encodes to exactly t, and ``sae_clamp`` to t equals
    the projection ``clamp`` on u to t - bias (α-equivalent forms)."""
    model, layer = tiny_llama, 1
    d = model.d_model
    ids, mask, h0 = base_resid(model, layer, "resid_post")
    bias = 4.0 * float(h0.norm(dim=-1).max())  # h·u + bias > 0 everywhere
    base = make_sae(model, Site(layer, "resid_post"), arch, seed=2)
    i = 7
    u = torch.randn(d, generator=torch.Generator().manual_seed(5))
    u = u / u.norm()
    w_dec, w_enc, b_enc = base.W_dec.clone(), base.W_enc.clone(), base.b_enc.clone()
    w_dec[i], w_enc[:, i], b_enc[i] = u, u, bias
    sae = SparseAutoencoder(
        W_enc=w_enc,
        b_enc=b_enc,
        W_dec=w_dec,
        b_dec=torch.zeros(d),
        site=base.site,
        architecture=arch,
        threshold=None if base.threshold is None else torch.zeros(base.d_sae),
        source="tied",
        model_name=model.name,
    )
    t = bias + 3.0
    v = directions.sae(sae, i)
    by_sae = Intervention(v, layer, "sae_clamp", alpha=t, positions="prompt", sae=sae)
    by_proj = Intervention(v, layer, "clamp", alpha=t - bias, positions="prompt")
    runs = []
    for iv in (by_sae, by_proj):
        sink: list[torch.Tensor] = []
        with steering(model, [iv]), capture(model, layer, "resid_post", sink):
            logits = forward_logits(model, ids, mask)
        runs.append((sink[0], logits))
    (h_sae, logits_sae), (h_proj, logits_proj) = runs
    real = mask.bool()
    torch.testing.assert_close(h_sae[real], h_proj[real], atol=1e-3, rtol=1e-5)
    torch.testing.assert_close(logits_sae, logits_proj, atol=1e-3, rtol=1e-4)
    assert not torch.allclose(h_sae[real], h0[real], atol=1e-2)
    reencoded = sae.encode(h_sae[real])[:, i]
    torch.testing.assert_close(reencoded, torch.full_like(reencoded, t), atol=1e-3, rtol=0)


@pytest.mark.parametrize("arch", ARCHS)
def test_dead_feature_clamp_is_add_of_the_decoder_row(tiny_llama: Model, arch: str) -> None:
    """A feature that never fires (a = 0): clamping it to t adds t·d (== ``add`` of the feature's
    vector with α = t at scale ``diff``); clamping it to 0 is the unsteered model bit for bit."""
    model, layer = tiny_llama, 2
    base = make_sae(model, Site(layer, "resid_post"), arch, seed=3)
    i = 11
    b_enc = base.b_enc.clone()
    b_enc[i] = -1e6
    sae = SparseAutoencoder(
        W_enc=base.W_enc,
        b_enc=b_enc,
        W_dec=base.W_dec,
        b_dec=base.b_dec,
        site=base.site,
        architecture=arch,
        threshold=base.threshold,
        k=base.k,
        source="dead",
        model_name=model.name,
    )
    v = directions.sae(sae, i)
    ids, mask = left_pad(model, PROMPTS)
    plain = forward_logits(model, ids, mask)
    with steering(model, [Intervention(v, layer, "sae_clamp", alpha=0.0, sae=sae)]):
        assert torch.equal(forward_logits(model, ids, mask), plain)
    t = 30.0
    with steering(model, [Intervention(v, layer, "sae_clamp", alpha=t, sae=sae)]):
        clamped = forward_logits(model, ids, mask)
    with steering(model, [Intervention(v, layer, "add", alpha=t, scale="diff")]):
        added = forward_logits(model, ids, mask)
    torch.testing.assert_close(clamped, added, atol=1e-4, rtol=1e-4)
    assert not torch.allclose(clamped, plain, atol=1e-2)


# ----------------------------------------------------------------------------- per-row plans


def _saes(model: Model) -> dict[str, SparseAutoencoder]:
    """Four SAEs at the middle layer's resid_post (two topk, to give one slot two gates)."""
    site = Site(model.n_layers // 2, "resid_post")
    return {
        "standard": make_sae(model, site, "standard", seed=10),
        "jumprelu": make_sae(model, site, "jumprelu", seed=11),
        "topk": make_sae(model, site, "topk", seed=12),
        "topk2": make_sae(model, site, "topk", seed=13),
    }


def _mixed_rows(model: Model, make_vector: Any) -> list[Row]:
    saes = _saes(model)
    layer = model.n_layers // 2
    big = 3.0 * resid_norms(model)[layer]

    def clamp(name: str, i: int, positions: str = "all", t: float = big) -> Intervention:
        sae = saes[name]
        v = directions.sae(sae, i)
        return Intervention(v, layer, "sae_clamp", alpha=t, positions=positions, sae=sae)

    v = make_vector(model, seed=6)
    return [
        Row("Hello there", (clamp("standard", 3),)),
        Row("Hi", (clamp("topk", 5, "prompt"),)),
        Row("The cat sat on a mat", ()),  # unsteered
        Row(  # plain add of a feature's direction
            "Why not?",
            (
                Intervention(
                    directions.sae(saes["jumprelu"], 7), layer, "add", big, positions="generated"
                ),
            ),
        ),
        Row(  # two sae_clamps at one site: two slots, slot 0 shares its gate list with row 1
            "Good morning",
            (clamp("topk2", 1, "last-prompt"), clamp("jumprelu", 7, "generated", -big)),
        ),
        Row(  # a projection clamp and an sae_clamp in one slot column
            "Once upon",
            (
                Intervention(v, layer, "clamp", 1.0, positions="generated", scale="resid"),
                clamp("standard", 9, "window:-2:1", 0.0),
            ),
        ),
    ]


def test_mixed_batch_rows_equal_alone(tiny_model: Model, make_vector: Any) -> None:
    model = tiny_model
    rows = _mixed_rows(model, make_vector)
    batched = gen(model, rows)
    for r, (row, res) in enumerate(zip(rows, batched, strict=True)):
        assert_same_result(res, gen(model, [row])[0], f"row {r}")
    plain = gen(model, [Row(r.prompt) for r in rows])
    assert_same_result(batched[2], plain[2])
    for r in (0, 1, 3, 4, 5):
        assert differs(batched[r], plain[r]), f"row {r} was not steered"


def test_flat_token_layout_equals_padded(tiny_llama: Model, make_vector: Any) -> None:
    """Padded (B, T, d) and flat (N, d) layouts give the same steered tokens, bit for bit, also
    with the tokens shuffled; and the sae_clamp rows follow the algebra."""
    model = tiny_llama
    saes = _saes(model)
    layer = model.n_layers // 2
    site = Site(layer, "resid_post")
    v = make_vector(model, layers=[layer])

    def clamp(name: str, i: int, t: float, positions: str = "all") -> Intervention:
        sae = saes[name]
        return Intervention(
            directions.sae(sae, i), layer, "sae_clamp", alpha=t, positions=positions, sae=sae
        )

    rows = [
        [clamp("standard", 3, 5.0)],
        [clamp("topk", 5, 4.0, "generated")],
        [Intervention(v, layer, kind="add", alpha=2.0)],
        [clamp("jumprelu", 7, -2.0), clamp("topk2", 1, 3.0)],
        [clamp("topk2", 2, 6.0, "window:-2:1"), Intervention(v, layer, "ablate", 1.0)],
        [],
    ]
    plan = compile_plan(model, rows)
    slot0 = plan.sites[site][0]
    assert slot0.sae is not None and len(slot0.sae.gates) == 2
    b, t_len, d = len(rows), 6, model.d_model
    h = torch.randn(b, t_len, d, generator=torch.Generator().manual_seed(0)) * 10
    rel = torch.arange(t_len)[None, :] - torch.tensor([3, 4, 2, 5, 3, 4])[:, None]  # (B, T)
    valid = torch.ones(b, t_len, dtype=torch.bool)
    padded = h
    for slot in plan.sites[site]:
        padded = slot.apply(padded, rel, valid)
    row = torch.arange(b)[:, None].expand(b, t_len).reshape(-1)  # (N,)
    flat = plan.apply_tokens(site, h.reshape(-1, d), row, rel.reshape(-1))
    torch.testing.assert_close(flat, padded.reshape(-1, d), rtol=0, atol=0)
    perm = torch.randperm(b * t_len, generator=torch.Generator().manual_seed(1))
    shuffled = plan.apply_tokens(site, h.reshape(-1, d)[perm], row[perm], rel.reshape(-1)[perm])
    torch.testing.assert_close(shuffled, padded.reshape(-1, d)[perm], rtol=0, atol=0)
    # row 0 (all positions) and row 1 (generated only) against the SAEs' own encoders
    for r, name, i, t, sel in ((0, "standard", 3, 5.0, rel[0] > -99), (1, "topk", 5, 4.0, None)):
        sae = saes[name]
        chosen = rel[r] >= 0 if sel is None else sel
        a = sae.encode(h[r])[:, i]  # (T,)
        expected = h[r] + chosen[:, None] * (t - a)[:, None] * sae.W_dec[i]
        torch.testing.assert_close(padded[r], expected, atol=1e-5, rtol=1e-5)
    assert torch.equal(padded[5], h[5])  # the row without interventions
    topk_acts = saes["topk"].encode(h[1])[:, 5]
    assert (topk_acts == 0).any() or (topk_acts > 0).all()


@pytest.mark.parametrize("arch", ARCHS)
def test_cached_equals_uncached(tiny_llama: Model, arch: str) -> None:
    model = tiny_llama
    layer = 1
    sae = make_sae(model, Site(layer, "resid_post"), arch, seed=20)
    t = 3.0 * resid_norms(model)[layer]
    rows = [
        Row(
            p,
            (
                Intervention(
                    directions.sae(sae, 4), layer, "sae_clamp", alpha=t, positions=mode, sae=sae
                ),
            ),
        )
        for p, mode in zip(PROMPTS, ("all", "generated", "window:-2:1"), strict=True)
    ]
    cached = gen(model, rows, GREEDY)
    uncached = gen(model, rows, GenerationConfig(max_new_tokens=N_NEW, use_cache=False))
    for c, n in zip(cached, uncached, strict=True):
        assert_same_result(c, n)
    base = gen(model, [Row(p) for p in PROMPTS])
    assert all(differs(c, b) for c, b in zip(cached, base, strict=True))


# ----------------------------------------------------------------------------- hooks and errors


def test_no_hooks_left(tiny_llama: Model) -> None:
    model = tiny_llama
    sae = make_sae(model, Site(2, "resid_pre"), "topk", seed=30)
    iv = Intervention(directions.sae(sae, 0), 2, "sae_clamp", alpha=5.0, sae=sae)
    ids, mask = left_pad(model, PROMPTS)
    base = forward_logits(model, ids, mask)
    before = count_hooks(model.hf)
    with steering(model, [iv]):
        assert count_hooks(model.hf) > before
    assert count_hooks(model.hf) == before
    with pytest.raises(RuntimeError, match="inside"), steering(model, [iv]):
        assert not torch.equal(forward_logits(model, ids, mask), base)
        raise RuntimeError("inside the block")
    assert count_hooks(model.hf) == before
    assert torch.equal(forward_logits(model, ids, mask), base)


def test_sae_that_does_not_fit_the_model_is_refused(tiny_llama: Model) -> None:
    model = tiny_llama
    sae = make_sae(model, Site(2, "resid_post"), "standard")
    narrow = SparseAutoencoder(
        W_enc=sae.W_enc[:-1],
        b_enc=sae.b_enc,
        W_dec=sae.W_dec[:, :-1],
        b_dec=sae.b_dec[:-1],
        site=sae.site,
        source="narrow",
    )
    iv = Intervention(directions.sae(narrow, 0), 2, "sae_clamp", alpha=1.0, sae=narrow)
    before = count_hooks(model.hf)
    with pytest.raises(ValueError, match="d_in=63"), steering(model, [iv]):
        pass
    assert count_hooks(model.hf) == before
