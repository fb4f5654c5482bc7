"""The opt-in bf16-matmul CPU mode (steerlab.models.precision).

Only the matrix products change precision: the residual stream and every steering edit stay in
float32, the steering algebra and positions are unchanged, and the engine's invariants (α = 0 is
the baseline, continuous == fixed batches == alone) hold inside the mode.
"""

from __future__ import annotations

import pytest
import torch
from tests.conftest import VectorFactory

from steerlab.engine.generate import GenerationConfig, Row, generate
from steerlab.errors import SteerlabError
from steerlab.interventions import Intervention
from steerlab.models import load_model
from steerlab.models.precision import LowPrecisionLinear
from steerlab.sites import Site

PROMPTS = ("Hey!", "Hello there", "The cat sat on a mat")


@pytest.mark.parametrize("name", ["tiny-llama", "tiny-gpt2"])
def test_bf16_matmuls_keep_the_residual_in_float32(name: str, make_vector: VectorFactory) -> None:
    ref = load_model(name)
    low = load_model(name, matmul_dtype="bf16")
    linears = [m for m in low.hf.modules() if isinstance(m, LowPrecisionLinear)]
    assert linears and all(m.weight.dtype == torch.bfloat16 for m in linears)
    assert not any(isinstance(m, torch.nn.Linear) for m in low.hf.modules())
    seen: list[torch.dtype] = []

    def record(h: torch.Tensor) -> torch.Tensor:
        seen.append(h.dtype)
        return h

    ids = torch.tensor([low.encode(PROMPTS[2])])
    mask = torch.ones_like(ids)
    with torch.inference_mode():
        a = ref.backend.forward(ids, mask, mask.cumsum(-1) - 1)
        b = low.backend.forward(
            ids, mask, mask.cumsum(-1) - 1, edits={Site(1, "resid_post"): [record]}
        )
    assert a is not None and b is not None
    assert seen == [torch.float32] and b.dtype == torch.float32
    assert 0 < float((a - b).abs().max()) < 0.1  # rounded, not a different model
    # α = 0 is exactly the unsteered model in the mode, and steering still moves it
    vec = make_vector(low, seed=2, norm=4.0)
    rows = [Row(p) for p in PROMPTS]
    zero = [Row(p, (Intervention(vec, 1, "add", 0.0, scale="resid"),)) for p in PROMPTS]
    big = [Row(p, (Intervention(vec, 1, "add", 8.0, scale="resid"),)) for p in PROMPTS]
    cfg = GenerationConfig(max_new_tokens=8)
    plain = generate(low, rows, cfg, progress=False)
    assert [r.token_ids for r in generate(low, zero, cfg, progress=False)] == [
        r.token_ids for r in plain
    ]
    assert [r.token_ids for r in generate(low, big, cfg, progress=False)] != [
        r.token_ids for r in plain
    ]
    fixed = generate(low, big, GenerationConfig(max_new_tokens=8, continuous=False), progress=False)
    alone = [generate(low, [r], cfg, progress=False)[0] for r in big]
    assert (
        [r.token_ids for r in fixed]
        == [r.token_ids for r in alone]
        == [r.token_ids for r in generate(low, big, cfg, progress=False)]
    )


def test_bad_matmul_dtype_and_backend() -> None:
    with pytest.raises(SteerlabError, match="unknown matmul dtype"):
        load_model("tiny-llama", matmul_dtype="int3")
    with pytest.raises(SteerlabError, match="hf and nnsight"):
        load_model("tiny-llama", matmul_dtype="bf16", backend="transformer_lens")
