"""Backends agree, and every engine invariant holds on each of them.

For each backend (Hugging Face, TransformerLens, nnsight) and each tiny architecture it covers:
same vector, interventions and rows give identical greedy tokens as the Hugging Face backend;
α = 0 is that backend's own baseline bit for bit; cached == uncached; a row in a batch == the
row alone (greedy and seeded sampling, mixed per-row settings); the edit plumbing leaves no hook
behind after an exception.
"""

from __future__ import annotations

import functools
import importlib.util
from collections.abc import Callable

import pytest
import torch
from tests.conftest import ALL_TINY, _load_tiny

import steerlab as sl
from steerlab.backends.base import call_info_from_mask
from steerlab.engine.handle import SteeringHandle
from steerlab.engine.plan import compile_plan
from steerlab.models import Model, model_from_hf
from steerlab.sites import Site

# Which tiny architectures each backend covers (the HF backend covers all).
COVERAGE: dict[str, tuple[str, ...]] = {
    "transformer_lens": ALL_TINY,
    "nnsight": ALL_TINY,
}
CASES = [
    pytest.param((be, arch), id=f"{be}-{arch}")
    for be, archs in COVERAGE.items()
    for arch in archs
    if importlib.util.find_spec(be) is not None
]
GREEDY = sl.GenerationConfig(max_new_tokens=8)
SAMPLING = sl.GenerationConfig(max_new_tokens=8, temperature=0.9, top_p=0.9)
PROMPTS = ("Hi", "Hello there, friend", "The cat")


@functools.cache
def _wrapped(backend: str, arch: str) -> Model:
    base = _load_tiny(arch)
    return model_from_hf(base.hf, base.tokenizer, base.name, backend=backend)


@pytest.fixture(params=CASES)
def pair(request: pytest.FixtureRequest) -> tuple[Model, Model]:
    """(HF-backed model, the same weights on another backend)."""
    backend, arch = request.param
    return _load_tiny(arch), _wrapped(backend, arch)


def _vec(model: Model, seed: int, point: str = "resid_post") -> sl.SteeringVector:
    g = torch.Generator().manual_seed(seed)
    dirs = {layer: torch.randn(model.d_model, generator=g) for layer in range(model.n_layers)}
    return sl.SteeringVector(dirs, hook_point=point, model_id=model.name)


def _rows(model: Model) -> list[sl.Row]:
    """Mixed per-row settings: sites, kinds, positions, α = 0 and unsteered rows."""
    last = model.n_layers - 1
    v, w = _vec(model, 1), _vec(model, 2, "mlp_out")
    a = _vec(model, 3, "attn_out")
    ivs: list[tuple[sl.Intervention, ...]] = [
        (),
        (sl.Intervention(v, 0, alpha=4.0),),
        (sl.Intervention(v, last, kind="ablate", alpha=1.0, positions="generated"),),
        (sl.Intervention(w, 1, kind="clamp", alpha=3.0, positions="window:-2:3"),),
        (sl.Intervention(a, 0, alpha=5.0, positions="last-prompt"),),
        (sl.Intervention(v, 1, alpha=0.0),),
        (sl.Intervention(v, 0, alpha=-3.0, hook_point="resid_pre"), sl.Intervention(w, 1)),
    ]
    rows = []
    for i, iv in enumerate(ivs):
        text = model.format_prompt(PROMPTS[i % len(PROMPTS)])
        rows.append(sl.Row(text, iv, seed=i))
    return rows


def _gen(model: Model, rows: list[sl.Row], cfg: sl.GenerationConfig) -> list[sl.RowResult]:
    return sl.generate(model, rows, cfg, progress=False)


def test_same_greedy_tokens_as_hf(pair: tuple[Model, Model]) -> None:
    hf_model, other = pair
    rows = _rows(hf_model)
    ref, out = _gen(hf_model, rows, GREEDY), _gen(other, rows, GREEDY)
    assert [r.token_ids for r in out] == [r.token_ids for r in ref]
    for a, b in zip(out, ref, strict=True):
        torch.testing.assert_close(
            torch.tensor(a.logprobs), torch.tensor(b.logprobs), rtol=1e-4, atol=1e-4
        )
    # steering did something on this backend (the parity is not between two no-ops)
    plain = _gen(other, [sl.Row(r.prompt, seed=r.seed) for r in rows], GREEDY)
    assert [r.logprobs for r in plain] != [r.logprobs for r in out]


