"""select-coefficients names each vector file by its stem; names never collide (a repeated stem,
the same file twice, a stem equal to another's numbered name)."""

from __future__ import annotations

from pathlib import Path

import torch

from steerlab.pipelines.code.config import vector_refs
from steerlab.vectors import SteeringVector


def test_vector_names_are_distinct(tmp_path: Path) -> None:
    for d in ("a", "b"):
        (tmp_path / d).mkdir()
        SteeringVector(directions={1: torch.ones(4)}).save(tmp_path / d / "v.safetensors")
    SteeringVector(directions={1: torch.ones(4)}).save(tmp_path / "v-2.safetensors")
    a, b = tmp_path / "a" / "v.safetensors", tmp_path / "b" / "v.safetensors"
    paths = [a, b, tmp_path / "v-2.safetensors", a]
    refs = vector_refs([(p, "unknown") for p in paths])
    names = [r.name for r in refs]
    assert names == ["v", "v-2", "v-2-2", "v-3"]
    assert len(set(names)) == len(names)
