"""Named hook sites: the wiring is checked algebraically on every tiny architecture.

- ``resid_pre(L+1) == resid_post(L)``, and every ``resid_pre(L)`` equals Hugging Face's own
  ``output_hidden_states`` (an independent reading);
- sequential blocks: ``resid_mid == resid_pre + attn_out``, ``resid_post == resid_mid + mlp_out``;
  parallel-residual blocks: ``resid_post == resid_pre + attn_out + mlp_out``;
- a write at any site shows up at that site and at every site downstream of it, exactly as the
  identities above say;
- sites a model cannot expose fail with one message naming the site and the model.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import pytest
import torch

from steerlab.backends.architectures import ARCHITECTURES
from steerlab.backends.base import SiteFn
from steerlab.engine.generate import GenerationConfig, Row, generate
from steerlab.interventions import Intervention
from steerlab.models import Model
from steerlab.sites import POINTS, Site, SiteError, parse_site
from steerlab.vectors import SteeringVector

TEXTS = ("Hi", "The cat sat on the mat.", "One two")


def batch(model: Model) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    seqs = [model.encode(t) for t in TEXTS]
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), model.pad_token_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for r, s in enumerate(seqs):
        ids[r, width - len(s) :] = torch.tensor(s)
        mask[r, width - len(s) :] = 1
    return ids, mask, (mask.cumsum(-1) - 1).clamp(min=0)


def points(model: Model) -> tuple[str, ...]:
    return tuple(p for p in POINTS if not (p == "resid_mid" and model.backend.parallel))


def capture_all(
    model: Model, writes: dict[Site, SiteFn] | None = None
) -> tuple[dict[Site, torch.Tensor], torch.Tensor]:
    """Every site's activation (after any write there) and the last-position logits."""
    ids, mask, pos = batch(model)
    sink: dict[Site, torch.Tensor] = {}

    def grab(site: Site) -> SiteFn:
        def fn(h: torch.Tensor) -> torch.Tensor:
            sink[site] = h.detach().clone()
            return h

        return fn

    edits: dict[Site, list[SiteFn]] = {}
    for layer in range(model.n_layers):
        for p in points(model):
            site = Site(layer, p)
            first = [writes[site]] if writes and site in writes else []
            edits[site] = [*first, grab(site)]
    with torch.inference_mode():
        logits = model.backend.forward(ids, mask, pos, None, edits)
    assert logits is not None
    return sink, logits


def close(a: torch.Tensor, b: torch.Tensor) -> None:
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def check_identities(
    model: Model,
    acts: dict[Site, torch.Tensor],
    exact: bool,
    written: Site | None = None,
    delta: torch.Tensor | None = None,
) -> None:
    """The wiring identities; the written site holds what the identity gives plus ``delta``."""

    def expect(site: Site, value: torch.Tensor, exact_here: bool) -> None:
        if site == written:
            assert delta is not None
            value, exact_here = value + delta, False
        if exact_here:
            assert torch.equal(acts[site], value), site
        else:
            close(acts[site], value)

    n = model.n_layers
    for layer in range(n):
        pre, post = acts[Site(layer, "resid_pre")], acts[Site(layer, "resid_post")]
        attn, mlp = acts[Site(layer, "attn_out")], acts[Site(layer, "mlp_out")]
        if layer + 1 < n:
            expect(Site(layer + 1, "resid_pre"), post, True)
        if model.backend.parallel:
            expect(Site(layer, "resid_post"), pre + attn + mlp, False)
        else:
            mid = acts[Site(layer, "resid_mid")]
            expect(Site(layer, "resid_mid"), pre + attn, exact)
            expect(Site(layer, "resid_post"), mid + mlp, exact)


def test_identities_hold_unsteered(tiny_model: Model) -> None:
    acts, _ = capture_all(tiny_model)
    check_identities(tiny_model, acts, exact=True)
    ids, mask, pos = batch(tiny_model)
    with torch.inference_mode():
        hs = tiny_model.hf(
            input_ids=ids, attention_mask=mask, position_ids=pos, output_hidden_states=True
        ).hidden_states
    valid = mask.bool()
    for layer in range(tiny_model.n_layers):
        assert torch.equal(acts[Site(layer, "resid_pre")][valid], hs[layer][valid])
    # every non-pad token moves the residual at every sub-block (none of this is vacuous)
    for p in ("attn_out", "mlp_out"):
        assert (acts[Site(0, p)][valid].norm(dim=-1) > 0).all()


