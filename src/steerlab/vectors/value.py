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
from steerlab.errors import SteerlabError, VectorFileError
from steerlab.sites import POINTS
from steerlab.vectors.metadata import fields_of, layer_key

HOOK_POINTS = POINTS
_META_KEY = "steerlab"


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
        for layer, t in self.directions.items():
            if not torch.is_tensor(t) or not t.is_floating_point():
                kind = t.dtype if torch.is_tensor(t) else type(t).__name__
                raise SteerlabError(f"the direction at layer {layer} is {kind}, not floating point")
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
        meta = {_META_KEY: json.dumps(self.metadata())}
        with atomic_path(path) as tmp:
            try:
                save_file(tensors, str(tmp), metadata=meta)
            except OSError:
                raise
            except Exception as e:  # safetensors reports a failed write (a full disk) its own way
                reason = str(e).split("I/O error: ", 1)[-1]
                raise OSError(f"cannot write {path}: {reason}") from None
        return path

    @classmethod
    def load(cls, path: str | Path, d_model: int | None = None) -> SteeringVector:
        """Read a vector file: steerlab's ``.safetensors``, or a control-vector GGUF (see
        :meth:`from_gguf`); ``d_model`` (when given) must match, else a clear error."""
        from safetensors import SafetensorError, safe_open

        from steerlab.vectors.gguf_file import is_gguf

        path = Path(path)
        if path.is_dir():
            raise VectorFileError(f"{path} is a directory, not a vector file")
        if not path.is_file():
            raise VectorFileError(f"{path}: no such vector file")
        if is_gguf(path):  # by content: a file's name does not say what it holds
            return cls.from_gguf(path, d_model=d_model)
        try:
            with safe_open(str(path), framework="pt") as f:
                raw_meta = (f.metadata() or {}).get(_META_KEY)
                tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
        except (SafetensorError, OSError, ValueError) as e:
            if path.suffix.lower() == ".gguf":
                raise VectorFileError(f"{path}: not a GGUF file (nor a safetensors file)") from e
            raise VectorFileError(f"{path}: not a safetensors file ({e})") from e
        if raw_meta is None:
            raise VectorFileError(f"{path}: a safetensors file, but not a steerlab vector")
        try:
            meta = json.loads(raw_meta)
            if not isinstance(meta, dict):
                raise TypeError(f"expected a JSON object, got {type(meta).__name__}")
            dirs = {layer_key(k.split(".", 1)[1]): v for k, v in tensors.items()}
        except (ValueError, IndexError, TypeError, RecursionError) as e:
            raise VectorFileError(f"{path}: malformed steerlab vector metadata ({e})") from e
        vec = cls.from_metadata(dirs, meta, str(path))
        if d_model is not None:
            vec.check_d_model(d_model, str(path))
        return vec

    @classmethod
    def from_metadata(
        cls, directions: Mapping[int, torch.Tensor], meta: Mapping[str, Any], where: str
    ) -> SteeringVector:
        """A vector from its directions and the object :meth:`metadata` wrote; a malformed
        object is a :class:`VectorFileError` naming ``where``."""
        try:
            return cls(directions=directions, **fields_of(meta))
        except (
            KeyError,
            ValueError,  # includes SteerlabError
            IndexError,
            TypeError,
            AttributeError,
            RecursionError,
        ) as e:
            what = f"missing key {e}" if isinstance(e, KeyError) else str(e)
            raise VectorFileError(f"{where}: malformed steerlab vector metadata ({what})") from e

    # ------------------------------------------------------------------ other tools' formats

    @classmethod
    def _imported(
        cls,
        directions: Mapping[int, torch.Tensor],
        hook_point: str,
        method: str,
        model_id: str,
        extra: Mapping[str, Any],
    ) -> SteeringVector:
        """A vector another tool built: its directions as given are the construction output."""
        raw = {k: float(v.norm()) for k, v in directions.items()}
        return cls(directions, hook_point, method, model_id, raw_norm=raw, extra=extra)

    def llama_cpp_problem(self) -> str | None:
        """Why llama.cpp would not apply this vector as steerlab does; ``None`` when it would.

        llama.cpp adds ``direction.k`` to the output of block ``k`` (``resid_post``) and refuses
        a file with a direction for block 0."""
        if self.hook_point != "resid_post":
            return (
                f"llama.cpp adds a control vector to each block's output (resid_post), and this "
                f"vector is at {self.hook_point}"
            )
        if 0 in self.directions:
            return "llama.cpp refuses a control vector with a direction for layer 0"
        return None

    def to_gguf(self, path: str | Path, *, llama_cpp: bool = True) -> Path:
        """Write as a llama.cpp control vector (``direction.<layer>`` F32 tensors, the
        ``controlvector.*`` keys), with steerlab's metadata under ``steerlab.metadata`` so
        :meth:`from_gguf` gives this vector back exactly.

        ``llama-cli --control-vector-scaled FILE s`` then adds ``s`` times the stored direction to
        each listed block's output at every position: steerlab's ``add`` with ``scale="diff"``,
        ``alpha=s``, ``positions="all"``. With ``llama_cpp=True`` (the default) a vector llama.cpp
        would apply elsewhere or refuse (another site; a direction for layer 0) is an error;
        ``llama_cpp=False`` writes it anyway: a vector at another site is then for steerlab
        only (repeng, too, adds every direction to a block's output); a resid_post vector with
        a layer-0 direction also works in repeng.
        """
        from steerlab.vectors.gguf_file import write_control_vector

        problem = self.llama_cpp_problem()
        if llama_cpp and problem is not None:
            raise SteerlabError(
                f"{problem}; rebuild it at resid_post on layers >= 1, or write it for steerlab "
                "to read back only (llama_cpp=False, --any-site)"
            )
        hint = self.extra.get("model_hint")
        model_hint = hint if isinstance(hint, str) and hint else self.model_id
        return write_control_vector(Path(path), self.directions, model_hint, self.metadata())

    @classmethod
    def from_gguf(cls, path: str | Path, d_model: int | None = None) -> SteeringVector:
        """Read a control-vector GGUF: one steerlab wrote (everything comes back), or one from
        llama.cpp's ``cvector-generator``, repeng's ``export_gguf`` or another tool.

        A foreign file's ``direction.k`` becomes the ``resid_post`` direction at layer ``k``
        (where llama.cpp adds it), method ``control_vector``, its norms as ``raw_norm``; apply
        it as llama.cpp does with ``scale="diff"``, ``alpha`` = the strength.
        """
        from steerlab.vectors.gguf_file import read_control_vector

        path = Path(path)
        if path.is_dir():
            raise VectorFileError(f"{path} is a directory, not a vector file")
        if not path.is_file():
            raise VectorFileError(f"{path}: no such vector file")
        contents = read_control_vector(path)
        if contents.steerlab_metadata is not None:
            vec = cls.from_metadata(contents.directions, contents.steerlab_metadata, str(path))
        else:
            try:
                vec = cls._imported(
                    contents.directions,
                    "resid_post",
                    "control_vector",
                    "unknown",
                    {
                        "source": "gguf",
                        "model_hint": contents.model_hint,
                        **({"stored_as": "F16"} if contents.f16 else {}),
                    },
                )
            except SteerlabError as e:
                raise VectorFileError(f"{path}: {e}") from e
        if d_model is not None:
            vec.check_d_model(d_model, str(path))
        return vec

    @classmethod
    def from_repeng(cls, control_vector: Any, model_id: str = "unknown") -> SteeringVector:
        """A vector from a repeng ``ControlVector``: its ``directions[k]`` is added by
        ``ControlModel`` to decoder layer ``k``'s output, so it becomes steerlab's
        ``resid_post`` direction at layer ``k``; ``set_control(v, coeff)`` is ``add`` with
        ``scale="diff"``, ``alpha=coeff``, ``positions="all"``."""
        from steerlab.vectors.tool_objects import repeng_parts

        dirs, model_type = repeng_parts(control_vector)
        extra = {"source": "repeng", "model_hint": model_type}
        return cls._imported(dirs, "resid_post", "repeng", model_id, extra)

    def to_repeng(self) -> Any:
        """This vector as a repeng ``ControlVector`` (``resid_post`` vectors only)."""
        from steerlab.vectors.tool_objects import make_repeng

        if self.hook_point != "resid_post":
            raise SteerlabError(
                f"repeng steers decoder layer outputs (resid_post); this vector is at "
                f"{self.hook_point}"
            )
        hint = self.extra.get("model_hint")
        return make_repeng(self.directions, hint if isinstance(hint, str) else self.model_id)

    @classmethod
    def from_steering_vectors(
        cls, steering_vector: Any, model_id: str = "unknown"
    ) -> SteeringVector:
        """A vector from a steering-vectors ``SteeringVector``: ``layer_type`` ``decoder_block``
        is ``resid_post``, ``self_attn`` is ``attn_out``, ``mlp`` is ``mlp_out`` (layer numbers
        are the same); ``apply(model, multiplier=m)`` is ``add`` with ``scale="diff"``,
        ``alpha=m``, ``positions="all"``."""
        from steerlab.vectors.tool_objects import steering_vectors_parts

        dirs, point = steering_vectors_parts(steering_vector)
        extra = {"source": "steering-vectors"}
        return cls._imported(dirs, point, "steering_vectors", model_id, extra)

    def to_steering_vectors(self) -> Any:
        """This vector as a steering-vectors ``SteeringVector`` (resid_post, attn_out or
        mlp_out vectors: the sites that library names)."""
        from steerlab.vectors.tool_objects import make_steering_vectors

        return make_steering_vectors(self.directions, self.hook_point)

    def push_to_hub(
        self,
        repo_id: str,
        *,
        revision: str | None = None,
        private: bool | None = None,
        token: str | None = None,
        commit_message: str | None = None,
        api: Any = None,
    ) -> str:
        """Upload to a Hugging Face Hub model repository: ``steering_vector.safetensors``, a
        ``steering_vector.gguf`` when llama.cpp can apply the vector, and a model card
        (``README.md``) saying how to apply it. Returns the commit URL. ``api``: an object with
        ``HfApi``'s ``create_repo`` and ``upload_folder`` (default: a new ``HfApi``)."""
        from steerlab.vectors.hub import push_vector_folder

        return push_vector_folder(
            self,
            repo_id,
            revision=revision,
            private=private,
            token=token,
            commit_message=commit_message,
            api=api,
        )

    @classmethod
    def from_pretrained(
        cls,
        source: str | Path,
        *,
        revision: str | None = None,
        filename: str | None = None,
        d_model: int | None = None,
    ) -> SteeringVector:
        """Load from a Hub repository id (``owner/name``, at ``revision``) or a local directory
        (a downloaded snapshot): its steerlab ``.safetensors`` vector, else its control-vector
        ``.gguf``; ``filename`` picks one when the folder holds several."""
        from steerlab.vectors.hub import vector_file_in

        return cls.load(vector_file_in(source, revision=revision, filename=filename), d_model)

    def check_d_model(self, d_model: int, where: str = "vector") -> None:
        if self.d_model != d_model:
            raise VectorFileError(
                f"{where} has d_model {self.d_model} (built on {self.model_id}) but the model "
                f"has d_model {d_model}"
            )
