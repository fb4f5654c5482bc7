"""Shared checks of the reduced-precision matmul modes (bf16, int8): the residual stream and
the steering edits stay float32, and α = 0 is the unsteered model inside the mode."""

from __future__ import annotations

import torch

from steerlab.engine.generate import GenerationConfig, Row, generate
from steerlab.interventions import Intervention
from steerlab.models.model import Model
from steerlab.sites import Site
from steerlab.vectors import SteeringVector

PROMPTS = ("Hey!", "Hello there", "The cat sat on a mat")


def relative_logit_gap_with_float32_residual(ref: Model, low: Model) -> float:
    """``low``'s next-token logits vs ``ref``'s on one prompt, as a relative difference, after
    checking that ``low``'s residual stream (seen by an edit at layer 1) and logits are float32."""
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
    return float((a - b).norm() / a.norm())


def steered_rows(vec: SteeringVector, alpha: float) -> list[Row]:
    """:data:`PROMPTS`, each with one ``add`` of ``vec`` at layer 1 (``scale="resid"``)."""
    return [Row(p, (Intervention(vec, 1, "add", alpha, scale="resid"),)) for p in PROMPTS]


def check_alpha_zero_is_unsteered(low: Model, vec: SteeringVector) -> GenerationConfig:
    """In ``low``'s mode: α = 0 gives the unsteered tokens and α = 8 moves them."""
    cfg = GenerationConfig(max_new_tokens=8)
    plain = [r.token_ids for r in generate(low, [Row(p) for p in PROMPTS], cfg, progress=False)]
    zero = generate(low, steered_rows(vec, 0.0), cfg, progress=False)
    assert [r.token_ids for r in zero] == plain
    big = generate(low, steered_rows(vec, 8.0), cfg, progress=False)
    assert [r.token_ids for r in big] != plain
    return cfg
