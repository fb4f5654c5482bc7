"""``steerlab run`` names its precision (manifest, report header) and ends with its wall time
and the recorded stage times."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from tests.cli_run import cli
from tests.pipeline_helpers import tiny_run_config

from steerlab.pipelines.reliability.config import STAGES


@pytest.mark.parametrize(
    ("matmul_dtype", "precision"), [(None, "float32"), ("bf16", "float32, bf16 matmuls")]
)
def test_run_names_its_precision_and_prints_its_times(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], matmul_dtype: str | None, precision: str
) -> None:
    cfg_path = tiny_run_config(tmp_path, "runs", "r", alphas=(0, 1))
    cfg = yaml.safe_load(cfg_path.read_text())
    cfg["model"]["matmul_dtype"] = matmul_dtype
    cfg_path.write_text(yaml.safe_dump(cfg))
    got = cli(capsys, "run", "--config", cfg_path, "--quiet")
    assert got.code == 0, got.err
    run = tmp_path / "runs" / "r"
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["precision"] == precision
    assert manifest["model"]["matmul_dtype"] == matmul_dtype
    header = (run / "report.md").read_text().splitlines()[0]
    assert header.endswith(f", {precision}")
    lines = got.out.splitlines()
    assert lines[-2].startswith("wall time ") and f"; {precision})" in lines[-2]
    assert lines[-1].startswith("stage times (recorded in manifest.json, ")
    recorded = manifest["timings_s"]
    assert "report" in recorded and len(recorded) >= len(STAGES) - 1
    for stage in recorded:
        assert f"{stage} " in lines[-1]
