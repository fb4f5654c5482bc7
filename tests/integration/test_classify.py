"""``steerlab classify`` end to end on a tiny model: outputs, rows, the sign check, --flip-sign,
resume, and the same numbers on the hf, transformer_lens and nnsight backends."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from tests.classify_tiny import N_EVAL, write_task
from tests.classify_tiny import run as _run


@pytest.fixture
def task(tmp_path: Path) -> Path:
    return write_task(tmp_path)


def test_end_to_end_and_resume(tmp_path: Path, task: Path) -> None:
    out = tmp_path / "run"
    _run(out, task)
    for name in (
        "results.parquet",
        "results.json",
        "report.md",
        "signcheck.json",
        "accuracy_vs_strength.png",
        "cross_group.png",
        "cross_group_best.png",
        "generations.parquet",
    ):
        assert (out / name).is_file(), name
    df = pd.read_parquet(out / "results.parquet")
    # baseline + (own, pooled, the other group) x 2 layers x 2 strengths
    assert len(df) == N_EVAL * (1 + 3 * 2 * 2)
    assert not df.duplicated(["example_id", "vector", "layer", "strength"]).any()
    # the baseline and the steered rows agree on what an unsteered row is: steering the own
    # group at a strength changes the margin (the vector is not zero)
    base = df[df["vector"] == "baseline"].set_index("example_id")["margin"]
    own = df[(df["vector"] == df["group"]) & (df["strength"] == 4) & (df["layer"] == 2)]
    assert (own.set_index("example_id")["margin"] - base.loc[own["example_id"]]).abs().max() > 0
    checks = json.loads((out / "signcheck.json").read_text())
    # the pooled vector, then each group's, at every layer
    assert [(c["vector"], c["layer"]) for c in checks] == [
        (v, layer) for v in ("pooled", "A", "B") for layer in (1, 2)
    ]
    assert all(c["verdict"] in ("ok", "flipped", "inconclusive") for c in checks)
    # pooled: the held-out examples labeled with the target; a group: all of its examples
    assert [c["n"] for c in checks] == [N_EVAL // 2] * 2 + [N_EVAL // 2] * 4
    assert all(c["on_label"] == ["vulnerable", "secure"] for c in checks[2:])
    assert "Sign check" in (out / "report.md").read_text().split("##")[1]
    gen = pd.read_parquet(out / "generations.parquet")
    assert set(gen["vector"]) >= {"baseline"} and gen["answer"].notna().all()
    # a finished run reruns without recomputing
    parts = sorted((out / "parts").rglob("part-*.parquet"))
    assert {p.parent.name for p in parts} == {"signcheck", "grid", "generate"}
    stamps = [p.stat().st_mtime_ns for p in parts]
    _run(out, task)
    assert [p.stat().st_mtime_ns for p in sorted((out / "parts").rglob("part-*.parquet"))] == stamps


def test_flip_sign_mirrors_the_sign_check(tmp_path: Path, task: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    _run(a, task, "--no-generate", "--no-cross-group")
    _run(b, task, "--no-generate", "--no-cross-group", "--flip-sign")
    ca = json.loads((a / "signcheck.json").read_text())
    cb = json.loads((b / "signcheck.json").read_text())
    for x, y in zip(ca, cb, strict=True):
        assert x["baseline"] == pytest.approx(y["baseline"], abs=1e-6)
        assert x["plus"] == pytest.approx(y["minus"], abs=1e-5)
        assert x["minus"] == pytest.approx(y["plus"], abs=1e-5)
        # the verdicts mirror: every vector's check sees its own negation
        mirror = {"ok": "flipped", "flipped": "ok", "inconclusive": "inconclusive"}
        assert y["verdict"] == mirror[x["verdict"]], (x["vector"], x["layer"])
    ra = pd.read_parquet(a / "results.parquet")
    rb = pd.read_parquet(b / "results.parquet")
    keys = ["example_id", "vector", "layer", "strength"]
    m = ra.merge(rb, on=keys, suffixes=("_a", "_b"))
    steered = m[m["vector"] != "baseline"]
    assert (steered["margin_a"] != steered["margin_b"]).any()
    unsteered = m[m["vector"] == "baseline"]
    assert (unsteered["margin_a"] == unsteered["margin_b"]).all()


@pytest.mark.parametrize("backend", ["transformer_lens", "nnsight"])
def test_backends_give_the_same_numbers(tmp_path: Path, task: Path, backend: str) -> None:
    ref, other = tmp_path / "hf", tmp_path / backend
    _run(ref, task, "--no-generate")
    _run(other, task, "--no-generate", "--backend", backend)
    keys = ["example_id", "vector", "layer", "strength"]
    a = pd.read_parquet(ref / "results.parquet").sort_values(keys).reset_index(drop=True)
    b = pd.read_parquet(other / "results.parquet").sort_values(keys).reset_index(drop=True)
    assert a[keys].equals(b[keys])
    assert (a["margin"] - b["margin"]).abs().max() < 1e-4
    assert (a["correct"] == b["correct"]).all() or (a["margin"].abs() < 1e-4).any()
