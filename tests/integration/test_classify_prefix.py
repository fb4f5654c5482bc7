"""Shared prompt prefixes in logit scoring (steerlab.engine.score_prefix) on tiny random models.

Sharing is an optimization: with it on, every row's label log-probabilities equal those computed
with each row's whole prompt in one forward (to float32 rounding), for every position mode and
kind, rows mixing several interventions, one-token prompts and rows sharing with nobody, small
batches that cut groups across forwards, on every tiny architecture and backend. And it really
shares: a ``last-prompt`` grid feeds each prompt's prefix once and each row one token, counted
by the model's own embedding layer, and no forward runs more than ``batch_size`` rows.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import torch
from tests.conftest import VectorFactory, _load_tiny
from tests.integration.test_classify_logits import BACKENDS, _on_backend

from steerlab.engine.score import LogitScores, answer_margins, next_token_logprobs
from steerlab.interventions import Intervention
from steerlab.models import Model
from steerlab.models.prompting import Prompt

POS, NEG = "vulnerable", "secure"
PREFIX = "System: answer yes or no.\nUser: "
PROMPTS = (
    PREFIX + "Is strcpy(buf, s) safe? Answer:",
    PREFIX + "atoi(arg) Answer:",
    PREFIX + "free(p); free(p); ok?",
    "x",  # one token: no prefix to share
)
MODES = ("last-prompt", "all", "prompt", "window:-3:1", "window:-3:-1", "window:-40:-30")
KINDS = (("add", 4.0), ("ablate", 1.0), ("clamp", 3.0))


def answer_ids(model: Model) -> dict[str, list[int]]:
    return {POS: [model.encode("y")[-1], model.encode("V")[-1]], NEG: [model.encode("n")[-1]]}


def score(
    model: Model,
    prompts: list[str],
    ivs: list[tuple[Intervention, ...]],
    batch_size: int,
    share: bool,
    stats: dict[str, int] | None = None,
) -> LogitScores:
    return answer_margins(
        model,
        prompts,
        answer_ids(model),
        POS,
        NEG,
        ivs,
        batch_size,
        share_prefix=share,
        stats=stats,
    )


def grid(
    model: Model, make_vector: VectorFactory
) -> tuple[list[str], list[tuple[Intervention, ...]]]:
    """Every prompt under: no steering, each kind in each position mode at two layers, and
    rows that combine a prefix-steering intervention with a last-token one (same prefix key,
    different last-token steering) or with another site."""
    v = make_vector(model, seed=3, norm=4.0)
    w = make_vector(model, seed=4, norm=4.0, hook_point="resid_pre")
    mid = model.n_layers // 2
    per_prompt: list[tuple[Intervention, ...]] = [()]
    for kind, alpha in KINDS:
        for mode in MODES:
            for layer in (0, mid):
                iv = Intervention(v, layer, kind, alpha, positions=mode, scale="resid")
                per_prompt.append((iv,))
    whole = Intervention(v, 0, "add", 2.0, positions="all", scale="resid")
    last = Intervention(v, mid, "add", -3.0, positions="last-prompt", scale="resid")
    win = Intervention(w, mid, "add", 2.0, positions="window:-4:-1", scale="resid")
    per_prompt += [(whole,), (whole, last), (last, whole), (win,), (win, last), (last, win)]
    prompts = [p for p in PROMPTS for _ in per_prompt]
    return prompts, per_prompt * len(PROMPTS)


@pytest.mark.parametrize("batch_size", [4, 64])
def test_sharing_gives_the_scores_of_whole_prompts(
    tiny_model: Model, make_vector: VectorFactory, batch_size: int
) -> None:
    prompts, ivs = grid(tiny_model, make_vector)
    stats: dict[str, int] = {}
    on = score(tiny_model, prompts, ivs, batch_size, True, stats)
    off_stats: dict[str, int] = {}
    off = score(tiny_model, prompts, ivs, batch_size, False, off_stats)
    torch.testing.assert_close(on.logp, off.logp, rtol=0, atol=1e-4)
    # not vacuous: rows shared prefixes, steered ones among them (the 'all' pairs, the windows),
    # the steering moved the scores, and sharing off fed every row's whole prompt
    assert stats["shared_rows"] > len(prompts) // 2
    assert stats["shared_prefixes"] > 3 * (len(PROMPTS) - 1)  # not only the unsteered ones
    assert stats["prompt_tokens_computed"] < 0.6 * off_stats["prompt_tokens_computed"]
    assert off_stats["shared_rows"] == 0
    assert off_stats["prompt_tokens_computed"] == off_stats["prompt_tokens"]
    base = on.logp[0]
    n = len(prompts) // len(PROMPTS)
    moved = (on.logp[1:n] - base).abs().amax(-1) > 1e-3
    assert int(moved.sum()) > n // 2
    assert tiny_model.backend.count_hooks() == 0


@contextmanager
def count_fed(model: Model) -> Iterator[dict[str, int]]:
    """Positions (pads included) and rows per call, seen by the model's own embedding layer."""
    seen = {"positions": 0, "max_rows": 0}

    def hook(_m: Any, args: tuple[Any, ...]) -> None:
        ids = args[0]  # (B, S)
        seen["positions"] += ids.numel()
        seen["max_rows"] = max(seen["max_rows"], int(ids.shape[0]))

    handle = model.hf.get_input_embeddings().register_forward_pre_hook(hook)
    try:
        yield seen
    finally:
        handle.remove()


