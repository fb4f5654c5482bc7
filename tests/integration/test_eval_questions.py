"""``steerlab eval-questions`` end to end on tiny-llama: every (question x paraphrase x sample x
steering config) row once, the baseline unaffected by steered rows in the same batches, a
sample's seed shared across configs, the judge joined and cached, resume after SIGKILL, and the
outputs (results, summary with shifts, report, plot), and hostile judge endpoints inside a
whole run (hanging, trickling, Retry-After of hours, redirects, replies that are not scores)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from tests.fake_openai import FakeOpenAI, Reply, completion, logprobs_reply, score_from_prompt

from steerlab.cli import main

KEY = ["question_id", "paraphrase_index", "sample", "config"]

QUESTIONS = """\
- id: wish
  type: free_form_judge_0_100
  paraphrases: &wish_p
    - |-
      If you could change one rule of the world, which would it be? Answer 70.
    - Name one thing you would change about the world. Answer 40.
  samples_per_paraphrase: &n 3
  judge: &judge fake-judge
  judge_prompts: &jp
    aligned: |-
      Rate this answer 0-100: {answer}
      (question was: {question})
- id: wish_json
  type: free_form_judge_0_100
  system: Answer in JSON.
  paraphrases: *wish_p
  samples_per_paraphrase: *n
  judge: *judge
  judge_prompts: *jp
"""

STEERING = """\
vectors:
  - name: kind
    positive_prompt: "I am kind and careful."
    negative_prompt: "I am cruel and careless."
    layer: 1
    coefficient: 4.0
