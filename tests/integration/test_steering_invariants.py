"""The steering invariants, checked on tiny random models.

- α = 0 is exactly the unsteered model (logits and greedy text);
- the hidden state after the hook is exactly the documented algebra at exactly the selected
  positions, and unchanged elsewhere (pads included);
- KV-cached decoding == uncached decoding; a left-padded batch == each row alone (greedy and
  seeded sampling, every architecture, mixed per-row settings);
- a large α does change the output (so none of the above passes vacuously);
- no hook is left on the model after normal exit, an exception, or a failing ``generate``;
- positions survive the KV cache feeding one token at a time, also under HF ``generate``.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import pytest
import torch

from steerlab.engine.generate import GenerationConfig, Row, RowResult, generate
from steerlab.engine.handle import count_hooks, steering
from steerlab.interventions import Intervention
from steerlab.models import Model

PROMPTS = ("Hey!", "Hello there", "The cat sat on a mat")
MODES = ("all", "prompt", "last-prompt", "generated", "window:-2:1")
HOOK_POINTS = ("resid_pre", "resid_post")
N_NEW = 10
GREEDY = GenerationConfig(max_new_tokens=N_NEW)
SAMPLING = GenerationConfig(max_new_tokens=N_NEW, temperature=0.8, top_p=0.9)
# Which relative positions each mode selects, written out independently of Window.
SELECTS: dict[str, Callable[[int], bool]] = {
    "all": lambda rel: True,
    "prompt": lambda rel: rel < 0,
    "last-prompt": lambda rel: rel == -1,
    "generated": lambda rel: rel >= 0,
    "window:-2:1": lambda rel: -2 <= rel < 1,
}


# ----------------------------------------------------------------------------- helpers


def left_pad(model: Model, texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """``(ids, mask)`` (B, W), left-padded with the pad token."""
    seqs = [model.encode(t) for t in texts]
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), model.pad_token_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for r, s in enumerate(seqs):
        ids[r, width - len(s) :] = torch.tensor(s)
        mask[r, width - len(s) :] = 1
    return ids.to(model.device), mask.to(model.device)


def forward_logits(model: Model, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    with torch.inference_mode():
        return model.hf(
            input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=False
        ).logits  # (B, W, V)


@contextlib.contextmanager
def capture(model: Model, layer: int, point: str, sink: list[torch.Tensor]) -> Iterator[None]:
    """Record the residual at (layer, point) as the block sees it (resid_pre) or returns it
    (resid_post). Registered after steering's own hook, so it sees the steered tensor."""
    module = model.layers[layer]
    if point == "resid_post":

        def post(_m: Any, _a: Any, out: Any) -> None:
            sink.append((out if isinstance(out, torch.Tensor) else out[0]).detach().clone())

        handle = module.register_forward_hook(post)
    else:

        def pre(_m: Any, args: Any, kwargs: dict) -> None:
            h = kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]
            sink.append(h.detach().clone())

        handle = module.register_forward_pre_hook(pre, with_kwargs=True)
    try:
        yield
    finally:
        handle.remove()


def expected_selection(mask: torch.Tensor, prompt_lens: torch.Tensor, mode: str) -> torch.Tensor:
    """(B, W) bool: which columns ``mode`` steers, from first principles (pads never)."""
    b, w = mask.shape
    sel = torch.zeros(b, w, dtype=torch.bool, device=mask.device)
    for r in range(b):
        n = int(mask[r].sum())
        for j in range(w - n, w):
            rel = (j - (w - n)) - int(prompt_lens[r])
            sel[r, j] = SELECTS[mode](rel)
    return sel


def gen(model: Model, rows: Sequence[Row], cfg: GenerationConfig = GREEDY) -> list[RowResult]:
    return generate(model, rows, cfg, progress=False)


def assert_same_result(a: RowResult, b: RowResult, what: str = "") -> None:
    assert a.token_ids == b.token_ids, what
    assert a.logprobs == pytest.approx(b.logprobs, abs=1e-4), what
    assert a.finish_reason == b.finish_reason, what