def test_alpha_zero_is_this_backends_baseline(pair: tuple[Model, Model]) -> None:
    _, model = pair
    v = _vec(model, 4)
    prompts = [model.format_prompt(p) for p in PROMPTS]
    base = _gen(model, [sl.Row(p) for p in prompts], GREEDY)
    for kind in ("add", "ablate", "clamp"):
        if kind == "clamp":
            continue  # clamp at α = 0 sets the projection to 0: not a no-op by definition
        zero = _gen(
            model, [sl.Row(p, (sl.Intervention(v, 1, kind, 0.0),)) for p in prompts], GREEDY
        )
        assert [r.token_ids for r in zero] == [r.token_ids for r in base]
        assert [r.logprobs for r in zero] == [r.logprobs for r in base]


def test_cached_equals_uncached(pair: tuple[Model, Model]) -> None:
    _, model = pair
    rows = _rows(model)
    cached = _gen(model, rows, GREEDY)
    uncached = _gen(model, rows, sl.GenerationConfig(max_new_tokens=8, use_cache=False))
    assert [r.token_ids for r in cached] == [r.token_ids for r in uncached]


@pytest.mark.parametrize("cfg", [GREEDY, SAMPLING], ids=["greedy", "sampled"])
def test_mixed_batch_equals_each_row_alone(
    pair: tuple[Model, Model], cfg: sl.GenerationConfig
) -> None:
    _, model = pair
    rows = _rows(model)
    batched = _gen(model, rows, cfg)
    for row, res in zip(rows, batched, strict=True):
        (alone,) = _gen(model, [row], cfg)
        assert alone.token_ids == res.token_ids


def test_edits_see_the_same_activations(pair: tuple[Model, Model]) -> None:
    """A steered forward on a left-padded batch: every site reads the same tensor on both."""
    hf_model, other = pair
    rows = _rows(hf_model)
    plan = compile_plan(hf_model, [list(r.interventions) for r in rows])

    def run(model: Model) -> dict[Site, torch.Tensor]:
        seqs = [model.encode(r.prompt) for r in rows]
        width = max(len(s) for s in seqs)
        ids = torch.full((len(seqs), width), model.pad_token_id, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for i, s in enumerate(seqs):
            ids[i, width - len(s) :] = torch.tensor(s)
            mask[i, width - len(s) :] = 1
        handle = SteeringHandle(plan, mask.sum(-1))
        handle.observe(call_info_from_mask(mask, width))
        edits: dict[Site, list[Callable[[torch.Tensor], torch.Tensor]]] = {
            s: list(f) for s, f in handle.edits().items()
        }
        sink: dict[Site, torch.Tensor] = {}
        for layer in range(model.n_layers):
            for point in ("resid_pre", "attn_out", "mlp_out", "resid_post"):
                site = Site(layer, point)

                def grab(h: torch.Tensor, site: Site = site) -> torch.Tensor:
                    sink[site] = h.detach().clone().float()
                    return h

                edits.setdefault(site, []).append(grab)
        pos = (mask.cumsum(-1) - 1).clamp(min=0)
        with torch.inference_mode():
            model.backend.forward(ids, mask, pos, None, edits)
        valid = mask.bool()
        return {s: t[valid] for s, t in sink.items()}

    ref, got = run(hf_model), run(other)
    assert set(ref) == set(got)
    for site in ref:
        torch.testing.assert_close(got[site], ref[site], rtol=1e-4, atol=1e-4, msg=site.name)


def test_no_hooks_left_after_a_failing_edit(pair: tuple[Model, Model]) -> None:
    hf_model, other = pair
    from steerlab.engine.handle import count_hooks

    before = (count_hooks(hf_model.hf), other.backend.count_hooks())

    def boom(h: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("edit failed")

    ids = torch.tensor([other.encode("Hello")])
    mask = torch.ones_like(ids)
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    with pytest.raises(RuntimeError, match="edit failed"):
        other.backend.forward(ids, mask, pos, None, {Site(1, "mlp_out"): [boom]})
    assert (count_hooks(hf_model.hf), other.backend.count_hooks()) == before
    # and the model still runs unsteered afterwards, exactly as before
    rows = [sl.Row(other.format_prompt("Hello"))]
    assert _gen(other, rows, GREEDY)[0].token_ids == _gen(hf_model, rows, GREEDY)[0].token_ids
