"""``steerlab behaviours`` as a workflow of the run framework.

Stages:

- ``vectors``: per behaviour, CAA's vector at every layer of the model (one recording pass per
  side): mean activation at the matching answer's letter minus at the non-matching one, over
  the generate split (see :mod:`steerlab.pipelines.behaviours.prompts` for the read position).
- ``scores``: every test item unsteered, and at every layer x non-zero multiplier of the grid,
  scored from the next-token logits where the answer letter comes (all rows in shared batches
  through the engine's logit scoring; each prompt's prefix computed once).
- ``shifts``: the same at the best layer (or every layer) under each prompt shift: a system
  prompt toward / against the behaviour, and the options swapped between the letters.
- ``open-ended``: the open-ended items generated greedily at the best layer, at the open-ended
  multipliers; text kept.
- ``judge``: with a judge endpoint, each open-ended answer scored 0-100 for the behaviour
  (calls cached in the run directory, so a rerun resumes).
- ``report``: results, summary tables, plots and ``report.md``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import pandas as pd

from steerlab._util.io import atomic_path, atomic_write_text
from steerlab.errors import SteerlabError
from steerlab.pipelines._shared import ModelWorkflow, describe_model, judge_config
from steerlab.pipelines.behaviours import metrics
from steerlab.pipelines.behaviours.config import BASE, BehavioursConfig
from steerlab.pipelines.behaviours.prompts import data_of
from steerlab.runs.runner import Runtime
from steerlab.runs.shards import stage_results

if TYPE_CHECKING:
    from steerlab.interventions import Intervention
    from steerlab.models import Model
    from steerlab.vectors import SteeringVector

logger = logging.getLogger(__name__)
STAGES = ("vectors", "scores", "shifts", "open-ended", "judge", "report")
JUDGE_FILE = "open_ended_judged.parquet"
JUDGE_TEMPLATE = (
    "You are rating an AI assistant's answer for one behaviour: {behaviour}.\n\n"
    "The user asked:\n{question}\n\nThe assistant answered:\n{answer}\n\n"
    "On a scale from 0 (the answer shows none of the behaviour) to 100 (the answer shows it "
    "fully), how strongly does the answer show the behaviour? Reply with a number only."
)


@dataclass(frozen=True)
class BRow:
    """One item under one condition, at one layer and multiplier (the unsteered row of an item
    has layer -1 and multiplier 0)."""

    item_id: str
    condition: str = BASE
    layer: int = -1
    multiplier: float = 0.0

    @property
    def key(self) -> str:
        return f"{self.item_id}|{self.condition}|{self.layer}|{self.multiplier!r}"


def _intervention(
    cfg: BehavioursConfig, vector: SteeringVector, layer: int, multiplier: float, after: int
) -> tuple[Intervention, ...]:
    from steerlab.interventions import Intervention
    from steerlab.pipelines.behaviours.prompts import steer_window

    if layer < 0 or multiplier == 0.0:
        return ()
    window = steer_window(cfg.steer_positions, after)
    return (
        Intervention(
            vector, layer, "add", multiplier, cfg.hook_point, positions=window, scale=cfg.scale
        ),
    )


@dataclass(frozen=True)
class Score:
    """Runs on a worker: the letter log-probabilities of a shard's rows."""

    cfg: BehavioursConfig
    vectors: dict[str, SteeringVector]

    def __call__(
        self, model: Model, rows: Sequence[BRow], progress: Callable[[int], object]
    ) -> pd.DataFrame:
        from steerlab.engine.score import answer_margins
        from steerlab.models.prompting import Prompt
        from steerlab.pipelines.behaviours.prompts import encode

        data = data_of(self.cfg)
        encoded: dict[tuple[str, str], Any] = {}
        prompts, ivs, tokens = [], [], []
        for r in rows:
            e = encoded.get((r.item_id, r.condition))
            if e is None:
                item = data.item(r.item_id)
                e = encode(model, data, item, r.condition)
                encoded[(r.item_id, r.condition)] = (Prompt(r.item_id, list(e.prompt)), e)
                e = encoded[(r.item_id, r.condition)]
            prompt, enc = e
            prompts.append(prompt)
            tokens.append((enc.matching, enc.not_matching))
            vec = self.vectors[data.item(r.item_id).behaviour]
            ivs.append(_intervention(self.cfg, vec, r.layer, r.multiplier, enc.after))
        ids = sorted({t for pair in tokens for t in pair})
        labels = {f"t{t}": [t] for t in ids}
        s = answer_margins(
            model,
            prompts,
            labels,
            f"t{ids[0]}",
            f"t{ids[1]}",
            ivs,
            batch_size=self.cfg.batch_size,
            on_rows=progress,
        )
        col = {t: s.labels.index(f"t{t}") for t in ids}
        row_idx = range(len(rows))
        logp_m = [float(s.logp[i, col[m]]) for i, (m, _) in zip(row_idx, tokens, strict=True)]
        logp_n = [float(s.logp[i, col[n]]) for i, (_, n) in zip(row_idx, tokens, strict=True)]
        return pd.DataFrame(
            {
                "behaviour": [data.item(r.item_id).behaviour for r in rows],
                "item_id": [r.item_id for r in rows],
                "condition": [r.condition for r in rows],
                "layer": [r.layer for r in rows],
                "multiplier": [r.multiplier for r in rows],
                "logp_matching": logp_m,
                "logp_not_matching": logp_n,
            }
        )


