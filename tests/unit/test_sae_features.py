"""SAE feature discovery: AUROC against brute force, the permutation test against exact
enumeration, ranking of planted features, dead features, and encoding prompts on tiny-llama
against activations recorded one position at a time."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from steerlab.analysis.sae_features import (
    COLUMNS,
    FEATURES_CSV,
    TOP_JSON,
    auroc,
    encode_prompts,
    feature_scores,
    permutation_p,
    write_results,
)
from steerlab.directions import record
from steerlab.errors import SteerlabError
from steerlab.models import Model
from steerlab.sae import SparseAutoencoder
from steerlab.sites import Site
from steerlab.vectors import SteeringVector


def brute_auroc(p: torch.Tensor, f: torch.Tensor) -> np.ndarray:
    """Every (pass, fail) pair: 1 when pass is larger, ½ when equal."""
    a, b = p.double().numpy(), f.double().numpy()
    out = []
    for j in range(a.shape[1]):
        gt = (a[:, j, None] > b[None, :, j]).mean()
        eq = (a[:, j, None] == b[None, :, j]).mean()
        out.append(gt + 0.5 * eq)
    return np.array(out)


def exact_p(p: torch.Tensor, f: torch.Tensor) -> np.ndarray:
    """Two-sided permutation p over every relabelling (small classes only)."""
    x = torch.cat([p, f]).double().numpy()
    n, n_p = x.shape[0], p.shape[0]
    obs = np.abs(x[:n_p].mean(0) - x[n_p:].mean(0))
    hits = np.zeros(x.shape[1])
    total = 0
    for chosen in itertools.combinations(range(n), n_p):
        mask = np.zeros(n, dtype=bool)
        mask[list(chosen)] = True
        d = np.abs(x[mask].mean(0) - x[~mask].mean(0))
        hits += d >= obs - 1e-12
        total += 1
    return hits / total


def sparse_acts(n: int, d: int, seed: int) -> torch.Tensor:
    """SAE-like activations: mostly zero, small integers (many ties)."""
    gen = torch.Generator().manual_seed(seed)
    vals = torch.randint(0, 4, (n, d), generator=gen).float()
    return vals * (torch.rand((n, d), generator=gen) < 0.4)


# ----------------------------------------------------------------------------- AUROC


@pytest.mark.parametrize(
    ("n_p", "n_f", "d", "seed"), [(7, 5, 30, 0), (1, 9, 4, 1), (23, 31, 50, 2)]
)
def test_auroc_matches_brute_force_with_ties(n_p: int, n_f: int, d: int, seed: int) -> None:
    p, f = sparse_acts(n_p, d, seed), sparse_acts(n_f, d, seed + 100)
    np.testing.assert_allclose(auroc(p, f).numpy(), brute_auroc(p, f), rtol=0, atol=1e-12)


def test_auroc_continuous_values_and_extremes() -> None:
    gen = torch.Generator().manual_seed(3)
    p, f = torch.randn(40, 6, generator=gen), torch.randn(30, 6, generator=gen)
    np.testing.assert_allclose(auroc(p, f).numpy(), brute_auroc(p, f), atol=1e-12)
    hi, lo = torch.ones(5, 1) * 2, torch.ones(4, 1)
    assert auroc(hi, lo).item() == 1.0
    assert auroc(lo, hi).item() == 0.0
    assert auroc(lo, lo).item() == 0.5  # all tied


# ----------------------------------------------------------------------------- permutation test


def test_permutation_p_approaches_the_exact_p() -> None:
    p, f = sparse_acts(5, 8, 4), sparse_acts(5, 8, 5)
    p[:, 0] += 2.0  # one feature with a real shift
    mc = permutation_p(p, f, n_perm=20_000, seed=0).numpy()
    np.testing.assert_allclose(mc, exact_p(p, f), atol=0.015)


def test_permutation_p_planted_small_null_large_and_deterministic() -> None:
    gen = torch.Generator().manual_seed(0)
    p, f = torch.rand(20, 3, generator=gen), torch.rand(20, 3, generator=gen)
    p[:, 0] += 1.0  # planted: every passing row above every failing row
    f[:, 2] = p[:, 2]  # null: the same values in both classes
    pv = permutation_p(p, f, n_perm=500, seed=7)
    assert pv[0].item() == pytest.approx(1 / 501)  # no shuffle is as extreme
    assert pv[2].item() == 1.0  # every shuffle is at least as extreme as a zero difference
    assert pv[1].item() > 0.05
    assert torch.equal(pv, permutation_p(p, f, n_perm=500, seed=7))
    assert not torch.equal(pv, permutation_p(p, f, n_perm=500, seed=8))


def test_permutation_p_does_not_depend_on_other_features() -> None:
    """The same shuffles for every feature: a feature's p is the same alone or among others."""
    p, f = sparse_acts(9, 12, 6), sparse_acts(11, 12, 7)
    together = permutation_p(p, f, n_perm=300, seed=1)
    alone = permutation_p(p[:, 3:4], f[:, 3:4], n_perm=300, seed=1)
    assert together[3].item() == alone[0].item()


