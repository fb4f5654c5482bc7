"""A model named by a hub id, a local folder or a Hugging Face cache snapshot (what an nnsight
LanguageModel may report) is the same model to the foreign-vector warning; another model is
not."""

from __future__ import annotations

import warnings

import pytest
import torch

from steerlab.engine.plan import _warn_foreign, model_key, same_model
from steerlab.vectors import SteeringVector

SNAPSHOT = (
    "/root/.cache/huggingface/hub/models--HuggingFaceTB--SmolLM2-135M-Instruct/snapshots/12ab"
)


@pytest.mark.parametrize(
    "name",
    [
        "SmolLM2-135M-Instruct",
        "HuggingFaceTB/SmolLM2-135M-Instruct",
        SNAPSHOT,
        "/models/smollm2-135m-instruct/",
    ],
)
def test_ways_of_naming_one_model_agree(name: str) -> None:
    assert model_key(name) == "smollm2-135m-instruct"
    assert same_model(name, "SmolLM2-135M-Instruct")


def test_another_model_still_warns() -> None:
    assert not same_model("HuggingFaceTB/SmolLM2-360M-Instruct", SNAPSHOT)
    vec = SteeringVector(directions={0: torch.ones(4)}, model_id="SmolLM2-135M-Instruct")
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        _warn_foreign(vec, SNAPSHOT)
        _warn_foreign(vec, "gpt2-xl-test-unique")
    assert len(seen) == 1 and "gpt2-xl-test-unique" in str(seen[0].message)
