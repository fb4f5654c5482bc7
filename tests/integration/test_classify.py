"""``steerlab classify`` end to end on a tiny model: outputs, rows, the sign check, --flip-sign,
resume, and the same numbers on the hf, transformer_lens and nnsight backends."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from steerlab.cli import main

CONFIG = """\
name: tinyvuln
prompt_template: "Is this {group_name}? {text} Answer:"
labels: [vulnerable, secure]
positive: vulnerable
answer_words:
  vulnerable: [vulnerable]
  secure: [secure]
groups:
  A: bug a
  B: bug b
intended: {target: vulnerable, direction: raise}
data: tiny.jsonl
chat: false
"""


def _examples() -> list[dict[str, str]]:
    rows = []
    for g in ("A", "B"):
        for split, pairs in (("build", (1, 2, 3)), ("eval", (4, 5, 6))):
            for p in pairs:
                for label, text in (("vulnerable", f"x[{p}] = y"), ("secure", f"x[{p}] = 0")):
                    rows.append(
                        {
                            "id": f"{g}-{p}-{label[0]}",
                            "text": f"{g}{text}",
                            "label": label,
                            "group": g,
                            "split": split,
                            "pair": f"{g}-{p}",
                        }
                    )
    return rows


@pytest.fixture
def task(tmp_path: Path) -> Path:
    (tmp_path / "tiny.jsonl").write_text("".join(json.dumps(r) + "\n" for r in _examples()))
    p = tmp_path / "task.yaml"
    p.write_text(CONFIG)
    return p


def _run(out: Path, task: Path, *extra: str) -> None:
    main(
        [
            "classify", "--model", "tiny-llama", "--task", str(task), "--out", str(out),
            "--layers", "1,2", "--strengths", "1,4", "--scale", "diff",
            "--max-new-tokens", "4", "--quiet", *extra,
        ]
    )  # fmt: skip


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
        "generations.parquet",
    ):
        assert (out / name).is_file(), name
    df = pd.read_parquet(out / "results.parquet")
    n_eval = 12
    # baseline + (own, pooled) x 2 layers x 2 strengths + the other group at strength 4 x 2 layers
    assert len(df) == n_eval * (1 + 2 * 2 * 2 + 2)
    assert not df.duplicated(["example_id", "vector", "layer", "strength"]).any()
    # the baseline and the steered rows agree on what an unsteered row is: steering the own
    # group at a strength changes the margin (the vector is not zero)
    base = df[df["vector"] == "baseline"].set_index("example_id")["margin"]
    own = df[(df["vector"] == df["group"]) & (df["strength"] == 4) & (df["layer"] == 2)]
    assert (own.set_index("example_id")["margin"] - base.loc[own["example_id"]]).abs().max() > 0
    checks = json.loads((out / "signcheck.json").read_text())
    assert [c["layer"] for c in checks] == [1, 2]
    assert all(c["verdict"] in ("ok", "flipped", "inconclusive") for c in checks)
    assert "Sign check" in (out / "report.md").read_text().split("##")[1]
    gen = pd.read_parquet(out / "generations.parquet")
    assert set(gen["vector"]) >= {"baseline"} and gen["answer"].notna().all()
    # a finished run reruns without recomputing
    stamps = [p.stat().st_mtime_ns for p in sorted((out / "parts" / "grid").iterdir())]
    _run(out, task)
    assert [p.stat().st_mtime_ns for p in sorted((out / "parts" / "grid").iterdir())] == stamps


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
        if x["verdict"] == "ok":
            assert y["verdict"] == "flipped"
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
