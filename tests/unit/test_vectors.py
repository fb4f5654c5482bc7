"""SteeringVector as a value: save/load round trip, arithmetic, clear errors, immutability."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from steerlab.errors import SteerlabError
from steerlab.vectors import SteeringVector, VectorFileError

D = 8


def _vec(
    layers: tuple[int, ...] = (1, 3),
    seed: int = 0,
    d: int = D,
    hook_point: str = "resid_post",
    model_id: str = "m",
) -> SteeringVector:
    gen = torch.Generator().manual_seed(seed)
    return SteeringVector(
        directions={layer: torch.randn(d, generator=gen) for layer in layers},
        hook_point=hook_point,
        method="contrast",
        model_id=model_id,
        raw_norm={layer: 1.5 + layer for layer in layers},
        mean_resid_norm={layer: 10.0 + layer for layer in layers},
        prompts_hash="abc123",
        extra={"position": "last", "n_pairs": 4, "nested": {"a": [1, 2]}},
    )


def _same_metadata(a: SteeringVector, b: SteeringVector, skip: tuple[str, ...] = ()) -> None:
    for f in dataclasses.fields(SteeringVector):
        if f.name == "directions" or f.name in skip:
            continue
        assert getattr(a, f.name) == getattr(b, f.name), f.name


# ----------------------------------------------------------------------------- save / load


def test_save_load_round_trip(tmp_path: Path) -> None:
    v = _vec()
    path = v.save(tmp_path / "sub" / "v.safetensors")
    assert path.is_file()
    w = SteeringVector.load(path)
    assert w.layers == v.layers == (1, 3)
    for layer in v.layers:
        assert torch.equal(w.direction(layer), v.direction(layer))
        assert w.direction(layer).dtype == torch.float32
    _same_metadata(v, w)
    assert dict(w.extra) == {"position": "last", "n_pairs": 4, "nested": {"a": [1, 2]}}
    assert w.metadata() == v.metadata()


def test_load_with_matching_d_model(tmp_path: Path) -> None:
    v = _vec()
    w = SteeringVector.load(v.save(tmp_path / "v.safetensors"), d_model=D)
    assert w.d_model == D


def test_load_d_model_mismatch(tmp_path: Path) -> None:
    path = _vec().save(tmp_path / "v.safetensors")
    with pytest.raises(VectorFileError, match=r"d_model 8.*d_model 16"):
        SteeringVector.load(path, d_model=16)


def test_load_missing_file(tmp_path: Path) -> None:
    with pytest.raises(VectorFileError, match="no such vector file"):
        SteeringVector.load(tmp_path / "nope.safetensors")


def test_load_non_safetensors_file(tmp_path: Path) -> None:
    path = tmp_path / "v.safetensors"
    path.write_text("this is not a safetensors file at all\n")
    with pytest.raises(VectorFileError, match="not a safetensors file"):
        SteeringVector.load(path)


def test_load_safetensors_without_steerlab_metadata(tmp_path: Path) -> None:
    path = tmp_path / "plain.safetensors"
    save_file({"layer.0": torch.zeros(D)}, str(path), metadata={"other": "x"})
    with pytest.raises(VectorFileError, match="not a steerlab vector"):
        SteeringVector.load(path)


def test_load_malformed_metadata(tmp_path: Path) -> None:
    path = tmp_path / "bad.safetensors"
    save_file({"layer.0": torch.ones(D)}, str(path), metadata={"steerlab": json.dumps({"x": 1})})
    with pytest.raises(VectorFileError, match="malformed"):
        SteeringVector.load(path)


def test_vector_file_error_is_a_steerlab_error() -> None:
    assert issubclass(VectorFileError, SteerlabError)


# ----------------------------------------------------------------------------- arithmetic


def test_scalar_multiplication_both_sides() -> None:
    v = _vec()
    for w in (2 * v, v * 2, v * 2.0):
        assert w.layers == v.layers
        for layer in v.layers:
            assert torch.allclose(w.direction(layer), 2 * v.direction(layer))
        _same_metadata(v, w)  # norms recorded at construction are kept


def test_negation_and_division() -> None:
    v = _vec()
    neg, half = -v, v / 2
    for layer in v.layers:
        assert torch.equal(neg.direction(layer), -v.direction(layer))
        assert torch.allclose(half.direction(layer), v.direction(layer) * 0.5)
    _same_metadata(v, neg)
    _same_metadata(v, half)


def test_multiplying_by_a_non_number_is_a_type_error() -> None:
    with pytest.raises(TypeError):
        _ = _vec() * "2"  # type: ignore[operator]


def test_addition_same_layers() -> None:
    a, b = _vec(seed=0), _vec(seed=1)
    s = a + b
    assert s.layers == a.layers
    for layer in a.layers:
        assert torch.allclose(s.direction(layer), a.direction(layer) + b.direction(layer))
    assert s.method == "sum"
    assert s.hook_point == a.hook_point and s.model_id == a.model_id


def test_addition_takes_the_union_of_layers() -> None:
    a, b = _vec(layers=(0, 2), seed=0), _vec(layers=(2, 5), seed=1)
    s = a + b
    assert s.layers == (0, 2, 5)
    assert torch.equal(s.direction(0), a.direction(0))
    assert torch.equal(s.direction(5), b.direction(5))
    assert torch.allclose(s.direction(2), a.direction(2) + b.direction(2))
    assert set(s.mean_resid_norm) == {0, 2, 5}
    assert set(s.raw_norm) == {0, 2, 5}


def test_subtraction() -> None:
    a, b = _vec(seed=0), _vec(seed=1)
    d = a - b
    for layer in a.layers:
        assert torch.allclose(d.direction(layer), a.direction(layer) - b.direction(layer))


def test_normalized_has_unit_norm_and_keeps_metadata() -> None:
    v = 7 * _vec()
    n = v.normalized()
    for layer in v.layers:
        assert math.isclose(n.norm(layer), 1.0, rel_tol=1e-6)
        cos = torch.nn.functional.cosine_similarity(n.direction(layer), v.direction(layer), dim=0)
        assert float(cos) == pytest.approx(1.0, abs=1e-6)
    _same_metadata(v, n)


def test_normalized_zero_direction_raises() -> None:
    v = SteeringVector(directions={0: torch.zeros(D)})
    with pytest.raises(SteerlabError, match="zero"):
        v.normalized()


@pytest.mark.parametrize(
    ("other", "match"),
    [
        (_vec(d=D + 1), "d_model"),
        (_vec(hook_point="resid_pre"), "resid_pre"),
        (_vec(model_id="other-model"), "different models"),
    ],
    ids=["d_model", "hook_point", "model_id"],
)
def test_adding_incompatible_vectors_raises(other: SteeringVector, match: str) -> None:
    with pytest.raises(SteerlabError, match=match):
        _ = _vec() + other


# ----------------------------------------------------------------------------- validation


def test_missing_layer_has_a_clear_error() -> None:
    v = _vec(layers=(1, 3))
    with pytest.raises(SteerlabError, match=r"no direction for layer 2.*\[1, 3\]"):
        v.direction(2)


def test_constructor_validation() -> None:
    with pytest.raises(SteerlabError, match="at least one layer"):
        SteeringVector(directions={})
    with pytest.raises(SteerlabError, match="hook_point"):
        SteeringVector(directions={0: torch.ones(D)}, hook_point="mlp_in")
    with pytest.raises(SteerlabError, match="same size"):
        SteeringVector(directions={0: torch.ones(D), 1: torch.ones(D + 1)})
    with pytest.raises(SteerlabError, match="NaN or inf"):
        SteeringVector(directions={0: torch.full((D,), float("nan"))})


def test_directions_are_stored_as_cpu_float32_copies() -> None:
    src = torch.ones(D, dtype=torch.float64)
    v = SteeringVector(directions={0: src})
    assert v.direction(0).dtype == torch.float32
    src.mul_(5)  # mutating the caller's tensor must not reach the vector
    assert torch.equal(v.direction(0), torch.ones(D))


# ----------------------------------------------------------------------------- immutability


def test_directions_mapping_cannot_be_mutated() -> None:
    v = _vec()
    with pytest.raises(TypeError):
        v.directions[0] = torch.zeros(D)  # type: ignore[index]
    with pytest.raises(TypeError):
        del v.directions[1]  # type: ignore[attr-defined]
    with pytest.raises(TypeError):
        v.mean_resid_norm[1] = 0.0  # type: ignore[index]
    with pytest.raises(TypeError):
        v.extra["x"] = 1  # type: ignore[index]
    assert v.layers == (1, 3)


def test_fields_cannot_be_reassigned() -> None:
    v = _vec()
    with pytest.raises(dataclasses.FrozenInstanceError):
        v.hook_point = "resid_pre"  # type: ignore[misc]


def test_constructor_input_dict_is_not_aliased() -> None:
    dirs = {0: torch.ones(D)}
    v = SteeringVector(directions=dirs)
    dirs[1] = torch.ones(D)
    assert v.layers == (0,)
