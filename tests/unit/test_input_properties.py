"""Property tests: arbitrary bytes and arbitrary YAML never make the config loader, the JSONL
reader or the prompt reader raise anything but a clear :class:`SteerlabError` (no traceback)."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import pytest
import yaml

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from steerlab._util.jsonl import read_jsonl  # noqa: E402
from steerlab.errors import SteerlabError  # noqa: E402
from steerlab.pipelines.reliability.config import load_config  # noqa: E402
from steerlab.tasks.prompts import read_prompts  # noqa: E402

SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# YAML-able values, with the config's own keys mixed in so validation goes deep
KEYS = st.sampled_from(
    [
        "model",
        "name",
        "data",
        "generation",
        "experiment",
        "layers",
        "alphas",
        "seed",
        "temperature",
        "direction",
        "hook_point",
        "sanity_checks",
        "metrics",
        "run_id",
        "x",
    ]
)
SCALARS = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True), st.text(max_size=20)
)
VALUES: Any = st.recursive(
    SCALARS,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(KEYS, inner, max_size=5)),
    max_leaves=20,
)


def _write(data: bytes) -> Path:
    f = tempfile.NamedTemporaryFile(suffix=".yaml", delete=False)  # noqa: SIM115
    f.write(data)
    f.close()
    return Path(f.name)


def _only_clear_errors(fn: Any, path: Path) -> None:
    try:
        fn(path)
    except SteerlabError as e:
        assert str(e) and "\n" not in str(e).strip()
    finally:
        path.unlink(missing_ok=True)


@SETTINGS
@given(st.binary(max_size=400))
def test_config_loader_on_arbitrary_bytes(data: bytes) -> None:
    _only_clear_errors(load_config, _write(data))


@SETTINGS
@given(VALUES)
def test_config_loader_on_arbitrary_yaml(value: Any) -> None:
    _only_clear_errors(load_config, _write(yaml.safe_dump(value).encode()))


@SETTINGS
@given(VALUES)
def test_config_loader_with_overrides(value: Any) -> None:
    path = _write(yaml.safe_dump(value).encode())
    _only_clear_errors(lambda p: load_config(p, {"model.name": "tiny-llama"}), path)


@SETTINGS
@given(st.binary(max_size=400))
def test_jsonl_reader_on_arbitrary_bytes(data: bytes) -> None:
    _only_clear_errors(read_jsonl, _write(data))


@SETTINGS
@given(st.lists(VALUES, max_size=5))
def test_prompt_reader_on_arbitrary_json_lines(values: list[Any]) -> None:
    import json

    text = "\n".join(json.dumps(v) for v in values)
    _only_clear_errors(read_prompts, _write(text.encode()))
