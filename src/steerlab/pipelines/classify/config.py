"""Validated configuration of ``steerlab classify``: the model, the labeled task, the
layers, positions and strengths of the sweep, how the grid is scored, the sign check and which
vectors are applied negated.

The task is stored as given (a shipped name or an absolute path) with the sha256 of its config
and data files, so a run directory reopened after the task changed is refused.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from steerlab.pipelines._shared import EvalModelCfg as EvalModelCfg
from steerlab.pipelines._shared import ModelRunConfig

BASELINE = "baseline"
POOLED = "pooled"
#: How the grid is scored: ``logit`` reads the answer from the next-token logits at the last
#: prompt token (one forward pass per row); ``generate`` generates every row and parses it;
#: ``auto`` is ``generate`` for positions that select only generated tokens, else ``logit``.
MODES = ("auto", "logit", "generate")
GridMode = Literal["logit", "generate"]


def generated_only(positions: str) -> bool:
    """Whether ``positions`` selects no prompt token (``generated``, ``window:0:…``): steering
    there cannot change the logits at the last prompt token, where logit mode reads the answer.
    Raises :class:`~steerlab.errors.SteerlabError` on an unknown position mode."""
    from steerlab.interventions import Window

    return Window.parse(positions).bounds[0] >= 0


class ClassifyConfig(ModelRunConfig):
    task: str  # a shipped task name or an absolute path to its YAML
    task_sha256: str  # of the config and its data, together
    layers: list[int] | None = None  # default: the middle layer
    hook_point: str = "resid_post"
    build_position: Literal["last", "mean"] = "last"  # where activations are read for vectors
    positions: str = "last-prompt"  # where the vectors are added (default: the last prompt token)
    mode: Literal["auto", "logit", "generate"] = "auto"  # see MODES
    scale: Literal["absolute", "diff", "resid"] = "resid"
    strengths: list[float] = Field(default_factory=lambda: [0.05, 0.1, 0.2, 0.4])
    cross_group: bool = True  # every group's vector on every group, at every layer and strength
    flip_sign: bool = False  # apply -vector for every vector (after a failed sign check)
    flip_groups: list[str] = Field(default_factory=list)  # apply -vector for these only
    sign_check_strength: float | None = None  # default: the largest strength
    # per-group slices are small (all of a group's held-out examples): 4 examples moving the
    # same way is the least that counts as a verdict
    sign_check_min_examples: int = Field(default=4, ge=1)
    generate: bool = True  # logit mode: also generate (baseline, each group's best) and parse
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

    @field_validator("flip_groups")
    @classmethod
    def _flip_groups(cls, v: list[str]) -> list[str]:
        if len(set(v)) != len(v) or any(not g.strip() for g in v):
            raise ValueError("flip_groups must be distinct, non-empty vector names")
        return v

    @model_validator(mode="after")
    def _one_flip(self) -> ClassifyConfig:
        if self.flip_sign and self.flip_groups:
            raise ValueError(
                "--flip-sign already negates every vector; give it or --flip-groups, not both"
            )
        return self

    def check_strength(self) -> float:
        return self.sign_check_strength or max(self.strengths)

    def resolved_layers(self, n_layers: int) -> list[int]:
        return list(self.layers) if self.layers is not None else [n_layers // 2]

    def grid_mode(self) -> GridMode:
        """How the grid and the sign check are scored (``auto`` resolved; see :data:`MODES`)."""
        if self.mode != "auto":
            return self.mode
        return "generate" if generated_only(self.positions) else "logit"

    def flipped(self, vector: str) -> bool:
        """Whether ``vector`` (a group id or ``pooled``) is applied negated."""
        return vector != BASELINE and (self.flip_sign or vector in self.flip_groups)
