"""The TransformerLens backend: edits run as hooks on TransformerLens's own hook points.

Wraps a ``HookedTransformer`` or a ``TransformerBridge`` (TransformerLens 3.x). An edit at site
``blocks.L.hook_X`` is a TransformerLens hook ``fn(activation, hook)`` added with ``add_hook`` on
the hook point of that name, so it shows in ``model.hook_dict[name].fwd_hooks`` like any
TransformerLens hook; exactly the hooks added are removed on exit and on exceptions. The hook
points are looked up once: a bridge rebuilds ``hook_dict`` (aliases included) on every access,
which its ``hooks()`` context does several times per call, so going through that context would
cost milliseconds per decoding step on a real model.

Two ways in:

- :meth:`TransformerLensBackend.from_hf` takes an already loaded Hugging Face model. For a model
  on TransformerLens's official list (``label`` is an official name or alias: ``gpt2``,
  ``EleutherAI/pythia-160m``, ``meta-llama/...``) it builds a ``HookedTransformer`` from that
  model (:func:`hooked_from_hf`): TransformerLens's own config and weight converters, applied to
  the *loaded* model's config and weights (nothing is fetched from the hub), with no weight
  processing (no LayerNorm folding, no centring), so its sites are the model's own activations.
  Its weights are a converted copy. Any other model, or one whose conversion fails, gets a
  ``TransformerBridge``. The bridge replaces modules of the model it wraps with its own
  components, so it gets a copy of the module tree whose parameters and buffers *are* the
  model's: no weight is copied (the bridge adds only a zero unembedding bias) and the caller's
  model is left as it was. Activations and logits are Hugging Face's (the bridge recomputes
  attention eagerly: ~1e-6 from ``sdpa``). The bridge passes ``attention_mask``,
  ``position_ids`` and the KV cache on to the model, so the cache is a ``DynamicCache``, as on
  the Hugging Face backend. ``prefer`` (or the module default :data:`PREFER`) forces one of the
  two.
- :meth:`TransformerLensBackend.from_tl` takes the user's ``HookedTransformer`` or bridge. A
  ``HookedTransformer`` derives positions from the attention mask itself (``cumsum - 1``, the rule
  the caller follows) and keeps the mask of earlier calls in its own key-value cache, which
  :class:`HookedCache` creates on the first call, when the batch size is known.

Two things the bridge needs help with (TransformerLens 3.9, ``transformers`` 5.2x):

- ``resid_mid``: the bridge's ``hook_resid_mid`` is the *input of the second norm*; a value
  written there reaches the MLP but not the residual that skips it. The edit therefore runs on
  ``hook_attn_out``, where ``mid = resid_pre + attn_out`` is formed exactly as the block forms
  it, and its change ``new - mid`` is added to the attention output (the Hugging Face backend does
  the same). On a ``HookedTransformer`` ``hook_resid_mid`` lies on the residual stream and is used
  directly.
- the KV cache: a decoder layer hands its cache to the attention as ``cache``; the bridge's
  attention components read ``past_key_values`` (or ``layer_past``) and would leave the cache
  empty, so each cached step would attend to itself alone (the bridge's own ``generate`` is hit
  too). While the backend runs (``forward``, and the user's calls inside :meth:`attach`), a
  pre-hook on each attention component passes the cache on.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn

from steerlab.backends.architectures import ARCHITECTURES
from steerlab.backends.base import (
    Backend,
    CallInfo,
    Edits,
    KVCacheOps,
    SiteFn,
    call_info_from_mask,
    call_info_from_positions,
    run_edits,
)
from steerlab.backends.tl_convert import (
    hooked_from_hf,
    official_name,
    shared_copy,
    tokenizer_for_tl,
)
from steerlab.errors import SteerlabError
from steerlab.sites import Site, SiteError

__all__ = [
    "PREFER",
    "HookedCache",
    "TransformerLensBackend",
    "hooked_from_hf",
    "official_name",
    "shared_copy",
    "tokenizer_for_tl",
]

HookFn = Callable[[torch.Tensor, Any], torch.Tensor]  # TransformerLens: (activation, hook point)
Prefer = Literal["auto", "hooked", "bridge"]

logger = logging.getLogger(__name__)

#: What :meth:`TransformerLensBackend.from_hf` builds when not told (``prefer=None``), hence what
#: ``load_model(..., backend="transformer_lens")`` builds: ``"auto"`` (a ``HookedTransformer`` for
#: models on TransformerLens's official list, a ``TransformerBridge`` otherwise), ``"hooked"`` or
#: ``"bridge"``.
PREFER: Prefer = "auto"


class _Stop(Exception):
    """Raised after the ``stop_at`` site: later layers are not needed."""


@dataclass
class HookedCache:
    """KV cache for a ``HookedTransformer``: TransformerLens's own cache (per-layer keys and
    values plus the attention mask so far), created on the first forward (it needs the batch
    size)."""

    kv: Any | None = None


class TransformerLensBackend(Backend):
    """Steers a ``HookedTransformer`` or ``TransformerBridge`` through its hook points."""

    name = "transformer_lens"

    def __init__(self, tl: Any, label: str) -> None:
        from transformer_lens import HookedTransformer
        from transformer_lens.model_bridge import TransformerBridge

        if isinstance(tl, TransformerBridge):
            self.is_bridge = True
        elif isinstance(tl, HookedTransformer):
            self.is_bridge = False
        else:
            raise SteerlabError(
                "the transformer_lens backend wraps a HookedTransformer or a TransformerBridge, "
                f"got {type(tl).__name__}"
            )
        self.tl = tl
        self.label = label
        #: the caller's Hugging Face model this backend was built from (not steered: the bridge
        #: runs a copy of its module tree, a HookedTransformer its own converted weights)
        self.user_hf: Any | None = None
        cfg = tl.cfg
        # name (aliases included) -> HookPoint; a bridge's hook_dict is rebuilt on every access
        self._points: dict[str, Any] = dict(tl.hook_dict)
        #: the Hugging Face model under a bridge; None for a HookedTransformer
        self.wrapped_hf: Any | None = tl.original_model if self.is_bridge else None
        self.parallel = bool(getattr(cfg, "parallel_attn_mlp", False))
        self._cache_kw = "past_key_values"
        self._logits_kw: dict[str, Any] = {}
        if self.wrapped_hf is not None:
            text_cfg = self.wrapped_hf.config.get_text_config()
            self.model_type = str(getattr(text_cfg, "model_type", ""))
            row = ARCHITECTURES.get(self.model_type)
            if row is not None:
                self.parallel = row.is_parallel(text_cfg)
            params = inspect.signature(self.wrapped_hf.forward).parameters
            # Newer transformers name the cache ``cache`` (``past_key_values`` is deprecated).
            if "cache" in params:
                self._cache_kw = "cache"
            if "logits_to_keep" in params:
                self._logits_kw = {"logits_to_keep": 1}
        else:
            arch = getattr(cfg, "original_architecture", None)
            self.model_type = str(arch or "HookedTransformer")
        #: the bridge's attention components (they get the cache hand-over); none otherwise
        self._attention: list[nn.Module] = []
        if self.is_bridge:
            from transformer_lens.model_bridge.generalized_components.attention import (
                AttentionBridge,
            )

            self._attention = [m for m in tl.blocks.modules() if isinstance(m, AttentionBridge)]

    @classmethod
    def from_hf(
        cls, hf_model: Any, tokenizer: Any, label: str, prefer: Prefer | None = None
    ) -> TransformerLensBackend:
        """A ``HookedTransformer`` or a ``TransformerBridge`` for a loaded Hugging Face causal LM,
        offline.

        ``prefer`` (default: the module's :data:`PREFER`, ``"auto"``):

        - ``"auto"``: a ``HookedTransformer`` (:func:`hooked_from_hf`: unprocessed, weights
          converted from ``hf_model``, config from ``hf_model.config``, no hub access) when
          ``label`` is on TransformerLens's official list (:func:`official_name`); a bridge
          otherwise, and, with one logged line, when the conversion fails.
        - ``"hooked"``: a ``HookedTransformer`` for any label whose architecture TransformerLens
          converts; raises :class:`SteerlabError` when it cannot.
        - ``"bridge"``: always a bridge.

        The bridge wraps :func:`shared_copy` of ``hf_model`` (same parameter and buffer
        tensors): ``hf_model`` itself keeps its modules and keeps working unchanged; the copy is
        :attr:`wrapped_hf`. A ``HookedTransformer`` holds its own converted copy of the weights.
        """
        from transformer_lens.model_bridge import TransformerBridge

        param = next(hf_model.parameters(), None)
        if param is None:
            raise SteerlabError(f"{label} has no parameters")
        if tokenizer is None:
            # Without one the bridge would fetch the tokenizer from the hub by ``label``.
            raise SteerlabError(f"the transformer_lens backend needs {label}'s tokenizer")
        mode = PREFER if prefer is None else prefer
        if mode not in ("auto", "hooked", "bridge"):
            raise SteerlabError(f"prefer={mode!r}: use 'auto', 'hooked' or 'bridge'")
        official = official_name(label)
        if mode == "hooked" or (mode == "auto" and official is not None):
            try:
                hooked = cls(hooked_from_hf(hf_model, tokenizer, official or label), label)
                hooked.user_hf = hf_model
                return hooked
            except Exception as e:
                reason = f"{type(e).__name__}: {e}".splitlines()[0][:200]
                if mode == "hooked":
                    raise SteerlabError(
                        f"TransformerLens cannot build a HookedTransformer for {label}: {reason}"
                    ) from e
                logger.info(
                    "%s: no HookedTransformer (%s); using a TransformerBridge", label, reason
                )
        bridge = TransformerBridge.boot_transformers(
            label,
            hf_model=shared_copy(hf_model),
            tokenizer=tokenizer_for_tl(tokenizer),
            device=param.device,
            dtype=param.dtype,
        )
        backend = cls(bridge, label)
        backend.user_hf = hf_model
        return backend

    @classmethod
    def from_tl(cls, obj: Any, label: str | None = None) -> TransformerLensBackend:
        """The user's ``HookedTransformer`` or ``TransformerBridge``, steered in place."""
        cfg = getattr(obj, "cfg", None)
        name = label or str(getattr(cfg, "model_name", None) or type(obj).__name__)
        return cls(obj, name)

    # ------------------------------------------------------------------ facts

    @property
    def n_layers(self) -> int:
        return int(self.tl.cfg.n_layers)

    @property
    def d_model(self) -> int:
        return int(self.tl.cfg.d_model)

    @property
    def device(self) -> torch.device:
        return next(self.tl.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.tl.parameters()).dtype

    @property
    def wrapped(self) -> Any:
        return self.tl

    def check_site(self, site: Site) -> None:
        super().check_site(site)
        if site.name not in self._points:
            raise SiteError(
                f"hook site {site.name!r} is not available on {self.label}: TransformerLens "
                "has no hook point of that name for this model"
            )

    # ------------------------------------------------------------------ cache

    @property
    def kv_cache(self) -> KVCacheOps | None:
        from steerlab.backends.hf_cache import DYNAMIC_CACHE

        return DYNAMIC_CACHE if self.is_bridge else None

    def new_cache(self) -> Any:
        if self.is_bridge:
            from transformers import DynamicCache

            return DynamicCache()
        return HookedCache()

    def select_cache(self, cache: Any, keep: torch.Tensor) -> Any:
        if self.is_bridge:
            cache.batch_select_indices(keep)
            return cache
        kv = cache.kv
        if kv is None:  # nothing cached yet
            return cache
        for entry in kv.entries:
            entry.past_keys = entry.past_keys[keep.to(entry.past_keys.device)]
            entry.past_values = entry.past_values[keep.to(entry.past_values.device)]
        prev = kv.previous_attention_mask
        kv.previous_attention_mask = prev[keep.to(prev.device)]
        return cache

    # ------------------------------------------------------------------ hooks

    def _fwd_hooks(self, edits: Edits, stop_at: Site | None) -> list[tuple[str, HookFn]]:
        """``(hook point name, hook)`` pairs in forward order. A hook point runs its hooks in the
        order they were added, so edits at one site run in order, and a resid_mid edit on a
        bridge sees resid_pre and attn_out after their own edits."""
        for site in edits:
            self.check_site(site)
        if stop_at is not None:
            self.check_site(stop_at)
        wanted = dict(edits)
        if stop_at is not None:
            wanted.setdefault(stop_at, ())
        hooks: list[tuple[str, HookFn]] = []
        for site in sorted(wanted, key=lambda s: s.order):
            finish = _finisher(tuple(wanted[site]), site == stop_at)
            if site.point == "resid_mid" and self.is_bridge:
                hooks.extend(_mid_hooks(site, finish))
            else:
                hooks.append((site.name, _hook(finish)))
        return hooks

    @contextlib.contextmanager
    def _hooks(self, edits: Edits, stop_at: Site | None = None) -> Iterator[None]:
        """Add ``edits`` on the hook points (and, on a bridge, the cache hand-over) for the
        block; everything added is removed on exit and on exceptions."""
        hooks = self._fwd_hooks(edits, stop_at)
        with contextlib.ExitStack() as stack:
            for module in self._attention:
                stack.callback(
                    module.register_forward_pre_hook(_pass_cache, with_kwargs=True).remove
                )
            for name, fn in hooks:
                stack.callback(_add_hook(self._points[name], fn))
            yield

    # ------------------------------------------------------------------ forward

    def forward(
        self,
        ids: torch.Tensor,
        mask: torch.Tensor,
        positions: torch.Tensor,
        cache: Any | None = None,
        edits: Edits | None = None,
        stop_at: Site | None = None,
    ) -> torch.Tensor | None:
        if self.is_bridge:
            kwargs = self._bridge_kwargs(mask, positions, cache, stop_at)
        else:
            kwargs = self._hooked_kwargs(ids, mask, cache)
        with self._hooks(edits or {}, stop_at):
            try:
                logits = self.tl(ids, return_type="logits", **kwargs)  # (B, S or 1, V)
            except _Stop:
                return None
        return logits[:, -1, :].float()

    def _bridge_kwargs(
        self, mask: torch.Tensor, positions: torch.Tensor, cache: Any | None, stop_at: Site | None
    ) -> dict[str, Any]:
        kwargs: dict[str, Any] = {
            "attention_mask": mask,
            "position_ids": positions,
            "use_cache": cache is not None,
        }
        if cache is not None:
            kwargs[self._cache_kw] = cache
        if stop_at is None:
            kwargs.update(self._logits_kw)
        return kwargs

    def _hooked_kwargs(
        self, ids: torch.Tensor, mask: torch.Tensor, cache: Any | None
    ) -> dict[str, Any]:
        """``HookedTransformer`` arguments. It takes positions from the mask (``cumsum - 1``,
        pads at 0), as the caller computed them; with a cache it takes only the new tokens' part
        of the mask and appends it to the part the cache holds."""
        if cache is None:
            return {"attention_mask": mask}
        b, s = int(ids.shape[0]), int(ids.shape[1])
        if cache.kv is None:
            from transformer_lens import TransformerLensKeyValueCache

            cfg = self.tl.cfg
            cache.kv = TransformerLensKeyValueCache.init_cache(cfg, cfg.device, b)
        past = int(cache.kv.previous_attention_mask.shape[1])
        if past + s != mask.shape[1]:
            raise SteerlabError(
                f"the attention mask covers {mask.shape[1]} tokens but the cache holds {past} "
                f"and {s} are new"
            )
        return {"attention_mask": mask[:, -s:], "past_kv_cache": cache.kv}

    # ------------------------------------------------------------------ user calls

    def attach(
        self, edits: Edits, observe: Callable[[CallInfo], None]
    ) -> contextlib.AbstractContextManager[None]:
        return self._attached(edits, observe)

    @contextlib.contextmanager
    def _attached(self, edits: Edits, observe: Callable[[CallInfo], None]) -> Iterator[None]:
        """Steer the user's own calls (``bridge(...)``, ``bridge.generate``, ``model(...)``,
        ``model.generate``). Positions are read where the call's mask is final: at the Hugging
        Face model under a bridge (its call arguments), at block 0 of a ``HookedTransformer``
        (the full mask, cache part included)."""
        with contextlib.ExitStack() as stack:
            if self.wrapped_hf is not None:
                from steerlab.backends.hf import hf_call_info

                def on_hf_call(_m: nn.Module, args: tuple[Any, ...], kw: dict[str, Any]) -> None:
                    observe(hf_call_info(args, kw))

                handle = self.wrapped_hf.register_forward_pre_hook(on_hf_call, with_kwargs=True)
            else:

                def on_block0(_m: nn.Module, args: tuple[Any, ...], kw: dict[str, Any]) -> None:
                    observe(_hookedhf_call_info(args, kw))

                handle = self.tl.blocks[0].register_forward_pre_hook(on_block0, with_kwargs=True)
            stack.callback(handle.remove)
            if self.user_hf is not None and self.user_hf is not self.wrapped_hf:
                guard = self.user_hf.register_forward_pre_hook(self._refuse_bare_call)
                stack.callback(guard.remove)
            stack.enter_context(self._hooks(edits))
            yield

    def _refuse_bare_call(self, _module: Any, _args: Any) -> None:
        raise SteerlabError(
            "under steering with the transformer_lens backend, call model.backend.wrapped (the "
            "HookedTransformer or TransformerBridge), not the Hugging Face model it was built "
            "from: that call would run unsteered"
        )

    def count_hooks(self) -> int:
        """Hooks on the hook points plus torch hooks on the modules this backend hooks (the
        models themselves, block 0, the bridge's attention components). The bridge's own
        internal hooks (wired on its first call) are not counted."""
        from transformer_lens.hook_points import HookPoint

        mods: dict[int, nn.Module] = {
            id(m): m for m in self.tl.modules() if isinstance(m, HookPoint)
        }
        mods[id(self.tl)] = self.tl
        mods[id(self.tl.blocks[0])] = self.tl.blocks[0]
        if self.wrapped_hf is not None:
            mods[id(self.wrapped_hf)] = self.wrapped_hf
        mods.update({id(m): m for m in self._attention})
        return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in mods.values())


