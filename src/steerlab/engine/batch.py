"""What every batched forward loop shares (the decode loops, logit scoring, recording): left
padding, the check of rows' interventions against the model before any work, and the check that
steering did not push the model's output out of the float range."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from steerlab.errors import SteerlabError
from steerlab.interventions import Intervention
from steerlab.models import Model


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


def check_interventions(
    model: Model,
    rows: Sequence[Sequence[Intervention]],
    where: str,
    *,
    scoring: bool = False,
) -> None:
    """Fail before any work (and before a progress bar) on an intervention the model cannot take:
    a layer or site it does not have, a vector of another width; each distinct (vector, site,
    positions) is checked once. ``where`` names a row in messages (``row``, ``prompt``).
    ``scoring``: the rows are scored from next-token logits, which generate nothing, so a
    position mode that selects only generated tokens would steer nothing and is refused."""
    seen: set[tuple[int, object, str]] = set()
    for i, ivs in enumerate(rows):
        for iv in ivs:
            if not isinstance(iv, Intervention):
                raise SteerlabError(
                    f"{where} {i}: interventions must be Intervention objects, got "
                    f"{type(iv).__name__}"
                )
            key = (id(iv.vector), iv.site, iv.positions)
            if key in seen:
                continue
            seen.add(key)
            if scoring and iv.window.bounds[0] >= 0:
                raise SteerlabError(
                    f"{where} {i}: {iv.describe()} steers only generated tokens, and next-token "
                    "scoring generates none, so it would change nothing; use 'last-prompt' "
                    "(the token whose logits are read), 'prompt' or 'all'"
                )
            model.check_layer(iv.layer)
            model.backend.check_site(iv.site)
            iv.vector.check_d_model(model.d_model)
