"""``steerlab classify`` as a workflow of the run framework.

Stages:

- ``vectors``: per-group and pooled labeled mean-diff vectors, ``mean(positive) − mean(negative)``
  (the intended target class minus the other), at each layer, from the build split; streamed.
- ``signcheck``: before any sweep, on the held-out split: does ``+α`` of the pooled vector, and
  of each group's vector, move the target metric the intended way, and ``−α`` the other? (see
  :mod:`steerlab.pipelines.classify.checks`). Backwards vectors are named at the top of the log
  and the report with the flipped vector's effect, and the command that flips them is given.
- ``grid``: every held-out example, unsteered and under its own group's vector and the pooled
  vector at every layer and strength, and (cross-group) under every other group's vector at
  every layer and strength; all rows in shared batches. Scored in the config's grid mode:
  ``logit`` (one forward pass per row, the answer-token margin at the last prompt token) or
  ``generate`` (every row generated greedily and parsed, text kept: the only mode in which
  steering at generated positions can show an effect).
- ``generate``: logit mode only: the baseline and, per group, the best own-vector setting of the
  grid, generated greedily and parsed (the text is always kept). In generate mode the grid
  already holds every row's text, so this stage does nothing.
- ``report``: tables, heatmaps, plots.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import pandas as pd

from steerlab._util.io import atomic_write_text
from steerlab.errors import SteerlabError
from steerlab.pipelines._shared import ModelWorkflow, describe_model
from steerlab.pipelines.classify import checks
from steerlab.pipelines.classify.config import (
    BASELINE,
    POOLED,
    ClassifyConfig,
    generated_only,
)
from steerlab.pipelines.classify.results import grid_results, task_of
from steerlab.runs.runner import Runtime
from steerlab.runs.shards import stage_results

if TYPE_CHECKING:
    from steerlab.engine.score import LogitScores
    from steerlab.interventions import Intervention
    from steerlab.models import Model
    from steerlab.tasks.classification import ClassificationTask, Example
    from steerlab.vectors import SteeringVector

logger = logging.getLogger(__name__)
STAGES = ("vectors", "signcheck", "grid", "generate", "report")


@dataclass(frozen=True)
class KRow:
    """One example under one setting (``vector`` = ``baseline``, ``pooled`` or a group)."""

    example_id: str
    vector: str = BASELINE
    layer: int = -1
    strength: float = 0.0

    @property
    def key(self) -> str:
        return f"{self.example_id}|{self.vector}|{self.layer}|{self.strength:g}"


def _prompt(model: Model, task: ClassificationTask, ex: Example) -> str:
    cfg = task.config

    def fmt(text: str) -> str:
        return model.format_prompt(text, system=cfg.system, chat=True)

    return task.prompt(ex, fmt)


def _answer_ids(model: Model, task: ClassificationTask) -> dict[str, list[int]]:
    from steerlab.tasks.classification import answer_token_ids

    tok = model.tokenizer
    return answer_token_ids(lambda s: list(tok.encode(s, add_special_tokens=False)), task.config)


@dataclass(frozen=True)
class Steer:
    """Vectors by name and how they are applied (picklable)."""

    cfg: ClassifyConfig
    vectors: dict[str, SteeringVector] = field(default_factory=dict)

    def interventions(self, row: KRow) -> tuple[Intervention, ...]:
        from steerlab.interventions import Intervention

        if row.vector == BASELINE:
            return ()
        sign = -1.0 if self.cfg.flipped(row.vector) else 1.0
        iv = Intervention(
            self.vectors[row.vector],
            row.layer,
            kind="add",
            alpha=sign * row.strength,
            hook_point=self.cfg.hook_point,
            positions=self.cfg.positions,
            scale=self.cfg.scale,
        )
        return (iv,)


def margins(
    model: Model,
    steer: Steer,
    rows: Sequence[KRow],
    on_rows: Callable[[int], object] | None = None,
) -> LogitScores:
    from steerlab.engine.score import answer_margins

    task = task_of(steer.cfg.task)
    c = task.config
    by_id = {e.id: e for e in task.examples}
    negative = next(label for label in c.labels if label != c.positive)
    return answer_margins(
        model,
        [_prompt(model, task, by_id[r.example_id]) for r in rows],
        _answer_ids(model, task),
        c.positive,
        negative,
        [steer.interventions(r) for r in rows],
        batch_size=steer.cfg.batch_size,
        on_rows=on_rows,
    )


@dataclass(frozen=True)
class Score:
    """Runs on a worker: the logit-mode scores of a shard."""

    steer: Steer

    def __call__(
        self, model: Model, rows: Sequence[KRow], progress: Callable[[int], object]
    ) -> pd.DataFrame:
        task = task_of(self.steer.cfg.task)
        by_id = {e.id: e for e in task.examples}
        s = margins(model, self.steer, rows, progress)
        return pd.DataFrame(
            {
                **_row_columns(rows, by_id),
                "logp_positive": s.log_prob(s.positive).tolist(),
                "logp_negative": s.log_prob(s.negative).tolist(),
                "margin": s.margin.tolist(),
                "p_positive": s.p_positive.tolist(),
            }
        )


@dataclass(frozen=True)
class Generate:
    """Runs on a worker: generate a shard's answers greedily and parse them."""

    steer: Steer

    def __call__(
        self, model: Model, rows: Sequence[KRow], progress: Callable[[int], object]
    ) -> pd.DataFrame:
        from steerlab.engine.generate import GenerationConfig, Row, generate
        from steerlab.tasks.classification import parse_answer

        cfg = self.steer.cfg
        task = task_of(cfg.task)
        by_id = {e.id: e for e in task.examples}
        reqs = [
            Row(_prompt(model, task, by_id[r.example_id]), self.steer.interventions(r))
            for r in rows
        ]
        gen = GenerationConfig(max_new_tokens=cfg.max_new_tokens, batch_size=cfg.batch_size)
        results = generate(model, reqs, gen, progress=False, on_rows=progress)
        parsed = [parse_answer(res.text, task.config) for res in results]
        return pd.DataFrame(
            {
                **_row_columns(rows, by_id),
                "answer": [res.text for res in results],
                "parsed": [p[0] for p in parsed],
                "explanation": [p[1] for p in parsed],
                "n_tokens": [len(res.token_ids) for res in results],
                "token_ids": [list(res.token_ids) for res in results],
                "finish_reason": [res.finish_reason for res in results],
            }
        )


