"""repeng 0.4 against steerlab on the embedded SmolLM2-135M-Instruct, same pairs, same read
position: its two PCA variants equal steerlab's (``pca_center`` = the default, ``pca_diff`` =
``center=True``), its sign rule equals ``sign="vote"``, and a GGUF written by its
``export_gguf`` steers steerlab to the tokens its ``ControlModel`` gives with the same
coefficient."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from steerlab.directions import pca
from steerlab.engine.generate import GenerationConfig, Row, generate
from steerlab.interventions import Intervention
from steerlab.models import Model, load_model
from steerlab.vectors import SteeringVector

pytestmark = pytest.mark.slow

POSITIVE = [
    "I feel wonderful today, everything is going great.",
    "What a fantastic morning, I am so happy.",
    "This is the best news I have heard all year!",
    "I love spending time with my friends.",
    "The sunshine makes me smile.",
    "I am thrilled about the trip next week.",
    "Everything worked out perfectly.",
    "My heart is full of joy.",
    "We won the game and celebrated all night.",
    "I adore this beautiful garden.",
]
NEGATIVE = [
    "I feel terrible today, everything is going wrong.",
    "What an awful morning, I am so sad.",
    "This is the worst news I have heard all year!",
    "I hate spending time alone.",
    "The rain makes me frown.",
    "I am dreading the trip next week.",
    "Everything fell apart completely.",
    "My heart is full of sorrow.",
    "We lost the game and went home quietly.",
    "I despise this ugly garden.",
]
LAYERS = list(range(1, 29))  # repeng reads layer 29 after the final norm; see tool_objects.py


@pytest.fixture(scope="module")
def repeng() -> Any:
    pytest.importorskip("sklearn")
    if not hasattr(np, "float_"):  # repeng 0.4 annotates with np.float_, which numpy 2 removed
        np.float_ = np.float64  # type: ignore[attr-defined]
    return pytest.importorskip("repeng")


@pytest.fixture(scope="module")
def embedded() -> Iterator[Model]:
    threads = torch.get_num_threads()
    torch.set_num_threads(max(1, min(4, os.cpu_count() or 1)))
    try:
        yield load_model("embedded", device="cpu")
    finally:
        torch.set_num_threads(threads)


def _cos(a: torch.Tensor, b: Any) -> float:
    return float(torch.nn.functional.cosine_similarity(a, torch.as_tensor(b), dim=0))


def test_pca_variants_and_vote_sign_equal_repengs(embedded: Model, repeng: Any) -> None:
    dataset = [
        repeng.DatasetEntry(positive=p, negative=n) for p, n in zip(POSITIVE, NEGATIVE, strict=True)
    ]
    tok = embedded.tokenizer
    ours = {
        (center, sign): pca(embedded, POSITIVE, NEGATIVE, LAYERS, center=center, sign=sign).vector
        for center in (False, True)
        for sign in ("mean", "vote")
    }
    disagree = 0
    for method, center in (("pca_center", False), ("pca_diff", True)):
        theirs = repeng.ControlVector.train(
            embedded.hf, tok, dataset, method=method, hidden_layers=LAYERS, batch_size=8
        )
        for layer in LAYERS:
            cos_vote = _cos(ours[(center, "vote")].direction(layer), theirs.directions[layer])
            cos_mean = _cos(ours[(center, "mean")].direction(layer), theirs.directions[layer])
            assert cos_vote > 0.9999, (method, layer, cos_vote)
            assert abs(cos_mean) > 0.9999, (method, layer, cos_mean)
            disagree += cos_mean < 0
    # the two sign rules are different rules: report how often they differ here
    print(f"mean and vote signs differ on {disagree} of {2 * len(LAYERS)} (method, layer) pairs")


def test_repeng_gguf_steers_like_repengs_control_model(
    embedded: Model, repeng: Any, tmp_path: Path
) -> None:
    dataset = [
        repeng.DatasetEntry(positive=p, negative=n) for p, n in zip(POSITIVE, NEGATIVE, strict=True)
    ]
    layer_ids = list(range(8, 16))
    cv = repeng.ControlVector.train(
        embedded.hf, embedded.tokenizer, dataset, hidden_layers=layer_ids, batch_size=8
    )
    cv.export_gguf(str(tmp_path / "happy.gguf"))
    v = SteeringVector.load(tmp_path / "happy.gguf", d_model=embedded.d_model)
    coeff, n = 6.0, 16
    prompts = [embedded.format_prompt(q) for q in ("Tell me about your day.", "Describe a cat.")]
    cfg = GenerationConfig(max_new_tokens=n)
    ivs = tuple(Intervention(v, layer=k, alpha=coeff, scale="diff") for k in layer_ids)
    ours = generate(embedded, [Row(p, ivs) for p in prompts], cfg)
    plain = generate(embedded, [Row(p) for p in prompts], cfg)
    control = repeng.ControlModel(load_model("embedded", device="cpu").hf, layer_ids)
    control.set_control(cv, coeff)
    for prompt, mine, unsteered in zip(prompts, ours, plain, strict=True):
        ids = torch.tensor([embedded.encode(prompt)])
        with torch.inference_mode():
            out = control.generate(input_ids=ids, max_new_tokens=n, do_sample=False)
        theirs = out[0, ids.shape[1] :].tolist()
        cut = next((i for i, t in enumerate(theirs) if t in embedded.eos_token_ids), len(theirs))
        assert list(mine.token_ids) == theirs[:cut]
        assert mine.token_ids != unsteered.token_ids
