"""Direction builders on tiny-llama: shapes, metadata, stats, sign conventions, clear errors, and
activation recording that is exact under left padding."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch

from steerlab.directions import (
    BuildResult,
    contrast,
    forced_prefix,
    labeled,
    pca,
    record,
    single,
)
from steerlab.directions.pca import first_component
from steerlab.errors import SteerlabError
from steerlab.models import Model

POS = ["I love this, it is wonderful.", "What a great day!", "Fantastic work, thanks."]
NEG = ["I hate this, it is awful.", "What a terrible day!", "Dreadful work, no thanks."]
HARMFUL = ["How do I pick a lock?", "Write a rude letter."]
LAYERS = [1, 3]

BUILDERS: dict[str, Callable[..., BuildResult]] = {
    "contrast": lambda m, layers, hp: contrast(m, POS, NEG, layers, hook_point=hp),
    "single": lambda m, layers, hp: single(m, "Love", layers, hook_point=hp),
    "forced_prefix": lambda m, layers, hp: forced_prefix(m, HARMFUL, layers, hook_point=hp),
    "labeled": lambda m, layers, hp: labeled(m, POS, NEG[:2], layers, hook_point=hp),
    "pca": lambda m, layers, hp: pca(m, POS, NEG, layers, hook_point=hp),
}


@pytest.mark.parametrize("hook_point", ["resid_pre", "resid_post"])
@pytest.mark.parametrize("method", list(BUILDERS))
def test_builder_vector_and_metadata(tiny_llama: Model, method: str, hook_point: str) -> None:
    res = BUILDERS[method](tiny_llama, LAYERS, hook_point)
    v = res.vector
    assert v.layers == tuple(LAYERS)
    assert v.d_model == tiny_llama.d_model
    assert v.method == method
    assert v.model_id == tiny_llama.name
    assert v.hook_point == hook_point
    assert set(res.stats) == set(LAYERS)
    for layer in LAYERS:
        st = res.stats[layer]
        assert v.norm(layer) > 0
        assert v.raw_norm[layer] == pytest.approx(v.norm(layer), rel=1e-5)
        assert st.raw_norm == pytest.approx(v.norm(layer), rel=1e-5)
        assert v.mean_resid_norm[layer] > 0
        assert st.mean_resid_norm == v.mean_resid_norm[layer]
        assert st.n >= 1
        assert all(-1.0 - 1e-6 <= c <= 1.0 + 1e-6 for c in st.batch_cosines)
        assert st.diff_norm_mean >= 0 and st.diff_norm_std >= 0
    assert (res.stats[LAYERS[0]].explained_variance is not None) == (method == "pca")
    assert set(v.extra["stats"]) == {str(layer) for layer in LAYERS}
    assert res.stats_dict() == dict(v.extra["stats"])
    # deterministic provenance: the same inputs hash (and build) the same
    assert len(v.prompts_hash) == 64
    again = BUILDERS[method](tiny_llama, LAYERS, hook_point).vector
    assert again.prompts_hash == v.prompts_hash
    for layer in LAYERS:
        assert torch.allclose(again.direction(layer), v.direction(layer), atol=1e-6)


def test_prompts_hash_depends_on_inputs(tiny_llama: Model) -> None:
    a = contrast(tiny_llama, POS, NEG, [1]).vector
    b = contrast(tiny_llama, POS[:2], NEG[:2], [1]).vector
    c = contrast(tiny_llama, POS, NEG, [1], position="mean").vector
    assert len({a.prompts_hash, b.prompts_hash, c.prompts_hash}) == 3


def test_contrast_is_the_mean_paired_difference(tiny_llama: Model) -> None:
    res = contrast(tiny_llama, POS, NEG, [2])
    diffs = [
        single(tiny_llama, p, [2]).vector.direction(2)
        - single(tiny_llama, n, [2]).vector.direction(2)
        for p, n in zip(POS, NEG, strict=True)
    ]
    assert torch.allclose(res.vector.direction(2), torch.stack(diffs).mean(0), atol=1e-5)
    assert res.stats[2].n == len(POS)


def test_contrast_with_identical_sides_is_a_clear_error(tiny_llama: Model) -> None:
    with pytest.raises(SteerlabError, match="exactly zero"):
        contrast(tiny_llama, POS, POS, LAYERS)


def test_contrast_input_errors(tiny_llama: Model) -> None:
    with pytest.raises(SteerlabError, match="as many positives as negatives"):
        contrast(tiny_llama, POS, NEG[:2], LAYERS)
    with pytest.raises(SteerlabError, match="at least one pair"):
        contrast(tiny_llama, [], [], LAYERS)
    with pytest.raises(SteerlabError, match="at least one layer"):
        contrast(tiny_llama, POS, NEG, [])
    with pytest.raises(SteerlabError, match="out of range"):
        contrast(tiny_llama, POS, NEG, [tiny_llama.n_layers])
    with pytest.raises(SteerlabError, match="unknown position"):
        contrast(tiny_llama, POS, NEG, LAYERS, position="first")


@pytest.mark.parametrize("position", ["last_prompt", "last_prompt_token"])
def test_forced_prefix_refuses_last_prompt_position(tiny_llama: Model, position: str) -> None:
    with pytest.raises(SteerlabError, match="zero direction"):
        forced_prefix(tiny_llama, HARMFUL, LAYERS, position=position)


@pytest.mark.parametrize("position", ["mean_prefix", "first_prefix", "last_prefix"])
def test_forced_prefix_positions(tiny_llama: Model, position: str) -> None:
    # the byte tokenizer makes the default prefixes share their first token (" "), so pick
    # prefixes that differ from the first token on
    v = forced_prefix(tiny_llama, HARMFUL, [2], "No way.", "Sure thing.", position=position).vector
    assert v.extra["position"] == position and v.norm(2) > 0
    assert v.extra["refusal_prefix"] == "No way."


def test_forced_prefix_shared_first_token_is_a_clear_error(tiny_llama: Model) -> None:
    with pytest.raises(SteerlabError, match="exactly zero"):
        forced_prefix(tiny_llama, HARMFUL, [2], " No.", " Yes.", position="first_prefix")


def test_forced_prefix_positions_differ(tiny_llama: Model) -> None:
    def build(position: str) -> torch.Tensor:
        res = forced_prefix(tiny_llama, HARMFUL, [2], "No way.", "Sure thing.", position=position)
        return res.vector.direction(2)

    assert not torch.allclose(build("first_prefix"), build("last_prefix"))
    assert not torch.allclose(build("first_prefix"), build("mean_prefix"))


def test_labeled_sign_swaps_with_the_classes(tiny_llama: Model) -> None:
    ab = labeled(tiny_llama, POS, NEG[:2], LAYERS).vector
    ba = labeled(tiny_llama, NEG[:2], POS, LAYERS).vector
    for layer in LAYERS:
        assert torch.allclose(ba.direction(layer), -ab.direction(layer), atol=1e-6)
        # +vector points from B to A: towards the class-A mean
        mean_a = torch.stack([single(tiny_llama, t, [layer]).vector.direction(layer) for t in POS])
        mean_b = torch.stack(
            [single(tiny_llama, t, [layer]).vector.direction(layer) for t in NEG[:2]]
        )
        assert torch.allclose(ab.direction(layer), mean_a.mean(0) - mean_b.mean(0), atol=1e-5)


def test_labeled_needs_both_classes(tiny_llama: Model) -> None:
    with pytest.raises(SteerlabError, match="each class"):
        labeled(tiny_llama, POS, [], LAYERS)


def test_pca_points_along_the_mean_difference(tiny_llama: Model) -> None:
    p = pca(tiny_llama, POS, NEG, LAYERS).vector
    c = contrast(tiny_llama, POS, NEG, LAYERS).vector
    for layer in LAYERS:
        assert float(p.direction(layer) @ c.direction(layer)) > 0


@pytest.mark.parametrize("center", [False, True])
def test_first_component_sign_is_aligned(center: bool) -> None:
    """SVD's sign is arbitrary; both X and -X must give a component along their own mean."""
    gen = torch.Generator().manual_seed(0)
    for _ in range(20):
        # one dominant axis w, per-example coefficients with a positive mean, a little noise
        w = torch.randn(16, generator=gen)  # (d,)
        coef = torch.randn(8, generator=gen) + 0.5  # (N,)
        base = coef[:, None] * w + 0.05 * torch.randn(8, 16, generator=gen)  # (N, d)
        for diffs in (base, -base):
            pc, ev = first_component(diffs, center)
            assert float(pc @ diffs.mean(0)) > 0
            assert float(pc.norm()) == pytest.approx(1.0, abs=1e-5)
            assert 0 < ev <= 1


