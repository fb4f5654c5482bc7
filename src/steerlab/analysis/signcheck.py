"""Sign check: does positive steering strength move the task's target metric the intended way?

A labeled mean-difference vector is only as right as its sign convention, and a backwards sign
looks like "steering does not help" rather than like a bug (``mean(secure) - mean(vulnerable)``
added to raise vulnerability detection lowers it, and a sweep read alone shows only a weak or odd
effect). This check runs before any sweep is read: on a held-out slice, score the baseline,
``+α`` and ``-α``, and compare.

The target metric is averaged over the examples whose true label is ``on_label`` (default: the
target label; e.g. "raise P(vulnerable) on vulnerable snippets"):

- ``p_target``: P(target | {positive, negative}) = sigmoid of the margin toward the target;
- ``margin``: log P(target) - log P(other label), in nats;
- ``logp``: log P(target), the raw mass on the target's answer tokens;
- ``answer_rate`` (generation mode, :func:`answer_sign_check`): the fraction of generated
  answers parsed as the target label (an uncertain answer counts as not stating it).

Each effect (``+α`` vs baseline, ``-α`` vs baseline, ``+α`` vs ``-α``) is a paired difference
over the same examples with a percentile-bootstrap interval. Verdicts, with "the intended way"
meaning up for ``raise`` and down for ``lower``:

- ``ok``: ``+α`` moves the metric the intended way, ``-α`` does not, and ``+α`` ends further
  that way than ``-α`` (both intervals exclude zero);
- ``flipped``: ``-α`` moves it the intended way, ``+α`` does not, and ``+α`` ends clearly on the
  wrong side of ``-α``: the vector's sign is backwards (use ``--flip-sign`` or rebuild it as
  ``mean(target) - mean(other)``);
- ``inconclusive``: anything else (too few examples, no clear movement, both signs moving the
  same way).

The rules are symmetric: negating the vector (swapping ``+α`` and ``-α``) turns ``ok`` into
``flipped`` and back, so a vector flagged as backwards passes once negated, and vice versa.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any

import numpy as np
import numpy.typing as npt

from steerlab.engine.score import LogitScores
from steerlab.errors import SteerlabError
from steerlab.metrics.stats import bootstrap_ci

VERDICTS = ("ok", "flipped", "inconclusive")
DIRECTIONS = ("raise", "lower")
METRICS = ("p_target", "margin", "logp")
#: The metric of :func:`answer_sign_check`: parsed answers, not logits.
ANSWER_METRIC = "answer_rate"
OnLabel = str | Sequence[str] | None


@dataclass(frozen=True)
class PairedEffect:
    """``mean(after - before)`` over paired examples and its bootstrap interval ``[lo, hi]``."""

    mean: float
    lo: float
    hi: float

    def signed(self, sign: float) -> PairedEffect:
        """The effect with its sign multiplied by ``sign`` (+1 or -1); the interval follows."""
        lo, hi = sorted((sign * self.lo, sign * self.hi))
        return PairedEffect(sign * self.mean, lo, hi)

    def describe(self, fmt: str) -> str:
        return f"{self.mean:+{fmt}} [{self.lo:+{fmt}}, {self.hi:+{fmt}}]"


def paired_effect(
    after: Sequence[float] | npt.NDArray[np.generic],
    before: Sequence[float] | npt.NDArray[np.generic],
    n_boot: int = 1000,
    ci_alpha: float = 0.05,
    seed: int = 0,
) -> PairedEffect:
    """Paired bootstrap of ``mean(after - before)``: examples are resampled as pairs (the mean
    of per-example differences); a pair with a NaN on either side is dropped."""
    a = np.asarray(after, dtype=np.float64).reshape(-1)
    b = np.asarray(before, dtype=np.float64).reshape(-1)
    if a.shape != b.shape:
        raise SteerlabError(f"paired values differ in length ({a.size} vs {b.size})")
    mean, lo, hi = bootstrap_ci(a - b, n_boot=n_boot, alpha=ci_alpha, seed=seed)
    return PairedEffect(mean, lo, hi)


@dataclass(frozen=True)
class SignCheck:
    """The outcome of :func:`sign_check`; ``message`` is a paragraph for the top of a report."""

    verdict: str
    target_label: str
    direction: str
    metric: str
    on_label: str | tuple[str, ...]  # the slice: examples with this true label (or these)
    n: int
    alpha: float | None
    baseline: float
    plus: float
    minus: float
    plus_effect: PairedEffect  # +α - baseline
    minus_effect: PairedEffect  # -α - baseline
    plus_vs_minus: PairedEffect  # +α - (-α)
    ci_level: float
    message: str

    @property
    def flip_suggested(self) -> bool:
        return self.verdict == "flipped"

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def sign_check(
    baseline: LogitScores,
    plus: LogitScores,
    minus: LogitScores,
    labels: Sequence[str],
    target_label: str,
    direction: str = "raise",
    metric: str = "p_target",
    on_label: OnLabel = None,
    alpha: float | None = None,
    min_examples: int = 5,
    min_effect: float = 0.0,
    n_boot: int = 2000,
    ci_alpha: float = 0.05,
    seed: int = 0,
    remedy: str | None = None,
) -> SignCheck:
    """Compare the target metric under the baseline, ``+α`` and ``-α`` (see the module docstring).

    ``baseline``/``plus``/``minus`` score the same prompts in the same order; ``labels[i]`` is
    the true label of prompt ``i``. ``target_label`` is the positive or negative label of the
    scores; ``direction`` says whether steering should ``raise`` or ``lower`` the metric;
    ``on_label`` picks the slice (a true label, several, or None: ``target_label``);
    ``alpha`` (the strength used) only goes into the message, and so does ``remedy``, the
    sentence a ``flipped`` message ends with (default: rerun with ``--flip-sign`` or rebuild the
    vector). An effect counts as clear when its
    ``1 - ci_alpha`` interval lies beyond ``min_effect`` (in the metric's units); fewer than
    ``min_examples`` examples on the slice is always ``inconclusive``.
    """
    if metric not in METRICS:
        raise SteerlabError(f"metric must be one of {METRICS}, got {metric!r}")
    _check_aligned(baseline, plus, minus, labels)
    values = [_metric(s, target_label, metric) for s in (baseline, plus, minus)]
    opts = _Options(direction, alpha, min_examples, min_effect, n_boot, ci_alpha, seed, remedy)
    return _check(values, labels, target_label, metric, on_label, opts)


def answer_sign_check(
    baseline: Sequence[str],
    plus: Sequence[str],
    minus: Sequence[str],
    labels: Sequence[str],
    target_label: str,
    direction: str = "raise",
    on_label: OnLabel = None,
    alpha: float | None = None,
    min_examples: int = 5,
    min_effect: float = 0.0,
    n_boot: int = 2000,
    ci_alpha: float = 0.05,
    seed: int = 0,
    remedy: str | None = None,
) -> SignCheck:
    """:func:`sign_check` on generated answers: ``baseline[i]``/``plus[i]``/``minus[i]`` are the
    labels parsed from prompt ``i``'s answers (any string: an uncertain answer is read as not
    stating the target). The metric is ``answer_rate``, the fraction stating ``target_label``.

    Use it where the logits at the last prompt token cannot show steering's effect (steering
    only generated tokens changes the answer after its first token)."""
    n = len(baseline)
    for name, answers in (("plus", plus), ("minus", minus)):
        if len(answers) != n:
            raise SteerlabError(
                f"{name} has {len(answers)} answers, the baseline {n}: answer the same "
                "held-out prompts under each setting"
            )
    if len(labels) != n:
        raise SteerlabError(f"{len(labels)} true labels for {n} answers")
    values = [
        np.array([1.0 if a == target_label else 0.0 for a in answers], dtype=np.float64)
        for answers in (baseline, plus, minus)
    ]
    opts = _Options(direction, alpha, min_examples, min_effect, n_boot, ci_alpha, seed, remedy)
    return _check(values, labels, target_label, ANSWER_METRIC, on_label, opts)


@dataclass(frozen=True)
class _Options:
    direction: str
    alpha: float | None
    min_examples: int
    min_effect: float
    n_boot: int
    ci_alpha: float
    seed: int
    remedy: str | None


def _check(
    values: Sequence[npt.NDArray[np.float64]],
    labels: Sequence[str],
    target_label: str,
    metric: str,
    on_label: OnLabel,
    o: _Options,
) -> SignCheck:
    """The verdict from the metric's per-prompt values under the baseline, +α and -α."""
    if o.direction not in DIRECTIONS:
        raise SteerlabError(f"direction must be one of {DIRECTIONS}, got {o.direction!r}")
    if o.min_effect < 0 or not math.isfinite(o.min_effect):
        raise SteerlabError("min_effect must be a finite number >= 0")
    on = _slice(target_label if on_label is None else on_label)
    idx = [i for i, y in enumerate(labels) if y in on]
    base_v, plus_v, minus_v = (v[idx] for v in values)

    def effect(after: npt.NDArray[np.float64], before: npt.NDArray[np.float64]) -> PairedEffect:
        return paired_effect(after, before, n_boot=o.n_boot, ci_alpha=o.ci_alpha, seed=o.seed)

    plus_eff, minus_eff, gap = (
        effect(plus_v, base_v),
        effect(minus_v, base_v),
        effect(plus_v, minus_v),
    )
    sign = 1.0 if o.direction == "raise" else -1.0
    verdict, why = _verdict(
        len(idx),
        o.min_examples,
        o.min_effect,
        *(e.signed(sign) for e in (plus_eff, minus_eff, gap)),
    )
    check = SignCheck(
        verdict=verdict,
        target_label=target_label,
        direction=o.direction,
        metric=metric,
        on_label=on[0] if len(on) == 1 else on,
        n=len(idx),
        alpha=o.alpha,
        baseline=_mean(base_v),
        plus=_mean(plus_v),
        minus=_mean(minus_v),
        plus_effect=plus_eff,
        minus_effect=minus_eff,
        plus_vs_minus=gap,
        ci_level=1 - o.ci_alpha,
        message="",
    )
    return _with_message(check, why, o.remedy)


