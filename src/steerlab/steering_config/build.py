"""Building a steering config on a model: every vector becomes one
:class:`~steerlab.interventions.Intervention`, with what was resolved for it (norms, scale, the
exact size added, and one sentence saying what it does)."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

import torch

from steerlab.directions import contrast, labeled, pca, record, single
from steerlab.errors import SteerlabError
from steerlab.interventions import Intervention
from steerlab.sites import parse_point
from steerlab.steering_config.load import check_against_model, load_vector
from steerlab.steering_config.spec import SteeringConfigError, SteeringConfigFile, VectorSpec
from steerlab.vectors import SteeringVector

if TYPE_CHECKING:
    from steerlab.models import Model

logger = logging.getLogger(__name__)

#: |cosine| between a ``mean``-position vector and the first token's activation above which
#: :func:`build_steering` warns that the vector mostly encodes the first token.
FIRST_TOKEN_WARN = 0.5


@dataclass(frozen=True)
class ResolvedVector:
    """One config vector, built: its intervention and what was resolved (see ``info`` keys in
    :func:`build_steering`)."""

    name: str
    intervention: Intervention
    info: Mapping[str, Any]

    @property
    def meaning(self) -> str:
        return str(self.info["meaning"])

    @property
    def applied_norm(self) -> float | None:
        """Exact norm ``add`` adds to the residual at each steered token (None otherwise)."""
        value = self.info["applied_norm"]
        return None if value is None else float(value)


@dataclass(frozen=True)
class ResolvedSteering:
    """Every vector of a config, built for one model; they apply together."""

    vectors: tuple[ResolvedVector, ...]
    config: SteeringConfigFile
    model: str
    chat: bool

    @property
    def interventions(self) -> tuple[Intervention, ...]:
        """All interventions, in config order (empty for the baseline)."""
        return tuple(v.intervention for v in self.vectors)

    def __getitem__(self, name: str) -> ResolvedVector:
        """The vector called ``name``."""
        for v in self.vectors:
            if v.name == name:
                return v
        raise KeyError(name)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able record to save next to results: the config as validated, the model, and
        each vector's resolved numbers and meaning."""
        return {
            "source": self.config.source,
            "model": self.model,
            "chat": self.chat,
            "config": self.config.model_dump(mode="json"),
            "vectors": [dict(v.info) for v in self.vectors],
        }


def build_steering(
    model: Model, cfg: SteeringConfigFile, *, chat: bool = False, progress: bool = False
) -> ResolvedSteering:
    """Build every vector of ``cfg`` on ``model`` and turn each into an intervention.

    Prompts are formatted with ``model.format_prompt(text, chat=chat)`` (plain text by default,
    as the vectors' prompts are statements, not requests). Vectors sharing prompts, method, hook
    point and position are built from one recording, at all their layers at once (position
    ``mean`` adds one short pass reading the prompts' first tokens, for ``first_token_cosine``).

    Each vector's ``info``: ``name``, ``meaning`` (one sentence), ``method``, ``position``,
    ``vector_file``, ``layer``, ``hook`` (site name), ``intervention``, ``positions``,
    ``coefficient``, ``normalize``, ``scale``, ``raw_norm`` (the built vector's norm at the
    layer), ``mean_resid_norm`` (mean residual norm there over the construction prompts, None if
    the vector does not record it), ``unit_size`` (the scale factor: 1, the raw norm, or the mean
    residual norm), ``applied_norm`` (``add``: |coefficient| x unit_size, the exact norm added
    per steered token; None for ablate / clamp), ``target_projection`` (clamp only) and
    ``first_token_cosine`` (position ``mean`` only: cosine to the mean first-token activation of
    the prompts; near ±1 means the vector encodes the first token, see
    :mod:`steerlab.steering_config`).
    """
    check_against_model(cfg, model.n_layers)
    where = cfg.source
    groups: dict[tuple[Any, ...], list[int]] = {}
    for i, spec in enumerate(cfg.vectors):
        if spec.vector_file is None:
            groups.setdefault(_group_key(spec), []).append(i)
    built: dict[tuple[Any, ...], tuple[SteeringVector, dict[int, float] | None]] = {}
    for key, members in groups.items():
        layers = sorted({cfg.vectors[i].layer for i in members})
        try:
            built[key] = _build_group(model, key, layers, chat, progress)
        except SteerlabError as e:
            names = ", ".join(cfg.label(i) for i in members)
            raise SteeringConfigError(f"{where}: {names}: {e}") from e
    out = []
    for i, spec in enumerate(cfg.vectors):
        label = f"{where}: {cfg.label(i)}"
        cos: float | None = None
        if spec.vector_file is not None:
            vec = load_vector(spec.vector_file, f"{label}: vector_file", model.d_model)
        else:
            group_vec, first = built[_group_key(spec)]
            vec = _at_layer(group_vec, spec.layer)
            if first is not None:
                cos = first[spec.layer]
        try:
            iv = Intervention(
                vec,
                layer=spec.layer,
                kind=spec.intervention,
                alpha=float(spec.coefficient),
                hook_point=spec.hook,
                positions=spec.positions,
                scale=spec.applied_scale,
            )
            model.backend.check_site(iv.site)
        except SteerlabError as e:
            raise SteeringConfigError(f"{label}: {e}") from e
        info = _info(spec, iv, cos)
        if cos is not None and abs(cos) > FIRST_TOKEN_WARN:
            logger.warning(
                "%s: the vector's direction has cosine %.2f with the prompts' first-token "
                "activation at layer %d: with position 'mean' it mostly encodes the first "
                "token (an attention sink), not what the prompts say; use position: last, or "
                "prompts of equal token length",
                label,
                cos,
                spec.layer,
            )
        out.append(ResolvedVector(spec.name, iv, MappingProxyType(info)))
    return ResolvedSteering(tuple(out), cfg, model.name, chat)