def scorer(steer: Steer) -> Score | Generate:
    """The worker job that scores rows in the config's grid mode."""
    return Generate(steer) if steer.cfg.grid_mode() == "generate" else Score(steer)


def _row_columns(rows: Sequence[KRow], by_id: dict[str, Example]) -> dict[str, list[Any]]:
    return {
        "example_id": [r.example_id for r in rows],
        "group": [by_id[r.example_id].group for r in rows],
        "label": [by_id[r.example_id].label for r in rows],
        "vector": [r.vector for r in rows],
        "layer": [r.layer for r in rows],
        "strength": [r.strength for r in rows],
    }


# ----------------------------------------------------------------------------- worker jobs


def _build_vectors(
    model: Model, ref: str, layers: list[int], hook_point: str, position: str
) -> dict[str, Any]:
    """Runs on a worker: per-group and pooled vectors from the build split."""
    from steerlab.directions.grouped import group_vectors

    task = task_of(ref)
    c = task.config
    # +vector points toward the intended effect: to the target class when it should be raised
    toward = c.intended.target
    if c.intended.direction == "lower":
        toward = next(label for label in c.labels if label != toward)
    by_group: dict[str, tuple[list[str], list[str]]] = {g: ([], []) for g in task.groups()}
    for ex in task.split(c.build_split):
        pos, neg = by_group[ex.group]
        (pos if ex.label == toward else neg).append(_prompt(model, task, ex))
    gv = group_vectors(model, by_group, layers, position=position, hook_point=hook_point)
    return {"groups": dict(gv.groups), "pooled": gv.pooled, "counts": dict(gv.counts)}


