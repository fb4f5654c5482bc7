"""The judge client: concurrent, retried, cached requests to an OpenAI-compatible chat endpoint.

Only the standard library talks HTTP here (``urllib``, which honours the usual proxy variables),
so any server that speaks ``POST {url}/chat/completions`` works: vLLM, llama.cpp, OpenAI.
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import time
import urllib.error
import urllib.parse
import urllib.request
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from http.client import HTTPException
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from steerlab.errors import SteerlabError
from steerlab.judge.cache import ResultCache, cache_key
from steerlab.judge.scoring import JudgeResult, parse_logprobs, parse_text

logger = logging.getLogger(__name__)

TOP_LOGPROBS = 20
TEXT_MAX_TOKENS = 8


class JudgeError(SteerlabError):
    """The judge endpoint failed or answered something unusable; the message names its URL."""


def _check_int(name: str, value: object, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise SteerlabError(f"{name} must be an integer >= {low}, got {value!r}")


def _check_seconds(name: str, value: object, allow_zero: bool) -> None:
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or value < 0
        or (value == 0 and not allow_zero)
    ):
        bound = ">= 0" if allow_zero else "> 0"
        raise SteerlabError(f"{name} must be a finite number of seconds {bound}, got {value!r}")


@dataclass(frozen=True)
class JudgeConfig:
    """Where the judge lives and how hard to try.

    ``url`` is the base URL (``http://127.0.0.1:8000/v1``). ``api_key_env`` names the environment
    variable holding the key; when it is unset no ``Authorization`` header is sent (local vLLM and
    llama.cpp servers accept that). ``timeout_s`` bounds one attempt: each socket operation, and
    reading the whole reply (a server that trickles bytes is cut off). A failed attempt is retried
    up to ``max_retries`` times, after ``backoff_s * 2**attempt`` seconds with jitter, or after
    the server's ``Retry-After``; either wait is capped at ``max_backoff_s``, and no retry starts
    that would take one prompt past ``max_total_s`` (its retry budget), counting a
    ``Retry-After`` at its full length (a server that asks for hours ends the prompt at once).
    A redirect is an error naming where it points (a POST must not silently become a GET
    elsewhere). ``cache_path`` is a JSONL file (None = no cache on disk).
    """

    url: str
    model: str
    api_key_env: str = "OPENAI_API_KEY"
    concurrency: int = 8
    max_retries: int = 4
    timeout_s: float = 60.0
    cache_path: str | Path | None = None
    backoff_s: float = 1.0
    max_backoff_s: float = 60.0
    max_total_s: float = 600.0

    def __post_init__(self) -> None:
        parts = urllib.parse.urlsplit(self.url) if isinstance(self.url, str) else None
        if parts is None or parts.scheme not in ("http", "https") or not parts.netloc:
            raise SteerlabError(
                f"judge url must be an http(s) base URL like http://127.0.0.1:8000/v1, "
                f"got {self.url!r}"
            )
        if not isinstance(self.model, str) or not self.model.strip():
            raise SteerlabError(f"judge model must be a non-empty model name, got {self.model!r}")
        if not isinstance(self.api_key_env, str) or not self.api_key_env:
            raise SteerlabError("api_key_env must name an environment variable")
        _check_int("concurrency", self.concurrency, 1)
        _check_int("max_retries", self.max_retries, 0)
        _check_seconds("timeout_s", self.timeout_s, allow_zero=False)
        _check_seconds("backoff_s", self.backoff_s, allow_zero=True)
        _check_seconds("max_backoff_s", self.max_backoff_s, allow_zero=True)
        _check_seconds("max_total_s", self.max_total_s, allow_zero=False)
        if self.max_backoff_s < self.backoff_s:
            raise SteerlabError("max_backoff_s must be at least backoff_s")
        if self.cache_path is not None and not isinstance(self.cache_path, str | Path):
            raise SteerlabError("cache_path must be a file path or None")

    @property
    def endpoint(self) -> str:
        """The chat-completions URL requests go to."""
        return self.url.rstrip("/") + "/chat/completions"


def _retry_after_s(header: str | None) -> float | None:
    """Seconds from a ``Retry-After`` header (delta-seconds or an HTTP date); None if unusable."""
    if header is None:
        return None
    try:
        seconds = float(header.strip())
    except ValueError:
        try:
            seconds = parsedate_to_datetime(header.strip()).timestamp() - time.time()
        except (TypeError, ValueError, IndexError):
            return None
    return max(0.0, seconds) if math.isfinite(seconds) else None


def _retry_delay(cfg: JudgeConfig, attempt: int, retry_after: float | None, u: float) -> float:
    """Seconds to wait after failed attempt ``attempt`` (0-based); ``u`` in [0, 1) is jitter."""
    if retry_after is not None:
        return min(retry_after, cfg.max_backoff_s)
    return min(cfg.max_backoff_s, cfg.backoff_s * 2.0**attempt) * (0.5 + 0.5 * u)


def _sleep(seconds: float) -> None:
    time.sleep(seconds)


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """Refuse redirects: urllib then raises the 3xx as an :class:`urllib.error.HTTPError`."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


_OPENER = urllib.request.build_opener(_NoRedirect)
_CHUNK = 1 << 16


def _read_by(response: Any, deadline: float) -> bytes:
    """The whole body, or :class:`TimeoutError` once ``deadline`` (monotonic) passes."""
    parts: list[bytes] = []
    while True:
        if time.monotonic() > deadline:
            raise TimeoutError
        chunk = response.read1(_CHUNK) if hasattr(response, "read1") else response.read(_CHUNK)
        if not chunk:
            return b"".join(parts)
        parts.append(chunk)


def _first_line(body: bytes) -> str:
    text = body.decode("utf-8", errors="replace").strip()
    line = text.splitlines()[0].strip() if text else "(empty body)"
    return line if len(line) <= 300 else line[:300] + "..."


class Judge:
    """Scores filled judge prompts (see :func:`steerlab.judge.fill`); safe to share across threads.

    Results are kept in memory for the life of the object and, with ``cfg.cache_path``, in a
    JSONL file loaded here, so a rerun over the same prompts and judge model sends nothing.
    """

    def __init__(self, cfg: JudgeConfig) -> None:
        self.cfg = cfg
        self.cache = ResultCache(cfg.cache_path)
        self._text_only = False  # set once the endpoint is seen to give no logprobs
        self._rng = random.Random()

    def score(self, prompt: str) -> JudgeResult:
        """Score one filled judge prompt."""
        return self.score_many([prompt], progress=False)[0]

    def score_many(self, prompts: Sequence[str], *, progress: bool = True) -> list[JudgeResult]:
        """Score filled judge prompts; results come back in the order of ``prompts``.

        Cached prompts send nothing and equal prompts are sent once. The first prompt that fails
        for good raises :class:`JudgeError`; results finished before then stay cached.
        """
        if isinstance(prompts, str):
            raise SteerlabError("score_many takes a sequence of prompts, not a single string")
        for i, p in enumerate(prompts):
            if not isinstance(p, str) or not p.strip():
                raise SteerlabError(f"judge prompt {i} must be a non-empty string")
        keys = [cache_key(self.cfg.model, p) for p in prompts]
        rows_per_key = Counter(keys)
        todo = {k: p for k, p in zip(keys, prompts, strict=True) if self.cache.get(k) is None}
        bar = tqdm(
            total=len(prompts),
            initial=len(prompts) - sum(rows_per_key[k] for k in todo),
            desc="judge",
            unit="prompt",
            disable=not progress,
        )
        try:
            if todo:
                self._run(todo, lambda k: bar.update(rows_per_key[k]))
        finally:
            bar.close()
        return [self.cache[k] for k in keys]

    def _run(self, todo: dict[str, str], on_done: Callable[[str], object]) -> None:
        def work(key: str, prompt: str) -> None:
            # cached inside the worker, so answers already paid for survive a later failure
            self.cache.put(key, self.cfg.model, self._score_one(prompt))

        with ThreadPoolExecutor(max_workers=min(self.cfg.concurrency, len(todo))) as pool:
            futures = {pool.submit(work, k, p): k for k, p in todo.items()}
            try:
                for fut in as_completed(futures):
                    fut.result()
                    on_done(futures[fut])
            except BaseException:
                for fut in futures:
                    fut.cancel()
                raise

    def _score_one(self, prompt: str) -> JudgeResult:
        messages = [{"role": "user", "content": prompt}]
        if not self._text_only:
            reply = self._post(
                {
                    "model": self.cfg.model,
                    "messages": messages,
                    "max_tokens": 1,
                    "temperature": 0,
                    "logprobs": True,
                    "top_logprobs": TOP_LOGPROBS,
                }
            )
            top = self._top_logprobs(reply)
            if top is not None:
                return parse_logprobs(top)
            if not self._text_only:
                logger.info("judge %s gives no logprobs; parsing text", self.cfg.endpoint)
                self._text_only = True
        # one token may cut a multi-token answer (REFUSAL), so ask again for a few tokens of text
        reply = self._post(
            {
                "model": self.cfg.model,
                "messages": messages,
                "max_tokens": TEXT_MAX_TOKENS,
                "temperature": 0,
            }
        )
        message = self._choice(reply).get("message")
        content = message.get("content") if isinstance(message, dict) else None
        return parse_text(content if isinstance(content, str) else "")

    def _choice(self, reply: Any) -> dict[str, Any]:
        choices = reply.get("choices") if isinstance(reply, dict) else None
        if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
            raise JudgeError(f"judge endpoint {self.cfg.endpoint} returned a reply without choices")
        return choices[0]

    def _top_logprobs(self, reply: Any) -> list[tuple[str, float]] | None:
        """The first token's ``(token, logprob)`` alternatives; None when there are no logprobs."""
        logprobs = self._choice(reply).get("logprobs")
        content = logprobs.get("content") if isinstance(logprobs, dict) else None
        if not isinstance(content, list) or not content or not isinstance(content[0], dict):
            return None
        first = content[0]
        top: list[tuple[str, float]] = []
        for e in first.get("top_logprobs") or [first]:
            tok, lp = (e.get("token"), e.get("logprob")) if isinstance(e, dict) else (None, None)
            if not isinstance(tok, str) or isinstance(lp, bool) or not isinstance(lp, int | float):
                raise JudgeError(
                    f"judge endpoint {self.cfg.endpoint} returned a top_logprobs entry without "
                    f"a string token and a numeric logprob: {e!r}"
                )
            top.append((tok, float(lp)))
        return top

    def _post(self, body: dict[str, Any]) -> Any:
        """POST with retries on connection errors, timeouts, 429 and 5xx; the decoded JSON."""
        url = self.cfg.endpoint
        data = json.dumps(body).encode("utf-8")
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        key = os.environ.get(self.cfg.api_key_env)
        if key:
            headers["Authorization"] = f"Bearer {key}"
        attempts = self.cfg.max_retries + 1
        failure = ""
        start = time.monotonic()
        for attempt in range(attempts):
            retry_after: float | None = None
            try:
                request = urllib.request.Request(url, data=data, headers=headers, method="POST")
                with _OPENER.open(request, timeout=self.cfg.timeout_s) as response:
                    raw = _read_by(response, time.monotonic() + self.cfg.timeout_s)
            except urllib.error.HTTPError as e:
                if 300 <= e.code < 400:
                    where = e.headers.get("Location", "?")
                    raise JudgeError(
                        f"judge endpoint {url} redirected (HTTP {e.code}) to {where}: give the "
                        "URL it should be reached at"
                    ) from e
                try:
                    line = _first_line(e.read())
                except (OSError, HTTPException):
                    line = "(body unreadable)"
                if e.code != 429 and e.code < 500:
                    raise JudgeError(f"judge endpoint {url} answered HTTP {e.code}: {line}") from e
                failure = f"answered HTTP {e.code} ({line})"
                retry_after = _retry_after_s(e.headers.get("Retry-After"))
            except TimeoutError:
                failure = f"did not answer within {self.cfg.timeout_s:g} s"
            except urllib.error.URLError as e:
                if isinstance(e.reason, TimeoutError):
                    failure = f"did not answer within {self.cfg.timeout_s:g} s"
                else:
                    failure = f"is unreachable ({e.reason})"
            except (OSError, HTTPException) as e:
                failure = f"dropped the connection ({type(e).__name__}: {e})"
            else:
                try:
                    return json.loads(raw)
                except (UnicodeDecodeError, json.JSONDecodeError) as e:
                    line = _first_line(raw)
                    raise JudgeError(f"judge endpoint {url} returned non-JSON: {line}") from e
            if attempt + 1 < attempts:
                wait = _retry_delay(self.cfg, attempt, retry_after, self._rng.random())
                spent = time.monotonic() - start
                # a server that asks for more time than the budget has left will not answer
                # within it: retrying sooner (the wait is capped) would only ignore what it said
                asked = retry_after if retry_after is not None else wait
                if spent + max(wait, asked) > self.cfg.max_total_s:
                    why = (
                        f"the server asked to wait {asked:.0f} s"
                        if retry_after is not None
                        else f"the next wait was {wait:.0f} s"
                    )
                    raise JudgeError(
                        f"judge endpoint {url} {failure}; gave up after {attempt + 1} "
                        f"attempt(s) and {spent:.0f} s (the retry budget is "
                        f"{self.cfg.max_total_s:g} s a prompt; {why})"
                    )
                _sleep(wait)
        raise JudgeError(f"judge endpoint {url} {failure} on all {attempts} attempt(s)")