def _group_key(spec: VectorSpec) -> tuple[Any, ...]:
    return (
        spec.built_by,
        spec.positives,
        spec.negatives,
        parse_point(spec.hook or "resid_post")[1],
        spec.read_at,
    )


def _build_group(
    model: Model, key: tuple[Any, ...], layers: Sequence[int], chat: bool, progress: bool
) -> tuple[SteeringVector, dict[int, float] | None]:
    """One builder call for every layer of a group, plus (position ``mean``) each layer's
    cosine to the mean first-token activation of the group's prompts."""
    method, pos, neg, point, position = key
    if method == "contrast":
        res = contrast(
            model, list(pos), list(neg), layers, point, position, chat, progress=progress
        )
    elif method == "labeled":
        res = labeled(model, list(pos), list(neg), layers, point, position, chat, progress=progress)
    elif method == "pca":
        res = pca(model, list(pos), list(neg), layers, point, position, chat, progress=progress)
    elif method == "single":
        res = single(model, pos[0], layers, point, position, chat)
    else:  # validation admits only the methods above
        raise AssertionError(method)
    vec = res.vector
    if position != "mean":
        return vec, None
    texts = [*pos, *(neg or ())]
    seqs = [model.encode(model.format_prompt(t, chat=chat)) for t in texts]
    rec = record(model, seqs, [[0]] * len(seqs), layers, point, desc="first tokens")
    cos = {
        layer: float(
            torch.nn.functional.cosine_similarity(
                vec.direction(layer), rec.acts[layer].mean(0), dim=0
            )
        )
        for layer in layers
    }
    return vec, cos


def _at_layer(vec: SteeringVector, layer: int) -> SteeringVector:
    """``vec`` reduced to its direction, norms and stats at ``layer``."""
    stats = vec.extra.get("stats")
    extra = dict(vec.extra)
    if isinstance(stats, Mapping) and str(layer) in stats:
        extra["stats"] = {str(layer): stats[str(layer)]}
    return replace(
        vec,
        directions={layer: vec.directions[layer]},
        raw_norm={k: v for k, v in vec.raw_norm.items() if k == layer},
        mean_resid_norm={k: v for k, v in vec.mean_resid_norm.items() if k == layer},
        extra=extra,
    )


_WHAT = {
    "contrast": "act(positive) - act(negative)",
    "labeled": "mean act(positive prompts) - mean act(negative prompts)",
    "pca": "the first principal component of act(positive) - act(negative), sized as the "
    "mean difference's projection on it",
    "single": "the activation of the positive prompt",
}


def _info(spec: VectorSpec, iv: Intervention, first_token_cosine: float | None) -> dict[str, Any]:
    vec = iv.vector
    raw = vec.norm(iv.src)
    resid = vec.mean_resid_norm.get(iv.src)
    unit = iv.scale_factor()
    c = float(spec.coefficient)
    applied = abs(c) * unit if iv.kind == "add" else None
    site = iv.site.name
    if spec.vector_file is not None:
        what = f"the vector in {spec.vector_file} (method {vec.method}, built on {vec.model_id})"
    else:
        read = "the mean over prompt tokens" if spec.read_at == "mean" else "the last prompt token"
        what = f"{_WHAT[spec.built_by]}, read at {read}"
    how = {
        "absolute": f"its unit direction x {c:g}",
        "diff": f"{c:g} x the vector itself (norm {raw:.4g})",
        "resid": f"its unit direction x {c:g} x the mean residual norm {resid or 0:.4g}",
    }[iv.scale]
    if iv.kind == "add":
        action = f"adds {how} = {applied:.4g} in residual units"
    elif iv.kind == "ablate":
        action = f"removes {c:g} x the residual's projection on its unit direction"
    else:
        action = f"sets the residual's projection on its unit direction to {c * unit:.4g}"
    if iv.kind == "ablate":
        why = "scale unused"
    elif spec.scale is not None:
        why = f"scale {iv.scale} as given"
    else:
        why = f"normalize: {str(spec.normalize).lower()}"
    context = f"; mean residual norm there {resid:.4g}" if resid is not None else ""
    meaning = (
        f"{action} at {site}, token positions {iv.positions} ({why}); the vector is {what}{context}"
    )
    return {
        "name": spec.name,
        "meaning": meaning,
        "method": spec.built_by,
        "position": None if spec.vector_file is not None else spec.read_at,
        "vector_file": spec.vector_file,
        "layer": spec.layer,
        "hook": site,
        "intervention": iv.kind,
        "positions": iv.positions,
        "coefficient": c,
        "normalize": spec.normalize,
        "scale": iv.scale,
        "raw_norm": raw,
        "mean_resid_norm": None if resid is None else float(resid),
        "unit_size": unit,
        "applied_norm": applied,
        "target_projection": c * unit if iv.kind == "clamp" else None,
        "first_token_cosine": first_token_cosine,
    }
