"""Intervention specs: position windows, hook names, validation, scale factors, plan compilation."""

from __future__ import annotations

import pytest
import torch

from steerlab.engine.plan import compile_plan
from steerlab.errors import SteerlabError
from steerlab.interventions import Intervention, Window, parse_hook_name
from steerlab.models import Model
from steerlab.sites import Site
from steerlab.vectors import SteeringVector

D = 8
BIG = 1 << 30  # anything larger is "unbounded" for these checks


def _vec(layers: tuple[int, ...] = (0, 2), d: int = D, resid: bool = True) -> SteeringVector:
    gen = torch.Generator().manual_seed(0)
    return SteeringVector(
        directions={layer: torch.randn(d, generator=gen) * 3 for layer in layers},
        model_id="tiny-llama",  # the model the plan tests compile for
        mean_resid_norm={layer: 20.0 + layer for layer in layers} if resid else {},
    )


# ----------------------------------------------------------------------------- Window


@pytest.mark.parametrize(
    ("spec", "start", "end"),
    [
        ("all", None, None),
        ("prompt", None, 0),
        ("last-prompt", -1, 0),
        ("generated", 0, None),
        ("window:-2:1", -2, 1),
        ("window:3:", 3, None),
        ("window::4", None, 4),
        ("window:-5:-3", -5, -3),
    ],
)
def test_window_parse(spec: str, start: int | None, end: int | None) -> None:
    assert Window.parse(spec) == Window(start, end)


@pytest.mark.parametrize(
    ("spec", "inside", "outside"),
    [
        ("all", [-(10**6), -1, 0, 10**6], []),
        ("prompt", [-(10**6), -1], [0, 5]),
        ("last-prompt", [-1], [-2, 0]),
        ("generated", [0, 10**6], [-1]),
        ("window:-2:1", [-2, -1, 0], [-3, 1]),
    ],
)
def test_window_bounds_are_half_open(spec: str, inside: list[int], outside: list[int]) -> None:
    lo, hi = Window.parse(spec).bounds
    for rel in inside:
        assert lo <= rel < hi, rel
    for rel in outside:
        assert not lo <= rel < hi, rel


def test_unbounded_sides_are_far_away() -> None:
    lo, hi = Window.parse("all").bounds
    assert lo < -BIG and hi > BIG


@pytest.mark.parametrize(
    "spec",
    ["", "everything", "window", "window:1", "window:a:b", "window:1:2:3", "last_prompt", "gen"],
)
def test_window_parse_rejects_unknown(spec: str) -> None:
    with pytest.raises(SteerlabError, match="unknown positions"):
        Window.parse(spec)


@pytest.mark.parametrize("spec", ["window:2:2", "window:3:1", "window:0:-1"])
def test_window_parse_rejects_empty(spec: str) -> None:
    with pytest.raises(SteerlabError, match="empty token window"):
        Window.parse(spec)


# ----------------------------------------------------------------------------- hook names


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("resid_pre", (None, "resid_pre")),
        ("resid_post", (None, "resid_post")),
        ("blocks.8.hook_resid_pre", (8, "resid_pre")),
        ("blocks.0.hook_resid_post", (0, "resid_post")),
        ("blocks.12.hook_resid_post", (12, "resid_post")),
        ("resid_mid", (None, "resid_mid")),
        ("hook_mlp_out", (None, "mlp_out")),
        ("blocks.1.hook_attn_out", (1, "attn_out")),
        ("blocks.3.hook_mlp_out", (3, "mlp_out")),
        ("blocks.2.hook_resid_mid", (2, "resid_mid")),
    ],
)
def test_parse_hook_name(name: str, expected: tuple[int | None, str]) -> None:
    assert parse_hook_name(name) == expected


@pytest.mark.parametrize(
    "name",
    [
        "resid",
        "blocks.x.hook_resid_post",
        "blocks.1.hook_attn",
        "blocks.1.resid_post",
        "",
        "hook_z",
    ],
)
def test_parse_hook_name_rejects_unknown(name: str) -> None:
    with pytest.raises(SteerlabError, match="unknown hook site"):
        parse_hook_name(name)


# ----------------------------------------------------------------------------- validation


def test_valid_intervention_defaults() -> None:
    iv = Intervention(_vec(), layer=2)
    assert (iv.kind, iv.alpha, iv.positions, iv.scale) == ("add", 1.0, "all", "absolute")
    assert iv.point == "resid_post"  # the vector's hook point
    assert Intervention(_vec(), layer=2, hook_point="resid_pre").point == "resid_pre"
    assert iv.window == Window(None, None)
    assert "add" in iv.describe() and "blocks.2.hook_resid_post" in iv.describe()


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"kind": "subtract"}, "unknown intervention"),
        ({"scale": "relative"}, "unknown scale"),
        ({"positions": "last"}, "unknown positions"),
        ({"positions": "window:4:4"}, "empty token window"),
        ({"hook_point": "mlp_in"}, "unknown hook site"),
        ({"hook_point": "blocks.3.hook_mlp_out"}, "names layer 3"),
        ({"alpha": float("nan")}, "alpha"),
        ({"layer": 1}, "no direction for layer 1"),
        ({"source_layer": 5}, "no direction for layer 5"),
    ],
)
def test_intervention_validation(kwargs: dict, match: str) -> None:
    args = {"vector": _vec(), "layer": 0, **kwargs}
    with pytest.raises(SteerlabError, match=match):
        Intervention(**args)


