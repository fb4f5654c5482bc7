"""Validated configuration of ``steerlab behaviours``: the dataset, where vectors are read and
where they are applied, the layer x multiplier grid, the prompt shifts, open-ended generation and
the judge.

The dataset is stored as given (``core``, an absolute path or a hub file) with the sha256 of its
items, so a run directory reopened after the data changed is refused.
"""

from __future__ import annotations

import math
from typing import Any, Literal

from pydantic import Field, field_validator

from steerlab.pipelines._shared import EvalModelCfg as EvalModelCfg
from steerlab.pipelines._shared import JudgeCfg as JudgeCfg
from steerlab.pipelines._shared import ModelRunConfig

BASE = "base"
#: prompt shifts (Tan et al.): a system prompt pushing toward / against the behaviour, and the
#: two answers' option texts exchanged so the matching answer sits under the other letter
Shift = Literal["system-toward", "system-against", "swapped"]
ALL_SHIFTS: tuple[Shift, ...] = ("system-toward", "system-against", "swapped")
#: CAA's steered positions: from the last token of the chat template before the answer (the last
#: token of ``[/INST]`` in CAA's Llama 2 prompts; of the assistant header in ChatML) onward: the
#: answer's opening ``(``, and every generated token
AFTER_INSTRUCTION = "after-instruction"
DEFAULT_MULTIPLIERS = (-2.0, -1.5, -1.0, -0.5, 0.0, 0.5, 1.0, 1.5, 2.0)


class BehavioursConfig(ModelRunConfig):
    data: str  # 'core', an absolute path, or hf://datasets/OWNER/NAME/FILE.jsonl
    data_sha256: str  # of the loaded items (and descriptions), together
    behaviours: list[str] | None = None  # default: every behaviour of the data
    test_fraction: float = Field(default=0.5, gt=0.0, lt=1.0)  # JSONL data only
    split_seed: int = Field(default=0, ge=0, lt=2**63)  # JSONL data only
    layers: list[int] | None = None  # default: every layer
    hook_point: str = "resid_post"
    #: where activations are read for the vector: ``answer`` is the answer's scored token (the
    #: letter, as CAA reads it); ``answer-end`` the last token of the answer as written (``)``)
    read_position: Literal["answer", "answer-end"] = "answer"
    steer_positions: str = AFTER_INSTRUCTION  # or any position mode (all, prompt, window:S:E)
    multipliers: list[float] = Field(default_factory=lambda: list(DEFAULT_MULTIPLIERS))
    #: ``diff``: the multiplier is in units of the vector (1 adds the vector as built);
    #: ``resid``: of the mean residual norm; ``absolute``: of a unit direction
    scale: Literal["diff", "resid", "absolute"] = "diff"
    shifts: list[Shift] = Field(default_factory=lambda: list(ALL_SHIFTS))
    shift_layers: Literal["best", "all"] = "best"  # best: the layer of highest steerability
    open_ended: bool = True  # generate the open-ended items at the best layer
    open_multipliers: list[float] = Field(default_factory=lambda: [-1.0, 0.0, 1.0])
    max_new_tokens: int = Field(default=64, ge=1, le=4096)
    judge: JudgeCfg | None = None
    batch_size: int = Field(default=32, ge=1)
    shard_size: int = Field(default=2048, ge=1)
    n_boot: int = Field(default=1000, ge=100, le=100_000)

    def canonical(self) -> dict[str, Any]:
        """Without ``judge``: a finished run can be judged, or judged again by another judge
        (calls are cached by judge model and prompt)."""
        data = super().canonical()
        data.pop("judge", None)
        return data

    @field_validator("multipliers")
    @classmethod
    def _multipliers(cls, v: list[float]) -> list[float]:
        v = _grid(v)
        if len(v) < 2 or 0.0 not in v:
            raise ValueError(
                "give at least two multipliers, 0 among them (steerability is the slope over "
                "them, and 0 is the unsteered point)"
            )
        return v

    @field_validator("open_multipliers")
    @classmethod
    def _open_multipliers(cls, v: list[float]) -> list[float]:
        return _grid(v)

    @field_validator("layers")
    @classmethod
    def _layers(cls, v: list[int] | None) -> list[int] | None:
        if v is not None and (not v or len(set(v)) != len(v) or min(v) < 0):
            raise ValueError("layers must be distinct indices >= 0")
        return None if v is None else sorted(v)

    @field_validator("behaviours")
    @classmethod
    def _behaviours(cls, v: list[str] | None) -> list[str] | None:
        if v is not None and (not v or len(set(v)) != len(v) or any(not b.strip() for b in v)):
            raise ValueError("behaviours must be distinct, non-empty names")
        return v

    @field_validator("shifts")
    @classmethod
    def _shifts(cls, v: list[str]) -> list[str]:
        if len(set(v)) != len(v):
            raise ValueError("shifts must be distinct")
        return v

    def resolved_layers(self, n_layers: int) -> list[int]:
        return list(self.layers) if self.layers is not None else list(range(n_layers))


def _grid(v: list[float]) -> list[float]:
    if not v or len(set(v)) != len(v) or not all(math.isfinite(x) for x in v):
        raise ValueError("give distinct, finite multipliers")
    if max(abs(x) for x in v) > 1e6:
        raise ValueError("multipliers beyond 1e6 push every activation out of range")
    return sorted(v)
