"""Apply a steering plan to a model for the duration of a ``with`` block.

Positions come from the attention mask (and cache position when there is no mask), never from
the index inside the current forward chunk, so "steer the generated tokens" keeps working when
the KV cache feeds one token at a time, and left pads are never steered.

A forward pre-hook on the top-level model reads ``attention_mask`` / ``cache_position`` of each
call and records, per row, the absolute token index of each fed token and whether it is a pad.
Per-site hooks (pre-hook for ``resid_pre``, forward hook for ``resid_post``) then apply every
slot. The prompt length per row is either given (the decode engine knows it) or inferred at the
prefill call (the call whose input spans the whole attention mask), which makes the context
work with plain ``model(...)`` and ``model.generate(...)`` too.

Every hook is registered inside an ``ExitStack`` and removed on exit and on exceptions.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from steerlab.errors import SteerlabError
from steerlab.interventions import Intervention, SteeringPlan, compile_plan
from steerlab.models import Model


@dataclass
class _Positions:
    rel: torch.Tensor  # (B, T) token index minus prompt length
    valid: torch.Tensor  # (B, T) False on pads


class SteeringHandle:
    """Live state of an active steering context.

    ``plan`` and ``prompt_lens`` may be replaced between forward calls (the engine drops finished
    rows with :meth:`select`). ``prompt_lens`` None means "infer at the prefill call".
    """

    def __init__(self, plan: SteeringPlan, prompt_lens: torch.Tensor | None) -> None:
        self.plan = plan
        self.prompt_lens = prompt_lens
        self._inferred: torch.Tensor | None = None
        self._pos: _Positions | None = None
        self.calls = 0

    def select(self, idx: torch.Tensor) -> None:
        """Keep only rows ``idx`` of the plan and the prompt lengths."""
        self.plan = self.plan.select(idx)
        if self.prompt_lens is not None:
            self.prompt_lens = self.prompt_lens.index_select(0, idx)
        if self._inferred is not None:
            self._inferred = self._inferred.index_select(0, idx)

    # ------------------------------------------------------------------ hooks

    def _on_model_call(self, _module: nn.Module, args: tuple[Any, ...], kwargs: dict) -> None:
        x = kwargs.get("input_ids")
        if x is None:
            x = kwargs.get("inputs_embeds")
        if x is None and args:
            x = args[0]
        if x is None:
            raise SteerlabError("steering needs input_ids or inputs_embeds in the model call")
        b, t = int(x.shape[0]), int(x.shape[1])
        mask = kwargs.get("attention_mask")
        if isinstance(mask, torch.Tensor) and mask.dim() == 2:
            full = mask.to(torch.long)
            pos = (full.cumsum(-1) - 1)[:, -t:]  # (B, T) absolute token index
            valid = full[:, -t:].bool()
            prefill = full.shape[1] == t
            n_real = full.sum(-1)
        else:
            # No 2-D mask (HF generate omits it when nothing is padded): positions come from
            # position_ids, cache_position or the cache length, never from the chunk index.
            pos_ids = kwargs.get("position_ids")
            cache_pos = kwargs.get("cache_position")
            if isinstance(pos_ids, torch.Tensor):
                pos = pos_ids.to(torch.long).expand(b, t)
            elif isinstance(cache_pos, torch.Tensor):
                pos = cache_pos.to(torch.long)[None, :].expand(b, t)
            else:
                cache = kwargs.get("past_key_values")
                past = int(cache.get_seq_length()) if cache is not None else 0
                pos = torch.arange(past, past + t, device=x.device)[None, :].expand(b, t)
            valid = torch.ones(b, t, dtype=torch.bool, device=x.device)
            prefill = int(pos[0, 0]) == 0
            n_real = pos[:, -1] + 1
        if self.prompt_lens is not None:
            plen = self.prompt_lens
        else:
            if prefill:
                self._inferred = n_real
            if self._inferred is None:
                raise SteerlabError(
                    "the steering context entered mid-sequence: start it before the prefill call"
                )
            plen = self._inferred
        if plen.shape[0] != b:
            raise SteerlabError(f"prompt lengths cover {plen.shape[0]} rows, the batch has {b}")
        if self.plan.batch_size not in (1, b):
            raise SteerlabError(f"steering plan has {self.plan.batch_size} rows, the batch has {b}")
        self._pos = _Positions(rel=pos - plen.to(pos.device)[:, None], valid=valid)
        self.calls += 1

    def _steer(self, site: tuple[int, str], h: torch.Tensor) -> torch.Tensor:
        pos = self._pos
        if pos is None:
            raise SteerlabError("steering hook ran before the model call was seen")
        for slot in self.plan.sites.get(site, ()):
            h = slot.apply(h, pos.rel, pos.valid)
        return h


def _pre_hook(handle: SteeringHandle, site: tuple[int, str]) -> Any:
    def hook(_m: nn.Module, args: tuple[Any, ...], kwargs: dict) -> Any:
        if "hidden_states" in kwargs:
            kwargs = {**kwargs, "hidden_states": handle._steer(site, kwargs["hidden_states"])}
            return args, kwargs
        return (handle._steer(site, args[0]), *args[1:]), kwargs

    return hook


def _post_hook(handle: SteeringHandle, site: tuple[int, str]) -> Any:
    def hook(_m: nn.Module, _args: Any, output: Any) -> Any:
        if isinstance(output, torch.Tensor):
            return handle._steer(site, output)
        if isinstance(output, tuple):
            return (handle._steer(site, output[0]), *output[1:])
        raise SteerlabError(f"unsupported decoder-layer output type {type(output).__name__}")

    return hook


@contextlib.contextmanager
def steering(
    model: Model,
    plan: SteeringPlan | Sequence[Intervention],
    prompt_lens: torch.Tensor | None = None,
) -> Iterator[SteeringHandle]:
    """Steer ``model`` inside the block; every hook is removed on exit, also on exceptions.

    ``plan`` is a compiled :class:`SteeringPlan` (per-row) or a list of interventions applied to
    every row. ``prompt_lens`` (B,) gives each row's prompt length in tokens; when omitted it is
    read from the attention mask at the prefill call.
    """
    if not isinstance(plan, SteeringPlan):
        plan = compile_plan(model, [list(plan)])
    for layer, _point in plan.sites:
        model.check_layer(layer)
    handle = SteeringHandle(plan.to(model.device), prompt_lens)
    with contextlib.ExitStack() as stack:
        if not plan.empty:
            stack.callback(
                model.hf.register_forward_pre_hook(handle._on_model_call, with_kwargs=True).remove
            )
            for site in plan.sites:
                layer, point = site
                module = model.layers[layer]
                if point == "resid_pre":
                    h = module.register_forward_pre_hook(_pre_hook(handle, site), with_kwargs=True)
                else:
                    h = module.register_forward_hook(_post_hook(handle, site))
                stack.callback(h.remove)
        yield handle


def count_hooks(module: nn.Module) -> int:
    """Number of forward (pre-)hooks on ``module`` and all its submodules (tests: no leftovers)."""
    total = 0
    for m in module.modules():
        total += len(m._forward_hooks) + len(m._forward_pre_hooks)
    return total
