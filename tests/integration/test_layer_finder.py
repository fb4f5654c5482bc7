"""The layer finder: a planted direction whose best layer is known, an independent reference
computed with plain torch hooks one row at a time, all layers in one pass == each layer alone,
strength 0 is exactly nothing, no hooks left behind, the report's files, and the command.
"""

from __future__ import annotations

import csv
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
from tests.cli_run import cli

from steerlab.analysis.layer_finder import (
    CSV_COLUMNS,
    DEFAULT_NEUTRAL_PROMPTS,
    LayerReport,
    content_positions,
    find_layers,
    parse_layers,
    steered_logprobs,
    target_token_ids,
)
from steerlab.errors import SteerlabError
from steerlab.models import Model, model_from_hf
from steerlab.models.tiny import build_tiny_model
from steerlab.vectors import SteeringVector

POS = "I am helpful and honest."
NEG = "I am unhelpful and deceptive."
TESTS = ["Tell me about", "I think you are"]
NEUTRAL = ["The weather today is", "Once upon a time"]


def contrast_report(model: Model, **kwargs: Any) -> LayerReport:
    args: dict[str, Any] = {
        "positive": POS,
        "negative": NEG,
        "neutral_prompts": NEUTRAL,
        "strength": 1.0,
    }
    args.update(kwargs)
    return find_layers(model, TESTS, "helpful", **args)


# ----------------------------------------------------------------------------- planted direction


@pytest.fixture(scope="module")
def identity_llama() -> tuple[Model, int]:
    """tiny-llama whose blocks add exactly nothing (attention and MLP output weights zeroed),
    and the token ``t`` whose unembedding row has the largest norm."""
    hf, tok = build_tiny_model("tiny-llama")
    with torch.no_grad():
        for block in hf.model.layers:
            block.self_attn.o_proj.weight.zero_()
            block.mlp.down_proj.weight.zero_()
    assert torch.equal(hf.model.norm.weight, torch.ones_like(hf.model.norm.weight))
    t = int(hf.lm_head.weight.norm(dim=-1).argmax())
    return model_from_hf(hf, tok, "tiny-llama-identity"), t


@pytest.mark.parametrize("k", [0, 1, 2, 3])
def test_planted_direction_ranks_its_layer_first(identity_llama: tuple[Model, int], k: int) -> None:
    """Why layer ``k`` must win. Every block adds exactly 0, so the residual stream is the
    embedding at every layer: the mean residual norm ``r`` is the same at every layer, and
    steering at layer ``L`` makes the final residual ``e + c·u_L`` (``c = strength·r``) whatever
    ``L`` is. The direction is ``u_k = +w`` at layer ``k`` and ``-w`` at every other layer, with
    ``w`` the unembedding row of ``t``, the token whose row is longest. For ``c ≫ |e|`` the final
    RMSNorm (weight 1) makes the logits ``≈ √d·W_U(±w)``, and by Cauchy–Schwarz
    ``W_U[j]·w ≤ |W_U[j]| ≤ |W_U[t]| = W_U[t]·w``: ``t`` becomes the most likely token under
    ``+w`` and the least likely under ``-w``. So log P(t) rises only at layer ``k``, and the
    other layers' effects are identical. A row steered at the wrong layer, or a row scored
    against another row's logits, breaks the ranking or the equality."""
    model, t = identity_llama
    w = model.hf.lm_head.weight.detach()[t]  # (d_model,)
    vec = SteeringVector({layer: w if layer == k else -w for layer in range(model.n_layers)})
    report = find_layers(model, TESTS, target_ids=[t], vector=vec, strength=4.0)
    assert report.best.layer == k
    assert report.best.rank == 1
    assert report.best.effect > 0
    others = [row for row in report.table if row.layer != k]
    assert all(row.effect < 0 for row in others)
    for row in others:
        assert row.effect == pytest.approx(others[0].effect, abs=1e-6)
        assert row.resid_norm == pytest.approx(report.best.resid_norm, abs=1e-6)
    assert model.backend.count_hooks() == 0


# ----------------------------------------------------------------------------- reference


def _block_output(out: Any) -> torch.Tensor:
    return out if isinstance(out, torch.Tensor) else out[0]


