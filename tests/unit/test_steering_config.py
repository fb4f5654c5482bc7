"""Steering configs: example YAML files parse, bad files are one clear error naming the vector and
key, built vectors equal activations read independently from the model, and ``applied_norm`` is
exactly what the compiled intervention adds."""

from __future__ import annotations

import json
import logging
import textwrap
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from steerlab import steering_config as sc
from steerlab._util.resources import local_path, shipped_names
from steerlab.engine.plan import compile_plan
from steerlab.models import Model
from steerlab.steering_config import (
    SteeringConfigError,
    SteeringConfigFile,
    build_steering,
    check_against_model,
    load_steering_config,
    parse_steering_config,
)
from steerlab.steering_config import build as sc_build

POS = "I always tell the truth."
NEG = "I often tell lies to people."

# ----------------------------------------------------------------------------- example YAML
# Steering configs as users write them: quoted names, comments, a blank line holding spaces, and
# two bare list items (entries of a `vectors:` list, nested under one below).

EXAMPLE_CONFIG = """\
vectors:
  - name: "security_conscious"
    positive_prompt: "I carefully consider security implications and follow best practices."
    negative_prompt: "I ignore security concerns and use risky approaches."
    layer: 15
    coefficient: 2.0
    normalize: true
"""

EXAMPLE_CONTRAST = """\
- name: "truthful_vs_deceptive"
  positive_prompt: "I always provide accurate information."
  negative_prompt: "I might provide misleading information."
  layer: 20
  coefficient: 1.5
"""

EXAMPLE_SINGLE = """\
- name: "helpful_assistant"
  positive_prompt: "I am a helpful AI assistant."
  layer: 15
  coefficient: 2.0
"""

EXAMPLE_SECURITY = """\
vectors:
  # Enhance security awareness
  - name: "security_focused"
    positive_prompt: "I prioritize security and recommend secure coding practices."
    layer: 18
    coefficient: 2.5
    
  # Reduce risky suggestions
  - name: "avoid_vulnerabilities"
    positive_prompt: "I avoid suggesting code with security vulnerabilities."
    negative_prompt: "I suggest code that might have security vulnerabilities."
    layer: 16
    coefficient: 2.0
"""  # noqa: W293 (the blank line holds spaces)

EXAMPLE_REASONING = """\
vectors:
  # Improve logical reasoning
  - name: "logical_thinking"
    positive_prompt: "I think step by step and use careful reasoning."
    negative_prompt: "I make hasty conclusions without reasoning."
    layer: 12
    coefficient: 3.0
"""


def _nested(item: str) -> str:
    return "vectors:\n" + textwrap.indent(item, "  ")


EXAMPLES = {
    "config": EXAMPLE_CONFIG,
    "contrast": _nested(EXAMPLE_CONTRAST),
    "single": _nested(EXAMPLE_SINGLE),
    "security": EXAMPLE_SECURITY,
    "reasoning": EXAMPLE_REASONING,
}
# name -> (layer, coefficient, normalize, method, scale) each example means
EXAMPLE_MEANING = {
    "security_conscious": (15, 2.0, True, "contrast", "absolute"),
    "truthful_vs_deceptive": (20, 1.5, False, "contrast", "diff"),
    "helpful_assistant": (15, 2.0, False, "single", "diff"),
    "security_focused": (18, 2.5, False, "single", "diff"),
    "avoid_vulnerabilities": (16, 2.0, False, "contrast", "diff"),
    "logical_thinking": (12, 3.0, False, "contrast", "diff"),
}


