"""What a steering config file says: one validated :class:`VectorSpec` per entry of ``vectors:``
and the :class:`SteeringConfigFile` holding them (see :mod:`steerlab.steering_config` for what
each key means)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import (
    Field,
    PrivateAttr,
    StrictBool,
    StrictInt,
    StrictStr,
    field_validator,
    model_validator,
)

from steerlab._util.strict import Strict
from steerlab.directions import METHODS
from steerlab.errors import SteerlabError
from steerlab.interventions import Window
from steerlab.sites import parse_point

#: Methods that build from a positive and a negative prompt (or two lists of prompts).
PAIR_METHODS: tuple[str, ...] = ("contrast", "labeled", "pca")
#: Methods that build from one positive prompt alone.
SINGLE_METHODS: tuple[str, ...] = ("single",)
#: Token positions a prompt's activation is read at (what the direction builders support).
POSITIONS: tuple[str, ...] = ("mean", "last")
VECTOR_KEYS: tuple[str, ...] = (
    "name",
    "positive_prompt",
    "negative_prompt",
    "layer",
    "coefficient",
    "normalize",
    "intervention",
    "positions",
    "scale",
    "hook",
    "vector_file",
    "method",
    "position",
)


class SteeringConfigError(SteerlabError):
    """A steering config is malformed or does not fit the model; the message names the file
    and the vector."""


class VectorSpec(Strict):
    """One entry of ``vectors:`` as written (see :mod:`steerlab.steering_config` for each key)."""

    name: StrictStr
    positive_prompt: StrictStr | list[StrictStr] | None = None
    negative_prompt: StrictStr | list[StrictStr] | None = None
    layer: StrictInt = Field(ge=0)
    coefficient: float
    normalize: StrictBool = False
    intervention: Literal["add", "ablate", "clamp"] = "add"
    positions: StrictStr = "all"
    scale: Literal["absolute", "diff", "resid"] | None = None
    hook: StrictStr | None = None
    vector_file: StrictStr | None = None
    method: StrictStr | None = None
    position: Literal["mean", "last"] | None = None

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("is empty")
        return v

    @field_validator("coefficient", mode="before")
    @classmethod
    def _number(cls, v: Any) -> Any:
        if isinstance(v, bool) or not isinstance(v, int | float):
            raise ValueError(f"must be a number, got {v!r:.40}")
        return v

    @field_validator("positive_prompt", "negative_prompt")
    @classmethod
    def _prompts(cls, v: str | list[str] | None) -> str | list[str] | None:
        texts = [v] if isinstance(v, str) else v or []
        if isinstance(v, list) and not v:
            raise ValueError("is an empty list")
        for text in texts:
            if not text.strip():
                raise ValueError("is empty")
        return v

    @field_validator("positions")
    @classmethod
    def _positions(cls, v: str) -> str:
        Window.parse(v)  # a SteerlabError is a ValueError: reported as this key's error
        return v

    @field_validator("hook")
    @classmethod
    def _hook(cls, v: str | None) -> str | None:
        if v is not None:
            parse_point(v)
        return v

    @model_validator(mode="after")
    def _fits(self) -> VectorSpec:
        if self.hook is not None:
            named, point = parse_point(self.hook)
            if named is not None and named != self.layer:
                raise ValueError(
                    f"hook {self.hook!r} names layer {named}, but layer is {self.layer} "
                    f"(write hook: {point})"
                )
        if self.vector_file is not None:
            given = [
                k
                for k in ("positive_prompt", "negative_prompt", "method", "position")
                if getattr(self, k) is not None
            ]
            if given:
                raise ValueError(
                    f"give either vector_file or prompts to build from, not both "
                    f"(vector_file with {', '.join(given)})"
                )
            return self
        if self.positive_prompt is None:
            raise ValueError("missing positive_prompt (or give a vector_file)")
        method = self.built_by
        if method not in METHODS:
            raise ValueError(f"unknown method {method!r}: use one of {', '.join(METHODS)}")
        pos, neg = self.positives, self.negatives
        if neg is None:
            if method not in SINGLE_METHODS:
                raise ValueError(
                    f"method {method!r} does not fit a lone positive_prompt: add a "
                    f"negative_prompt, or use method single"
                )
            if len(pos) != 1:
                raise ValueError(
                    f"a single-prompt vector takes one positive_prompt, got {len(pos)}: add "
                    "negative_prompt for method labeled, or give one prompt"
                )
            return self
        if method not in PAIR_METHODS:
            raise ValueError(
                f"method {method!r} does not fit a positive and a negative prompt: use one of "
                f"{', '.join(PAIR_METHODS)}"
            )
        if method in ("contrast", "pca") and len(pos) != len(neg):
            raise ValueError(
                f"method {method} pairs positive and negative prompts one to one, but there "
                f"are {len(pos)} positive and {len(neg)} negative: match them, or use method "
                "labeled"
            )
        if method == "pca" and len(pos) < 2:
            raise ValueError("method pca needs at least two prompt pairs")
        return self

    @property
    def positives(self) -> tuple[str, ...]:
        p = self.positive_prompt
        return () if p is None else (p,) if isinstance(p, str) else tuple(p)

    @property
    def negatives(self) -> tuple[str, ...] | None:
        n = self.negative_prompt
        return None if n is None else (n,) if isinstance(n, str) else tuple(n)

    @property
    def built_by(self) -> str:
        """The direction method: as given, else ``contrast`` for pairs and ``single`` for one
        prompt (``file`` for a ``vector_file``)."""
        if self.vector_file is not None:
            return "file"
        if self.method is not None:
            return self.method
        return "single" if self.negative_prompt is None else "contrast"

    @property
    def read_at(self) -> str:
        """Token position of prompt activations: ``last`` unless given (see
        :mod:`steerlab.steering_config` for why)."""
        return self.position or "last"

    @property
    def applied_scale(self) -> str:
        """The intervention scale: given, else ``absolute`` when normalizing, else ``diff``."""
        if self.scale is not None:
            return self.scale
        return "absolute" if self.normalize else "diff"


class SteeringConfigFile(Strict):
    """A validated steering config; :attr:`source` is the file it came from."""

    vectors: tuple[VectorSpec, ...]
    _source: str = PrivateAttr(default="<steering config>")

    @field_validator("vectors")
    @classmethod
    def _unique(cls, v: tuple[VectorSpec, ...]) -> tuple[VectorSpec, ...]:
        seen: dict[str, int] = {}
        for i, spec in enumerate(v):
            if spec.name in seen:
                raise ValueError(
                    f"duplicate vector name {spec.name!r} (vectors[{seen[spec.name]}] and "
                    f"vectors[{i}])"
                )
            seen[spec.name] = i
        return v

    @property
    def source(self) -> str:
        return self._source

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(v.name for v in self.vectors)

    def label(self, index: int) -> str:
        """``vectors[i] ('name')``: how errors name a vector."""
        return f"vectors[{index}] ({self.vectors[index].name!r})"
