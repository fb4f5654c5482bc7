"""What the command workflows (eval-questions, select-coefficients, classify) share: a config
with an ``out`` run directory and a ``model`` section, a model loaded where the work runs, and a
manifest naming the workflow, the environment and the model."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, TypeVar

from steerlab.pipelines._shared import ModelRunConfig
from steerlab.pipelines.reliability.run import ModelLoader, describe_model
from steerlab.runs.runner import Runtime, Workflow

logger = logging.getLogger(__name__)


M = TypeVar("M", bound=ModelRunConfig)


class ModelWorkflow(Workflow[M]):
    """A workflow over one model: run directory, loader, description and manifest."""

    def run_path(self, cfg: M, run_id: str | None) -> Path:
        return Path(cfg.out)

    def loader(self, cfg: M, progress: bool) -> ModelLoader:
        m = cfg.model
        return ModelLoader(m.name, m.backend, m.device, m.dtype, m.chat, progress, m.matmul_dtype)

    def describe(self) -> Any:
        return describe_model

    def on_open(self, rt: Runtime[M]) -> None:
        from steerlab.pipelines.reliability.store import environment_info

        info = rt.info
        if not info:
            return
        logger.info("model %s loaded in %.1f s", info["name"], info["load_s"])
        rt.run.update_json(
            "manifest.json",
            workflow=self.name,
            environment=environment_info(info["device"], info["name"]),
            model={"spec": rt.cfg.model.name, **{k: v for k, v in info.items() if k != "load_s"}},
            config_digest=rt.cfg.digest(),
        )
