"""``steerlab behaviours`` on tiny random models: the letter scores equal a hand computation from
the model's own logits, multiplier 0 is the unsteered pass exactly, a batch of settings equals
each row alone, the backends agree, the vector is the mean difference of activations at the
answer letter, and CAA's layout and model-written-evals JSONL run end to end from the command
line (and a rerun resumes)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import torch
from tests.cli_run import cli
from tests.conftest import _load_tiny
from tests.integration.behaviour_data import write_caa, write_mwe
from tests.integration.test_classify_logits import BACKENDS, _on_backend

from steerlab.engine.score import answer_margins
from steerlab.interventions import Intervention
from steerlab.models import Model
from steerlab.models.prompting import Prompt
from steerlab.pipelines.behaviours.config import BASE, BehavioursConfig
from steerlab.pipelines.behaviours.prompts import data_of, encode
from steerlab.pipelines.behaviours.run import BRow, Score, _build_vectors
from steerlab.vectors import SteeringVector


@pytest.fixture(scope="module")
def caa_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_caa(tmp_path_factory.mktemp("caa") / "data")


def config(data: Path, **kw: object) -> BehavioursConfig:
    base = {
        "out": "/nonexistent",
        "model": {"name": "tiny-llama"},
        "data": str(data),
        "data_sha256": "x",
        "batch_size": 5,
    }
    return BehavioursConfig.parse({**base, **kw}, "test")


@pytest.fixture(scope="module")
def vectors(caa_dir: Path) -> dict[str, SteeringVector]:
    model = _load_tiny("tiny-llama")
    built = _build_vectors(model, config(caa_dir))
    for v in built.values():  # strong enough to move a tiny random model
        assert set(v.directions) == set(range(model.n_layers))
    return built


def test_scores_equal_a_hand_computation_of_the_letter_probabilities(
    tiny_llama: Model, caa_dir: Path, vectors: dict[str, SteeringVector]
) -> None:
    model = tiny_llama
    cfg = config(caa_dir)
    data = data_of(cfg)
    item = data.split("helping", "test")[1]  # matching answer (B)
    assert item.matching == "B"
    tok = model.tokenizer
    opening = tok("(", add_special_tokens=False)["input_ids"]
    letters = {x: tok("(" + x, add_special_tokens=False)["input_ids"][len(opening)] for x in "AB"}
    ids = list(model.format_prompt(item.question).ids) + opening
    with torch.no_grad():
        logits = model.hf(torch.tensor([ids])).logits[0, -1].float()
    logp = torch.log_softmax(logits, -1)
    got = Score(cfg, vectors)(model, [BRow(item.id)], lambda n: None)
    row = got.iloc[0]
    assert row["logp_matching"] == pytest.approx(float(logp[letters["B"]]), abs=1e-5)
    assert row["logp_not_matching"] == pytest.approx(float(logp[letters["A"]]), abs=1e-5)
    # P(matching) over the two answers, and the logit difference, from the raw logits
    lb, la = float(logits[letters["B"]]), float(logits[letters["A"]])
    p = torch.softmax(torch.tensor([lb, la]), 0)[0]
    diff = row["logp_matching"] - row["logp_not_matching"]
    assert diff == pytest.approx(lb - la, abs=1e-5)
    assert 1 / (1 + float(torch.exp(torch.tensor(-diff)))) == pytest.approx(float(p), abs=1e-6)


def test_multiplier_zero_is_the_unsteered_pass_exactly(
    tiny_llama: Model, caa_dir: Path, vectors: dict[str, SteeringVector]
) -> None:
    model = tiny_llama
    cfg = config(caa_dir)
    data = data_of(cfg)
    item = data.split("hedging", "test")[0]
    enc = encode(model, data, item)
    prompt = Prompt(item.id, list(enc.prompt))
    labels = {"m": [enc.matching], "n": [enc.not_matching]}
    window = f"window:-{enc.after}:"
    vec = vectors["hedging"]
    rows = [(), *((Intervention(vec, layer, "add", 0.0, positions=window),) for layer in range(4))]
    moved = [(Intervention(vec, 1, "add", 3.0, positions=window),)]
    s = answer_margins(model, [prompt] * 6, labels, "m", "n", [*rows, *moved], batch_size=3)
    for i in range(1, 5):
        assert torch.equal(s.logp[i], s.logp[0])
    assert (s.logp[5] - s.logp[0]).abs().max() > 1e-3  # the same vector at 3 does move it
    # and through the workflow's rows: multiplier 0 at a layer is the unsteered row
    got = Score(cfg, vectors)(model, [BRow(item.id), BRow(item.id, BASE, 2, 0.0)], lambda n: None)
    assert got["logp_matching"].iloc[0] == got["logp_matching"].iloc[1]


def grid_rows(cfg: BehavioursConfig) -> list[BRow]:
    data = data_of(cfg)
    rows = []
    for item in data.split("helping", "test")[:3] + data.split("hedging", "test")[:2]:
        rows.append(BRow(item.id))
        for cond in (BASE, "system-toward", "swapped"):
            for layer in (0, 2):
                for m in (-2.0, 1.5):
                    rows.append(BRow(item.id, cond, layer, m))
    return rows


def test_a_batch_of_settings_equals_each_row_alone(
    tiny_llama: Model, caa_dir: Path, vectors: dict[str, SteeringVector]
) -> None:
    cfg = config(caa_dir)
    rows = grid_rows(cfg)
    batched = Score(cfg, vectors)(tiny_llama, rows, lambda n: None)
    alone = pd.concat([Score(cfg, vectors)(tiny_llama, [r], lambda n: None) for r in rows])
    for col in ("logp_matching", "logp_not_matching"):
        assert batched[col].to_numpy() == pytest.approx(alone[col].to_numpy(), abs=1e-5)
    spread = batched["logp_matching"] - batched["logp_not_matching"]
    assert spread.nunique() > len(rows) // 2  # settings differ from one another


@pytest.mark.parametrize("case", BACKENDS)
def test_backends_give_the_same_scores(
    case: tuple[str, str], caa_dir: Path, vectors: dict[str, SteeringVector]
) -> None:
    backend, prefer = case
    if importlib.util.find_spec(backend) is None:
        pytest.skip(f"{backend} is not installed")
    cfg = config(caa_dir)
    rows = grid_rows(cfg)
    want = Score(cfg, vectors)(_load_tiny("tiny-llama"), rows, lambda n: None)
    got = Score(cfg, vectors)(_on_backend("tiny-llama", backend, prefer), rows, lambda n: None)
    for col in ("logp_matching", "logp_not_matching"):
        assert got[col].to_numpy() == pytest.approx(want[col].to_numpy(), abs=1e-4)


def test_the_vector_is_the_mean_difference_at_the_answer_letter(
    tiny_llama: Model, caa_dir: Path, vectors: dict[str, SteeringVector]
) -> None:
    model = tiny_llama
    data = data_of(config(caa_dir))
    tok = model.tokenizer
    diffs = []
    for item in data.split("helping", "generate"):
        acts = []
        for letter in (item.matching, item.not_matching):
            ids = list(model.format_prompt(item.question).ids)
            ids += tok("(" + letter, add_special_tokens=False)["input_ids"]
            with torch.no_grad():
                out = model.hf(torch.tensor([ids]), output_hidden_states=True)
            # hidden_states[L + 1] is block L's output (the last one is after the final norm)
            acts.append(torch.stack([h[0, -1] for h in out.hidden_states[1:-1]]))
        diffs.append(acts[0] - acts[1])
    want = torch.stack(diffs).mean(0)  # (layers - 1, d)
    for layer in range(model.n_layers - 1):
        torch.testing.assert_close(
            vectors["helping"].directions[layer], want[layer], rtol=0, atol=1e-5
        )


# ----------------------------------------------------------------------------- command line

FAST = ["--model", "tiny-llama", "--layers", "0,2", "--multipliers", "-1,0,1.5"]
FAST += ["--max-new-tokens", "3", "--quiet"]


def test_caa_layout_end_to_end_and_resume(caa_dir: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "run"
    r = cli(capsys, "behaviours", "--out", out, "--data", caa_dir, *FAST)
    assert r.code == 0, r.err
    df = pd.read_parquet(out / "results.parquet")
    # 2 behaviours x 6 test items x 2 layers x 3 multipliers, unshifted; then the three shifts
    # at each behaviour's best layer (x 3 multipliers)
    assert len(df[df["condition"] == BASE]) == 2 * 6 * 2 * 3
    assert len(df[df["condition"] != BASE]) == 3 * 2 * 6 * 3
    assert set(df["condition"]) == {BASE, "system-toward", "system-against", "swapped"}
    assert df["p_matching"].between(0, 1).all()
    zero = df[df["multiplier"] == 0.0]
    assert not zero["steered"].any()
    report = (out / "report.md").read_text(encoding="utf-8")
    assert "## Headline per behaviour" in report and "Sign check" in report
    assert "## Open-ended answers" in report
    reads = report.split("## Does the model read the options?")[1].split("##")[0]
    assert "| helping | " in reads and " / 6 |" in reads
    for name in ("summary.csv", "steerability.csv", "item_slopes.csv", "open_ended.parquet"):
        assert (out / name).is_file()
    for png in ("p_matching_vs_multiplier", "steerability_vs_layer", "item_slopes_histogram"):
        assert (out / f"{png}.png").stat().st_size > 1000
    manifest = json.loads((out / "manifest.json").read_text())
    parts = {p.name: p.stat().st_mtime_ns for p in (out / "parts").rglob("*.parquet")}
    r = cli(capsys, "behaviours", "--out", out, "--data", caa_dir, *FAST)
    assert r.code == 0, r.err
    assert {p.name: p.stat().st_mtime_ns for p in (out / "parts").rglob("*.parquet")} == parts
    assert (
        json.loads((out / "manifest.json").read_text())["config_digest"]
        == manifest["config_digest"]
    )
    assert (out / "report.md").read_text(encoding="utf-8") == report


@pytest.mark.parametrize("words", [False, True], ids=["lettered", "yes-no"])
def test_model_written_evals_jsonl_runs_unchanged(words: bool, tmp_path: Path, capsys) -> None:
    data = write_mwe(tmp_path / "persona-plans.jsonl", n=10, words=words)
    out = tmp_path / "run"
    r = cli(capsys, "behaviours", "--out", out, "--data", data, "--no-open-ended", *FAST)
    assert r.code == 0, r.err
    df = pd.read_parquet(out / "results.parquet")
    assert set(df["behaviour"]) == {"persona-plans"}
    base = df[df["condition"] == BASE]
    assert base["item_id"].nunique() == 5  # half of the 10 items are scored
    # Yes/No answers have no choice lines to swap: that shift is left out, the others run
    shifted = set(df["condition"]) - {BASE}
    want = {"system-toward", "system-against"}
    assert shifted == (want if words else {*want, "swapped"})


def test_open_ended_answers_are_judged_and_the_judge_is_cached(
    caa_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """With ``--judge-url/--judge-model`` every open-ended answer gets a 0-100 score for its
    behaviour, the report has the mean score per behaviour x multiplier, and a rerun with the
    judge server gone reads every score from ``judge_cache.jsonl``."""
    from tests.fake_openai import FakeOpenAI, Reply, logprobs_reply

    scores = {"helping": 20, "hedging": 85}

    def respond(body: dict[str, Any]) -> Reply:
        prompt = body["messages"][-1]["content"]
        (name,) = [b for b in scores if f"'{b}'" in prompt]  # the default description names it
        return logprobs_reply({str(scores[name]): 1.0})

    out = tmp_path / "run"
    with FakeOpenAI(respond) as fake:
        args = ["behaviours", "--out", out, "--data", caa_dir, *FAST, "--shifts", "none"]
        args += ["--judge-url", fake.url, "--judge-model", "fake-judge"]
        r = cli(capsys, *args)
        assert r.code == 0, r.err
        n_requests = len(fake.requests)
    assert all(req.body["model"] == "fake-judge" for req in fake.requests)
    judged = pd.read_parquet(out / "open_ended_judged.parquet")
    # 2 behaviours x 1 open-ended question x the open-ended multipliers -1, 0, 1
    assert len(judged) == 2 * 3
    assert set(zip(judged["item_id"], judged["multiplier"], strict=True)) == {
        (f"{b}/open/0", m) for b in scores for m in (-1.0, 0.0, 1.0)
    }
    assert judged["judge_score"].notna().all()
    assert judged["judge_score"].between(0, 100).all()
    assert (judged["judge_kind"] == "score").all() and (judged["judge_model"] == "fake-judge").all()
    for b, want in scores.items():
        assert (judged[judged["behaviour"] == b]["judge_score"] == want).all()
    # equal prompts are sent once: at most one request per open-ended row
    assert 2 <= n_requests <= len(judged)

    report = (out / "report.md").read_text(encoding="utf-8")
    section = report.split("## Open-ended answers", 1)[1].split("\n## ", 1)[0]
    assert "| behaviour | multiplier | mean judge score (0-100) | scored |" in section
    for b, want in scores.items():
        for m in ("-1", "0", "1"):
            assert f"| {b} | {m} | {want:.1f} | 1 |" in section
    manifest = json.loads((out / "manifest.json").read_text(encoding="utf-8"))
    assert manifest["judge"] == {"url": fake.url, "model": "fake-judge"}

    # the judge server is gone: the rerun scores nothing anew and finishes from the cache
    cache = (out / "judge_cache.jsonl").read_bytes()
    assert len(cache.splitlines()) == n_requests
    parts = {p: p.stat().st_mtime_ns for p in (out / "parts").rglob("*.parquet")}
    r = cli(capsys, *args)
    assert r.code == 0, r.err
    assert (out / "judge_cache.jsonl").read_bytes() == cache
    assert {p: p.stat().st_mtime_ns for p in parts} == parts  # nothing generated again
    again = pd.read_parquet(out / "open_ended_judged.parquet")
    pd.testing.assert_frame_equal(again, judged)
    assert (out / "report.md").read_text(encoding="utf-8") == report