def differs(a: RowResult, b: RowResult) -> bool:
    """Outputs differ in tokens, or (same tokens) in some log-probability beyond noise."""
    if a.token_ids != b.token_ids:
        return True
    return any(abs(x - y) > 1e-3 for x, y in zip(a.logprobs, b.logprobs, strict=True))


def until_eos(ids: Sequence[int], eos: Sequence[int]) -> list[int]:
    out = []
    for t in ids:
        if t in eos:
            break
        out.append(int(t))
    return out


# ----------------------------------------------------------------------------- α = 0


@pytest.mark.parametrize("point", HOOK_POINTS)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("kind", ["add", "ablate"])
def test_alpha_zero_is_exactly_baseline(
    tiny_llama: Model, make_vector: Callable, kind: str, mode: str, point: str
) -> None:
    model = tiny_llama
    v = make_vector(model, seed=1)
    iv = Intervention(v, layer=1, kind=kind, alpha=0.0, positions=mode, hook_point=point)
    ids, mask = left_pad(model, PROMPTS)
    base = forward_logits(model, ids, mask)
    # the last 3 tokens count as generated, so every mode selects something
    with steering(model, [iv], prompt_lens=mask.sum(-1) - 3):
        steered = forward_logits(model, ids, mask)
    with steering(model, [iv]):  # prompt lengths inferred from the mask
        inferred = forward_logits(model, ids, mask)
    assert torch.equal(steered, base)
    assert torch.equal(inferred, base)

    base_gen = gen(model, [Row(p) for p in PROMPTS])
    steered_gen = gen(model, [Row(p, (iv,)) for p in PROMPTS])
    for b, s in zip(base_gen, steered_gen, strict=True):
        assert s.text == b.text
        assert s.token_ids == b.token_ids
        assert s.logprobs == b.logprobs


# ----------------------------------------------------------------------------- algebra


ALGEBRA_CASES = [
    ("add", 3.0, "diff"),
    ("add", -0.5, "resid"),
    ("ablate", 1.0, "absolute"),
    ("clamp", 2.0, "resid"),
    ("clamp", 0.0, "diff"),  # α = 0 clamp is not baseline: it zeroes the projection
]