# ----------------------------------------------------------------------------- the workflow


@dataclass(frozen=True)
class Describe:
    """Runs on a worker: what the driver needs to know, after checking that the task's answer
    words start with distinct tokens under this model's tokenizer (before anything is written)."""

    task_ref: str | None

    def __call__(self, model: Model) -> dict[str, Any]:
        if self.task_ref is not None:
            _answer_ids(model, task_of(self.task_ref))
        return describe_model(model)


class Classify(ModelWorkflow[ClassifyConfig]):
    name = "classify"
    stages: ClassVar[tuple[str, ...]] = STAGES
    driver_stages: ClassVar[frozenset[str]] = frozenset({"report"})
    config_type = ClassifyConfig

    def __init__(self) -> None:
        self._task_ref: str | None = None

    def describe(self) -> Any:
        return Describe(self._task_ref)

    def check(self, cfg: ClassifyConfig, stages: Sequence[str]) -> None:
        task = task_of(cfg.task)
        if cfg.mode == "logit" and generated_only(cfg.positions):
            raise SteerlabError(
                f"--positions {cfg.positions} with --mode logit: logit mode reads the answer "
                "from the next-token logits at the last prompt token, which are computed before "
                "any token is generated, so steering only generated tokens cannot change them "
                "and every steered row would equal the baseline. Use --mode generate (the "
                "default for these positions) or steer prompt tokens (last-prompt, prompt, all)"
            )
        # logit mode reads answers from first tokens: check they differ before anything runs
        self._task_ref = cfg.task if cfg.grid_mode() == "logit" else None
        if len(task.config.labels) != 2:
            raise SteerlabError(f"{cfg.task}: classify needs exactly two labels")
        names = [POOLED, *task.groups()]
        unknown = [g for g in cfg.flip_groups if g not in names]
        if unknown:
            raise SteerlabError(
                f"--flip-groups: {unknown[0]!r} is not a vector of this task (vectors: "
                f"{', '.join(names)})"
            )

    def check_resource(self, cfg: ClassifyConfig, info: dict[str, Any]) -> None:
        n = int(info["n_layers"])
        for layer in cfg.resolved_layers(n):
            if not 0 <= layer < n:
                raise SteerlabError(f"--layers: layer {layer} is out of range 0..{n - 1}")

    def run_stage(self, rt: Runtime[ClassifyConfig], stage: str) -> None:
        if stage == "vectors":
            load_vectors(rt)
        elif stage == "signcheck":
            signcheck_stage(rt)
        elif stage == "grid":
            steer = Steer(rt.cfg, load_vectors(rt))
            rt.map("grid", grid_rows(rt), scorer(steer), rt.cfg.shard_size)
        elif stage == "generate":
            if rt.cfg.grid_mode() == "generate":
                logger.info("generate: the grid already generated and parsed every row")
            elif rt.cfg.generate:
                rows = generate_rows(rt)
                rt.map("generate", rows, Generate(Steer(rt.cfg, load_vectors(rt))), 10**9)
        else:
            from steerlab.pipelines.classify.report import write_report

            write_report(rt.run.path, rt.cfg)


def layers_of(rt: Runtime[ClassifyConfig]) -> list[int]:
    return rt.cfg.resolved_layers(int(rt.info["n_layers"]))


