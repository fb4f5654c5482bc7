"""Top-p sampling without sorting the vocabulary equals the sort-based definition."""

from __future__ import annotations

import pytest
import torch

from steerlab.engine.sampling import TOP_P_FIRST_K, choose, token_stats


def _reference(
    logits: torch.Tensor, temperature: float, top_p: float, u: torch.Tensor
) -> torch.Tensor:
    """Sort the whole vocabulary, keep tokens whose preceding mass is <= top_p, draw by CDF."""
    probs = torch.softmax(logits / temperature, dim=-1)
    probs, order = probs.sort(dim=-1, descending=True)
    probs = probs.masked_fill(probs.cumsum(-1) - probs > top_p, 0.0)
    cdf = probs.cumsum(-1)
    j = torch.searchsorted(cdf, (u * cdf[:, -1])[:, None]).clamp_(max=cdf.shape[-1] - 1)
    return order.gather(-1, j).squeeze(-1)


@pytest.mark.parametrize("top_p", [0.1, 0.5, 0.9, 0.999])
@pytest.mark.parametrize("spread", [0.3, 3.0, 30.0])  # flat to peaked rows
def test_top_p_equals_the_full_sort(top_p: float, spread: float) -> None:
    gen = torch.Generator().manual_seed(int(top_p * 1000 + spread))
    vocab = 5000
    logits = torch.randn(64, vocab, generator=gen) * spread
    logits[::7] = 0.0  # a uniform row: its nucleus is far wider than the first candidate count
    seeds = list(range(64))
    got = choose(logits, 0.8, top_p, [torch.Generator().manual_seed(s) for s in seeds])
    u = torch.stack([torch.rand((), generator=torch.Generator().manual_seed(s)) for s in seeds])
    want = _reference(logits, 0.8, top_p, u)
    # ties (the uniform rows) have no defined order; elsewhere the token is the same
    distinct = torch.tensor([len(set(r.tolist())) == vocab for r in logits])
    assert torch.equal(got[distinct], want[distinct])
    kept = torch.softmax(logits / 0.8, -1).gather(-1, got[:, None]).squeeze(-1) > 0
    assert bool(kept.all())
    if spread <= 0.3 and top_p >= 0.5:  # not vacuous: some rows needed more than the first k
        assert vocab * top_p > TOP_P_FIRST_K


def test_greedy_and_stats() -> None:
    logits = torch.tensor([[0.0, 2.0, 1.0], [3.0, 0.0, 0.0]])
    tok = choose(logits, 0.0, 0.9, [])
    assert tok.tolist() == [1, 0]
    lp, ent = token_stats(logits, tok)
    ref = torch.log_softmax(logits, -1)
    assert torch.allclose(lp, ref[[0, 1], [1, 0]])
    assert torch.allclose(ent, -(ref.exp() * ref).sum(-1))


def test_stats_with_masked_logits_match_the_elementwise_definition() -> None:
    """A -inf logit has probability 0 and adds nothing to the entropy (the batched dot product
    alone would give nan there)."""
    gen = torch.Generator().manual_seed(3)
    logits = torch.randn(6, 50, generator=gen) * 3
    logits[1, 7] = -torch.inf
    logits[4, :10] = -torch.inf
    tok = torch.tensor([0, 1, 2, 3, 40, 5])
    lp, ent = token_stats(logits, tok)
    ref = torch.log_softmax(logits, -1)
    want = -(ref.exp() * ref).nan_to_num(0.0).sum(-1)
    assert bool(torch.isfinite(ent).all())
    assert torch.allclose(ent, want, atol=1e-5)
    assert torch.equal(lp, ref[torch.arange(6), tok])
