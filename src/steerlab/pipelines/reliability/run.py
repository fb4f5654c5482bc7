"""The reliability pipeline as a workflow of the shared run framework (:mod:`steerlab.runs`):
its config, its loader (the model), its stages in order, and its manifest."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

from steerlab._util.pathnames import check_name
from steerlab.errors import SteerlabError
from steerlab.models.precision import precision_label
from steerlab.pipelines._shared import (
    ModelLoader,
    describe_model,
    environment_info,
    model_loader,
    resolve_matmul_dtype,
)
from steerlab.pipelines.reliability import stages as st
from steerlab.pipelines.reliability.config import STAGES, PipelineConfig, load_config
from steerlab.pipelines.reliability.store import RunDir
from steerlab.runs.executor import ExecutorSpec
from steerlab.runs.runner import Runtime, Workflow, execute

logger = logging.getLogger(__name__)

FAST_CONFIG = "fast"  # shipped configs, by name (steerlab/data/configs/)
DEFAULT_CONFIG = "default"


def resolve_config(
    config: str | Path | None, fast: bool, overrides: dict[str, Any] | None = None
) -> tuple[PipelineConfig, str]:
    """The config (``--config`` file or shipped name, else the shipped fast/default one) with
    dotted-key overrides applied; also returns what was asked for."""
    ref = config or (FAST_CONFIG if fast else DEFAULT_CONFIG)
    return load_config(ref, overrides), str(ref)


def open_run(cfg: PipelineConfig, run_id: str | None, run_dir: Path | None) -> RunDir:
    """The run directory, locked for this process (the caller releases it)."""
    for rid, what in ((run_id, "--run-id"), (cfg.run_id, "run_id")):
        if rid is not None:
            check_name(rid, what)
    if run_dir is not None:
        rd = RunDir.existing(run_dir)
        rd.reopen(cfg)
        return rd
    return RunDir.open(cfg, run_id)


def _check_prompt_files(cfg: PipelineConfig) -> None:
    """Read every prompt set the run will snapshot (empty, not UTF-8, duplicate ids, lines that
    are not objects: one line naming ``file:line``) before a model loads or a run directory is
    created. A set whose file is gone is left to the run: a resumed run reads its snapshot."""
    from steerlab._util.resources import is_shipped, local_path
    from steerlab.tasks.prompts import read_prompts

    d = cfg.data
    for src in (d.harm_train_path, d.harm_test_path, d.benign_path):
        if is_shipped("prompts", src) or Path(src).is_file():
            with local_path("prompts", src) as path:
                read_prompts(path)


class Reliability(Workflow[PipelineConfig]):
    """The steering-reliability pipeline: baseline, direction per layer, sign check, layer x
    kind x alpha sweep, sanity reruns, report."""

    name = "reliability"
    stages: ClassVar[tuple[str, ...]] = STAGES
    driver_stages: ClassVar[frozenset[str]] = frozenset({"report"})
    config_type = PipelineConfig
    run_type = RunDir

    def run_path(self, cfg: PipelineConfig, run_id: str | None) -> Path:
        return RunDir.path_for(cfg, run_id)

    def check(self, cfg: PipelineConfig, stages: Sequence[str]) -> None:
        from steerlab.interventions import Window

        sc = cfg.sanity_checks
        if sc.enabled and (
            sc.alpha not in cfg.experiment.alphas
            or sc.alpha == 0
            or "add" not in cfg.experiment.interventions
        ):
            raise SteerlabError(
                "sanity_checks.alpha must be a non-zero entry of experiment.alphas and "
                "experiment.interventions must include add (the reruns compare against the sweep)"
            )
        try:
            Window.parse(cfg.experiment.positions)
        except SteerlabError as e:
            raise SteerlabError(f"experiment.positions: {e}") from None
        if cfg.run_id is not None:
            check_name(cfg.run_id, "run_id")
        _check_prompt_files(cfg)

    def loader(self, cfg: PipelineConfig, progress: bool) -> ModelLoader:
        return model_loader(cfg.model, progress)

    def describe(self) -> Any:
        return describe_model

    def check_resource(self, cfg: PipelineConfig, info: dict[str, Any]) -> None:
        st.chosen_layers(cfg, int(info["n_layers"]))

    def on_open(self, rt: Runtime[PipelineConfig]) -> None:
        # logged once the run directory is ours, so a process that finds it locked prints only
        # its one error line
        info, cfg, run = rt.info, rt.cfg, rt.run
        if not info:
            return
        low = resolve_matmul_dtype(cfg.model.matmul_dtype, info["device"], cfg.model.backend)
        logger.info("model %s loaded in %.1f s", info["name"], info["load_s"])
        manifest = run.read_json("manifest.json")
        run.update_json(
            "manifest.json",
            run_id=run.path.name,
            created=manifest.get("created", time.strftime("%Y-%m-%dT%H:%M:%S")),
            environment=environment_info(info["device"], info["name"]),
            model={
                "spec": cfg.model.name,
                **{k: info[k] for k in ("backend", "name", "n_layers", "d_model", "dtype")},
                "matmul_dtype": low,
                "matmul_emulated": bool(info.get("matmul_emulated")),
            },
            precision=precision_label(info["dtype"], low, bool(info.get("matmul_emulated"))),
            layers=st.chosen_layers(cfg, int(info["n_layers"])),
            seeds={"generation": cfg.generation.seed, "alt_seed": cfg.sanity_checks.alt_seed},
            sampling={
                "temperature": cfg.generation.temperature,
                "top_p": cfg.generation.top_p,
                "max_new_tokens": cfg.generation.max_new_tokens,
            },
            config_digest=cfg.digest(),
        )

    def run_stage(self, rt: Runtime[PipelineConfig], stage: str) -> None:
        if stage == "report":
            assert isinstance(rt.run, RunDir)
            report(rt.run)
            return
        ctx = st.Context(rt)
        if stage == "baseline":
            st.run_baseline(ctx)
        elif stage == "build-directions":
            st.build_directions(ctx)
        elif stage == "sign-check":
            st.run_sign_check(ctx)
        elif stage == "sweep":
            st.run_sweep(ctx)
        elif stage == "sanity":
            st.run_sanity(ctx)


def report(run: RunDir) -> dict[str, Path]:
    """Assemble results.parquet from the part files, then write the human-readable outputs."""
    from steerlab.pipelines.reliability.report import build_report

    t0 = time.perf_counter()
    cfg = run.load_config()
    layers = run.read_json("manifest.json").get("layers")
    if not layers:
        raise SteerlabError(f"{run.path}: no layers recorded; run the baseline stage first")
    st.assemble_results(run, cfg, layers)
    paths = build_report(run.path)
    run.record_stage("report", time.perf_counter() - t0)
    return paths


def run_stages(
    cfg: PipelineConfig,
    stages: Sequence[str] = STAGES,
    run_id: str | None = None,
    run_dir: Path | None = None,
    progress: bool = True,
    executor: ExecutorSpec | None = None,
) -> RunDir:
    """Run ``stages`` (in pipeline order) for ``cfg``; resumable, idempotent."""
    if run_id is not None:
        check_name(run_id, "--run-id")
    run = execute(Reliability(), cfg, stages, run_id, run_dir, executor, progress)
    assert isinstance(run, RunDir)
    return run
