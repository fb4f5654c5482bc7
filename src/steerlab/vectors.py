"""SteeringVector: a frozen value holding one direction per layer plus provenance metadata.

A vector is a value (repeng style): ``2 * v``, ``-v``, ``v1 + v2`` and ``v.normalized()`` return
new vectors. Stored directions are the *raw* construction output (e.g. a mean difference), so
``scale="diff"`` interventions mean "α times the stored vector" (for a freshly built vector, α
times what the method measured; after arithmetic, α times the result, so ``2 * v`` steers twice as
hard). ``raw_norm`` and ``mean_resid_norm`` record the construction-time norms per layer and are
kept through arithmetic (unit directions need α ≈ 50-100 on the embedded model to matter).

Saved as ``.safetensors``: tensors ``layer.<L>`` (d_model,) and a JSON metadata blob under the
``steerlab`` key.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import MappingProxyType
from typing import Any

import torch

from steerlab._util.version import __version__
from steerlab.errors import SteerlabError
from steerlab.sites import POINTS

HOOK_POINTS = POINTS
_META_KEY = "steerlab"


class VectorFileError(SteerlabError):
    """A file is not a readable steerlab vector, or does not fit the model."""


_STRING_META = ("hook_point", "method", "model_id", "prompts_hash", "steerlab_version", "created")


def _layer_key(key: object) -> int:
    """A layer index stored as text (``"3"``); anything else is a ``ValueError``."""
    if not isinstance(key, str) or not key.isdecimal():
        raise ValueError(f"layer key {key!r} is not a layer index")
    return int(key)


def _norms(meta: dict[str, Any], key: str) -> dict[int, float]:
    """``{"layer": number}`` metadata as ``{layer: float}``; wrong types raise ``TypeError``."""
    value = meta[key]
    if not isinstance(value, dict):
        raise TypeError(f"{key} must be an object, got {type(value).__name__}")
    out = {}
    for k, v in value.items():
        if isinstance(v, bool) or not isinstance(v, int | float):
            raise TypeError(f"{key}[{k!r}] must be a number, got {type(v).__name__}")
        out[_layer_key(k)] = float(v)
    return out


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


@dataclass(frozen=True, eq=False)
class SteeringVector:
    """One direction per layer (each ``(d_model,)``, float32, CPU) plus metadata.

    Attributes:
        directions: layer index -> raw direction ``(d_model,)``.
        hook_point: the site point it was read at (``resid_pre``, ``attn_out``, ``resid_mid``,
            ``mlp_out``, ``resid_post``); each layer's direction lives at
            ``blocks.L.hook_<point>``.
        method: how it was built (``contrast``, ``forced_prefix``, ``labeled``, ``pca``, ...).
        model_id: the model it was built on.
        raw_norm: layer -> norm of the construction output (kept through arithmetic).
        mean_resid_norm: layer -> mean residual-stream norm at that layer over the construction
            prompts (what ``scale="resid"`` multiplies by).
        prompts_hash: sha256 of the construction inputs.
        extra: free-form JSON-able details (positions, prefixes, counts, stats).
    """

    directions: Mapping[int, torch.Tensor]
    hook_point: str = "resid_post"
    method: str = "unknown"
    model_id: str = "unknown"
    raw_norm: Mapping[int, float] = field(default_factory=dict)
    mean_resid_norm: Mapping[int, float] = field(default_factory=dict)
    prompts_hash: str = ""
    steerlab_version: str = __version__
    created: str = field(default_factory=_now)
    extra: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.directions:
            raise SteerlabError("a steering vector needs at least one layer")
        if self.hook_point not in HOOK_POINTS:
            raise SteerlabError(
                f"hook_point must be one of {HOOK_POINTS}, got {self.hook_point!r} (a vector "
                "holds one direction per layer: give the point, e.g. 'mlp_out', not "
                "'blocks.3.hook_mlp_out')"
            )
        dims = {tuple(t.shape) for t in self.directions.values()}
        if len(dims) != 1 or len(next(iter(dims))) != 1:
            raise SteerlabError(f"every direction must be 1-D with the same size, got {dims}")
        for t in self.directions.values():
            if not torch.isfinite(t).all():
                raise SteerlabError("steering vector contains NaN or inf")
        for what, norms in (("raw_norm", self.raw_norm), ("mean_resid_norm", self.mean_resid_norm)):
            for k, x in norms.items():
                if not isinstance(x, (int, float)) or not math.isfinite(x) or x < 0:
                    raise SteerlabError(
                        f"steering vector metadata {what}[{k}] must be a finite number >= 0, "
                        f"got {x!r}"
                    )
        # Freeze the mappings so the value cannot be mutated behind a user's back.
        object.__setattr__(
            self,
            "directions",
            MappingProxyType(
                {
                    int(k): v.detach().to("cpu", torch.float32).clone()
                    for k, v in sorted(self.directions.items())
                }
            ),
        )
        object.__setattr__(self, "raw_norm", MappingProxyType(dict(self.raw_norm)))
        object.__setattr__(self, "mean_resid_norm", MappingProxyType(dict(self.mean_resid_norm)))
        object.__setattr__(self, "extra", MappingProxyType(dict(self.extra)))

    # ------------------------------------------------------------------ accessors

    @property
    def layers(self) -> tuple[int, ...]:
        return tuple(self.directions)

    @property
    def d_model(self) -> int:
        return int(next(iter(self.directions.values())).shape[0])

    def direction(self, layer: int) -> torch.Tensor:
        """The raw direction at ``layer``; a clear error when the vector has none there."""
        if layer not in self.directions:
            raise SteerlabError(
                f"the vector has no direction for layer {layer} (it has layers {list(self.layers)})"
            )
        return self.directions[layer].clone()

    def norm(self, layer: int) -> float:
        return float(self.direction(layer).norm())

    def unit(self, layer: int) -> torch.Tensor:
        d = self.direction(layer)
        n = d.norm()
        if n == 0:
            raise SteerlabError(f"the direction at layer {layer} is zero; it has no unit vector")
        return d / n

    # ------------------------------------------------------------------ arithmetic

    def _map(self, fn: Any, method: str) -> SteeringVector:
        return replace(
            self, directions={k: fn(v) for k, v in self.directions.items()}, method=method
        )

    def __mul__(self, c: float) -> SteeringVector:
        if not isinstance(c, (int, float)):
            return NotImplemented
        return self._map(lambda v: v * float(c), self.method)

    __rmul__ = __mul__

    def __truediv__(self, c: float) -> SteeringVector:
        return self * (1.0 / float(c))

    def __neg__(self) -> SteeringVector:
        return self * -1.0

    def __add__(self, other: SteeringVector) -> SteeringVector:
        if not isinstance(other, SteeringVector):
            return NotImplemented
        if other.d_model != self.d_model:
            raise SteerlabError(
                f"cannot add vectors with d_model {self.d_model} and {other.d_model}"
            )
        if other.hook_point != self.hook_point:
            raise SteerlabError(
                f"cannot add a {self.hook_point} vector and a {other.hook_point} vector"
            )
        if other.model_id != self.model_id:
            raise SteerlabError(
                f"cannot add vectors built on different models ({self.model_id}, {other.model_id})"
            )
        layers = sorted(set(self.layers) | set(other.layers))
        zero = torch.zeros(self.d_model)
        dirs = {k: self.directions.get(k, zero) + other.directions.get(k, zero) for k in layers}
        return replace(
            self,
            directions=dirs,
            method="sum",
            raw_norm={**other.raw_norm, **self.raw_norm},
            mean_resid_norm={**other.mean_resid_norm, **self.mean_resid_norm},
            prompts_hash="",
            created=_now(),
        )

    def __sub__(self, other: SteeringVector) -> SteeringVector:
        return self + (-other)

    def normalized(self) -> SteeringVector:
        """Unit-norm directions at every layer; metadata norms are kept."""
        return replace(self, directions={k: self.unit(k) for k in self.layers})

    def cosine(self, other: SteeringVector, layer: int) -> float:
        return float(
            torch.nn.functional.cosine_similarity(
                self.direction(layer), other.direction(layer), dim=0
            )
        )

    # ------------------------------------------------------------------ io

    def metadata(self) -> dict[str, Any]:
        return {
            "format": "steerlab.vector/1",
            "hook_point": self.hook_point,
            "method": self.method,
            "model_id": self.model_id,
            "layers": list(self.layers),
            "d_model": self.d_model,
            "raw_norm": {str(k): v for k, v in self.raw_norm.items()},
            "mean_resid_norm": {str(k): v for k, v in self.mean_resid_norm.items()},
            "prompts_hash": self.prompts_hash,
            "steerlab_version": self.steerlab_version,
            "created": self.created,
            "extra": dict(self.extra),
        }

    def save(self, path: str | Path) -> Path:
        """Write atomically to ``path`` (``.safetensors``)."""
        from safetensors.torch import save_file

        from steerlab._util.io import atomic_path

        path = Path(path)
        tensors = {f"layer.{k}": v.contiguous() for k, v in self.directions.items()}
        with atomic_path(path) as tmp:
            save_file(tensors, str(tmp), metadata={_META_KEY: json.dumps(self.metadata())})
        return path

    @classmethod
    def load(cls, path: str | Path, d_model: int | None = None) -> SteeringVector:
        """Read a vector; ``d_model`` (when given) must match, else a clear error."""
        from safetensors import SafetensorError, safe_open

        path = Path(path)
        if path.is_dir():
            raise VectorFileError(f"{path} is a directory, not a vector file")
        if not path.is_file():
            raise VectorFileError(f"{path}: no such vector file")
        try:
            with safe_open(str(path), framework="pt") as f:
                raw_meta = (f.metadata() or {}).get(_META_KEY)
                tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
        except (SafetensorError, OSError, ValueError) as e:
            raise VectorFileError(f"{path}: not a safetensors file ({e})") from e
        if raw_meta is None:
            raise VectorFileError(f"{path}: a safetensors file, but not a steerlab vector")
        try:
            meta = json.loads(raw_meta)
            if not isinstance(meta, dict):
                raise TypeError(f"expected a JSON object, got {type(meta).__name__}")
            dirs = {_layer_key(k.split(".", 1)[1]): v for k, v in tensors.items()}
            for key in _STRING_META:
                if not isinstance(meta[key], str):
                    raise TypeError(f"{key} must be a string, got {type(meta[key]).__name__}")
            extra = meta.get("extra", {})
            if not isinstance(extra, dict):
                raise TypeError(f"extra must be an object, got {type(extra).__name__}")
            vec = cls(
                directions=dirs,
                hook_point=meta["hook_point"],
                method=meta["method"],
                model_id=meta["model_id"],
                raw_norm=_norms(meta, "raw_norm"),
                mean_resid_norm=_norms(meta, "mean_resid_norm"),
                prompts_hash=meta["prompts_hash"],
                steerlab_version=meta["steerlab_version"],
                created=meta["created"],
                extra=extra,
            )
        except (
            KeyError,
            ValueError,  # includes json.JSONDecodeError and SteerlabError
            IndexError,
            TypeError,
            AttributeError,
            RecursionError,
        ) as e:
            what = f"missing key {e}" if isinstance(e, KeyError) else str(e)
            raise VectorFileError(f"{path}: malformed steerlab vector metadata ({what})") from e
        if d_model is not None:
            vec.check_d_model(d_model, str(path))
        return vec

    def check_d_model(self, d_model: int, where: str = "vector") -> None:
        if self.d_model != d_model:
            raise VectorFileError(
                f"{where} has d_model {self.d_model} (built on {self.model_id}) but the model "
                f"has d_model {d_model}"
            )
