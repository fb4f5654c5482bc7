"""The metadata object a steerlab vector file carries (``SteeringVector.metadata()``), read back
into the value's fields with type checks; a bad object raises ``KeyError``, ``TypeError`` or
``ValueError`` for the reader to report with the file's name."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

LAYER_TEXT = re.compile(r"0|[1-9][0-9]{0,5}")

STRING_META = ("hook_point", "method", "model_id", "prompts_hash", "steerlab_version", "created")


def layer_key(key: object) -> int:
    """A layer index stored as text (``"3"``: ASCII digits, no leading zero, at most six); else a
    ``ValueError``."""
    if not isinstance(key, str) or not LAYER_TEXT.fullmatch(key):
        raise ValueError(f"layer key {str(key)[:40]!r} is not a layer index")
    return int(key)


def norms_of(meta: Mapping[str, Any], key: str) -> dict[int, float]:
    """``{"layer": number}`` metadata as ``{layer: float}``; wrong types raise ``TypeError``."""
    value = meta[key]
    if not isinstance(value, dict):
        raise TypeError(f"{key} must be an object, got {type(value).__name__}")
    out = {}
    for k, v in value.items():
        if isinstance(v, bool) or not isinstance(v, int | float):
            raise TypeError(f"{key}[{k!r}] must be a number, got {type(v).__name__}")
        out[layer_key(k)] = float(v)
    return out


def fields_of(meta: Mapping[str, Any]) -> dict[str, Any]:
    """The value's fields (all but ``directions``) from a metadata object."""
    for key in STRING_META:
        if not isinstance(meta[key], str):
            raise TypeError(f"{key} must be a string, got {type(meta[key]).__name__}")
    extra = meta.get("extra", {})
    if not isinstance(extra, dict):
        raise TypeError(f"extra must be an object, got {type(extra).__name__}")
    return {
        "hook_point": meta["hook_point"],
        "method": meta["method"],
        "model_id": meta["model_id"],
        "raw_norm": norms_of(meta, "raw_norm"),
        "mean_resid_norm": norms_of(meta, "mean_resid_norm"),
        "prompts_hash": meta["prompts_hash"],
        "steerlab_version": meta["steerlab_version"],
        "created": meta["created"],
        "extra": extra,
    }