@pytest.mark.parametrize(("positions", "tail"), [("last-prompt", 1), ("window:-3:", 3)])
def test_a_grid_steering_the_prompt_end_feeds_each_prefix_once(
    tiny_llama: Model, make_vector: VectorFactory, positions: str, tail: int
) -> None:
    """``last-prompt`` feeds one token a row; a window over the last three prompt tokens (as
    CAA steers the tokens after the instruction) feeds those three."""
    model = tiny_llama
    texts = [f"{PREFIX}sample {i}: is it safe? Answer:" for i in range(4)]  # one length
    (n_tok,) = {len(model.encode(t)) for t in texts}
    vecs = [make_vector(model, seed=s) for s in range(3)]
    settings: list[tuple[Intervention, ...]] = [()]
    for v in vecs:
        for layer in range(model.n_layers):
            for alpha in (-4.0, 2.0, 8.0):
                settings.append((Intervention(v, layer, "add", alpha, positions=positions),))
    prompts = [t for t in texts for _ in settings]
    ivs = settings * len(texts)
    batch_size = 5
    stats: dict[str, int] = {}
    with count_fed(model) as shared:
        on = score(model, prompts, ivs, batch_size, True, stats)
    with count_fed(model) as whole:
        off = score(model, prompts, ivs, batch_size, False)
    torch.testing.assert_close(on.logp, off.logp, rtol=0, atol=1e-4)
    # each text's prefix once, then the tail per row (equal lengths: no padding anywhere)
    want = len(texts) * (n_tok - tail) + tail * len(prompts)
    assert shared["positions"] == stats["positions_run"] == want
    assert stats["prompt_tokens_computed"] == want
    assert whole["positions"] == len(prompts) * n_tok
    assert stats["shared_prefixes"] == len(texts) and stats["shared_rows"] == len(prompts)
    # memory stays that of a batch: no forward runs more than batch_size rows
    assert shared["max_rows"] <= batch_size and whole["max_rows"] <= batch_size
    assert (on.margin[1:] - on.margin[0]).abs().max() > 1e-2  # the steering mattered


@pytest.mark.parametrize("case", BACKENDS)
def test_backends_share_when_their_cache_comes_apart(
    case: tuple[str, str], make_vector: VectorFactory
) -> None:
    """nnsight and TransformerLens's bridge share prefixes (a Hugging Face cache); the hooked
    TransformerLens model's own cache does not come apart, so it scores every row whole."""
    backend, prefer = case
    if importlib.util.find_spec(backend) is None:
        pytest.skip(f"{backend} is not installed")
    ref = _load_tiny("tiny-llama")
    other = _on_backend("tiny-llama", backend, prefer)
    prompts, ivs = grid(ref, make_vector)
    want = score(ref, prompts, ivs, 7, False)
    stats: dict[str, int] = {}
    got = score(other, prompts, ivs, 7, True, stats)
    torch.testing.assert_close(got.logp, want.logp, rtol=0, atol=1e-4)
    hooked = backend == "transformer_lens" and prefer == "hooked"
    assert (stats["shared_rows"] == 0) == hooked
    assert other.backend.count_hooks() == 0


def test_a_formatted_prompt_keeps_its_own_ids(tiny_llama: Model) -> None:
    """Prompts are tokenized once per distinct prompt; a formatted prompt's safe ids are not
    mixed up with those of the same text given plainly."""
    model = tiny_llama
    safe = Prompt("ab: answer", model.encode("cd: answer"))
    logp = next_token_logprobs(model, [safe, "ab: answer", "cd: answer", safe], batch_size=2)
    torch.testing.assert_close(logp[0], logp[3], rtol=0, atol=1e-5)
    torch.testing.assert_close(logp[0], logp[2], rtol=0, atol=1e-5)
    assert (logp[0] - logp[1]).abs().max() > 1e-3
