"""The nnsight backend: steering expressed as interventions inside nnsight's own tracing.

Every :meth:`NNsightBackend.forward` is one ``with model.trace(...)`` block. Inside it the edits
read and replace envoy values (``block.input``, ``block.output``, ``block.self_attn.output``, ...)
in the order the forward pass reaches them; no torch hook does any steering. Because the edits
are nnsight interventions, the same block can be shipped to a remote nnsight server
(``remote=True``) instead of running here.

Sites map to envoy values exactly as :mod:`steerlab.backends.hf` maps them to hooks (B, S, d):

- ``resid_pre``: the block's first input;
- ``resid_post``: the block's output (its first element when it is a tuple);
- ``attn_out`` / ``mlp_out``: the output of the sub-module whose output is added to the residual
  (the architecture's row in :data:`steerlab.backends.architectures.ARCHITECTURES`);
- ``resid_mid``: the block's input plus the attention sub-module's output; an edit's change
  ``new - mid`` is added to the attention output, so the block continues from ``new``.

:meth:`NNsightBackend.attach` (the steering context) stores the same interventions as an nnsight
*edit* on the model, replayed at every forward pass of the user's ``trace`` / ``generate`` calls.

The wrapped model is a ``nnsight.TransformersModel`` (``LanguageModel`` is its deprecated
subclass and works the same). Wrapping installs nnsight's controllers on the Hugging Face modules
once, for good; they are inert outside a trace, and the weights are shared, never copied.
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from steerlab.backends.base import (
    Backend,
    BackendUnavailable,
    CallInfo,
    Edits,
    KVCacheOps,
    SiteFn,
    first_tensor,
    replace_first,
    run_edits,
)
from steerlab.backends.hf import architecture, count_torch_hooks, find_layers, hf_call_info
from steerlab.errors import SteerlabError
from steerlab.sites import Site

try:
    import nnsight
    from nnsight.intervention.interleaver import OutOfOrderError
except ImportError as e:  # pragma: no cover - exercised only without the extra
    raise BackendUnavailable(
        "the nnsight backend needs the nnsight package: pip install 'steerlab[nnsight]'"
    ) from e


# ----------------------------------------------------------------------------- the per-pass plan


@dataclass
class _BlockPlan:
    """The edits one decoder block gets in one pass, grouped by point, plus where to stop.

    ``block`` / ``attn`` / ``mlp`` are envoys (``attn`` / ``mlp`` None when the block has no
    edit there). ``stop`` is the point after whose edits the pass ends, or None.
    """

    block: Any
    attn: Any = None
    mlp: Any = None
    fns: dict[str, tuple[SiteFn, ...]] = field(default_factory=dict)
    stop: str | None = None

    def wants(self, point: str) -> bool:
        return point in self.fns or self.stop == point


def _edit_output(envoy: Any, fns: Sequence[SiteFn]) -> torch.Tensor:
    """Run ``fns`` on the first element of ``envoy``'s output; write it back when it changed."""
    out = envoy.output
    h = first_tensor(out)
    new = run_edits(fns, h)
    if new is not h:
        envoy.output = replace_first(out, new)
    return new


def _intervene(plans: Sequence[_BlockPlan], tracer: Any) -> None:
    """The body of the trace: visit each planned block's values in forward order.

    Runs inside nnsight's worker: every ``.input`` / ``.output`` read waits until the model
    reaches that value, and every assignment replaces it in the running forward pass.
    """
    for p in plans:
        pre: torch.Tensor | None = None
        if p.wants("resid_pre") or p.wants("resid_mid"):
            h = p.block.input  # (B, S, d)
            pre = run_edits(p.fns.get("resid_pre", ()), h)
            if pre is not h:
                p.block.input = pre
            if p.stop == "resid_pre":
                tracer.stop()
        if p.wants("attn_out") or p.wants("resid_mid"):
            out = p.attn.output
            a = first_tensor(out)  # (B, S, d) what attention adds to the residual
            new_a = run_edits(p.fns.get("attn_out", ()), a)
            if p.stop == "attn_out":
                tracer.stop()
            if p.wants("resid_mid"):
                assert pre is not None
                mid = pre + new_a  # (B, S, d), exactly the block's own sum
                new_mid = run_edits(p.fns.get("resid_mid", ()), mid)
                if new_mid is not mid:
                    new_a = new_a + (new_mid - mid)
            if new_a is not a:
                p.attn.output = replace_first(out, new_a)
            if p.stop == "resid_mid":
                tracer.stop()
        if p.wants("mlp_out"):
            _edit_output(p.mlp, p.fns.get("mlp_out", ()))
            if p.stop == "mlp_out":
                tracer.stop()
        if p.wants("resid_post"):
            _edit_output(p.block, p.fns.get("resid_post", ()))
            if p.stop == "resid_post":
                tracer.stop()


