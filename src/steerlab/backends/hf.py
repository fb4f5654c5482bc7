"""The Hugging Face backend: torch hooks on a ``PreTrainedModel``'s decoder layers.

The only module that knows Hugging Face call conventions (``past_key_values``, ``DynamicCache``,
``logits_to_keep``) and layer discovery; what each architecture looks like (sub-block modules,
layer list, mid-stack entry) is one row of :data:`steerlab.backends.architectures.ARCHITECTURES`.
Hooks are registered inside an ``ExitStack`` and removed on exit and on exceptions.

Sites map to hooks like this (B, S, d activations):

- ``resid_pre``: forward pre-hook on block L (its ``hidden_states`` input);
- ``resid_post``: forward hook on block L (its output);
- ``attn_out`` / ``mlp_out``: forward hook on the sub-module whose output is added to the residual;
- ``resid_mid``: the block input is kept by a pre-hook on its first norm, the attention hook sees
  ``mid = resid_pre + attn_out``; an edit's change ``new - mid`` is added to the attention output,
  so the block continues from ``new``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import inspect
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import nn

from steerlab.backends.architectures import (
    ARCHITECTURES,
    FALLBACK_LAYER_PATHS,
    Architecture,
    model_type_of,
)
from steerlab.backends.architectures import lookup as lookup_architecture
from steerlab.backends.base import (
    Backend,
    CallInfo,
    Edits,
    KVCacheOps,
    SiteFn,
    call_info_from_mask,
    call_info_from_positions,
    first_tensor,
    replace_first,
    run_edits,
)
from steerlab.errors import ModelLoadError, SteerlabError
from steerlab.sites import Site


class _Stop(Exception):
    """Raised after the ``stop_at`` site: later layers are not needed."""


def _get_attr_path(obj: Any, path: str) -> Any:
    for part in path.split("."):
        obj = getattr(obj, part)
    return obj


def find_layers(hf_model: nn.Module, layers_path: str | None = None) -> list[nn.Module]:
    """Return the decoder layers of ``hf_model``.

    ``layers_path`` (e.g. ``"model.layers"``) overrides discovery. Otherwise the path in the
    architecture's row is tried, then the usual paths
    (:data:`~steerlab.backends.architectures.FALLBACK_LAYER_PATHS`), then the longest
    ``nn.ModuleList`` whose length equals the config's ``num_hidden_layers``.
    """
    return list(locate_layers(hf_model, layers_path)[1])


def locate_layers(hf_model: nn.Module, layers_path: str | None = None) -> tuple[str, nn.ModuleList]:
    """``(path, module_list)``: the decoder-layer ``nn.ModuleList`` of ``hf_model`` and its
    dotted attribute path (see :func:`find_layers` for how it is found)."""
    if layers_path is not None:
        try:
            mods = _get_attr_path(hf_model, layers_path)
        except AttributeError as e:
            raise ModelLoadError(f"layers path {layers_path!r} not found on the model") from e
        if not isinstance(mods, nn.ModuleList):
            raise ModelLoadError(f"layers path {layers_path!r} is not an nn.ModuleList")
        return layers_path, mods
    config = getattr(hf_model, "config", None)
    row = ARCHITECTURES.get(model_type_of(config)) if config else None
    paths = FALLBACK_LAYER_PATHS if row is None else (row.layers, *FALLBACK_LAYER_PATHS)
    for path in paths:
        try:
            mods = _get_attr_path(hf_model, path)
        except AttributeError:
            continue
        if isinstance(mods, nn.ModuleList) and len(mods) > 0:
            return path, mods
    n = getattr(config.get_text_config(), "num_hidden_layers", None) if config else None
    candidates: list[tuple[str, nn.ModuleList]] = [
        (name, m) for name, m in hf_model.named_modules() if isinstance(m, nn.ModuleList)
    ]
    if n is not None:
        candidates = [(name, m) for name, m in candidates if len(m) == n]
    if not candidates:
        raise ModelLoadError(
            "could not find the decoder layers; pass layers_path='...' (e.g. 'model.layers')"
        )
    best = candidates[0]
    for c in candidates[1:]:
        if len(c[1]) > len(best[1]):
            best = c
    return best


def architecture(hf: Any) -> tuple[str, Architecture | None, bool | None]:
    """``(model_type, row, parallel)`` of a Hugging Face model, from its (text) config; the row
    (which holds the sub-block wiring) and ``parallel`` are None for an architecture not in
    :data:`~steerlab.backends.architectures.ARCHITECTURES`."""
    return lookup_architecture(hf.config)


class HFBackend(Backend):
    """Steers a Hugging Face causal LM with torch hooks; reads HF call arguments for positions."""

    name = "hf"

    def __init__(self, hf: Any, label: str, layers_path: str | None = None) -> None:
        self.hf = hf
        self.label = label
        self._layers_path, layer_list = locate_layers(hf, layers_path)
        self.layers: list[nn.Module] = list(layer_list)
        self.model_type, self.wiring, self.parallel = architecture(hf)
        params = inspect.signature(hf.forward).parameters
        self._logits_kw = {"logits_to_keep": 1} if "logits_to_keep" in params else {}
        # transformers renamed ``past_key_values`` to ``cache``; use whichever this model takes.
        self._cache_kw = "cache" if "cache" in params else "past_key_values"

    # ------------------------------------------------------------------ facts

    @property
    def n_layers(self) -> int:
        return len(self.layers)

    @property
    def d_model(self) -> int:
        return int(self.hf.config.get_text_config().hidden_size)

    @property
    def device(self) -> torch.device:
        return next(self.hf.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.hf.parameters()).dtype

    @property
    def wrapped(self) -> Any:
        return self.hf

    def submodule(self, site: Site) -> nn.Module:
        """The module whose output is ``site`` (attn_out / mlp_out / resid_post) or whose input
        is ``site`` (resid_pre). resid_mid has no module of its own (see the module docstring)."""
        self.check_site(site)
        block = self.layers[site.layer]
        if site.point in ("resid_pre", "resid_post"):
            return block
        assert self.wiring is not None  # check_site guarantees it
        name = self.wiring.mlp if site.point == "mlp_out" else self.wiring.attn
        return _get_attr_path(block, name)

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

    # ------------------------------------------------------------------ hooks

    @contextlib.contextmanager
    def _hooks(self, edits: Edits, stop_at: Site | None = None) -> Iterator[None]:
        """Register ``edits`` as torch hooks; remove every one on exit and on exceptions."""
        for site in edits:
            self.check_site(site)
        if stop_at is not None:
            self.check_site(stop_at)
        wanted = dict(edits)
        if stop_at is not None:
            wanted.setdefault(stop_at, ())
        with contextlib.ExitStack() as stack:
            for site in sorted(wanted, key=lambda s: s.order):
                fns = tuple(wanted[site])
                stop = site == stop_at
                for handle in self._register(site, fns, stop):
                    stack.callback(handle.remove)
            yield

    def _register(self, site: Site, fns: tuple[SiteFn, ...], stop: bool) -> list[Any]:
        block = self.layers[site.layer]

        def finish(h: torch.Tensor) -> torch.Tensor:
            h = run_edits(fns, h)
            if stop:
                raise _Stop
            return h

        if site.point == "resid_pre":

            def pre(_m: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
                if "hidden_states" in kwargs:
                    return args, {**kwargs, "hidden_states": finish(kwargs["hidden_states"])}
                return (finish(args[0]), *args[1:]), kwargs

            return [block.register_forward_pre_hook(pre, with_kwargs=True)]
        if site.point == "resid_mid":
            return self._register_mid(site, finish)
        module = self.submodule(site)

        def post(_m: nn.Module, _args: Any, output: Any) -> Any:
            return replace_first(output, finish(first_tensor(output)))

        return [module.register_forward_hook(post)]

    def _register_mid(
        self, site: Site, finish: Callable[[torch.Tensor], torch.Tensor]
    ) -> list[Any]:
        assert self.wiring is not None  # check_site guarantees it
        ln1 = _get_attr_path(self.layers[site.layer], self.wiring.ln1)
        attn = self.submodule(Site(site.layer, "attn_out"))
        stash: dict[str, torch.Tensor] = {}

        def keep_input(_m: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
            stash["pre"] = kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]

        def post(_m: nn.Module, _args: Any, output: Any) -> Any:
            out = first_tensor(output)
            mid = stash.pop("pre") + out  # (B, S, d), exactly the block's own sum
            new = finish(mid)
            if new is mid:
                return output
            return replace_first(output, out + (new - mid))

        # The first norm's input is the block input after every resid_pre edit (also those of
        # a steering context entered later, whose block pre-hooks run after ours).
        return [
            ln1.register_forward_pre_hook(keep_input, with_kwargs=True),
            attn.register_forward_hook(post),
        ]

    # ------------------------------------------------------------------ forward

    def _call_kwargs(
        self,
        ids: torch.Tensor,
        mask: torch.Tensor,
        positions: torch.Tensor,
        cache: Any | None,
        last_logits: bool,
    ) -> dict[str, Any]:
        """Keyword arguments of one Hugging Face model call (``last_logits``: only the last
        position's logits, where the model supports it)."""
        kwargs: dict[str, Any] = {
            "input_ids": ids,
            "attention_mask": mask,
            "position_ids": positions,
            "use_cache": cache is not None,
        }
        if cache is not None:
            kwargs[self._cache_kw] = cache
        if last_logits:
            kwargs.update(self._logits_kw)
        return kwargs

    def forward(
        self,
        ids: torch.Tensor,
        mask: torch.Tensor,
        positions: torch.Tensor,
        cache: Any | None = None,
        edits: Edits | None = None,
        stop_at: Site | None = None,
    ) -> torch.Tensor | None:
        kwargs = self._call_kwargs(ids, mask, positions, cache, last_logits=stop_at is None)
        with self._hooks(edits or {}, stop_at):
            try:
                out = self.hf(**kwargs)
            except _Stop:
                return None
        return out.logits[:, -1, :].float()

    # ------------------------------------------------------------------ mid-stack

    @property
    def can_start_midstack(self) -> bool:
        """True for the architectures whose row allows it (``midstack``: stock transformers
        classes, layer list at the row's path, uniform ``layer_types`` where the loop indexes
        them)."""
        row = ARCHITECTURES.get(self.model_type)
        if row is None or not row.midstack or self._layers_path != row.layers:
            return False
        owner = _get_attr_path(self.hf, row.layers.rpartition(".")[0])
        if not type(owner).__module__.startswith("transformers.models."):
            return False  # remote code reusing a model_type: its loop is unknown
        if row.by_position:
            types = getattr(self.hf.config.get_text_config(), "layer_types", None)
            if types is not None and len(set(types)) > 1:
                return False
        return True

    def forward_from(
        self,
        start: int,
        resid: torch.Tensor,
        ids: torch.Tensor,
        mask: torch.Tensor,
        positions: torch.Tensor,
        cache: Any | None = None,
        edits: Edits | None = None,
    ) -> torch.Tensor:
        if not self.can_start_midstack:
            raise NotImplementedError(
                f"{self.label} ({self.model_type!r}) cannot start a forward mid-stack"
            )
        if not 0 <= start < self.n_layers:
            raise SteerlabError(
                f"start layer {start} is out of range: {self.label} has {self.n_layers} layers"
            )
        want = (*ids.shape, self.d_model)
        if tuple(resid.shape) != want:
            raise SteerlabError(f"resid has shape {tuple(resid.shape)}, expected {want}")
        for site in edits or {}:
            self.check_site(site)
        kept = {site: fns for site, fns in (edits or {}).items() if site.layer >= start}
        kwargs = self._call_kwargs(ids, mask, positions, cache, last_logits=True)
        with self._from_layer(start, resid), self._hooks(kept):
            out = self.hf(**kwargs)
        return out.logits[:, -1, :].float()

    @contextlib.contextmanager
    def _from_layer(self, start: int, resid: torch.Tensor) -> Iterator[None]:
        """Cut the model's layer list to ``layers[start:]`` and feed ``resid`` into block
        ``start``; restore the list and remove the hook on exit and on exceptions."""
        owner_path, _, attr = self._layers_path.rpartition(".")
        owner = _get_attr_path(self.hf, owner_path) if owner_path else self.hf
        full = getattr(owner, attr)

        def inject(_m: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
            if "hidden_states" in kwargs:
                return args, {**kwargs, "hidden_states": resid.to(kwargs["hidden_states"])}
            return (resid.to(args[0]), *args[1:]), kwargs

        # prepend: runs before every resid_pre edit at ``start`` (also a steering context's)
        handle = self.layers[start].register_forward_pre_hook(
            inject, with_kwargs=True, prepend=True
        )
        try:
            setattr(owner, attr, nn.ModuleList(self.layers[start:]))
            yield
        finally:
            setattr(owner, attr, full)
            handle.remove()

    # ------------------------------------------------------------------ user calls

    def attach(
        self, edits: Edits, observe: Callable[[CallInfo], None]
    ) -> contextlib.AbstractContextManager[None]:
        return self._attached(edits, observe)

    @contextlib.contextmanager
    def _attached(self, edits: Edits, observe: Callable[[CallInfo], None]) -> Iterator[None]:
        def on_call(_m: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
            observe(hf_call_info(args, kwargs))

        with contextlib.ExitStack() as stack:
            stack.callback(self.hf.register_forward_pre_hook(on_call, with_kwargs=True).remove)
            stack.enter_context(self._hooks(edits))
            yield

    def count_hooks(self) -> int:
        """Torch hooks on the model, except transformers' own machinery (an
        ``output_hidden_states`` call installs output-capturing hooks that stay by design)."""
        return count_torch_hooks(self.hf)


def count_torch_hooks(module: nn.Module) -> int:
    """Forward and pre-forward hooks in ``module``'s tree that transformers did not install."""

    def ours(hooks: dict[Any, Any]) -> int:
        return sum(
            not str(getattr(h, "__module__", "")).startswith("transformers.")
            for h in hooks.values()
        )

    return sum(ours(m._forward_hooks) + ours(m._forward_pre_hooks) for m in module.modules())


def hf_call_info(args: tuple[Any, ...], kwargs: dict[str, Any]) -> CallInfo:
    """Positions of one HF model call, from its attention mask, position ids, cache position or
    cache length (in that order), never from the index inside the chunk."""
    x = kwargs.get("input_ids")
    if x is None:
        x = kwargs.get("inputs_embeds")
    if x is None and args:
        x = args[0]
    if x is None:
        raise SteerlabError("steering needs input_ids or inputs_embeds in the model call")
    b, s = int(x.shape[0]), int(x.shape[1])
    mask = kwargs.get("attention_mask")
    if isinstance(mask, torch.Tensor) and mask.dim() == 2:
        info = call_info_from_mask(mask, s)
    else:
        info = _info_without_mask(kwargs, x, b, s)
    ids = kwargs.get("input_ids")
    if (
        ids is None
        and args
        and isinstance(args[0], torch.Tensor)
        and not args[0].is_floating_point()
    ):
        ids = args[0]
    return dataclasses.replace(info, ids=ids) if isinstance(ids, torch.Tensor) else info


def _info_without_mask(kwargs: dict[str, Any], x: torch.Tensor, b: int, s: int) -> CallInfo:
    # No 2-D mask (HF generate omits it when nothing is padded).
    pos_ids = kwargs.get("position_ids")
    cache_pos = kwargs.get("cache_position")
    if isinstance(pos_ids, torch.Tensor):
        pos = pos_ids.to(torch.long).expand(b, s)
    elif isinstance(cache_pos, torch.Tensor):
        pos = cache_pos.to(torch.long)[None, :].expand(b, s)
    else:
        cache = kwargs.get("cache", kwargs.get("past_key_values"))
        past = int(cache.get_seq_length()) if cache is not None else 0
        pos = torch.arange(past, past + s, device=x.device)[None, :].expand(b, s)
    return call_info_from_positions(pos)