def _add_hook(point: Any, fn: HookFn) -> Callable[[], None]:
    """Add ``fn`` on TransformerLens hook point ``point``; returns what removes exactly it."""
    point.add_hook(fn, dir="fwd")
    handle = point.fwd_hooks[-1]  # add_hook appends a LensHandle and returns nothing

    def remove() -> None:
        handle.hook.remove()
        point.fwd_hooks = [h for h in point.fwd_hooks if h is not handle]

    return remove


def _pass_cache(
    _m: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> tuple[tuple[Any, ...], dict[str, Any]] | None:
    """Pass a layer's ``cache`` keyword on to a bridge attention component as
    ``past_key_values`` (see the module docstring); a no-op where the names already agree."""
    cache = kwargs.get("cache")
    if cache is None or kwargs.get("past_key_values") is not None or "layer_past" in kwargs:
        return None
    return args, {**kwargs, "past_key_values": cache}


def _finisher(fns: tuple[SiteFn, ...], stop: bool) -> Callable[[torch.Tensor], torch.Tensor]:
    def finish(h: torch.Tensor) -> torch.Tensor:
        h = run_edits(fns, h)
        if stop:
            raise _Stop
        return h

    return finish


def _hook(finish: Callable[[torch.Tensor], torch.Tensor]) -> HookFn:
    def hook(h: torch.Tensor, hook: Any) -> torch.Tensor:
        return finish(h)  # (B, S, d)

    return hook


def _mid_hooks(
    site: Site, finish: Callable[[torch.Tensor], torch.Tensor]
) -> list[tuple[str, HookFn]]:
    """resid_mid on a bridge: keep resid_pre (after its edits); on attn_out (after its edits)
    form ``mid`` and add the edit's change to the attention output."""
    stash: dict[str, torch.Tensor] = {}

    def keep_pre(h: torch.Tensor, hook: Any) -> torch.Tensor:
        stash["pre"] = h
        return h

    def on_attn_out(out: torch.Tensor, hook: Any) -> torch.Tensor:
        mid = stash.pop("pre") + out  # (B, S, d), exactly the block's own sum
        new = finish(mid)
        if new is mid:
            return out
        return out + (new - mid)

    return [
        (Site(site.layer, "resid_pre").name, keep_pre),
        (Site(site.layer, "attn_out").name, on_attn_out),
    ]


def _hookedhf_call_info(args: tuple[Any, ...], kwargs: dict[str, Any]) -> CallInfo:
    """Positions of one ``HookedTransformer`` call, read at block 0 (whose arguments are
    ``resid_pre, shortformer_pos_embed, past_kv_cache_entry, attention_mask``): from the full
    attention mask (B, P + S) when the call has one, else the cache length plus the index."""
    resid = kwargs.get("resid_pre", args[0] if args else None)
    if not isinstance(resid, torch.Tensor):
        raise SteerlabError("steering a HookedTransformer call needs its residual stream input")
    b, s = int(resid.shape[0]), int(resid.shape[1])
    mask = kwargs.get("attention_mask", args[3] if len(args) > 3 else None)
    if isinstance(mask, torch.Tensor) and mask.dim() == 2:
        return call_info_from_mask(mask, s)
    entry = kwargs.get("past_kv_cache_entry", args[2] if len(args) > 2 else None)
    past = int(entry.past_keys.shape[1]) if entry is not None else 0
    pos = torch.arange(past, past + s, device=resid.device)[None, :].expand(b, s)
    return call_info_from_positions(pos)
