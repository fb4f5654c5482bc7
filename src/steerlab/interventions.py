"""Intervention specs (add / ablate / clamp at a layer's residual stream) and their compiled form.

Algebra, with ``u`` the unit direction, ``s`` the scale factor, ``h`` the residual (d_model,):

- ``add``:    ``h + α·s·u``                     (α = 0 is exactly the unsteered model)
- ``ablate``: ``h - α·(h·u)·u``                 (α = 1 removes the projection; scale unused)
- ``clamp``:  ``h + (α·s - h·u)·u``             (sets the projection on ``u`` to ``α·s``)
- ``sae_clamp``: ``h + (α - a(h))·d``           (sets an SAE feature's activation ``a`` to α)

``sae_clamp`` takes the vector from ``steerlab.directions.sae(sae, feature)`` and that ``sae``;
``d`` is the feature's decoder row, α the target activation in the SAE's own units (scale must be
``absolute``). The SAE's reconstruction error is kept (see :mod:`steerlab.sae.clamp`).

Scale ``s``: ``absolute`` = 1 (α is in residual units); ``diff`` = the norm of the vector's
direction at that layer as it is now, so ``add`` with ``α`` adds exactly ``α`` times the stored
vector (for a freshly built vector: α times the raw construction output; after arithmetic the
arithmetic counts: ``2 * v`` at α = 1 equals ``v`` at α = 2, and ``v.normalized()`` makes ``diff``
the same as ``absolute``); ``resid`` = the mean residual norm recorded at construction.

Positions are windows relative to the end of the prompt: ``0`` is the first generated token and
``-1`` the last prompt token. ``all`` = (-inf, inf), ``prompt`` = (-inf, 0), ``last-prompt`` =
(-1, 0), ``generated`` = (0, inf), ``last-prompt-and-generated`` = (-1, inf) (the last prompt
token and every generated one: what nnsight's ``for step in tracer.all(): out[:, -1] += v`` and
a hook on "the last token at every step" steer), ``window:S:E`` = [S, E) with either side
optional. Pads are never steered.

A batch of rows, each with its own interventions, compiles to a
:class:`~steerlab.engine.plan.SteeringPlan`: for each hook site a list of slots, each slot holding
per-row tensors, so one fused update per slot steers every row with its own setting.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from steerlab.errors import SteerlabError
from steerlab.sae.clamp import METHOD as SAE_METHOD
from steerlab.sae.model import SparseAutoencoder
from steerlab.sites import Site, parse_point
from steerlab.vectors import SteeringVector

KINDS = ("add", "ablate", "clamp", "sae_clamp")
VECTOR_KINDS = ("add", "ablate", "clamp")  # what a vector file alone can do (no SAE)
SCALES = ("absolute", "diff", "resid")
POSITION_MODES = ("all", "prompt", "last-prompt", "generated", "last-prompt-and-generated")
_INF = 1 << 40
_F32_MAX = float(torch.finfo(torch.float32).max)


def parse_hook_name(name: str) -> tuple[int | None, str]:
    """``resid_post`` -> (None, 'resid_post'); ``blocks.8.hook_mlp_out`` -> (8, 'mlp_out')."""
    return parse_point(name)


@dataclass(frozen=True)
class Window:
    """Token window ``[start, end)`` relative to the prompt end; ``None`` is unbounded."""

    start: int | None
    end: int | None

    @classmethod
    def parse(cls, spec: str) -> Window:
        table = {
            "all": cls(None, None),
            "prompt": cls(None, 0),
            "last-prompt": cls(-1, 0),
            "generated": cls(0, None),
            "last-prompt-and-generated": cls(-1, None),
        }
        if spec in table:
            return table[spec]
        parts = spec.split(":")
        if len(parts) == 3 and parts[0] == "window":
            try:
                start = int(parts[1]) if parts[1] else None
                end = int(parts[2]) if parts[2] else None
            except ValueError:
                pass
            else:
                if start is not None and end is not None and end <= start:
                    raise SteerlabError(f"empty token window {spec!r}: END must exceed START")
                return cls(start, end)
        raise SteerlabError(
            f"unknown positions {spec!r}: use all, prompt, last-prompt, generated, "
            "last-prompt-and-generated or "
            "window:START:END (relative to the prompt end; 0 = first generated token)"
        )

    @property
    def bounds(self) -> tuple[int, int]:
        return (-_INF if self.start is None else self.start, _INF if self.end is None else self.end)


@dataclass(frozen=True, eq=False)
class Intervention:
    """One steering operation at one layer. Validated on construction; fields never rewritten.

    ``source_layer`` picks which layer of ``vector`` to use (default: ``layer``), so a direction
    built at one layer can be applied at another. ``hook_point`` is any site point
    (``resid_pre``, ``attn_out``, ``resid_mid``, ``mlp_out``, ``resid_post``) or a full name
    ``blocks.L.hook_POINT`` whose layer must equal ``layer``; default: the vector's own.
    ``sae`` is the SAE of an ``sae_clamp`` (and only used there).
    """

    vector: SteeringVector
    layer: int
    kind: str = "add"
    alpha: float = 1.0
    hook_point: str | None = None
    positions: str = "all"
    scale: str = "absolute"
    source_layer: int | None = None
    sae: SparseAutoencoder | None = None

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise SteerlabError(f"unknown intervention {self.kind!r}: use one of {KINDS}")
        if self.scale not in SCALES:
            raise SteerlabError(f"unknown scale {self.scale!r}: use one of {SCALES}")
        if self.hook_point is not None:
            named, _ = parse_point(self.hook_point)
            if named is not None and named != self.layer:
                raise SteerlabError(
                    f"hook_point {self.hook_point!r} names layer {named}, but layer is {self.layer}"
                )
        if not isinstance(self.alpha, (int, float)) or not math.isfinite(self.alpha):
            raise SteerlabError(f"alpha must be a finite number, got {self.alpha!r}")
        Window.parse(self.positions)
        self.vector.direction(self.src)  # raises when the vector lacks that layer
        if self.kind == "sae_clamp":
            feature_of(self)
        elif self.sae is not None:
            raise SteerlabError(f"sae= is only used by kind 'sae_clamp', not {self.kind!r}")
        if self.scale == "resid" and self.src not in self.vector.mean_resid_norm:
            raise SteerlabError(
                f"scale 'resid' needs the mean residual norm at layer {self.src}, "
                "which this vector does not record"
            )
        size = abs(self.alpha) * self.scale_factor()
        if not size <= _F32_MAX:  # also catches inf and nan
            raise SteerlabError(
                f"alpha {self.alpha:g} with scale {self.scale!r} overflows: α·s = {size:g} is not "
                "a finite float32"
            )

    @property
    def src(self) -> int:
        return self.layer if self.source_layer is None else self.source_layer

    @property
    def point(self) -> str:
        return parse_point(self.hook_point or self.vector.hook_point)[1]

    @property
    def site(self) -> Site:
        return Site(self.layer, self.point)

    @property
    def window(self) -> Window:
        return Window.parse(self.positions)

    def scale_factor(self) -> float:
        if self.scale == "absolute":
            return 1.0
        if self.scale == "diff":
            return self.vector.norm(self.src)
        return float(self.vector.mean_resid_norm[self.src])

    def describe(self) -> str:
        if self.kind == "sae_clamp":
            return (
                f"sae_clamp@{self.site.name} feature={feature_of(self)} target={self.alpha:g} "
                f"positions={self.positions}"
            )
        return (
            f"{self.kind}@{self.site.name} α={self.alpha:g} ({self.scale}) "
            f"positions={self.positions}"
        )


def feature_of(iv: Intervention) -> int:
    """Validate an ``sae_clamp`` intervention; return its feature index."""
    sae, v = iv.sae, iv.vector
    if sae is None:
        raise SteerlabError(
            "kind 'sae_clamp' needs sae=<the SparseAutoencoder the feature belongs to>"
        )
    if iv.scale != "absolute":
        raise SteerlabError(
            f"sae_clamp takes the target activation as alpha, in the SAE's own units: use "
            f"scale='absolute', not {iv.scale!r}"
        )
    feature = v.extra.get("feature")
    if v.method != SAE_METHOD or isinstance(feature, bool) or not isinstance(feature, int):
        raise SteerlabError(
            "sae_clamp needs the feature's vector from steerlab.directions.sae(sae, feature), "
            f"got a {v.method!r} vector"
        )
    sae.check_feature(feature)
    if iv.site != sae.site:
        raise SteerlabError(
            f"{sae.describe()} reads {sae.hook_name}, but this sae_clamp is at {iv.site.name}: "
            "a feature can only be clamped where its SAE reads"
        )
    if iv.src != sae.layer:
        raise SteerlabError(f"sae_clamp uses the SAE's own layer {sae.layer}, not {iv.src}")
    if not torch.equal(v.direction(iv.src), sae.decoder_row(feature).to("cpu", torch.float32)):
        raise SteerlabError(
            f"the vector is not feature {feature}'s decoder row of {sae.describe()} (built from "
            "another SAE, or changed by arithmetic): use steerlab.directions.sae(sae, feature)"
        )
    return feature
