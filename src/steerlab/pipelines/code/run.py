"""``steerlab select-coefficients`` as a workflow of the run framework.

Stages:

- ``baseline``: every task at temperature 0, unsteered; the code is extracted and executed in
  the sandbox; ``baseline.parquet`` (task id, prompt, code, status, complexity). Reused when
  present, never regenerated; ``--baseline FILE`` reuses one from another run.
- ``vectors``: the steering vectors: the given files, and with ``--vector-from-baseline`` a
  labeled mean-diff between the prompts whose baseline passed and failed (``correct``) and its
  negation (``incorrect``), saved under ``vectors/``.
- ``grid``: for every coefficient a stratified (by cyclomatic complexity) sample of problems,
  steered by every vector at all positions, plus the same problems unsteered in another batch
  layout (the noise floor); all rows in shared batches; each row executed in the sandbox.
- ``report``: flips against the baseline, drift, the suggested coefficients and the outputs.
"""

from __future__ import annotations

import functools
import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import pandas as pd

from steerlab._util.io import atomic_write_text
from steerlab.errors import SteerlabError
from steerlab.pipelines._shared import ModelWorkflow, describe_model
from steerlab.pipelines.code.config import NOISE, CodeConfig
from steerlab.pipelines.code.results import (
    baseline_path,
    check_baseline_format,
    load_baseline,
    write_baseline,
)
from steerlab.runs.runner import Runtime
from steerlab.runs.shards import stage_results

if TYPE_CHECKING:
    from steerlab.models import Model
    from steerlab.tasks.code import CodeTask
    from steerlab.vectors import SteeringVector

logger = logging.getLogger(__name__)
STAGES = ("baseline", "vectors", "grid", "report")
BASELINE_COLUMNS = ("task_id", "prompt", "code", "status", "complexity")


@dataclass(frozen=True)
class CRow:
    """One generation: a task under one vector and coefficient (``vector`` empty: baseline)."""

    task_id: str
    vector: str = ""
    coefficient: float = 0.0
    prompt: str | None = None  # grid rows reuse the baseline's prompt

    @property
    def key(self) -> str:
        if not self.vector:
            return self.task_id
        return f"{self.vector}|{self.coefficient:g}|{self.task_id}"


@dataclass(frozen=True)
class Applied:
    """A vector and where it is applied (picklable: it goes to the workers)."""

    vector: SteeringVector
    layer: int
    hook_point: str | None
    source_layer: int | None = None  # the vector's layer used, when it lacks ``layer``


@functools.lru_cache(maxsize=4)
def _tasks(spec: str) -> dict[str, CodeTask]:
    from steerlab.tasks.code import load_code_tasks

    return {t.task_id: t for t in load_code_tasks(spec)}


def task_list(cfg: CodeConfig) -> list[CodeTask]:
    tasks = list(_tasks(cfg.tasks).values())
    return tasks[: cfg.max_tasks] if cfg.max_tasks is not None else tasks


@functools.lru_cache(maxsize=2)
def _mode(unsafe: bool) -> str:
    from steerlab.execution import sandbox_mode

    return sandbox_mode(unsafe)


