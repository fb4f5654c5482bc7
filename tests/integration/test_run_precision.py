"""``steerlab run`` names its precision (manifest, report header) and ends with its wall time
and the recorded stage times."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from tests.cli_run import cli
from tests.pipeline_helpers import tiny_run_config

from steerlab.models.int8_linear import int8_available
from steerlab.pipelines._shared import resolve_matmul_dtype
from steerlab.pipelines.reliability.config import STAGES

INT8 = int8_available()


@pytest.mark.parametrize(
    ("matmul_dtype", "precision", "resolved"),
    [
        (None, "float32", None),
        ("bf16", "float32, bf16 matmuls", "bf16"),
        ("int8", "float32, int8 matmuls", "int8"),
        # on CPU with the hf backend: int8 where this PyTorch has the x86 int8 GEMM
        ("auto", *(("float32, int8 matmuls", "int8") if INT8 else ("float32", None))),
    ],
)
def test_run_names_its_precision_and_prints_its_times(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    matmul_dtype: str | None,
    precision: str,
    resolved: str | None,
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
    assert manifest["model"]["matmul_dtype"] == resolved
    header = (run / "report.md").read_text().splitlines()[0]
    assert header.endswith(f", {precision}")
    lines = got.out.splitlines()
    assert lines[-2].startswith("wall time ") and f"; {precision})" in lines[-2]
    assert lines[-1].startswith("stage times (recorded in manifest.json, ")
    recorded = manifest["timings_s"]
    assert "report" in recorded and len(recorded) >= len(STAGES) - 1
    for stage in recorded:
        assert f"{stage} " in lines[-1]


def test_auto_matmul_dtype_is_int8_only_on_a_cpu_backend_that_lowers_matmuls() -> None:
    assert resolve_matmul_dtype("auto", "cpu", "hf", int8_gemm=True) == "int8"
    assert resolve_matmul_dtype("auto", "cpu", "nnsight", int8_gemm=True) == "int8"
    assert resolve_matmul_dtype("auto", "cpu", "hf", int8_gemm=False) is None
    assert resolve_matmul_dtype("auto", "cuda:0", "hf", int8_gemm=True) is None
    assert resolve_matmul_dtype("auto", "cpu", "transformer_lens", int8_gemm=True) is None
    assert resolve_matmul_dtype("auto", "cpu", "vllm", int8_gemm=True) is None
    assert resolve_matmul_dtype("auto", "cpu", "hf") == ("int8" if INT8 else None)
    assert resolve_matmul_dtype(None, "cpu", "hf") is None
    assert resolve_matmul_dtype("bf16", "cuda", "hf") == "bf16"  # an explicit value is kept
