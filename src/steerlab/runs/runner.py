"""One way to run every workflow: a :class:`Workflow` says what is specific to it, :func:`execute`
provides the rest identically for all.

A workflow describes itself once: its config model, where its run directory goes, how to load
the resource its work needs (a model), its stages, and inside each stage which work rows it
expands into and how a shard of them is computed and scored (a picklable callable run on a
worker). Assembly and reporting are stages like any other. The framework gives every workflow:
the run directory (config frozen, changed config refused, one process at a time), a manifest
with per-stage timings and where the work ran, shards as atomic part files written by the driver
only, resume after SIGKILL with nothing lost or duplicated, progress bars with ETA, and the
executor (this process, or Ray actors across GPUs and machines) behind one interface.

Everything that can be checked without the model is checked before the model loads, and
everything that needs only the model (layer ranges) before the run directory is created.
"""

from __future__ import annotations

import logging
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Generic

from tqdm.auto import tqdm

from steerlab._util.pathnames import check_name
from steerlab.errors import SteerlabError
from steerlab.runs.config import C
from steerlab.runs.executor import Compute, Executor, ExecutorSpec, Loader
from steerlab.runs.executors import make_executor
from steerlab.runs.rundir import RunDir
from steerlab.runs.shards import WorkItem, check_strays, plan_shards, write_part

logger = logging.getLogger(__name__)


@dataclass
class Runtime(Generic[C]):
    """What a stage works with: the config, the locked run directory, the executor and what the
    workers reported about their resource (``info``: model name, layers, device...)."""

    cfg: C
    run: RunDir[C]
    executor: Executor | None
    info: dict[str, Any] = field(default_factory=dict)
    progress: bool = True

    def _executor(self) -> Executor:
        if self.executor is None:
            raise RuntimeError("this stage was declared as needing no workers")
        return self.executor

    @property
    def local(self) -> bool:
        return self.executor is None or self.executor.local

    def call(self, fn: Callable[..., Any], *args: Any) -> Any:
        """``fn(resource, *args)`` on a worker (``fn`` and its arguments must be picklable)."""
        return self._executor().call(fn, *args)

    def pending(self, stage: str, rows: Sequence[WorkItem], shard_size: int) -> bool:
        """Whether any shard of ``rows`` still lacks its part file (to skip loading what the
        computation needs when the stage is already complete)."""
        out = self.run.parts(stage)
        return any(not (out / s.name).is_file() for s in plan_shards(stage, rows, shard_size))

    def map(self, stage: str, rows: Sequence[WorkItem], compute: Compute, shard_size: int) -> int:
        """Compute every shard of ``rows`` that has no part file yet; returns how many rows were
        computed now (0 when the stage was already complete)."""
        t0 = time.perf_counter()
        shards = plan_shards(stage, rows, shard_size)
        out = self.run.parts(stage)
        out.mkdir(parents=True, exist_ok=True)
        check_strays(out, shards)
        todo = [s for s in shards if not (out / s.name).is_file()]
        if not todo:
            return 0
        done = len(rows) - sum(len(s.rows) for s in todo)
        bar = tqdm(
            total=len(rows),
            initial=done,
            desc=stage,
            unit="row",
            disable=not self.progress,
            dynamic_ncols=True,
        )
        computed = 0
        try:
            for shard, df in self._executor().map(compute, todo, bar.update):
                if len(df) != len(shard.rows):
                    raise RuntimeError(
                        f"shard {shard.name}: {len(df)} results for {len(shard.rows)} rows"
                    )
                path = out / shard.name
                if path.is_file():  # a part file is written once
                    continue
                write_part(path, df)
                computed += len(shard.rows)
        finally:
            bar.close()
        self.run.record_stage(stage, time.perf_counter() - t0, rows=len(rows), computed=computed)
        return computed


class Workflow(ABC, Generic[C]):
    """What is specific to one workflow; see the module docstring."""

    name: ClassVar[str]
    stages: ClassVar[tuple[str, ...]]
    # stages that run on the driver alone (assembly, reports): no model is loaded for them
    driver_stages: ClassVar[frozenset[str]] = frozenset()
    config_type: type[C]
    run_type: type[RunDir[Any]] = RunDir

    @abstractmethod
    def run_path(self, cfg: C, run_id: str | None) -> Path:
        """Where the run directory for ``cfg`` lives (nothing is created)."""

    @abstractmethod
    def loader(self, cfg: C, progress: bool) -> Loader:
        """A picklable callable that makes a worker's resource (loads the model)."""

    @abstractmethod
    def run_stage(self, rt: Runtime[C], stage: str) -> None:
        """Do ``stage``: expand rows, ``rt.map`` them, write side files."""

    def check(self, cfg: C, stages: Sequence[str]) -> None:
        """Checks that need no model, before anything is loaded or written."""

    def describe(self) -> Callable[[Any], dict[str, Any]] | None:
        """A picklable ``fn(resource) -> dict`` reporting what a worker holds (``rt.info``)."""
        return None

    def check_resource(self, cfg: C, info: dict[str, Any]) -> None:
        """Checks that need the model (layer ranges), before the run directory is created."""

    def check_run_path(self, cfg: C, stages: Sequence[str], path: Path) -> None:
        """Checks of where the run directory goes (a later stage alone needs an existing one),
        before a model loads or anything is created."""
        if stages and wf_needs_existing(self, stages) and not path.is_dir():
            raise SteerlabError(
                f"{path}: no run directory yet, and stage {stages[0]!r} needs the earlier "
                f"stages' results; run them first (stages in order: {', '.join(self.stages)})"
            )

    def on_open(self, rt: Runtime[C]) -> None:
        """The run directory is ours: write the manifest."""


