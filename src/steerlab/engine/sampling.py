"""Next-token choice and per-token statistics for the decode loops.

Sampling is seeded per row: row ``r`` draws one uniform number from its own ``torch.Generator``
per step it is live, so its tokens do not depend on which rows share its batch.

Nucleus (top-p) sampling needs the tokens in descending probability order only up to the
point where the mass passed ``top_p``. Sorting the whole vocabulary (49k entries per row on the
embedded model) cost as much as the model's forward pass at batch 128, so the kept set is found
with ``topk`` over a growing candidate count: a row is settled once the mass before its k-th
candidate exceeds ``top_p`` (then no later token can be kept); unsettled rows retry with 8× more
candidates, up to the full vocabulary. The kept set, its order and the inverse-CDF draw are the
ones a full sort gives (ties aside, whose order neither method defines).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

#: first candidate count for top-p (most rows' nucleus is far smaller on instruction models)
TOP_P_FIRST_K = 64


def token_stats(logits: torch.Tensor, tok: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(logprob of tok, entropy)`` per row, both (b,), from the untempered logits (b, V)."""
    logp = torch.log_softmax(logits, dim=-1)  # (b, V)
    p = logp.exp()
    # -sum(p * logp) as one batched dot product per row: no (b, V) product to write and sum
    ent = -torch.bmm(p.unsqueeze(1), logp.unsqueeze(2)).view(-1)  # (b,)
    bad = ent.isnan()  # a -inf logit: p = 0 there, and 0 * -inf is nan; such terms are 0
    if bool(bad.any()):
        ent[bad] = -(p[bad] * logp[bad]).nan_to_num(0.0).sum(-1)
    return logp.gather(-1, tok[:, None]).squeeze(-1), ent


def choose(
    logits: torch.Tensor, temperature: float, top_p: float, gens: Sequence[torch.Generator]
) -> torch.Tensor:
    """Next token per row from ``logits`` (b, V) float32: greedy (temperature 0), or seeded
    inverse-CDF sampling at ``temperature`` within the top-``top_p`` nucleus."""
    if temperature == 0:
        return logits.argmax(-1)
    probs = torch.softmax(logits / temperature, dim=-1)  # (b, V)
    u = torch.stack([torch.rand((), generator=g) for g in gens]).to(probs.device)  # (b,)
    if top_p >= 1:
        return _draw(probs, u, None)
    out = torch.empty(probs.shape[0], dtype=torch.long, device=probs.device)
    todo = torch.arange(probs.shape[0], device=probs.device)
    k, vocab = TOP_P_FIRST_K, probs.shape[-1]
    while todo.numel():
        k = min(k, vocab)
        sub = probs if len(todo) == len(probs) else probs.index_select(0, todo)
        vals, order = sub.topk(k, dim=-1)  # (n, k) descending
        # mass before each candidate; a token is kept when that mass is <= top_p
        before = vals.cumsum(-1) - vals
        settled = (before[:, -1] > top_p) | (k == vocab)  # no token past the k-th is kept
        if bool(settled.any()):
            kept = vals.masked_fill(before > top_p, 0.0)[settled]
            pick = _draw(kept, u.index_select(0, todo)[settled], order[settled])
            out[todo[settled]] = pick
        todo = todo[~settled]
        k *= 8
    return out


def _draw(probs: torch.Tensor, u: torch.Tensor, order: torch.Tensor | None) -> torch.Tensor:
    """Inverse-CDF draw per row: the first token whose cumulative mass reaches ``u`` times the
    total; ``order`` maps candidate columns back to token ids (None: columns are token ids)."""
    cdf = probs.cumsum(-1)  # (b, k)
    j = torch.searchsorted(cdf, (u * cdf[:, -1])[:, None]).clamp_(max=cdf.shape[-1] - 1)
    j = j.squeeze(-1)
    # never land on a zero-probability token (numerical edge of the CDF)
    j = torch.where(probs.gather(-1, j[:, None]).squeeze(-1) > 0, j, probs.argmax(-1))
    return j if order is None else order.gather(-1, j[:, None]).squeeze(-1)