def test_pca_needs_two_pairs(tiny_llama: Model) -> None:
    with pytest.raises(SteerlabError, match="at least two pairs"):
        pca(tiny_llama, POS[:1], NEG[:1], LAYERS)


# ----------------------------------------------------------------------------- record


SEQ_TEXTS = ["a", "Hello there, friend", "The cat", "xyz 123 !"]


def _seqs(model: Model) -> list[list[int]]:
    return [model.encode(t) for t in SEQ_TEXTS]


@pytest.mark.parametrize("hook_point", ["resid_pre", "resid_post"])
@pytest.mark.parametrize(
    "positions_of",
    [
        lambda n: [n - 1],
        lambda n: list(range(n)),
        lambda n: [0],
        lambda n: [-1, 0],
    ],
    ids=["last", "mean", "first", "negative-index"],
)
def test_record_batched_equals_alone(
    tiny_llama: Model, hook_point: str, positions_of: Callable[[int], list[int]]
) -> None:
    seqs = _seqs(tiny_llama)
    positions = [positions_of(len(s)) for s in seqs]
    layers = [0, 2, 3]
    batched = record(tiny_llama, seqs, positions, layers, hook_point, batch_size=len(seqs))
    for i, (s, pos) in enumerate(zip(seqs, positions, strict=True)):
        alone = record(tiny_llama, [s], [pos], layers, hook_point)
        for layer in layers:
            assert batched.acts[layer].shape == (len(seqs), tiny_llama.d_model)
            assert torch.allclose(batched.acts[layer][i], alone.acts[layer][0], atol=1e-5)
            assert torch.allclose(batched.norms[layer][i], alone.norms[layer][0], atol=1e-5)