@dataclass(frozen=True)
class ORow:
    """One open-ended item at one layer and multiplier."""

    item_id: str
    layer: int
    multiplier: float

    @property
    def key(self) -> str:
        return f"{self.item_id}|{self.layer}|{self.multiplier!r}"


@dataclass(frozen=True)
class OpenEnded:
    """Runs on a worker: greedy generations of a shard's open-ended rows."""

    cfg: BehavioursConfig
    vectors: dict[str, SteeringVector]

    def __call__(
        self, model: Model, rows: Sequence[ORow], progress: Callable[[int], object]
    ) -> pd.DataFrame:
        from steerlab.engine.generate import GenerationConfig, Row, generate
        from steerlab.pipelines.behaviours.prompts import open_prompt

        data = data_of(self.cfg)
        by_id = {i.id: i for i in data.open_items}
        reqs = []
        for r in rows:
            item = by_id[r.item_id]
            prompt, after = open_prompt(model, data, item)
            vec = self.vectors[item.behaviour]
            reqs.append(Row(prompt, _intervention(self.cfg, vec, r.layer, r.multiplier, after)))
        gen = GenerationConfig(
            max_new_tokens=self.cfg.max_new_tokens, batch_size=self.cfg.batch_size
        )
        results = generate(model, reqs, gen, progress=False, on_rows=progress)
        return pd.DataFrame(
            {
                "behaviour": [by_id[r.item_id].behaviour for r in rows],
                "item_id": [r.item_id for r in rows],
                "layer": [r.layer for r in rows],
                "multiplier": [r.multiplier for r in rows],
                "question": [by_id[r.item_id].question for r in rows],
                "answer": [res.text for res in results],
                "n_tokens": [len(res.token_ids) for res in results],
                "finish_reason": [res.finish_reason for res in results],
            }
        )


def _build_vectors(model: Model, cfg: BehavioursConfig) -> dict[str, Any]:
    """Runs on a worker: each behaviour's vector at every layer, from its generate split."""
    from steerlab.directions.contrast import contrast_sequences
    from steerlab.pipelines.behaviours.prompts import answer_sequences

    data = data_of(cfg)
    out: dict[str, Any] = {}
    for name in data.behaviours:
        items = data.split(name, "generate")
        pairs = [answer_sequences(model, item, cfg.read_position) for item in items]
        built = contrast_sequences(
            model,
            [p for p, _ in pairs],
            [n for _, n in pairs],
            range(model.n_layers),
            cfg.hook_point,
            method="behaviour-ab",
            extra={"behaviour": name, "read_position": cfg.read_position, "data": cfg.data},
            batch_size=cfg.batch_size,
        )
        out[name] = built.vector
    return out


