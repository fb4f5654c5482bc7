"""The opt-in int8-matmul CPU mode (steerlab.models.int8_linear).

Not exact (the exactness tests run in float32): tested by agreement bounds and by the
invariants the mode keeps: each row's result is independent of its batch, the residual stream
and the steering edits stay float32, α = 0 is the unsteered model in the mode, and calibration
leaves no hook behind.
"""

from __future__ import annotations

import pytest
import torch
from tests.conftest import VectorFactory
from tests.precision_helpers import (
    check_alpha_zero_is_unsteered,
    relative_logit_gap_with_float32_residual,
)

import steerlab.models.int8_linear as int8
from steerlab.errors import SteerlabError
from steerlab.models import load_model
from steerlab.models.int8_linear import Int8DynamicLinear, calibration_ids, smoothing
from steerlab.models.precision import linear_layers


def _outlier_inputs(rows: int = 37, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(96, 64, generator=g) * 0.05
    x = torch.randn(rows, 64, generator=g)
    x[:, 5] *= 60.0  # one channel fifty-odd times the others, as in real activations
    x[3] *= 40.0  # and one token far louder than the rest
    return w, x


def test_a_row_gets_the_same_bits_batched_or_alone() -> None:
    w, x = _outlier_inputs()
    layer = Int8DynamicLinear(w, torch.randn(96), x.abs().amax(0))
    full = layer(x)
    for lo, hi in ((0, 1), (3, 4), (2, 9), (30, 37)):
        assert torch.equal(layer(x[lo:hi]), full[lo:hi])
    assert torch.equal(layer(x.reshape(1, 37, 64))[0], full)  # any leading shape


def test_smoothing_moves_outlier_channels_into_the_weight() -> None:
    w, x = _outlier_inputs()
    ref = x @ w.t()

    def err(layer: Int8DynamicLinear) -> float:
        return float((layer(x) - ref).norm() / ref.norm())

    plain, smooth = Int8DynamicLinear(w, None), Int8DynamicLinear(w, None, x.abs().amax(0))
    assert err(smooth) < 0.03 < err(plain)
    s = smoothing(x.abs().amax(0), w.abs().amax(0))
    assert torch.allclose((x / s) @ (w * s).t(), ref, rtol=1e-4, atol=1e-4)
    unseen = smoothing(torch.zeros(64), w.abs().amax(0))
    assert torch.equal(unseen, torch.ones(64))  # a channel never seen active keeps s = 1


@pytest.mark.parametrize("name", ["tiny-llama", "tiny-gpt2"])
def test_int8_matmuls_agree_with_float32_and_keep_steering_exact(
    name: str, make_vector: VectorFactory
) -> None:
    ref = load_model(name)
    low = load_model(name, matmul_dtype="int8")
    quantized = [m for m in low.hf.modules() if isinstance(m, Int8DynamicLinear)]
    assert quantized  # the mode is on
    assert len(quantized) + sum(isinstance(m, torch.nn.Linear) for m in low.hf.modules()) >= len(
        linear_layers(ref.hf)
    )
    assert not any(m._forward_pre_hooks for m in low.hf.modules())  # calibration left none
    assert 0 < relative_logit_gap_with_float32_residual(ref, low) < 0.1  # rounded only
    check_alpha_zero_is_unsteered(low, make_vector(low, seed=2, norm=4.0))


def test_layers_over_the_error_bound_stay_float32(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(int8, "MAX_ERROR", 0.0)
    none = load_model("tiny-llama", matmul_dtype="int8")
    assert not any(isinstance(m, Int8DynamicLinear) for m in none.hf.modules())
    monkeypatch.setattr(int8, "MAX_ERROR", 1.0)
    every = load_model("tiny-llama", matmul_dtype="int8")
    assert not any(isinstance(m, torch.nn.Linear) for m in every.hf.modules())


def test_calibration_uses_the_chat_template_and_needs_text() -> None:
    model = load_model("embedded")
    ids = calibration_ids(model.tokenizer)
    assert len(ids) == len(int8.CALIBRATION_TURNS)
    question, answer = int8.CALIBRATION_TURNS[0]
    text = model.tokenizer.decode(ids[0][0])
    assert question in text and answer[:40] in text  # both turns, the answer included
    assert not text.startswith(question)  # formatted as a chat, as the runs are
    with pytest.raises(SteerlabError, match="calibration"):
        int8.quantize_linears(model.hf, linear_layers(model.hf), [])


def test_int8_is_refused_where_it_cannot_run() -> None:
    with pytest.raises(SteerlabError, match="hf and nnsight"):
        load_model("tiny-llama", matmul_dtype="int8", backend="transformer_lens")
    with pytest.raises(SteerlabError, match="CPU only"):
        Int8DynamicLinear(torch.zeros(4, 4, device="meta"), None)
