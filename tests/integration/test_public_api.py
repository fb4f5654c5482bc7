"""The public surface: ``import steerlab as sl`` names, ``wrap``, pairs as pairs, ``scale="diff"``
after vector arithmetic, the cross-model warning, and the flat token layout of the plan."""

from __future__ import annotations

import importlib.util
import re
import warnings

import pytest
import torch

import steerlab as sl
from steerlab.backends.base import call_info_from_mask
from steerlab.engine.handle import SteeringHandle
from steerlab.engine.plan import compile_plan
from steerlab.errors import ModelLoadError, SteerlabError
from steerlab.models import Model
from steerlab.models.tiny import build_tiny_model
from steerlab.sites import Site

EVERYDAY = (
    "load_model",
    "wrap",
    "SteeringVector",
    "contrast",
    "single",
    "forced_prefix",
    "labeled",
    "pca",
    "Intervention",
    "steering",
    "generate",
    "Row",
    "GenerationConfig",
)
CFG = sl.GenerationConfig(max_new_tokens=6)


def test_everyday_names_are_exported() -> None:
    for name in EVERYDAY:
        assert callable(getattr(sl, name)), name
        assert name in dir(sl)
    with pytest.raises(AttributeError):
        sl.not_a_name  # noqa: B018


PAIRS = [("I love this.", "I hate this."), ("What a joy", "What a pain"), ("Yes!", "No!")]


@pytest.mark.parametrize("method", ["contrast", "pca"])
def test_pairs_as_pairs_equal_two_lists(tiny_llama: Model, method: str) -> None:
    build = getattr(sl, method)
    a = build(tiny_llama, PAIRS, layers=[1]).vector
    b = build(tiny_llama, [p for p, _ in PAIRS], [n for _, n in PAIRS], layers=[1]).vector
    assert torch.equal(a.direction(1), b.direction(1))
    assert a.prompts_hash == b.prompts_hash

    class Sample:  # steering-vectors' training-sample shape
        def __init__(self, p: str, n: str) -> None:
            self.positive_str, self.negative_str = p, n

    c = build(tiny_llama, [Sample(p, n) for p, n in PAIRS], layers=[1]).vector
    assert torch.equal(a.direction(1), c.direction(1))


def test_pairs_errors(tiny_llama: Model) -> None:
    with pytest.raises(SteerlabError, match="lone string"):
        sl.contrast(tiny_llama, ["a", "b"], layers=[1])
    with pytest.raises(SteerlabError, match="pair 1"):
        sl.contrast(tiny_llama, [("a", "b"), ("c",)], layers=[1])


def test_wrap_hf_model_steers_like_load_model(tiny_llama: Model, make_vector) -> None:  # type: ignore[no-untyped-def]
    hf, tok = build_tiny_model("tiny-llama")
    wrapped = sl.wrap(hf, tok, name="tiny-llama")
    assert wrapped.hf is hf  # no copy
    v = make_vector(tiny_llama, layers=[1])
    rows = [sl.Row(tiny_llama.format_prompt("hi"), (sl.Intervention(v, 1, alpha=3.0),))]
    a = sl.generate(tiny_llama, rows, CFG, progress=False)
    b = sl.generate(wrapped, rows, CFG, progress=False)
    assert [r.token_ids for r in a] == [r.token_ids for r in b]


def test_wrap_errors() -> None:
    hf, _ = build_tiny_model("tiny-gpt2")
    with pytest.raises(ModelLoadError, match="needs its tokenizer"):
        sl.wrap(hf)
    with pytest.raises(ModelLoadError, match=r"cannot wrap a builtins\.dict"):
        sl.wrap({})


def test_unknown_backend_is_one_sentence() -> None:
    with pytest.raises(ModelLoadError, match="unknown backend 'jax'"):
        sl.load_model("tiny-llama", backend="jax")


@pytest.mark.skipif(importlib.util.find_spec("vllm") is not None, reason="vLLM is installed")
def test_a_backend_whose_package_is_missing_says_what_to_install() -> None:
    from steerlab.backends.base import BackendUnavailable

    with pytest.raises(BackendUnavailable, match=r"steerlab\[vllm\]"):
        sl.load_model("tiny-llama", backend="vllm")