def hf_logprobs(
    model: Model,
    text: str,
    layer: int | None = None,
    add: torch.Tensor | None = None,
    sink: list[torch.Tensor] | None = None,
) -> torch.Tensor:
    """Next-token log-probs (V,) of ``text`` alone (no padding), computed by the Hugging Face
    model with one plain torch hook on block ``layer``'s output: record it, or add ``add``."""
    hf = model.hf
    ids = torch.tensor([model.encode(text)])  # (1, T)

    def hook(_m: torch.nn.Module, _args: Any, out: Any) -> Any:
        h = _block_output(out)
        if sink is not None:
            sink.append(h[0].detach().clone())  # (T, d)
        if add is not None:
            h = h + add
        return h if isinstance(out, torch.Tensor) else (h, *out[1:])

    handle = hf.model.layers[layer].register_forward_hook(hook) if layer is not None else None
    try:
        with torch.inference_mode():
            logits = hf(input_ids=ids, use_cache=False).logits[0, -1].float()  # (V,)
    finally:
        if handle is not None:
            handle.remove()
    return logits.log_softmax(-1)


@dataclass
class Ref:
    effect: float
    cost: float
    resid_norm: float
    direction: torch.Tensor


def reference(model: Model, layer: int, strength: float, targets: list[int]) -> Ref:
    """The finder's numbers for one layer, from the definition, one prompt at a time."""

    def acts(text: str) -> torch.Tensor:
        sink: list[torch.Tensor] = []
        hf_logprobs(model, text, layer, sink=sink)
        return sink[0][1:]  # (T-1, d): the first token (the attention sink) left out

    direction = acts(POS).mean(0) - acts(NEG).mean(0)
    r = sum(float(acts(p).norm(dim=-1).mean()) for p in TESTS + NEUTRAL) / len(TESTS + NEUTRAL)
    add = strength * r * direction / direction.norm()
    effects, costs = [], []
    for text in TESTS:
        base = hf_logprobs(model, text)
        steered = hf_logprobs(model, text, layer, add=add)
        effects.append(float(steered[targets].logsumexp(-1) - base[targets].logsumexp(-1)))
    for text in NEUTRAL:
        base = hf_logprobs(model, text)
        steered = hf_logprobs(model, text, layer, add=add)
        costs.append(float((base.exp() * (base - steered)).sum()))
    return Ref(sum(effects) / len(effects), sum(costs) / len(costs), r, direction)


@pytest.mark.parametrize("strength", [0.5, -1.5])
def test_matches_a_plain_torch_reference_row_by_row(tiny_llama: Model, strength: float) -> None:
    """Batched, padded, all layers at once == each (prompt, layer) alone with a plain hook."""
    report = contrast_report(tiny_llama, strength=strength)
    targets = list(report.target_ids)
    for layer in range(tiny_llama.n_layers):
        ref = reference(tiny_llama, layer, strength, targets)
        row = report.score(layer)
        torch.testing.assert_close(report.vector.direction(layer), ref.direction)
        assert row.resid_norm == pytest.approx(ref.resid_norm, abs=1e-5, rel=1e-5)
        assert row.effect == pytest.approx(ref.effect, abs=1e-5)
        assert row.cost == pytest.approx(ref.cost, abs=1e-5)
        assert abs(row.effect) > 1e-3 and row.cost > 1e-4  # the comparison is not vacuous


