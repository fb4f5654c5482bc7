"""``steerlab select-coefficients`` end to end on a tiny model: rows, outputs, the noise floor,
α = 0 equals the baseline, baseline reuse, and resume."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest
import torch

from steerlab.cli import main
from steerlab.vectors import SteeringVector

pytestmark = pytest.mark.skipif(shutil.which("bwrap") is None, reason="needs bubblewrap")

BRANCHY = "def f{i}(x):\n    if x > 0:\n        return x + {i}\n    return x + {i}"
TASKS = [
    {
        "task_id": i,
        "text": f"Write a function `f{i}(x)` that returns x plus {i}.",
        "code": f"def f{i}(x):\n    return x + {i}" if i % 3 else BRANCHY.format(i=i),
        "test_list": [f"assert f{i}(1) == {1 + i}", f"assert f{i}(0) == {i}"],
        "test_setup_code": "",
    }
    for i in range(1, 10)
]


@pytest.fixture
def task_file(tmp_path: Path) -> Path:
    p = tmp_path / "tasks.jsonl"
    p.write_text("".join(json.dumps(t) + "\n" for t in TASKS))
    return p


@pytest.fixture
def vector_file(tmp_path: Path) -> Path:
    torch.manual_seed(0)
    d = 64  # tiny-llama's width
    vec = SteeringVector(directions={1: torch.randn(d)}, hook_point="resid_post", method="random")
    return vec.save(tmp_path / "rand.safetensors")


def _run(out: Path, task_file: Path, *extra: str) -> None:
    main(
        [
            "select-coefficients",
            "--model", "tiny-llama",
            "--tasks", str(task_file),
            "--prompt-mode", "completion",
            "--out", str(out),
            "--coefficients", "0,3,30",
            "--n-per-coefficient", "4",
            "--max-new-tokens", "12",
            "--batch-size", "5",
            "--shard-size", "7",
            "--quiet",
            *extra,
        ]
    )  # fmt: skip


def test_end_to_end(tmp_path: Path, task_file: Path, vector_file: Path) -> None:
    out = tmp_path / "run"
    _run(out, task_file, "--correct-vector", str(vector_file))
    for name in (
        "baseline.parquet",
        "results.parquet",
        "summary.json",
        "selected_coefficients.json",
        "report.md",
        "coefficient_analysis.png",
    ):
        assert (out / name).is_file(), name
    assert sorted(p.name for p in (out / "examples").iterdir()) == [
        "coef_0.md",
        "coef_3.md",
        "coef_30.md",
    ]
    base = pd.read_parquet(out / "baseline.parquet")
    assert len(base) == len(TASKS)
    assert set(base["status"]) <= {"pass", "fail", "error", "syntax_error", "timeout", "oom"}
    res = pd.read_parquet(out / "results.parquet")
    steered = res[res["vector"] == "rand"]
    assert len(steered) == 3 * 4
    assert steered.groupby("coefficient").size().tolist() == [4, 4, 4]
    # α = 0 and the unsteered rows reproduce the baseline exactly (another batch layout)
    for part in (steered[steered["coefficient"] == 0], res[res["vector"] == "none"]):
        b = base.set_index("task_id").loc[part["task_id"]]
        assert part["code"].tolist() == b["code"].tolist()
        assert part["status"].tolist() == b["status"].tolist()
    summary = json.loads((out / "summary.json").read_text())
    assert summary["noise_floor"]["flips"] == 0
    sel = json.loads((out / "selected_coefficients.json").read_text())
    assert set(sel["vectors"]) == {"rand"} and sel["vectors"]["rand"]["intent"] == "correct"
    assert "Rule:" in (out / "report.md").read_text()
    # a finished run reruns in place without new rows
    parts = sorted((out / "parts" / "grid").iterdir())
    stamps = [p.stat().st_mtime_ns for p in parts]
    _run(out, task_file, "--correct-vector", str(vector_file))
    assert [p.stat().st_mtime_ns for p in sorted((out / "parts" / "grid").iterdir())] == stamps


def test_baseline_is_reused_from_another_run(
    tmp_path: Path, task_file: Path, vector_file: Path
) -> None:
    first = tmp_path / "first"
    _run(first, task_file, "--vector", str(vector_file), "--coefficients", "1")
    second = tmp_path / "second"
    _run(
        second,
        task_file,
        "--vector",
        str(vector_file),
        "--baseline",
        str(first / "baseline.parquet"),
    )
    assert not (second / "parts" / "baseline").exists()  # nothing regenerated
    a = pd.read_parquet(first / "baseline.parquet")
    b = pd.read_parquet(second / "baseline.parquet")
    pd.testing.assert_frame_equal(a, b)


def test_a_task_whose_reference_fails_its_tests_is_left_out(
    tmp_path: Path, vector_file: Path
) -> None:
    broken = {**TASKS[0], "task_id": 99, "code": "def f1(x):\n    return x"}  # fails f1(1) == 2
    tasks = tmp_path / "mixed.jsonl"
    tasks.write_text("".join(json.dumps(t) + "\n" for t in [*TASKS[:4], broken]))
    out = tmp_path / "run"
    _run(out, tasks, "--vector", str(vector_file), "--layer", "1")
    check = json.loads((out / "reference_check.json").read_text())
    assert check["checked"] == 5 and list(check["failing"]) == ["mixed/99"]
    base = pd.read_parquet(out / "baseline.parquet")
    assert sorted(base["task_id"]) == ["mixed/1", "mixed/2", "mixed/3", "mixed/4"]