# ----------------------------------------------------------------------------- scores and ranking


def planted(n_p: int = 15, n_f: int = 12, d: int = 40) -> tuple[torch.Tensor, torch.Tensor]:
    """Noise features, plus: 5 fires on passing problems, 9 on failing ones, 11 and 20 dead,
    13 fires more often on failing problems but larger on passing ones (AUROC and diff
    disagree)."""
    p, f = sparse_acts(n_p, d, 10), sparse_acts(n_f, d, 11)
    gen = torch.Generator().manual_seed(12)
    p[:, 5], f[:, 5] = 3 + torch.rand(n_p, generator=gen), torch.rand(n_f, generator=gen) * 0.5
    p[:, 9], f[:, 9] = 0.0, 2 + torch.rand(n_f, generator=gen)
    p[:, 11] = f[:, 11] = p[:, 20] = f[:, 20] = 0.0
    p[:, 13], f[:, 13] = 0.0, 1.0
    p[0, 13] = 100.0  # mean_pass > mean_fail, though most failing rows are above most passing
    return p, f


def test_ranking_picks_the_planted_features_and_skips_dead_ones() -> None:
    p, f = planted()
    s = feature_scores(p, f, n_perm=200, seed=0)
    assert (s.n_pass, s.n_fail, s.d_sae, s.n_tested, s.n_dead) == (15, 12, 40, 38, 2)
    assert 11 not in s.features and 20 not in s.features
    best_c, best_i = s.top("correct", 1)[0], s.top("incorrect", 1)[0]
    assert (best_c.feature, best_c.auroc, best_c.prefers) == (5, 1.0, "correct")
    assert (best_i.feature, best_i.auroc, best_i.prefers) == (9, 0.0, "incorrect")
    assert best_c.p_value == best_i.p_value == pytest.approx(1 / 201)
    assert best_c.p_bonferroni == pytest.approx(min(1.0, 38 / 201))
    assert best_i.frac_pass == 0.0 and best_i.frac_fail == 1.0
    assert best_c.diff == pytest.approx(float(p[:, 5].mean() - f[:, 5].mean()))
    ambiguous = s.of(13)
    assert ambiguous.auroc < 0.5 < ambiguous.diff and ambiguous.prefers == ""
    in_lists = {r.feature for d in ("correct", "incorrect") for r in s.top(d)}  # type: ignore[arg-type]
    assert 13 not in in_lists
    # every correct-preferring feature has AUROC > 0.5 and diff > 0, best first
    cs = s.top("correct")
    assert all(r.auroc > 0.5 and r.diff > 0 for r in cs)
    assert [r.auroc for r in cs] == sorted((r.auroc for r in cs), reverse=True)
    ics = s.top("incorrect")
    assert all(r.auroc < 0.5 and r.diff < 0 for r in ics)
    assert [r.auroc for r in ics] == sorted(r.auroc for r in ics)
    # the table has every live feature once, by AUROC descending
    recs = s.records()
    assert sorted(r.feature for r in recs) == s.features.tolist()
    assert recs[0].feature == 5 and recs[-1].feature == 9
    with pytest.raises(SteerlabError, match="not scored"):
        s.of(11)


def test_ties_in_auroc_are_broken_by_the_mean_difference() -> None:
    p = torch.tensor([[2.0, 5.0], [2.0, 5.0]])
    f = torch.tensor([[1.0, 1.0], [1.0, 1.0]])
    s = feature_scores(p, f, n_perm=10)
    assert [r.feature for r in s.top("correct")] == [1, 0]  # both AUROC 1; feature 1 moves more


def test_all_dead_and_bad_inputs() -> None:
    s = feature_scores(torch.zeros(3, 4), torch.zeros(2, 4), n_perm=5)
    assert (s.n_tested, s.n_dead, s.top("correct"), s.records()) == (0, 4, [], [])
    with pytest.raises(SteerlabError, match="differ in width"):
        feature_scores(torch.ones(3, 4), torch.ones(3, 5))
    with pytest.raises(SteerlabError, match="no fail activations"):
        feature_scores(torch.ones(3, 4), torch.ones(0, 4))
    with pytest.raises(SteerlabError, match="n_perm"):
        feature_scores(torch.ones(3, 4), torch.ones(3, 4), n_perm=0)
    with pytest.raises(SteerlabError, match="2-D"):
        feature_scores(torch.ones(3), torch.ones(3))
    with pytest.raises(SteerlabError, match="NaN"):
        feature_scores(torch.full((2, 2), float("nan")), torch.ones(2, 2))


