"""Sharing a prompt's lower layers across steering settings (used by the continuous loop,
:mod:`steerlab.engine.continuous`).

In a sweep every prompt runs under many settings. A causal model's activations on a prompt at
the blocks *below* the first block a row's steering touches (at any prompt position) are exactly
the unsteered ones: nothing that differs between the settings has happened yet. So the engine
computes each prompt's unsteered prefill once (its **base**: the KV cache of every layer, the
residual stream entering each block where some row's steering starts, and the next-token logits),
and a row whose steering starts at block ``L`` runs only blocks ``L`` and above
(:meth:`~steerlab.backends.base.Backend.forward_from`), taking layers below ``L`` from the base. A
row whose steering touches no prompt position (``positions: generated``, or no steering) runs no
prefill at all.

The start block is conservative: a site anywhere in block ``L`` (``resid_post`` included) starts
at ``L``, so block ``L`` is always recomputed from the unsteered residual and every edit of the
row at ``L`` or above runs as in a full forward. Bases are kept only while rows of their prompt
are still waiting (the engine orders rows so a prompt's settings are adjacent).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from steerlab.backends.kvcache import KV, pad_left
from steerlab.interventions import Intervention, Window


def prompt_start(ivs: Sequence[Intervention], prompt_len: int, n_layers: int) -> int:
    """The first block whose activations on the prompt ``ivs`` can change (``n_layers``: none)."""
    start = n_layers
    for iv in ivs:
        lo, hi = Window.parse(iv.positions).bounds  # relative to the prompt end
        if max(0, prompt_len + lo) < min(prompt_len, prompt_len + hi):
            start = min(start, iv.layer)
    return start


@dataclass(frozen=True)
class Base:
    """A prompt's unsteered prefill beyond the shared prefix: ``kv`` every layer (1, H, s, D),
    ``resid[L]`` (s, d) the residual entering block ``L``, ``logits`` (V,) after its last token."""

    kv: KV
    resid: dict[int, torch.Tensor]
    logits: torch.Tensor

    @property
    def width(self) -> int:
        return int(self.kv[0][0].shape[2])


def stacked_resid(bases: Sequence[Base], start: int, width: int) -> torch.Tensor:
    """(b, width, d): each base's residual entering ``start``, left-padded with zeros."""
    return torch.stack([F.pad(b.resid[start], (0, 0, width - b.width, 0)) for b in bases])


def stacked_kv(bases: Sequence[Base], layers: int, width: int) -> KV:
    """The bases' caches of layers ``0 .. layers-1``, left-padded to ``width`` and stacked."""
    out: KV = []
    for i in range(layers):
        ks = [pad_left([b.kv[i]], width - b.width)[0] for b in bases]
        out.append((torch.cat([k for k, _ in ks]), torch.cat([v for _, v in ks])))
    return out
