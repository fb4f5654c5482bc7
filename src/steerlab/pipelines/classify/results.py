"""Reading a ``steerlab classify`` run: its task (loaded once per process) and the scored rows
of the grid and generate stages."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd

from steerlab.runs.shards import stage_results

if TYPE_CHECKING:
    from steerlab.tasks.classification import ClassificationTask


@functools.lru_cache(maxsize=4)
def task_of(ref: str) -> ClassificationTask:
    from steerlab.tasks.classification import load_task

    return load_task(ref)


def grid_results(run: Path) -> pd.DataFrame:
    return stage_results(run, "grid")


def generation_results(run: Path) -> pd.DataFrame | None:
    return stage_results(run, "generate") if (run / "parts" / "generate").is_dir() else None