def _slice(on_label: str | Sequence[str]) -> tuple[str, ...]:
    on = (on_label,) if isinstance(on_label, str) else tuple(dict.fromkeys(on_label))
    if not on:
        raise SteerlabError("on_label: give at least one label")
    return on


def _check_aligned(
    baseline: LogitScores, plus: LogitScores, minus: LogitScores, labels: Sequence[str]
) -> None:
    for name, s in (("plus", plus), ("minus", minus)):
        if len(s) != len(baseline):
            raise SteerlabError(
                f"{name} scores {len(s)} prompts, the baseline {len(baseline)}: score the same "
                "held-out prompts under each setting"
            )
        if (s.labels, s.positive, s.negative) != (
            baseline.labels,
            baseline.positive,
            baseline.negative,
        ):
            raise SteerlabError(f"{name} scores use other labels than the baseline")
    if len(labels) != len(baseline):
        raise SteerlabError(f"{len(labels)} true labels for {len(baseline)} scored prompts")


def _metric(scores: LogitScores, target: str, metric: str) -> npt.NDArray[np.float64]:
    if metric == "p_target":
        t = scores.p_label(target)
    elif metric == "margin":
        t = scores.margin_toward(target)
    else:
        t = scores.log_prob(target)
    return t.double().numpy()