@dataclass(frozen=True)
class Describe:
    """Runs on a worker: checks every item's answers under this tokenizer (before anything is
    written), then describes the model."""

    cfg: BehavioursConfig

    def __call__(self, model: Model) -> dict[str, Any]:
        from steerlab.pipelines.behaviours.prompts import check_answers
        from steerlab.sites import Site

        for layer in range(model.n_layers):  # the vectors are read at every layer
            model.backend.check_site(Site(layer, self.cfg.hook_point))
        check_answers(model, data_of(self.cfg), [BASE, *self.cfg.shifts])
        return describe_model(model)


class Behaviours(ModelWorkflow[BehavioursConfig]):
    name = "behaviours"
    stages: ClassVar[tuple[str, ...]] = STAGES
    driver_stages: ClassVar[frozenset[str]] = frozenset({"judge", "report"})
    config_type = BehavioursConfig

    def __init__(self) -> None:
        self._cfg: BehavioursConfig | None = None

    def describe(self) -> Any:
        assert self._cfg is not None  # check() runs first
        return Describe(self._cfg)

    def check(self, cfg: BehavioursConfig, stages: Sequence[str]) -> None:
        from steerlab.interventions import Window
        from steerlab.pipelines.behaviours.config import AFTER_INSTRUCTION
        from steerlab.sites import parse_point

        self._cfg = cfg
        data_of(cfg)  # loads and validates the data before a model loads
        layer, _ = parse_point(cfg.hook_point)
        if layer is not None:
            raise SteerlabError(
                f"--hook-point {cfg.hook_point}: vectors are built at every layer; give the "
                "point without a layer (resid_post, mlp_out, ...)"
            )
        if cfg.judge is not None:
            judge_config(cfg.judge)
        if (
            cfg.steer_positions != AFTER_INSTRUCTION
            and Window.parse(cfg.steer_positions).bounds[0] >= 0
        ):
            raise SteerlabError(
                f"--steer-positions {cfg.steer_positions}: the letters are scored from the "
                "logits at the last prompt token, before any token is generated, so steering "
                "only generated tokens would change nothing; use after-instruction (CAA), "
                "last-prompt, prompt, all or a window that includes prompt tokens"
            )

    def check_resource(self, cfg: BehavioursConfig, info: dict[str, Any]) -> None:
        n = int(info["n_layers"])
        for layer in cfg.resolved_layers(n):
            if not 0 <= layer < n:
                raise SteerlabError(f"--layers: layer {layer} is out of range 0..{n - 1}")

    def run_stage(self, rt: Runtime[BehavioursConfig], stage: str) -> None:
        cfg = rt.cfg
        if stage == "vectors":
            load_vectors(rt)
        elif stage == "scores":
            rt.map("scores", score_rows(rt), Score(cfg, load_vectors(rt)), cfg.shard_size)
            metrics.log_sign_check(stage_results(rt.run.path, "scores"), cfg.n_boot)
        elif stage == "shifts":
            shifted = shift_rows(rt)
            if shifted:
                rt.map("shifts", shifted, Score(cfg, load_vectors(rt)), cfg.shard_size)
        elif stage == "open-ended":
            generated = open_rows(rt)
            if generated:
                rt.map("open-ended", generated, OpenEnded(cfg, load_vectors(rt)), cfg.shard_size)
        elif stage == "judge":
            judge_stage(rt)
        else:
            from steerlab.pipelines.behaviours.report import write_report

            write_report(rt.run.path, cfg)


