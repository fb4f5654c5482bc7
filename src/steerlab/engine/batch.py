"""What every batched forward loop shares (the decode engines, logit scoring): left padding
and the check that steering did not push the model's output out of the float range."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from steerlab.errors import SteerlabError
from steerlab.interventions import Intervention


def left_pad(
    batch: Sequence[Sequence[int]], pad_id: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(ids, mask)`` (B, W): each row's tokens right-aligned after pads (mask 0 on pads)."""
    width = max(len(x) for x in batch)
    ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    for r, x in enumerate(batch):
        ids[r, width - len(x) :] = torch.tensor(x, dtype=torch.long)
        mask[r, width - len(x) :] = 1
    return ids.to(device), mask.to(device)


def check_finite(
    logits: torch.Tensor,
    overflow: torch.Tensor | None,
    interventions: Sequence[Sequence[Intervention]],
) -> None:
    """Steering strong enough to overflow the residual (its norm leaves float32, after which
    norm layers output zeros) or the logits gives pad-token garbage: stop with the setting that
    did it instead. ``interventions[i]`` are batch row ``i``'s."""
    # a row's max is nan or +inf and its min nan or -inf exactly when some entry is not finite:
    # two reads of the logits instead of isfinite's elementwise passes over (b, V)
    flags = ~(torch.isfinite(logits.amax(-1)) & torch.isfinite(logits.amin(-1)))  # (b,)
    if overflow is not None:
        flags = flags | overflow.to(flags.device)
    bad = flags.nonzero().squeeze(-1).tolist()
    if bad:
        ivs = ", ".join(iv.describe() for iv in interventions[bad[0]])
        raise SteerlabError(
            f"steering made the model's output non-finite (NaN/inf) in {len(bad)} row(s), "
            f"e.g. under {ivs}: the coefficient is far too large"
        )
