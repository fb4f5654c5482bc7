"""``steerlab eval-questions`` as a workflow of the run framework.

Every (question x paraphrase x sample x steering config) row, the unsteered baseline included,
goes through the batched engine in shared batches; each row has its own seed, and a sample's
seed is the same under every steering config (common random numbers: differences between
configs are the steering's, not the sampler's). Stages: ``generate`` (sharded, on the workers),
``judge`` (on the driver, only with a judge; every judge call is cached in the run directory, so
a rerun costs nothing), ``report`` (results.parquet, summary.csv, report.md, a plot).
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import pandas as pd

from steerlab._util.io import atomic_path, atomic_write_text
from steerlab.errors import SteerlabError
from steerlab.pipelines._shared import ModelWorkflow, judge_config
from steerlab.pipelines.questions.config import EvalConfig
from steerlab.pipelines.questions.results import answers
from steerlab.runs.runner import Runtime

if TYPE_CHECKING:
    from steerlab.interventions import Intervention
    from steerlab.models import Model
    from steerlab.tasks.questions import Question

logger = logging.getLogger(__name__)
STAGES = ("generate", "judge", "report")
BASELINE = "baseline"


@dataclass(frozen=True)
class QRow:
    question_id: str
    paraphrase_index: int
    sample: int
    config: str
    paraphrase: str
    system: str | None
    seed: int

    @property
    def key(self) -> str:
        return f"{self.question_id}|{self.paraphrase_index}|{self.sample}|{self.config}"


def sample_seed(base: int, question_id: str, paraphrase_index: int, sample: int) -> int:
    """The sampling seed of one sample, shared by every steering config."""
    blob = f"{base}|{question_id}|{paraphrase_index}|{sample}".encode()
    return int(hashlib.sha256(blob).hexdigest()[:8], 16)


def read_questions(cfg: EvalConfig) -> list[Question]:
    from steerlab._util.resources import local_path
    from steerlab.tasks.questions import load_questions

    with local_path("questions", cfg.questions.path) as path:
        return load_questions(path)


#: more answers than this in one run is a typo (a sample count with extra zeros), not a plan
MAX_ROWS = 1_000_000


def expand(cfg: EvalConfig, questions: Sequence[Question]) -> list[QRow]:
    configs = [BASELINE] + [s.name for s in cfg.steering]
    rows = []
    for q in questions:
        n = cfg.n_per_question or q.samples_per_paraphrase
        for pi, text in enumerate(q.paraphrases):
            for s in range(n):
                seed = sample_seed(cfg.generation.seed, q.id, pi, s)
                rows += [QRow(q.id, pi, s, c, text, q.system, seed) for c in configs]
    return rows


@dataclass(frozen=True)
class Answer:
    """Runs on a worker: generate the answers of a shard and score them with the rule-based
    metrics (refusal, helpfulness, length, entropy). Picklable."""

    cfg: EvalConfig
    steering: dict[str, tuple[Intervention, ...]] = field(default_factory=dict)

    def __call__(
        self, model: Model, rows: Sequence[QRow], progress: Callable[[int], object]
    ) -> pd.DataFrame:
        from steerlab.engine.generate import GenerationConfig, Row, generate
        from steerlab.metrics import confound_metrics, helpfulness_score, refusal_score

        g = self.cfg.generation
        gen = GenerationConfig(
            max_new_tokens=g.max_new_tokens,
            temperature=g.temperature,
            top_p=g.top_p,
            batch_size=g.batch_size,
        )
        chat = self.cfg.model.chat
        reqs = [
            Row(
                model.format_prompt(r.paraphrase, system=r.system, chat=chat),
                self.steering.get(r.config, ()),
                seed=r.seed,
            )
            for r in rows
        ]
        results = generate(model, reqs, gen, progress=False, on_rows=progress)
        out = []
        for r, res in zip(rows, results, strict=True):
            ref = refusal_score(res.text)
            helpful = helpfulness_score(res.text, refusal=ref)
            conf = confound_metrics(
                res.text, list(res.token_ids), list(res.logprobs), list(res.entropies)
            )
            out.append(
                {
                    "question_id": r.question_id,
                    "paraphrase_index": r.paraphrase_index,
                    "sample": r.sample,
                    "config": r.config,
                    "paraphrase": r.paraphrase,
                    "system": r.system,
                    "seed": r.seed,
                    "answer": res.text,
                    "n_tokens": len(res.token_ids),
                    "finish_reason": res.finish_reason,
                    "refusal_score": ref.score,
                    "is_refusal": ref.is_refusal,
                    "helpfulness_score": helpful.score,
                    # gibberish is not helpful, however it is laid out
                    "is_helpful": helpful.is_helpful and not conf.is_gibberish,
                    "looks_helpful": helpful.is_helpful,
                    "n_words": helpful.n_words,
                    "mean_entropy": conf.mean_entropy,
                    "mean_logprob": conf.mean_logprob,
                    "is_gibberish": conf.is_gibberish,
                }
            )
        return pd.DataFrame(out)


def _build_steering_job(model: Model, path: str, chat: bool) -> Any:
    """Runs on a worker: build one steering config's vectors on the worker's model."""
    from steerlab.steering_config import build_steering, load_steering_config

    return build_steering(model, load_steering_config(path), chat=chat)


def _check_steering(cfg: EvalConfig, n_layers: int) -> None:
    from steerlab.steering_config import check_against_model, load_steering_config

    for ref in cfg.steering:
        check_against_model(load_steering_config(ref.path), n_layers)


class EvalQuestions(ModelWorkflow[EvalConfig]):
    name = "eval-questions"
    stages: ClassVar[tuple[str, ...]] = STAGES
    driver_stages: ClassVar[frozenset[str]] = frozenset({"judge", "report"})
    config_type = EvalConfig

    def check(self, cfg: EvalConfig, stages: Sequence[str]) -> None:
        from steerlab.steering_config import load_steering_config

        questions = read_questions(cfg)
        if not questions:
            raise SteerlabError(f"{cfg.questions.path}: no questions")
        n_configs = 1 + len(cfg.steering)
        total = sum(
            len(q.paraphrases) * (cfg.n_per_question or q.samples_per_paraphrase) * n_configs
            for q in questions
        )
        if total > MAX_ROWS:
            raise SteerlabError(
                f"{cfg.questions.path}: {total:,} answers to generate (questions x paraphrases x "
                f"samples x {n_configs} configs) is more than {MAX_ROWS:,}; lower "
                "samples_per_paraphrase or --n-per-question, or split the question file"
            )
        if cfg.judge is not None:
            judge_config(cfg.judge)  # a bad URL, model or key variable: before anything is written
        for ref in cfg.steering:
            load_steering_config(ref.path)

    def check_resource(self, cfg: EvalConfig, info: dict[str, Any]) -> None:
        _check_steering(cfg, int(info["n_layers"]))

    def run_stage(self, rt: Runtime[EvalConfig], stage: str) -> None:
        if stage == "generate":
            generate_stage(rt)
        elif stage == "judge":
            judge_stage(rt)
        elif stage == "report":
            from steerlab.pipelines.questions.report import write_report

            write_report(rt.run.path, rt.cfg)


def generate_stage(rt: Runtime[EvalConfig]) -> int:
    cfg = rt.cfg
    steering: dict[str, tuple[Intervention, ...]] = {}
    resolved = {}
    for ref in cfg.steering:
        built = rt.call(_build_steering_job, ref.path, cfg.model.chat)
        steering[ref.name] = tuple(built.interventions)
        resolved[ref.name] = {"file": ref.path, "sha256": ref.sha256, **built.to_dict()}
    if resolved:
        atomic_write_text(
            rt.run.path / "steering_resolved.json", json.dumps(resolved, indent=2) + "\n"
        )
    rows = expand(cfg, read_questions(cfg))
    return rt.map("generate", rows, Answer(cfg, steering), cfg.shard_size)


def judge_stage(rt: Runtime[EvalConfig]) -> None:
    """Score every answer with every ``judge_prompts`` metric of its question (cached)."""
    cfg = rt.cfg
    if cfg.judge is None:
        return
    from steerlab.judge import Judge, fill

    t0 = time.perf_counter()
    df = answers(rt.run.path)
    questions = {q.id: q for q in read_questions(cfg)}
    jobs: list[tuple[int, str, str]] = []  # (row, metric, prompt)
    for i, r in enumerate(df.itertuples(index=False)):
        q = questions[r.question_id]
        for metric, template in dict(q.judge_prompts).items():
            jobs.append((i, metric, fill(template, r.paraphrase, r.answer)))
    judge = Judge(judge_config(cfg.judge, rt.run.path / "judge_cache.jsonl"))
    results = judge.score_many([p for _, _, p in jobs], progress=rt.progress)
    out = df[["question_id", "paraphrase_index", "sample", "config"]].copy()
    for (i, metric, _), res in zip(jobs, results, strict=True):
        out.loc[i, f"judge_{metric}"] = res.score
        out.loc[i, f"judge_{metric}_kind"] = res.kind
    with atomic_path(rt.run.path / "parts" / "judge" / "judge.parquet") as tmp:
        out.to_parquet(tmp, index=False)
    rt.run.record_stage(
        "judge", time.perf_counter() - t0, calls=len(jobs), url=cfg.judge.url, model=cfg.judge.model
    )
