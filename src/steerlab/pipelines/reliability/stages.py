"""The stages of ``steerlab run``: prompts -> baseline -> directions -> sign check -> sweep ->
sanity -> report. Each reads and writes the same run directory and can run on its own.

Every generated row goes through the core engine with its own steering setting, so a whole
layer x intervention x α grid runs as per-row settings inside shared batches. α = 0 is generated
once (the baseline stage) and reused for every (layer, intervention) cell.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from steerlab._util.io import atomic_path, atomic_write_text
from steerlab._util.resources import local_path
from steerlab.directions import forced_prefix
from steerlab.directions.base import BuildResult
from steerlab.directions.outcome import outcome_conditioned
from steerlab.engine.generate import GenerationConfig, Row, generate
from steerlab.errors import SteerlabError
from steerlab.interventions import Intervention
from steerlab.metrics import confound_metrics, helpfulness_score, refusal_score
from steerlab.models import Model
from steerlab.pipelines.reliability.config import PipelineConfig, default_layers
from steerlab.pipelines.reliability.sign import layer_sign, log_sign_warnings
from steerlab.pipelines.reliability.store import RunDir, WorkRow
from steerlab.runs.runner import Runtime
from steerlab.tasks.prompts import PromptRow, read_prompts, write_prompts
from steerlab.vectors import SteeringVector

logger = logging.getLogger(__name__)
SPLITS = ("harm_train", "harm_test", "benign")


@dataclass
class Context:
    """What every stage needs: the framework's runtime (config, run directory, executor holding
    the loaded model, the model's description) and the chosen layers."""

    rt: Runtime[PipelineConfig]

    @property
    def cfg(self) -> PipelineConfig:
        return self.rt.cfg

    @property
    def run(self) -> RunDir:
        run = self.rt.run
        assert isinstance(run, RunDir)
        return run

    @property
    def progress(self) -> bool:
        return self.rt.progress

    @property
    def layers(self) -> list[int]:
        return chosen_layers(self.cfg, int(self.rt.info["n_layers"]))


def chosen_layers(cfg: PipelineConfig, n_layers: int) -> list[int]:
    """``experiment.layers`` (each checked against the model) or the default spread by depth."""
    layers = cfg.experiment.layers or default_layers(n_layers)
    for layer in layers:
        if not 0 <= layer < n_layers:
            raise SteerlabError(
                f"experiment.layers: {layer} is out of range: {cfg.model.name} has {n_layers} "
                f"layers (valid: 0..{n_layers - 1})"
            )
    return sorted(set(layers))


# ----------------------------------------------------------------------------- prompts


def snapshot_prompts(ctx: Context) -> dict[str, list[PromptRow]]:
    """Copy the prompt sets into the run directory once; later stages read the snapshot."""
    out: dict[str, list[PromptRow]] = {}
    paths = {
        "harm_train": ctx.cfg.data.harm_train_path,
        "harm_test": ctx.cfg.data.harm_test_path,
        "benign": ctx.cfg.data.benign_path,
    }
    limit = ctx.cfg.data.max_prompts_per_split
    for split, src in paths.items():
        snap = ctx.run.path / "prompts" / f"{split}.jsonl"
        if snap.is_file():
            out[split] = read_prompts(snap)
            continue
        with local_path("prompts", src) as path:
            rows = read_prompts(path)[:limit]
        write_prompts(rows, snap)
        out[split] = rows
    return out


def _work(
    stage: str,
    split: str,
    p: PromptRow,
    layer: int,
    kind: str,
    alpha: float,
    direction: str,
    seed: int,
) -> WorkRow:
    return WorkRow(
        stage=stage,
        split=split,
        prompt_id=p.id,
        prompt=p.prompt,
        family=p.meta.get("family", "unknown"),
        style=p.meta.get("style", "unknown"),
        template=p.meta.get("template", "unknown"),
        layer=layer,
        intervention=kind,
        alpha=float(alpha),
        direction=direction,
        seed=seed,
    )


