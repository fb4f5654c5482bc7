"""Per-row steering compiled to tensors: a :class:`SteeringPlan` holds, for each hook site, slots
of per-row tensors, so one fused update per slot steers every row of a batch with its own
setting (the algebra of each kind is in :mod:`steerlab.interventions`).

:meth:`Slot.apply` works on the padded (B, T, d) layout the local loops use;
:meth:`Slot.apply_tokens` on a flat (N, d) token layout (an engine that schedules its own
batches, such as vLLM), token for token the same.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from steerlab.interventions import Intervention, feature_of
from steerlab.sae.clamp import SAEClamps, TopKGate
from steerlab.sites import Site
from steerlab.vectors import SteeringVector

if TYPE_CHECKING:
    from steerlab.models import Model


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
_HUB_CACHE = re.compile(r"models--[^/\\]+--([^/\\]+)")


def model_key(name: str) -> str:
    """What identifies a model across the ways it is named: a hub id (``owner/name``), a local
    folder, a Hugging Face cache snapshot (``.../models--owner--name/snapshots/<hash>``, the
    path an nnsight ``LanguageModel`` may report) all come down to ``name``, case-folded."""
    m = _HUB_CACHE.search(name)
    if m:
        return m.group(1).casefold()
    return name.replace("\\", "/").rstrip("/").split("/")[-1].casefold()


def same_model(a: str, b: str) -> bool:
    return a == b or model_key(a) == model_key(b)


def _warn_foreign(vector: SteeringVector, model_name: str) -> None:
    """Warn once per (vector model, target model) when a vector crosses models."""
    src = vector.model_id
    if src in ("unknown", "") or same_model(src, model_name) or (src, model_name) in _WARNED:
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


def build_clamps(
    col: Sequence[Intervention | None], d: int, device: torch.device
) -> SAEClamps | None:
    """The ``sae_clamp`` part of one slot column (None when no row clamps a feature)."""
    rows = [(r, iv) for r, iv in enumerate(col) if iv is not None and iv.kind == "sae_clamp"]
    if not rows:
        return None
    b = len(col)
    enc, b_in, dec = torch.zeros(b, d), torch.zeros(b, d), torch.zeros(b, d)
    b_enc, floor, target = torch.zeros(b), torch.zeros(b), torch.zeros(b)
    feature = torch.zeros(b, dtype=torch.long)
    gate = torch.full((b,), -1, dtype=torch.long)
    gate_of: dict[int, int] = {}
    gates: list[TopKGate] = []
    for r, iv in rows:
        sae = iv.sae
        assert sae is not None
        i = feature_of(iv)

        def f32(t: torch.Tensor) -> torch.Tensor:
            return t.to("cpu", torch.float32)

        # one unit of activation adds output_row; rescaling topk SAEs scale pre by ‖W_dec[i]‖
        s = float(f32(sae.W_dec[i]).norm()) if sae.rescale_acts_by_decoder_norm else 1.0
        enc[r] = f32(sae.W_enc[:, i]) * s
        b_enc[r] = f32(sae.b_enc[i]) * s
        if sae.apply_b_dec_to_input:
            b_in[r] = f32(sae.b_dec)
        if sae.threshold is not None:
            floor[r] = max(float(sae.threshold[i]), 0.0)
        dec[r] = f32(sae.output_row(i))
        target[r] = iv.alpha
        feature[r] = i
        if sae.architecture == "topk":
            if id(sae) not in gate_of:
                gate_of[id(sae)] = len(gates)
                gates.append(TopKGate.of(sae))
            gate[r] = gate_of[id(sae)]
    clamps = SAEClamps(enc, b_enc, b_in, floor, dec, target, feature, gate, tuple(gates))
    return clamps.to(device)