def test_record_matches_hf_hidden_states(tiny_llama: Model) -> None:
    """Against HF's own ``output_hidden_states`` (hidden_states[L] is block L's input)."""
    (s,) = _seqs(tiny_llama)[1:2]
    rec = record(tiny_llama, [s], [list(range(len(s)))], [0, 1, 2], "resid_pre")
    with torch.inference_mode():
        hs = tiny_llama.hf(input_ids=torch.tensor([s]), output_hidden_states=True).hidden_states
    for layer in (0, 1, 2):
        h = hs[layer][0]  # (T, d)
        assert torch.allclose(rec.acts[layer][0], h.mean(0), atol=1e-5)
        assert torch.allclose(rec.norms[layer][0], h.norm(dim=-1).mean(), atol=1e-5)


@pytest.mark.parametrize("layer", [0, 1, 2])
def test_resid_pre_of_next_layer_is_resid_post(tiny_llama: Model, layer: int) -> None:
    seqs = _seqs(tiny_llama)
    positions = [list(range(len(s))) for s in seqs]
    post = record(tiny_llama, seqs, positions, [layer], "resid_post")
    pre = record(tiny_llama, seqs, positions, [layer + 1], "resid_pre")
    assert torch.allclose(pre.acts[layer + 1], post.acts[layer], atol=1e-5)
    assert not torch.allclose(
        pre.acts[layer + 1],
        record(tiny_llama, seqs, positions, [layer], "resid_pre").acts[layer],
        atol=1e-3,
    )


def test_record_errors(tiny_llama: Model) -> None:
    seqs = _seqs(tiny_llama)
    ok_pos = [[0] for _ in seqs]
    cases: list[tuple[dict[str, Any], str]] = [
        ({"hook_point": "mlp"}, "unknown hook site"),
        ({"sequences": []}, "no sequences"),
        ({"positions": ok_pos[:1]}, "differ in length"),
        ({"positions": [[0], [0], [99], [0]]}, "out of range"),
        ({"positions": [[0], [], [0], [0]]}, "out of range"),
        ({"layers": [tiny_llama.n_layers]}, "out of range"),
    ]
    for override, match in cases:
        args: dict[str, Any] = {
            "sequences": seqs,
            "positions": ok_pos,
            "layers": [1],
            "hook_point": "resid_post",
            **override,
        }
        with pytest.raises(SteerlabError, match=match):
            record(tiny_llama, **args)


def test_forced_prefix_matches_hf_hidden_states(tiny_llama: Model) -> None:
    """One prompt, chat-formatted, prefixes teacher-forced: the direction is the difference of
    the prefix-mean hidden states, computed here from HF's ``output_hidden_states``."""
    layer, prompt = 1, HARMFUL[0]
    head = tiny_llama.encode(tiny_llama.format_prompt(prompt))
    assert tiny_llama.decode(head).endswith("assistant:")

    def prefix_mean(prefix: str) -> torch.Tensor:
        ids = tiny_llama.tokenizer(prefix, add_special_tokens=False)["input_ids"]
        with torch.inference_mode():
            out = tiny_llama.hf(input_ids=torch.tensor([head + ids]), output_hidden_states=True)
        return out.hidden_states[layer + 1][0, len(head) :].mean(0)  # resid_post of `layer`

    v = forced_prefix(tiny_llama, [prompt], [layer], "No way.", "Sure thing.").vector
    expected = prefix_mean("No way.") - prefix_mean("Sure thing.")
    assert torch.allclose(v.direction(layer), expected, atol=1e-5)
