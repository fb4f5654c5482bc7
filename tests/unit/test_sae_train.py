"""The SAE trainer (``steerlab.sae_training.train``) and its offline corpus, on the tiny random
llama.

One small SAE (d_model 64, width 128, k 8, ~4k tokens) is trained once per module into a
temporary cache; the tests check that training lowers the reconstruction loss, that the saved
directory loads through sae-lens and encodes exactly as the trainer's own SAE, that the metrics
are complete and in range, and that reruns reuse the cache instead of training.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from steerlab.engine.batch import left_pad
from steerlab.errors import SteerlabError
from steerlab.models import Model
from steerlab.sae_training import train as sae_train
from steerlab.sae_training.corpus import CorpusConfig, build_corpus, corpus_hash
from steerlab.sae_training.train import (
    CFG_FILE,
    METRIC_KEYS,
    METRICS_FILE,
    TRAINING_FILE,
    WEIGHTS_FILE,
    SAETrainConfig,
    TrainingSAE,
    TrainResult,
    train_sae,
)

SITE = "blocks.1.hook_resid_post"
SMALL = SAETrainConfig(
    expansion=2,
    k=8,
    tokens=4096,
    eval_tokens=512,
    epochs=3,
    batch_size=64,
    corpus=CorpusConfig(generations=2, gen_tokens=8),
)


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("steerlab-cache")


@pytest.fixture(autouse=True)
def _use_cache(cache: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("STEERLAB_CACHE", str(cache))
    yield


@pytest.fixture(scope="module")
def trained(tiny_llama: Model, cache: Path) -> TrainResult:
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("STEERLAB_CACHE", str(cache))
        return train_sae(tiny_llama, SITE, SMALL, progress=False)


def _held_out_acts(model: Model, result: TrainResult) -> torch.Tensor:
    """Real activations at the site for a few held-out documents (N, d_model)."""
    store = sae_train.ActivationStore(Path(result.training["activations"]))
    docs = store.heldout()[:4]
    ids, mask = left_pad([d.ids for d in docs], model.pad_token_id, model.device)
    sink: list[torch.Tensor] = []
    site = sae_train.parse_site(SITE)
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    with torch.inference_mode():
        model.backend.forward(ids, mask, pos, None, {site: [sae_train._grab(sink)]}, stop_at=site)
    return sink[-1][sae_train._used(docs, ids.shape[1])].clone()


def test_training_reduces_the_reconstruction_loss(trained: TrainResult) -> None:
    assert not trained.cached
    history = trained.training["history"]
    first, last = history[0][1], history[-1][1]
    assert last < 0.8 * first, history
    assert trained.metrics["fvu"] < first


def test_an_untrained_sae_reconstructs_worse(tiny_llama: Model, trained: TrainResult) -> None:
    x = _held_out_acts(tiny_llama, trained)
    untrained = TrainingSAE(trained.sae.d_in, trained.sae.d_sae, "topk", 8)
    with torch.no_grad():
        untrained.W_dec.copy_(torch.randn(untrained.d_sae, untrained.d_in))
        untrained.normalize_decoder()
        untrained.W_enc.copy_(untrained.W_dec.T)
        untrained.b_dec.copy_(x.mean(0))
        err_trained = float((trained.sae(x) - x).pow(2).sum())
        err_untrained = float((untrained(x) - x).pow(2).sum())
    assert err_trained < 0.8 * err_untrained


def test_saved_directory_is_sae_lens_format(trained: TrainResult) -> None:
    assert {p.name for p in trained.path.iterdir()} == {
        CFG_FILE,
        WEIGHTS_FILE,
        METRICS_FILE,
        TRAINING_FILE,
    }
    cfg = json.loads((trained.path / CFG_FILE).read_text())
    assert cfg["architecture"] == "topk" and cfg["k"] == 8
    assert cfg["d_in"] == 64 and cfg["d_sae"] == 128
    assert cfg["normalize_activations"] == "none"
    assert cfg["metadata"]["hook_name"] == SITE
    assert cfg["metadata"]["model_name"] == "tiny-llama"


def test_sae_lens_loads_it_and_encodes_like_the_trainer(
    tiny_llama: Model, trained: TrainResult
) -> None:
    sae_lens = pytest.importorskip("sae_lens")
    loaded = sae_lens.SAE.load_from_disk(str(trained.path))
    assert type(loaded).__name__ == "TopKSAE"
    x = torch.cat([_held_out_acts(tiny_llama, trained), 3 * torch.randn(32, 64)])
    with torch.no_grad():
        ours = trained.sae.encode(x)
        theirs = loaded.encode(x)
        torch.testing.assert_close(theirs, ours, rtol=0, atol=1e-6)
        torch.testing.assert_close(loaded.decode(theirs), trained.sae(x), rtol=1e-5, atol=1e-4)


def test_the_sparse_decoder_path_equals_the_dense_one(trained: TrainResult) -> None:
    x = 2 * torch.randn(50, 64)
    with torch.no_grad():
        torch.testing.assert_close(trained.sae(x), trained.sae.decode(trained.sae.encode(x)))
    assert int((trained.sae.encode(x) > 0).sum(-1).max()) <= 8


def test_metrics_are_complete_and_in_range(trained: TrainResult) -> None:
    m = trained.metrics
    assert set(METRIC_KEYS) <= set(m)
    assert json.loads((trained.path / METRICS_FILE).read_text()) == pytest.approx(m)
    assert 0.0 < m["explained_variance"] <= 1.0
    assert m["fvu"] == pytest.approx(1 - m["explained_variance"])
    assert 0 < m["l0"] <= 8
    assert 0.0 <= m["dead_fraction"] <= 1.0
    for key in ("ce_clean", "ce_reconstruction", "ce_zero_ablation"):
        assert math.isfinite(m[key]) and m[key] > 0
    assert m["ce_delta"] == pytest.approx(m["ce_reconstruction"] - m["ce_clean"])
    assert m["eval_tokens"] > 0 and m["ce_tokens"] >= m["eval_tokens"]


def test_a_rerun_reuses_the_cache_without_training(
    tiny_llama: Model, trained: TrainResult, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    def boom(*_a: object, **_k: object) -> None:
        raise AssertionError("the cached SAE was retrained")

    monkeypatch.setattr(sae_train, "train", boom)
    monkeypatch.setattr(sae_train, "collect", boom)
    again = train_sae(tiny_llama, SITE, SMALL, out=tmp_path / "copy", progress=False)
    assert again.cached and again.key == trained.key and again.path == trained.path
    assert again.metrics == pytest.approx(trained.metrics)
    assert (tmp_path / "copy" / WEIGHTS_FILE).read_bytes() == (
        trained.path / WEIGHTS_FILE
    ).read_bytes()
    torch.testing.assert_close(again.sae.W_enc, trained.sae.W_enc.cpu())


def test_new_sae_settings_reuse_the_activations(
    tiny_llama: Model, trained: TrainResult, monkeypatch: pytest.MonkeyPatch
) -> None:
    def boom(*_a: object, **_k: object) -> None:
        raise AssertionError("the activations were collected again")

    monkeypatch.setattr(sae_train, "build_corpus", boom)
    monkeypatch.setattr(sae_train, "collect", boom)
    relu = dataclasses.replace(SMALL, architecture="relu", l1=0.001)
    result = train_sae(tiny_llama, SITE, relu, progress=False)
    assert not result.cached and result.key != trained.key
    assert result.training["activations"] == trained.training["activations"]
    assert result.training["history"][-1][1] < result.training["history"][0][1]
    sae_lens = pytest.importorskip("sae_lens")
    loaded = sae_lens.SAE.load_from_disk(str(result.path))
    assert type(loaded).__name__ == "StandardSAE"
    x = 3 * torch.randn(20, 64)
    with torch.no_grad():
        torch.testing.assert_close(loaded.encode(x), result.sae.encode(x), rtol=0, atol=1e-6)


def test_bad_settings_raise_one_clear_error(tiny_llama: Model) -> None:
    with pytest.raises(SteerlabError, match="architecture"):
        SAETrainConfig(architecture="gated")
    with pytest.raises(SteerlabError, match="cannot exceed"):
        SAETrainConfig(width=4, k=8)
    with pytest.raises(SteerlabError, match="cannot exceed"):
        train_sae(tiny_llama, SITE, SAETrainConfig(expansion=1, k=65), progress=False)
    with pytest.raises(SteerlabError, match="out of range"):
        train_sae(tiny_llama, "blocks.9.hook_resid_post", SMALL, progress=False)
    with pytest.raises(SteerlabError, match="batch_size"):
        SAETrainConfig(batch_size=0)


# ----------------------------------------------------------------------------- the corpus


def test_the_corpus_draws_on_every_offline_source(tiny_llama: Model) -> None:
    cfg = CorpusConfig(generations=2, gen_tokens=4, context=64)
    corpus = build_corpus(tiny_llama, 120_000, 2_000, cfg, progress=False)
    sources = {d.source for d in corpus.train}
    assert {"prompts", "generated", "stdlib"} <= sources
    assert sum(d.n_train for d in corpus.train) >= 120_000
    assert sum(d.n_train for d in corpus.heldout) >= 2_000
    assert not {d.ids for d in corpus.heldout} & {d.ids for d in corpus.train}
    assert all(len(d.ids) <= 64 for d in corpus.train if d.source == "stdlib")
    # chat documents after the first leave out the template prefix they all share
    prompts = [d for d in corpus.train if d.source == "prompts"]
    assert prompts[0].skip == 1 and all(d.skip > 1 for d in prompts[1:])
    shared = prompts[1].skip
    assert all(d.ids[:shared] == prompts[0].ids[:shared] for d in prompts)


def test_the_corpus_hash_follows_the_settings() -> None:
    assert corpus_hash(CorpusConfig()) == corpus_hash(CorpusConfig())
    assert corpus_hash(CorpusConfig()) != corpus_hash(CorpusConfig(seed=1))


def test_too_large_a_budget_is_one_error(
    tiny_llama: Model, monkeypatch: pytest.MonkeyPatch
) -> None:
    from steerlab.sae_training import corpus

    monkeypatch.setattr(corpus, "stdlib_files", list)
    with pytest.raises(SteerlabError, match="offline corpus holds only"):
        build_corpus(tiny_llama, 10**7, 100, CorpusConfig(generations=0), progress=False)


def _store(path: Path, x: torch.Tensor) -> sae_train.ActivationStore:
    """An activation store holding ``x`` (N, d), written as the collector writes it."""
    path.mkdir()
    (path / "acts.bin").write_bytes(x.to(torch.bfloat16).view(torch.int16).numpy().tobytes())
    (path / "meta.json").write_text(json.dumps({"n": len(x), "d": x.shape[1]}))
    return sae_train.ActivationStore(path)


def test_attention_sinks_are_left_out_of_training(tmp_path: Path) -> None:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(4000, 8, generator=gen) @ torch.randn(8, 32, generator=gen)  # rank 8
    x[::500] *= 1000  # 8 sink-like tokens with huge norms
    store = _store(tmp_path / "acts", x)
    cfg = SAETrainConfig(width=64, k=8, epochs=2, batch_size=100, lr=3e-3)
    sae, stats = sae_train.train(store, cfg, torch.device("cpu"), progress=False)
    median = float(x.norm(dim=-1).median())
    assert 5 * median < stats.outlier_norm < 20 * median
    assert stats.outlier_fraction == pytest.approx(8 / 4000, rel=0.01)
    assert stats.history[-1][1] < 0.5 * stats.history[0][1]
    normal = x[1::500]
    with torch.no_grad():
        fvu = float((sae(normal) - normal).pow(2).sum() / (normal - normal.mean(0)).pow(2).sum())
    assert fvu < 0.5
