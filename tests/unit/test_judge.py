"""The LLM judge against a fake OpenAI-compatible server: scoring, fallbacks, retries, cache."""

from __future__ import annotations

import json
import math
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from tests.fake_openai import FakeOpenAI, Reply, logprobs_reply, text_reply

import steerlab.judge.client as judge_client
from steerlab.errors import SteerlabError
from steerlab.judge import (
    Judge,
    JudgeConfig,
    JudgeError,
    JudgeResult,
    cache_key,
    fill,
    parse_logprobs,
    parse_text,
)


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeOpenAI]:
    # a proxy set in the environment must not swallow requests to the loopback server
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    with FakeOpenAI() as server:
        yield server


@pytest.fixture
def sleeps(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """Backoff waits the judge asked for, recorded instead of slept."""
    waits: list[float] = []
    monkeypatch.setattr(judge_client, "_sleep", waits.append)
    return waits


def config(url: str, **kw: Any) -> JudgeConfig:
    base: dict[str, Any] = dict(
        model="judge-a", timeout_s=5.0, backoff_s=0.001, max_backoff_s=0.01, concurrency=4
    )
    return JudgeConfig(url=url, **{**base, **kw})


def one(fake: FakeOpenAI, prompt: str = "rate this", **kw: Any) -> JudgeResult:
    return Judge(config(fake.url, **kw)).score(prompt)


# ---- scoring from logprobs -------------------------------------------------------------------


def test_weighted_mean_over_integer_tokens_and_the_exact_request(fake: FakeOpenAI) -> None:
    fake.respond = lambda body: logprobs_reply({"80": 0.5, "90": 0.3, "foo": 0.2})
    r = one(fake, "How aligned? 7")
    assert r.kind == "score" and r.method == "logprobs" and r.raw == "80"
    assert r.score == pytest.approx((80 * 0.5 + 90 * 0.3) / 0.8, rel=1e-12, abs=0)
    assert r.prob_mass == pytest.approx(0.8, rel=1e-12, abs=0)
    [seen] = fake.requests
    assert seen.body == {
        "model": "judge-a",
        "messages": [{"role": "user", "content": "How aligned? 7"}],
        "max_tokens": 1,
        "temperature": 0,
        "logprobs": True,
        "top_logprobs": 20,
    }


def test_equal_stripped_tokens_add_up_and_out_of_range_numbers_are_ignored() -> None:
    top = [(" 40", math.log(0.3)), ("40", math.log(0.2)), ("101", math.log(0.4)), ("7", -math.inf)]
    r = parse_logprobs(top)
    assert r.kind == "score" and r.raw == "101"
    assert r.score == pytest.approx(40.0, rel=1e-12)
    assert r.prob_mass == pytest.approx(0.5, rel=1e-12)


def test_too_little_mass_on_numbers_is_unparsed() -> None:
    r = parse_logprobs([("Hello", math.log(0.8)), ("50", math.log(0.2))])
    assert (r.score, r.kind) == (None, "unparsed")
    assert r.prob_mass == pytest.approx(0.2)
    assert parse_logprobs([]).kind == "unparsed"


@pytest.mark.parametrize(
    ("dist", "kind"),
    [
        ({"CODE": 0.6, "80": 0.4}, "code"),
        ({" REFUSAL": 0.7, "10": 0.3}, "refusal"),
        ({"REF": 0.5, "50": 0.3, "60": 0.2}, "refusal"),  # REFUSAL split by the tokeniser
        ({"code": 0.9, "1": 0.1}, "code"),
    ],
)
def test_code_and_refusal_as_top_token(fake: FakeOpenAI, dist: dict[str, float], kind: str) -> None:
    fake.respond = lambda body: logprobs_reply(dist)
    r = one(fake)
    assert (r.score, r.kind, r.method) == (None, kind, "logprobs")
    assert len(fake.requests) == 1


def test_a_number_on_top_beats_a_refusal_below_it() -> None:
    r = parse_logprobs([("30", math.log(0.6)), ("REFUSAL", math.log(0.4))])
    assert (r.kind, r.score) == ("score", 30.0)


# ---- text fallback -----------------------------------------------------------------------------


@pytest.mark.parametrize("omit", [False, True], ids=["logprobs-null", "logprobs-missing"])
def test_no_logprobs_falls_back_to_text_without_logprobs(fake: FakeOpenAI, omit: bool) -> None:
    def respond(body: dict[str, Any]) -> Reply:
        if body.get("logprobs"):
            return text_reply("8", omit_logprobs=omit)  # one token of "85": cut short
        return text_reply("85", omit_logprobs=omit)

    fake.respond = respond
    judge = Judge(config(fake.url, concurrency=1))
    first, second = judge.score_many(["q one", "q two"], progress=False)
    assert first == JudgeResult(85.0, "score", "85", "text", None)
    assert second == first
    # the endpoint is asked once with logprobs, then remembered as text-only
    assert [bool(s.body.get("logprobs")) for s in fake.requests] == [True, False, False]
    for seen in fake.requests[1:]:
        assert "logprobs" not in seen.body and "top_logprobs" not in seen.body
        assert seen.body["max_tokens"] == 8 and seen.body["temperature"] == 0


@pytest.mark.parametrize(
    ("text", "score", "kind"),
    [
        ("85", 85.0, "score"),
        (" Score: 42.", 42.0, "score"),
        ("0", 0.0, "score"),
        ("100", 100.0, "score"),
        ("REFUSAL", None, "refusal"),
        ("code\n", None, "code"),
        ("150", None, "unparsed"),
        ("I cannot", None, "unparsed"),
        ("", None, "unparsed"),
    ],
)
def test_parse_text(text: str, score: float | None, kind: str) -> None:
    r = parse_text(text)
    assert (r.score, r.kind, r.raw, r.method, r.prob_mass) == (score, kind, text, "text", None)


# ---- retries and errors ------------------------------------------------------------------------


def test_5xx_is_retried_until_success(fake: FakeOpenAI, sleeps: list[float]) -> None:
    fake.script = [Reply(status=500, body="boom"), Reply(status=502, body="bad gateway")]
    r = one(fake, "score 64", max_retries=4, backoff_s=0.001, max_backoff_s=1.0)
    assert (r.kind, r.score) == ("score", 64.0)
    assert len(fake.requests) == 3
    # exponential with jitter in [0.5, 1] of backoff_s * 2**attempt
    assert len(sleeps) == 2
    assert 0.0005 <= sleeps[0] <= 0.001 and 0.001 <= sleeps[1] <= 0.002


def test_429_honours_retry_after(fake: FakeOpenAI, sleeps: list[float]) -> None:
    fake.script = [Reply(status=429, body="slow down", headers={"Retry-After": "3"})]
    r = one(fake, "score 12", max_backoff_s=30.0)
    assert (r.kind, r.score) == ("score", 12.0)
    assert len(fake.requests) == 2
    assert sleeps == [3.0]


def test_retry_after_is_capped_and_dates_are_understood() -> None:
    cfg = config("http://127.0.0.1:1/v1", backoff_s=1.0, max_backoff_s=10.0)
    assert judge_client._retry_delay(cfg, 0, 100.0, 0.5) == 10.0
    assert judge_client._retry_after_s("Thu, 01 Jan 1970 00:00:00 GMT") == 0.0  # in the past
    assert judge_client._retry_after_s("soon") is None
    for attempt in range(6):
        for u in (0.0, 0.999):
            wait = judge_client._retry_delay(cfg, attempt, None, u)
            assert 0.5 * min(10.0, 2.0**attempt) <= wait <= min(10.0, 2.0**attempt)


def test_4xx_is_not_retried_and_names_status_and_first_line(fake: FakeOpenAI) -> None:
    body = '{"error": {"message": "model judge-a does not exist"}}\nsecond line'
    fake.script = [Reply(status=400, body=body)]
    with pytest.raises(JudgeError) as exc:
        one(fake)
    msg = str(exc.value)
    assert len(fake.requests) == 1
    assert "HTTP 400" in msg and "model judge-a does not exist" in msg and fake.url in msg
    assert "second line" not in msg and "\n" not in msg


def test_wrong_path_is_a_clear_404(fake: FakeOpenAI) -> None:
    with pytest.raises(JudgeError, match="HTTP 404"):
        Judge(config(fake.url.removesuffix("/v1"))).score("x")


@pytest.mark.timeout(20)
def test_connection_refused_is_one_sentence_naming_the_url() -> None:
    with socket.socket() as s:  # a port nothing listens on once closed
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}/v1"
    with pytest.raises(SteerlabError) as exc:
        Judge(config(url, max_retries=2)).score_many(["a", "b", "c"], progress=False)
    msg = str(exc.value)
    assert url in msg and "unreachable" in msg and "3 attempt" in msg
    assert "\n" not in msg


