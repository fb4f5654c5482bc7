"""Confound metrics: is a change in refusal rate just shorter, flatter or degenerate output?

Steering that "increases refusals" might instead collapse the distribution (low entropy, very
short answers) or push the model into loops and noise. These metrics let a report check that.

Empty-input convention, used throughout: **counts are 0; averages and ratios over nothing are
NaN** (a mean over zero tokens is undefined, and NaN keeps it out of ``np.nanmean`` aggregates
instead of dragging them towards 0). Inputs that are ``None`` (not recorded) give NaN / ``None``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Hashable, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

Tokens = Sequence[Hashable] | npt.NDArray[np.generic]


def completion_length(completion: str | Sequence[int] | npt.NDArray[np.integer]) -> int:
    """Length of a completion: whitespace-separated words for text, ``len`` for token ids."""
    if isinstance(completion, str):
        return len(completion.split())
    return len(completion)


def _mean(values: Sequence[float] | npt.NDArray[np.floating] | None) -> float:
    if values is None:
        return math.nan
    arr = np.asarray(values, dtype=np.float64)
    return float(arr.mean()) if arr.size else math.nan


def mean_entropy(entropies: Sequence[float] | npt.NDArray[np.floating] | None) -> float:
    """Mean per-token entropy (nats) of the sampling distribution; NaN when empty or None."""
    return _mean(entropies)


def mean_logprob(logprobs: Sequence[float] | npt.NDArray[np.floating] | None) -> float:
    """Mean log-probability of the sampled tokens; NaN when empty or None (``-inf`` propagates)."""
    return _mean(logprobs)


def token_entropies(logits: npt.ArrayLike) -> npt.NDArray[np.float64]:
    """Entropy in nats of ``softmax(logits)`` along the last axis: ``(..., V) -> (...)``.

    Computed with a max-shift so large logits do not overflow; ``-inf`` logits (masked tokens)
    contribute zero.
    """
    x = np.asarray(logits, dtype=np.float64)  # (..., V)
    shifted = x - x.max(axis=-1, keepdims=True)
    logz = np.log(np.exp(shifted).sum(axis=-1, keepdims=True))
    logp = shifted - logz  # (..., V)
    p = np.exp(logp)
    plogp = p * np.where(p > 0, logp, 0.0)  # 0 * log 0 := 0, without a -inf * 0 warning
    # Clip the -0.0 / -1e-17 rounding of a one-hot distribution to exactly 0.
    return np.asarray(np.maximum(-plogp.sum(axis=-1), 0.0), dtype=np.float64)  # (...)


def _ngrams(tokens: Tokens, n: int) -> list[tuple[Hashable, ...]]:
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    seq = tokens.tolist() if isinstance(tokens, np.ndarray) else list(tokens)
    return [tuple(seq[i : i + n]) for i in range(len(seq) - n + 1)]


def distinct_n(tokens: Tokens, n: int) -> float:
    """Unique n-grams / total n-grams; NaN when there are fewer than ``n`` tokens.

    1.0 means no n-gram repeats; looping text drives it towards 0.
    """
    grams = _ngrams(tokens, n)
    return len(set(grams)) / len(grams) if grams else math.nan


def repetition_rate(tokens: Tokens, n: int = 3) -> float:
    """Fraction of n-grams that repeat an earlier n-gram; NaN when there are fewer than ``n``.

    Equals ``1 - distinct_n`` on the same input, but reads as "how much of this is a loop".
    """
    grams = _ngrams(tokens, n)
    if not grams:
        return math.nan
    seen: set[tuple[Hashable, ...]] = set()
    repeats = 0
    for g in grams:
        repeats += g in seen
        seen.add(g)
    return repeats / len(grams)


@dataclass(frozen=True)
class GibberishConfig:
    """Thresholds of :func:`gibberish_flags`.

    ``min_tokens`` guards the ratio checks: a three-word answer is too short to call repetitive.
    ``min_alpha_fraction`` is the share of non-space characters that must be letters (code and
    prose stay well above 0.3; strings of symbols and digits do not).
    """

    max_repetition_rate: float = 0.5
    min_distinct_1: float = 0.3
    min_alpha_fraction: float = 0.3
    min_tokens: int = 8

    def __post_init__(self) -> None:
        for name in ("max_repetition_rate", "min_distinct_1", "min_alpha_fraction"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {value}")
        if self.min_tokens < 3:
            raise ValueError(f"min_tokens must be >= 3, got {self.min_tokens}")


DEFAULT_GIBBERISH_CONFIG = GibberishConfig()


def gibberish_flags(
    text: str,
    tokens: Tokens | None = None,
    config: GibberishConfig = DEFAULT_GIBBERISH_CONFIG,
) -> tuple[str, ...]:
    """Names of the degeneracy checks a completion fails; ``()`` means it looks like language.

    Flags: ``"empty"`` (no visible characters), ``"repetitive"`` (trigram repetition rate above
    the limit), ``"low_diversity"`` (distinct-1 below the limit), ``"non_alpha"`` (too few
    letters). Repetition is measured on ``tokens`` (token ids) when given, else on words.
    """
    visible = re.sub(r"\s+", "", text)
    if not visible:
        return ("empty",)
    units: Tokens = tokens if tokens is not None else text.lower().split()
    flags: list[str] = []
    if len(units) >= config.min_tokens:
        if repetition_rate(units, 3) > config.max_repetition_rate:
            flags.append("repetitive")
        if distinct_n(units, 1) < config.min_distinct_1:
            flags.append("low_diversity")
    if sum(ch.isalpha() for ch in visible) / len(visible) < config.min_alpha_fraction:
        flags.append("non_alpha")
    return tuple(flags)


@dataclass(frozen=True)
class ConfoundResult:
    """Per-completion confound metrics (see the module docstring for the NaN convention).

    ``n_tokens`` is ``None`` when no token ids were given; ratio metrics use token ids when
    given, else words. ``is_gibberish`` is true when any flag is raised.
    """

    n_tokens: int | None
    n_words: int
    n_chars: int
    mean_entropy: float
    mean_logprob: float
    distinct_1: float
    distinct_2: float
    repetition_rate: float
    gibberish_flags: tuple[str, ...]
    is_gibberish: bool


def confound_metrics(
    text: str,
    token_ids: Sequence[int] | npt.NDArray[np.integer] | None = None,
    logprobs: Sequence[float] | npt.NDArray[np.floating] | None = None,
    entropies: Sequence[float] | npt.NDArray[np.floating] | None = None,
    config: GibberishConfig = DEFAULT_GIBBERISH_CONFIG,
) -> ConfoundResult:
    """Bundle the confound metrics of one completion.

    ``logprobs`` and ``entropies`` are per generated token, as recorded during decoding;
    ``token_ids`` are the generated ids (prompt excluded). Any of them may be ``None``.
    """
    units: Tokens = token_ids if token_ids is not None else text.lower().split()
    flags = gibberish_flags(text, token_ids, config)
    return ConfoundResult(
        n_tokens=None if token_ids is None else completion_length(token_ids),
        n_words=completion_length(text),
        n_chars=len(text),
        mean_entropy=mean_entropy(entropies),
        mean_logprob=mean_logprob(logprobs),
        distinct_1=distinct_n(units, 1),
        distinct_2=distinct_n(units, 2),
        repetition_rate=repetition_rate(units, 3),
        gibberish_flags=flags,
        is_gibberish=bool(flags),
    )