def _steer_every_call(
    lm: Any, plans: Sequence[_BlockPlan], observe: Callable[[CallInfo], None], tracer: Any
) -> None:
    """The body of a stored edit: at every forward pass of a user's call (each step of
    ``generate``), report the call's positions to ``observe``, then intervene.

    The loop asks for one more pass than the call makes; nnsight ends it by raising
    :class:`OutOfOrderError` at that request, which is the normal end here (any other
    out-of-order request is a real error and propagates).
    """
    waiting_for_call = False
    try:
        for _ in tracer.iter[:]:
            waiting_for_call = True
            args, kwargs = lm.inputs  # the model's own call: its mask, positions, cache
            waiting_for_call = False
            observe(hf_call_info(args, kwargs))
            _intervene(plans, tracer)
    except OutOfOrderError:
        if not waiting_for_call:
            raise


# ----------------------------------------------------------------------------- the backend


class NNsightBackend(Backend):
    """Steers a causal LM wrapped by nnsight, with interventions inside ``model.trace``.

    ``remote`` is passed to ``trace``: True runs each pass on a remote nnsight server, ``"local"``
    is nnsight's dry run of that path (the trace is serialized as for a server, then run here).
    A remote pass cannot update a local KV cache, so decode without one.
    """

    name = "nnsight"

    def __init__(
        self,
        lm: Any,
        label: str,
        layers_path: str | None = None,
        remote: bool | str = False,
    ) -> None:
        if not getattr(lm, "dispatched", True) and not remote:
            lm.dispatch()  # a model built lazily on the meta device: load its weights now
        self.lm = lm
        self.wrapped_hf: Any = lm._module
        self.label = label
        self.remote = remote
        hf = self.wrapped_hf
        self.layers = find_layers(hf, layers_path)
        self.model_type, self.wiring, self.parallel = architecture(hf)
        params = inspect.signature(hf.forward).parameters
        self._logits_kw: dict[str, Any] = (
            {"logits_to_keep": 1} if "logits_to_keep" in params else {}
        )
        # Recent transformers renamed ``past_key_values`` to ``cache`` (the old name warns).
        self._cache_kw = "cache" if "cache" in params else "past_key_values"
        self._stored: list[Any] = []  # nnsight edit mediators :meth:`attach` registered
        names = {id(m): n for n, m in hf.named_modules()}
        self._block_envoys = [self._envoy(names[id(block)]) for block in self.layers]

    @classmethod
    def from_hf(
        cls,
        hf_model: Any,
        tokenizer: Any,
        label: str,
        layers_path: str | None = None,
        remote: bool | str = False,
    ) -> NNsightBackend:
        """Wrap an already loaded Hugging Face causal LM (offline; weights shared, not copied)."""
        lm = nnsight.TransformersModel(hf_model, tokenizer=tokenizer, task="text-generation")
        return cls(lm, label, layers_path=layers_path, remote=remote)

    @classmethod
    def from_language_model(
        cls,
        lm: Any,
        label: str | None = None,
        layers_path: str | None = None,
        remote: bool | str = False,
    ) -> NNsightBackend:
        """Use a ``TransformersModel`` / ``LanguageModel`` the user built (dispatched here unless
        ``remote``)."""
        if not isinstance(lm, nnsight.TransformersModel):
            raise SteerlabError(
                f"expected an nnsight TransformersModel or LanguageModel, got {type(lm).__name__}"
            )
        name = label or getattr(lm, "repo_id", None) or type(lm._module).__name__
        return cls(lm, str(name), layers_path=layers_path, remote=remote)

    def _envoy(self, path: str) -> Any:
        return self.lm if path == "" else self.lm.get(path)

    # ------------------------------------------------------------------ facts

    @property
    def n_layers(self) -> int:
        return len(self.layers)

    @property
    def d_model(self) -> int:
        return int(self.wrapped_hf.config.get_text_config().hidden_size)

    @property
    def device(self) -> torch.device:
        device: torch.device = next(self.wrapped_hf.parameters()).device
        # A remote model is held here on the meta device; inputs start on the CPU.
        return torch.device("cpu") if device.type == "meta" else device

    @property
    def dtype(self) -> torch.dtype:
        dtype: torch.dtype = next(self.wrapped_hf.parameters()).dtype
        return dtype

    @property
    def wrapped(self) -> Any:
        return self.lm

    # ------------------------------------------------------------------ cache

    @property
    def kv_cache(self) -> KVCacheOps | None:
        from steerlab.backends.hf_cache import DYNAMIC_CACHE

        return DYNAMIC_CACHE

    def new_cache(self) -> Any:
        from transformers import DynamicCache

        return DynamicCache()

    def select_cache(self, cache: Any, keep: torch.Tensor) -> Any:
        cache.batch_select_indices(keep)
        return cache

    # ------------------------------------------------------------------ forward

    def _plan(self, edits: Edits, stop_at: Site | None) -> list[_BlockPlan]:
        for site in edits:
            self.check_site(site)
        if stop_at is not None:
            self.check_site(stop_at)
        plans: dict[int, _BlockPlan] = {}
        wanted = dict(edits)
        if stop_at is not None:
            wanted.setdefault(stop_at, ())
        for site in sorted(wanted, key=lambda s: s.order):
            p = plans.setdefault(site.layer, _BlockPlan(self._block_envoys[site.layer]))
            fns = tuple(wanted[site])
            if fns:
                p.fns[site.point] = fns
            if site == stop_at:
                p.stop = site.point
            if site.point in ("attn_out", "resid_mid") and p.attn is None:
                assert self.wiring is not None  # check_site guarantees it
                p.attn = p.block.get(self.wiring.attn)
            if site.point == "mlp_out" and p.mlp is None:
                assert self.wiring is not None
                p.mlp = p.block.get(self.wiring.mlp)
        # Nothing after the stop site runs, so later blocks need no visit.
        last = stop_at.layer if stop_at is not None else self.n_layers
        return [plans[layer] for layer in sorted(plans) if layer <= last]

    def forward(
        self,
        ids: torch.Tensor,
        mask: torch.Tensor,
        positions: torch.Tensor,
        cache: Any | None = None,
        edits: Edits | None = None,
        stop_at: Site | None = None,
    ) -> torch.Tensor | None:
        if self.remote and cache is not None:
            raise SteerlabError(
                "the nnsight backend cannot keep a local KV cache for a remote model; "
                "decode without a cache (GenerationConfig(use_cache=False))"
            )
        plans = self._plan(edits or {}, stop_at)
        kwargs: dict[str, Any] = {
            "input_ids": ids,
            "attention_mask": mask,
            "position_ids": positions,
            "use_cache": cache is not None,
        }
        if cache is not None:
            kwargs[self._cache_kw] = cache
        if stop_at is None:
            kwargs.update(self._logits_kw)
        lm = self.lm
        logits: torch.Tensor | None = None
        with lm.trace(remote=self.remote, **kwargs) as tracer:
            _intervene(plans, tracer)
            logits = nnsight.save(lm.output.logits[:, -1, :].float())  # (B, V)
        if stop_at is not None:
            return None
        if logits is None:
            raise SteerlabError("the nnsight trace returned no logits")
        return logits

    # ------------------------------------------------------------------ the user's own calls

    def attach(
        self, edits: Edits, observe: Callable[[CallInfo], None]
    ) -> contextlib.AbstractContextManager[None]:
        """Steer the user's calls through the nnsight model inside the block (``lm.trace(...)``,
        ``lm.generate(...)``): the edits are stored as an nnsight edit on it, replayed at every
        forward pass of each call, and removed on exit. A call on the bare Hugging Face module
        would bypass nnsight, so it raises instead of running unsteered."""
        return self._attached(edits, observe)

    @contextlib.contextmanager
    def _attached(self, edits: Edits, observe: Callable[[CallInfo], None]) -> Iterator[None]:
        plans = self._plan(edits, None)
        lm = self.lm
        before = list(lm._edits)
        with lm.edit(inplace=True) as tracer:
            _steer_every_call(lm, plans, observe, tracer)
        mine = [m for m in lm._edits if not any(m is b for b in before)]
        self._stored.extend(mine)
        # A call on the bare Hugging Face module would bypass nnsight and run unsteered: refuse
        # it (this guard never edits anything; the steering itself is the nnsight edit above).
        guard = self.wrapped_hf.register_forward_pre_hook(self._refuse_bare_call)
        try:
            yield
        finally:
            guard.remove()
            # Remove only this block's edit: the user's own edits (and an outer block's) stay.
            lm._edits = [m for m in lm._edits if not any(m is x for x in mine)]
            self._stored = [m for m in self._stored if not any(m is x for x in mine)]

    def _refuse_bare_call(self, _module: Any, _args: Any) -> None:
        if not self.lm.interleaver.interleaving:
            raise SteerlabError(
                "under steering with the nnsight backend, call the nnsight model "
                "(model.backend.wrapped: .generate(...) or .trace(...)), not the Hugging Face "
                "module: a direct call would run unsteered"
            )

    def count_hooks(self) -> int:
        """Torch hooks on the wrapped model, plus nnsight interventions of ours still registered
        (a running trace's workers, stored edits of :meth:`attach`)."""
        hooks = count_torch_hooks(self.wrapped_hf)
        return hooks + len(self.lm.interleaver.mediators) + len(self._stored)


__all__ = ["NNsightBackend"]
