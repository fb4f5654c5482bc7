"""The vLLM runner keeps the parity contract every backend keeps (issue 23).

One vLLM engine (the embedded model, float32, eager) for the whole module: start-up takes about a
minute on 2 cores. The Hugging Face backend on the same weights is the reference: the same rows
give the same greedy tokens, per-token log-probabilities and entropies (to float rounding), for
every intervention kind, every site the vLLM decoder layer exposes and every position mode, all
mixed in one call.

Runs in the vLLM environment (``.venv-vllm``, ``make test``); skipped where vLLM is missing.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

pytest.importorskip("vllm")

import torch
from tests.vllm_engine.steering_rows import GREEDY, PROMPTS, mixed_rows, random_vector

import steerlab as sl
from steerlab.backends.vllm import EXTENSION, check_engine, engine_args
from steerlab.directions import sae as sae_direction
from steerlab.engine.plan import compile_plan
from steerlab.engine.record import record
from steerlab.engine.score import next_token_logprobs, steered_logprobs
from steerlab.engine.vllm_runner import compact, steering_salt
from steerlab.engine.vllm_worker import SteeringExtension
from steerlab.models import Model
from steerlab.sae import SparseAutoencoder
from steerlab.sites import Site

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def models() -> Iterator[tuple[Model, Model]]:
    """(the embedded model on vLLM, the same weights on the Hugging Face backend)."""
    torch.set_num_threads(2)
    vm = sl.load_model("embedded", backend="vllm", max_model_len=2048)
    yield vm, sl.load_model("embedded")
    vm.backend.close()  # type: ignore[attr-defined]


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    """Relative difference ``|a - b| / |b|`` (vLLM's kernels round differently from HF's)."""
    return float((a - b).norm() / b.norm())


def test_mixed_rows_match_the_hf_backend_token_for_token(models: tuple[Model, Model]) -> None:
    vm, hm = models
    rows = mixed_rows(hm)
    got = sl.generate(vm, rows, GREEDY)
    want = sl.generate(hm, rows, GREEDY)
    assert len(got) == len(want) == len(rows)
    for k, (a, b) in enumerate(zip(got, want, strict=True)):
        assert a.token_ids == b.token_ids, f"row {k}: {rows[k].interventions}"
        assert a.text == b.text
        assert a.finish_reason == b.finish_reason
        assert a.prompt_tokens == b.prompt_tokens
        assert a.logprobs == pytest.approx(b.logprobs, abs=2e-3)
        assert a.entropies == pytest.approx(b.entropies, abs=2e-3)
    # the steering did something (a test that cannot fail is a defect)
    assert sum(a.token_ids != got[0].token_ids for a in got[2:]) >= 5
    assert vm.backend.count_hooks() == 0


def _sae(model: Model, site: Site, arch: str, seed: int) -> SparseAutoencoder:
    """A random SAE at ``site``: unit decoder rows, an encoder near their transpose."""
    d, d_sae = model.d_model, 64
    g = torch.Generator().manual_seed(seed)
    w_dec = torch.randn(d_sae, d, generator=g)
    w_dec = w_dec / w_dec.norm(dim=-1, keepdim=True)
    w_enc = w_dec.T + 0.3 * torch.randn(d, d_sae, generator=g) / d**0.5
    return SparseAutoencoder(
        W_enc=w_enc,
        b_enc=torch.zeros(d_sae),
        W_dec=w_dec,
        b_dec=0.1 * torch.randn(d, generator=g),
        site=site,
        architecture=arch,
        threshold=torch.full((d_sae,), 0.5) if arch == "jumprelu" else None,
        k=16 if arch == "topk" else None,
        source=f"test-{arch}-{seed}",
        model_name=model.name,
    )


def test_sae_clamps_match_the_hf_backend(models: tuple[Model, Model]) -> None:
    vm, hm = models
    layer = 10
    site = Site(layer, "resid_post")
    saes = {a: _sae(hm, site, a, k) for k, a in enumerate(("standard", "jumprelu", "topk"))}

    def clamp(arch: str, i: int, t: float, positions: str = "all") -> sl.Intervention:
        sae = saes[arch]
        return sl.Intervention(
            sae_direction(sae, i), layer, "sae_clamp", alpha=t, positions=positions, sae=sae
        )

    ivs = [
        (),
        (clamp("standard", 3, 40.0),),
        (clamp("jumprelu", 7, -30.0, "generated"),),
        (clamp("topk", 5, 60.0, "prompt"), clamp("standard", 9, 25.0, "last-prompt")),
    ]
    rows = [sl.Row(hm.format_prompt(PROMPTS[k]), iv, seed=k) for k, iv in enumerate(ivs)]
    got = sl.generate(vm, rows, GREEDY)
    want = sl.generate(hm, rows, GREEDY)
    assert [g.token_ids for g in got] == [w.token_ids for w in want]
    plain = sl.generate(hm, [sl.Row(r.prompt) for r in rows], GREEDY)
    assert sum(g.token_ids != p.token_ids for g, p in zip(got, plain, strict=True)) >= 2


def test_alpha_zero_is_the_unsteered_row(models: tuple[Model, Model]) -> None:
    vm, _ = models
    v = random_vector(vm, 2)
    text = vm.format_prompt(PROMPTS[0])
    rows = [sl.Row(text)] + [
        sl.Row(text, (sl.Intervention(v, layer, kind=kind, alpha=0.0, hook_point=point),))
        for layer, kind, point in ((4, "add", "resid_post"), (7, "ablate", "attn_out"))
    ]
    out = sl.generate(vm, rows, GREEDY)
    assert out[1].token_ids == out[0].token_ids == out[2].token_ids
    assert out[1].logprobs == out[0].logprobs


def test_a_seeded_row_samples_the_same_text_whatever_its_batch(models: tuple[Model, Model]) -> None:
    vm, _ = models
    v = random_vector(vm, 3)
    cfg = sl.GenerationConfig(max_new_tokens=12, temperature=0.9, top_p=0.9)
    rows = [
        sl.Row(vm.format_prompt(PROMPTS[k % 4]), (sl.Intervention(v, 6, alpha=float(k)),), seed=k)
        for k in range(6)
    ]
    together = sl.generate(vm, rows, cfg)
    alone = [sl.generate(vm, [r], cfg)[0] for r in (rows[1], rows[4])]
    assert alone[0].token_ids == together[1].token_ids
    assert alone[1].token_ids == together[4].token_ids
    # other seeds, other draws
    reseeded = sl.generate(vm, [sl.Row(rows[1].prompt, rows[1].interventions, seed=99)], cfg)
    assert reseeded[0].token_ids != together[1].token_ids


def test_prefix_cache_never_serves_blocks_computed_under_other_steering(
    models: tuple[Model, Model],
) -> None:
    """A long shared prompt run unsteered first fills the prefix cache; the steered rows that
    follow (steering prompt positions) must still match a fresh reference, and two settings
    must not share blocks (a shared block would give one the other's result)."""
    vm, hm = models
    v = random_vector(vm, 4)
    long = vm.format_prompt(" ".join(["The quick brown fox jumps over the lazy dog."] * 12))
    plain = [sl.Row(long)]
    steered = [
        sl.Row(long, (sl.Intervention(v, 5, alpha=a, scale="diff", positions="prompt"),))
        for a in (4.0, -4.0)
    ]
    sl.generate(vm, plain, GREEDY)  # fills the cache with unsteered blocks
    got = sl.generate(vm, steered + plain, GREEDY)
    want = sl.generate(hm, steered + plain, GREEDY)
    assert [g.token_ids for g in got] == [w.token_ids for w in want]
    assert got[0].token_ids != got[2].token_ids  # the steering changes the text
    salts = {steering_salt(r.interventions) for r in steered}
    assert len(salts) == 2 and None not in salts
    assert steering_salt(()) is None


def test_scored_logits_equal_the_hf_backend(models: tuple[Model, Model]) -> None:
    vm, hm = models
    v = random_vector(vm, 5)
    prompts = [vm.format_prompt(p) for p in PROMPTS]
    ivs = [
        (),
        (sl.Intervention(v, 8, alpha=5.0, scale="diff"),),
        (),
        (sl.Intervention(v, 12, kind="ablate", alpha=1.0),),
    ]
    got = next_token_logprobs(vm, prompts, ivs)
    want = next_token_logprobs(hm, prompts, ivs)
    assert got.shape == want.shape
    assert torch.allclose(got, want, atol=1e-3)
    assert not torch.allclose(got[1], next_token_logprobs(vm, prompts[1:2])[0], atol=1e-2)


def test_directions_recorded_through_vllm_equal_the_hf_backend(
    models: tuple[Model, Model],
) -> None:
    vm, hm = models
    pairs = [
        ("I love this, it is wonderful.", "I hate this, it is awful."),
        ("What a great day!", "What a terrible day!"),
        ("She was happy to help.", "She was annoyed to help."),
    ]
    layers = [2, 11, 29]
    got = sl.contrast(vm, pairs, layers=layers).vector
    want = sl.contrast(hm, pairs, layers=layers).vector
    for layer in layers:
        a, b = got.directions[layer], want.directions[layer]
        assert _rel(a, b) < 1e-4, (layer, _rel(a, b))
    seqs = [vm.encode(vm.format_prompt(p)) for p in PROMPTS]
    pos = [[0, -1], [-3, -2, -1], [1], [-1]]
    for point in ("mlp_out", "resid_mid", "resid_pre"):
        r1 = record(vm, seqs, pos, [0, 5, 17], hook_point=point)
        r2 = record(hm, seqs, pos, [0, 5, 17], hook_point=point)
        for layer in (0, 5, 17):
            assert _rel(r1.acts[layer], r2.acts[layer]) < 1e-4, (point, layer)
            assert _rel(r1.norms[layer], r2.norms[layer]) < 1e-4, (point, layer)
    assert vm.backend.count_hooks() == 0


def test_steered_scores_flag_overflow_instead_of_raising(models: tuple[Model, Model]) -> None:
    """What the layer finder reads: steered next-token scores per row, overflow as a flag."""
    vm, hm = models
    v = random_vector(vm, 7)
    seqs = [vm.encode(vm.format_prompt(p)) for p in PROMPTS[:3]]
    ivs = [
        [sl.Intervention(v, 4, alpha=3.0, scale="diff")],
        [sl.Intervention(v, 6, alpha=1e38)],
        [],
    ]
    got, bad = steered_logprobs(vm, seqs, ivs)
    want, want_bad = steered_logprobs(hm, seqs, ivs)
    assert bad is not None and want_bad is not None
    assert bad.tolist() == want_bad.tolist() == [False, True, False]
    keep = [0, 2]
    assert torch.allclose(got[keep], want[keep], atol=1e-3)
    assert vm.backend.count_hooks() == 0


def test_overflow_is_one_clear_error_and_leaves_no_hook(models: tuple[Model, Model]) -> None:
    vm, _ = models
    v = random_vector(vm, 6)
    row = sl.Row(vm.format_prompt(PROMPTS[0]), (sl.Intervention(v, 3, alpha=1e38),))
    with pytest.raises(sl.SteerlabError, match="non-finite"):
        sl.generate(vm, [row], GREEDY)
    assert vm.backend.count_hooks() == 0
    # the engine still serves the next call
    assert sl.generate(vm, [sl.Row(vm.format_prompt(PROMPTS[1]))], GREEDY)[0].token_ids


def test_graph_modes_and_foreign_engines_are_refused_in_one_sentence() -> None:
    with pytest.raises(sl.SteerlabError, match="eager"):
        engine_args("m", torch.float32, {"enforce_eager": False})
    with pytest.raises(sl.SteerlabError, match="eager"):
        engine_args("m", torch.float32, {"compilation_config": {"mode": 3}})
    with pytest.raises(sl.SteerlabError, match="worker_extension_cls"):
        engine_args("m", torch.float32, {"worker_extension_cls": "x.Y"})
    assert (
        engine_args("m", torch.float32, {"max_model_len": 64})["worker_extension_cls"] == EXTENSION
    )

    class _Cfg:
        def __init__(self, ext: str, eager: bool, mode: int) -> None:
            self.parallel_config = type("P", (), {"worker_extension_cls": ext})()
            self.model_config = type("M", (), {"enforce_eager": eager})()
            self.compilation_config = type("C", (), {"mode": mode})()
            self.speculative_config = None

    def llm(ext: str, eager: bool, mode: int) -> object:
        engine = type("E", (), {"vllm_config": _Cfg(ext, eager, mode)})()
        return type("L", (), {"llm_engine": engine})()

    with pytest.raises(sl.SteerlabError, match="worker extension"):
        check_engine(llm("", True, 0))
    with pytest.raises(sl.SteerlabError, match="eager"):
        check_engine(llm(EXTENSION, False, 0))
    with pytest.raises(sl.SteerlabError, match="eager"):
        check_engine(llm(EXTENSION, True, 3))
    check_engine(llm(EXTENSION, True, 0))


def test_an_engine_configured_to_compile_on_cpu_is_refused() -> None:
    """vLLM's own config resolution (no engine started): without eager mode vLLM compiles on
    CPU too (compilation mode 2 here), which the runner refuses; eager wins over a
    compilation config (vLLM resolves the mode to 0), which the runner accepts."""
    from vllm.engine.arg_utils import EngineArgs

    from steerlab.models.load import _engine_source

    source, _ = _engine_source("embedded")

    def engine(**kwargs: object) -> object:
        config = EngineArgs(model=source, worker_extension_cls=EXTENSION, **kwargs)  # type: ignore[arg-type]
        vllm_engine = type("E", (), {"vllm_config": config.create_engine_config()})()
        return type("L", (), {"llm_engine": vllm_engine})()

    compiled = engine(enforce_eager=False)
    assert compiled.llm_engine.vllm_config.compilation_config.mode != 0  # type: ignore[attr-defined]
    with pytest.raises(sl.SteerlabError, match="eager"):
        check_engine(compiled)
    check_engine(engine(enforce_eager=True, compilation_config={"mode": 3}))


def test_a_model_runner_without_the_v1_batch_is_refused_in_one_sentence() -> None:
    """vLLM's V2 model runner (GPU) keeps its batch elsewhere: refused, never run unsteered."""

    class _V2Runner:
        sampler = None

    ext = SteeringExtension()
    ext.model_runner = _V2Runner()
    with pytest.raises(RuntimeError, match="V1 model runner"):
        ext.steerlab_describe()
    with pytest.raises(RuntimeError, match="V1 model runner"):
        ext.steerlab_begin("c", b"", False)


def test_identical_settings_travel_once(models: tuple[Model, Model]) -> None:
    vm, _ = models
    v = random_vector(vm, 8)
    ivs = [(sl.Intervention(v, 5, alpha=a),) for a in (1.0, 2.0)] * 50 + [()]
    plan = compile_plan(vm, [list(x) for x in ivs] + [[]])
    small, remap = compact(plan)
    (slot,) = small.sites[Site(5, "resid_post")]
    assert slot.add.shape[0] == 3  # two settings and the empty row
    index = remap[Site(5, "resid_post")][0]
    for r in range(len(ivs) + 1):
        assert torch.equal(slot.add[index[r]], plan.sites[Site(5, "resid_post")][0].add[r])