def _hidden_after(model: Model, iv: sl.Intervention) -> torch.Tensor:
    ids = torch.tensor([model.encode("The cat sat.")])
    mask = torch.ones_like(ids)
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    sink: list[torch.Tensor] = []
    handle = SteeringHandle(compile_plan(model, [[iv]]), torch.tensor([ids.shape[1]]))
    handle.observe(call_info_from_mask(mask, ids.shape[1]))
    edits = handle.edits()
    edits[iv.site].append(lambda h: sink.append(h.clone()) or h)  # type: ignore[func-returns-value]
    with torch.inference_mode():
        model.backend.forward(ids, mask, pos, None, edits)
    return sink[0]


def test_scale_diff_after_arithmetic(tiny_llama: Model, make_vector) -> None:  # type: ignore[no-untyped-def]
    """``diff`` adds α times the stored vector: 2*v at α=1 == v at α=2; normalized == absolute."""
    v = make_vector(tiny_llama, layers=[1], norm=3.0)

    def after(vec: sl.SteeringVector, alpha: float, scale: str) -> torch.Tensor:
        return _hidden_after(tiny_llama, sl.Intervention(vec, 1, alpha=alpha, scale=scale))

    torch.testing.assert_close(after(2 * v, 1.0, "diff"), after(v, 2.0, "diff"))
    torch.testing.assert_close(after(v, 1.5, "diff"), after(v, 1.5 * 3.0, "absolute"))
    torch.testing.assert_close(after(v.normalized(), 1.5, "diff"), after(v, 1.5, "absolute"))
    torch.testing.assert_close(after(v + v, 0.5, "diff"), after(v, 1.0, "diff"))
    # the metadata norms survive arithmetic, so ``resid`` stays comparable
    assert (2 * v).mean_resid_norm == v.mean_resid_norm


def test_vector_from_another_model_warns_once(tiny_llama: Model) -> None:
    v = sl.SteeringVector({1: torch.ones(tiny_llama.d_model)}, model_id="some-other-model")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        compile_plan(tiny_llama, [[sl.Intervention(v, 1)]])
        compile_plan(tiny_llama, [[sl.Intervention(v, 1)]])
    msgs = [str(w.message) for w in caught if "some-other-model" in str(w.message)]
    assert len(msgs) == 1
    same = sl.SteeringVector({1: torch.ones(tiny_llama.d_model)}, model_id=tiny_llama.name)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        compile_plan(tiny_llama, [[sl.Intervention(same, 1)]])


def test_flat_token_layout_equals_padded(tiny_llama: Model, make_vector) -> None:  # type: ignore[no-untyped-def]
    """The plan steers a flat (N, d) layout with a per-token row index (continuous batching)
    exactly as it steers the padded (B, T, d) layout."""
    v = make_vector(tiny_llama, layers=[1])
    rows = [
        [sl.Intervention(v, 1, kind="add", alpha=2.0, positions="generated")],
        [sl.Intervention(v, 1, kind="ablate", alpha=1.0)],
        [sl.Intervention(v, 1, kind="clamp", alpha=3.0, positions="window:-2:1")],
        [],
    ]
    plan = compile_plan(tiny_llama, rows)
    b, t, d = 4, 5, tiny_llama.d_model
    h = torch.randn(b, t, d, generator=torch.Generator().manual_seed(0))
    rel = torch.arange(t)[None, :] - torch.tensor([3, 4, 2, 5])[:, None]  # (B, T)
    valid = torch.ones(b, t, dtype=torch.bool)
    site = Site(1, "resid_post")
    padded = h
    for slot in plan.sites[site]:
        padded = slot.apply(padded, rel, valid)
    row = torch.arange(b)[:, None].expand(b, t).reshape(-1)  # (N,)
    flat = plan.apply_tokens(site, h.reshape(-1, d), row, rel.reshape(-1))
    torch.testing.assert_close(flat, padded.reshape(-1, d), rtol=0, atol=0)
    assert not torch.equal(flat, h.reshape(-1, d))
    # shuffled token order (a scheduler's layout) gives the same per-token result
    perm = torch.randperm(b * t, generator=torch.Generator().manual_seed(1))
    shuffled = plan.apply_tokens(site, h.reshape(-1, d)[perm], row[perm], rel.reshape(-1)[perm])
    torch.testing.assert_close(shuffled, padded.reshape(-1, d)[perm], rtol=0, atol=0)


