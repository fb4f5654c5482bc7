"""The reliability pipeline's run directory and work rows, on the shared run framework.

Locking, the frozen config, part files and resume come from :mod:`steerlab.runs`; this module
adds the pipeline's own paths (directions) and its work-row shape.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from steerlab.pipelines.reliability.config import PipelineConfig
from steerlab.runs.rundir import LOCK_NAME
from steerlab.runs.rundir import RunDir as _RunDir
from steerlab.runs.shards import read_part

__all__ = ["LOCK_NAME", "RunDir", "WorkRow", "read_part"]


@dataclass(frozen=True)
class WorkRow:
    """One completion to produce. ``layer == -1`` / ``intervention == "none"`` is unsteered."""

    stage: str
    split: str
    prompt_id: str
    prompt: str
    family: str
    style: str
    template: str
    layer: int
    intervention: str
    alpha: float
    direction: str
    seed: int

    @property
    def key(self) -> str:
        return (
            f"{self.stage}|{self.split}|{self.prompt_id}|{self.layer}|{self.intervention}|"
            f"{self.alpha!r}|{self.direction}|{self.seed}"
        )

    def row_seed(self) -> int:
        """Per-prompt sampling seed shared by every setting (common random numbers)."""
        h = hashlib.sha256(f"{self.seed}|{self.split}|{self.prompt_id}".encode()).hexdigest()
        return int(h[:8], 16)


class RunDir(_RunDir[PipelineConfig]):
    """``artifacts/runs/<run_id>/`` of the reliability pipeline."""

    def __init__(self, path: Path, config_type: type[PipelineConfig] = PipelineConfig) -> None:
        super().__init__(path, config_type)

    @staticmethod
    def path_for(cfg: PipelineConfig, run_id: str | None = None) -> Path:
        """Where the run directory for ``cfg`` lives (nothing is created)."""
        rid = run_id or cfg.run_id or f"{cfg.model.name.replace('/', '_')}-{cfg.digest()}"
        return Path(cfg.experiment.output_dir) / rid

    @classmethod
    def open(cls, cfg: PipelineConfig, run_id: str | None = None) -> RunDir:
        """Create the run directory for ``cfg`` or reopen it (same config only), locked for this
        process until :meth:`release`."""
        rd = cls.create(cls.path_for(cfg, run_id), cfg)
        assert isinstance(rd, RunDir)
        return rd

    @classmethod
    def existing(cls, path: Path, config_type: type[PipelineConfig] = PipelineConfig) -> RunDir:
        rd = super().existing(path, config_type)
        assert isinstance(rd, RunDir)
        return rd

    @property
    def directions(self) -> Path:
        return self.path / "directions"

    def direction_path(self, layer: int, kind: str = "main") -> Path:
        prefix = "layer" if kind == "main" else f"{kind}_layer"
        return self.directions / f"{prefix}_{layer}.safetensors"
