"""The backends a model can run on, one row each: the one place that lists them.

A row (:class:`BackendSpec`) gives the backend's name, the optional package it needs and the pip
extra that installs it, which user objects :func:`steerlab.wrap` accepts for it, and the loaders
that build it: around a Hugging Face model steerlab loaded (``load``) and around the object the
user holds (``wrap``). The CLI's ``--backend`` choices, the configs' validation,
``load_model`` and ``wrap`` all read this table.

Importing this module imports no framework (not even torch): a backend's module is imported
only when that backend is built, and a missing optional package is one sentence saying what to
install (:func:`require`).

Adding a backend is one new module (a :class:`~steerlab.backends.base.Backend` subclass) plus one
row in :data:`REGISTRY`, with its two small loader functions beside it.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from steerlab.backends.base import Backend, ModelFacts

#: ``(hf_model, tokenizer, label, layers_path) -> Backend``: a backend around a loaded HF model
Load = Callable[[Any, Any, str, "str | None"], "Backend"]
#: ``(user_object, layers_path) -> ModelFacts``: a backend around a framework object the user
#: holds
Wrap = Callable[[Any, "str | None"], "ModelFacts"]


@dataclass(frozen=True)
class BackendSpec:
    """One backend.

    ``package``/``extra``: the optional package the backend imports and the pip extra that
    installs it (None: core dependencies suffice). ``classes``: ``"module:Class"`` of the user
    objects :func:`steerlab.wrap` hands to this backend (subclasses too); ``described``: how
    an error names them. ``wrap``: builds the backend around such an object (its own
    tokenizer is used when none is given); None when the object *is* a Hugging Face model, which
    ``wrap`` then builds on with ``load``, exactly as ``load_model`` does. ``lowers_matmuls``:
    the backend runs the Hugging Face modules themselves, so ``matmul_dtype`` applies.
    ``own_engine``: the backend loads the weights into its own engine (vLLM) from the spec,
    so ``load_model`` hands it the spec's files instead of a loaded Hugging Face model.
    """

    name: str
    load: Load
    classes: tuple[str, ...]
    described: str
    wrap: Wrap | None = None
    package: str | None = None
    extra: str | None = None
    lowers_matmuls: bool = True
    own_engine: bool = False

    def accepts(self, obj: Any) -> bool:
        """Whether :func:`steerlab.wrap` hands ``obj`` to this backend. Imports nothing: an
        object of an optional package implies that package is already imported."""
        return any(_is_instance(obj, path) for path in self.classes)

    def require(self) -> None:
        """Raise :class:`~steerlab.backends.base.BackendUnavailable` (one sentence) when this
        backend's package is missing."""
        if self.package is None or importlib.util.find_spec(self.package) is not None:
            return
        from steerlab.backends.base import BackendUnavailable

        raise BackendUnavailable(
            f"the {self.name} backend needs the {self.package} package: pip install '{self.extra}'"
        )


# ----------------------------------------------------------------------------- loaders
# Each imports its backend's module only when called, so an optional framework is imported only
# when its backend is chosen.


def _load_hf(hf: Any, tokenizer: Any, label: str, layers_path: str | None) -> Backend:
    from steerlab.backends.hf import HFBackend

    return HFBackend(hf, label, layers_path)


def _load_tl(hf: Any, tokenizer: Any, label: str, layers_path: str | None) -> Backend:
    from steerlab.backends.transformer_lens import TransformerLensBackend

    return TransformerLensBackend.from_hf(hf, tokenizer, label)


def _wrap_tl(obj: Any, layers_path: str | None) -> Backend:
    from steerlab.backends.transformer_lens import TransformerLensBackend

    return TransformerLensBackend.from_tl(obj)


def _load_nnsight(hf: Any, tokenizer: Any, label: str, layers_path: str | None) -> Backend:
    from steerlab.backends.nnsight import NNsightBackend

    return NNsightBackend.from_hf(hf, tokenizer, label, layers_path)


def _wrap_nnsight(obj: Any, layers_path: str | None) -> Backend:
    from steerlab.backends.nnsight import NNsightBackend

    return NNsightBackend.from_language_model(obj, layers_path=layers_path)


