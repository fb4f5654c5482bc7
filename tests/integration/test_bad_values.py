"""Values that would give wrong results are refused with one clear message
(or, for duplicate prompt ids, warned about once and recorded in the output)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch

import steerlab as sl
from steerlab.errors import SteerlabError
from steerlab.models import Model
from steerlab.pipelines.jobs import SteerSpec, run_generate
from steerlab.pipelines.reliability.config import load_config


@pytest.mark.parametrize(
    ("override", "match"),
    [
        ({"experiment.layers": []}, "at least one layer"),
        ({"experiment.layers": [True]}, "layers"),
        ({"experiment.layers": [1, 1]}, "distinct"),
        ({"experiment.interventions": ["add", "add"]}, "distinct"),
        ({"generation.temperature": float("inf")}, "temperature"),
        ({"experiment.alphas": [0.0, float("nan")]}, "alphas"),
    ],
)
def test_config_refuses_values_that_gave_wrong_results(override: dict, match: str) -> None:
    with pytest.raises(SteerlabError, match=match):
        load_config("fast", override)


def test_generation_config_refuses_infinite_temperature() -> None:
    with pytest.raises(SteerlabError, match="finite"):
        sl.GenerationConfig(temperature=float("inf"))


def test_vector_with_nan_norm_metadata_is_refused() -> None:
    with pytest.raises(SteerlabError, match=r"raw_norm\[0\]"):
        sl.SteeringVector({0: torch.ones(4)}, raw_norm={0: float("nan")})


def test_overflowing_alpha_is_refused(tiny_llama: Model, make_vector) -> None:  # type: ignore[no-untyped-def]
    v = make_vector(tiny_llama, layers=[1])
    with pytest.raises(SteerlabError, match="overflows"):
        sl.Intervention(v, 1, alpha=1e308, scale="diff")


def test_non_finite_output_stops_with_the_setting(tiny_llama: Model, make_vector) -> None:  # type: ignore[no-untyped-def]
    v = make_vector(tiny_llama, layers=[0])
    iv = sl.Intervention(v, 0, alpha=1e37, scale="absolute")
    rows = [sl.Row(tiny_llama.format_prompt("hi"), (iv,))]
    with pytest.raises(SteerlabError, match="non-finite"):
        sl.generate(tiny_llama, rows, sl.GenerationConfig(max_new_tokens=3), progress=False)


def test_empty_prompt_and_duplicate_ids(
    tiny_llama: Model, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cfg = sl.GenerationConfig(max_new_tokens=2)
    out = tmp_path / "o.jsonl"
    with pytest.raises(SteerlabError, match="prompt 'b' is empty"):
        run_generate(tiny_llama, [("a", "hi"), ("b", "  ")], SteerSpec(), cfg, 0, out)
    assert not out.exists()
    with caplog.at_level(logging.WARNING):
        run_generate(tiny_llama, [("a", "hi"), ("a", "yo"), ("c", "x")], SteerSpec(), cfg, 0, out)
    assert sum("more than once" in r.message for r in caplog.records) == 1
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r.get("duplicate_id", False) for r in rows] == [True, True, False]


@pytest.mark.parametrize(
    ("section", "key", "value", "match"),
    [
        ("experiment", "positions", "middle", "experiment.positions"),
        ("experiment", "layers", [1, 99], "out of range"),
        ("model", "name", "./no/such/dir", "unknown model spec"),
        ("model", "dtype", "float8", "unknown dtype"),
        ("model", "matmul_dtype", "int3", "model.matmul_dtype"),
    ],
)
def test_run_validates_before_writing_anything(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    section: str,
    key: str,
    value: object,
    match: str,
) -> None:
    import yaml

    from steerlab.cli import main
    from steerlab.pipelines.reliability.config import dump_config

    data = yaml.safe_load(dump_config(load_config("fast", {"model.name": "tiny-llama"})))
    data[section][key] = value
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(yaml.safe_dump(data), encoding="utf-8")
    out = tmp_path / "runs"
    with pytest.raises(SystemExit) as info:
        main(["run", "--config", str(cfg), "--output-dir", str(out), "--quiet"])
    err = capsys.readouterr().err.strip().splitlines()
    assert info.value.code == 2
    assert len(err) == 1 and err[0].startswith("error:") and match in err[0], err
    assert not out.exists() or not any(out.rglob("*"))