@dataclass(frozen=True)
class Generate:
    """Runs on a worker: generate a shard's code greedily, extract it and execute it in the
    sandbox. Generation and execution times are kept apart (per row: the shard's time divided
    evenly)."""

    cfg: CodeConfig
    applied: dict[str, Applied] = field(default_factory=dict)

    def interventions(self, row: CRow) -> tuple[Any, ...]:
        from steerlab.interventions import Intervention

        if not row.vector or row.vector == NOISE:
            return ()
        a = self.applied[row.vector]
        iv = Intervention(
            a.vector,
            a.layer,
            kind="add",
            alpha=row.coefficient,
            hook_point=a.hook_point,
            positions=self.cfg.positions,
            scale=self.cfg.scale,
            source_layer=a.source_layer,
        )
        return (iv,)

    def __call__(
        self, model: Model, rows: Sequence[CRow], progress: Callable[[int], object]
    ) -> pd.DataFrame:
        from steerlab.engine.generate import GenerationConfig, Row, generate
        from steerlab.execution import Limits, run_programs
        from steerlab.tasks.code import build_prompt, extract_code, syntax_ok

        cfg = self.cfg
        tasks = _tasks(cfg.tasks)
        mode = _mode(cfg.execution.unsafe)

        def chat(text: str) -> str:
            return model.format_prompt(text, chat=True)

        prompts = [
            r.prompt
            if r.prompt is not None
            else build_prompt(tasks[r.task_id], cfg.prompt_mode, chat if cfg.model.chat else None)
            for r in rows
        ]
        gen = GenerationConfig(
            max_new_tokens=cfg.max_new_tokens, temperature=0.0, batch_size=cfg.batch_size
        )
        t0 = time.perf_counter()
        reqs = [Row(p, self.interventions(r)) for p, r in zip(prompts, rows, strict=True)]
        results = generate(model, reqs, gen, progress=False, on_rows=progress)
        gen_s = time.perf_counter() - t0
        codes = [
            extract_code(res.text, tasks[r.task_id], cfg.prompt_mode, prompt=p)
            for res, r, p in zip(results, rows, prompts, strict=True)
        ]
        e = cfg.execution
        limits = Limits(cpu_s=e.cpu_s, wall_s=e.wall_s, memory_mb=e.memory_mb)
        t1 = time.perf_counter()
        runs = run_programs(
            [tasks[r.task_id].program(c) for r, c in zip(rows, codes, strict=True)],
            limits,
            mode,
            workers=e.workers,
        )
        exec_s = time.perf_counter() - t1
        n = len(rows)
        return pd.DataFrame(
            {
                "task_id": [r.task_id for r in rows],
                "vector": [r.vector for r in rows],
                "coefficient": [float(r.coefficient) for r in rows],
                "complexity": [tasks[r.task_id].complexity for r in rows],
                "prompt": prompts,
                "output": [res.text for res in results],
                "code": codes,
                "syntax_ok": [syntax_ok(c) for c in codes],
                "status": [x.status for x in runs],
                "detail": [x.detail for x in runs],
                "program_s": [x.wall_s for x in runs],
                "n_tokens": [len(res.token_ids) for res in results],
                "finish_reason": [res.finish_reason for res in results],
                "gen_s": [gen_s / n] * n,
                "exec_s": [exec_s / n] * n,
                "sandbox": [mode] * n,
            }
        )


def _build_from_baseline(
    model: Model, passed: list[str], failed: list[str], layer: int, hook_point: str, position: str
) -> SteeringVector:
    """Runs on a worker: mean(act | baseline passed) − mean(act | failed) at ``layer``."""
    from steerlab.directions import labeled

    res = labeled(
        model, passed, failed, [layer], hook_point=hook_point, position=position, chat=False
    )
    return res.vector


@dataclass(frozen=True)
class Describe:
    """Runs on a worker: checks that every task's prompt and the token budget fit the model's
    positions and that the model has the sites vectors are read and applied at (before the run
    directory exists), then describes the model."""

    cfg: CodeConfig
    points: tuple[str, ...] = ()  # site points vectors are read or applied at

    def __call__(self, model: Model) -> dict[str, Any]:
        from steerlab.engine.generate import check_fits
        from steerlab.sites import Site
        from steerlab.tasks.code import build_prompt

        for point in self.points:  # resid_mid on a parallel-residual block, say
            model.backend.check_site(Site(0, point))

        def chat(text: str) -> str:
            return model.format_prompt(text, chat=True)

        fmt = chat if self.cfg.model.chat else None
        for task in task_list(self.cfg):
            prompt = build_prompt(task, self.cfg.prompt_mode, fmt)
            check_fits(model, len(model.encode(prompt)), self.cfg.max_new_tokens, task.task_id)
        return describe_model(model)


