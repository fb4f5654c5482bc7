"""``steerlab classify``'s grid on a tiny model: generation mode (every row generated with the
engine and parsed, resumable shard by shard) and the cross-group tables at every strength."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pandas as pd
import pytest
from tests.classify_tiny import GROUPS, N_EVAL, config, prompt, run, write_task

from steerlab.engine.generate import GenerationConfig, Row, generate
from steerlab.models import Model
from steerlab.pipelines.classify.run import Classify
from steerlab.runs.runner import execute
from steerlab.tasks.classification import load_task, parse_answer

KEYS = ["example_id", "vector", "layer", "strength"]


@pytest.fixture
def task(tmp_path: Path) -> Path:
    return write_task(tmp_path)


@pytest.fixture(scope="module")
def generated_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One generation-mode run: ``--positions generated`` (the mode follows), layers 1 and 2,
    strengths 1 and 4, every group's vector on every group."""
    d = tmp_path_factory.mktemp("gen")
    out = d / "run"
    run(out, write_task(d), "--positions", "generated")
    return out


def test_generated_positions_generate_and_parse_every_grid_row(
    generated_run: Path, tiny_llama: Model
) -> None:
    out = generated_run
    df = pd.read_parquet(out / "results.parquet")
    # the same rows as the logit-mode grid: baseline + (own, pooled, other) x 2 layers x 2
    assert len(df) == N_EVAL * (1 + 3 * 2 * 2)
    assert not df.duplicated(KEYS).any()
    # every row's text is kept, and parsed with the task's parser
    cfg = load_task(str(out.parent / "task.yaml")).config
    assert df["answer"].map(lambda a: isinstance(a, str)).all()
    assert [parse_answer(a, cfg)[0] for a in df["answer"]] == df["parsed"].tolist()
    assert (df["correct"] == (df["parsed"] == df["label"])).all()
    assert (df["uncertain"] == (df["parsed"] == "uncertain")).all()
    # margin and AUROC do not exist in this mode
    assert df["margin"].isna().all()
    summary = json.loads((out / "results.json").read_text())
    assert summary["mode"] == "generate"
    assert all(r["auroc"] is None and r["margin"] is None for r in summary["summary"])
    # the baseline rows are exactly what the engine generates for the same prompts
    base = df[df["vector"] == "baseline"].sort_values("example_id")
    want = generate(
        tiny_llama,
        [Row(prompt(i)) for i in base["example_id"]],
        GenerationConfig(max_new_tokens=4),
        progress=False,
    )
    assert base["answer"].tolist() == [r.text for r in want]
    # steering only generated tokens cannot change the first token (chosen at the last prompt
    # token), but does change what follows
    base_ids = {i: list(t) for i, t in zip(base["example_id"], base["token_ids"], strict=True)}
    steered = df[df["vector"] != "baseline"]
    pairs = [
        (list(t), base_ids[i])
        for i, t in zip(steered["example_id"], steered["token_ids"], strict=True)
    ]
    assert all(got[:1] == want[:1] for got, want in pairs)
    assert any(got != want for got, want in pairs)


def test_generation_mode_checks_and_reports_in_its_own_terms(generated_run: Path) -> None:
    out = generated_run
    checks = json.loads((out / "signcheck.json").read_text())
    assert {c["metric"] for c in checks} == {"answer_rate"}
    assert {c["vector"] for c in checks} == {"pooled", *GROUPS}
    report = (out / "report.md").read_text()
    assert "Generate mode" in report
    assert "cannot change the next-token logits at the last prompt token" in report
    assert "rate of answers stating 'vulnerable'" in report
    # the follow-up generation stage has nothing to add: the grid is generated already
    assert not (out / "parts" / "generate").exists()
    assert not (out / "generations.parquet").exists()


def test_generation_grid_resumes_shard_by_shard(tmp_path: Path, task: Path) -> None:
    cfg = config(
        tmp_path / "run",
        task,
        layers=[1],
        positions="generated",
        strengths=[4.0],
        scale="diff",
        cross_group=False,
        max_new_tokens=4,
        shard_size=10,
    )
    execute(Classify(), cfg, progress=False)
    parts = sorted((tmp_path / "run" / "parts" / "grid").iterdir())
    assert len(parts) == 4  # 12 baseline + 12 x (own, pooled) = 36 rows in shards of 10
    before = pd.read_parquet(tmp_path / "run" / "results.parquet")
    lost = parts[1]
    kept = {p: p.stat().st_mtime_ns for p in parts if p != lost}
    lost.unlink()  # as if the run had been killed while this shard was in flight
    execute(Classify(), cfg, progress=False)
    assert lost.is_file()
    assert {p: p.stat().st_mtime_ns for p in kept} == kept
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert manifest["stages"]["grid"]["computed"] == 10
    after = pd.read_parquet(tmp_path / "run" / "results.parquet")
    pd.testing.assert_frame_equal(before, after)


def test_explicit_generate_mode_at_prompt_positions(tmp_path: Path, task: Path) -> None:
    out = tmp_path / "run"
    run(out, task, "--mode", "generate", "--layers", "2", "--no-cross-group")
    df = pd.read_parquet(out / "results.parquet")
    assert df["answer"].notna().all() and df["margin"].isna().all()
    report = (out / "report.md").read_text()
    assert "Generate mode" in report and "cannot change" not in report


def test_cross_group_covers_every_layer_and_strength(tmp_path: Path, task: Path) -> None:
    out = tmp_path / "run"
    run(out, task, "--no-generate")
    df = pd.read_parquet(out / "results.parquet")
    cross = pd.DataFrame(json.loads((out / "results.json").read_text())["cross_group"])
    layers, strengths = (1, 2), (1.0, 4.0)
    want = set(itertools.product(layers, strengths, GROUPS, GROUPS))
    got = set(zip(cross["layer"], cross["strength"], cross["vector"], cross["group"], strict=True))
    assert got == want and len(cross) == len(want)
    # each cell is the mean over group b's rows under group a's vector, minus b's baseline
    base = df[df["vector"] == "baseline"].groupby("group")
    for _, c in cross.iterrows():
        rows = df[
            (df["vector"] == c["vector"])
            & (df["group"] == c["group"])
            & (df["layer"] == c["layer"])
            & (df["strength"] == c["strength"])
        ]
        assert len(rows) == c["n"] == N_EVAL // 2
        b = base.get_group(c["group"])
        assert c["d_p_positive"] == pytest.approx(
            rows["p_positive"].mean() - b["p_positive"].mean()
        )
        assert c["d_accuracy"] == pytest.approx(rows["correct"].mean() - b["correct"].mean())
    report = (out / "report.md").read_text()
    for layer, s in itertools.product(layers, strengths):
        assert f"Layer {layer}, strength {s:g}:" in report
    # the best-per-cell table names, per cell, the best strength and layer
    table = report.split("### Best setting per cell")[1].split("###")[0]
    for a in GROUPS:
        cell = cross[(cross["vector"] == a)]
        row = next(line for line in table.splitlines() if line.startswith(f"| {a} |"))
        for b, text in zip(GROUPS, row.strip("|").split("|")[1:], strict=True):
            c = cell[cell["group"] == b]
            best = c.sort_values(["d_accuracy", "strength", "layer"], ascending=[False, True, True])
            top = best.iloc[0]
            every = c["d_accuracy"].nunique() == 1  # no setting beats another
            where = "every α" if every else f"α={top['strength']:g}, L{int(top['layer'])}"
            assert text.strip() == f"{100 * top['d_accuracy']:+.0f} ({where})"
    for name in ("cross_group.png", "cross_group_best.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
