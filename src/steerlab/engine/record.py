"""Record residual-stream activations at chosen token positions, batched and memory bounded.

Each sequence comes with the token positions to read (indices into the *unpadded* sequence);
an edit function at each site (the backend protocol's currency, so every backend records the same
way) reduces them (mean) inside the forward pass, so memory is O(batch x d_model) per layer, not
O(tokens). Padding offsets come from the attention mask. The forward pass stops after the deepest
recorded site.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from steerlab.backends.base import Backend, SiteFn
from steerlab.engine.batch import left_pad
from steerlab.engine.forward import local_backend, steered_forward
from steerlab.engine.generate import model_max_positions
from steerlab.engine.runner import runner_for
from steerlab.errors import SteerlabError
from steerlab.models import Model
from steerlab.sites import Site, parse_point


@dataclass(frozen=True)
class Recording:
    """Per layer: ``acts`` (N, d_model) float32 CPU (mean over each row's positions) and
    ``norms`` (N,) mean residual norm over those positions."""

    acts: dict[int, torch.Tensor]
    norms: dict[int, torch.Tensor]


def record(
    model: Model,
    sequences: Sequence[Sequence[int]],
    positions: Sequence[Sequence[int]],
    layers: Sequence[int],
    hook_point: str = "resid_post",
    batch_size: int = 16,
    progress: bool = False,
    desc: str = "activations",
) -> Recording:
    """Mean activation over ``positions[i]`` of ``sequences[i]`` at each layer.

    ``sequences`` are token ids; ``positions[i]`` are indices into ``sequences[i]`` (negative
    indices count from its end). ``hook_point`` is any site point (``resid_post``, ``mlp_out``,
    ...), read at ``blocks.L.hook_<point>`` for every layer L.
    """
    named, point = parse_point(hook_point)
    if named is not None and set(layers) != {named}:
        raise SteerlabError(
            f"hook point {hook_point!r} names layer {named}, but layers {sorted(set(layers))} "
            f"were asked for: give the point ({point!r}) for several layers"
        )
    if not sequences:
        raise SteerlabError("no sequences to record activations from")
    if len(sequences) != len(positions):
        raise SteerlabError("sequences and positions differ in length")
    for layer in layers:
        model.check_layer(layer)
    max_positions = model_max_positions(model)
    for i, seq in enumerate(sequences):
        if max_positions is not None and len(seq) > max_positions:
            raise SteerlabError(
                f"sequence {i}: {len(seq)} tokens > the model's {max_positions} positions; "
                "shorten the text"
            )
    sites = {layer: Site(layer, point) for layer in layers}
    for site in sites.values():
        model.backend.check_site(site)
    if not isinstance(model.backend, Backend):  # an engine of its own (vLLM): its workers read
        return _record_in_engine(model, sequences, positions, sites, batch_size)
    deepest = max(sites.values(), key=lambda s: s.order)
    backend = local_backend(model)
    dev = model.device
    acts: dict[int, list[torch.Tensor]] = {layer: [] for layer in layers}
    norms: dict[int, list[torch.Tensor]] = {layer: [] for layer in layers}
    bar = tqdm(total=len(sequences), desc=desc, unit="seq", disable=not progress)
    with torch.inference_mode():
        for start in range(0, len(sequences), batch_size):
            batch = sequences[start : start + batch_size]
            ids, mask = left_pad(batch, model.pad_token_id, torch.device("cpu"))  # (B, W)
            width = ids.shape[1]
            # (B, W) selection weights: 1/k at each row's k chosen positions
            weights = torch.zeros(len(batch), width)
            offsets = width - mask.sum(-1)  # left pads per row, read from the mask
            for r, (s, pos) in enumerate(
                zip(batch, positions[start : start + batch_size], strict=True)
            ):
                idx = [p if p >= 0 else len(s) + p for p in pos]
                if not idx or any(not 0 <= p < len(s) for p in idx):
                    raise SteerlabError(f"sequence {start + r}: positions {list(pos)} out of range")
                for p in idx:
                    weights[r, int(offsets[r]) + p] += 1.0 / len(idx)
            sink: dict[int, torch.Tensor] = {}
            ids, mask = ids.to(dev), mask.to(dev)
            edits = {site: [_grab(sink, layer)] for layer, site in sites.items()}
            steered_forward(backend, ids, mask, record=edits, stop_at=deepest)
            w = weights.to(dev)
            for layer in layers:
                h = sink[layer].float()  # (B, W, d)
                acts[layer].append(torch.einsum("bw,bwd->bd", w, h).cpu())
                norms[layer].append(torch.einsum("bw,bw->b", w, h.norm(dim=-1)).cpu())
            bar.update(len(batch))
    bar.close()
    return Recording(
        acts={k: torch.cat(v) for k, v in acts.items()},
        norms={k: torch.cat(v) for k, v in norms.items()},
    )


def _weights(seq: Sequence[int], pos: Sequence[int], i: int) -> dict[int, float]:
    """``{token index: 1/k}`` for the k chosen positions of sequence ``i`` (negative indices count
    from its end)."""
    idx = [p if p >= 0 else len(seq) + p for p in pos]
    if not idx or any(not 0 <= p < len(seq) for p in idx):
        raise SteerlabError(f"sequence {i}: positions {list(pos)} out of range")
    out: dict[int, float] = {}
    for p in idx:
        out[p] = out.get(p, 0.0) + 1.0 / len(idx)
    return out


def _record_in_engine(
    model: Model,
    sequences: Sequence[Sequence[int]],
    positions: Sequence[Sequence[int]],
    sites: dict[int, Site],
    batch_size: int,
) -> Recording:
    weights = [_weights(s, p, i) for i, (s, p) in enumerate(zip(sequences, positions, strict=True))]
    acts, norms = runner_for(model).record_means(
        sequences, weights, list(sites.values()), batch_size
    )
    return Recording(acts={k: acts[k] for k in sites}, norms={k: norms[k] for k in sites})


def _grab(sink: dict[int, torch.Tensor], layer: int) -> SiteFn:
    def fn(h: torch.Tensor) -> torch.Tensor:
        sink[layer] = h  # (B, W, d)
        return h

    return fn
