"""Percentile-bootstrap confidence intervals for rates and means, vectorized with numpy.

Rates in the reliability report (refusal rate on ``harm_test``, helpful rate on ``benign``) come
from a few hundred prompts; an interval shows which differences between layers or coefficients
are larger than resampling noise.

NaN values are dropped before resampling, matching the confound metrics' convention that NaN
means "undefined for this completion" (e.g. mean entropy of an empty completion).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

# Resample in chunks of at most this many drawn indices, so memory stays bounded for large n.
_MAX_DRAWS_PER_CHUNK = 4_000_000


def _clean(values: Sequence[float] | npt.NDArray[np.generic]) -> npt.NDArray[np.float64]:
    x = np.asarray(values, dtype=np.float64).reshape(-1)
    return x[~np.isnan(x)]


def _boot_means(
    x: npt.NDArray[np.float64], n_boot: int, rng: np.random.Generator
) -> npt.NDArray[np.float64]:
    """Means of ``n_boot`` resamples (with replacement) of ``x``: ``(n,) -> (n_boot,)``."""
    n = x.size
    per_chunk = max(1, _MAX_DRAWS_PER_CHUNK // n)
    out = np.empty(n_boot, dtype=np.float64)
    for start in range(0, n_boot, per_chunk):
        stop = min(n_boot, start + per_chunk)
        idx = rng.integers(0, n, size=(stop - start, n))  # (chunk, n)
        out[start:stop] = x[idx].mean(axis=1)
    return out


def _check(n_boot: int, alpha: float) -> None:
    if n_boot < 1:
        raise ValueError(f"n_boot must be >= 1, got {n_boot}")
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")


def bootstrap_ci(
    values: Sequence[float] | npt.NDArray[np.generic],
    n_boot: int = 1000,
    alpha: float = 0.05,
    seed: int = 0,
) -> tuple[float, float, float]:
    """``(mean, lo, hi)``: the sample mean and a ``1 - alpha`` percentile-bootstrap interval.

    Booleans work (a refusal rate is the mean of 0/1 flags). No values gives ``(nan, nan, nan)``;
    a single value gives ``(v, v, v)``. Deterministic in ``seed``.
    """
    _check(n_boot, alpha)
    x = _clean(values)
    if x.size == 0:
        return math.nan, math.nan, math.nan
    mean = float(x.mean())
    if x.size == 1:
        return mean, mean, mean
    means = _boot_means(x, n_boot, np.random.default_rng(seed))
    lo, hi = np.quantile(means, [alpha / 2, 1 - alpha / 2])
    return mean, float(lo), float(hi)


def bootstrap_diff_ci(
    a: Sequence[float] | npt.NDArray[np.generic],
    b: Sequence[float] | npt.NDArray[np.generic],
    n_boot: int = 1000,
    alpha: float = 0.05,
    seed: int = 0,
) -> tuple[float, float, float]:
    """``(mean(a) - mean(b), lo, hi)`` with ``a`` and ``b`` resampled independently.

    For unpaired gaps such as ``refusal_rate(harm_train) - refusal_rate(harm_test)``. NaN
    everywhere when either side is empty; a side with one value contributes no spread.
    """
    _check(n_boot, alpha)
    x, y = _clean(a), _clean(b)
    if x.size == 0 or y.size == 0:
        return math.nan, math.nan, math.nan
    diff = float(x.mean() - y.mean())
    rng = np.random.default_rng(seed)
    mx = _boot_means(x, n_boot, rng) if x.size > 1 else np.full(n_boot, x[0])
    my = _boot_means(y, n_boot, rng) if y.size > 1 else np.full(n_boot, y[0])
    lo, hi = np.quantile(mx - my, [alpha / 2, 1 - alpha / 2])
    return diff, float(lo), float(hi)


def wilson_ci(successes: int, n: int, z: float = 1.959963984540054) -> tuple[float, float, float]:
    """``(rate, lo, hi)``: the Wilson score interval (95% by default) for ``successes`` of ``n``.

    Unlike a bootstrap, it stays informative at 0 or ``n`` successes out of a handful (10 of 10
    gives [0.72, 1], not [1, 1]). ``n == 0`` gives NaN everywhere.
    """
    if n < 0 or not 0 <= successes <= n:
        raise ValueError(f"need 0 <= successes <= n, got {successes} of {n}")
    if n == 0:
        return math.nan, math.nan, math.nan
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return p, max(0.0, centre - half), min(1.0, centre + half)


def bootstrap_contrast_ci(
    terms: Sequence[tuple[float, Sequence[float] | npt.NDArray[np.generic]]],
    n_boot: int = 1000,
    alpha: float = 0.05,
    seed: int = 0,
) -> tuple[float, float, float]:
    """``(Σ w·mean(x), lo, hi)`` for ``terms = [(w, x), ...]``, each ``x`` resampled independently.

    A linear contrast of independent sample means, e.g. a difference of generalization gaps
    ``(train_a − test_a) − (train_b − test_b)``. Paired data enter as one term of per-unit
    differences (``x_a − x_b`` over the shared prompts), so the pairing is kept in every resample.
    ``[(1, x)]`` is :func:`bootstrap_ci` and ``[(1, a), (-1, b)]`` is :func:`bootstrap_diff_ci`
    (same draws for the same ``seed``). NaN everywhere when any term is empty; a term with one
    value contributes no spread.
    """
    _check(n_boot, alpha)
    clean = [(float(w), _clean(x)) for w, x in terms]
    if not clean or any(x.size == 0 for _, x in clean):
        return math.nan, math.nan, math.nan
    estimate = math.fsum(w * float(x.mean()) for w, x in clean)
    if all(x.size == 1 for _, x in clean):
        return estimate, estimate, estimate
    rng = np.random.default_rng(seed)
    total = np.zeros(n_boot, dtype=np.float64)
    for w, x in clean:
        total += w * (_boot_means(x, n_boot, rng) if x.size > 1 else np.full(n_boot, x[0]))
    lo, hi = np.quantile(total, [alpha / 2, 1 - alpha / 2])
    return estimate, float(lo), float(hi)