def sign_holdout(ctx: Context, prompts: dict[str, list[PromptRow]]) -> list[PromptRow]:
    """Held-out harm_train prompts for the sign check (not used to build the direction)."""
    train = prompts["harm_train"]
    n = min(ctx.cfg.sanity_checks.sign_check_n, max(1, len(train) // 4))
    return train[-n:]


# ----------------------------------------------------------------------------- generation


@dataclass(frozen=True)
class Generate:
    """Turns a shard of work rows into scored result rows with the core engine, on a worker.
    Picklable: it carries the config and the steering vectors, not the run directory."""

    cfg: PipelineConfig
    vectors: dict[tuple[str, int], SteeringVector] = field(default_factory=dict)

    def interventions(self, w: WorkRow) -> tuple[Intervention, ...]:
        if w.intervention == "none":
            return ()
        e = self.cfg.experiment
        return (
            Intervention(
                self.vectors[(w.direction, w.layer)],
                w.layer,
                w.intervention,
                w.alpha,
                positions=e.positions,
                scale=e.scale,
            ),
        )

    def __call__(
        self, model: Model, rows: Sequence[WorkRow], progress: Callable[[int], object]
    ) -> pd.DataFrame:
        cfg = self.cfg
        g = cfg.generation
        gen_cfg = GenerationConfig(
            max_new_tokens=g.max_new_tokens,
            temperature=g.temperature,
            top_p=g.top_p,
            batch_size=g.batch_size,
        )
        reqs = [
            Row(
                model.format_prompt(w.prompt, system=cfg.model.system, chat=cfg.model.chat),
                self.interventions(w),
                seed=w.row_seed(),
            )
            for w in rows
        ]
        results = generate(model, reqs, gen_cfg, progress=False, on_rows=progress)
        return pd.DataFrame([score_row(cfg, w, r) for w, r in zip(rows, results, strict=True)])


def load_vectors(ctx: Context, rows: Sequence[WorkRow]) -> dict[tuple[str, int], SteeringVector]:
    """The direction files the steered rows use, read on the driver (workers need no access to
    the run directory)."""
    out = {}
    d_model = int(ctx.rt.info["d_model"])
    for key in sorted({(w.direction, w.layer) for w in rows if w.intervention != "none"}):
        path = ctx.run.direction_path(key[1], key[0])
        if not path.is_file():
            raise SteerlabError(f"{path} is missing: run `steerlab build-directions` first")
        out[key] = SteeringVector.load(path, d_model=d_model)
    return out


def score_row(cfg: PipelineConfig, w: WorkRow, r: Any) -> dict[str, Any]:
    m = cfg.metrics
    ref = refusal_score(r.text, threshold=m.refusal_threshold)
    helpful = helpfulness_score(r.text, refusal=ref, threshold=m.helpful_threshold)
    conf = confound_metrics(r.text, list(r.token_ids), list(r.logprobs), list(r.entropies))
    return {
        "stage": w.stage,
        "split": w.split,
        "prompt_id": w.prompt_id,
        "prompt": w.prompt,
        "family": w.family,
        "style": w.style,
        "template": w.template,
        "layer": w.layer,
        "intervention": w.intervention,
        "alpha": w.alpha,
        "scale": cfg.experiment.scale,
        "direction": w.direction,
        "seed": w.seed,
        "row_seed": w.row_seed(),
        "shared_baseline": False,
        "text": r.text,
        "n_tokens": len(r.token_ids),
        "finish_reason": r.finish_reason,
        "refusal_score": ref.score,
        "is_refusal": ref.is_refusal,
        "matched_refusal": list(ref.matched_refusal),
        "matched_compliance": list(ref.matched_compliance),
        "helpfulness_score": helpful.score,
        # a completion the pipeline flags as gibberish is not helpful, however it is laid out
        "is_helpful": helpful.is_helpful and not conf.is_gibberish,
        "looks_helpful": helpful.is_helpful,
        "n_words": helpful.n_words,
        "has_steps": helpful.has_steps,
        "has_bullets": helpful.has_bullets,
        "has_code": helpful.has_code,
        "mean_entropy": conf.mean_entropy,
        "mean_logprob": conf.mean_logprob,
        "distinct_1": conf.distinct_1,
        "distinct_2": conf.distinct_2,
        "repetition_rate": conf.repetition_rate,
        "is_gibberish": conf.is_gibberish,
        "gibberish_flags": list(conf.gibberish_flags),
    }


def _run_rows(ctx: Context, stage: str, rows: list[WorkRow]) -> int:
    size = ctx.cfg.experiment.shard_size
    if not ctx.rt.pending(stage, rows, size):  # complete: no direction files needed
        return ctx.rt.map(stage, rows, Generate(ctx.cfg), size)
    return ctx.rt.map(stage, rows, Generate(ctx.cfg, load_vectors(ctx, rows)), size)


# ----------------------------------------------------------------------------- stages


def baseline_rows(ctx: Context, prompts: dict[str, list[PromptRow]]) -> list[WorkRow]:
    seed = ctx.cfg.generation.seed
    return [
        _work("baseline", s, p, -1, "none", 0.0, "none", seed) for s in SPLITS for p in prompts[s]
    ]


def run_baseline(ctx: Context) -> int:
    return _run_rows(ctx, "baseline", baseline_rows(ctx, snapshot_prompts(ctx)))


def _forced_prefix_job(model: Model, kwargs: dict[str, Any]) -> BuildResult:
    """Runs on a worker: the forced-prefix builder on the worker's model."""
    return forced_prefix(model, **kwargs)


def _outcome_job(model: Model, kwargs: dict[str, Any]) -> BuildResult:
    """Runs on a worker: the outcome-conditioned builder on the worker's model."""
    return outcome_conditioned(model, **kwargs)


def _outcome_examples(ctx: Context, held: set[str]) -> dict[str, Any]:
    """Building prompts with their baseline completion labeled refusal (True) or helpful
    (False); completions that are neither are left out."""
    base = ctx.run.load_stage("baseline")
    if base.empty or ctx.rt.pending(
        "baseline", baseline_rows(ctx, snapshot_prompts(ctx)), ctx.cfg.experiment.shard_size
    ):
        raise SteerlabError(
            "direction.method outcome_conditioned labels the baseline's completions: run "
            "`steerlab baseline` to completion first"
        )
    rows = base[(base.split == "harm_train") & ~base.prompt_id.isin(held)]
    rows = rows[rows.is_refusal | rows.is_helpful]
    return {
        "prompts": rows.prompt.tolist(),
        "completions": rows.text.tolist(),
        "refused": [bool(x) for x in rows.is_refusal],
    }


def _build(ctx: Context, train: list[str], layers: list[int], main: bool) -> BuildResult:
    """The main direction (``direction.method``) or the alt-prefix one of the template check."""
    d, sc = ctx.cfg.direction, ctx.cfg.sanity_checks
    common: dict[str, Any] = {
        "layers": layers,
        "hook_point": d.hook_point,
        "chat": ctx.cfg.model.chat,
        "system": ctx.cfg.model.system,
        "batch_size": d.batch_size,
        "progress": ctx.progress and ctx.rt.local,
    }
    if main and d.method == "outcome_conditioned":
        held = {p.id for p in sign_holdout(ctx, snapshot_prompts(ctx))}
        kwargs = {
            **common,
            **_outcome_examples(ctx, held),
            "position": d.outcome_position,
            "min_per_class": d.min_per_class,
        }
        result: BuildResult = ctx.rt.call(_outcome_job, kwargs)
        return result
    prefixes = (
        (d.refusal_prefix, d.compliance_prefix)
        if main
        else (sc.alt_prefixes.refusal_prefix, sc.alt_prefixes.compliance_prefix)
    )
    kwargs = {
        **common,
        "prompts": train,
        "refusal_prefix": prefixes[0],
        "compliance_prefix": prefixes[1],
        "position": d.token_position,
    }
    result = ctx.rt.call(_forced_prefix_job, kwargs)
    return result


def build_directions(ctx: Context) -> dict[int, dict[str, Any]]:
    """The direction per layer (``direction.method``) from harm_train minus the sign-check
    hold-out."""
    prompts = snapshot_prompts(ctx)
    held = {p.id for p in sign_holdout(ctx, prompts)}
    train = [p.prompt for p in prompts["harm_train"] if p.id not in held]
    todo = [L for L in ctx.layers if not ctx.run.direction_path(L).is_file()]
    stats: dict[int, dict[str, Any]] = {}
    if todo:
        t0 = time.perf_counter()
        built = _build(ctx, train, todo, main=True)
        for layer in todo:
            single = SteeringVector(
                directions={layer: built.vector.direction(layer)},
                **{
                    k: getattr(built.vector, k)
                    for k in ("hook_point", "method", "model_id", "prompts_hash", "extra")
                },
                raw_norm={layer: built.vector.raw_norm[layer]},
                mean_resid_norm={layer: built.vector.mean_resid_norm[layer]},
            )
            single.save(ctx.run.direction_path(layer))
            atomic_write_text(
                ctx.run.direction_path(layer).with_suffix(".stats.json"),
                json.dumps(built.stats[layer].as_dict(), indent=2) + "\n",
            )
        ctx.run.record_stage(
            "build-directions", time.perf_counter() - t0, layers=todo, method=built.vector.method
        )
    for layer in ctx.layers:
        v = SteeringVector.load(ctx.run.direction_path(layer))
        s = v.extra.get("stats", {}).get(str(layer), {})
        stats[layer] = {
            "method": v.method,
            "raw_norm": v.raw_norm.get(layer),
            "mean_resid_norm": v.mean_resid_norm.get(layer),
            "batch_cosines": s.get("batch_cosines", []),
            "n": s.get("n"),
        }
        for key in ("n_refusal", "n_helpful", "n_skipped"):
            if key in v.extra:
                stats[layer][key] = v.extra[key]
    ctx.run.update_json("sanity.json", directions={str(k): v for k, v in stats.items()})
    return stats


def sweep_rows(ctx: Context, prompts: dict[str, list[PromptRow]]) -> list[WorkRow]:
    e, seed = ctx.cfg.experiment, ctx.cfg.generation.seed
    return [
        _work("sweep", s, p, layer, kind, a, "main", seed)
        for layer in ctx.layers
        for kind in e.interventions
        for a in e.alphas
        if a != 0
        for s in SPLITS
        for p in prompts[s]
    ]


def run_sign_check(ctx: Context) -> dict[str, Any]:
    """Before the sweep: does +α raise the refusal score on held-out prompts, per layer, by more
    than noise? (:mod:`.sign`: raised, lowered or not shown.)"""
    prompts = snapshot_prompts(ctx)
    held = sign_holdout(ctx, prompts)
    alpha, seed = ctx.cfg.sanity_checks.alpha, ctx.cfg.generation.seed
    rows = [
        _work("sign_check", "harm_train", p, layer, "add", alpha, "main", seed)
        for layer in ctx.layers
        for p in held
    ]
    _run_rows(ctx, "sign_check", rows)
    steered = ctx.run.load_stage("sign_check")
    base = ctx.run.load_stage("baseline")
    if base.empty:
        raise SteerlabError("run `steerlab baseline` before the sign check")
    ids = {p.id for p in held}
    base = base[(base.split == "harm_train") & base.prompt_id.isin(ids)]
    n_boot = ctx.cfg.metrics.n_boot
    per_layer = {
        str(layer): layer_sign(steered[steered.layer == layer], base, n_boot=n_boot)
        for layer in ctx.layers
    }
    log_sign_warnings(per_layer, alpha, logger)
    result = {"alpha": alpha, "n": len(held), "per_layer": per_layer}
    ctx.run.update_json("sanity.json", sign_check=result)
    return result


def run_sweep(ctx: Context) -> int:
    return _run_rows(ctx, "sweep", sweep_rows(ctx, snapshot_prompts(ctx)))


def run_sanity(ctx: Context) -> dict[str, Any]:
    """Template robustness (alt prefixes) and seed robustness (alt sampling seed)."""
    sc = ctx.cfg.sanity_checks
    if not sc.enabled:
        return {}
    prompts = snapshot_prompts(ctx)
    held = {p.id for p in sign_holdout(ctx, prompts)}
    train = [p.prompt for p in prompts["harm_train"] if p.id not in held]
    todo = [L for L in ctx.layers if not ctx.run.direction_path(L, "alt").is_file()]
    if todo:
        built = _build(ctx, train, todo, main=False)
        for layer in todo:
            built.vector.save(ctx.run.direction_path(layer, "alt"))
    cosine = {}
    for layer in ctx.layers:
        main = SteeringVector.load(ctx.run.direction_path(layer))
        alt = SteeringVector.load(ctx.run.direction_path(layer, "alt"))
        cosine[str(layer)] = main.cosine(alt, layer)
    n, seed = sc.rerun_subset_n, ctx.cfg.generation.seed
    rows = [
        _work("sanity_template", s, p, layer, "add", sc.alpha, "alt", seed)
        for layer in ctx.layers
        for s in ("harm_test", "benign")
        for p in prompts[s][:n]
    ]
    _run_rows(ctx, "sanity_template", rows)
    seed_rows = [
        _work("sanity_seed", s, p, -1, "none", 0.0, "none", sc.alt_seed)
        for s in SPLITS
        for p in prompts[s][:n]
    ]
    seed_rows += [
        _work("sanity_seed", s, p, layer, "add", sc.alpha, "main", sc.alt_seed)
        for layer in ctx.layers
        for s in SPLITS
        for p in prompts[s][:n]
    ]
    _run_rows(ctx, "sanity_seed", seed_rows)
    info = {
        "template": {
            # the alt direction is always forced-prefix with the alt prefixes; with
            # direction.method outcome_conditioned its cosine compares the two methods
            "main_method": ctx.cfg.direction.method,
            "alpha": sc.alpha,
            "cosine": cosine,
            "refusal_prefix": sc.alt_prefixes.refusal_prefix,
            "compliance_prefix": sc.alt_prefixes.compliance_prefix,
        },
        "seed": {"alt_seed": sc.alt_seed, "base_seed": seed, "subset_n": n, "alpha": sc.alpha},
    }
    ctx.run.update_json("sanity.json", **info)
    return info


def assemble_results(run: RunDir, cfg: PipelineConfig, layers: Sequence[int]) -> pd.DataFrame:
    """All stages in one table, α = 0 baseline rows copied into every (layer, kind) cell."""
    base = run.load_stage("baseline")
    if base.empty:
        raise SteerlabError("no baseline results: run `steerlab baseline` first")
    frames = [base]
    if 0.0 in [float(a) for a in cfg.experiment.alphas]:
        for layer in layers:
            for kind in cfg.experiment.interventions:
                copy = base.copy()
                copy["stage"], copy["layer"], copy["intervention"] = "sweep", layer, kind
                copy["direction"], copy["shared_baseline"] = "main", True
                frames.append(copy)
    for stage in ("sweep", "sign_check", "sanity_template", "sanity_seed"):
        df = run.load_stage(stage)
        if not df.empty:
            frames.append(df)
    results = pd.concat(frames, ignore_index=True)
    results.insert(0, "run_id", run.path.name)
    with atomic_path(run.path / "results.parquet") as tmp:
        results.to_parquet(tmp, index=False)
    return results
