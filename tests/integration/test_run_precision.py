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
from steerlab.models.precision import cpu_has_native_bf16
from steerlab.pipelines._shared import resolve_matmul_dtype
from steerlab.pipelines.reliability.config import STAGES

INT8 = int8_available()
AUTO = "bf16" if cpu_has_native_bf16() else ("int8" if INT8 else None)
BF16 = "float32, bf16 matmuls" + ("" if cpu_has_native_bf16() else " (emulated)")


@pytest.mark.parametrize(
    ("matmul_dtype", "precision", "resolved"),
    [
        (None, "float32", None),
        ("bf16", BF16, "bf16"),
        ("int8", "float32, int8 matmuls", "int8"),
        # on CPU with the hf backend: bf16 on a CPU with native bf16, else int8 where this
        # PyTorch has the x86 int8 GEMM
        ("auto", f"float32, {AUTO} matmuls" if AUTO else "float32", AUTO),
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
    assert manifest["model"]["matmul_emulated"] is (precision.endswith("(emulated)"))
    header = (run / "report.md").read_text().splitlines()[0]
    assert header.endswith(f", {precision}")
    lines = got.out.splitlines()
    assert lines[-2].startswith("wall time ") and f"; {precision})" in lines[-2]
    assert lines[-1].startswith("stage times (recorded in manifest.json, ")
    recorded = manifest["timings_s"]
    assert "report" in recorded and len(recorded) >= len(STAGES) - 1
    for stage in recorded:
        assert f"{stage} " in lines[-1]


def test_auto_matmul_dtype_is_bf16_or_int8_only_on_a_cpu_backend_that_lowers_matmuls() -> None:
    plain = {"int8_gemm": True, "native_bf16": False}
    assert resolve_matmul_dtype("auto", "cpu", "hf", **plain) == "int8"
    assert resolve_matmul_dtype("auto", "cpu", "nnsight", **plain) == "int8"
    assert resolve_matmul_dtype("auto", "cpu", "hf", int8_gemm=False, native_bf16=False) is None
    native = {"int8_gemm": True, "native_bf16": True}  # native bf16 goes first
    assert resolve_matmul_dtype("auto", "cpu", "hf", **native) == "bf16"
    assert resolve_matmul_dtype("auto", "cpu", "nnsight", **native) == "bf16"
    assert resolve_matmul_dtype("auto", "cpu", "hf", int8_gemm=False, native_bf16=True) == "bf16"
    for kinds in (plain, native):
        assert resolve_matmul_dtype("auto", "cuda:0", "hf", **kinds) is None
        assert resolve_matmul_dtype("auto", "cpu", "transformer_lens", **kinds) is None
        assert resolve_matmul_dtype("auto", "cpu", "vllm", **kinds) is None
    here = "bf16" if cpu_has_native_bf16() else ("int8" if INT8 else None)
    assert resolve_matmul_dtype("auto", "cpu", "hf") == here
    assert resolve_matmul_dtype(None, "cpu", "hf") is None
    assert resolve_matmul_dtype("bf16", "cuda", "hf") == "bf16"  # an explicit value is kept