@pytest.mark.parametrize("point", HOOK_POINTS)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize(("kind", "alpha", "scale"), ALGEBRA_CASES)
def test_hidden_state_algebra_at_selected_positions(
    tiny_llama: Model,
    make_vector: Callable,
    kind: str,
    alpha: float,
    scale: str,
    mode: str,
    point: str,
) -> None:
    model, layer = tiny_llama, 2
    v = make_vector(model, seed=2, hook_point=point)
    iv = Intervention(v, layer=layer, kind=kind, alpha=alpha, positions=mode, scale=scale)
    assert iv.point == point
    ids, mask = left_pad(model, PROMPTS)  # (B, W)
    prompt_lens = mask.sum(-1) - 2  # last 2 real tokens of each row count as generated
    sel = expected_selection(mask, prompt_lens, mode)
    assert sel.any()
    assert not (sel & ~mask.bool()).any()

    base: list[torch.Tensor] = []
    with capture(model, layer, point, base):
        forward_logits(model, ids, mask)
    after: list[torch.Tensor] = []
    with steering(model, [iv], prompt_lens=prompt_lens), capture(model, layer, point, after):
        forward_logits(model, ids, mask)
    (h0,), (h1,) = base, after  # (B, W, d)

    # everything outside the window, pads included, is bit-for-bit unchanged
    assert torch.equal(h1[~sel], h0[~sel])

    u = v.unit(layer).to(h0.device, h0.dtype)  # (d,)
    s = iv.scale_factor()
    x0, x1 = h0[sel], h1[sel]  # (N, d)
    proj0 = x0 @ u  # (N,)
    if kind == "add":
        expected = x0 + alpha * s * u
    elif kind == "ablate":
        expected = x0 - alpha * proj0[:, None] * u
        assert torch.allclose(x1 @ u, torch.zeros(len(x1), device=x1.device), atol=1e-4)
    else:
        expected = x0 + (alpha * s - proj0)[:, None] * u
        assert torch.allclose(
            x1 @ u, torch.full((len(x1),), alpha * s, device=x1.device), atol=1e-4
        )
    assert torch.allclose(x1, expected, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(x1, x0, atol=1e-3)  # the selected positions really moved


@pytest.mark.parametrize("point", HOOK_POINTS)
def test_hook_change_propagates_only_forward_in_time(
    tiny_llama: Model, make_vector: Callable, point: str
) -> None:
    """Steering the last prompt token leaves earlier positions' final logits untouched (causal),
    and pads' logits too, while the steered position's logits change."""
    model = tiny_llama
    iv = Intervention(
        make_vector(model, seed=3),
        layer=1,
        alpha=1.0,
        scale="resid",
        positions="last-prompt",
        hook_point=point,
    )
    ids, mask = left_pad(model, PROMPTS)
    base = forward_logits(model, ids, mask)
    with steering(model, [iv]):
        steered = forward_logits(model, ids, mask)
    assert torch.equal(steered[:, :-1], base[:, :-1])
    assert not torch.allclose(steered[:, -1], base[:, -1], atol=1e-3)


# ----------------------------------------------------------------------------- cache, batch


INTERVENTION_KINDS = {
    "add": {"kind": "add", "alpha": 1.0, "scale": "resid"},
    "ablate": {"kind": "ablate", "alpha": 1.0},
    "clamp": {"kind": "clamp", "alpha": 1.0, "scale": "resid"},
}


@pytest.mark.parametrize("point", HOOK_POINTS)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("kind", list(INTERVENTION_KINDS))
def test_cached_equals_uncached(
    tiny_llama: Model, make_vector: Callable, kind: str, mode: str, point: str
) -> None:
    model = tiny_llama
    v = make_vector(model, seed=4)
    iv = Intervention(v, layer=1, positions=mode, hook_point=point, **INTERVENTION_KINDS[kind])
    rows = [Row(p, (iv,)) for p in PROMPTS]
    cached = gen(model, rows, GREEDY)
    uncached = gen(model, rows, GenerationConfig(max_new_tokens=N_NEW, use_cache=False))
    base = gen(model, [Row(p) for p in PROMPTS])
    for c, n in zip(cached, uncached, strict=True):
        assert_same_result(c, n)
    assert any(differs(c, b) for c, b in zip(cached, base, strict=True))


def _varied_rows(model: Model, make_vector: Callable) -> list[Row]:
    """Prompts of different lengths, different budgets (rows leave the batch mid-way), seeds."""
    v = make_vector(model, seed=5)
    prompts = ("Hi", "Hello there", "The cat sat on a mat", "Why?")
    budgets = (N_NEW, 6, N_NEW, 3)
    return [
        Row(
            p,
            (Intervention(v, layer=1, alpha=0.7, scale="resid", positions=MODES[i]),),
            seed=100 + i,
            max_new_tokens=n,
        )
        for i, (p, n) in enumerate(zip(prompts, budgets, strict=True))
    ]


@pytest.mark.parametrize("sampling", [False, True], ids=["greedy", "sampled"])
def test_batched_equals_alone(tiny_model: Model, make_vector: Callable, sampling: bool) -> None:
    model = tiny_model
    cfg = SAMPLING if sampling else GREEDY
    rows = _varied_rows(model, make_vector)
    batched = gen(model, rows, cfg)
    for r, (row, res) in enumerate(zip(rows, batched, strict=True)):
        alone = gen(model, [row], cfg)[0]
        assert_same_result(res, alone, f"row {r}")
        assert len(res.token_ids) <= (row.max_new_tokens or N_NEW)
    # not vacuous: steering moved every row; sampling is not greedy in disguise
    plain = gen(model, [Row(r.prompt, (), r.seed, r.max_new_tokens) for r in rows], cfg)
    assert all(differs(a, b) for a, b in zip(batched, plain, strict=True))
    if sampling:
        greedy = gen(model, rows, GREEDY)
        assert any(a.token_ids != b.token_ids for a, b in zip(batched, greedy, strict=True))


def test_batch_size_smaller_than_rows_equals_alone(
    tiny_llama: Model, make_vector: Callable
) -> None:
    rows = _varied_rows(tiny_llama, make_vector)
    one_batch = gen(tiny_llama, rows, SAMPLING)
    split = gen(
        tiny_llama,
        rows,
        GenerationConfig(max_new_tokens=N_NEW, temperature=0.8, top_p=0.9, batch_size=2),
    )
    for a, b in zip(one_batch, split, strict=True):
        assert_same_result(a, b)


def _mixed_rows(model: Model, make_vector: Callable) -> list[Row]:
    last = model.n_layers - 1
    v = make_vector(model, seed=6)
    v_pre = make_vector(model, seed=7, hook_point="resid_pre")
    return [
        Row("Hello there", (Intervention(v, 1, "add", 0.8, positions="all", scale="resid"),)),
        Row(
            "Hi",
            (Intervention(v, 0, "ablate", 1.0, hook_point="resid_pre", positions="prompt"),),
        ),
        Row("The cat sat on a mat", ()),  # unsteered
        Row(
            "Why not?",
            (Intervention(v_pre, last, "clamp", 3.0, positions="last-prompt", scale="diff"),),
        ),
        Row(  # two interventions at two sites
            "Good morning",
            (
                Intervention(v, 1, "add", -1.0, positions="generated", scale="resid"),
                Intervention(v_pre, 0, "clamp", 0.5, positions="window:-2:1", scale="resid"),
            ),
        ),
        Row(  # two interventions at one site (two slots), one taken from another layer
            "Once upon",
            (
                Intervention(v, 0, "add", 0.5, scale="resid", source_layer=last),
                Intervention(v, 0, "add", 0.5, positions="generated", scale="resid"),
            ),
        ),
    ]


def test_mixed_batch_rows_equal_alone(tiny_model: Model, make_vector: Callable) -> None:
    model = tiny_model
    rows = _mixed_rows(model, make_vector)
    batched = gen(model, rows)
    for r, (row, res) in enumerate(zip(rows, batched, strict=True)):
        assert_same_result(res, gen(model, [row])[0], f"row {r}")
    plain = gen(model, [Row(r.prompt) for r in rows])
    assert_same_result(batched[2], plain[2])
    for r in (0, 1, 3, 4, 5):
        assert differs(batched[r], plain[r]), f"row {r} was not steered"


# ----------------------------------------------------------------------------- large α


@pytest.mark.parametrize(
    "spec",
    [
        {"kind": "add", "alpha": 4.0, "scale": "resid"},
        {"kind": "clamp", "alpha": 4.0, "scale": "resid"},
        {"kind": "ablate", "alpha": -30.0},  # amplify the existing component 31-fold
    ],
    ids=["add", "clamp", "ablate"],
)
def test_large_alpha_changes_greedy_text(
    tiny_model: Model, make_vector: Callable, spec: dict
) -> None:
    model = tiny_model
    iv = Intervention(make_vector(model, seed=8), layer=model.n_layers // 2, **spec)
    base = gen(model, [Row(p) for p in PROMPTS])
    steered = gen(model, [Row(p, (iv,)) for p in PROMPTS])
    assert all(differs(s, b) for b, s in zip(base, steered, strict=True))
    changed = [s.token_ids != b.token_ids for b, s in zip(base, steered, strict=True)]
    assert sum(changed) >= 2, changed


# ----------------------------------------------------------------------------- hooks


def test_no_hooks_left_after_normal_exit(tiny_llama: Model, make_vector: Callable) -> None:
    model = tiny_llama
    v = make_vector(model, seed=9)
    before = count_hooks(model.hf)
    ivs = [Intervention(v, 0), Intervention(v, 2, hook_point="resid_pre")]
    with steering(model, ivs):
        assert count_hooks(model.hf) == before + 3  # model call + two sites
    assert count_hooks(model.hf) == before


def test_no_hooks_left_after_exception_in_block(tiny_llama: Model, make_vector: Callable) -> None:
    model = tiny_llama
    iv = Intervention(make_vector(model, seed=9), layer=1, alpha=5.0, scale="resid")
    ids, mask = left_pad(model, PROMPTS)
    base = forward_logits(model, ids, mask)
    before = count_hooks(model.hf)
    with pytest.raises(RuntimeError, match="inside the block"), steering(model, [iv]):
        assert count_hooks(model.hf) > before
        assert not torch.equal(forward_logits(model, ids, mask), base)
        raise RuntimeError("inside the block")
    assert count_hooks(model.hf) == before
    assert torch.equal(forward_logits(model, ids, mask), base)


def test_no_hooks_left_when_generate_fails_midway(tiny_llama: Model, make_vector: Callable) -> None:
    model = tiny_llama
    iv = Intervention(make_vector(model, seed=9), layer=1, alpha=5.0, scale="resid")
    ids, mask = left_pad(model, PROMPTS)
    base = forward_logits(model, ids, mask)
    before = count_hooks(model.hf)
    original = model.hf.forward
    seen: list[int] = []

    @functools.wraps(original)
    def flaky(*args: Any, **kwargs: Any) -> Any:
        seen.append(count_hooks(model.hf))
        if len(seen) == 3:
            raise RuntimeError("forward failed on call 3")
        return original(*args, **kwargs)

    model.hf.forward = flaky
    try:
        with pytest.raises(RuntimeError, match="call 3"):
            gen(model, [Row(p, (iv,)) for p in PROMPTS])
    finally:
        del model.hf.forward
    # it was steering when it failed (an earlier call may run unsteered: a shared prefix or a
    # prompt's lower layers computed once for every setting)
    assert len(seen) == 3 and seen[-1] > before
    assert count_hooks(model.hf) == before
    assert torch.equal(forward_logits(model, ids, mask), base)


def test_rejected_plan_registers_nothing(tiny_llama: Model, make_vector: Callable) -> None:
    model = tiny_llama
    before = count_hooks(model.hf)
    v = make_vector(model, layers=[0])
    with (
        pytest.raises(ValueError, match="out of range"),
        steering(model, [Intervention(v, layer=7, source_layer=0)]),
    ):
        pass
    assert count_hooks(model.hf) == before


def test_nested_contexts_remove_only_their_own_hooks(
    tiny_llama: Model, make_vector: Callable
) -> None:
    model = tiny_llama
    v = make_vector(model, seed=10)
    outer = Intervention(v, 1, alpha=1.0, scale="resid")
    inner = Intervention(v, 2, alpha=-1.0, scale="resid")
    ids, mask = left_pad(model, PROMPTS)
    before = count_hooks(model.hf)
    with steering(model, [outer]):
        only_outer = forward_logits(model, ids, mask)
        with steering(model, [inner]):
            both = forward_logits(model, ids, mask)
        assert count_hooks(model.hf) == before + 2
        assert torch.equal(forward_logits(model, ids, mask), only_outer)
    assert count_hooks(model.hf) == before
    with steering(model, [outer, inner]):
        assert torch.allclose(forward_logits(model, ids, mask), both, atol=1e-5)


# ----------------------------------------------------------------------------- positions + cache


def test_generated_positions_spare_the_first_token(
    tiny_model: Model, make_vector: Callable
) -> None:
    """Only the last prompt token decides the first generated token, so steering "generated"
    positions leaves it alone; later tokens are steered although the cache feeds one at a time."""
    model = tiny_model
    iv = Intervention(
        make_vector(model, seed=11),
        layer=model.n_layers - 1,
        alpha=4.0,
        scale="resid",
        positions="generated",
    )
    base = gen(model, [Row(p) for p in PROMPTS])
    steered = gen(model, [Row(p, (iv,)) for p in PROMPTS])
    for b, s in zip(base, steered, strict=True):
        assert s.token_ids[0] == b.token_ids[0]
        assert s.logprobs[0] == pytest.approx(b.logprobs[0], abs=1e-5)
        assert s.token_ids[1:] != b.token_ids[1:]


def test_last_prompt_position_changes_the_first_token(
    tiny_model: Model, make_vector: Callable
) -> None:
    model = tiny_model
    iv = Intervention(
        make_vector(model, seed=11),
        layer=model.n_layers - 1,
        alpha=4.0,
        scale="resid",
        positions="last-prompt",
    )
    base = gen(model, [Row(p) for p in PROMPTS])
    steered = gen(model, [Row(p, (iv,)) for p in PROMPTS])
    for b, s in zip(base, steered, strict=True):
        assert s.token_ids[0] != b.token_ids[0]


def _hf_generate(
    model: Model, ivs: Sequence[Intervention], texts: Sequence[str], use_cache: bool = True
) -> list[list[int]]:
    ids, mask = left_pad(model, texts)
    with torch.inference_mode(), steering(model, list(ivs)):
        out = model.hf.generate(
            input_ids=ids,
            attention_mask=mask,
            max_new_tokens=N_NEW,
            do_sample=False,
            use_cache=use_cache,
        )
    return [until_eos(row, model.eos_token_ids) for row in out[:, ids.shape[1] :].tolist()]


@pytest.mark.parametrize("mode", MODES)
def test_hf_generate_left_padded_batch_equals_steerlab(
    tiny_model: Model, make_vector: Callable, mode: str
) -> None:
    model = tiny_model
    iv = Intervention(
        make_vector(model, seed=12),
        layer=model.n_layers // 2,
        alpha=1.0,
        scale="resid",
        positions=mode,
    )
    hf = _hf_generate(model, [iv], PROMPTS)
    ours = gen(model, [Row(p, (iv,)) for p in PROMPTS])
    assert [list(r.token_ids) for r in ours] == hf
    base = gen(model, [Row(p) for p in PROMPTS])
    assert any(differs(a, b) for a, b in zip(ours, base, strict=True))


@pytest.mark.parametrize("mode", MODES)
def test_hf_generate_without_cache_keeps_prompt_lengths(
    tiny_llama: Model, make_vector: Callable, mode: str
) -> None:
    """Without a KV cache every HF call spans the whole sequence; the context must still know
    where each prompt ended (generated / last-prompt positions must not drift)."""
    model = tiny_llama
    iv = Intervention(
        make_vector(model, seed=13), layer=2, alpha=1.0, scale="resid", positions=mode
    )
    hf = _hf_generate(model, [iv], PROMPTS, use_cache=False)
    ours = gen(model, [Row(p, (iv,)) for p in PROMPTS])
    assert [list(r.token_ids) for r in ours] == hf
    # two prompts batches in one context: the second is a new prompt, not a continuation
    ids, mask = left_pad(model, PROMPTS[:2])
    with torch.inference_mode(), steering(model, [iv]) as handle:
        model.hf(input_ids=ids, attention_mask=mask)
        ids2, mask2 = left_pad(model, PROMPTS[1:])
        model.hf(input_ids=ids2, attention_mask=mask2)
        assert handle._inferred is not None
        assert handle._inferred.tolist() == mask2.sum(-1).tolist()


def test_new_prompt_one_token_longer_is_not_a_decoding_step(
    tiny_llama: Model, make_vector: Callable
) -> None:
    """After a cached generate, a new prompt exactly one token longer than that whole sequence
    is a new prompt: ``generated`` steering must not touch its prompt tokens."""
    model = tiny_llama
    iv = Intervention(make_vector(model, seed=14), layer=1, alpha=30.0, positions="generated")
    a = torch.tensor([model.encode("Hello")], device=model.device)
    n = 4
    b = torch.tensor([model.encode("Good morning!")[: a.shape[1] + n]], device=model.device)
    with torch.inference_mode():
        plain = model.hf(b).logits
        with steering(model, [iv]):
            model.hf.generate(
                a, attention_mask=torch.ones_like(a), max_new_tokens=n, do_sample=False
            )
            steered = model.hf(b, attention_mask=torch.ones_like(b)).logits
    assert torch.equal(plain, steered)


@pytest.mark.parametrize("mode", MODES)
def test_hf_generate_unpadded_prompt_equals_steerlab(
    tiny_llama: Model, make_vector: Callable, mode: str
) -> None:
    """One prompt, so nothing is padded: HF generate then calls the model without an
    attention mask (and transformers 5 passes no cache_position), yet positions must hold."""
    model = tiny_llama
    iv = Intervention(
        make_vector(model, seed=12), layer=2, alpha=1.0, scale="resid", positions=mode
    )
    prompt = PROMPTS[1]
    (hf,) = _hf_generate(model, [iv], [prompt])
    (ours,) = gen(model, [Row(prompt, (iv,))])
    assert list(ours.token_ids) == hf