def wf_needs_existing(wf: Workflow[Any], stages: Sequence[str]) -> bool:
    """Whether ``stages`` start after the workflow's first stage, so they read what earlier
    stages wrote (a stage command such as ``report`` on its own)."""
    return wf.stages[0] not in stages and not set(stages) >= set(wf.stages)


def execute(
    wf: Workflow[C],
    cfg: C,
    stages: Sequence[str] | None = None,
    run_id: str | None = None,
    run_dir: Path | None = None,
    executor: ExecutorSpec | None = None,
    progress: bool = True,
) -> RunDir[C]:
    """Run ``stages`` (default all, always in the workflow's order) of ``wf`` for ``cfg``;
    resumable and idempotent: rerunning the same command after a crash finishes the work."""
    stages = tuple(wf.stages if stages is None else stages)
    unknown = [s for s in stages if s not in wf.stages]
    if unknown:
        raise SteerlabError(f"unknown stage {unknown[0]!r}: use one of {', '.join(wf.stages)}")
    spec = executor or ExecutorSpec()
    for rid, what in ((run_id, "--run-id"), (cfg.run_id, "run_id")):
        if rid is not None:
            check_name(rid, what)
    wf.check(cfg, stages)
    path = run_dir if run_dir is not None else wf.run_path(cfg, run_id)
    wf.check_run_path(cfg, stages, path)
    if run_dir is not None:
        wf.run_type.existing(
            run_dir, wf.config_type
        )  # it must be a run directory before a model loads
    RunDir.check_free(path)
    t_start = time.perf_counter()
    ex: Executor | None = None
    try:
        info: dict[str, Any] = {}
        if any(s not in wf.driver_stages for s in stages):
            ex = make_executor(spec)
            t0 = time.perf_counter()
            ex.start(wf.loader(cfg, progress and spec.kind == "local"), progress)
            describe = wf.describe()
            info = dict(ex.call(describe)) if describe is not None else {}
            info["load_s"] = time.perf_counter() - t0
            wf.check_resource(cfg, info)
        if run_dir is not None:
            run = wf.run_type.existing(run_dir, wf.config_type)
            run.reopen(cfg)
        else:
            run = wf.run_type.create(path, cfg)
        try:
            logger.info("run directory %s", run.path)
            rt = Runtime(cfg=cfg, run=run, executor=ex, info=info, progress=progress)
            wf.on_open(rt)
            for stage in wf.stages:
                if stage in stages:
                    t_stage = time.perf_counter()
                    wf.run_stage(rt, stage)
                    # summed over invocations: a resumed stage adds the time it took now
                    walls = run.read_json("manifest.json").get("stage_wall_s", {})
                    spent = time.perf_counter() - t_stage
                    walls[stage] = round(walls.get(stage, 0.0) + spent, 2)
                    run.update_json("manifest.json", stage_wall_s=walls)
            if set(stages) == set(wf.stages):
                run.update_json(
                    "manifest.json", total_wall_s=round(time.perf_counter() - t_start, 1)
                )
        finally:
            try:
                if ex is not None:  # also for a failed or interrupted invocation
                    _record_executor(run, ex)
            finally:
                run.release()
    finally:
        if ex is not None:
            ex.close()
    return run


def _record_executor(run: RunDir[Any], ex: Executor) -> None:
    """The executor's summary for this invocation: ``executor`` (the latest) and one entry per
    invocation in ``executor_runs``, so a resumed run keeps its earlier retries and workers."""
    summary = {**ex.summary(), "finished": time.strftime("%Y-%m-%dT%H:%M:%S")}
    runs = run.read_json("manifest.json").get("executor_runs", [])
    run.update_json("manifest.json", executor=summary, executor_runs=[*runs, summary])
    if not ex.local:
        logger.info("%s", format_summary(summary))


def format_summary(summary: dict[str, Any]) -> str:
    """One line: workers, shards per worker, retries (and which worker died doing what)."""
    per = ", ".join(f"{w} {n}" for w, n in summary.get("shards_per_worker", {}).items())
    line = (
        f"{summary.get('executor')}: {summary.get('workers')} workers; shards per worker: "
        f"{per or '-'}; retries: {summary.get('retries', 0)}"
    )
    retried = summary.get("retried") or []
    if retried:
        line += " (" + "; ".join(f"{r['worker']} died during {r['what']}" for r in retried) + ")"
    return line
