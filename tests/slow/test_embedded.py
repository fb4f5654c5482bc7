"""The embedded SmolLM2-135M-Instruct: loads offline, formats chat prompts, answers coherently."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from typing import Any

import pytest
import torch

from steerlab.engine.generate import GenerationConfig, Row, generate
from steerlab.models import EMBEDDED_NAME, Model, load_model

pytestmark = pytest.mark.slow


def _no_network(*_args: Any, **_kwargs: Any) -> None:
    raise AssertionError("loading the embedded model tried to open a network connection")


@pytest.fixture(scope="module")
def embedded() -> Iterator[Model]:
    # a 135M model does use both cores (conftest pins one thread for the tiny models)
    threads = torch.get_num_threads()
    torch.set_num_threads(max(1, min(4, os.cpu_count() or 1)))
    try:
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(socket.socket, "connect", _no_network)
            mp.setattr(socket, "create_connection", _no_network)
            model = load_model("embedded", device="cpu")
        yield model
    finally:
        torch.set_num_threads(threads)


def test_embedded_loads_offline(embedded: Model) -> None:
    assert embedded.name == EMBEDDED_NAME
    assert embedded.n_layers == 30 and embedded.d_model == 576
    assert embedded.has_chat_template
    assert embedded.eos_token_ids


def test_embedded_chat_template(embedded: Model) -> None:
    text = embedded.format_prompt("What is the capital of France?")
    assert "<|im_start|>user" in text
    assert "What is the capital of France?" in text
    assert text.rstrip().endswith("<|im_start|>assistant")
    assert embedded.format_prompt("hi", chat=False) == "hi"


def test_embedded_greedy_answer_is_coherent(embedded: Model) -> None:
    prompt = embedded.format_prompt("What is the capital of France?")
    (res,) = generate(embedded, [Row(prompt)], GenerationConfig(max_new_tokens=20), progress=False)
    assert "Paris" in res.text, res.text
    assert res.finish_reason in ("eos", "length")
    assert 1 <= len(res.token_ids) <= 20
    assert all(lp <= 0 for lp in res.logprobs)
