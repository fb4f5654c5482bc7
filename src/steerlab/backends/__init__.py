"""Backends: the only places that know a framework's call conventions, caches and module layout.

``hf`` (Hugging Face ``PreTrainedModel``), ``transformer_lens`` (``HookedTransformer`` or
``TransformerBridge``) and ``nnsight`` (``LanguageModel``). Optional frameworks are imported only
when their backend is chosen; without them, one sentence says what to install.
"""

from __future__ import annotations

from typing import Any

from steerlab.backends.base import Backend, BackendUnavailable, CallInfo, Edits, SiteFn

BACKENDS = ("hf", "transformer_lens", "nnsight")

_EXTRAS = {
    "transformer_lens": ("transformer_lens", "steerlab[transformer-lens]"),
    "nnsight": ("nnsight", "steerlab[nnsight]"),
}


def require(backend: str) -> None:
    """Raise :class:`BackendUnavailable` (one sentence) when ``backend``'s framework is missing."""
    import importlib.util

    if backend not in _EXTRAS:
        return
    module, extra = _EXTRAS[backend]
    if importlib.util.find_spec(module) is None:
        raise BackendUnavailable(
            f"the {backend} backend needs the {module} package: pip install '{extra}'"
        )


def make_backend(
    backend: str, hf: Any, tokenizer: Any, label: str, layers_path: str | None = None
) -> Backend:
    """A backend of kind ``backend`` around an already loaded Hugging Face model."""
    require(backend)
    if backend == "hf":
        from steerlab.backends.hf import HFBackend

        return HFBackend(hf, label, layers_path)
    if backend == "transformer_lens":
        from steerlab.backends.transformer_lens import TransformerLensBackend

        return TransformerLensBackend.from_hf(hf, tokenizer, label)
    if backend == "nnsight":
        from steerlab.backends.nnsight import NNsightBackend

        return NNsightBackend.from_hf(hf, tokenizer, label, layers_path)
    raise BackendUnavailable(f"unknown backend {backend!r}: use one of {', '.join(BACKENDS)}")


__all__ = [
    "BACKENDS",
    "Backend",
    "BackendUnavailable",
    "CallInfo",
    "Edits",
    "SiteFn",
    "make_backend",
    "require",
]
