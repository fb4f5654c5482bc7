"""The one steered forward pass every local loop runs (generation's prefill and decode steps,
shared prefixes and lower layers, logit scoring, layer scoring, activation recording).

One call: the steering handle is told the positions of the fed tokens (from the attention mask,
never from the index inside the chunk), its per-site edits and any recording edits go to the
backend, the backend runs the blocks (all of them, from ``start`` on, or up to ``stop_at``), and
the logits are checked for values steering pushed out of the float range.

:func:`steering_for` compiles rows' interventions into that handle (compile plan -> handle);
:func:`local_backend` is the model's backend when it can run forward passes here (a backend
whose forward passes belong to another engine has no local forward).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from steerlab.backends.base import Backend, Edits, SiteFn, call_info_from_mask
from steerlab.engine.batch import check_finite
from steerlab.engine.handle import SteeringHandle
from steerlab.engine.plan import compile_plan
from steerlab.errors import SteerlabError
from steerlab.interventions import Intervention
from steerlab.models import Model
from steerlab.sites import Site


def local_backend(model: Model) -> Backend:
    """``model.backend`` when it runs forward passes in this process, else a clear error."""
    backend = model.backend
    if not isinstance(backend, Backend):
        raise SteerlabError(
            f"the {backend.name} backend runs its forward passes in its own engine; this "
            "operation needs a local backend (hf, transformer_lens or nnsight)"
        )
    return backend


def steering_for(
    model: Model, ivs: Sequence[Sequence[Intervention]], prompt_lens: torch.Tensor
) -> SteeringHandle | None:
    """The handle steering batch row ``i`` by ``ivs[i]`` (its prompt has ``prompt_lens[i]``
    tokens), its plan on the model's device; None when no row is steered."""
    if not any(ivs):
        return None
    plan = compile_plan(model, [list(x) for x in ivs]).to(model.device)
    return SteeringHandle(plan, prompt_lens)


def positions(mask: torch.Tensor, s: int) -> torch.Tensor:
    """(B, s) position ids of the last ``s`` columns of ``mask`` (B, T): each token's index
    among its row's real tokens (pads count 0)."""
    return (mask.cumsum(-1) - 1).clamp_(min=0)[:, -s:]


def steered_forward(
    backend: Backend,
    ids: torch.Tensor,
    mask: torch.Tensor,
    cache: object | None = None,
    *,
    steer: SteeringHandle | None = None,
    record: Mapping[Site, Sequence[SiteFn]] | None = None,
    start: int = 0,
    resid: torch.Tensor | None = None,
    stop_at: Site | None = None,
    check: Sequence[Sequence[Intervention]] | None = None,
) -> torch.Tensor | None:
    """Run ``ids`` (B, S) through the model; the float32 logits (B, V) of the last position.

    ``mask`` (B, P + S) covers the ``P`` columns already in ``cache`` and the fed ones;
    positions come from it. ``steer`` applies its plan's rows to the batch rows (its plan and
    prompt lengths must already be the batch's); ``record`` adds edits that run after the
    steering at their sites (e.g. to read activations). ``start`` > 0 runs only blocks
    ``start ..`` on ``resid`` (B, S, d), the residual entering block ``start``
    (:meth:`~steerlab.backends.base.Backend.forward_from`). ``stop_at`` ends the pass after that
    site's edits and returns None. ``check``, when given, names each batch row's interventions:
    non-finite logits (or a steered residual that overflowed) stop with the setting that did it.
    """
    s = ids.shape[1]
    edits: dict[Site, list[SiteFn]] = {}
    if steer is not None:
        steer.observe(call_info_from_mask(mask, s))
        edits = steer.edits()
    for site, fns in (record or {}).items():
        edits[site] = [*edits.get(site, ()), *fns]
    pos = positions(mask, s)
    given: Edits | None = edits if (steer is not None or record is not None) else None
    if start:
        assert resid is not None and stop_at is None
        logits: torch.Tensor | None = backend.forward_from(
            start, resid, ids, mask, pos, cache, given
        )
    else:
        logits = backend.forward(ids, mask, pos, cache, given, stop_at=stop_at)
    if logits is not None and check is not None:
        check_finite(logits, None if steer is None else steer.overflow, check)
    return logits
