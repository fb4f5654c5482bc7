"""Validated configuration of ``steerlab select-coefficients``.

Which model and code tasks, how prompts are built, which steering vectors (files, or a labeled
mean-diff built from the baseline's passing vs failing problems), the coefficient grid, how many
problems per coefficient, how code is executed, and the rule that suggests a coefficient.

User files are stored as absolute paths with the sha256 of their bytes, so a run directory
reopened after a vector or task file changed is refused instead of mixing two versions.
"""

from __future__ import annotations

import hashlib
import math
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from steerlab._util.strict import Strict
from steerlab.errors import SteerlabError
from steerlab.pipelines._shared import EvalModelCfg as EvalModelCfg
from steerlab.pipelines._shared import FileRef, ModelRunConfig

SEED_COEFFICIENTS = (1.0, 3.0, 10.0, 30.0, 100.0, 300.0, 1000.0)
Intent = Literal["correct", "incorrect", "unknown"]
# the statuses of steerlab.execution (kept here too so the config needs no sandbox import)
NOISE = "none"  # the vector name of the unsteered rows that measure the noise floor


class VectorRef(FileRef):
    """A steering vector file, the name it has in the results and what it is meant to do:
    ``correct`` should turn failing code into passing code, ``incorrect`` the reverse."""

    name: str
    intent: Intent = "unknown"


class FromBaselineCfg(Strict):
    """``--vector-from-baseline``: mean(activation | baseline passed) − mean(… | failed)."""

    layer: int | None = Field(default=None, ge=0)  # default: the middle layer
    hook_point: str = "resid_post"
    position: str = "last"  # where in the prompt activations are read
    min_per_class: int = Field(default=3, ge=1)


class ExecCfg(Strict):
    cpu_s: float = Field(default=10.0, gt=0)
    wall_s: float = Field(default=20.0, gt=0)
    memory_mb: int = Field(default=1024, ge=64)
    workers: int | None = Field(default=None, ge=1)  # programs at once (default: CPU count)
    unsafe: bool = False  # run without bubblewrap (refused unless asked for)


class SelectionCfg(Strict):
    """The rule: per vector, among coefficients whose syntax-valid rate is at least
    ``min_syntax_valid`` and whose mean character similarity to the baseline lies in
    ``[min_similarity, max_similarity]``, the one with the largest intended flip rate
    (ties: the smaller coefficient). ``override`` replaces the suggestion per vector."""

    min_syntax_valid: float = Field(default=0.9, ge=0, le=1)
    min_similarity: float = Field(default=0.4, ge=0, le=1)
    max_similarity: float = Field(default=1.0, ge=0, le=1)
    override: dict[str, float] = {}  # noqa: RUF012 - pydantic copies defaults

    @model_validator(mode="after")
    def _band(self) -> SelectionCfg:
        if self.min_similarity > self.max_similarity:
            raise ValueError(
                f"the similarity band [{self.min_similarity:g}, {self.max_similarity:g}] is "
                "reversed: give MIN,MAX"
            )
        return self


class CodeConfig(ModelRunConfig):
    tasks: str = "basic"  # basic | humaneval | mbpp | a path to an MBPP-format JSONL file
    tasks_sha256: str | None = None  # for a file
    max_tasks: int | None = Field(default=None, ge=1)  # the baseline's first N tasks
    prompt_mode: Literal["chat", "completion"] = "chat"
    baseline: FileRef | None = None  # reuse this baseline.parquet instead of generating one
    vectors: list[VectorRef] = []  # noqa: RUF012
    from_baseline: FromBaselineCfg | None = None
    layer: int | None = Field(default=None, ge=0)  # where vectors apply (default: theirs)
    hook_point: str | None = None  # default: the vector's own
    coefficients: list[float] = Field(default_factory=lambda: list(SEED_COEFFICIENTS))
    scale: Literal["absolute", "diff", "resid"] = "absolute"
    positions: str = "all"
    n_per_coefficient: int = Field(default=10, ge=1)
    same_problems: bool = False  # default: a new stratified sample per coefficient
    sample_seed: int = 0
    max_new_tokens: int = Field(default=500, ge=1)
    batch_size: int = Field(default=64, ge=1)
    execution: ExecCfg = ExecCfg()
    selection: SelectionCfg = SelectionCfg()
    shard_size: int = Field(default=128, ge=1)

    def canonical(self) -> dict[str, Any]:
        """Without ``selection`` (it only reads finished rows: change it and rerun the report)
        and without the number of execution workers (it does not change a result)."""
        data = super().canonical()
        data.pop("selection", None)
        data["execution"].pop("workers", None)
        return data

    @field_validator("coefficients")
    @classmethod
    def _coefs(cls, v: list[float]) -> list[float]:
        if not v:
            raise ValueError("give at least one coefficient")
        if len(set(v)) != len(v):
            raise ValueError("coefficients must be distinct")
        return v

    @field_validator("vectors")
    @classmethod
    def _names(cls, v: list[VectorRef]) -> list[VectorRef]:
        names = [r.name for r in v]
        if NOISE in names or len(set(names)) != len(names):
            raise ValueError(f"vector names must be distinct and not {NOISE!r}")
        return v

    @model_validator(mode="after")
    def _names_free(self) -> CodeConfig:
        if self.from_baseline is not None and {"correct", "incorrect"} & {
            r.name for r in self.vectors
        }:
            raise ValueError(
                "the names 'correct' and 'incorrect' are the baseline vectors': rename the files"
            )
        return self

    @model_validator(mode="after")
    def _overrides_exist(self) -> CodeConfig:
        names = self.vector_names()
        for name, value in self.selection.override.items():
            if name not in names:
                raise ValueError(
                    f"selection.override names vector {name!r}, which this run does not have "
                    f"(it has: {', '.join(names) or 'none'})"
                )
            if not any(
                math.isclose(value, c, rel_tol=1e-9, abs_tol=1e-12) for c in self.coefficients
            ):
                raise ValueError(
                    f"selection.override {name}={value:g} is not in the coefficient grid "
                    f"({', '.join(f'{c:g}' for c in self.coefficients)})"
                )
        return self

    def vector_names(self) -> list[str]:
        names = [r.name for r in self.vectors]
        if self.from_baseline is not None:
            names = ["correct", "incorrect", *names]
        return names


def vector_refs(paths: list[tuple[Path, Intent]]) -> list[VectorRef]:
    """One vector per file, named by its stem (``name-2`` for a repeated stem)."""
    out: list[VectorRef] = []
    seen: dict[str, int] = {}
    for p, intent in paths:
        if not p.is_file():
            raise SteerlabError(f"--vector: {p}: no such file")
        base = p.name.split(".")[0] or "vector"
        if base == NOISE:
            base = "vector-none"
        name, n = base, 1
        while name in seen:  # a repeated stem, or a stem like another's numbered name
            n += 1
            name = f"{base}-{n}"
        seen[name] = 1
        out.append(
            VectorRef(
                path=str(p.resolve()),
                sha256=hashlib.sha256(p.read_bytes()).hexdigest(),
                name=name,
                intent=intent,
            )
        )
    return out
