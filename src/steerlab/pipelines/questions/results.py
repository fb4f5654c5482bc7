"""Reading an ``eval-questions`` run directory: the answers of the generate stage."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from steerlab.errors import SteerlabError
from steerlab.runs.shards import read_part


def answers(run_path: Path) -> pd.DataFrame:
    files = sorted((run_path / "parts" / "generate").glob("part-*.parquet"))
    if not files:
        raise SteerlabError(f"{run_path}: no answers yet; run the generate stage first")
    return pd.concat([read_part(f, "generate") for f in files], ignore_index=True)
