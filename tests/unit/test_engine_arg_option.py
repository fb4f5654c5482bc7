"""``--engine-arg KEY=VALUE``: values read as Python literals, malformed pairs refused, and a
config's ``model.engine_args`` only with the backend that has an engine (vllm)."""

from __future__ import annotations

import pytest
import typer
from pydantic import ValidationError

from steerlab.cli.options import engine_args
from steerlab.pipelines._shared import EvalModelCfg, model_loader


def test_values_are_literals_or_text() -> None:
    got = engine_args(
        [
            "tensor_parallel_size=2",
            "gpu_memory_utilization=0.85",
            "enable_prefix_caching=False",
            "quantization=awq",
            "compilation_config={'mode': 0}",
            " seed = 3",
        ]
    )
    assert got == {
        "tensor_parallel_size": 2,
        "gpu_memory_utilization": 0.85,
        "enable_prefix_caching": False,
        "quantization": "awq",
        "compilation_config": {"mode": 0},
        "seed": 3,
    }
    assert engine_args(None) == {} and engine_args([]) == {}


@pytest.mark.parametrize("bad", ["tensor_parallel_size", "=2", "two words=1"])
def test_malformed_pairs_are_refused(bad: str) -> None:
    with pytest.raises(typer.BadParameter, match="KEY=VALUE"):
        engine_args([bad])


def test_engine_args_need_the_vllm_backend() -> None:
    with pytest.raises(ValidationError, match="are for backend vllm, not hf"):
        EvalModelCfg(name="tiny-llama", engine_args={"tensor_parallel_size": 2})
    cfg = EvalModelCfg(name="m", backend="vllm", engine_args={"tensor_parallel_size": 2})
    assert model_loader(cfg, progress=False).engine_args == (("tensor_parallel_size", 2),)
