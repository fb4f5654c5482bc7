"""Orchestration of the reliability pipeline: open the run directory, load the model once, run
the requested stages in order, record timings in ``manifest.json``."""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from steerlab.errors import SteerlabError
from steerlab.pathnames import check_name
from steerlab.pipelines.reliability import stages as st
from steerlab.pipelines.reliability.config import STAGES, PipelineConfig, load_config
from steerlab.pipelines.reliability.store import RunDir, environment_info

if TYPE_CHECKING:
    from steerlab.models import Model

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
        rd.acquire()
        try:
            old = rd.load_config()
            if old.canonical() != cfg.canonical():
                raise SteerlabError(f"{run_dir} was created with a different config")
            rd.cleanup_temp()
        except BaseException:
            rd.release()
            raise
        return rd
    return RunDir.open(cfg, run_id)


@contextlib.contextmanager
def _transformers_bars(enabled: bool) -> Iterator[None]:
    """Switch transformers' own progress bars (weights loading) off while ``enabled`` is False,
    so ``--quiet`` means no bars at all; the previous setting is restored."""
    from transformers.utils import logging as hf_logging

    if enabled or not hf_logging.is_progress_bar_enabled():
        yield
        return
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.enable_progress_bar()


def _load(cfg: PipelineConfig, progress: bool) -> tuple[Model, float]:
    """Load the model and check what needs it (layer range) before anything is written;
    returns it with the seconds loading took."""
    from steerlab.models import load_model

    t0 = time.perf_counter()
    with _transformers_bars(progress):
        model = load_model(
            cfg.model.name,
            device=cfg.model.device,
            dtype=cfg.model.dtype,
            chat=cfg.model.chat,
            backend=cfg.model.backend,
        )
    for layer in cfg.experiment.layers or ():
        model.check_layer(layer, "experiment.layers:")
    return model, time.perf_counter() - t0


def _check_before_work(cfg: PipelineConfig) -> None:
    """What can be checked without the model, checked before any file is written."""
    from steerlab.interventions import Window

    try:
        Window.parse(cfg.experiment.positions)
    except SteerlabError as e:
        raise SteerlabError(f"experiment.positions: {e}") from None


def _context(
    cfg: PipelineConfig, run: RunDir, model: Model, seconds: float, progress: bool
) -> st.Context:
    # logged once the run directory is ours, so a process that finds it locked prints only
    # its one error line
    logger.info("model %s loaded in %.1f s", model.name, seconds)
    ctx = st.Context(cfg=cfg, run=run, model=model, progress=progress)
    manifest = run.read_json("manifest.json")
    info = environment_info(str(model.device), model.name)
    run.update_json(
        "manifest.json",
        run_id=run.path.name,
        created=manifest.get("created", time.strftime("%Y-%m-%dT%H:%M:%S")),
        environment=info,
        model={
            "spec": cfg.model.name,
            "backend": model.backend.name,
            "name": model.name,
            "n_layers": model.n_layers,
            "d_model": model.d_model,
            "dtype": str(model.dtype),
        },
        layers=ctx.layers,
        seeds={"generation": cfg.generation.seed, "alt_seed": cfg.sanity_checks.alt_seed},
        sampling={
            "temperature": cfg.generation.temperature,
            "top_p": cfg.generation.top_p,
            "max_new_tokens": cfg.generation.max_new_tokens,
        },
        config_digest=cfg.digest(),
    )
    return ctx


def report(run: RunDir) -> dict[str, Path]:
    """Assemble results.parquet from the part files, then write the human-readable outputs."""
    from steerlab.report import build_report

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
) -> RunDir:
    """Run ``stages`` (in pipeline order) for ``cfg``; resumable, idempotent."""
    unknown = [s for s in stages if s not in STAGES]
    if unknown:
        raise SteerlabError(f"unknown stage {unknown[0]!r}: use one of {', '.join(STAGES)}")
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
    _check_before_work(cfg)
    for rid, what in ((run_id, "--run-id"), (cfg.run_id, "run_id")):
        if rid is not None:
            check_name(rid, what)
    RunDir.check_free(run_dir if run_dir is not None else RunDir.path_for(cfg, run_id))
    t_start = time.perf_counter()
    loaded = _load(cfg, progress) if any(s != "report" for s in stages) else None
    run = open_run(cfg, run_id, run_dir)
    try:
        _run_locked(cfg, run, stages, loaded, progress, t_start)
    finally:
        run.release()
    return run


def _run_locked(
    cfg: PipelineConfig,
    run: RunDir,
    stages: Sequence[str],
    loaded: tuple[Model, float] | None,
    progress: bool,
    t_start: float,
) -> None:
    logger.info("run directory %s", run.path)
    ctx = _context(cfg, run, *loaded, progress) if loaded is not None else None
    for stage in STAGES:
        if stage not in stages:
            continue
        if stage == "report":
            report(run)
            continue
        assert ctx is not None
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
    if set(stages) == set(STAGES):
        run.update_json("manifest.json", total_wall_s=round(time.perf_counter() - t_start, 1))
