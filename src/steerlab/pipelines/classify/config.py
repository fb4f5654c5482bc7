"""Validated configuration of ``steerlab classify`` (seed 004): the model, the labeled task, the
layers, positions and strengths of the sweep, the sign check, and generation mode.

The task is stored as given (a shipped name or an absolute path) with the sha256 of its config
and data files, so a run directory reopened after the task changed is refused.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from steerlab.pipelines.model_config import ModelRunConfig

BASELINE = "baseline"
POOLED = "pooled"


class ClassifyConfig(ModelRunConfig):
    task: str  # a shipped task name or an absolute path to its YAML
    task_sha256: str  # of the config and its data, together
    layers: list[int] | None = None  # default: the middle layer
    hook_point: str = "resid_post"
    build_position: Literal["last", "mean"] = "last"  # where activations are read for vectors
    positions: str = "last-prompt"  # where the vectors are added (the seed: the last token)
    scale: Literal["absolute", "diff", "resid"] = "resid"
    strengths: list[float] = Field(default_factory=lambda: [0.05, 0.1, 0.2, 0.4])
    cross_group: bool = True  # every group's vector on every group (at the sign-check strength)
    flip_sign: bool = False  # apply -vector (after a failed sign check)
    sign_check_strength: float | None = None  # default: the largest strength
    generate: bool = True  # also generate (baseline and each group's best setting) and parse
    max_new_tokens: int = Field(default=48, ge=1)
    batch_size: int = Field(default=32, ge=1)
    shard_size: int = Field(default=256, ge=1)

    @field_validator("strengths")
    @classmethod
    def _strengths(cls, v: list[float]) -> list[float]:
        if not v:
            raise ValueError("give at least one strength")
        if len(set(v)) != len(v) or any(s <= 0 for s in v):
            raise ValueError("strengths must be distinct and positive (the sign check tests -α)")
        return v

    @field_validator("layers")
    @classmethod
    def _layers(cls, v: list[int] | None) -> list[int] | None:
        if v is not None and (not v or len(set(v)) != len(v) or min(v) < 0):
            raise ValueError("layers must be distinct indices >= 0")
        return v

    def check_strength(self) -> float:
        return self.sign_check_strength or max(self.strengths)

    def resolved_layers(self, n_layers: int) -> list[int]:
        return list(self.layers) if self.layers is not None else [n_layers // 2]
