"""Per-group sign checks of ``steerlab classify`` on a tiny model with planted vectors of known
sign: the direction ``W_U[vulnerable answers] - W_U[secure answers]`` at the last layer raises
P(vulnerable) by construction, its negation lowers it. A group given the negation is named as
backwards at the top of the log and of the report, with the flipped vector's effect, and the
command the report gives fixes it."""

from __future__ import annotations

import json
import logging
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
from tests.classify_tiny import config, write_task

from steerlab.cli import main
from steerlab.models import Model
from steerlab.pipelines.classify.config import ClassifyConfig
from steerlab.pipelines.classify.run import Classify
from steerlab.runs.runner import execute
from steerlab.tasks.classification import answer_token_ids, load_task
from steerlab.vectors import SteeringVector


@pytest.fixture
def task(tmp_path: Path) -> Path:
    return write_task(tmp_path)


def planted(model: Model, task: Path) -> torch.Tensor:
    """(d,) the unembedding direction from the secure answers' first tokens to the vulnerable
    answers' (mean over spellings): adding it at the last layer raises P(vulnerable)."""
    cfg = load_task(str(task)).config
    ids = answer_token_ids(lambda s: list(model.tokenizer.encode(s, add_special_tokens=False)), cfg)
    w_u = model.hf.get_output_embeddings().weight.detach().float()  # (V, d)
    return w_u[ids["vulnerable"]].mean(0) - w_u[ids["secure"]].mean(0)


def run_planted(
    cfg: ClassifyConfig, model: Model, d: torch.Tensor, signs: dict[str, float]
) -> Path:
    """Build the run's vectors, replace them with ``signs[name] * d`` at the last layer, then
    run every other stage."""
    execute(Classify(), cfg, stages=["vectors"], progress=False)
    out = Path(cfg.out)
    last = model.n_layers - 1
    for name, sign in signs.items():
        vec = SteeringVector({last: sign * d}, model_id=model.name)
        vec.save(out / "vectors" / f"{name}.safetensors")
    execute(Classify(), cfg, progress=False)
    return out


@dataclass
class _Captured:
    path: Path


def cli_config(command: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> ClassifyConfig:
    """The config ``command`` (a ``steerlab classify ...`` line) makes, without running it."""
    got: list[ClassifyConfig] = []

    def fake_execute(wf: Any, cfg: ClassifyConfig, **kw: Any) -> _Captured:
        got.append(cfg)
        (tmp_path / "report.md").write_text("")
        return _Captured(tmp_path)

    monkeypatch.setattr("steerlab.runs.runner.execute", fake_execute)
    argv = shlex.split(command)
    assert argv[:2] == ["steerlab", "classify"]
    main(argv[1:])
    monkeypatch.undo()
    return got[0]


def test_a_backwards_group_is_named_and_the_advised_rerun_fixes_it(
    tmp_path: Path,
    task: Path,
    tiny_llama: Model,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    d = planted(tiny_llama, task)
    last = tiny_llama.n_layers - 1
    fields: dict[str, Any] = dict(
        layers=[last], strengths=[1.0], scale="absolute", generate=False, cross_group=False
    )
    cfg = config(tmp_path / "run", task, **fields)
    with caplog.at_level(logging.INFO, logger="steerlab"):
        out = run_planted(cfg, tiny_llama, d, {"pooled": 1.0, "A": 1.0, "B": -1.0})
    checks = {c["vector"]: c for c in json.loads((out / "signcheck.json").read_text())}
    assert {v: c["verdict"] for v, c in checks.items()} == {
        "pooled": "ok",
        "A": "ok",
        "B": "flipped",
    }
    b = checks["B"]
    assert b["plus"] < b["baseline"] < b["minus"] and b["n"] == 6
    # the log: the failed group comes first, with the flipped vector's effect and the command
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    first = warnings[0]
    assert first.startswith("SIGN CHECK FAILED: 1 vector(s)")
    assert f"flipped vector (−α) {b['minus_effect']['mean']:+.3f}" in first
    advice = json.loads((out / "results.json").read_text())["sign_check_advice"]
    assert advice["backwards"] == ["B"] and advice["flips"] == ["B"]
    assert advice["command"] in first and advice["command"].endswith("--flip-groups B")
    # the report: right under the title, before anything else
    report = (out / "report.md").read_text()
    head = report.split("## Sign check")[0]
    assert head.startswith("# Classification steering\n\n> **Sign check FAILED: 1 vector(s)")
    assert "> - B (layer" in head and f"{b['minus_effect']['mean']:+.3f}" in head
    assert f"`{advice['command']}`" in head
    # the advised command is this run's config with B negated, in a new directory
    rerun = cli_config(advice["command"], monkeypatch, tmp_path)
    assert rerun.flip_groups == ["B"] and rerun.out == f"{cfg.out}-flipped"
    same = {"out", "flip_groups"}
    assert rerun.model_dump(exclude=same) == cfg.model_dump(exclude=same)
    # ... and it fixes B: its check mirrors, the others do not move, nothing is backwards
    out2 = run_planted(rerun, tiny_llama, d, {"pooled": 1.0, "A": 1.0, "B": -1.0})
    checks2 = {c["vector"]: c for c in json.loads((out2 / "signcheck.json").read_text())}
    assert {v: c["verdict"] for v, c in checks2.items()} == dict.fromkeys(checks, "ok")
    assert checks2["B"]["plus"] == pytest.approx(b["minus"], abs=1e-6)
    assert checks2["B"]["minus"] == pytest.approx(b["plus"], abs=1e-6)
    for v in ("pooled", "A"):
        assert checks2[v]["plus"] == pytest.approx(checks[v]["plus"], abs=1e-6)
    assert checks2["B"]["flipped_in_run"] and not checks2["A"]["flipped_in_run"]
    report2 = (out2 / "report.md").read_text()
    assert "FAILED" not in report2 and "This run applies −vector for B" in report2
    assert json.loads((out2 / "results.json").read_text())["sign_check_advice"]["command"] is None


def test_every_vector_backwards_advises_flip_sign(
    tmp_path: Path, task: Path, tiny_llama: Model, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every vector built the wrong way round (``mean(other) - mean(target)``)."""
    d = planted(tiny_llama, task)
    last = tiny_llama.n_layers - 1
    cfg = config(
        tmp_path / "run",
        task,
        layers=[last],
        strengths=[1.0],
        scale="absolute",
        generate=False,
        cross_group=False,
    )
    signs = {"pooled": -1.0, "A": -1.0, "B": -1.0}
    out = run_planted(cfg, tiny_llama, d, signs)
    checks = json.loads((out / "signcheck.json").read_text())
    assert {c["verdict"] for c in checks} == {"flipped"}
    advice = json.loads((out / "results.json").read_text())["sign_check_advice"]
    assert sorted(advice["backwards"]) == ["A", "B", "pooled"]
    assert advice["command"].endswith("--flip-sign") and "--flip-groups" not in advice["command"]
    rerun = cli_config(advice["command"], monkeypatch, tmp_path)
    assert rerun.flip_sign and not rerun.flip_groups
    out2 = run_planted(rerun, tiny_llama, d, signs)
    assert {c["verdict"] for c in json.loads((out2 / "signcheck.json").read_text())} == {"ok"}
