"""Backends: the only places that know a framework's call conventions, caches and module layout.

``hf`` (Hugging Face ``PreTrainedModel``), ``transformer_lens`` (``HookedTransformer`` or
``TransformerBridge``) and ``nnsight`` (``LanguageModel``), listed once in
:mod:`steerlab.backends.registry`; what each Hugging Face architecture looks like is in
:mod:`steerlab.backends.architectures`. Optional frameworks are imported only when their backend
is chosen; without them, one sentence says what to install. Importing this package imports no
framework: the protocol classes (:mod:`steerlab.backends.base`, torch) load on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from steerlab.backends.registry import BACKENDS, REGISTRY, BackendSpec, make_backend, require

if TYPE_CHECKING:
    from steerlab.backends.base import Backend, BackendUnavailable, CallInfo, Edits, SiteFn

_FROM_BASE = ("Backend", "BackendUnavailable", "CallInfo", "Edits", "SiteFn")


def __getattr__(name: str) -> Any:
    if name in _FROM_BASE:
        from steerlab.backends import base

        return getattr(base, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "BACKENDS",
    "REGISTRY",
    "Backend",
    "BackendSpec",
    "BackendUnavailable",
    "CallInfo",
    "Edits",
    "SiteFn",
    "make_backend",
    "require",
]