@pytest.mark.timeout(20)
def test_slow_replies_time_out_are_retried_then_fail(fake: FakeOpenAI) -> None:
    fake.respond = lambda body: Reply(body={}, delay_s=1.0)
    with pytest.raises(JudgeError) as exc:
        one(fake, timeout_s=0.2, max_retries=1)
    assert "did not answer within 0.2 s" in str(exc.value) and fake.url in str(exc.value)
    assert len(fake.requests) == 2


def test_malformed_logprobs_are_a_clear_error(fake: FakeOpenAI) -> None:
    body = text_reply("x").body
    body["choices"][0]["logprobs"] = {"content": [{"top_logprobs": [{"token": 5}]}]}
    fake.script = [Reply(body=body)]
    with pytest.raises(JudgeError, match="top_logprobs entry"):
        one(fake)


# ---- concurrency, order, headers ---------------------------------------------------------------


@pytest.mark.parametrize("concurrency", [1, 3])
def test_concurrency_limit_is_reached_and_never_exceeded(
    fake: FakeOpenAI, tmp_path: Path, concurrency: int
) -> None:
    fake.gate = concurrency  # hold requests until `concurrency` are in flight together
    prompts = [f"answer {n}" for n in range(12)]
    cache = tmp_path / "judge.jsonl"
    results = Judge(config(fake.url, concurrency=concurrency, cache_path=cache)).score_many(
        prompts, progress=False
    )
    assert fake.max_in_flight == concurrency
    assert [r.score for r in results] == [float(n) for n in range(12)]  # order kept
    lines = cache.read_text().splitlines()
    assert len(lines) == 12 and all(json.loads(line)["kind"] == "score" for line in lines)


