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

from dataclasses import dataclass, replace

import torch

from steerlab.sae.model import SparseAutoencoder

METHOD = "sae"  #: the ``method`` of vectors built by ``steerlab.directions.sae``


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