def _load_vllm(hf: Any, tokenizer: Any, label: str, layers_path: str | None) -> Backend:
    from steerlab.backends.base import BackendUnavailable

    raise BackendUnavailable(
        "the vllm backend loads the weights into its own engine: use "
        "steerlab.load_model(spec, backend='vllm') or steerlab.wrap(vllm.LLM(...))"
    )


def _wrap_vllm(obj: Any, layers_path: str | None) -> ModelFacts:
    from steerlab.backends.vllm import VLLMFacts

    return VLLMFacts(obj, str(obj.llm_engine.vllm_config.model_config.model))


#: name -> backend, in the order messages list them (``hf`` is the default everywhere).
REGISTRY: dict[str, BackendSpec] = {
    row.name: row
    for row in (
        BackendSpec(
            "hf",
            load=_load_hf,
            classes=("transformers:PreTrainedModel",),
            described="a Hugging Face PreTrainedModel",
        ),
        BackendSpec(
            "transformer_lens",
            load=_load_tl,
            wrap=_wrap_tl,
            classes=(
                "transformer_lens:HookedTransformer",
                "transformer_lens.model_bridge:TransformerBridge",
            ),
            described="a TransformerLens HookedTransformer/TransformerBridge",
            package="transformer_lens",
            extra="steerlab[transformer-lens]",
            lowers_matmuls=False,
        ),
        BackendSpec(
            "nnsight",
            load=_load_nnsight,
            wrap=_wrap_nnsight,
            classes=("nnsight.modeling.transformers:TransformersModel",),
            described="an nnsight LanguageModel",
            package="nnsight",
            extra="steerlab[nnsight]",
        ),
        BackendSpec(
            "vllm",
            load=_load_vllm,
            wrap=_wrap_vllm,
            classes=("vllm:LLM",),
            described="a vllm.LLM started with steerlab's worker extension",
            package="vllm",
            extra="steerlab[vllm]",
            lowers_matmuls=False,
            own_engine=True,
        ),
    )
}

#: the backend names, in :data:`REGISTRY` order
BACKENDS: tuple[str, ...] = tuple(REGISTRY)


def unknown_backend(name: object) -> str:
    """The one sentence for a backend name not in the registry."""
    return f"unknown backend {name!r}: use one of {', '.join(BACKENDS)}"


def get(name: str) -> BackendSpec:
    """The row for ``name``; :class:`~steerlab.backends.base.BackendUnavailable` if unknown."""
    if name not in REGISTRY:
        from steerlab.backends.base import BackendUnavailable

        raise BackendUnavailable(unknown_backend(name))
    return REGISTRY[name]


def require(name: str) -> None:
    """Raise :class:`~steerlab.backends.base.BackendUnavailable` (one sentence) when backend
    ``name``'s framework is missing; an unknown name is left to :func:`get`."""
    if name in REGISTRY:
        REGISTRY[name].require()


def make_backend(
    name: str, hf: Any, tokenizer: Any, label: str, layers_path: str | None = None
) -> Backend:
    """A backend of kind ``name`` around an already loaded Hugging Face model."""
    row = get(name)
    row.require()
    return row.load(hf, tokenizer, label, layers_path)


def accepting(obj: Any) -> BackendSpec | None:
    """The backend :func:`steerlab.wrap` uses for ``obj`` (the rows accept disjoint types)."""
    for row in REGISTRY.values():
        if row.accepts(obj):
            return row
    return None


def wrappable() -> str:
    """What :func:`steerlab.wrap` accepts, in words (for its error)."""
    return join_or([row.described for row in REGISTRY.values()])


def lowering_matmuls() -> str:
    """The backends ``matmul_dtype`` works with, in words (for its error)."""
    names = [row.name for row in REGISTRY.values() if row.lowers_matmuls]
    return join_or(names, "and")


def join_or(items: Sequence[str], word: str = "or") -> str:
    """``a, b or c``."""
    if len(items) <= 1:
        return "".join(items)
    return f"{', '.join(items[:-1])} {word} {items[-1]}"


def _is_instance(obj: Any, path: str) -> bool:
    """``isinstance(obj, module.Class)`` (subclasses too) without importing an optional package
    the user has not imported: an object of that package implies it is loaded."""
    module, _, cls = path.partition(":")
    if module.partition(".")[0] not in sys.modules:
        return False
    try:
        target = getattr(importlib.import_module(module), cls)
    except (ImportError, AttributeError):
        return False
    return isinstance(obj, target)
