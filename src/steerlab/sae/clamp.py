"""The ``sae_clamp`` intervention: set one SAE feature's activation, keep the SAE's error.

With ``a`` the feature's activation on the residual ``h`` (the SAE's own encoder, see
:mod:`steerlab.sae.model`), ``t`` the target (the intervention's α) and ``d`` the feature's
output row (its decoder row; divided by its norm for topk SAEs that rescale)::

    h' = h + (t - a(h))·d

which is exactly ``decode(f with f_i := t) + (h - decode(f))``, ``f = encode(h)``: the edited
reconstruction plus the untouched reconstruction error. (Replacing ``h`` by an edited
reconstruction and adding the error back is the same thing, so editing features inside a
reconstruct-and-replace hook without this algebra has no effect.)

α = 0 switches the feature off where it fires (not the unsteered model). No activation is
negative, but a negative target is allowed: it still adds ``(t - a)·d``, pushing against the
feature. The feature's activation comes from its own encoder column, computed token by token the
same way in the padded and the flat layout, so both give identical results.

Per row of a batch, one slot holds the encoder column, biases and output row of each row's
feature as ``(B, ...)`` tensors; standard and jumprelu features need nothing else. A topk
feature is active only when it is among the token's ``k`` largest pre-activations, so its rows
also point at a :class:`TopKGate`, which holds that SAE's full encoder (rows may use different
SAEs; each distinct topk SAE in a slot is one gate).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import torch

from steerlab.errors import SteerlabError
from steerlab.sae.model import SparseAutoencoder

if TYPE_CHECKING:
    from steerlab.interventions import Intervention

METHOD = "sae"  #: the ``method`` of vectors built by ``steerlab.directions.sae``


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
    if v.method != METHOD or isinstance(feature, bool) or not isinstance(feature, int):
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


@dataclass(frozen=True)
class TopKGate:
    """One topk SAE's full encoder, shared by the rows of a slot that clamp its features.

    ``W_enc`` (d, d_sae), ``b_enc`` (d_sae,), ``b_in`` (d,) the bias subtracted from the input,
    ``scale`` (d_sae,) decoder norms (ones without rescaling); float32.
    """

    W_enc: torch.Tensor
    b_enc: torch.Tensor
    b_in: torch.Tensor
    scale: torch.Tensor
    k: int

    @classmethod
    def of(cls, sae: SparseAutoencoder) -> TopKGate:
        f = sae.to("cpu", torch.float32)
        scale = f.decoder_norms() if f.rescale_acts_by_decoder_norm else torch.ones(f.d_sae)
        b_in = f.b_dec if f.apply_b_dec_to_input else torch.zeros(f.d_in)
        assert f.k is not None
        return cls(f.W_enc, f.b_enc, b_in, scale, f.k)

    def to(self, device: torch.device) -> TopKGate:
        move = {k: getattr(self, k).to(device) for k in ("W_enc", "b_enc", "b_in", "scale")}
        return replace(self, **move)

    def kth(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Pre-activations ``(..., d_sae)`` of float32 ``x`` ``(..., d)`` and their k-th
        largest value per token ``(...,)``."""
        pre = ((x - self.b_in) @ self.W_enc + self.b_enc) * self.scale
        return pre, pre.topk(self.k, dim=-1).values[..., -1]


@dataclass(frozen=True)
class SAEClamps:
    """Per-row ``sae_clamp`` tensors of one slot (B rows; zeros on rows without one).

    ``enc`` (B, d) the feature's encoder column (times its decoder norm when rescaling);
    ``b_enc`` (B,) its bias (same factor); ``b_in`` (B, d) the bias subtracted from the input;
    ``floor`` (B,) the activation is ``pre`` where ``pre > floor`` (0 for ReLU, ``max(θ, 0)`` for
    JumpReLU), else 0; ``dec`` (B, d) the feature's output row; ``target`` (B,) α;
    ``feature`` (B,) int64 index; ``gate`` (B,) int64 index into ``gates`` (-1: not topk).
    """

    enc: torch.Tensor
    b_enc: torch.Tensor
    b_in: torch.Tensor
    floor: torch.Tensor
    dec: torch.Tensor
    target: torch.Tensor
    feature: torch.Tensor
    gate: torch.Tensor
    gates: tuple[TopKGate, ...]

    def select(self, idx: torch.Tensor) -> SAEClamps:
        t = {k: getattr(self, k).index_select(0, idx) for k in _ROW_TENSORS}
        return SAEClamps(**t, gates=self.gates)

    def to(self, device: torch.device) -> SAEClamps:
        t = {k: getattr(self, k).to(device) for k in _ROW_TENSORS}
        return SAEClamps(**t, gates=tuple(g.to(device) for g in self.gates))

    def delta(self, h: torch.Tensor, row: torch.Tensor | None = None) -> torch.Tensor:
        """``(t - a)·d`` per token, float32: ``h`` (B, T, d) with ``row`` None (padded layout),
        or ``h`` (N, d) with ``row`` (N,) each token's plan row (flat layout)."""

        def take(t: torch.Tensor) -> torch.Tensor:
            """Row tensor ``(B, ...)`` -> ``(B, 1, ...)`` (broadcast over T) or ``(N, ...)``."""
            return t[:, None] if row is None else t.index_select(0, row)

        x = h.float()
        pre = ((x - take(self.b_in)) * take(self.enc)).sum(-1) + take(self.b_enc)  # (B, T) / (N,)
        act = torch.where(pre > take(self.floor), pre, torch.zeros_like(pre))
        if self.gates:
            feature, gate = take(self.feature).expand(pre.shape), take(self.gate)
            for g, topk in enumerate(self.gates):
                full, kth = topk.kth(x)  # (..., d_sae), (...,)
                mine = full.gather(-1, feature[..., None]).squeeze(-1)
                act = torch.where((gate == g) & (mine < kth), torch.zeros_like(act), act)
        return (take(self.target) - act)[..., None] * take(self.dec)


_ROW_TENSORS = ("enc", "b_enc", "b_in", "floor", "dec", "target", "feature", "gate")


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