def load_vectors(rt: Runtime[ClassifyConfig]) -> dict[str, SteeringVector]:
    """The vectors of the run (built once, then read from ``vectors/``)."""
    from steerlab.vectors import SteeringVector

    vdir = rt.run.path / "vectors"
    index = vdir / "index.json"
    if not index.is_file():
        cfg = rt.cfg
        built = rt.call(_build_vectors, cfg.task, layers_of(rt), cfg.hook_point, cfg.build_position)
        vdir.mkdir(exist_ok=True)
        names = {POOLED: built["pooled"], **built["groups"]}
        for name, vec in names.items():
            vec.save(vdir / f"{name}.safetensors")
        counts = {g: list(c) for g, c in built["counts"].items()}
        atomic_write_text(index, json.dumps({"vectors": list(names), "counts": counts}) + "\n")
        logger.info(
            "vectors: %d groups and pooled at layers %s", len(built["groups"]), layers_of(rt)
        )
    names = json.loads(index.read_text())["vectors"]
    return {n: SteeringVector.load(vdir / f"{n}.safetensors") for n in names}


def vector_names(rt: Runtime[ClassifyConfig]) -> list[str]:
    """The vectors built (``pooled`` and each group that has both classes), in order."""
    names: list[str] = json.loads((rt.run.path / "vectors" / "index.json").read_text())["vectors"]
    return names


def grid_rows(rt: Runtime[ClassifyConfig]) -> list[KRow]:
    """Per held-out example: the baseline, then per layer and strength its own group's vector,
    the pooled vector and (cross-group) every other group's vector."""
    cfg = rt.cfg
    task = task_of(cfg.task)
    held = task.split(task.config.eval_split)
    others = task.groups() if cfg.cross_group else []
    vectors = set(vector_names(rt))
    rows = [KRow(e.id) for e in held]
    for e in held:
        names = [v for v in dict.fromkeys([e.group, POOLED, *others]) if v in vectors]
        for layer in layers_of(rt):
            for s in cfg.strengths:
                rows += [KRow(e.id, v, layer, s) for v in names]
    return rows


def generate_rows(rt: Runtime[ClassifyConfig]) -> list[KRow]:
    """The baseline and, per group, the grid's best own-vector setting (by accuracy, then
    margin toward the true label)."""
    from steerlab.pipelines.classify.report import best_settings, scored

    task = task_of(rt.cfg.task)
    held = task.split(task.config.eval_split)
    best = best_settings(scored(grid_results(rt.run.path), task.config.positive))
    rows = [KRow(e.id) for e in held]
    for e in held:
        b = best.get(e.group)
        if b is not None:
            rows.append(KRow(e.id, e.group, int(b["layer"]), float(b["strength"])))
    return rows


# ----------------------------------------------------------------------------- the sign check


def check_rows(cfg: ClassifyConfig, vectors: Sequence[str], layers: Sequence[int]) -> list[KRow]:
    """The baseline of every held-out example, then per layer and sign: the pooled vector on
    every held-out example and each group's vector on that group's examples."""
    task = task_of(cfg.task)
    held = task.split(task.config.eval_split)
    a = cfg.check_strength()
    rows = [KRow(e.id) for e in held]
    for layer in layers:
        for s in (a, -a):
            rows += [KRow(e.id, POOLED, layer, s) for e in held if POOLED in vectors]
            rows += [KRow(e.id, e.group, layer, s) for e in held if e.group in vectors]
    return rows


def signcheck_stage(rt: Runtime[ClassifyConfig]) -> list[dict[str, Any]]:
    """Score the check rows (sharded), judge every (vector, layer), write ``signcheck.json``
    once, and log the outcome (on every invocation, so a resumed run says it again); see
    :mod:`steerlab.pipelines.classify.checks`."""
    path = rt.run.path / "signcheck.json"
    if path.is_file():
        found: list[dict[str, Any]] = json.loads(path.read_text())
    else:
        cfg = rt.cfg
        vectors = vector_names(rt)
        rows = check_rows(cfg, vectors, layers_of(rt))
        rt.map(checks.STAGE, rows, scorer(Steer(cfg, load_vectors(rt))), cfg.shard_size)
        scored_rows = stage_results(rt.run.path, checks.STAGE)
        found = checks.judge(cfg, scored_rows, vectors, layers_of(rt))
        atomic_write_text(path, json.dumps(found, indent=2) + "\n")
    checks.log_checks(rt.cfg, found)
    return found