def test_alpha_must_be_finite() -> None:
    """The error message promises a finite alpha; infinity would turn hidden states into NaN."""
    for bad in (float("inf"), float("-inf")):
        with pytest.raises(SteerlabError, match="finite"):
            Intervention(_vec(), layer=0, alpha=bad)


def test_scale_resid_needs_mean_resid_norm() -> None:
    with pytest.raises(SteerlabError, match="mean residual norm"):
        Intervention(_vec(resid=False), layer=0, scale="resid")
    # absolute and diff do not need it
    Intervention(_vec(resid=False), layer=0, scale="absolute")
    Intervention(_vec(resid=False), layer=0, scale="diff")


def test_source_layer_picks_the_vector_layer() -> None:
    v = _vec(layers=(0, 2))
    iv = Intervention(v, layer=1, source_layer=2, scale="diff")
    assert iv.src == 2
    assert iv.scale_factor() == pytest.approx(v.norm(2))


# ----------------------------------------------------------------------------- scale factors


def test_scale_factor_semantics() -> None:
    v = _vec(layers=(0, 2))
    assert Intervention(v, layer=2, scale="absolute", alpha=5).scale_factor() == 1.0
    assert Intervention(v, layer=2, scale="diff").scale_factor() == pytest.approx(
        float(v.direction(2).norm())
    )
    assert Intervention(v, layer=2, scale="resid").scale_factor() == 22.0
    assert Intervention(v, layer=0, scale="resid").scale_factor() == 20.0
    # diff uses the direction's own norm: scaling the vector scales the factor
    assert Intervention(3 * v, layer=2, scale="diff").scale_factor() == pytest.approx(3 * v.norm(2))


# ----------------------------------------------------------------------------- compile_plan


def test_compile_plan_rejects_out_of_range_layer(tiny_llama: Model) -> None:
    v = _vec(layers=(7,), d=tiny_llama.d_model)
    with pytest.raises(SteerlabError, match=r"layer 7 is out of range.*0\.\.3"):
        compile_plan(tiny_llama, [[Intervention(v, layer=7)]])


def test_compile_plan_rejects_d_model_mismatch(tiny_llama: Model) -> None:
    v = _vec(layers=(1,), d=tiny_llama.d_model + 1)
    with pytest.raises(SteerlabError, match="d_model"):
        compile_plan(tiny_llama, [[Intervention(v, layer=1)]])


def test_compile_plan_slot_tensors(tiny_llama: Model) -> None:
    d = tiny_llama.d_model
    v = _vec(layers=(0, 2), d=d)
    rows = [
        [Intervention(v, layer=0, alpha=2.0, scale="resid", positions="generated")],
        [],
        [
            Intervention(v, layer=0, kind="clamp", alpha=3.0, scale="diff"),
            Intervention(v, layer=0, kind="ablate", alpha=0.5, positions="window:-2:1"),
        ],
    ]
    plan = compile_plan(tiny_llama, rows)
    assert plan.batch_size == 3
    assert list(plan.sites) == [Site(0, "resid_post")]
    first, second = plan.sites[Site(0, "resid_post")]
    u = v.unit(0)
    assert torch.allclose(first.add[0], 2.0 * 20.0 * u)
    assert torch.equal(first.add[1], torch.zeros(d))  # the unsteered row is all zeros
    assert bool(first.is_clamp[2]) and not bool(first.is_clamp[0])
    assert float(first.target[2]) == pytest.approx(3.0 * v.norm(0))
    assert torch.allclose(first.unit[2], u)
    assert (int(first.lo[0]), int(first.hi[0])) == Window.parse("generated").bounds
    assert int(first.lo[1]) == int(first.hi[1])  # empty window for the row without one
    assert float(second.coef[2]) == 0.5
    assert (int(second.lo[2]), int(second.hi[2])) == (-2, 1)
    assert int(second.lo[0]) == int(second.hi[0]) == 0


def test_compile_plan_keeps_sites_apart(tiny_llama: Model) -> None:
    v = _vec(layers=(0, 2), d=tiny_llama.d_model)
    plan = compile_plan(
        tiny_llama,
        [[Intervention(v, layer=2, hook_point="resid_pre"), Intervention(v, layer=0)]],
    )
    assert set(plan.sites) == {Site(2, "resid_pre"), Site(0, "resid_post")}
    assert all(len(slots) == 1 for slots in plan.sites.values())


def test_plan_select_keeps_rows(tiny_llama: Model) -> None:
    v = _vec(layers=(0,), d=tiny_llama.d_model)
    rows = [[Intervention(v, layer=0, alpha=float(a))] for a in (1, 2, 3)]
    plan = compile_plan(tiny_llama, rows).select(torch.tensor([2, 0]))
    assert plan.batch_size == 2
    (slot,) = plan.sites[Site(0, "resid_post")]
    assert torch.allclose(slot.add, torch.stack([3 * v.unit(0), 1 * v.unit(0)]))
