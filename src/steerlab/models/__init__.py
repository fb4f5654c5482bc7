"""Models: a backend plus its tokenizer (:class:`Model`), and the loaders that build one from a
spec (:func:`load_model`) or from an object the user already holds (:func:`wrap`)."""

from __future__ import annotations

from steerlab.errors import ModelLoadError
from steerlab.models.load import (
    EMBEDDED,
    EMBEDDED_GGUF,
    EMBEDDED_NAME,
    TINY_MODELS,
    cache_dir,
    default_device,
    default_dtype,
    embedded_gguf_path,
    load_model,
    model_from_hf,
    prepare_tokenizer,
    wrap,
)
from steerlab.models.model import Model

__all__ = [
    "EMBEDDED",
    "EMBEDDED_GGUF",
    "EMBEDDED_NAME",
    "TINY_MODELS",
    "Model",
    "ModelLoadError",
    "cache_dir",
    "default_device",
    "default_dtype",
    "embedded_gguf_path",
    "load_model",
    "model_from_hf",
    "prepare_tokenizer",
    "wrap",
]
