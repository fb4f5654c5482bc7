"""The jobs behind ``steerlab build-vector`` and ``steerlab generate``: read inputs, call the core,
write outputs atomically. The CLI only parses options and calls these."""

from __future__ import annotations

import itertools
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from steerlab import directions
from steerlab._util.io import atomic_write_text
from steerlab._util.jsonl import JsonlError, read_field, read_jsonl, write_jsonl
from steerlab._util.resources import local_path, resolve
from steerlab.directions.base import BuildResult
from steerlab.engine.generate import (
    GenerationConfig,
    Row,
    check_fits,
    check_prompt_length,
    generate,
)
from steerlab.errors import SteerlabError
from steerlab.interventions import Intervention
from steerlab.models import Model
from steerlab.vectors import SteeringVector

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class BuildSpec:
    """Inputs of ``build-vector``; which fields are needed depends on ``method``."""

    method: str
    layers: tuple[int, ...]
    hook_point: str = "resid_post"
    position: str | None = None
    positives: tuple[str, ...] = ()
    negatives: tuple[str, ...] = ()
    prompts_file: Path | None = None
    label_a: str | None = None
    label_b: str | None = None
    refusal_prefix: str | None = None
    compliance_prefix: str | None = None
    chat: bool | None = None
    batch_size: int = 16
    center: bool = False  # pca: centre the differences (repeng's pca_diff)
    sign: str = "mean"  # pca: "mean" or "vote" (repeng's majority of pairs)


def _pairs_from_file(path: Path) -> tuple[list[str], list[str]]:
    pos: list[str] = []
    neg: list[str] = []
    for n, obj in read_jsonl(path):
        for key, out in (("positive", pos), ("negative", neg)):
            value = obj.get(key)
            if not isinstance(value, str) or not value.strip():
                raise JsonlError(f"{path}:{n}: field {key!r} must be a non-empty string")
            out.append(value)
    return pos, neg


def _labeled_from_file(
    path: Path, label_a: str | None, label_b: str | None
) -> tuple[list[str], list[str]]:
    if label_a is None:
        raise SteerlabError(
            "--method labeled needs --label-a (the class the vector points towards); "
            "an implicit choice is how sign errors happen"
        )
    a, b = [], []
    for n, obj in read_jsonl(path):
        text = obj.get("text", obj.get("prompt"))
        if not isinstance(text, str) or not text.strip():
            raise JsonlError(f"{path}:{n}: field 'text' must be a non-empty string")
        if "label" not in obj:
            raise JsonlError(f"{path}:{n}: missing field 'label'")
        label = str(obj["label"])
        if label == label_a:
            a.append(text)
        elif label_b is None or label == label_b:
            b.append(text)
    if not a or not b:
        raise SteerlabError(
            f"{path}: label {label_a!r} has {len(a)} texts and the other class {len(b)}; "
            "both need at least one"
        )
    return a, b


def build_vector(model: Model, spec: BuildSpec) -> BuildResult:
    """Dispatch to the chosen construction method."""
    common: dict[str, Any] = {"hook_point": spec.hook_point}
    if spec.chat is not None:
        common["chat"] = spec.chat
    if spec.position is not None:
        common["position"] = spec.position
    m = spec.method
    if m != "pca" and (spec.center or spec.sign != "mean"):
        raise SteerlabError(f"--center and --sign are options of --method pca, not {m}")
    for flag, given in (("--positive", spec.positives), ("--negative", spec.negatives)):
        for i, text in enumerate(given, start=1):
            if not text.strip():
                raise SteerlabError(f"{flag} prompt {i} is empty")
    if m in ("contrast", "pca"):
        pos, neg = list(spec.positives), list(spec.negatives)
        if spec.prompts_file is not None:
            fpos, fneg = _pairs_from_file(spec.prompts_file)
            pos, neg = pos + fpos, neg + fneg
        if m == "pca":
            if spec.sign not in directions.SIGN_RULES:
                raise SteerlabError(
                    f"--sign {spec.sign!r}: use one of {', '.join(directions.SIGN_RULES)}"
                )
            common.update(center=spec.center, sign=spec.sign)
            return directions.pca(
                model, pos, neg, spec.layers, batch_size=spec.batch_size, **common
            )
        return directions.contrast(
            model, pos, neg, spec.layers, batch_size=spec.batch_size, **common
        )
    if m == "single":
        texts = list(spec.positives)
        if len(texts) != 1:
            raise SteerlabError("--method single needs exactly one --positive TEXT")
        return directions.single(model, texts[0], spec.layers, **common)
    if m == "forced-prefix":
        if spec.prompts_file is None:
            raise SteerlabError("--method forced-prefix needs --prompts FILE.jsonl")
        with local_path("prompts", resolve("prompts", spec.prompts_file)) as path:
            prompts = read_field(path, "prompt", "text")
        extra: dict[str, Any] = {
            k: v
            for k, v in (
                ("refusal_prefix", spec.refusal_prefix),
                ("compliance_prefix", spec.compliance_prefix),
            )
            if v is not None
        }
        return directions.forced_prefix(
            model, prompts, spec.layers, batch_size=spec.batch_size, **extra, **common
        )
    if m == "labeled":
        if spec.prompts_file is None:
            raise SteerlabError("--method labeled needs --prompts FILE.jsonl with text and label")
        a, b = _labeled_from_file(spec.prompts_file, spec.label_a, spec.label_b)
        return directions.labeled(model, a, b, spec.layers, batch_size=spec.batch_size, **common)
    raise SteerlabError(f"unknown method {m!r}: use one of {', '.join(directions.METHODS)}")


