"""``load_model(..., backend="transformer_lens")`` builds a ``HookedTransformer`` for models on
TransformerLens's official list, offline, from the loaded model.

The tiny random models stand in for official models by their label (``gpt2``,
``meta-llama/Llama-3.2-1B``, ...): the backend must take the architecture and sizes from the
*loaded* model's config, never from the hub (every socket connection is refused and recorded),
and the ``HookedTransformer`` must be unprocessed (no folding or centring), so its logits and
steered greedy tokens equal the Hugging Face backend's. Unlisted labels, ``prefer="bridge"`` and
architectures TransformerLens cannot convert get a ``TransformerBridge``.
"""

from __future__ import annotations

import functools
import logging
import socket
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import torch

pytest.importorskip("transformer_lens")

from transformer_lens import HookedTransformer

from steerlab.backends import transformer_lens as tl_mod
from steerlab.backends.transformer_lens import TransformerLensBackend, official_name
from steerlab.engine.generate import GenerationConfig, Row, generate
from steerlab.errors import SteerlabError
from steerlab.interventions import Intervention
from steerlab.models import Model, model_from_hf
from steerlab.models.tiny import build_tiny_model

# tiny model -> an official TransformerLens name of the same architecture
OFFICIAL = {
    "tiny-gpt2": "gpt2",
    "tiny-llama": "meta-llama/Llama-3.2-1B",
    "tiny-neox": "EleutherAI/pythia-160m",
    "tiny-qwen2": "Qwen/Qwen2-0.5B",
    "tiny-mistral": "mistralai/Mistral-7B-v0.1",
}
TEXTS = ("Hi", "Hello there", "The cat sat on a mat")


@pytest.fixture(autouse=True)
def no_network(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[Any]]:
    """Refuse (and record) every socket connection made during the test."""
    attempts: list[Any] = []

    def refuse(_sock: socket.socket, address: Any, *args: Any) -> None:
        attempts.append(address)
        raise OSError("network disabled in this test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    yield attempts
    assert attempts == [], f"the test tried to reach the network: {attempts}"


@functools.cache
def pair(kind: str) -> tuple[Model, Model]:
    """(Hugging Face-backed, transformer_lens-backed) models on one loaded tiny model, the latter
    labelled with an official TransformerLens name."""
    hf, tok = build_tiny_model(kind)
    hf = hf.eval()
    label = OFFICIAL[kind]
    ref = model_from_hf(hf, tok, label)
    tl = model_from_hf(hf, tok, label, backend="transformer_lens")
    return ref, tl


def tl_backend(model: Model) -> TransformerLensBackend:
    assert isinstance(model.backend, TransformerLensBackend)
    return model.backend


def left_padded(model: Model) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    seqs = [model.encode(t) for t in TEXTS]
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), model.pad_token_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for r, s in enumerate(seqs):
        ids[r, width - len(s) :] = torch.tensor(s)
        mask[r, width - len(s) :] = 1
    return ids, mask, (mask.cumsum(-1) - 1).clamp(min=0)


def test_official_names_and_aliases() -> None:
    assert official_name("gpt2") == "gpt2"
    assert official_name("gpt2-small") == "gpt2"
    assert official_name("pythia-160m") == "EleutherAI/pythia-160m"
    assert official_name("tiny-gpt2") is None


@pytest.mark.parametrize("kind", list(OFFICIAL))
def test_official_label_gets_unprocessed_hooked_transformer(kind: str) -> None:
    ref, tl = pair(kind)
    be = tl_backend(tl)
    assert not be.is_bridge
    assert isinstance(be.wrapped, HookedTransformer)
    assert be.wrapped_hf is None
    # sizes from the loaded (tiny) model, not from the hub model of that name
    text_cfg = ref.hf.config.get_text_config()
    assert (be.d_model, be.n_layers) == (ref.d_model, ref.n_layers)
    assert be.wrapped.cfg.d_vocab == text_cfg.vocab_size
    assert be.wrapped.cfg.normalization_type in ("LN", "RMS")  # not folded (LNPre / RMSPre)
    ids, mask, pos = left_padded(ref)
    with torch.inference_mode():
        want = ref.backend.forward(ids, mask, pos)
        got = be.forward(ids, mask, pos)
    assert got is not None and want is not None
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)


