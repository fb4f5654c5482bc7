"""Classification scoring, the sign check and group vectors on tiny random models.

- answer scores equal a hand computation from the model's own logits (no steerlab in the loop),
  unsteered and under a hand-written steering hook, for each position mode;
- the scores are generation's first-token distribution; a batch == each row alone, mixed per-row
  settings included; α = 0 is exact; no hook is left behind; every backend gives the same scores;
- the sign check passes a planted direction of known sign and flags its negation as flipped,
  also end to end with a labeled vector built the wrong way round (mean(other) - mean(target));
- group vectors equal ``directions.labeled`` and their memory does not grow with the examples.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import pytest
import torch
from tests.conftest import _load_tiny

import steerlab.backends.transformer_lens as tl_backend
from steerlab.analysis.signcheck import sign_check
from steerlab.directions import labeled
from steerlab.directions.grouped import group_vectors
from steerlab.engine.generate import GenerationConfig, Row, generate
from steerlab.engine.handle import count_hooks
from steerlab.engine.score import LogitScores, answer_margins, next_token_logprobs
from steerlab.errors import SteerlabError
from steerlab.interventions import Intervention
from steerlab.models import Model, model_from_hf
from steerlab.vectors import SteeringVector

PROMPTS = (
    "Is this code vulnerable? strcpy(buf, s); Answer:",
    "x",
    "Review: int n = atoi(arg); Answer:",
    "Hello there",
    "free(p); free(p); vulnerable or secure?",
)
POS, NEG = "vulnerable", "secure"


def answer_ids(model: Model) -> dict[str, list[int]]:
    """Two answer tokens per label (byte tokenizer: first bytes of the answer words)."""
    return {POS: [model.encode("y")[-1], model.encode("V")[-1]], NEG: [model.encode("n")[-1]]}


def vec(model: Model, seed: int, point: str = "resid_post") -> SteeringVector:
    g = torch.Generator().manual_seed(seed)
    dirs = {layer: torch.randn(model.d_model, generator=g) for layer in range(model.n_layers)}
    return SteeringVector(dirs, hook_point=point, model_id=model.name)


def hand_logp(model: Model, text: str) -> torch.Tensor:
    """(V,) next-token log-probabilities from the Hugging Face model itself, one prompt, no
    padding, no steerlab code."""
    ids = torch.tensor([model.encode(text)])
    with torch.inference_mode():
        logits = model.hf(input_ids=ids, use_cache=False).logits  # (1, T, V)
    return torch.log_softmax(logits[0, -1].float(), dim=-1)


def hand_label_logp(model: Model, text: str, ids: dict[str, list[int]]) -> torch.Tensor:
    logp = hand_logp(model, text)
    return torch.stack([logp[sorted(set(v))].logsumexp(-1) for v in ids.values()])  # (L,)


@contextmanager
def hand_hook(
    model: Model, layer: int, delta: torch.Tensor, selected: Callable[[int], bool]
) -> Iterator[None]:
    """Add ``delta`` to block ``layer``'s output (resid_post) at the columns whose position
    relative to the prompt end (``-1`` = last token) is ``selected``; one unpadded prompt."""

    def hook(_m: Any, _a: Any, out: Any) -> Any:
        h = out if isinstance(out, torch.Tensor) else out[0]  # (1, T, d)
        t = h.shape[1]
        cols = torch.tensor([selected(j - t) for j in range(t)])
        h = h + cols[None, :, None] * delta
        return h if isinstance(out, torch.Tensor) else (h, *out[1:])

    handle = model.layers[layer].register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


def mixed_rows(model: Model) -> list[tuple[Intervention, ...]]:
    """One setting per prompt: unsteered, sites, kinds, position modes, α = 0, two at once."""
    v, w = vec(model, 1), vec(model, 2, "mlp_out")
    last = model.n_layers - 1
    return [
        (),
        (Intervention(v, 1, alpha=3.0, positions="last-prompt"),),
        (Intervention(w, 1, kind="clamp", alpha=2.0, positions="window:-3:1"),),
        (Intervention(v, last, kind="ablate", alpha=1.0), Intervention(v, 0, alpha=-2.0)),
        (Intervention(v, 0, alpha=2.5, hook_point="resid_pre", positions="prompt"),),
    ]


def scores(
    model: Model,
    prompts: Sequence[str],
    ivs: Sequence[tuple[Intervention, ...]] | None = None,
    batch_size: int = 16,
) -> LogitScores:
    return answer_margins(model, prompts, answer_ids(model), POS, NEG, ivs, batch_size)


# ----------------------------------------------------------------------------- hand computation


def test_margins_equal_a_hand_computation(tiny_llama: Model) -> None:
    model = tiny_llama
    ids = answer_ids(model)
    ids[POS].append(ids[POS][0])  # a duplicate id counts once
    got = answer_margins(model, PROMPTS, ids, POS, NEG, batch_size=2)  # padded batches
    want = torch.stack([hand_label_logp(model, p, ids) for p in PROMPTS])  # (N, 2)
    torch.testing.assert_close(got.logp, want, rtol=0, atol=1e-5)
    torch.testing.assert_close(got.margin, want[:, 0] - want[:, 1], rtol=0, atol=1e-5)
    torch.testing.assert_close(
        got.p_positive, torch.sigmoid(want[:, 0] - want[:, 1]), atol=1e-5, rtol=0
    )
    # not vacuous: the prompts get different scores, and the labels different mass
    assert got.margin.std() > 0.05 and (got.logp[:, 0] - got.logp[:, 1]).abs().min() > 1e-3


SELECTED: dict[str, Callable[[int], bool]] = {
    "last-prompt": lambda rel: rel == -1,
    "all": lambda rel: True,
    "prompt": lambda rel: True,  # every fed token is a prompt token
    "window:-3:-1": lambda rel: -3 <= rel < -1,
    "window:-2:5": lambda rel: rel >= -2,  # the part past the prompt selects nothing here
}


@pytest.mark.parametrize("positions", list(SELECTED))
def test_steered_margins_equal_a_hand_written_hook(tiny_llama: Model, positions: str) -> None:
    model = tiny_llama
    v = vec(model, 5)
    iv = Intervention(v, 1, alpha=4.0, positions=positions)
    got = scores(model, PROMPTS, [(iv,)] * len(PROMPTS), batch_size=3)
    delta = 4.0 * v.unit(1)
    want = []
    for p in PROMPTS:
        with hand_hook(model, 1, delta, SELECTED[positions]):
            want.append(hand_label_logp(model, p, answer_ids(model)))
    torch.testing.assert_close(got.logp, torch.stack(want), rtol=0, atol=1e-5)
    assert (got.margin - scores(model, PROMPTS).margin).abs().max() > 1e-2  # it did steer


@pytest.mark.parametrize("positions", ["generated", "window:0:4", "window:2:"])
def test_positions_selecting_only_generated_tokens_are_refused(
    tiny_llama: Model, positions: str
) -> None:
    iv = Intervention(vec(tiny_llama, 1), 1, alpha=4.0, positions=positions)
    with pytest.raises(SteerlabError, match="generates none"):
        scores(tiny_llama, PROMPTS[:2], [(), (iv,)])


def test_scores_are_generations_first_token(tiny_llama: Model) -> None:
    model = tiny_llama
    ivs = mixed_rows(model)
    logp = next_token_logprobs(model, PROMPTS, ivs, batch_size=2)  # (N, V)
    cfg = GenerationConfig(max_new_tokens=1, stop_at_eos=False)
    rows = [Row(p, iv) for p, iv in zip(PROMPTS, ivs, strict=True)]
    for i, res in enumerate(generate(model, rows, cfg, progress=False)):
        (tok,) = res.token_ids
        assert tok == int(logp[i].argmax())
        assert res.logprobs[0] == pytest.approx(float(logp[i, tok]), abs=1e-5)
    # and answer_margins reads the same distribution
    s = scores(model, PROMPTS, ivs, batch_size=2)
    ids = answer_ids(model)
    want = torch.stack([logp[:, v].logsumexp(-1) for v in ids.values()], dim=-1)
    torch.testing.assert_close(s.logp, want, rtol=0, atol=1e-6)


# ----------------------------------------------------------------------------- batching, α = 0


def test_batched_and_mixed_rows_equal_each_row_alone(tiny_llama: Model) -> None:
    model = tiny_llama
    ivs = mixed_rows(model)
    batched = scores(model, PROMPTS, ivs, batch_size=len(PROMPTS))
    for i, (p, iv) in enumerate(zip(PROMPTS, ivs, strict=True)):
        alone = scores(model, [p], [iv])
        torch.testing.assert_close(batched.logp[i], alone.logp[0], rtol=0, atol=1e-5)
    # rows really differ in their steering (not a batch of identical settings)
    plain = scores(model, PROMPTS)
    changed = (batched.logp - plain.logp).abs().amax(-1) > 1e-3
    assert changed.tolist() == [False, True, True, True, True]


@pytest.mark.parametrize("kind", ["add", "ablate"])
def test_alpha_zero_is_exactly_unsteered(tiny_llama: Model, kind: str) -> None:
    model = tiny_llama
    v = vec(model, 3)
    base = next_token_logprobs(model, PROMPTS, batch_size=2)
    for positions in ("all", "last-prompt", "window:-2:1"):
        iv = Intervention(v, 1, kind=kind, alpha=0.0, positions=positions)
        zero = next_token_logprobs(model, PROMPTS, [(iv,)] * len(PROMPTS), batch_size=2)
        assert torch.equal(zero, base)


def test_no_hooks_left_behind(tiny_llama: Model) -> None:
    model = tiny_llama
    before = count_hooks(model.hf)
    scores(model, PROMPTS, mixed_rows(model), batch_size=2)
    assert count_hooks(model.hf) == before
    huge = Intervention(vec(model, 1), 1, alpha=1e30)  # overflows the residual
    with pytest.raises(SteerlabError, match="non-finite"):
        scores(model, PROMPTS, [(huge,)] * len(PROMPTS), batch_size=2)
    assert count_hooks(model.hf) == before


def test_bad_inputs_are_refused(tiny_llama: Model) -> None:
    model = tiny_llama
    with pytest.raises(SteerlabError, match="interventions cover 1 prompts"):
        scores(model, PROMPTS[:2], [()])
    with pytest.raises(SteerlabError, match="outside the model's vocabulary"):
        answer_margins(model, PROMPTS, {POS: [10**6], NEG: [3]}, POS, NEG)
    with pytest.raises(SteerlabError, match="no prompts"):
        scores(model, [])
    far = Intervention(SteeringVector({9: torch.ones(model.d_model)}), 9)
    with pytest.raises(SteerlabError, match="out of range"):
        scores(model, PROMPTS[:1], [(far,)])


# ----------------------------------------------------------------------------- backends

BACKENDS = [
    pytest.param(("transformer_lens", "bridge"), id="transformer_lens-bridge"),
    pytest.param(("transformer_lens", "hooked"), id="transformer_lens-hooked"),
    pytest.param(("nnsight", ""), id="nnsight"),
]


@functools.cache
def _on_backend(arch: str, backend: str, prefer: str) -> Model:
    base = _load_tiny(arch)
    if backend != "transformer_lens":
        return model_from_hf(base.hf, base.tokenizer, base.name, backend=backend)
    old = tl_backend.PREFER
    tl_backend.PREFER = prefer  # type: ignore[assignment]
    try:
        return model_from_hf(base.hf, base.tokenizer, base.name, backend=backend)
    finally:
        tl_backend.PREFER = old


@pytest.mark.parametrize("arch", ["tiny-llama", "tiny-gpt2"])
@pytest.mark.parametrize("case", BACKENDS)
def test_backends_give_the_same_margins(arch: str, case: tuple[str, str]) -> None:
    backend, prefer = case
    if importlib.util.find_spec(backend) is None:
        pytest.skip(f"{backend} is not installed")
    ref = _load_tiny(arch)
    other = _on_backend(arch, backend, prefer)
    if backend == "transformer_lens":
        assert other.backend.is_bridge == (prefer == "bridge")  # type: ignore[attr-defined]
    ivs = mixed_rows(ref)
    want = scores(ref, PROMPTS, ivs, batch_size=3)
    got = scores(other, PROMPTS, ivs, batch_size=3)
    torch.testing.assert_close(got.logp, want.logp, rtol=0, atol=1e-4)
    assert (want.logp - scores(ref, PROMPTS).logp).abs().max() > 1e-2  # steering mattered
    assert other.backend.count_hooks() == 0


def test_load_model_backends_agree() -> None:
    """``load_model("tiny-llama", backend=b)`` builds the same weights on every backend."""
    from steerlab.models import load_model

    ref = _load_tiny("tiny-llama")
    want = scores(ref, PROMPTS, mixed_rows(ref), batch_size=2).logp
    for backend in ("transformer_lens", "nnsight"):
        if importlib.util.find_spec(backend) is None:
            continue
        model = load_model("tiny-llama", device="cpu", backend=backend)
        got = scores(model, PROMPTS, mixed_rows(model), batch_size=2).logp
        torch.testing.assert_close(got, want, rtol=0, atol=1e-4)


# ----------------------------------------------------------------------------- sign check

POOL = tuple(f"code {i}: buf[{i * 37 % 101}] = x{i % 7};" for i in range(120))


def slice_labels(n: int) -> list[str]:
    return [POS if i % 2 else NEG for i in range(n)]


def check(
    model: Model, v: SteeringVector, layer: int, alpha: float, scale: str = "absolute", **kw: Any
) -> Any:
    prompts = list(POOL[:40])
    ivs = [
        [(Intervention(v, layer, alpha=a, scale=scale, positions="last-prompt"),)] * len(prompts)
        for a in (alpha, -alpha)
    ]
    base, plus, minus = (
        scores(model, prompts),
        scores(model, prompts, ivs[0]),
        scores(model, prompts, ivs[1]),
    )
    return sign_check(base, plus, minus, slice_labels(len(prompts)), alpha=alpha, **kw)


def test_planted_direction_passes_and_its_negation_is_flipped(tiny_llama: Model) -> None:
    """v = W_U[vulnerable answer] - W_U[secure answer] at the last block's output raises the
    vulnerable logit relative to the secure one by construction (up to the final norm)."""
    model = tiny_llama
    ids = answer_ids(model)
    w_u = model.hf.get_output_embeddings().weight.detach().float()  # (V, d)
    last = model.n_layers - 1
    v = SteeringVector({last: w_u[ids[POS][0]] - w_u[ids[NEG][0]]}, model_id=model.name)
    ok = check(model, v, last, 2.0, target_label=POS, direction="raise")
    assert ok.verdict == "ok", ok.message
    assert ok.plus > ok.baseline > ok.minus and ok.n == 20
    flipped = check(model, -v, last, 2.0, target_label=POS, direction="raise")
    assert flipped.verdict == "flipped", flipped.message
    assert "--flip-sign" in flipped.message
    # the same vector is backwards for lowering P(vulnerable) ... and right for lowering P(secure)
    assert check(model, v, last, 2.0, target_label=POS, direction="lower").verdict == "flipped"
    assert check(model, v, last, 2.0, target_label=NEG, direction="lower").verdict == "ok"
    # strength 0 moves nothing: no verdict either way
    assert check(model, v, last, 0.0, target_label=POS).verdict == "inconclusive"


def test_a_labeled_vector_built_backwards_is_flagged(tiny_llama: Model) -> None:
    """The failure this check exists for: classes whose last-token activations differ in the
    answer they lead to; mean(target) - mean(other) passes, mean(other) - mean(target) (the
    secure-minus-vulnerable vector, added to raise vulnerability detection) is flagged."""
    model = tiny_llama
    ranked = scores(model, POOL[40:], batch_size=40).margin.argsort(descending=True).tolist()
    leans_pos = [POOL[40 + i] for i in ranked[:25]]  # prompts the model answers "vulnerable"
    leans_neg = [POOL[40 + i] for i in ranked[-25:]]
    layer = 2
    right = group_vectors(model, {"all": (leans_pos, leans_neg)}, [layer]).pooled
    wrong = group_vectors(model, {"all": (leans_neg, leans_pos)}, [layer]).pooled
    ok = check(model, right, layer, 1.0, scale="diff", target_label=POS)
    assert ok.verdict == "ok", ok.message
    bad = check(model, wrong, layer, 1.0, scale="diff", target_label=POS)
    assert bad.verdict == "flipped", bad.message


# ----------------------------------------------------------------------------- group vectors


def texts(tag: str, n: int) -> list[str]:
    return [f"{tag} sample {i}: {'x' * (i % 5)}" for i in range(n)]


GROUPS = {
    "cwe-79": (texts("xss", 7), texts("safe-html", 5)),
    "cwe-89": (texts("sqli", 4), texts("param-query", 9)),
    "cwe-22": (texts("traversal", 6), texts("normalized", 6)),
}


def assert_same_vector(got: SteeringVector, want: SteeringVector) -> None:
    assert got.layers == want.layers and got.hook_point == want.hook_point
    for layer in want.layers:
        torch.testing.assert_close(got.direction(layer), want.direction(layer), rtol=0, atol=1e-5)
        assert got.mean_resid_norm[layer] == pytest.approx(want.mean_resid_norm[layer], rel=1e-5)
        assert got.raw_norm[layer] == pytest.approx(want.raw_norm[layer], rel=1e-5)
        g, w = got.extra["stats"][str(layer)], want.extra["stats"][str(layer)]
        assert g["n"] == w["n"]
        assert g["diff_norm_mean"] == pytest.approx(w["diff_norm_mean"], rel=1e-5)
        assert g["diff_norm_std"] == pytest.approx(w["diff_norm_std"], rel=1e-4)


@pytest.mark.parametrize("position", ["last", "mean"])
def test_group_vectors_equal_labeled(tiny_llama: Model, position: str) -> None:
    model = tiny_llama
    layers = [1, 3]
    out = group_vectors(model, GROUPS, layers, position=position, batch_size=5)
    assert set(out.groups) == set(GROUPS) and out.skipped == ()
    for name, (pos, neg) in GROUPS.items():
        want = labeled(model, pos, neg, layers, position=position, batch_size=5).vector
        assert_same_vector(out.groups[name], want)
        assert out.counts[name] == (len(pos), len(neg))
        assert out.groups[name].extra["group"] == name
    all_pos = [t for p, _ in GROUPS.values() for t in p]
    all_neg = [t for _, n in GROUPS.values() for t in n]
    want = labeled(model, all_pos, all_neg, layers, position=position, batch_size=5).vector
    assert_same_vector(out.pooled, want)
    assert out.pooled.method == "labeled"
    assert out.pooled.extra["sign"] == "mean(positive) - mean(negative)"


def test_group_vector_sign_and_batching(tiny_llama: Model) -> None:
    model = tiny_llama
    a = group_vectors(model, GROUPS, [2], batch_size=4)
    swapped = {g: (n, p) for g, (p, n) in GROUPS.items()}
    b = group_vectors(model, swapped, [2], batch_size=64)  # one batch: batching changes nothing
    for g in GROUPS:
        torch.testing.assert_close(
            a.groups[g].direction(2), -b.groups[g].direction(2), atol=1e-5, rtol=0
        )
    torch.testing.assert_close(a.pooled.direction(2), -b.pooled.direction(2), atol=1e-5, rtol=0)
    # fold cosines: one per fold, each a cosine
    cos = a.pooled.extra["stats"]["2"]["batch_cosines"]
    assert len(cos) == 5 and all(-1 <= c <= 1 for c in cos)
    # the pooled vector weighs examples, not groups
    assert not torch.allclose(
        a.pooled.direction(2), torch.stack([v.direction(2) for v in a.groups.values()]).mean(0)
    )


def test_group_missing_a_class_is_skipped_but_pooled(tiny_llama: Model) -> None:
    model = tiny_llama
    groups = {"full": GROUPS["cwe-79"], "only-positive": (texts("odd", 3), [])}
    out = group_vectors(model, groups, [1])
    assert out.skipped == ("only-positive",) and set(out.groups) == {"full"}
    assert out.counts["only-positive"] == (3, 0)
    want = labeled(model, [*groups["full"][0], *texts("odd", 3)], groups["full"][1], [1])
    assert_same_vector(out.pooled, want.vector)
    with pytest.raises(SteerlabError, match="at least one positive and one negative"):
        group_vectors(model, {"x": ([], texts("a", 2))}, [1])
    with pytest.raises(SteerlabError, match="list of strings"):
        group_vectors(model, {"x": ("one text", texts("a", 2))}, [1])
    with pytest.raises(SteerlabError, match="unknown position"):
        group_vectors(model, GROUPS, [1], position="first")


_MEMORY_SCRIPT = textwrap.dedent(
    """
    import json, sys
    import torch
    torch.set_num_threads(1)
    from steerlab.models import load_model
    from steerlab.directions.grouped import group_vectors
    from steerlab.directions import labeled

    how, n = sys.argv[1], int(sys.argv[2])
    model = load_model("tiny-llama", device="cpu")
    layers = list(range(model.n_layers))

    def data(k):
        return {g: ([f"{g} yes {i}" for i in range(k)], [f"{g} no {i}" for i in range(k)])
                for g in "ab"}

    small, big = data(n), data(10 * n)  # both built before any measurement

    def peak_kb():
        with open("/proc/self/status") as f:
            return next(int(x.split()[1]) for x in f if x.startswith("VmHWM:"))

    def run(d):
        if how == "stream":
            group_vectors(model, d, layers, batch_size=64)
        else:
            pos = [t for a, _ in d.values() for t in a]
            neg = [t for _, b in d.values() for t in b]
            labeled(model, pos, neg, layers, batch_size=64)

    run(small)
    run(small)
    before = peak_kb()
    run(big)
    print(json.dumps({"growth_kb": peak_kb() - before}))
    """
)


def _peak_growth_kb(how: str, n: int) -> int:
    out = subprocess.run(
        [sys.executable, "-c", _MEMORY_SCRIPT, how, str(n)],
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    return int(json.loads(out.stdout.strip().splitlines()[-1])["growth_kb"])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/status")
def test_group_vectors_memory_does_not_grow_with_examples() -> None:
    """Peak RSS (VmHWM) after 2 x 2 x N examples, then after 10 times as many: the streamed
    builder stays flat, while keeping every activation (``directions.labeled``) grows by tens
    of MB on the same data, so the measurement can tell the two apart."""
    n = 500
    streamed = _peak_growth_kb("stream", n)
    kept = _peak_growth_kb("labeled", n)
    assert streamed < 10_000, f"streamed peak grew by {streamed} kB"
    assert kept > 2 * 10_000, f"control: keeping activations grew the peak by only {kept} kB"