def _mean(x: npt.NDArray[np.float64]) -> float:
    return float(np.nanmean(x)) if x.size and not np.isnan(x).all() else math.nan


def _verdict(
    n: int,
    min_examples: int,
    min_effect: float,
    plus: PairedEffect,
    minus: PairedEffect,
    gap: PairedEffect,
) -> tuple[str, str]:
    """Verdict from effects already oriented so that positive = the intended way; and a reason
    code for the message."""
    if n < max(min_examples, 1):
        return "inconclusive", "few"
    if any(math.isnan(e.mean) for e in (plus, minus, gap)):
        return "inconclusive", "nan"
    plus_good, minus_good = plus.lo > min_effect, minus.lo > min_effect
    plus_bad, minus_bad = plus.hi < -min_effect, minus.hi < -min_effect
    if plus_good and minus_good:  # not the vector's sign at work: ok and flipped mirror
        return "inconclusive", "both_good"
    if plus_good and gap.lo > 0:
        return "ok", "ok"
    if minus_good and gap.hi < 0:
        return "flipped", "flipped"
    if plus_bad and minus_bad:
        return "inconclusive", "both_bad"
    return "inconclusive", "weak"


FLIP_REMEDY = (
    "Rerun with --flip-sign, or rebuild it as mean(target) - mean(other), before reading any "
    "steering result."
)