def steered_rows(model: Model, make_vector: Callable[..., Any]) -> list[Row]:
    v = make_vector(model, seed=3)
    settings: list[tuple[Intervention, ...]] = [
        (),
        (Intervention(v, 1, "add", 0.8, positions="all", scale="resid"),),  # resid_post
        (Intervention(v, 0, "add", 2.0, hook_point="attn_out", positions="prompt"),),
        (Intervention(v, 1, "add", -0.8, hook_point="mlp_out", positions="all", scale="resid"),),
        (Intervention(v, 1, "add", 0.8, hook_point="resid_mid", scale="resid"),),
    ]
    return [Row(TEXTS[i % len(TEXTS)] + "!" * i, ivs) for i, ivs in enumerate(settings)]


@pytest.mark.parametrize("kind", ("tiny-gpt2", "tiny-llama"))
def test_generate_official_hooked_matches_hf(kind: str, make_vector: Callable[..., Any]) -> None:
    ref, tl = pair(kind)
    assert not tl_backend(tl).is_bridge
    rows = steered_rows(ref, make_vector)
    cfg = GenerationConfig(max_new_tokens=6)
    want = generate(ref, rows, cfg, progress=False)
    got = generate(tl, rows, cfg, progress=False)
    assert [r.token_ids for r in got] == [r.token_ids for r in want]
    plain = generate(ref, [Row(r.prompt) for r in rows], cfg, progress=False)
    assert any(p.token_ids != w.token_ids for p, w in zip(plain, want, strict=True))
    assert tl.backend.count_hooks() == 0


def test_unlisted_label_gets_bridge() -> None:
    hf, tok = build_tiny_model("tiny-gpt2")
    model = model_from_hf(hf.eval(), tok, "tiny-gpt2", backend="transformer_lens")
    assert tl_backend(model).is_bridge


def test_prefer_forces_either(monkeypatch: pytest.MonkeyPatch) -> None:
    hf, tok = build_tiny_model("tiny-gpt2")
    hf = hf.eval()
    assert TransformerLensBackend.from_hf(hf, tok, "gpt2", prefer="bridge").is_bridge
    assert not TransformerLensBackend.from_hf(hf, tok, "my-gpt2", prefer="hooked").is_bridge
    monkeypatch.setattr(tl_mod, "PREFER", "bridge")
    assert tl_backend(model_from_hf(hf, tok, "gpt2", backend="transformer_lens")).is_bridge
    with pytest.raises(SteerlabError, match="prefer="):
        TransformerLensBackend.from_hf(hf, tok, "gpt2", prefer="folded")  # type: ignore[arg-type]


def test_unconvertible_official_model_falls_back_to_bridge(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """TransformerLens converts Gemma 2 only by hub name: the loaded model gets a bridge, with one
    info line and no traceback; forcing a HookedTransformer raises one sentence."""
    hf, tok = build_tiny_model("tiny-gemma2")
    hf = hf.eval()
    with caplog.at_level(logging.INFO, logger="steerlab.backends.transformer_lens"):
        be = TransformerLensBackend.from_hf(hf, tok, "google/gemma-2-2b")
    assert be.is_bridge
    lines = [r for r in caplog.records if r.name == "steerlab.backends.transformer_lens"]
    assert len(lines) == 1 and lines[0].levelno == logging.INFO
    assert "TransformerBridge" in lines[0].getMessage() and lines[0].exc_info is None
    with pytest.raises(SteerlabError, match="cannot build a HookedTransformer"):
        TransformerLensBackend.from_hf(hf, tok, "google/gemma-2-2b", prefer="hooked")