class SelectCoefficients(ModelWorkflow[CodeConfig]):
    name = "select-coefficients"
    stages: ClassVar[tuple[str, ...]] = STAGES
    driver_stages: ClassVar[frozenset[str]] = frozenset({"report"})
    config_type = CodeConfig

    def __init__(self) -> None:
        self._cfg: CodeConfig | None = None

    def describe(self) -> Any:
        assert self._cfg is not None  # check() runs first
        return Describe(self._cfg, _site_points(self._cfg))

    def check(self, cfg: CodeConfig, stages: Sequence[str]) -> None:
        self._cfg = cfg
        if not cfg.vector_names() and any(s in stages for s in ("vectors", "grid")):
            raise SteerlabError(
                "give a vector file (--vector, --correct-vector, --incorrect-vector) or "
                "--vector-from-baseline"
            )
        if not task_list(cfg):
            raise SteerlabError(f"{cfg.tasks}: no code tasks")
        from steerlab.interventions import Window
        from steerlab.sites import parse_point

        Window.parse(cfg.positions)  # an unknown mode: one line, before anything is written
        if cfg.hook_point is not None:
            parse_point(cfg.hook_point)
        for ref in cfg.vectors:
            vec = _load_vector(ref.path)
            for layer, d in vec.directions.items():
                if float(d.norm()) == 0.0:
                    raise SteerlabError(
                        f"{ref.path}: the direction at layer {layer} is zero; it has no direction "
                        "to steer along"
                    )
        if cfg.baseline is not None:
            _read_baseline(Path(cfg.baseline.path), cfg)
        if any(s in stages for s in ("baseline", "grid")):
            _mode(cfg.execution.unsafe)  # refuse before a model loads, not mid-run

    def check_resource(self, cfg: CodeConfig, info: dict[str, Any]) -> None:
        n_layers, d_model = int(info["n_layers"]), int(info["d_model"])
        for ref in cfg.vectors:
            vec = _load_vector(ref.path)
            vec.check_d_model(d_model, ref.path)
            _applied(cfg, vec, ref.name, n_layers)
        if cfg.from_baseline is not None:
            layer = cfg.from_baseline.layer
            if layer is not None and not 0 <= layer < n_layers:
                raise SteerlabError(f"--layer {layer}: the model has layers 0..{n_layers - 1}")
        if cfg.layer is not None and not 0 <= cfg.layer < n_layers:
            raise SteerlabError(f"--layer {cfg.layer}: the model has layers 0..{n_layers - 1}")

    def run_stage(self, rt: Runtime[CodeConfig], stage: str) -> None:
        if stage == "baseline":
            baseline_stage(rt)
        elif stage == "vectors":
            vectors_stage(rt)
        elif stage == "grid":
            grid_stage(rt)
        else:
            from steerlab.pipelines.code.report import write_report

            write_report(rt.run.path, rt.cfg)


# ----------------------------------------------------------------------------- stages


def _site_points(cfg: CodeConfig) -> tuple[str, ...]:
    """The site points the run reads vectors at (``--vector-from-baseline``) and applies them at
    (``--hook-point``, else each vector's own)."""
    from steerlab.sites import parse_point

    points = set()
    if cfg.hook_point is not None:
        points.add(parse_point(cfg.hook_point)[1])
    else:
        points |= {_load_vector(ref.path).hook_point for ref in cfg.vectors}
    if cfg.from_baseline is not None:  # read there, and applied there without --hook-point
        points.add(cfg.from_baseline.hook_point)
    return tuple(sorted(points))


def _load_vector(path: str) -> SteeringVector:
    from steerlab.vectors import SteeringVector

    return SteeringVector.load(path)


def _applied(cfg: CodeConfig, vec: SteeringVector, name: str, n_layers: int) -> Applied:
    """Where ``vec`` is applied: ``--layer``, else its only layer; a one-layer vector applied
    elsewhere uses its own layer's direction."""
    layer = cfg.layer
    if layer is None:
        if len(vec.layers) != 1:
            raise SteerlabError(
                f"vector {name!r} has layers {list(vec.layers)}: say which with --layer"
            )
        layer = vec.layers[0]
    if not 0 <= layer < n_layers:
        raise SteerlabError(
            f"vector {name!r} is applied at layer {layer}, but the model has layers "
            f"0..{n_layers - 1}"
        )
    source = None
    if layer not in vec.layers:
        if len(vec.layers) != 1:
            raise SteerlabError(f"vector {name!r} has no layer {layer} (it has {list(vec.layers)})")
        source = vec.layers[0]
    return Applied(vec, layer, cfg.hook_point, source)