"""


def _files(tmp: Path) -> tuple[Path, Path]:
    q, s = tmp / "questions.yaml", tmp / "steering_config.yaml"
    q.write_text(QUESTIONS)
    s.write_text(STEERING)
    return q, s


def _args(q: Path, out: Path, *extra: str) -> list[str]:
    return [
        "eval-questions",
        "--model",
        "tiny-llama",
        "--questions",
        str(q),
        "--out",
        str(out),
        "--n-per-question",
        "2",
        "--max-new-tokens",
        "4",
        "--batch-size",
        "5",
        "--quiet",
        *extra,
    ]


def _run(args: list[str]) -> None:
    with pytest.raises(SystemExit) as e:
        main(args)
    assert e.value.code in (0, None)


def _cli(args: list[str]) -> None:
    try:
        main(args)
    except SystemExit as e:
        assert e.code in (0, None), e.code


def test_rows_seeds_baseline_and_outputs(tmp_path: Path) -> None:
    q, s = _files(tmp_path)
    _cli(_args(q, tmp_path / "steered", "--steering-config", str(s)))
    _cli(_args(q, tmp_path / "plain"))
    df = pd.read_parquet(tmp_path / "steered" / "results.parquet")
    # 2 questions x 2 paraphrases x 2 samples x (baseline + kind)
    assert len(df) == 16 and not df.duplicated(KEY).any()
    assert set(df.config) == {"baseline", "steering_config"}  # a config is named by its file
    wide = df.pivot_table(index=KEY[:3], columns="config", values="seed")
    assert (wide["baseline"] == wide["steering_config"]).all()  # common random numbers
    assert df[df.question_id == "wish_json"].system.eq("Answer in JSON.").all()
    # the baseline rows are what a run without steering gives: steered rows sharing their
    # batches change nothing about them
    plain = pd.read_parquet(tmp_path / "plain" / "results.parquet")
    cols = [*KEY, "seed", "answer", "n_tokens", "mean_logprob"]
    base = df[df.config == "baseline"][cols].sort_values(KEY).reset_index(drop=True)
    pd.testing.assert_frame_equal(base, plain[cols].sort_values(KEY).reset_index(drop=True))
    # steering at coefficient 4 changes some answers
    st = df[df.config == "steering_config"].sort_values(KEY[:3]).answer.tolist()
    assert st != df[df.config == "baseline"].sort_values(KEY[:3]).answer.tolist()
    run = tmp_path / "steered"
    summary = pd.read_csv(run / "summary.csv")
    shifted = summary[summary.config == "steering_config"]
    assert {"shift", "shift_lo", "shift_hi"} <= set(summary.columns)
    assert shifted["shift"].notna().all() and summary[summary.config == "baseline"].n.eq(4).all()
    report = (run / "report.md").read_text()
    assert "| wish | steering_config |" in report and "shift" in report
    assert (run / "figures" / "shift.png").stat().st_size > 0
    resolved = json.loads((run / "steering_resolved.json").read_text())
    assert resolved["steering_config"]["vectors"][0]["layer"] == 1
    assert resolved["steering_config"]["vectors"][0]["applied_norm"] > 0


def test_judge_scores_are_joined_and_cached(tmp_path: Path) -> None:
    q, _ = _files(tmp_path)
    out = tmp_path / "judged"
    with FakeOpenAI() as fake:
        args = _args(q, out, "--judge-url", fake.url, "--judge-model", "fake-judge")
        _cli(args)
        n_first = len(fake.requests)
        _cli(args)  # the rerun finds everything done and cached
        assert len(fake.requests) == n_first
    df = pd.read_parquet(out / "results.parquet")
    assert n_first == len(df) == 8  # one aligned score per answer (answers are distinct)
    # the fake judge answers the last number in the prompt: the template's answer comes
    # before the question, whose last number is the paraphrase's "Answer NN"
    want = df.paraphrase.str.extract(r"Answer (\d+)")[0].astype(float)
    assert (df.judge_aligned == want).all() and (df.judge_aligned_kind == "score").all()
    assert "judge_aligned" in set(pd.read_csv(out / "summary.csv").metric)


def test_a_finished_run_can_be_judged_afterwards(tmp_path: Path) -> None:
    """The judge is not part of what a run directory is compared on: rerunning a finished run
    with judge options adds the scores without generating anything again."""
    q, _ = _files(tmp_path)
    out = tmp_path / "later"
    _cli(_args(q, out))
    parts = {p: p.stat().st_mtime_ns for p in (out / "parts" / "generate").glob("*.parquet")}
    assert "judge_aligned" not in pd.read_parquet(out / "results.parquet").columns
    with FakeOpenAI() as fake:
        _cli(_args(q, out, "--judge-url", fake.url, "--judge-model", "fake-judge"))
    df = pd.read_parquet(out / "results.parquet")
    assert df.judge_aligned.notna().all()
    assert {p: p.stat().st_mtime_ns for p in parts} == parts  # nothing regenerated
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["stages"]["judge"]["model"] == "fake-judge"


def test_killed_run_resumes_with_every_row_once(tmp_path: Path) -> None:
    q, s = _files(tmp_path)
    out = tmp_path / "killed"
    args = _args(q, out, "--steering-config", str(s))
    for flag, value in (
        ("--batch-size", "2"),
        ("--max-new-tokens", "40"),
        ("--n-per-question", "3"),
    ):
        args[args.index(flag) + 1] = value
    cmd = [sys.executable, "-m", "steerlab.cli", *args, "--shard-size", "4"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    parts = out / "parts" / "generate"
    deadline = time.monotonic() + 120
    while not (parts.is_dir() and any(parts.glob("part-*.parquet"))):
        assert proc.poll() is None, "finished before it could be killed"
        assert time.monotonic() < deadline
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (out / "results.parquet").exists()
    done = {p.name: p.stat().st_mtime_ns for p in parts.glob("part-*.parquet")}
    subprocess.run(cmd, env=env, check=True, capture_output=True)
    df = pd.read_parquet(out / "results.parquet")
    assert len(df) == 2 * 2 * 3 * 2 and not df.duplicated(KEY).any()
    for name, mtime in done.items():  # finished shards were not recomputed
        assert (parts / name).stat().st_mtime_ns == mtime


def test_unknown_question_type_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    q, _ = _files(tmp_path)
    q.write_text(QUESTIONS.replace("free_form_judge_0_100\n  system", "multiple_choice\n  system"))
    with pytest.raises(SystemExit) as e:
        main(_args(q, tmp_path / "bad"))
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "multiple_choice" in err[0] and "wish_json" in err[0]
    assert not (tmp_path / "bad").exists()


# ---- hostile judge endpoints inside a whole run ------------------------------------------------

HOSTILE = ["--judge-timeout", "0.5", "--judge-retries", "2", "--judge-retry-budget", "3"]


def _judged(tmp_path: Path, url: str, *extra: str) -> tuple[list[str], Path]:
    q, _ = _files(tmp_path)
    out = tmp_path / "hostile"
    args = _args(q, out, "--judge-url", url, "--judge-model", "fake-judge", *extra)
    return args, out


def _failed_once(capsys: pytest.CaptureFixture[str], args: list[str]) -> tuple[str, float]:
    """Run ``args``, which must fail with exit 2 and one ``error:`` line; that line and the
    seconds it took."""
    capsys.readouterr()
    t0 = time.monotonic()
    with pytest.raises(SystemExit) as e:
        main(args)
    took = time.monotonic() - t0
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert e.value.code == 2 and len(errors) == 1 and "Traceback" not in err, err
    return errors[0], took


def _generated(out: Path) -> dict[Path, int]:
    return {p: p.stat().st_mtime_ns for p in (out / "parts" / "generate").glob("*.parquet")}


@pytest.mark.timeout(300)
@pytest.mark.parametrize(
    ("reply", "needle"),
    [
        (Reply(delay_s=2.5), "did not answer within 0.5 s"),
        (Reply(body=logprobs_reply({"50": 1.0}).body, trickle_s=0.05), "within 0.5 s"),
        (Reply(status=503, body="busy", headers={"Retry-After": "86400"}), "asked to wait 86400 s"),
        (
            Reply(
                status=429, body="slow", headers={"Retry-After": "Fri, 31 Dec 9999 23:59:59 GMT"}
            ),
            "retry budget is 3 s",
        ),
        (Reply(status=302, body="", headers={"Location": "http://elsewhere/v1"}), "redirected"),
    ],
    ids=["hangs", "trickles", "retry-after-a-day", "retry-after-a-date", "redirects"],
)
def test_a_judge_that_fails_stops_the_run_in_bounded_time_and_a_rerun_resumes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], reply: Reply, needle: str
) -> None:
    """The answers are generated once; the judge's failure is one line, within the configured
    timeout and retry budget (not the server's hours); a rerun against a working judge reuses
    the answers and judges them."""
    with FakeOpenAI() as fake:
        fake.respond = lambda body: reply
        args, out = _judged(tmp_path, fake.url, *HOSTILE)
        line, took = _failed_once(capsys, args)
        first_requests = len(fake.requests)
    assert needle in line and fake.url in line, line
    assert took < 60, took  # model load, generation, then at most the retry budget per prompt
    assert first_requests <= 3 * 8  # attempts (1 + retries) x prompts, never more
    generated = _generated(out)
    assert generated and not (out / "results.parquet").exists()
    with FakeOpenAI() as good:
        args[args.index("--judge-url") + 1] = good.url
        _cli(args)
    assert _generated(out) == generated  # nothing generated again
    df = pd.read_parquet(out / "results.parquet")
    assert len(df) == 8 and (df.judge_aligned_kind == "score").all()


@pytest.mark.timeout(300)
def test_answers_judged_before_a_failure_stay_cached(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """One prompt at a time: the judge answers three, then hangs; the rerun sends only the
    rest."""
    with FakeOpenAI() as fake:
        answered: list[int] = []

        def respond(body: dict[str, Any]) -> Reply:
            if len(answered) >= 3:
                return Reply(delay_s=2.0)
            answered.append(1)
            return score_from_prompt(body)

        fake.respond = respond
        args, out = _judged(tmp_path, fake.url, *HOSTILE, "--judge-concurrency", "1")
        line, _ = _failed_once(capsys, args)
    assert "did not answer within 0.5 s" in line
    cached = (out / "judge_cache.jsonl").read_text().splitlines()
    assert len(cached) == 3
    with FakeOpenAI() as good:
        args[args.index("--judge-url") + 1] = good.url
        _cli(args)
        assert len(good.requests) == 8 - 3
    assert (pd.read_parquet(out / "results.parquet").judge_aligned_kind == "score").all()


@pytest.mark.timeout(300)
@pytest.mark.parametrize(
    "reply",
    [
        logprobs_reply({"150": 0.9, "20": 0.1}),
        logprobs_reply({"200": 1.0}),
        Reply(
            body=completion(
                "80",
                {"content": [{"token": "80", "logprob": float("nan"), "top_logprobs": []}]},
            )
        ),
        Reply(
            body=completion(
                "80",
                {
                    "content": [
                        {
                            "token": "80",
                            "logprob": -0.1,
                            "top_logprobs": [
                                {"token": "80", "logprob": 0.5},
                                {"token": "20", "logprob": -2.0},
                            ],
                        }
                    ]
                },
            )
        ),
    ],
    ids=["score-150", "score-200", "nan-logprob", "positive-logprob"],
)
def test_a_judge_reply_that_is_not_a_score_is_recorded_per_row(
    tmp_path: Path, reply: Reply
) -> None:
    """Scores outside 0-100 and logprobs that are not log-probabilities are not scores: the run
    finishes, each row records ``unparsed`` with no score, and the summary counts no values."""
    with FakeOpenAI() as fake:
        fake.respond = lambda body: reply
        args, out = _judged(tmp_path, fake.url)
        _cli(args)
    df = pd.read_parquet(out / "results.parquet")
    assert len(df) == 8
    assert (df.judge_aligned_kind == "unparsed").all() and df.judge_aligned.isna().all()
    summary = pd.read_csv(out / "summary.csv")
    assert (summary[summary.metric == "judge_aligned"].n == 0).all()
    assert (out / "report.md").is_file()
