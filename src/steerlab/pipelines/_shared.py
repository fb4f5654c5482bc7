"""The config shared by the command workflows: a run directory ``out`` and a ``model``."""

from __future__ import annotations

from typing import Literal

from steerlab.runs.config import RunConfig, Strict


class EvalModelCfg(Strict):
    name: str = "embedded"
    backend: Literal["hf", "transformer_lens", "nnsight"] = "hf"
    device: str | None = None
    dtype: str | None = None
    #: opt-in CPU speed mode: linear layers multiply in bf16, residual/steering stay in dtype
    matmul_dtype: Literal["bf16"] | None = None
    chat: bool = True


class ModelRunConfig(RunConfig):
    """A config whose run directory is ``out`` and whose model is ``model``."""

    out: str
    model: EvalModelCfg = EvalModelCfg()