def _read_baseline(path: Path, cfg: CodeConfig) -> pd.DataFrame:
    try:
        df = pd.read_parquet(path)
    except (OSError, ValueError) as e:
        raise SteerlabError(f"--baseline {path}: not a readable Parquet file ({e})") from None
    missing = [c for c in BASELINE_COLUMNS if c not in df.columns]
    if missing:
        raise SteerlabError(f"--baseline {path}: missing column {missing[0]!r}")
    unknown = sorted(set(df["task_id"].astype(str)) - set(_tasks(cfg.tasks)))
    if unknown:
        raise SteerlabError(f"--baseline {path}: task {unknown[0]!r} is not in {cfg.tasks}")
    _check_baseline_run(path, cfg)
    check_baseline_format(path)
    return df


def _check_baseline_run(path: Path, cfg: CodeConfig) -> None:
    """A baseline from another run directory must come from the same model and prompt mode:
    its pass/fail labels are that model's (read from the run's ``config.yaml`` beside it)."""
    import yaml

    other = path.parent / "config.yaml"
    if not other.is_file():
        return  # a baseline file on its own: nothing to compare
    try:
        data = yaml.safe_load(other.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, yaml.YAMLError):
        return
    if not isinstance(data, dict):
        return
    model = (data.get("model") or {}).get("name") if isinstance(data.get("model"), dict) else None
    if model is not None and model != cfg.model.name:
        raise SteerlabError(
            f"--baseline {path} was generated by model {model!r} (its run's config.yaml), but "
            f"this run uses {cfg.model.name!r}: its pass/fail labels are that model's"
        )
    mode = data.get("prompt_mode")
    if mode is not None and mode != cfg.prompt_mode:
        raise SteerlabError(
            f"--baseline {path} was generated with --prompt-mode {mode}, this run uses "
            f"{cfg.prompt_mode}"
        )


def baseline_stage(rt: Runtime[CodeConfig]) -> None:
    cfg, out = rt.cfg, baseline_path(rt.run.path)
    if out.is_file():
        logger.info("baseline: reusing %s", out)
        return
    if cfg.baseline is not None:
        df = _read_baseline(Path(cfg.baseline.path), cfg)
        source = cfg.baseline.path
    else:
        valid = checked_tasks(rt)
        rows = [CRow(t.task_id) for t in valid]
        rt.map("baseline", rows, Generate(cfg), cfg.shard_size)
        df = stage_results(rt.run.path, "baseline")
        source = "generated"
    write_baseline(df, out)
    n_pass = int((df["status"] == "pass").sum())
    logger.info("baseline: %d of %d tasks pass (%s)", n_pass, len(df), source)
    rt.run.update_json("manifest.json", baseline={"source": source, "n": len(df), "pass": n_pass})


def checked_tasks(rt: Runtime[CodeConfig]) -> list[CodeTask]:
    """The run's tasks whose reference solution passes its own tests in the sandbox (once per
    run: the verdicts are kept in ``reference_check.json``). A task whose reference fails is
    left out and named in the log and the manifest: a model cannot be scored against tests that
    the reference itself does not pass."""
    from steerlab.execution import Limits, run_batch

    cfg = rt.cfg
    tasks = task_list(cfg)
    path = rt.run.path / "reference_check.json"
    if path.is_file():
        bad = set(rt.run.read_json("reference_check.json").get("failing", {}))
    else:
        ex = cfg.execution
        limits = Limits(cpu_s=ex.cpu_s, wall_s=ex.wall_s, memory_mb=ex.memory_mb)
        checked = [t for t in tasks if t.reference.strip()]
        batch = run_batch(
            [t.reference_program() for t in checked], limits, _mode(ex.unsafe), ex.workers
        )
        failing = {
            t.task_id: f"{r.status}: {r.detail}"[:200]
            for t, r in zip(checked, batch.results, strict=True)
            if r.status != "pass"
        }
        atomic_write_text(path, json.dumps({"checked": len(checked), "failing": failing}) + "\n")
        bad = set(failing)
        if bad:
            logger.warning(
                "%d of %d tasks left out: their reference solution fails their own tests (%s)",
                len(bad),
                len(checked),
                ", ".join(sorted(bad)[:5]) + (", ..." if len(bad) > 5 else ""),
            )
    valid = [t for t in tasks if t.task_id not in bad]
    if not valid:
        raise SteerlabError(f"{cfg.tasks}: no task's reference solution passes its own tests")
    return valid