# ----------------------------------------------------------------------------- encoding


def tiny_sae(d_in: int = 64, d_sae: int = 24, layer: int = 2, seed: int = 0) -> SparseAutoencoder:
    gen = torch.Generator().manual_seed(seed)
    return SparseAutoencoder(
        W_enc=torch.randn(d_in, d_sae, generator=gen) * 0.3,
        b_enc=torch.randn(d_sae, generator=gen) * 0.1,
        W_dec=torch.randn(d_sae, d_in, generator=gen),
        b_dec=torch.randn(d_in, generator=gen) * 0.1,
        site=Site(layer, "resid_post"),
        source="test-sae",
        model_name="tiny-llama",
    )


PROMPTS = [
    "def add(a, b):\n    return a + b",
    "x",
    "Write a function that sorts a list.",
    "print(1)",
    "def f(n): return [i * i for i in range(n)]",
]


def test_encode_last_and_mean_match_positions_read_one_at_a_time(tiny_llama: Model) -> None:
    sae = tiny_sae()
    last = encode_prompts(tiny_llama, sae, PROMPTS, "last", batch_size=2)
    mean = encode_prompts(tiny_llama, sae, PROMPTS, "mean", batch_size=3)
    assert last.shape == mean.shape == (len(PROMPTS), sae.d_sae)
    for i, text in enumerate(PROMPTS):
        ids = tiny_llama.encode(text)
        n = len(ids)
        rec = record(tiny_llama, [ids] * n, [[t] for t in range(n)], [2])
        per_token = sae.encode(rec.acts[2])  # (n, d_sae): each position's own activation
        torch.testing.assert_close(last[i], per_token[-1], atol=1e-5, rtol=1e-5)
        want = per_token[1:].mean(0) if n > 1 else per_token[0]
        torch.testing.assert_close(mean[i], want, atol=1e-5, rtol=1e-5)
    # the batch layout does not matter
    alone = torch.cat([encode_prompts(tiny_llama, sae, [p], "mean") for p in PROMPTS])
    torch.testing.assert_close(mean, alone, atol=1e-5, rtol=1e-5)


def test_encode_checks_its_inputs(tiny_llama: Model) -> None:
    with pytest.raises(SteerlabError, match="unknown position"):
        encode_prompts(tiny_llama, tiny_sae(), PROMPTS, "first")
    with pytest.raises(SteerlabError, match="d_model"):
        encode_prompts(tiny_llama, tiny_sae(d_in=32), PROMPTS)
    with pytest.raises(SteerlabError, match="layer 9"):
        encode_prompts(tiny_llama, tiny_sae(layer=9), PROMPTS)
    with pytest.raises(SteerlabError, match="no prompts"):
        encode_prompts(tiny_llama, tiny_sae(), [])


# ----------------------------------------------------------------------------- writing


def test_write_results(tmp_path: Path) -> None:
    p, f = planted(d=24)
    s = feature_scores(p, f, n_perm=50)
    sae = tiny_sae()
    written = write_results(
        tmp_path / "out", s, sae, position="last", top=3, export_top=2, details={"model": "m"}
    )
    top = json.loads(written.top_json.read_text())
    assert top["n_features_tested"] == s.n_tested and top["n_dead"] == s.n_dead
    assert (top["site"], top["position"], top["model"]) == ("blocks.2.hook_resid_post", "last", "m")
    assert len(top["correct"]) == 3 and top["correct"][0]["feature"] == 5
    assert top["incorrect"][0]["feature"] == 9
    lines = written.features_csv.read_text().splitlines()
    assert lines[0].split(",") == list(COLUMNS) and len(lines) == 1 + s.n_tested
    assert {p.name for p in (tmp_path / "out").iterdir()} == {
        FEATURES_CSV,
        TOP_JSON,
        *(Path(x).name for d in ("correct", "incorrect") for x in top["vectors"][d]),
    }
    for d, best in (("correct", 5), ("incorrect", 9)):
        paths = written.vectors[d]
        assert len(paths) == 2 and paths[0].name == f"{d}_f{best}.safetensors"
        vec = SteeringVector.load(paths[0], 64)
        torch.testing.assert_close(vec.directions[2], sae.W_dec[best])
        assert vec.extra["discovery"]["role"] == d
        assert vec.extra["discovery"]["feature"] == best


def test_write_results_refuses_a_file_as_out(tmp_path: Path) -> None:
    (tmp_path / "f").write_text("x")
    s = feature_scores(*planted(d=24), n_perm=5)
    with pytest.raises(SteerlabError, match="not a directory"):
        write_results(tmp_path / "f", s, tiny_sae(), position="last")