def _with_message(c: SignCheck, why: str, remedy: str | None = None) -> SignCheck:
    fmt = ".3f" if c.metric in ("p_target", ANSWER_METRIC) else ".2f"
    name = {
        "p_target": f"P({c.target_label})",
        "margin": f"the margin toward {c.target_label!r} (nats)",
        "logp": f"log P({c.target_label})",
        ANSWER_METRIC: f"the rate of answers stating {c.target_label!r}",
    }[c.metric]
    alpha = "α" if c.alpha is None else f"α={abs(c.alpha):g}"
    on = (c.on_label,) if isinstance(c.on_label, str) else c.on_label
    slice_ = f"{c.n} held-out example(s) labeled {' or '.join(repr(x) for x in on)}"
    goal = f"{c.direction} {name}"
    level = f"{100 * c.ci_level:g}% CI"
    mean = "" if c.metric == ANSWER_METRIC else "mean "  # a rate is already an average
    facts = (
        f"on {slice_}, {mean}{name} is {c.baseline:{fmt}} unsteered, {c.plus:{fmt}} at +{alpha} "
        f"(change {c.plus_effect.describe(fmt)}, {level}) and {c.minus:{fmt}} at -{alpha} "
        f"(change {c.minus_effect.describe(fmt)})."
    )
    if why == "ok":
        text = (
            f"Sign check OK: {facts} Positive strength does what the vector is meant to do "
            f"({goal}), and more so than negative strength."
        )
    elif why == "flipped":
        text = (
            f"Sign check FLIPPED: {facts} Negative strength does what was intended ({goal}) and "
            "positive strength does the opposite: the vector points the wrong way for this "
            f"task (it was likely built as mean(other) - mean(target)). {remedy or FLIP_REMEDY}"
        )
    elif why == "few":
        text = (
            f"Sign check INCONCLUSIVE: only {slice_} (need at least a handful); the sign of the "
            "vector is unchecked. Hold out more examples of that label."
        )
    elif why == "nan":
        text = f"Sign check INCONCLUSIVE: the metric is undefined (NaN) on {slice_}."
    elif why == "both_good":
        text = (
            f"Sign check INCONCLUSIVE: {facts} Both signs {c.direction} the metric, so the "
            "change does not follow the vector's sign (steering this hard may simply disrupt the "
            "model); try a smaller α or another layer."
        )
    elif why == "both_bad":
        text = (
            f"Sign check INCONCLUSIVE: {facts} Both signs move the metric against the intended "
            f"direction ({goal}): steering this hard may simply disrupt the model; try a smaller "
            "α or another layer."
        )
    else:
        text = (
            f"Sign check INCONCLUSIVE: {facts} Neither sign moves the metric clearly the intended "
            f"way ({goal}): the vector may be too weak at this α, at the wrong layer, or the "
            "slice too small; its sign is unchecked."
        )
    return replace(c, message=text)
