"""A toy workflow on the run framework (no model): the framework's guarantees are tested on it,
independently of any steering workflow.

Stages: ``squares`` and ``cubes`` (sharded work on the worker's resource), ``report`` (driver
only: assembles ``results.parquet``). The worker's resource is a dict made by :class:`ToyLoader`;
``ToyCompute`` optionally sleeps per row (to be killed mid-run), writes a marker file with its
pid when it starts a shard (to find the worker to kill), and raises a SteerlabError on a chosen
row (an error of the work itself, which is never retried).
"""

from __future__ import annotations

import hashlib
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import pandas as pd
from pydantic import Field

from steerlab._util.io import atomic_path
from steerlab.errors import SteerlabError
from steerlab.runs import RunConfig, Runtime, Workflow, execute
from steerlab.runs.executor import ExecutorSpec

STAGES = ("squares", "cubes", "report")


class ToyConfig(RunConfig):
    n_rows: int = Field(default=20, ge=1)
    shard_size: int = Field(default=4, ge=1)
    offset: int = 0
    sleep_s: float = Field(default=0.0, ge=0.0)
    fail_on: int | None = None
    output_dir: str = "runs"


@dataclass(frozen=True)
class ToyRow:
    stage: str
    i: int

    @property
    def key(self) -> str:
        return f"{self.stage}|{self.i}"


@dataclass(frozen=True)
class ToyLoader:
    offset: int

    def __call__(self) -> dict[str, Any]:
        return {"offset": self.offset, "pid": os.getpid()}


def describe(resource: dict[str, Any]) -> dict[str, Any]:
    return {"offset": resource["offset"], "pid": resource["pid"]}


def _noise(key: str) -> float:
    """A deterministic per-row value (like a per-row seed's sample)."""
    return int(hashlib.sha256(key.encode()).hexdigest()[:8], 16) / 2**32


@dataclass(frozen=True)
class ToyCompute:
    power: int
    sleep_s: float = 0.0
    fail_on: int | None = None
    marker_dir: str | None = None

    def __call__(
        self, resource: dict[str, Any], rows: Sequence[ToyRow], progress: Callable[[int], object]
    ) -> pd.DataFrame:
        if self.marker_dir is not None:
            Path(self.marker_dir, f"{os.getpid()}-{rows[0].key.replace('|', '-')}").touch()
        out = []
        for r in rows:
            if self.fail_on is not None and r.i == self.fail_on:
                raise SteerlabError(f"row {r.i}: the toy work refuses this row")
            time.sleep(self.sleep_s)
            out.append(
                {
                    "stage": r.stage,
                    "i": r.i,
                    "value": r.i**self.power + resource["offset"],
                    "noise": _noise(r.key),
                }
            )
            progress(1)
        return pd.DataFrame(out)


class Toy(Workflow[ToyConfig]):
    name = "toy"
    stages: ClassVar[tuple[str, ...]] = STAGES
    driver_stages: ClassVar[frozenset[str]] = frozenset({"report"})
    config_type = ToyConfig

    def __init__(self, marker_dir: str | None = None) -> None:
        self.marker_dir = marker_dir

    def run_path(self, cfg: ToyConfig, run_id: str | None) -> Path:
        return Path(cfg.output_dir) / (run_id or cfg.run_id or f"toy-{cfg.digest()}")

    def loader(self, cfg: ToyConfig, progress: bool) -> ToyLoader:
        return ToyLoader(cfg.offset)

    def describe(self) -> Any:
        return describe

    def check(self, cfg: ToyConfig, stages: Sequence[str]) -> None:
        if cfg.n_rows > 10_000:
            raise SteerlabError("n_rows: the toy workflow stops at 10000 rows")

    def run_stage(self, rt: Runtime[ToyConfig], stage: str) -> None:
        cfg = rt.cfg
        if stage == "report":
            frames = [rt.run.load_stage(s) for s in ("squares", "cubes")]
            with atomic_path(rt.run.path / "results.parquet") as tmp:
                pd.concat(frames, ignore_index=True).to_parquet(tmp, index=False)
            return
        power = 2 if stage == "squares" else 3
        rows = [ToyRow(stage, i) for i in range(cfg.n_rows)]
        compute = ToyCompute(power, cfg.sleep_s, cfg.fail_on, self.marker_dir)
        rt.map(stage, rows, compute, cfg.shard_size)


def main(argv: list[str]) -> None:
    """``python -m tests.toy_workflow CONFIG.yaml [local|ray] [RAY_ADDRESS] [MARKER_DIR]``:
    the toy run as a process of its own (to be killed)."""
    import yaml

    cfg = ToyConfig.parse(yaml.safe_load(Path(argv[0]).read_text()), argv[0])
    kind = argv[1] if len(argv) > 1 else "local"
    address = argv[2] if len(argv) > 2 and argv[2] != "-" else None
    marker = argv[3] if len(argv) > 3 else None
    spec = ExecutorSpec("ray", address, 2) if kind == "ray" else ExecutorSpec()
    execute(Toy(marker), cfg, executor=spec, progress=False)


if __name__ == "__main__":
    main(sys.argv[1:])
