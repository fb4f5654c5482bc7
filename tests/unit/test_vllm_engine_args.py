"""What the vllm backend asks of vLLM before an engine starts (no vLLM needed): eager mode and
steerlab's worker extension always, graph modes refused, CPU workers bound to disjoint cores."""

from __future__ import annotations

import pytest
import torch

from steerlab.backends import vllm as backend
from steerlab.errors import SteerlabError


def test_engine_args_force_eager_and_the_extension() -> None:
    args = backend.engine_args("/m", torch.float32, {"max_model_len": 512, "seed": 3})
    assert args["enforce_eager"] is True and args["worker_extension_cls"] == backend.EXTENSION
    assert args["dtype"] == "float32" and args["seed"] == 3 and args["max_model_len"] == 512


@pytest.mark.parametrize(
    "extra",
    [{"enforce_eager": False}, {"compilation_config": {"mode": 3}}, {"worker_extension_cls": "x"}],
)
def test_graph_modes_and_other_extensions_are_refused(extra: dict[str, object]) -> None:
    with pytest.raises(SteerlabError):
        backend.engine_args("/m", torch.float32, extra)


def test_cpu_workers_get_disjoint_equal_core_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(backend.os, "sched_getaffinity", lambda _pid: {5, 0, 1, 2, 3, 4, 6})
    assert backend.cpu_binding(1) == "0,1,2,3,4,5,6"
    assert backend.cpu_binding(2) == "0,1,2|3,4,5"
    assert backend.cpu_binding(3) == "0,1|2,3|4,5"
    with pytest.raises(SteerlabError, match=r"8 vLLM CPU workers .* need at least 8 cores"):
        backend.cpu_binding(8)