def test_all_layers_in_one_pass_equal_each_layer_alone(
    tiny_model: Model, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[int] = []
    real = tiny_model.backend.forward

    def spy(ids: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        calls.append(int(ids.shape[0]))
        return real(ids, *args, **kwargs)

    monkeypatch.setattr(tiny_model.backend, "forward", spy)
    full = contrast_report(tiny_model)
    n_rows = len(TESTS) + len(NEUTRAL)
    # one recording pass, then one steered pass: unsteered rows + one copy per layer
    assert calls == [2 + n_rows, n_rows * (tiny_model.n_layers + 1)]
    chunked = contrast_report(tiny_model, layers_per_batch=1)
    for layer in range(tiny_model.n_layers):
        alone = contrast_report(tiny_model, layers=[layer]).table[0]
        for other in (alone, chunked.score(layer)):
            row = full.score(layer)
            assert other.layer == layer
            assert other.effect == pytest.approx(row.effect, abs=1e-5)
            assert other.cost == pytest.approx(row.cost, abs=1e-5)
    assert tiny_model.backend.count_hooks() == 0


def test_strength_zero_is_exactly_nothing(tiny_model: Model) -> None:
    report = contrast_report(tiny_model, strength=0.0)
    for row in report.table:
        assert row.effect == 0.0
        assert row.cost == 0.0
    assert [row.layer for row in report.table] == list(range(tiny_model.n_layers))  # ties: layer
    assert tiny_model.backend.count_hooks() == 0


def test_report_intervention_reproduces_a_row(tiny_llama: Model) -> None:
    """Steering with ``report.intervention(L)`` (scale="resid", alpha=strength) gives the effect
    the report measured for ``L``."""
    report = contrast_report(tiny_llama, strength=0.7)
    targets = list(report.target_ids)
    for layer in (0, 2):
        iv = report.intervention(layer)
        seqs = [tiny_llama.encode(t) for t in TESTS]
        for_rows: list[tuple[Any, ...]] = [(), ()]
        base, _ = steered_logprobs(tiny_llama, seqs, for_rows)
        steered, _ = steered_logprobs(tiny_llama, seqs, [(iv,), (iv,)])
        effect = (steered[:, targets].logsumexp(-1) - base[:, targets].logsumexp(-1)).mean()
        assert float(effect) == pytest.approx(report.score(layer).effect, abs=1e-5)


def test_failure_leaves_no_hooks(tiny_llama: Model) -> None:
    with pytest.raises(SteerlabError, match=r"non-finite .*strength 1e\+30 is far too large"):
        contrast_report(tiny_llama, strength=1e30)
    assert tiny_llama.backend.count_hooks() == 0


def test_given_tensor_equals_vector_with_that_direction_everywhere(tiny_llama: Model) -> None:
    d = torch.randn(tiny_llama.d_model, generator=torch.Generator().manual_seed(0))
    a = find_layers(tiny_llama, TESTS, "a", vector=d, neutral_prompts=NEUTRAL)
    v = SteeringVector({layer: 3 * d for layer in range(tiny_llama.n_layers)})
    b = find_layers(tiny_llama, TESTS, "a", vector=v, neutral_prompts=NEUTRAL)
    assert a.layers == b.layers
    for x, y in zip(a.table, b.table, strict=True):  # unit(3d) == unit(d) up to rounding
        assert x.effect == pytest.approx(y.effect, abs=1e-5)
        assert x.cost == pytest.approx(y.cost, abs=1e-5)


def test_rank_by_effect_per_cost(tiny_llama: Model) -> None:
    report = contrast_report(tiny_llama, rank_by="effect_per_cost")
    ratios = [row.effect_per_cost for row in report.table]
    assert ratios == sorted(ratios, reverse=True)
    assert [row.rank for row in report.table] == list(range(1, tiny_llama.n_layers + 1))
    for row in report.table:
        assert row.effect_per_cost == pytest.approx(row.effect / row.cost)


# ----------------------------------------------------------------------------- pieces


def test_target_token_ids_dedupe_first_tokens(tiny_llama: Model) -> None:
    tok = tiny_llama.tokenizer
    first = [tok(s, add_special_tokens=False)["input_ids"][0] for s in ("h", " h", "H")]
    assert target_token_ids(tok, "helpful") == tuple(first)
    assert target_token_ids(tok, " Helpful ") == (first[2], first[1], first[0])
    with pytest.raises(SteerlabError, match="target word is empty"):
        target_token_ids(tok, "  ")


def test_content_positions_drop_the_first_token(tiny_llama: Model) -> None:
    bos = tiny_llama.tokenizer.bos_token_id
    assert content_positions(tiny_llama, [bos, 70, 71]) == [1, 2]
    assert content_positions(tiny_llama, [70, bos, 71]) == [1, 2]  # BOS or not: the sink
    assert content_positions(tiny_llama, [bos]) == [0]  # a lone token is kept


def test_parse_layers() -> None:
    assert parse_layers("0,2, 4") == [0, 2, 4]
    for bad in ("", "0,x", "1.5"):
        with pytest.raises(SteerlabError, match="comma-separated list of layer indices"):
            parse_layers(bad)


def test_default_neutral_prompts_are_used(tiny_llama: Model) -> None:
    report = find_layers(tiny_llama, "Tell me about", "a", positive=POS, negative=NEG)
    assert report.neutral_prompts == DEFAULT_NEUTRAL_PROMPTS
    assert report.test_prompts == ("Tell me about",)


def test_csv_plot_and_text(tiny_llama: Model, tmp_path: Path) -> None:
    report = contrast_report(tiny_llama)
    path = report.to_csv(tmp_path / "out" / "layers.csv")
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert tuple(rows[0]) == CSV_COLUMNS
    assert [int(r["layer"]) for r in rows] == report.layers
    for got, want in zip(rows, report.table, strict=True):
        assert float(got["effect"]) == want.effect  # repr round-trips floats exactly
        assert float(got["cost"]) == want.cost
        assert int(got["rank"]) == want.rank
    png = report.plot(tmp_path / "out" / "layers.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    text = report.format().splitlines()
    assert len(text) == 2 + tiny_llama.n_layers
    assert text[2].split()[:2] == ["1", str(report.best.layer)]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["layers.csv", "layers.png"]


def test_core_does_not_import_matplotlib() -> None:
    code = (
        "import sys, steerlab.analysis.layer_finder, steerlab.shortcuts; "
        "print('matplotlib' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


BAD: list[tuple[dict[str, Any], str]] = [
    ({"vector": torch.ones(64)}, "either vector or positive/negative"),
    ({"positive": None}, "give a vector, or both positive and negative"),
    ({"negative": [NEG, NEG]}, r"as many positive as negative prompts \(1 vs 2\)"),
    ({"negative": POS}, "contrast direction at layer 0 is exactly zero"),
    ({"layers": [4]}, r"layer 4 is out of range: tiny-llama has 4 layers"),
    ({"layers": []}, "at least one layer"),
    ({"strength": float("nan")}, "strength must be a finite number"),
    ({"rank_by": "cost"}, "unknown rank_by 'cost'"),
    ({"hook": "blocks.1.hook_resid_post"}, "names a layer"),
    ({"positions": "middle"}, "unknown positions 'middle'"),
    ({"positions": "generated"}, "selects no prompt token"),
    ({"neutral_prompts": []}, "at least one neutral prompt"),
    ({"layers_per_batch": 0}, "layers_per_batch must be at least 1"),
    ({"target_ids": [3]}, "exactly one of target_word or target_ids"),
]


@pytest.mark.parametrize(("kwargs", "message"), BAD)
def test_bad_input_is_one_clear_error(
    tiny_llama: Model, kwargs: dict[str, Any], message: str
) -> None:
    with pytest.raises(SteerlabError, match=message) as info:
        contrast_report(tiny_llama, **kwargs)
    assert "\n" not in str(info.value)
    assert tiny_llama.backend.count_hooks() == 0


def test_bad_vectors_and_targets(tiny_llama: Model) -> None:
    one_layer = SteeringVector({1: torch.ones(64)})
    with pytest.raises(SteerlabError, match=r"no direction at layers \[0, 2, 3\]"):
        find_layers(tiny_llama, TESTS, "a", vector=one_layer)
    assert find_layers(tiny_llama, TESTS, "a", vector=one_layer, layers=[1]).layers == [1]
    with pytest.raises(SteerlabError, match=r"shape \(64,\) \(d_model\), got \(1, 64\)"):
        find_layers(tiny_llama, TESTS, "a", vector=torch.ones(1, 64))
    with pytest.raises(SteerlabError, match="all zeros"):
        find_layers(tiny_llama, TESTS, "a", vector=torch.zeros(64))
    with pytest.raises(SteerlabError, match="target_ids must be token ids"):
        find_layers(tiny_llama, TESTS, target_ids=[10**6], vector=torch.ones(64))
    with pytest.raises(SteerlabError, match="test prompt '' encodes to zero tokens"):
        find_layers(tiny_llama, [""], "a", vector=torch.ones(64))


# ----------------------------------------------------------------------------- command


FIND = (
    "find-layers",
    "--model",
    "tiny-llama",
    "--positive",
    POS,
    "--negative",
    NEG,
    "--test-prompt",
    TESTS[0],
    "--test-prompt",
    TESTS[1],
    "--target-word",
    "helpful",
    "--neutral",
    NEUTRAL[0],
    "--neutral",
    NEUTRAL[1],
)


def test_command_writes_table_and_plot(
    tiny_llama: Model, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    r = cli(capsys, *FIND, "--layers", "1,3", "--strength", "0.5", "--out", tmp_path)
    assert r.code == 0, r.err
    want = contrast_report(tiny_llama, layers=[1, 3], strength=0.5)
    with open(tmp_path / "layers.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert [int(row["layer"]) for row in rows] == want.layers
    for got, row in zip(rows, want.table, strict=True):
        assert float(got["effect"]) == pytest.approx(row.effect, abs=1e-6)
    assert (tmp_path / "layers.png").read_bytes()[:4] == b"\x89PNG"
    assert want.format() in r.out


BAD_CLI: list[tuple[tuple[str, ...], str]] = [
    (("--layers", "1,x"), "not a comma-separated list"),
    (("--layers", "9"), "layer 9 is out of range"),
    (("--rank-by", "cost"), "unknown rank_by"),
    (("--vector", "no/such/vector.safetensors"), "no such vector file"),
]


@pytest.mark.parametrize(("extra", "message"), BAD_CLI)
def test_command_bad_input_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], extra: tuple[str, ...], message: str
) -> None:
    r = cli(capsys, *FIND, *extra, "--out", tmp_path / "out")
    assert r.code == 2
    lines = r.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], r.err
    assert not (tmp_path / "out").exists()
