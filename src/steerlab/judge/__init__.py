"""Score model answers with an LLM judge on any OpenAI-compatible endpoint.

The emergent-misalignment evaluation method::

    from steerlab.judge import Judge, JudgeConfig, fill

    judge = Judge(JudgeConfig(url="http://127.0.0.1:8000/v1", model="judge", cache_path="j.jsonl"))
    results = judge.score_many([fill(template, q, a) for q, a in pairs])
    scores = [r.score for r in results if r.kind == "score"]

* :mod:`~steerlab.judge.scoring`: pure functions from logprobs or text to a :class:`JudgeResult`.
* :mod:`~steerlab.judge.cache`: the append-only JSONL cache keyed by (judge model, prompt).
* :mod:`~steerlab.judge.client`: :class:`JudgeConfig` and :class:`Judge` (HTTP, retries, threads).
"""

from __future__ import annotations

from steerlab.judge.cache import ResultCache, cache_key
from steerlab.judge.client import Judge, JudgeConfig, JudgeError
from steerlab.judge.scoring import (
    KINDS,
    METHODS,
    MIN_PROB_MASS,
    JudgeResult,
    Kind,
    Method,
    fill,
    parse_logprobs,
    parse_text,
)

__all__ = [
    "KINDS",
    "METHODS",
    "MIN_PROB_MASS",
    "Judge",
    "JudgeConfig",
    "JudgeError",
    "JudgeResult",
    "Kind",
    "Method",
    "ResultCache",
    "cache_key",
    "fill",
    "parse_logprobs",
    "parse_text",
]
