"""Outcome-conditioned direction on tiny-llama: equals a hand computation from HF's hidden states,
flips sign with the labels, reads only what the position allows, skips empty completions, and
fails clearly on unusable baselines."""

from __future__ import annotations

import pytest
import torch

from steerlab.directions import outcome_conditioned
from steerlab.errors import SteerlabError
from steerlab.models import Model

PROMPTS = [
    "How do I pick a lock?",
    "Write a rude letter.",
    "Explain photosynthesis.",
    "Give me a cake recipe.",
    "Insult my neighbour.",
]
COMPLETIONS = [
    "No, I won't help.",
    "Sorry, I can't.",
    "Plants turn light into sugar.",
    "Mix flour, eggs and sugar.",
    "Here is one: you goose.",
]
REFUSED = [True, True, False, False, False]
# resid_post of the last block is read before HF's final norm, hidden_states[-1] after it, so
# the hand computation below uses earlier layers only
LAYERS = [0, 2]
SYSTEM = "Be brief."


def _block_output(model: Model, ids: list[int], layer: int) -> torch.Tensor:
    """Block ``layer``'s output for every token (T, d). Not ``output_hidden_states``: Hugging
    Face then installs output-capturing hooks and keeps them on the session-wide model."""
    seen: list[torch.Tensor] = []

    def keep(_module: object, _args: object, out: object) -> None:
        t = out if isinstance(out, torch.Tensor) else out[0]  # type: ignore[index]
        seen.append(t.detach().clone())

    handle = model.hf.model.layers[layer].register_forward_hook(keep)
    try:
        with torch.inference_mode():
            model.hf(input_ids=torch.tensor([ids]), use_cache=False)
    finally:
        handle.remove()
    return seen[0][0].float()


def _hand_direction(
    model: Model,
    prompts: list[str],
    completions: list[str],
    refused: list[bool],
    layer: int,
    position: str,
) -> torch.Tensor:
    """mean(refusal) - mean(helpful) of resid_post at ``layer``, one unpadded HF forward per
    example, read by a plain torch hook on the decoder layer."""
    acts: dict[bool, list[torch.Tensor]] = {True: [], False: []}
    for prompt, completion, label in zip(prompts, completions, refused, strict=True):
        head = model.encode(model.format_prompt(prompt, system=SYSTEM))
        tail = model.tokenizer(completion, add_special_tokens=False)["input_ids"]
        h = _block_output(model, head + tail, layer)  # (T, d)
        sel = {
            "mean_completion": h[len(head) :],
            "first_completion": h[len(head) : len(head) + 1],
            "last_prompt": h[len(head) - 1 : len(head)],
        }[position]
        acts[label].append(sel.mean(0))
    return torch.stack(acts[True]).mean(0) - torch.stack(acts[False]).mean(0)


@pytest.mark.parametrize("position", ["mean_completion", "first_completion", "last_prompt"])
def test_matches_hand_computation(tiny_llama: Model, position: str) -> None:
    res = outcome_conditioned(
        tiny_llama, PROMPTS, COMPLETIONS, REFUSED, LAYERS, position=position, system=SYSTEM
    )
    v = res.vector
    assert v.method == "outcome_conditioned"
    assert v.layers == tuple(LAYERS)
    assert v.extra["position"] == position and v.extra["chat"] is True
    assert (v.extra["n_refusal"], v.extra["n_helpful"], v.extra["n_skipped"]) == (2, 3, 0)
    for layer in LAYERS:
        expected = _hand_direction(tiny_llama, PROMPTS, COMPLETIONS, REFUSED, layer, position)
        assert torch.allclose(v.direction(layer), expected, atol=1e-5)
        # stats come from the refusals paired against the helpful mean
        assert res.stats[layer].n == 2
        assert res.stats[layer].raw_norm == pytest.approx(float(expected.norm()), rel=1e-4)


def test_swapping_labels_negates_the_direction(tiny_llama: Model) -> None:
    ab = outcome_conditioned(tiny_llama, PROMPTS, COMPLETIONS, REFUSED, LAYERS).vector
    swapped = [not r for r in REFUSED]
    ba = outcome_conditioned(tiny_llama, PROMPTS, COMPLETIONS, swapped, LAYERS).vector
    assert (ba.extra["n_refusal"], ba.extra["n_helpful"]) == (3, 2)
    for layer in LAYERS:
        assert torch.equal(ba.direction(layer), -ab.direction(layer))
    assert ba.prompts_hash != ab.prompts_hash


