"""Apply a compiled steering plan through a backend: the steering handle and context.

Positions come from the attention mask (and cache position when there is no mask), never from
the index inside the current forward chunk, so "steer the generated tokens" keeps working when
the KV cache feeds one token at a time, and left pads are never steered.

:class:`SteeringHandle` turns a :class:`~steerlab.engine.plan.SteeringPlan` into per-site edit
functions (the backend protocol's currency). Before each forward call it is told the absolute token
index of every fed token and which are pads: by the decode engine directly, or, under
:func:`steering`, by the backend observing the user's own call. The prompt length per row is either
given (the engine knows it) or inferred at the prefill call (the call whose input spans the whole
attention mask), which makes the context work with plain ``model(...)`` and ``model.generate(...)``
too.

Every hook a backend installs is removed on exit and on exceptions.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from steerlab.backends.base import CallInfo, SiteFn
from steerlab.engine.plan import SteeringPlan, compile_plan
from steerlab.errors import SteerlabError
from steerlab.interventions import Intervention
from steerlab.sites import Site

if TYPE_CHECKING:
    from steerlab.models import Model


@dataclass
class _Positions:
    rel: torch.Tensor  # (B, S) token index minus prompt length
    valid: torch.Tensor  # (B, S) False on pads


class SteeringHandle:
    """Live state of an active steering plan.

    ``plan`` and ``prompt_lens`` may be replaced between forward calls (the engine drops finished
    rows with :meth:`select`). ``prompt_lens`` None means "infer at the prefill call".
    """

    def __init__(self, plan: SteeringPlan, prompt_lens: torch.Tensor | None) -> None:
        self.plan = plan
        self.prompt_lens = prompt_lens
        self._inferred: torch.Tensor | None = None
        self._last_n: torch.Tensor | None = None
        self._last_ids: torch.Tensor | None = None
        self._pos: _Positions | None = None
        #: (B,) rows whose steered residual left the float range during the current call
        self.overflow: torch.Tensor | None = None
        self.calls = 0

    def select(self, idx: torch.Tensor) -> None:
        """Keep only rows ``idx`` of the plan and the prompt lengths."""
        self.plan = self.plan.select(idx)
        if self.prompt_lens is not None:
            self.prompt_lens = self.prompt_lens.index_select(0, idx)
        if self._inferred is not None:
            self._inferred = self._inferred.index_select(0, idx)
        if self._last_n is not None:
            self._last_n = self._last_n.index_select(0, idx)
        if self._last_ids is not None:
            self._last_ids = self._last_ids.index_select(0, idx.to(self._last_ids.device))

    def observe(self, info: CallInfo) -> None:
        """Record the positions of the forward call about to run."""
        b = int(info.pos.shape[0])
        if self.prompt_lens is not None:
            plen = self.prompt_lens
        else:
            if info.prefill and not self._continues(info):
                self._inferred = info.n_real
            if self._inferred is None:
                raise SteerlabError(
                    "the steering context entered mid-sequence: start it before the prefill call"
                )
            plen = self._inferred
        if plen.shape[0] != b:
            raise SteerlabError(f"prompt lengths cover {plen.shape[0]} rows, the batch has {b}")
        if self.plan.batch_size not in (1, b):
            raise SteerlabError(f"steering plan has {self.plan.batch_size} rows, the batch has {b}")
        self._pos = _Positions(rel=info.pos - plen.to(info.pos.device)[:, None], valid=info.valid)
        self.overflow = None
        self._last_n = info.n_real
        self._last_ids = info.ids
        self.calls += 1

    def _continues(self, info: CallInfo) -> bool:
        """A full-sequence call that re-feeds the previous call's tokens plus one per row is a
        decoding step without a KV cache, not a new prompt: keep the prompt lengths. (Without
        token ids, one more real token per row than the previous call is taken as that.)"""
        last, n_real = self._last_n, info.n_real
        if self._inferred is None or last is None or last.shape != n_real.shape:
            return False
        if not bool((n_real == last.to(n_real.device) + 1).all()):
            return False
        prev, ids = self._last_ids, info.ids
        if prev is None or ids is None:
            return prev is None and ids is None
        return ids.shape[1] == prev.shape[1] + 1 and torch.equal(ids[:, :-1], prev.to(ids.device))

    def _steer(self, site: Site, h: torch.Tensor) -> torch.Tensor:
        pos = self._pos
        if pos is None:
            raise SteerlabError("steering hook ran before the model call was seen")
        for slot in self.plan.sites.get(site, ()):
            h = slot.apply(h, pos.rel, pos.valid)
        # A norm that overflows float32 makes every later norm layer output zeros (then the
        # model emits pad tokens): flag the rows; the engine stops with a clear message.
        bad = ~torch.isfinite(h.float().pow(2).sum(-1)).all(-1)  # (B,)
        self.overflow = bad if self.overflow is None else self.overflow | bad
        return h

    def edits(self) -> dict[Site, list[SiteFn]]:
        """One edit function per steered site (the backend protocol's form of the plan)."""

        def fn_for(site: Site) -> SiteFn:
            return lambda h: self._steer(site, h)

        return {site: [fn_for(site)] for site in self.plan.sites}


@contextlib.contextmanager
def steering(
    model: Model,
    plan: SteeringPlan | Sequence[Intervention],
    prompt_lens: torch.Tensor | None = None,
) -> Iterator[SteeringHandle]:
    """Steer the user's own calls on ``model`` inside the block (e.g. Hugging Face ``generate``);
    every hook is removed on exit, also on exceptions.

    ``plan`` is a compiled :class:`SteeringPlan` (per-row) or a list of interventions applied to
    every row. ``prompt_lens`` (B,) gives each row's prompt length in tokens; when omitted it is
    read from the attention mask at the prefill call.
    """
    if not isinstance(plan, SteeringPlan):
        plan = compile_plan(model, [list(plan)])
    for site in plan.sites:
        model.backend.check_site(site)
    handle = SteeringHandle(plan.to(model.device), prompt_lens)
    if plan.empty:
        yield handle
        return
    with model.backend.attach(handle.edits(), handle.observe):
        yield handle


def count_hooks(module: torch.nn.Module) -> int:
    """Number of forward (pre-)hooks on ``module`` and all its submodules (tests: no leftovers)."""
    total = 0
    for m in module.modules():
        total += len(m._forward_hooks) + len(m._forward_pre_hooks)
    return total
