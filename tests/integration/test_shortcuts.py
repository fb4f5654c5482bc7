"""The one-call helpers of :mod:`steerlab.shortcuts` (``create_contrast_vector``,
``generate_with_steering``, ``find_best_layers_for_steering``) against independent computations:
plain torch hooks on the Hugging Face model and Hugging Face ``generate``, TransformerLens's own
``run_with_cache``, and the same steering written as steerlab interventions; on tiny-llama and
on HookedTransformers.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch

import steerlab as sl
from steerlab.analysis.layer_finder import find_layers
from steerlab.errors import SteerlabError
from steerlab.interventions import Intervention
from steerlab.models import Model

POS = "I provide helpful information."
NEG = "I provide unhelpful information."
PROMPT = "How can I help you today?"
PROMPTS = [PROMPT, "Hi", "The cat sat on the mat and"]
N_NEW = 12


def _block_output(out: Any) -> torch.Tensor:
    return out if isinstance(out, torch.Tensor) else out[0]


def hf_block_acts(model: Model, text: str, layer: int) -> torch.Tensor:
    """(T, d) output of Hugging Face decoder block ``layer`` on ``text``, via a plain hook."""
    sink: list[torch.Tensor] = []
    handle = model.hf.model.layers[layer].register_forward_hook(
        lambda _m, _a, out: sink.append(_block_output(out)[0].detach().clone())
    )
    try:
        with torch.inference_mode():
            model.hf(input_ids=torch.tensor([model.encode(text)]), use_cache=False)
    finally:
        handle.remove()
    return sink[0]


def hf_generate_with_adds(model: Model, text: str, adds: dict[int, torch.Tensor]) -> str:
    """Greedy Hugging Face ``generate`` with ``adds[L]`` added to block ``L``'s output at every
    position (plain torch hooks, no steerlab code)."""
    handles = []
    for layer, delta in adds.items():

        def hook(_m: torch.nn.Module, _a: Any, out: Any, delta: torch.Tensor = delta) -> Any:
            h = _block_output(out) + delta
            return h if isinstance(out, torch.Tensor) else (h, *out[1:])

        handles.append(model.hf.model.layers[layer].register_forward_hook(hook))
    ids = torch.tensor([model.encode(text)])
    try:
        with torch.inference_mode():
            out = model.hf.generate(
                ids,
                attention_mask=torch.ones_like(ids),
                max_new_tokens=N_NEW,
                do_sample=False,
                eos_token_id=list(model.eos_token_ids),
                pad_token_id=model.pad_token_id,
            )
    finally:
        for handle in handles:
            handle.remove()
    return model.decode(out[0, ids.shape[1] :].tolist())


# ----------------------------------------------------------------------------- public names


def test_names_are_exported() -> None:
    for name in (
        "create_contrast_vector",
        "generate_with_steering",
        "find_best_layers_for_steering",
    ):
        assert callable(getattr(sl, name))
        assert name in dir(sl)


# ----------------------------------------------------------------------------- contrast vector


@pytest.mark.parametrize("layer", [0, 2])
def test_contrast_vector_is_the_mean_token_difference(tiny_llama: Model, layer: int) -> None:
    v = sl.create_contrast_vector(tiny_llama, POS, NEG, layer=layer)
    assert v.shape == (tiny_llama.d_model,) and v.dtype == torch.float32
    # mean over tokens after the first (the attention sink)
    want = hf_block_acts(tiny_llama, POS, layer)[1:].mean(0) - hf_block_acts(
        tiny_llama, NEG, layer
    )[1:].mean(0)
    torch.testing.assert_close(v, want, atol=1e-5, rtol=1e-5)
    assert tiny_llama.backend.count_hooks() == 0


def test_contrast_vector_errors(tiny_llama: Model) -> None:
    with pytest.raises(SteerlabError, match="layer 4 is out of range"):
        sl.create_contrast_vector(tiny_llama, POS, NEG, layer=4)
    with pytest.raises(SteerlabError, match="positive prompt '' encodes to zero tokens"):
        sl.create_contrast_vector(tiny_llama, "", NEG, layer=1)
    with pytest.raises(SteerlabError, match="names layer 2, but layer is 1"):
        sl.create_contrast_vector(tiny_llama, POS, NEG, 1, hook_point="blocks.2.hook_resid_post")
    with pytest.raises(SteerlabError, match=r"cannot wrap a builtins\.str"):
        sl.create_contrast_vector("gpt2", POS, NEG, layer=1)


# ----------------------------------------------------------------------------- generation


def steer(v: torch.Tensor, layer: int, coefficient: float) -> dict[str, Any]:
    return {"vector": v, "layer": layer, "coefficient": coefficient}


@pytest.fixture(scope="module")
def vec(tiny_llama: Model) -> torch.Tensor:
    return sl.create_contrast_vector(tiny_llama, POS, NEG, layer=1)


def unsteered(model: Model, text: str) -> str:
    row = sl.Row(model.format_prompt(text, chat=False))
    cfg = sl.GenerationConfig(max_new_tokens=N_NEW)
    return sl.generate(model, [row], cfg, progress=False)[0].text


def test_coefficient_zero_is_unsteered(tiny_llama: Model, vec: torch.Tensor) -> None:
    got = sl.generate_with_steering(tiny_llama, PROMPT, [steer(vec, 1, 0.0)], N_NEW)
    assert got == unsteered(tiny_llama, PROMPT)
    assert sl.generate_with_steering(tiny_llama, PROMPT, [], N_NEW) == got


def test_adds_coefficient_times_the_raw_vector(tiny_llama: Model, vec: torch.Tensor) -> None:
    """Same text as Hugging Face ``generate`` with ``c · v`` added by a plain hook, and as a
    steerlab intervention of absolute size ``c · |v|`` along ``v``."""
    c = 3.0
    got = sl.generate_with_steering(tiny_llama, PROMPT, [steer(vec, 1, c)], N_NEW)
    assert got != unsteered(tiny_llama, PROMPT)  # the steering does something
    assert got == hf_generate_with_adds(tiny_llama, PROMPT, {1: c * vec})
    sv = sl.SteeringVector({1: vec})
    iv = Intervention(sv, 1, alpha=c * float(vec.norm()), scale="absolute")
    row = sl.Row(tiny_llama.format_prompt(PROMPT, chat=False), (iv,))
    want = sl.generate(tiny_llama, [row], sl.GenerationConfig(max_new_tokens=N_NEW), progress=False)
    assert got == want[0].text
    # a SteeringVector in the dict means the same: coefficient times its stored direction
    assert sl.generate_with_steering(tiny_llama, PROMPT, [steer(sv, 1, c)], N_NEW) == got  # type: ignore[arg-type]


def test_several_vectors_apply_together(tiny_llama: Model, vec: torch.Tensor) -> None:
    other = sl.create_contrast_vector(tiny_llama, "I love cats.", "I hate cats.", layer=2)
    both = sl.generate_with_steering(
        tiny_llama, PROMPT, [steer(vec, 1, 2.0), steer(other, 2, -1.5)], N_NEW
    )
    assert both == hf_generate_with_adds(tiny_llama, PROMPT, {1: 2.0 * vec, 2: -1.5 * other})
    assert both != sl.generate_with_steering(tiny_llama, PROMPT, [steer(vec, 1, 2.0)], N_NEW)
    # entries at one layer add up
    same_layer = sl.generate_with_steering(
        tiny_llama, PROMPT, [steer(vec, 1, 2.0), steer(vec, 1, 1.0)], N_NEW
    )
    assert same_layer == sl.generate_with_steering(tiny_llama, PROMPT, [steer(vec, 1, 3.0)], N_NEW)


def test_list_of_prompts_is_one_batch_equal_to_each_alone(
    tiny_llama: Model, vec: torch.Tensor
) -> None:
    for temperature in (0.0, 1.0):
        spec = [steer(vec, 1, 2.0)]
        batch = sl.generate_with_steering(
            tiny_llama, PROMPTS, spec, N_NEW, temperature=temperature, seed=7
        )
        assert isinstance(batch, list) and len(batch) == len(PROMPTS)
        alone = [
            sl.generate_with_steering(tiny_llama, p, spec, N_NEW, temperature=temperature, seed=7)
            for p in PROMPTS
        ]
        assert batch == alone


BAD: list[tuple[Any, str]] = [
    ({"vector": None, "layer": 1, "coefficient": 1.0}, "must be a list of dicts"),
    ([("v", 1, 2.0)], r"steering_vectors\[0\] must be a dict"),
    ([{"vector": torch.ones(64), "layer": 1}], "needs vector, layer and coefficient"),
    ([{"vector": torch.ones(64), "layer": 1, "coefficient": 1, "alpha": 2}], "'alpha'"),
    ([{"vector": torch.ones(64), "layer": 9, "coefficient": 1}], "layer 9 is out of range"),
    ([{"vector": torch.ones(64), "layer": "1", "coefficient": 1}], "layer must be an int"),
    ([{"vector": torch.ones(64), "layer": 1, "coefficient": float("inf")}], "finite number"),
    ([{"vector": torch.ones(8), "layer": 1, "coefficient": 1}], r"shape \(64,\)"),
    ([{"vector": [1.0] * 64, "layer": 1, "coefficient": 1}], "tensor or a SteeringVector"),
]


@pytest.mark.parametrize(("spec", "message"), BAD)
def test_bad_steering_specs_are_one_clear_error(tiny_llama: Model, spec: Any, message: str) -> None:
    with pytest.raises(SteerlabError, match=message) as info:
        sl.generate_with_steering(tiny_llama, PROMPT, spec, 2)
    assert "\n" not in str(info.value)


def test_zero_vector_changes_nothing(tiny_llama: Model) -> None:
    got = sl.generate_with_steering(tiny_llama, PROMPT, [steer(torch.zeros(64), 1, 5.0)], N_NEW)
    assert got == unsteered(tiny_llama, PROMPT)


# ----------------------------------------------------------------------------- best layers


def test_find_best_layers_is_the_finders_top_k(tiny_llama: Model) -> None:
    best = sl.find_best_layers_for_steering(
        tiny_llama, POS, NEG, "Tell me about", "helpful", top_k=2, strength=0.5
    )
    report = find_layers(
        tiny_llama, "Tell me about", "helpful", positive=POS, negative=NEG, strength=0.5
    )
    assert best == list(report.table[:2])
    assert [row.rank for row in best] == [1, 2]
    everything = sl.find_best_layers_for_steering(tiny_llama, POS, NEG, "Tell me about", "helpful")
    assert len(everything) == tiny_llama.n_layers  # top_k 5 > 4 layers
    with pytest.raises(SteerlabError, match="top_k must be a positive integer"):
        sl.find_best_layers_for_steering(tiny_llama, POS, NEG, "Tell me", "helpful", top_k=0)


# ----------------------------------------------------------------------------- HookedTransformer


def test_hooked_transformer_from_the_same_weights_agrees() -> None:
    """A ``HookedTransformer`` passed as is. Built from tiny-llama's weights by TransformerLens's
    converter, it must give the Hugging Face model's vector (and TransformerLens's own cached
    activations), text and layer scores."""
    pytest.importorskip("transformer_lens")
    from tests.integration.test_backend_transformer_lens import hooked_from_hf

    ref, hooked = hooked_from_hf("tiny-llama")
    ht = hooked.backend.wrapped
    layer = 1
    v = sl.create_contrast_vector(ht, POS, NEG, layer=layer)
    torch.testing.assert_close(
        v, sl.create_contrast_vector(ref, POS, NEG, layer=layer), atol=1e-4, rtol=1e-4
    )
    name = f"blocks.{layer}.hook_resid_post"
    with torch.inference_mode():
        _, pos_cache = ht.run_with_cache(torch.tensor([ref.encode(POS)]), names_filter=name)
        _, neg_cache = ht.run_with_cache(torch.tensor([ref.encode(NEG)]), names_filter=name)
    tl_v = pos_cache[name][0][1:].mean(0) - neg_cache[name][0][1:].mean(0)
    torch.testing.assert_close(v, tl_v, atol=1e-5, rtol=1e-5)

    spec = [steer(v, layer, 3.0)]
    got = sl.generate_with_steering(ht, PROMPTS, spec, N_NEW)
    assert got == sl.generate_with_steering(ref, PROMPTS, spec, N_NEW)
    assert sl.generate_with_steering(ht, PROMPT, [steer(v, layer, 0.0)], N_NEW) == unsteered(
        hooked, PROMPT
    )
    a = sl.find_best_layers_for_steering(ht, POS, NEG, "Tell me about", "helpful", strength=0.5)
    b = sl.find_best_layers_for_steering(ref, POS, NEG, "Tell me about", "helpful", strength=0.5)
    for x in a:
        y = next(r for r in b if r.layer == x.layer)
        assert x.effect == pytest.approx(y.effect, abs=1e-4)
        assert x.cost == pytest.approx(y.cost, abs=1e-4)
    for obj in (ht, ref.hf):
        assert sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in obj.modules()) == 0
    assert not any(point.fwd_hooks for point in ht.hook_dict.values())


@pytest.mark.parametrize("positional", ["standard", "rotary"])
def test_random_hooked_transformer(positional: str) -> None:
    pytest.importorskip("transformer_lens")
    from tests.integration.test_backend_transformer_lens import random_hooked

    ht = random_hooked(positional)
    model = sl.wrap(ht)
    v = sl.create_contrast_vector(ht, POS, NEG, layer=1)
    assert v.shape == (ht.cfg.d_model,)
    assert sl.generate_with_steering(ht, PROMPT, [steer(v, 1, 0.0)], N_NEW) == unsteered(
        model, PROMPT
    )
    steered = sl.generate_with_steering(ht, PROMPT, [steer(v, 1, 4.0)], N_NEW)
    iv = Intervention(sl.SteeringVector({1: v}), 1, alpha=4.0, scale="diff")
    row = sl.Row(model.format_prompt(PROMPT, chat=False), (iv,))
    want = sl.generate(model, [row], sl.GenerationConfig(max_new_tokens=N_NEW), progress=False)
    assert steered == want[0].text
    best = sl.find_best_layers_for_steering(ht, POS, NEG, "Tell me about", "h", top_k=1)
    assert len(best) == 1 and best[0].rank == 1
    assert not any(point.fwd_hooks for point in ht.hook_dict.values())