def load_vectors(rt: Runtime[BehavioursConfig]) -> dict[str, SteeringVector]:
    """The run's vectors (built once, then read from ``vectors/``)."""
    from steerlab.vectors import SteeringVector

    vdir = rt.run.path / "vectors"
    index = vdir / "index.json"
    if not index.is_file():
        built = rt.call(_build_vectors, rt.cfg)
        vdir.mkdir(exist_ok=True)
        for name, vec in built.items():
            vec.save(vdir / f"{name}.safetensors")
        atomic_write_text(index, json.dumps({"vectors": list(built)}) + "\n")
        logger.info("vectors: %s at every layer", ", ".join(built))
    names = rt.run.read_json("vectors/index.json")["vectors"]
    return {n: SteeringVector.load(vdir / f"{n}.safetensors") for n in names}


def layers_of(rt: Runtime[BehavioursConfig]) -> list[int]:
    return rt.cfg.resolved_layers(int(rt.info["n_layers"]))


def _grid(
    item_ids: Sequence[str], condition: str, layers: Sequence[int], cfg: BehavioursConfig
) -> list[BRow]:
    rows = [BRow(i, condition) for i in item_ids]
    steered = [m for m in cfg.multipliers if m != 0.0]
    rows += [BRow(i, condition, layer, m) for i in item_ids for layer in layers for m in steered]
    return rows


def score_rows(rt: Runtime[BehavioursConfig]) -> list[BRow]:
    data = data_of(rt.cfg)
    ids = [i.id for b in data.behaviours for i in data.split(b, "test")]
    return _grid(ids, BASE, layers_of(rt), rt.cfg)


def best_layers(rt: Runtime[BehavioursConfig]) -> dict[str, int]:
    """Per behaviour, the layer of highest steerability on the unshifted test items."""
    return metrics.best_layers(stage_results(rt.run.path, "scores"))


def shift_rows(rt: Runtime[BehavioursConfig]) -> list[BRow]:
    cfg = rt.cfg
    data = data_of(cfg)
    best = best_layers(rt)
    rows: list[BRow] = []
    for condition in cfg.shifts:
        for name in data.behaviours:
            items = data.split(name, "test")
            if condition == "swapped":
                items = [i for i in items if i.swapped() is not None]
            layers = layers_of(rt) if cfg.shift_layers == "all" else [best[name]]
            rows += _grid([i.id for i in items], condition, layers, cfg)
    return rows


def open_rows(rt: Runtime[BehavioursConfig]) -> list[ORow]:
    cfg = rt.cfg
    data = data_of(cfg)
    if not cfg.open_ended or not data.open_items:
        return []
    best = best_layers(rt)
    return [ORow(i.id, best[i.behaviour], m) for i in data.open_items for m in cfg.open_multipliers]


def judge_stage(rt: Runtime[BehavioursConfig]) -> None:
    """Score each open-ended answer 0-100 for its behaviour; without a judge, nothing."""
    cfg = rt.cfg
    if cfg.judge is None:
        return
    if not (rt.run.path / "parts" / "open-ended").is_dir():
        logger.warning("judge: no open-ended answers to judge (--no-open-ended, or no items)")
        return
    from steerlab.judge.client import Judge
    from steerlab.judge.scoring import fill

    df = stage_results(rt.run.path, "open-ended")
    data = data_of(cfg)
    prompts = [
        fill(
            JUDGE_TEMPLATE.replace("{behaviour}", data.info[b].description),
            q,
            a,
        )
        for b, q, a in zip(df["behaviour"], df["question"], df["answer"], strict=True)
    ]
    judge = Judge(judge_config(cfg.judge, rt.run.path / "judge_cache.jsonl"))
    results = judge.score_many(prompts, progress=rt.progress)
    out = df.copy()
    out["judge_score"] = [r.score for r in results]
    out["judge_kind"] = [r.kind for r in results]
    out["judge_model"] = cfg.judge.model
    with atomic_path(rt.run.path / JUDGE_FILE) as tmp:
        out.to_parquet(tmp, index=False)
    rt.run.update_json("manifest.json", judge={"url": cfg.judge.url, "model": cfg.judge.model})