def vector_files(run: Path) -> Path:
    return run / "vectors"


def vectors_stage(rt: Runtime[CodeConfig]) -> dict[str, Applied]:
    cfg, n_layers = rt.cfg, int(rt.info.get("n_layers", 0))
    applied: dict[str, Applied] = {}
    fb = cfg.from_baseline
    if fb is not None:
        layer = fb.layer if fb.layer is not None else cfg.layer
        layer = layer if layer is not None else n_layers // 2
        vdir = vector_files(rt.run.path)
        correct, incorrect = vdir / "correct.safetensors", vdir / "incorrect.safetensors"
        if not correct.is_file():
            df = load_baseline(rt.run.path)
            ok = df["status"] == "pass"
            bad = ~ok & (df["status"] != "sandbox_error")
            passed, failed = df.loc[ok, "prompt"].tolist(), df.loc[bad, "prompt"].tolist()
            if min(len(passed), len(failed)) < fb.min_per_class:
                raise SteerlabError(
                    f"--vector-from-baseline needs at least {fb.min_per_class} passing and "
                    f"failing baseline problems; the baseline has {len(passed)} passing and "
                    f"{len(failed)} failing"
                )
            vec = rt.call(_build_from_baseline, passed, failed, layer, fb.hook_point, fb.position)
            vdir.mkdir(exist_ok=True)
            (-vec).save(incorrect)
            vec.save(correct)  # last: its presence marks the stage done
            logger.info(
                "vectors: correct = mean(pass, n=%d) - mean(fail, n=%d) at layer %d, norm %.3g",
                len(passed),
                len(failed),
                layer,
                vec.norm(layer),
            )
        for name, path in (("correct", correct), ("incorrect", incorrect)):
            applied[name] = _applied(cfg, _load_vector(str(path)), name, n_layers)
    for ref in cfg.vectors:
        vec = _load_vector(ref.path)
        applied[ref.name] = _applied(cfg, vec, ref.name, n_layers)
    return applied


def grid_rows(cfg: CodeConfig, baseline: pd.DataFrame) -> list[CRow]:
    from steerlab.pipelines.code.analysis import problem_samples

    ids = baseline["task_id"].astype(str).tolist()
    samples = problem_samples(
        ids,
        baseline["complexity"].astype(int).tolist(),
        cfg.coefficients,
        cfg.n_per_coefficient,
        cfg.sample_seed,
        cfg.same_problems,
    )
    prompt = dict(zip(ids, baseline["prompt"], strict=True))
    # coefficient-major: rows of one strength share shards and batches, so the long rows of
    # strong steering (often running to max_new_tokens) decode together at full batch width
    rows = [
        CRow(t, v, c, prompt[t])
        for c in cfg.coefficients
        for v in cfg.vector_names()
        for t in samples[c]
    ]
    union = sorted({t for s in samples.values() for t in s}, key=ids.index)
    return rows + [CRow(t, NOISE, 0.0, prompt[t]) for t in union]


def grid_stage(rt: Runtime[CodeConfig]) -> int:
    cfg = rt.cfg
    rows = grid_rows(cfg, load_baseline(rt.run.path))
    applied = vectors_stage(rt) if rt.pending("grid", rows, cfg.shard_size) else {}
    return rt.map("grid", rows, Generate(cfg, applied), cfg.shard_size)