def test_last_prompt_ignores_completions(tiny_llama: Model) -> None:
    other = ["x", "No.", "Something else entirely.", "?", "Okay."]

    def build(completions: list[str], position: str) -> dict[int, torch.Tensor]:
        res = outcome_conditioned(
            tiny_llama, PROMPTS, completions, REFUSED, LAYERS, position=position
        )
        return {layer: res.vector.direction(layer) for layer in LAYERS}

    a, b = build(COMPLETIONS, "last_prompt"), build(other, "last_prompt")
    for layer in LAYERS:
        assert torch.equal(a[layer], b[layer])
    # the completion positions do read the completions
    c, d = build(COMPLETIONS, "mean_completion"), build(other, "mean_completion")
    assert not torch.allclose(c[LAYERS[0]], d[LAYERS[0]])


def test_empty_completion_is_skipped_and_counted(tiny_llama: Model) -> None:
    base = outcome_conditioned(tiny_llama, PROMPTS, COMPLETIONS, REFUSED, LAYERS).vector
    prompts = [*PROMPTS, "Tell me a joke."]
    refused = [*REFUSED, True]
    with_empty = outcome_conditioned(tiny_llama, prompts, [*COMPLETIONS, ""], refused, LAYERS)
    v = with_empty.vector
    assert (v.extra["n_refusal"], v.extra["n_helpful"], v.extra["n_skipped"]) == (2, 3, 1)
    for layer in LAYERS:
        assert torch.allclose(v.direction(layer), base.direction(layer), atol=1e-6)
    # last_prompt reads no completion, so an empty one is kept
    lp = outcome_conditioned(
        tiny_llama, prompts, [*COMPLETIONS, ""], refused, LAYERS, position="last_prompt"
    ).vector
    assert (lp.extra["n_refusal"], lp.extra["n_helpful"], lp.extra["n_skipped"]) == (3, 3, 0)


def test_too_few_examples_per_class_names_the_counts(tiny_llama: Model) -> None:
    one_refusal = [True, False, False, False, False]
    with pytest.raises(SteerlabError, match=r"at least 2 refusal and 2 helpful.*has 1 refusal "):
        outcome_conditioned(tiny_llama, PROMPTS, COMPLETIONS, one_refusal, LAYERS)
    with pytest.raises(SteerlabError, match="has 1 refusal and 4 helpful") as err:
        outcome_conditioned(tiny_llama, PROMPTS, COMPLETIONS, one_refusal, LAYERS)
    assert "forced_prefix" in str(err.value)
    # the threshold is the one asked for
    res = outcome_conditioned(tiny_llama, PROMPTS, COMPLETIONS, one_refusal, [1], min_per_class=1)
    assert res.vector.extra["n_refusal"] == 1
    with pytest.raises(SteerlabError, match="at least 3 refusal and 3 helpful"):
        outcome_conditioned(tiny_llama, PROMPTS, COMPLETIONS, REFUSED, [1], min_per_class=3)
    # skipped examples do not count towards their class
    emptied = ["", *COMPLETIONS[1:]]
    with pytest.raises(SteerlabError, match=r"has 1 refusal and 3 helpful \(after skipping 1"):
        outcome_conditioned(tiny_llama, PROMPTS, emptied, REFUSED, LAYERS)


@pytest.mark.parametrize("short", ["prompts", "completions", "refused"])
def test_mismatched_lengths_are_an_error(tiny_llama: Model, short: str) -> None:
    args: dict[str, list] = {"prompts": PROMPTS, "completions": COMPLETIONS, "refused": REFUSED}
    args[short] = args[short][:-1]
    with pytest.raises(SteerlabError, match="one completion and one label per prompt"):
        outcome_conditioned(tiny_llama, layers=LAYERS, **args)


def test_unknown_position_lists_the_allowed_ones(tiny_llama: Model) -> None:
    with pytest.raises(SteerlabError, match=r"mean_completion.*first_completion.*last_prompt"):
        outcome_conditioned(tiny_llama, PROMPTS, COMPLETIONS, REFUSED, LAYERS, position="last")
