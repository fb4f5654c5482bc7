"""Validated configuration of ``steerlab eval-questions``: which model, which
question file, which steering configs, how many samples, how to generate, and the judge.

Files are stored as absolute paths (or shipped names) together with a hash of their content, so
a run directory reopened after a question or steering file changed is refused instead of mixing
answers to two versions of a file.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from pydantic import Field, field_validator

from steerlab._util.resources import Kind, local_path, resolve
from steerlab._util.strict import Strict
from steerlab.errors import SteerlabError
from steerlab.pipelines._shared import EvalModelCfg as EvalModelCfg
from steerlab.pipelines._shared import FileRef, ModelRunConfig
from steerlab.pipelines._shared import JudgeCfg as JudgeCfg

SEED_MIN, SEED_MAX = -(2**63), 2**63 - 1


class SteeringRef(FileRef):
    name: str  # the steering config's name in the results (the file's stem, made unique)


class EvalGenerationCfg(Strict):
    max_new_tokens: int = Field(default=200, ge=1)
    temperature: float = Field(default=1.0, ge=0.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    seed: int = Field(default=0, ge=SEED_MIN, le=SEED_MAX)
    batch_size: int = Field(default=32, ge=1)


class EvalConfig(ModelRunConfig):
    questions: FileRef
    steering: list[SteeringRef] = []  # noqa: RUF012 - pydantic copies defaults
    n_per_question: int | None = Field(default=None, ge=1)
    generation: EvalGenerationCfg = EvalGenerationCfg()
    judge: JudgeCfg | None = None
    shard_size: int = Field(default=64, ge=1)

    def canonical(self) -> dict[str, Any]:
        """Without ``judge``: the judge only scores answers already generated (its calls are
        cached by judge model and prompt), so a finished run can be judged, or judged again by
        another judge, by rerunning with other judge options; the manifest records which."""
        data = super().canonical()
        data.pop("judge", None)
        return data

    @field_validator("steering")
    @classmethod
    def _names(cls, v: list[SteeringRef]) -> list[SteeringRef]:
        names = [s.name for s in v]
        if "baseline" in names or len(set(names)) != len(names):
            raise ValueError("steering config names must be distinct and not 'baseline'")
        return v


def file_ref(kind: Kind, value: str | Path, what: str) -> tuple[str, str]:
    """``(stored path, sha256)`` of a user file or a shipped one of ``kind``."""
    try:
        stored = resolve(kind, value, None)
        with local_path(kind, stored) as path:
            data = path.read_bytes()
    except SteerlabError as e:
        raise SteerlabError(f"{what}: {e}") from None
    except OSError as e:
        raise SteerlabError(f"{what}: cannot read {value}: {e.strerror}") from None
    return str(stored), hashlib.sha256(data).hexdigest()


def steering_refs(paths: list[Path]) -> list[SteeringRef]:
    """One steering config per file, named by its stem (``name-2`` for a repeated stem)."""
    out: list[SteeringRef] = []
    seen: dict[str, int] = {}
    for p in paths:
        if not p.is_file():
            raise SteerlabError(f"--steering-config: {p}: no such file")
        base = p.stem or "steering"
        seen[base] = seen.get(base, 0) + 1
        name = base if seen[base] == 1 else f"{base}-{seen[base]}"
        if name == "baseline":
            name = "baseline-steering"
        out.append(
            SteeringRef(
                path=str(p.resolve()),
                sha256=hashlib.sha256(p.read_bytes()).hexdigest(),
                name=name,
            )
        )
    return out