@pytest.mark.parametrize(
    ("backend", "extra"),
    [("transformer_lens", "steerlab[transformer-lens]"), ("nnsight", "steerlab[nnsight]")],
)
def test_missing_extra_is_one_sentence(
    monkeypatch: pytest.MonkeyPatch, backend: str, extra: str
) -> None:
    import importlib.util

    from steerlab.backends import BackendUnavailable

    real = importlib.util.find_spec

    def hide(name: str, *args: object) -> object:
        return None if name == backend else real(name, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(importlib.util, "find_spec", hide)
    with pytest.raises(BackendUnavailable, match=re.escape(f"pip install '{extra}'")) as info:
        sl.load_model("tiny-llama", backend=backend)
    assert "\n" not in str(info.value)


def test_wrap_leaves_the_users_tokenizer_alone() -> None:
    hf, tok = build_tiny_model("tiny-gpt2")
    tok.padding_side = "right"
    sl.wrap(hf, tok)
    assert tok.padding_side == "right"


def test_wrap_refuses_a_model_without_lm_head_and_warns_in_training_mode() -> None:
    hf, tok = build_tiny_model("tiny-llama")
    with pytest.raises(ModelLoadError, match="no language-model head"):
        sl.wrap(hf.model, tok)
    hf.train()
    with pytest.warns(UserWarning, match="training mode"):
        sl.wrap(hf, tok)


def test_wrap_accepts_subclasses_of_the_frameworks_classes() -> None:
    pytest.importorskip("transformer_lens")
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    from steerlab.models.tiny import build_tiny_tokenizer

    class MyHooked(HookedTransformer):  # e.g. sae-lens's HookedSAETransformer
        pass

    cfg = HookedTransformerConfig(
        n_layers=1, d_model=16, n_ctx=64, d_head=4, n_heads=4, d_vocab=259, act_fn="gelu"
    )
    from steerlab.backends.transformer_lens import tokenizer_for_tl

    model = sl.wrap(MyHooked(cfg, tokenizer=tokenizer_for_tl(build_tiny_tokenizer())))
    assert model.backend.name == "transformer_lens"


@pytest.mark.parametrize("backend", ["transformer_lens", "nnsight"])
def test_steering_refuses_calls_on_the_unsteered_hf_model(backend: str) -> None:
    """Under ``steering`` the wrapped object is steered; a call on the HF model it was built
    from would silently run unsteered, so it fails with one sentence instead."""
    pytest.importorskip(backend)
    from steerlab.models import model_from_hf

    hf, tok = build_tiny_model("tiny-llama")
    model = model_from_hf(hf, tok, "tiny-llama", backend=backend)
    v = sl.SteeringVector({1: torch.ones(model.d_model)}, model_id=model.name)
    ids = torch.tensor([model.encode("Hello")])
    with (
        sl.steering(model, [sl.Intervention(v, 1)]),
        torch.inference_mode(),
        pytest.raises(SteerlabError, match=r"model\.backend\.wrapped"),
    ):
        hf(ids)
    with torch.inference_mode():
        hf(ids)  # and the guard is gone afterwards


def test_vector_hook_point_is_a_point_and_builders_check_named_layers(tiny_llama: Model) -> None:
    with pytest.raises(SteerlabError, match="give the point"):
        sl.SteeringVector({5: torch.ones(4)}, hook_point="blocks.3.hook_mlp_out")
    with pytest.raises(SteerlabError, match="names layer 3"):
        sl.contrast(tiny_llama, PAIRS, layers=[1, 3], hook_point="blocks.3.hook_mlp_out")
    v = sl.contrast(tiny_llama, PAIRS, layers=[3], hook_point="blocks.3.hook_mlp_out").vector
    assert v.hook_point == "mlp_out" and v.layers == (3,)