def save_build(result: BuildResult, out: Path) -> Path:
    """Write the vector and a ``<out>.stats.json`` beside it (both atomically)."""
    result.vector.save(out)
    stats_path = out.with_suffix(".stats.json")
    atomic_write_text(stats_path, json.dumps(result.stats_dict(), indent=2) + "\n")
    return stats_path


@dataclass(frozen=True)
class SteerSpec:
    """Steering options of ``generate``: every (layer, alpha) pair becomes one setting."""

    vector: Path | None = None
    layers: tuple[int, ...] = ()
    alphas: tuple[float, ...] = (1.0,)
    kind: str = "add"
    positions: str = "all"
    scale: str = "absolute"
    hook_point: str | None = None


def read_prompts_for_generate(path: Path) -> list[tuple[str, str]]:
    """``(id, prompt)`` per line of a JSONL file or shipped prompt set; ids default to
    ``line<N>``."""
    out = []
    with local_path("prompts", resolve("prompts", path)) as file:
        lines = read_jsonl(file)
    for n, obj in lines:
        text = obj.get("prompt", obj.get("text"))
        if not isinstance(text, str) or not text.strip():
            raise JsonlError(f"{path}:{n}: field 'prompt' must be a non-empty string")
        out.append((str(obj.get("id", f"line{n}")), text))
    return out


def check_prompts(prompts: Sequence[tuple[str, str]]) -> set[str]:
    """Refuse empty prompts (naming which); return the ids that occur more than once, after
    one warning (their rows are marked ``duplicate_id`` in the output)."""
    seen: set[str] = set()
    dup: set[str] = set()
    for pid, text in prompts:
        if not text.strip():
            raise SteerlabError(f"prompt {pid!r} is empty")
        (dup if pid in seen else seen).add(pid)
    if dup:
        logger.warning(
            "%d prompt id(s) occur more than once (e.g. %r); their rows are marked duplicate_id",
            len(dup),
            sorted(dup)[0],
        )
    return dup


def run_generate(
    model: Model,
    prompts: Sequence[tuple[str, str]],
    steer: SteerSpec,
    config: GenerationConfig,
    seed: int,
    out: Path,
    chat: bool = True,
    system: str | None = None,
    progress: bool = True,
) -> int:
    """Generate every prompt under every steering setting; write one JSONL line per row."""
    if out.is_dir():  # found now, not after generating
        raise SteerlabError(f"{out} is a directory; -o needs a file path")
    dup = check_prompts(prompts)
    settings: list[dict[str, Any]] = [{}]
    ivs: list[tuple[Intervention, ...]] = [()]
    if steer.vector is not None:
        vec = SteeringVector.load(steer.vector, d_model=model.d_model)
        layers = steer.layers or vec.layers
        settings, ivs = [], []
        for layer, alpha in itertools.product(layers, steer.alphas):
            model.check_layer(layer)
            src = layer if layer in vec.directions else None
            if src is None and len(vec.layers) != 1:
                raise SteerlabError(
                    f"the vector has no direction for layer {layer} (it has {list(vec.layers)})"
                )
            iv = Intervention(
                vec,
                layer,
                steer.kind,
                alpha,
                steer.hook_point,
                steer.positions,
                steer.scale,
                source_layer=None if src is not None else vec.layers[0],
            )
            ivs.append((iv,))
            settings.append(
                {
                    "layer": layer,
                    "alpha": alpha,
                    "intervention": steer.kind,
                    "positions": steer.positions,
                    "scale": steer.scale,
                    "hook_point": iv.point,
                    # provenance: a vector built on another model warns once and shows here
                    "vector_model_id": vec.model_id,
                }
            )
    elif steer.layers:
        raise SteerlabError("--layer needs --vector")
    formatted = {}
    for pid, text in prompts:
        where = f"prompt {pid!r}"
        check_prompt_length(model, text, config.max_new_tokens, where)  # cheap, before tokenizing
        formatted[text] = model.format_prompt(text, system=system, chat=chat)
        check_fits(model, len(model.encode(formatted[text])), config.max_new_tokens, where)
    rows, meta = [], []
    for (pid, text), (setting, iv) in itertools.product(prompts, zip(settings, ivs, strict=True)):
        rows.append(Row(formatted[text], iv, seed=seed))
        meta.append(
            {"id": pid, "prompt": text, **setting, **({"duplicate_id": True} if pid in dup else {})}
        )
    results = generate(model, rows, config, progress=progress)
    write_jsonl(
        out,
        (
            {
                **m,
                "seed": seed,
                "text": r.text,
                "token_ids": list(r.token_ids),
                "logprobs": r.logprobs,
                "entropies": r.entropies,
                "finish_reason": r.finish_reason,
            }
            for m, r in zip(meta, results, strict=True)
        ),
    )
    return len(rows)
