"""``steerlab classify`` without a model: the grid mode a config resolves to, the sign-check
rows and the advice drawn from the checks, scoring generated answers, and the cross-group
tables over every strength."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from tests.classify_tiny import N_EVAL, config, write_task

from steerlab.errors import SteerlabError
from steerlab.pipelines.classify.checks import advise
from steerlab.pipelines.classify.config import generated_only
from steerlab.pipelines.classify.cross import best_cells, cross_frame
from steerlab.pipelines.classify.cross import markdown as cross_markdown
from steerlab.pipelines.classify.report import metrics, scored
from steerlab.pipelines.classify.run import check_rows


@pytest.fixture
def task(tmp_path: Path) -> Path:
    return write_task(tmp_path)


# ----------------------------------------------------------------------------- the config


@pytest.mark.parametrize(
    ("positions", "mode", "want"),
    [
        ("last-prompt", "auto", "logit"),
        ("all", "auto", "logit"),
        ("window:-3:2", "auto", "logit"),  # reaches into the prompt
        ("generated", "auto", "generate"),
        ("window:0:8", "auto", "generate"),
        ("window:2:", "auto", "generate"),
        ("last-prompt", "generate", "generate"),
        ("generated", "generate", "generate"),
    ],
)
def test_grid_mode_follows_the_positions(
    tmp_path: Path, task: Path, positions: str, mode: str, want: str
) -> None:
    cfg = config(tmp_path / "r", task, positions=positions, mode=mode)
    assert cfg.grid_mode() == want
    assert generated_only(positions) == (positions in ("generated", "window:0:8", "window:2:"))


def test_flips_name_vectors(tmp_path: Path, task: Path) -> None:
    cfg = config(tmp_path / "r", task, flip_groups=["A", "pooled"])
    assert [cfg.flipped(v) for v in ("A", "B", "pooled", "baseline")] == [True, False, True, False]
    every = config(tmp_path / "r", task, flip_sign=True)
    assert [every.flipped(v) for v in ("A", "B", "pooled", "baseline")] == [True, True, True, False]
    with pytest.raises(SteerlabError, match="not both"):
        config(tmp_path / "r", task, flip_sign=True, flip_groups=["A"])
    with pytest.raises(SteerlabError, match="distinct"):
        config(tmp_path / "r", task, flip_groups=["A", "A"])


def test_check_rows_cover_every_vector_at_both_signs(tmp_path: Path, task: Path) -> None:
    cfg = config(tmp_path / "r", task, strengths=[1.0, 4.0])
    rows = check_rows(cfg, ["pooled", "A", "B"], [1, 2])
    keys = [r.key for r in rows]
    assert len(set(keys)) == len(keys)
    assert sum(r.vector == "baseline" for r in rows) == N_EVAL
    for layer in (1, 2):
        for s in (4.0, -4.0):  # the sign-check strength: the largest
            at = [r for r in rows if r.layer == layer and r.strength == s]
            assert sum(r.vector == "pooled" for r in at) == N_EVAL
            # a group's vector only on its own examples
            assert all(r.example_id.startswith(r.vector) for r in at if r.vector != "pooled")
            assert sum(r.vector in ("A", "B") for r in at) == N_EVAL
    # a group without a vector of its own is not checked
    assert not any(r.vector == "B" for r in check_rows(cfg, ["pooled", "A"], [1]))


# ----------------------------------------------------------------------------- advice


def checks(verdicts: dict[tuple[str, int], str]) -> list[dict[str, Any]]:
    return [{"vector": v, "layer": layer, "verdict": x} for (v, layer), x in verdicts.items()]


def test_advice_names_backwards_vectors_and_the_command(tmp_path: Path, task: Path) -> None:
    cfg = config(tmp_path / "r", task, layers=[1, 2])
    c = checks(
        {
            ("pooled", 1): "ok",
            ("pooled", 2): "inconclusive",
            ("A", 1): "flipped",
            ("A", 2): "inconclusive",
            ("B", 1): "flipped",
            ("B", 2): "ok",
        }
    )
    adv = advise(cfg, c)
    assert adv.backwards == ("A",) and adv.mixed == ("B",) and adv.flips == ("A",)
    assert adv.command is not None and adv.command.endswith("--flip-groups A")
    assert f"--out {cfg.out}-flipped" in adv.command
    # nothing backwards: no command
    assert advise(cfg, checks({("A", 1): "ok", ("B", 1): "inconclusive"})).command is None


def test_advice_toggles_the_vectors_this_run_already_negates(tmp_path: Path, task: Path) -> None:
    # A was negated in this run and is backwards as applied: the rerun drops A and adds B
    cfg = config(tmp_path / "r", task, flip_groups=["A"])
    adv = advise(cfg, checks({("pooled", 1): "ok", ("A", 1): "flipped", ("B", 1): "flipped"}))
    assert adv.flips == ("B",) and adv.command is not None
    assert adv.command.endswith("--flip-groups B")
    # every vector backwards as built: --flip-sign
    plain = config(tmp_path / "r", task)
    every = checks({("pooled", 1): "flipped", ("A", 1): "flipped", ("B", 1): "flipped"})
    adv = advise(plain, every)
    assert adv.command is not None and adv.command.endswith("--flip-sign")
    # every vector backwards in a --flip-sign run: the rerun negates nothing
    adv = advise(config(tmp_path / "r", task, flip_sign=True), every)
    assert adv.flips == () and adv.command is not None
    assert "--flip" not in adv.command


# ----------------------------------------------------------------------------- scoring


def frame(parsed: list[str], labels: list[str], **cols: Any) -> pd.DataFrame:
    n = len(parsed)
    return pd.DataFrame(
        {
            "example_id": [f"e{i}" for i in range(n)],
            "group": ["A"] * n,
            "label": labels,
            "vector": ["baseline"] * n,
            "layer": [-1] * n,
            "strength": [0.0] * n,
            "parsed": parsed,
            **cols,
        }
    )


def test_generated_answers_are_scored_by_their_parsed_label() -> None:
    labels = ["vulnerable"] * 4 + ["secure"] * 4
    parsed = ["vulnerable", "vulnerable", "uncertain", "secure"] + ["secure", "uncertain"] * 2
    s = scored(frame(parsed, labels), "vulnerable", "uncertain")
    assert s["correct"].tolist() == [True, True, False, False, True, False, True, False]
    assert s["uncertain"].sum() == 3
    # P(positive) is the rate of answers stating the positive label
    assert s["p_positive"].tolist() == [1.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]
    assert s["margin"].isna().all() and s["margin_true"].isna().all()
    m = metrics(s, "vulnerable")
    assert m["accuracy"] == 4 / 8  # an uncertain answer is wrong
    assert m["recall_positive"] == 2 / 4 and m["recall_negative"] == 2 / 4
    assert m["uncertain"] == 3 / 8 and m["p_positive"] == 2 / 8
    assert math.isnan(m["margin"]) and math.isnan(m["auroc"])


def test_logit_rows_keep_margin_and_auroc() -> None:
    labels = ["vulnerable", "vulnerable", "secure", "secure"]
    margin = np.array([2.0, -1.0, -3.0, 0.5])
    df = frame(["-"] * 4, labels, margin=margin, p_positive=1 / (1 + np.exp(-margin)))
    s = scored(df.drop(columns="parsed"), "vulnerable")
    assert s["correct"].tolist() == [True, False, True, False]
    m = metrics(s, "vulnerable")
    assert m["auroc"] == 0.75 and math.isnan(m["uncertain"])


# ----------------------------------------------------------------------------- cross-group


def grid() -> pd.DataFrame:
    """Groups A and B, two examples each (one per label); vectors A and B at strengths 1 and 2
    on both groups; p_positive and correct chosen by hand."""
    rows = []
    for g in ("A", "B"):
        for label in ("vulnerable", "secure"):
            rows.append((f"{g}{label[0]}", g, label, "baseline", -1, 0.0, 0.5, False))
    table = {  # (vector, group, strength) -> (p_positive per example, correct per example)
        ("A", "A", 1.0): ((0.7, 0.3), (True, True)),
        ("A", "A", 2.0): ((0.9, 0.6), (True, False)),
        ("A", "B", 1.0): ((0.5, 0.5), (False, False)),
        ("A", "B", 2.0): ((0.8, 0.2), (True, True)),
        ("B", "A", 1.0): ((0.6, 0.6), (True, False)),
        ("B", "A", 2.0): ((0.6, 0.6), (True, False)),
        ("B", "B", 1.0): ((0.4, 0.4), (False, True)),
        ("B", "B", 2.0): ((0.3, 0.3), (False, True)),
    }
    for (v, g, s), (ps, cs) in table.items():
        for label, p, c in zip(("vulnerable", "secure"), ps, cs, strict=True):
            rows.append((f"{g}{label[0]}", g, label, v, 3, s, p, c))
    rows.append(("Av", "A", "vulnerable", "pooled", 3, 1.0, 0.99, True))  # not a cross cell
    cols = ["example_id", "group", "label", "vector", "layer", "strength", "p_positive", "correct"]
    return pd.DataFrame(rows, columns=cols)


def test_cross_frame_has_every_cell_at_every_strength() -> None:
    t = cross_frame(grid()).set_index(["vector", "group", "strength"])
    assert len(t) == 8 and set(t["layer"]) == {3}
    assert t.loc[("A", "A", 2.0), "d_p_positive"] == pytest.approx(0.75 - 0.5)
    assert t.loc[("A", "B", 2.0), "d_accuracy"] == pytest.approx(1.0)
    assert t.loc[("B", "B", 1.0), "d_accuracy"] == pytest.approx(0.5)
    assert (t["n"] == 2).all()


def test_best_cell_is_the_most_accurate_strength_then_the_smaller() -> None:
    best = best_cells(cross_frame(grid())).set_index(["vector", "group"])
    assert best.loc[("A", "A"), "strength"] == 1.0  # 100% at 1 vs 50% at 2
    assert best.loc[("A", "B"), "strength"] == 2.0
    assert best.loc[("B", "A"), "strength"] == 1.0  # a tie: the smaller strength
    assert best.loc[("A", "B"), "d_accuracy"] == pytest.approx(1.0)
    # a cell where no strength beats another says so instead of naming one
    assert best["every"].tolist() == [False, False, True, True]


def test_cross_markdown_names_the_best_strength_per_cell() -> None:
    lines = cross_markdown(cross_frame(grid()), ["A", "B"], "P(vulnerable)")
    text = "\n".join(lines)
    assert "| A | +100 (α=1) | +100 (α=2) |" in text
    assert "| B | +50 (every α) | +50 (every α) |" in text
    for s in (1, 2):  # one table per strength (a single layer: no layer named in the cells)
        assert f"Layer 3, strength {s}:" in text
    assert "| A | +0.000 | +0.000 |" in text  # A at strength 1: p 0.5 on both groups