def test_authorization_header_comes_from_the_named_env_var(
    fake: FakeOpenAI, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("STEERLAB_TEST_JUDGE_KEY", "sk-test-123")
    one(fake, "a", api_key_env="STEERLAB_TEST_JUDGE_KEY")
    monkeypatch.delenv("STEERLAB_TEST_JUDGE_KEY")
    one(fake, "b", api_key_env="STEERLAB_TEST_JUDGE_KEY")
    assert fake.requests[0].headers["authorization"] == "Bearer sk-test-123"
    assert "authorization" not in fake.requests[1].headers


# ---- cache -------------------------------------------------------------------------------------


def test_rerun_sends_nothing_and_duplicates_are_sent_once(fake: FakeOpenAI, tmp_path: Path) -> None:
    cache = tmp_path / "sub" / "judge.jsonl"
    prompts = ["p 10", "p 20", "p 10", "p 30"]
    first = Judge(config(fake.url, cache_path=cache)).score_many(prompts, progress=False)
    assert [r.score for r in first] == [10.0, 20.0, 10.0, 30.0]
    assert len(fake.requests) == 3
    again = Judge(config(fake.url, cache_path=cache)).score_many(prompts, progress=False)
    assert again == first
    assert len(fake.requests) == 3


def test_cache_key_changes_with_the_judge_model(fake: FakeOpenAI, tmp_path: Path) -> None:
    cache = tmp_path / "judge.jsonl"
    assert cache_key("judge-a", "p 1") != cache_key("judge-b", "p 1")
    Judge(config(fake.url, cache_path=cache)).score_many(["p 1", "p 2"], progress=False)
    Judge(config(fake.url, cache_path=cache, model="judge-b")).score_many(
        ["p 1", "p 2"], progress=False
    )
    assert [s.body["model"] for s in fake.requests] == ["judge-a"] * 2 + ["judge-b"] * 2
    records = [json.loads(line) for line in cache.read_text().splitlines()]
    assert {(r["model"], r["key"]) for r in records} == {
        (m, cache_key(m, p)) for m in ("judge-a", "judge-b") for p in ("p 1", "p 2")
    }


def test_torn_last_line_is_ignored_and_the_next_line_starts_clean(
    fake: FakeOpenAI, tmp_path: Path
) -> None:
    cache = tmp_path / "judge.jsonl"
    Judge(config(fake.url, cache_path=cache)).score_many(["p 1", "p 2"], progress=False)
    with cache.open("ab") as f:  # a SIGKILL in the middle of a write
        f.write(b'{"key": "abc", "model": "judge-a", "sco')
    judge = Judge(config(fake.url, cache_path=cache))
    assert len(judge.cache) == 2
    judge.score_many(["p 1", "p 2", "p 3"], progress=False)
    assert len(fake.requests) == 3
    # the line written after the torn one is readable by the next run
    Judge(config(fake.url, cache_path=cache)).score_many(["p 3"], progress=False)
    assert len(fake.requests) == 3
    assert len(Judge(config(fake.url, cache_path=cache)).cache) == 3


def test_results_finished_before_a_failure_stay_cached(fake: FakeOpenAI, tmp_path: Path) -> None:
    cache = tmp_path / "judge.jsonl"
    fake.respond = lambda body: (
        Reply(status=400, body="bad")
        if "bad" in body["messages"][0]["content"]
        else logprobs_reply({"70": 1.0})
    )
    judge = Judge(config(fake.url, cache_path=cache, concurrency=1))
    with pytest.raises(JudgeError):
        judge.score_many(["good", "bad"], progress=False)
    assert Judge(config(fake.url, cache_path=cache)).cache.get(cache_key("judge-a", "good")) == (
        JudgeResult(70.0, "score", "70", "logprobs", 1.0)
    )


# ---- inputs ------------------------------------------------------------------------------------


def test_fill_replaces_only_question_and_answer() -> None:
    template = 'Q: {question}\nA: {answer}\nReply as {"score": <0-100>} or {other}.'
    out = fill(template, "why {x}?", "because {question}")
    assert out == 'Q: why {x}?\nA: because {question}\nReply as {"score": <0-100>} or {other}.'
    with pytest.raises(SteerlabError, match=r"\{answer\}"):
        fill("Q: {question}", "q", "a")


@pytest.mark.parametrize(
    ("kw", "needle"),
    [
        ({"url": "127.0.0.1:8000/v1"}, "url"),
        ({"url": "ftp://host/v1"}, "url"),
        ({"model": " "}, "model"),
        ({"concurrency": 0}, "concurrency"),
        ({"concurrency": True}, "concurrency"),
        ({"max_retries": -1}, "max_retries"),
        ({"timeout_s": 0}, "timeout_s"),
        ({"timeout_s": math.inf}, "timeout_s"),
        ({"backoff_s": 2.0, "max_backoff_s": 1.0}, "max_backoff_s"),
    ],
)
def test_bad_config_is_one_sentence(kw: dict[str, Any], needle: str) -> None:
    with pytest.raises(SteerlabError, match=needle) as exc:
        config(kw.pop("url", "http://127.0.0.1:8000/v1"), **kw)
    assert "\n" not in str(exc.value)


def test_bad_prompts_are_rejected_before_any_request(fake: FakeOpenAI) -> None:
    judge = Judge(config(fake.url))
    with pytest.raises(SteerlabError, match="not a single string"):
        judge.score_many("one prompt")
    with pytest.raises(SteerlabError, match="prompt 1"):
        judge.score_many(["ok", "  "])
    assert fake.requests == []
    assert judge.score_many([]) == []


# ---- hostile endpoints ----------------------------------------------------------------------


@pytest.mark.parametrize("status", [301, 302, 307, 308])
def test_a_redirect_is_an_error_naming_where_it_points(fake: FakeOpenAI, status: int) -> None:
    fake.script = [Reply(status=status, body="", headers={"Location": "http://elsewhere/v1"})]
    with pytest.raises(JudgeError) as exc:
        one(fake)
    msg = str(exc.value)
    assert f"redirected (HTTP {status}) to http://elsewhere/v1" in msg and "\n" not in msg
    assert len(fake.requests) == 1


@pytest.mark.timeout(60)
def test_a_reply_that_trickles_is_cut_off_by_the_attempt_timeout(fake: FakeOpenAI) -> None:
    """Every byte arrives well within the socket timeout, the whole reply never does."""
    slow = logprobs_reply({"50": 1.0})
    fake.respond = lambda body: Reply(body=slow.body, trickle_s=0.05)
    t0 = time.monotonic()
    with pytest.raises(JudgeError) as exc:
        one(fake, timeout_s=0.5, max_retries=1, backoff_s=0.0, max_backoff_s=0.0)
    assert "did not answer within 0.5 s" in str(exc.value)
    assert len(fake.requests) == 2 and time.monotonic() - t0 < 20


@pytest.mark.parametrize("retry_after", ["86400", "Fri, 31 Dec 9999 23:59:59 GMT"])
def test_retry_after_of_hours_stops_at_the_retry_budget(
    fake: FakeOpenAI, sleeps: list[float], retry_after: str
) -> None:
    fake.respond = lambda body: Reply(status=503, body="busy", headers={"Retry-After": retry_after})
    with pytest.raises(JudgeError) as exc:
        one(fake, max_retries=10, max_backoff_s=3600.0, max_total_s=120.0)
    msg = str(exc.value)
    assert "retry budget is 120 s" in msg and "HTTP 503" in msg and "\n" not in msg
    assert sleeps == [] and len(fake.requests) == 1  # waiting an hour would break the budget


def test_retry_after_beyond_the_budget_ends_at_once_even_with_capped_waits(
    fake: FakeOpenAI, sleeps: list[float]
) -> None:
    """With the command line's defaults (waits capped at 60 s, a 600 s budget) a server asking
    for a day used to get four retries a minute apart; what it asked is past the budget."""
    headers = {"Retry-After": "86400"}
    fake.respond = lambda body: Reply(status=503, body="busy", headers=headers)
    with pytest.raises(JudgeError) as exc:
        one(fake, max_retries=4, max_backoff_s=60.0, max_total_s=600.0)
    assert "the server asked to wait 86400 s" in str(exc.value)
    assert sleeps == [] and len(fake.requests) == 1
    headers["Retry-After"] = "2"  # within the budget: waited as asked
    fake.script = [Reply(status=503, body="busy", headers=headers)]
    fake.respond = lambda body: logprobs_reply({"50": 1.0})
    assert one(fake, max_backoff_s=60.0).score == 50.0 and sleeps == [2.0]


@pytest.mark.parametrize(
    "dist",
    [{"150": 0.9, "20": 0.1}, {"200": 1.0}],
    ids=["mostly-150", "only-200"],
)
def test_scores_outside_0_to_100_are_not_scores(fake: FakeOpenAI, dist: dict[str, float]) -> None:
    fake.script = [logprobs_reply(dist)]
    r = one(fake)
    assert r.kind == "unparsed" and r.score is None


@pytest.mark.parametrize("lp", [float("nan"), 0.7, float("inf")], ids=["nan", "positive", "inf"])
def test_a_logprob_that_is_not_one_makes_the_reply_unparsed(lp: float) -> None:
    r = parse_logprobs([("80", lp), ("20", -2.0)])
    assert r.kind == "unparsed" and r.score is None and "invalid logprob" in r.raw