def _delta(model: Model, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(model.d_model, generator=g) * 3.0  # (d,)


@pytest.mark.parametrize("point", POINTS)
def test_write_shows_up_downstream(tiny_model: Model, point: str) -> None:
    if point not in points(tiny_model):
        pytest.skip("parallel-residual blocks have no resid_mid")
    layer = tiny_model.n_layers - 2
    site = Site(layer, point)
    delta = _delta(tiny_model, 1)
    base, base_logits = capture_all(tiny_model)
    acts, logits = capture_all(tiny_model, {site: lambda h: h + delta})
    # the written site holds exactly the unsteered value plus the write
    assert torch.equal(acts[site], base[site] + delta)
    # every upstream site is untouched, the identities still hold downstream
    for s in base:
        if s.order < site.order:
            assert torch.equal(acts[s], base[s]), s
    check_identities(tiny_model, acts, point != "resid_mid", site, delta)
    assert not torch.allclose(logits, base_logits)
    # the block's output moved by the write (plus what later sub-blocks made of it)
    post = Site(layer, "resid_post")
    if point in ("mlp_out", "resid_post"):
        close(acts[post], base[post] + delta)


def test_parallel_blocks_have_no_resid_mid(tiny_model: Model) -> None:
    site = Site(0, "resid_mid")
    if not tiny_model.backend.parallel:
        tiny_model.backend.check_site(site)
        return
    with pytest.raises(SiteError, match=r"resid_mid.*" + tiny_model.name):
        tiny_model.backend.check_site(site)
    v = SteeringVector({0: torch.ones(tiny_model.d_model)}, hook_point="resid_mid")
    with pytest.raises(SiteError, match="parallel-residual"):
        generate(tiny_model, [Row("hi", (Intervention(v, 0),))], progress=False)


def test_out_of_range_site_names_site_and_model(tiny_llama: Model) -> None:
    with pytest.raises(SiteError, match=r"blocks\.9\.hook_mlp_out.*tiny-llama"):
        tiny_llama.backend.check_site(Site(9, "mlp_out"))


def test_unknown_architecture_offers_only_residual_sites(tiny_llama: Model) -> None:
    from steerlab.backends.hf import HFBackend

    be = HFBackend(tiny_llama.hf, "mystery-model")
    be.wiring, be.parallel, be.model_type = None, None, "mystery"
    be.check_site(Site(0, "resid_post"))
    with pytest.raises(SiteError, match=r"'attn_out' is not available on mystery-model"):
        be.check_site(Site(0, "attn_out"))


@pytest.mark.parametrize(
    ("name", "layer", "expected"),
    [
        ("blocks.3.hook_attn_out", None, Site(3, "attn_out")),
        ("mlp_out", 2, Site(2, "mlp_out")),
        ("hook_resid_mid", 0, Site(0, "resid_mid")),
        ("blocks.1.hook_resid_post", 1, Site(1, "resid_post")),
    ],
)
def test_parse_site(name: str, layer: int | None, expected: Site) -> None:
    site = parse_site(name, layer)
    assert site == expected
    assert parse_site(site.name) == site  # round trip through the TransformerLens name


@pytest.mark.parametrize(
    ("name", "layer", "match"),
    [
        ("mlp_out", None, "needs a layer"),
        ("blocks.1.hook_mlp_out", 2, "names layer 1"),
        ("blocks.1.hook_mlp_in", None, "unknown hook site"),
    ],
)
def test_parse_site_errors(name: str, layer: int | None, match: str) -> None:
    with pytest.raises(SiteError, match=match):
        parse_site(name, layer)


Build = Callable[..., SteeringVector]


@pytest.mark.parametrize("point", POINTS)
def test_every_site_steers_generation(tiny_model: Model, point: str) -> None:
    """α = 0 at any site is the baseline, bit for bit; a large α changes the output."""
    if point not in points(tiny_model):
        pytest.skip("parallel-residual blocks have no resid_mid")
    layer = 0
    v = SteeringVector({layer: _delta(tiny_model, 2)}, hook_point=point, model_id=tiny_model.name)
    cfg = GenerationConfig(max_new_tokens=6)
    prompts = [tiny_model.format_prompt(t) for t in TEXTS]
    base = generate(tiny_model, [Row(p) for p in prompts], cfg, progress=False)
    zero = generate(
        tiny_model,
        [Row(p, (Intervention(v, layer, alpha=0.0),)) for p in prompts],
        cfg,
        progress=False,
    )
    assert [r.token_ids for r in zero] == [r.token_ids for r in base]
    assert [r.logprobs for r in zero] == [r.logprobs for r in base]
    big = generate(
        tiny_model,
        [Row(p, (Intervention(v, layer, alpha=30.0, kind="clamp"),)) for p in prompts],
        cfg,
        progress=False,
    )
    assert [r.logprobs for r in big] != [r.logprobs for r in base]


# ----------------------------------------------------------------------------- every table row


@functools.cache
def _wiring_models() -> dict[str, Model]:
    import transformers as tf

    from steerlab.models import model_from_hf
    from steerlab.models.tiny import build_tiny_tokenizer

    common = {
        "vocab_size": 259,
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "pad_token_id": 0,
        "bos_token_id": 1,
        "eos_token_id": 2,
    }
    configs = {
        "mixtral": tf.MixtralConfig(num_local_experts=2, num_experts_per_tok=1, **common),
        "qwen3": tf.Qwen3Config(head_dim=8, **common),
        "gemma": tf.GemmaConfig(head_dim=8, **common),
        "gemma3_text": tf.Gemma3TextConfig(head_dim=8, **common),
        "phi3": tf.Phi3Config(**common),
        "olmo": tf.OlmoConfig(**common),
        "gptj": tf.GPTJConfig(
            vocab_size=259,
            n_embd=32,
            n_layer=2,
            n_head=4,
            rotary_dim=4,
            pad_token_id=0,
            bos_token_id=1,
            eos_token_id=2,
        ),
    }
    out = {}
    for name, cfg in configs.items():
        torch.manual_seed(0)
        hf = tf.AutoModelForCausalLM.from_config(cfg).eval()
        out[name] = model_from_hf(hf, build_tiny_tokenizer(), f"tiny-{name}")
    return out


def test_every_architecture_row_is_exercised() -> None:
    """Each architecture in the table is checked here or by a tiny model of the test suite."""
    from tests.conftest import ALL_TINY

    covered = set(_wiring_models()) | {"llama", "gpt2", "gpt_neox", "qwen2", "gemma2"}
    covered |= {"mistral", "phi"}
    assert set(ARCHITECTURES) <= covered, set(ARCHITECTURES) - covered
    assert len(ALL_TINY) == 7


@pytest.mark.parametrize(
    "arch", ["mixtral", "qwen3", "gemma", "gemma3_text", "phi3", "olmo", "gptj"]
)
def test_table_architectures_satisfy_the_identities(arch: str) -> None:
    model = _wiring_models()[arch]
    acts, _ = capture_all(model)
    check_identities(model, acts, exact=True)
    site = Site(1, "mlp_out")
    delta = _delta(model, 3)
    steered, _ = capture_all(model, {site: lambda h: h + delta})
    check_identities(model, steered, True, site, delta)


def test_nested_contexts_form_resid_mid_from_the_final_block_input(tiny_llama: Model) -> None:
    """A resid_mid clamp in an outer context sees edits at resid_pre made by an inner call."""
    from steerlab.engine.handle import steering

    g = torch.Generator().manual_seed(0)
    v = SteeringVector({1: torch.randn(64, generator=g)}, "resid_mid", model_id=tiny_llama.name)
    u = v.unit(1)
    ids = torch.tensor([tiny_llama.encode("Hello there")])
    mask = torch.ones_like(ids)
    pos = mask.cumsum(-1) - 1
    seen: dict[str, torch.Tensor] = {}
    norm = tiny_llama.layers[1].post_attention_layernorm
    hook = norm.register_forward_pre_hook(lambda _m, a: seen.__setitem__("mid", a[0].clone()))
    try:
        with torch.inference_mode(), steering(tiny_llama, [Intervention(v, 1, "clamp", 3.0)]):
            tiny_llama.hf(ids, attention_mask=mask)
            alone = seen["mid"] @ u
            push = {Site(1, "resid_pre"): [lambda h: h + 5.0 * u]}
            tiny_llama.backend.forward(ids, mask, pos, None, push)
            nested = seen["mid"] @ u
    finally:
        hook.remove()
    close(alone, torch.full_like(alone, 3.0))
    close(nested, torch.full_like(nested, 3.0))