def _write(path: Path, text: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


def _cfg(*vectors: dict[str, Any]) -> SteeringConfigFile:
    return parse_steering_config({"vectors": list(vectors)}, "test.yaml")


def _vec(name: str = "v", layer: int = 1, **kw: Any) -> dict[str, Any]:
    out: dict[str, Any] = {
        "name": name,
        "positive_prompt": POS,
        "negative_prompt": NEG,
        "layer": layer,
        "coefficient": 2.0,
    }
    out.update(kw)
    return {k: v for k, v in out.items() if v is not None}


@pytest.mark.parametrize("which", list(EXAMPLES))
def test_the_example_configs_parse(tmp_path: Path, which: str) -> None:
    cfg = load_steering_config(_write(tmp_path / "steering_config.yaml", EXAMPLES[which]))
    assert cfg.vectors
    for spec in cfg.vectors:
        layer, coefficient, normalize, method, scale = EXAMPLE_MEANING[spec.name]
        assert (spec.layer, spec.coefficient, spec.normalize) == (layer, coefficient, normalize)
        # no position given: prompt activations are read at the last token
        assert (spec.built_by, spec.applied_scale, spec.read_at) == (method, scale, "last")
        assert spec.position is None
        assert (spec.intervention, spec.positions) == ("add", "all")
    check_against_model(cfg, 30)  # every example layer fits a 30-layer model


def test_a_layer_beyond_the_model_names_the_vector_and_the_range(tmp_path: Path) -> None:
    path = _write(tmp_path / "s.yaml", EXAMPLES["contrast"])
    cfg = load_steering_config(path)
    with pytest.raises(SteeringConfigError) as info:
        check_against_model(cfg, 16)
    assert str(info.value) == (
        f"{path}: vectors[0] ('truthful_vs_deceptive'): layer 20 is out of range: the model has "
        "16 layers (valid: 0..15)"
    )


def test_the_shipped_example_fits_a_30_layer_model() -> None:
    assert "smollm2_example" in shipped_names("steering")
    cfg = load_steering_config("smollm2_example")
    with local_path("steering", "smollm2_example") as path:
        assert cfg.source == str(path)
    check_against_model(cfg, 30)
    methods = {spec.built_by for spec in cfg.vectors}
    assert methods == {"contrast", "single"}
    assert all(not spec.normalize and spec.applied_scale == "diff" for spec in cfg.vectors)


def test_the_shipped_example_does_not_fit_a_tiny_model(tiny_llama: Model) -> None:
    cfg = load_steering_config("smollm2_example")
    with pytest.raises(SteeringConfigError, match=r"vectors\[0\] \('security_conscious'\): layer"):
        build_steering(tiny_llama, cfg)


# ----------------------------------------------------------------------------- validation

BAD: list[tuple[str, str, str]] = [
    (
        "unknown key",
        "vectors:\n  - {name: a, positive_prompt: x, layer: 1, coefficient: 1, strength: 2}\n",
        "vectors[0] ('a'): unknown key 'strength' (known keys: name, positive_prompt, ",
    ),
    ("unknown top key", "vectors: []\nmodel: gpt2\n", "unknown key 'model' (known keys: vectors)"),
    (
        "missing positive prompt",
        "vectors:\n  - {name: a, negative_prompt: x, layer: 1, coefficient: 1}\n",
        "vectors[0] ('a'): missing positive_prompt (or give a vector_file)",
    ),
    (
        "vector file and prompts",
        "vectors:\n  - {name: a, positive_prompt: x, layer: 1, coefficient: 1, vector_file: v}\n",
        "vectors[0] ('a'): give either vector_file or prompts to build from, not both "
        "(vector_file with positive_prompt)",
    ),
    (
        "bad intervention",
        "vectors:\n  - {name: a, positive_prompt: x, layer: 1, coefficient: 1,"
        " intervention: nudge}\n",
        "vectors[0] ('a'): intervention: Input should be 'add', 'ablate' or 'clamp'",
    ),
    (
        "bad scale",
        "vectors:\n  - {name: a, positive_prompt: x, layer: 1, coefficient: 1, scale: unit}\n",
        "vectors[0] ('a'): scale: Input should be 'absolute', 'diff' or 'resid'",
    ),
    (
        "bad positions",
        "vectors:\n  - {name: a, positive_prompt: x, layer: 1, coefficient: 1, positions: last}\n",
        "vectors[0] ('a'): positions: unknown positions 'last'",
    ),
    (
        "bad position",
        "vectors:\n  - {name: a, positive_prompt: x, layer: 1, coefficient: 1, position: first}\n",
        "vectors[0] ('a'): position: Input should be 'mean' or 'last'",
    ),
    (
        "bad hook",
        "vectors:\n  - {name: a, positive_prompt: x, layer: 1, coefficient: 1, hook: resid}\n",
        "vectors[0] ('a'): hook: unknown hook site 'resid'",
    ),
    (
        "hook names another layer",
        "vectors:\n  - {name: a, positive_prompt: x, layer: 1, coefficient: 1,"
        " hook: blocks.2.hook_mlp_out}\n",
        "vectors[0] ('a'): hook 'blocks.2.hook_mlp_out' names layer 2, but layer is 1",
    ),
    (
        "unknown method",
        "vectors:\n  - {name: a, positive_prompt: x, negative_prompt: y, layer: 1,"
        " coefficient: 1, method: caa}\n",
        "vectors[0] ('a'): unknown method 'caa': use one of contrast, single, forced-prefix",
    ),
    (
        "method that does not fit pairs",
        "vectors:\n  - {name: a, positive_prompt: x, negative_prompt: y, layer: 1,"
        " coefficient: 1, method: forced-prefix}\n",
        "method 'forced-prefix' does not fit a positive and a negative prompt: use one of "
        "contrast, labeled, pca",
    ),
    (
        "pair method without a negative",
        "vectors:\n  - {name: a, positive_prompt: x, layer: 1, coefficient: 1, method: pca}\n",
        "method 'pca' does not fit a lone positive_prompt",
    ),
    (
        "pca with one pair",
        "vectors:\n  - {name: a, positive_prompt: x, negative_prompt: y, layer: 1,"
        " coefficient: 1, method: pca}\n",
        "method pca needs at least two prompt pairs",
    ),
    (
        "unpaired contrast lists",
        "vectors:\n  - {name: a, positive_prompt: [x, z], negative_prompt: [y], layer: 1,"
        " coefficient: 1}\n",
        "method contrast pairs positive and negative prompts one to one, but there are 2 "
        "positive and 1 negative",
    ),
    (
        "several single prompts",
        "vectors:\n  - {name: a, positive_prompt: [x, z], layer: 1, coefficient: 1}\n",
        "a single-prompt vector takes one positive_prompt, got 2",
    ),
    (
        "empty prompt",
        "vectors:\n  - {name: a, positive_prompt: ' ', layer: 1, coefficient: 1}\n",
        "vectors[0] ('a'): positive_prompt: is empty",
    ),
    (
        "coefficient as text",
        "vectors:\n  - {name: a, positive_prompt: x, layer: 1, coefficient: '2.0'}\n",
        "vectors[0] ('a'): coefficient: must be a number, got '2.0'",
    ),
    (
        "coefficient as boolean",
        "vectors:\n  - {name: a, positive_prompt: x, layer: 1, coefficient: true}\n",
        "coefficient: must be a number, got True",
    ),
    (
        "infinite coefficient",
        "vectors:\n  - {name: a, positive_prompt: x, layer: 1, coefficient: .inf}\n",
        "vectors[0] ('a'): coefficient: Input should be a finite number",
    ),
    (
        "layer as boolean",
        "vectors:\n  - {name: a, positive_prompt: x, layer: true, coefficient: 1}\n",
        "vectors[0] ('a'): layer: Input should be a valid integer",
    ),
    (
        "negative layer",
        "vectors:\n  - {name: a, positive_prompt: x, layer: -1, coefficient: 1}\n",
        "vectors[0] ('a'): layer: Input should be greater than or equal to 0",
    ),
    (
        "normalize as text",
        "vectors:\n  - {name: a, positive_prompt: x, layer: 1, coefficient: 1, normalize: 'yes'}\n",
        "vectors[0] ('a'): normalize: Input should be a valid boolean",
    ),
    (
        "missing coefficient",
        "vectors:\n  - {name: a, positive_prompt: x, layer: 1}\n",
        "vectors[0] ('a'): missing key 'coefficient'",
    ),
    (
        "duplicate names",
        "vectors:\n  - {name: a, positive_prompt: x, layer: 1, coefficient: 1}\n"
        "  - {name: a, positive_prompt: y, layer: 2, coefficient: 1}\n",
        "vectors: duplicate vector name 'a' (vectors[0] and vectors[1])",
    ),
    ("missing vectors", "{}\n", "missing key 'vectors'"),
    ("empty file", "", "the file is empty: write `vectors: []` for no steering"),
    ("a list at the top", "- name: a\n", "must be a mapping with a `vectors` list, got a list"),
    (
        "duplicate YAML key",
        "vectors:\n  - name: a\n    layer: 1\n    layer: 2\n",
        ":4: malformed YAML (found the key 'layer' twice)",
    ),
    ("malformed YAML", "vectors:\n  - name: [a\n", ":3: malformed YAML"),
]


@pytest.mark.parametrize(("case", "text", "expected"), BAD, ids=[b[0] for b in BAD])
def test_bad_configs_are_one_clear_error(
    tmp_path: Path, case: str, text: str, expected: str
) -> None:
    path = _write(tmp_path / "steer.yaml", text)
    with pytest.raises(SteeringConfigError) as info:
        load_steering_config(path)
    message = str(info.value)
    assert message.startswith(str(path)), message
    assert "\n" not in message
    assert expected in message, f"{case}: {message}"


def test_undecodable_bytes_are_reported(tmp_path: Path) -> None:
    with pytest.raises(SteeringConfigError, match="not valid UTF-8"):
        load_steering_config(_write(tmp_path / "s.yaml", b"vectors: [caf\xe9]\n"))


def test_a_missing_vector_file_is_reported_against_the_vector(tmp_path: Path) -> None:
    path = _write(
        tmp_path / "cfg" / "s.yaml",
        "vectors:\n  - {name: saved, vector_file: ../v.safetensors, layer: 1, coefficient: 1}\n",
    )
    with pytest.raises(SteeringConfigError) as info:
        load_steering_config(path)
    assert str(info.value) == (
        f"{path}: vectors[0] ('saved'): vector_file: {tmp_path / 'v.safetensors'}: "
        "no such vector file"
    )


def test_an_empty_list_is_the_unsteered_baseline(tiny_llama: Model, tmp_path: Path) -> None:
    cfg = load_steering_config(_write(tmp_path / "base.yaml", "vectors: []\n"))
    steering = build_steering(tiny_llama, cfg)
    assert steering.interventions == ()
    assert compile_plan(tiny_llama, [steering.interventions]).empty
    saved = json.loads(json.dumps(steering.to_dict()))
    assert saved["vectors"] == [] and saved["config"] == {"vectors": []}


# ----------------------------------------------------------------------------- building


def _hidden(model: Model, text: str, layer: int) -> torch.Tensor:
    """resid_post of block ``layer`` for every token of ``text`` (T, d), read by a plain torch
    hook on the Hugging Face decoder layer (independent of steerlab's recorder).

    Not ``output_hidden_states``: Hugging Face then installs output-capturing hooks on every
    layer and keeps them, which the session-wide model's no-hooks-left checks elsewhere see."""
    ids = torch.tensor([model.encode(model.format_prompt(text, chat=False))])
    seen: list[torch.Tensor] = []

    def keep(_module: Any, _args: Any, out: Any) -> None:
        seen.append((out if isinstance(out, torch.Tensor) else out[0]).detach().clone())

    handle = model.hf.model.layers[layer].register_forward_hook(keep)
    try:
        with torch.inference_mode():
            model.hf(input_ids=ids, use_cache=False)
    finally:
        handle.remove()
    return seen[0][0].float()


@pytest.mark.parametrize("position", ["mean", "last"])
def test_a_single_prompt_vector_is_the_prompts_activation(tiny_llama: Model, position: str) -> None:
    cfg = _cfg(_vec(negative_prompt=None, layer=2, position=position))
    (resolved,) = build_steering(tiny_llama, cfg).vectors
    h = _hidden(tiny_llama, POS, 2)  # (T, d)
    expected = h.mean(0) if position == "mean" else h[-1]
    vec = resolved.intervention.vector
    assert vec.layers == (2,)
    torch.testing.assert_close(vec.direction(2), expected, rtol=1e-5, atol=1e-5)
    assert resolved.info["method"] == "single"
    assert resolved.info["raw_norm"] == pytest.approx(float(expected.norm()), rel=1e-5)


@pytest.mark.parametrize("position", ["mean", "last", None])
def test_a_contrast_vector_is_the_activation_difference(
    tiny_llama: Model, position: str | None
) -> None:
    """``None``: no position given, which reads the last token."""
    (resolved,) = build_steering(tiny_llama, _cfg(_vec(layer=1, position=position))).vectors
    pos, neg = _hidden(tiny_llama, POS, 1), _hidden(tiny_llama, NEG, 1)
    expected = pos.mean(0) - neg.mean(0) if position == "mean" else pos[-1] - neg[-1]
    direction = resolved.intervention.vector.direction(1)
    torch.testing.assert_close(direction, expected, rtol=1e-5, atol=1e-5)
    assert resolved.info["position"] == (position or "last")


def _added(model: Model, resolved: sc.ResolvedVector) -> torch.Tensor:
    """The vector the compiled plan adds at every steered token (d,)."""
    plan = compile_plan(model, [(resolved.intervention,)])
    (slot,) = plan.sites[resolved.intervention.site]
    return slot.add[0].cpu()


@pytest.mark.parametrize("coefficient", [2.0, -0.5, 0.0])
def test_normalize_false_adds_coefficient_times_the_built_vector(
    tiny_llama: Model, coefficient: float
) -> None:
    (r,) = build_steering(tiny_llama, _cfg(_vec(coefficient=coefficient))).vectors
    raw = r.intervention.vector.direction(1)
    assert r.info["scale"] == "diff" and r.info["normalize"] is False
    assert r.info["raw_norm"] == pytest.approx(float(raw.norm()))
    assert r.applied_norm == pytest.approx(abs(coefficient) * float(raw.norm()))
    added = _added(tiny_llama, r)
    torch.testing.assert_close(added, coefficient * raw, rtol=1e-5, atol=1e-5)
    assert float(added.norm()) == pytest.approx(r.applied_norm, rel=1e-5, abs=1e-6)


@pytest.mark.parametrize("coefficient", [3.0, -1.5])
def test_normalize_true_adds_coefficient_residual_units(
    tiny_llama: Model, coefficient: float
) -> None:
    (r,) = build_steering(tiny_llama, _cfg(_vec(coefficient=coefficient, normalize=True))).vectors
    raw = r.intervention.vector.direction(1)
    assert r.info["scale"] == "absolute" and r.info["unit_size"] == 1.0
    assert r.applied_norm == pytest.approx(abs(coefficient))
    added = _added(tiny_llama, r)
    torch.testing.assert_close(added, coefficient * raw / raw.norm(), rtol=1e-5, atol=1e-6)
    assert "normalize: true" in r.meaning


@pytest.mark.parametrize("normalize", [True, False])
def test_an_explicit_scale_overrides_normalize(tiny_llama: Model, normalize: bool) -> None:
    (r,) = build_steering(
        tiny_llama, _cfg(_vec(coefficient=0.5, normalize=normalize, scale="resid"))
    ).vectors
    resid = r.info["mean_resid_norm"]
    assert r.info["scale"] == "resid" and resid > 0
    assert r.applied_norm == pytest.approx(0.5 * resid)
    assert float(_added(tiny_llama, r).norm()) == pytest.approx(0.5 * resid, rel=1e-5)
    assert "scale resid as given" in r.meaning


def test_ablate_and_clamp_record_no_applied_norm(tiny_llama: Model) -> None:
    ablate, clamp = build_steering(
        tiny_llama,
        _cfg(
            _vec("ablate", intervention="ablate", coefficient=1.0),
            _vec("clamp", intervention="clamp", coefficient=3.0, normalize=True),
        ),
    ).vectors
    assert ablate.applied_norm is None and ablate.info["target_projection"] is None
    assert clamp.applied_norm is None and clamp.info["target_projection"] == pytest.approx(3.0)
    assert (ablate.intervention.kind, clamp.intervention.kind) == ("ablate", "clamp")


def test_several_vectors_are_several_interventions(tiny_llama: Model) -> None:
    cfg = _cfg(
        _vec("a", layer=0),
        _vec("b", layer=2, negative_prompt=None, coefficient=0.25, positions="generated"),
        _vec("c", layer=1, hook="mlp_out", normalize=True),
    )
    steering = build_steering(tiny_llama, cfg)
    assert [v.name for v in steering.vectors] == ["a", "b", "c"]
    ivs = steering.interventions
    assert [iv.site.name for iv in ivs] == [
        "blocks.0.hook_resid_post",
        "blocks.2.hook_resid_post",
        "blocks.1.hook_mlp_out",
    ]
    assert [iv.positions for iv in ivs] == ["all", "generated", "all"]
    assert steering["c"].intervention.vector.hook_point == "mlp_out"
    plan = compile_plan(tiny_llama, [ivs])
    assert len(plan.sites) == 3
    saved = json.loads(json.dumps(steering.to_dict()))
    assert [v["name"] for v in saved["vectors"]] == ["a", "b", "c"]
    assert saved["model"] == tiny_llama.name and saved["chat"] is False
    assert saved["config"] == cfg.model_dump(mode="json")
    expected_keys = {"layer", "hook", "coefficient", "normalize", "scale", "raw_norm"}
    assert expected_keys | {"mean_resid_norm", "applied_norm", "meaning"} <= set(
        saved["vectors"][0]
    )


def test_vectors_sharing_prompts_are_built_from_one_recording(
    tiny_llama: Model, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[list[int]] = []
    real = sc_build.contrast

    def counting(model: Model, *args: Any, **kw: Any) -> Any:
        calls.append(list(args[2]))
        return real(model, *args, **kw)

    monkeypatch.setattr(sc_build, "contrast", counting)
    together = build_steering(tiny_llama, _cfg(_vec("x", layer=0), _vec("y", layer=2)))
    assert calls == [[0, 2]]
    for name, layer in (("x", 0), ("y", 2)):
        (alone,) = build_steering(tiny_llama, _cfg(_vec(name, layer=layer))).vectors
        torch.testing.assert_close(
            together[name].intervention.vector.direction(layer),
            alone.intervention.vector.direction(layer),
        )
        assert together[name].intervention.vector.layers == (layer,)


def test_a_saved_vector_round_trips_through_vector_file(
    tiny_llama: Model, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (built,) = build_steering(tiny_llama, _cfg(_vec(layer=1, coefficient=1.5))).vectors
    built.intervention.vector.save(tmp_path / "vectors" / "truth.safetensors")
    path = _write(
        tmp_path / "configs" / "steer.yaml",
        yaml.safe_dump(
            {
                "vectors": [
                    {
                        "name": "truth",
                        "vector_file": "../vectors/truth.safetensors",
                        "layer": 1,
                        "coefficient": 1.5,
                    }
                ]
            }
        ),
    )
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # relative to the YAML file, not the working directory
    cfg = load_steering_config(path)
    assert cfg.vectors[0].vector_file == str(tmp_path / "vectors" / "truth.safetensors")
    (loaded,) = build_steering(tiny_llama, cfg).vectors
    torch.testing.assert_close(
        loaded.intervention.vector.direction(1), built.intervention.vector.direction(1)
    )
    assert loaded.applied_norm == pytest.approx(built.applied_norm)
    assert loaded.info["mean_resid_norm"] == pytest.approx(built.info["mean_resid_norm"])
    assert loaded.info["method"] == "file" and loaded.info["position"] is None
    torch.testing.assert_close(_added(tiny_llama, loaded), _added(tiny_llama, built))


def test_a_vector_file_without_the_layer_is_refused(tiny_llama: Model, tmp_path: Path) -> None:
    (built,) = build_steering(tiny_llama, _cfg(_vec(layer=1))).vectors
    built.intervention.vector.save(tmp_path / "v.safetensors")
    path = _write(
        tmp_path / "s.yaml",
        "vectors:\n  - {name: saved, vector_file: v.safetensors, layer: 2, coefficient: 1}\n",
    )
    with pytest.raises(SteeringConfigError) as info:
        load_steering_config(path)
    assert str(info.value) == (
        f"{path}: vectors[0] ('saved'): vector_file {tmp_path / 'v.safetensors'} has no "
        "direction at layer 2 (it has layers [1])"
    )


def test_a_vector_file_of_another_width_is_refused_at_build(
    tiny_llama: Model, tmp_path: Path
) -> None:
    from steerlab.vectors import SteeringVector

    SteeringVector({1: torch.ones(32)}).save(tmp_path / "narrow.safetensors")
    path = _write(
        tmp_path / "s.yaml",
        "vectors:\n  - {name: narrow, vector_file: narrow.safetensors, layer: 1, coefficient: 1}\n",
    )
    cfg = load_steering_config(path)
    with pytest.raises(
        SteeringConfigError,
        match=r"vectors\[0\] \('narrow'\): vector_file: .*"
        r"has d_model 32 .* but the model has d_model 64",
    ):
        build_steering(tiny_llama, cfg)


def test_identical_prompts_are_one_error_naming_the_vector(tiny_llama: Model) -> None:
    cfg = _cfg(_vec("same", negative_prompt=POS))
    with pytest.raises(SteeringConfigError, match=r"vectors\[0\] \('same'\): .*exactly zero"):
        build_steering(tiny_llama, cfg)


def test_a_full_hook_name_is_accepted(tiny_llama: Model) -> None:
    (r,) = build_steering(tiny_llama, _cfg(_vec(hook="blocks.1.hook_resid_mid"))).vectors
    assert r.intervention.site.name == "blocks.1.hook_resid_mid"
    assert r.info["hook"] == "blocks.1.hook_resid_mid"


def test_labeled_and_pca_methods_fit_prompt_lists(tiny_llama: Model) -> None:
    pos, neg = [POS, "Honesty matters to me."], [NEG, "I deceive whenever I can."]
    labeled, pca = build_steering(
        tiny_llama,
        _cfg(
            _vec("lab", positive_prompt=pos, negative_prompt=neg[:1], method="labeled"),
            _vec("pca", positive_prompt=pos, negative_prompt=neg, method="pca"),
        ),
    ).vectors
    assert labeled.intervention.vector.method == "labeled"
    assert pca.intervention.vector.method == "pca"
    h = {t: _hidden(tiny_llama, t, 1)[-1] for t in [*pos, *neg]}  # the default position: last
    expected = (h[pos[0]] + h[pos[1]]) / 2 - h[neg[0]]
    torch.testing.assert_close(
        labeled.intervention.vector.direction(1), expected, rtol=1e-5, atol=1e-5
    )


def test_first_token_cosine_is_measured_for_mean_and_warned_about(
    tiny_llama: Model, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    mean, last = build_steering(
        tiny_llama, _cfg(_vec("mean", position="mean"), _vec("last", position="last"))
    ).vectors
    cos = mean.info["first_token_cosine"]
    assert isinstance(cos, float) and -1.0 <= cos <= 1.0
    assert last.info["first_token_cosine"] is None
    monkeypatch.setattr(sc_build, "FIRST_TOKEN_WARN", -1.0)  # any cosine warns
    with caplog.at_level(logging.WARNING, logger="steerlab.steering_config"):
        build_steering(
            tiny_llama, _cfg(_vec("mean", position="mean"), _vec("last", position="last"))
        )
    warned = [r.getMessage() for r in caplog.records]
    assert len(warned) == 1 and "vectors[0] ('mean')" in warned[0]
    assert "position: last" in warned[0]


def test_chat_formats_the_prompts(tiny_llama: Model) -> None:
    plain = build_steering(tiny_llama, _cfg(_vec(position="last")))
    chat = build_steering(tiny_llama, _cfg(_vec(position="last")), chat=True)
    assert chat.chat and not plain.chat
    a = plain.vectors[0].intervention.vector.direction(1)
    b = chat.vectors[0].intervention.vector.direction(1)
    assert not torch.allclose(a, b)
