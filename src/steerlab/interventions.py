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
(-1, 0), ``generated`` = (0, inf), ``window:S:E`` = [S, E) with either side optional. Pads are
never steered.

A batch of rows, each with its own interventions, compiles to a :class:`SteeringPlan`: for each
hook site a list of slots, each slot holding per-row tensors, so one fused update per slot steers
every row with its own setting.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from steerlab.errors import SteerlabError
from steerlab.sae.clamp import SAEClamps, build_clamps, feature_of
from steerlab.sae.model import SparseAutoencoder
from steerlab.sites import Site, parse_point
from steerlab.vectors import SteeringVector

if TYPE_CHECKING:
    from steerlab.models import Model

KINDS = ("add", "ablate", "clamp", "sae_clamp")
VECTOR_KINDS = ("add", "ablate", "clamp")  # what a vector file alone can do (no SAE)
SCALES = ("absolute", "diff", "resid")
POSITION_MODES = ("all", "prompt", "last-prompt", "generated")
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
            f"unknown positions {spec!r}: use all, prompt, last-prompt, generated or "
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


# ----------------------------------------------------------------------------- compiled plan


@dataclass(frozen=True)
class Slot:
    """Per-row tensors for the k-th intervention of every row at one hook site.

    Shapes: ``add``/``unit`` (B, d_model) float32; ``coef``/``target`` (B,) float32;
    ``is_clamp`` (B,) bool; ``lo``/``hi`` (B,) int64 window bounds relative to the prompt end.
    Rows without a k-th intervention have zeros everywhere, which leaves them exactly unchanged.
    ``sae`` holds the rows' ``sae_clamp`` tensors (None when no row of the slot has one).
    """

    add: torch.Tensor
    unit: torch.Tensor
    coef: torch.Tensor
    target: torch.Tensor
    is_clamp: torch.Tensor
    lo: torch.Tensor
    hi: torch.Tensor
    has_proj: bool
    sae: SAEClamps | None = None

    def select(self, idx: torch.Tensor) -> Slot:
        t = {k: getattr(self, k).index_select(0, idx) for k in _SLOT_TENSORS}
        sae = None if self.sae is None else self.sae.select(idx)
        return Slot(**t, has_proj=self.has_proj, sae=sae)

    def to(self, device: torch.device) -> Slot:
        t = {k: getattr(self, k).to(device) for k in _SLOT_TENSORS}
        sae = None if self.sae is None else self.sae.to(device)
        return Slot(**t, has_proj=self.has_proj, sae=sae)

    def apply(self, h: torch.Tensor, rel: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """Return the steered residual. ``h`` (B, T, d); ``rel``/``valid`` (B, T)."""
        mask = valid & (rel >= self.lo[:, None]) & (rel < self.hi[:, None])  # (B, T)
        delta = self.add[:, None, :]  # (B, 1, d)
        if self.has_proj:
            unit = self.unit[:, None, :]  # (B, 1, d)
            proj = (h.float() * unit).sum(-1)  # (B, T)
            dproj = torch.where(
                self.is_clamp[:, None], self.target[:, None] - proj, -self.coef[:, None] * proj
            )
            delta = delta + dproj[..., None] * unit  # (B, T, d)
        if self.sae is not None:
            delta = delta + self.sae.delta(h)  # (B, T, d)
        return h + (mask[..., None] * delta).to(h.dtype)

    def apply_tokens(self, h: torch.Tensor, row: torch.Tensor, rel: torch.Tensor) -> torch.Tensor:
        """The same update on a flat token layout (continuous batching, vLLM).

        ``h`` (N, d) activations of N tokens from many requests; ``row`` (N,) the plan row of each
        token; ``rel`` (N,) its position relative to its row's prompt end. Equal to :meth:`apply`
        on the padded (B, T, d) layout, token for token.
        """
        lo, hi = self.lo.index_select(0, row), self.hi.index_select(0, row)  # (N,)
        mask = (rel >= lo) & (rel < hi)  # (N,)
        delta = self.add.index_select(0, row)  # (N, d)
        if self.has_proj:
            unit = self.unit.index_select(0, row)  # (N, d)
            proj = (h.float() * unit).sum(-1)  # (N,)
            dproj = torch.where(
                self.is_clamp.index_select(0, row),
                self.target.index_select(0, row) - proj,
                -self.coef.index_select(0, row) * proj,
            )
            delta = delta + dproj[:, None] * unit  # (N, d)
        if self.sae is not None:
            delta = delta + self.sae.delta(h, row)  # (N, d)
        return h + (mask[:, None] * delta).to(h.dtype)


_SLOT_TENSORS = ("add", "unit", "coef", "target", "is_clamp", "lo", "hi")


@dataclass(frozen=True)
class SteeringPlan:
    """Compiled per-row steering for a batch of ``batch_size`` rows (1 = broadcast to any batch)."""

    sites: dict[Site, tuple[Slot, ...]]
    batch_size: int

    def select(self, idx: torch.Tensor) -> SteeringPlan:
        """Keep rows ``idx`` (used when finished rows leave a decoding batch)."""
        if self.batch_size == 1:
            return self
        sites = {k: tuple(s.select(idx) for s in v) for k, v in self.sites.items()}
        return SteeringPlan(sites, int(idx.numel()))

    def apply_tokens(
        self, site: Site, h: torch.Tensor, row: torch.Tensor, rel: torch.Tensor
    ) -> torch.Tensor:
        """Steer a flat (N, d) token layout at ``site`` (see :meth:`Slot.apply_tokens`)."""
        if self.batch_size == 1:
            row = torch.zeros_like(row)
        for slot in self.sites.get(site, ()):
            h = slot.apply_tokens(h, row, rel)
        return h

    def to(self, device: torch.device) -> SteeringPlan:
        sites = {k: tuple(s.to(device) for s in v) for k, v in self.sites.items()}
        return SteeringPlan(sites, self.batch_size)

    @property
    def empty(self) -> bool:
        return not self.sites


def compile_plan(
    model: Model | None,
    rows: Sequence[Sequence[Intervention]],
    device: torch.device | None = None,
) -> SteeringPlan:
    """Compile one intervention list per row into per-site slot tensors on ``device``.

    With ``model`` given, sites and d_model are checked against it (clear errors), and a vector
    built on another model of the same width triggers one warning.
    """
    d_model = model.d_model if model is not None else None
    dev = device or (model.device if model is not None else torch.device("cpu"))
    per_site: dict[Site, list[list[Intervention | None]]] = {}
    for r, ivs in enumerate(rows):
        counts: dict[Site, int] = {}
        for iv in ivs:
            if model is not None:
                model.check_layer(iv.layer)
                model.backend.check_site(iv.site)
            if model is not None and iv.sae is not None:
                iv.sae.check_model(model)
            if d_model is not None:
                iv.vector.check_d_model(d_model)
            if model is not None:
                _warn_foreign(iv.vector, model.name)
            site = iv.site
            k = counts.get(site, 0)
            counts[site] = k + 1
            slots = per_site.setdefault(site, [])
            while len(slots) <= k:
                slots.append([None] * len(rows))
            slots[k][r] = iv
    sites = {
        site: tuple(_build_slot(col, dev) for col in slots)
        for site, slots in sorted(per_site.items(), key=lambda kv: kv[0].order)
    }
    return SteeringPlan(sites, len(rows))


_WARNED: set[tuple[str, str]] = set()


def _warn_foreign(vector: SteeringVector, model_name: str) -> None:
    """Warn once per (vector model, target model) when a vector crosses models."""
    src = vector.model_id
    if src in ("unknown", "", model_name) or (src, model_name) in _WARNED:
        return
    _WARNED.add((src, model_name))
    warnings.warn(
        f"applying a vector built on {src!r} to {model_name!r}: same width, but directions "
        "rarely transfer between models",
        UserWarning,
        stacklevel=4,
    )


def _build_slot(col: Sequence[Intervention | None], device: torch.device) -> Slot:
    b = len(col)
    d = next(iv.vector.d_model for iv in col if iv is not None)
    add = torch.zeros(b, d)
    unit = torch.zeros(b, d)
    coef = torch.zeros(b)
    target = torch.zeros(b)
    is_clamp = torch.zeros(b, dtype=torch.bool)
    lo = torch.zeros(b, dtype=torch.long)
    hi = torch.zeros(b, dtype=torch.long)  # empty window: rows without an intervention
    for r, iv in enumerate(col):
        if iv is None:
            continue
        lo[r], hi[r] = iv.window.bounds
        if iv.kind == "sae_clamp":
            continue  # its tensors are built by build_clamps
        if iv.kind == "add":
            if iv.alpha != 0:
                add[r] = iv.alpha * iv.scale_factor() * iv.vector.unit(iv.src)
        else:
            unit[r] = iv.vector.unit(iv.src)
            if iv.kind == "ablate":
                coef[r] = iv.alpha
            else:
                is_clamp[r] = True
                target[r] = iv.alpha * iv.scale_factor()
    return Slot(
        add=add.to(device),
        unit=unit.to(device),
        coef=coef.to(device),
        target=target.to(device),
        is_clamp=is_clamp.to(device),
        lo=lo.to(device),
        hi=hi.to(device),
        has_proj=bool(unit.abs().sum() > 0),
        sae=build_clamps(col, d, device),
    )
