"""The opt-in bf16-matmul CPU mode (steerlab.models.precision).

Only the matrix products change precision: the residual stream and every steering edit stay in
float32, the steering algebra and positions are unchanged, and the engine's invariants (α = 0 is
the baseline, continuous == fixed batches == alone) hold inside the mode.
"""

from __future__ import annotations

import pytest
import torch
from tests.conftest import VectorFactory
from tests.precision_helpers import (
    check_alpha_zero_is_unsteered,
    relative_logit_gap_with_float32_residual,
    steered_rows,
)

from steerlab.engine.generate import GenerationConfig, generate
from steerlab.errors import SteerlabError
from steerlab.models import load_model
from steerlab.models.precision import LowPrecisionLinear, cpu_has_native_bf16


@pytest.mark.parametrize("name", ["tiny-llama", "tiny-gpt2"])
def test_bf16_matmuls_keep_the_residual_in_float32(name: str, make_vector: VectorFactory) -> None:
    ref = load_model(name)
    low = load_model(name, matmul_dtype="bf16")
    linears = [m for m in low.hf.modules() if isinstance(m, LowPrecisionLinear)]
    emulated = not cpu_has_native_bf16()  # the CPU decides
    assert linears and all(m.emulate is emulated for m in linears)
    for m in linears:  # weights rounded to bf16, stored in float32 where emulated
        assert m.weight.dtype == (torch.float32 if emulated else torch.bfloat16)
        assert torch.equal(m.weight, m.weight.to(torch.bfloat16).to(m.weight.dtype))
    assert not any(isinstance(m, torch.nn.Linear) for m in low.hf.modules())
    assert 0 < relative_logit_gap_with_float32_residual(ref, low) < 0.1  # rounded only
    vec = make_vector(low, seed=2, norm=4.0)
    cfg = check_alpha_zero_is_unsteered(low, vec)
    big = steered_rows(vec, 8.0)
    fixed = generate(low, big, GenerationConfig(max_new_tokens=8, continuous=False), progress=False)
    alone = [generate(low, [r], cfg, progress=False)[0] for r in big]
    assert (
        [r.token_ids for r in fixed]
        == [r.token_ids for r in alone]
        == [r.token_ids for r in generate(low, big, cfg, progress=False)]
    )


def test_emulated_bf16_is_the_native_product() -> None:
    """Without a native bf16 GEMM the layer rounds the operands and the output to bf16 around a
    float32 product: the native bf16 product's numbers, up to the order of summation."""
    torch.manual_seed(0)
    weight, x = torch.randn(96, 64) / 8, torch.randn(5, 7, 64)
    native = LowPrecisionLinear(weight, None, torch.bfloat16, emulate=False)(x)
    emulated_layer = LowPrecisionLinear(weight, None, torch.bfloat16, emulate=True)
    emulated = emulated_layer(x)
    assert emulated_layer.weight.dtype == emulated.dtype == native.dtype == torch.float32
    # one bf16 step (8 significant bits) at each output's magnitude
    step = torch.exp2(torch.floor(torch.log2(native.abs().clamp_min(1e-30))) - 7)
    assert ((native - emulated).abs() <= step).all()
    assert (native == emulated).float().mean() > 0.99  # a sum next to a rounding boundary
    float32 = torch.nn.functional.linear(x, weight)
    assert (float32 == emulated).float().mean() < 0.1  # rounded, not the float32 product


def test_bad_matmul_dtype_and_backend() -> None:
    with pytest.raises(SteerlabError, match="unknown matmul dtype"):
        load_model("tiny-llama", matmul_dtype="int3")
    with pytest.raises(SteerlabError, match="hf and nnsight"):
        load_model("tiny-llama", matmul_dtype="bf16", backend="transformer_lens")
