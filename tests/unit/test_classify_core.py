"""The classification core without a model: answer scores, paired effects and the sign check.

Sign-check scores are built by hand (log-probabilities of two labels), so each verdict is checked
on a case whose right answer is known: a vector that raises the target (``ok``), the same vector
negated (``flipped``), no movement, too few examples, both signs moving the same way.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from steerlab.analysis.signcheck import (
    PairedEffect,
    SignCheck,
    answer_sign_check,
    paired_effect,
    sign_check,
)
from steerlab.engine.score import LogitScores, _label_ids
from steerlab.errors import SteerlabError

LABELS = ("vulnerable", "secure")


def scores(margins: list[float] | np.ndarray, base: float = -1.0) -> LogitScores:
    """Scores whose margin log P(vulnerable) - log P(secure) is ``margins``."""
    m = torch.as_tensor(np.asarray(margins, dtype=np.float32))
    logp = torch.stack([base + m / 2, base - m / 2], dim=-1)  # (N, 2)
    return LogitScores(LABELS, logp, "vulnerable", "secure")


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 1 / (1 + np.exp(-x))


# ----------------------------------------------------------------------------- LogitScores


def test_scores_margin_and_probabilities() -> None:
    logp = torch.tensor([[-0.5, -2.0, -3.0], [-4.0, -1.0, -0.2]])
    s = LogitScores(("yes", "no", "other"), logp, positive="yes", negative="no")
    torch.testing.assert_close(s.margin, torch.tensor([1.5, -3.0]))
    torch.testing.assert_close(s.p_positive, torch.sigmoid(torch.tensor([1.5, -3.0])))
    torch.testing.assert_close(s.margin_toward("no"), torch.tensor([-1.5, 3.0]))
    # P(label | {yes, no}) sums to one over the pair, whatever mass "other" holds
    torch.testing.assert_close(s.p_label("yes") + s.p_label("no"), torch.ones(2))
    torch.testing.assert_close(s.log_prob("other"), torch.tensor([-3.0, -0.2]))
    one = s.select([1])
    assert len(one) == 1 and one.labels == s.labels
    torch.testing.assert_close(one.margin, torch.tensor([-3.0]))


def test_scores_refuse_bad_shapes_and_labels() -> None:
    with pytest.raises(SteerlabError, match="logp must be"):
        LogitScores(LABELS, torch.zeros(3, 3), "vulnerable", "secure")
    with pytest.raises(SteerlabError, match="not one of"):
        LogitScores(LABELS, torch.zeros(3, 2), "vulnerable", "benign")
    with pytest.raises(SteerlabError, match="must differ"):
        LogitScores(LABELS, torch.zeros(3, 2), "secure", "secure")
    s = scores([0.0])
    with pytest.raises(SteerlabError, match="neither"):
        s.margin_toward("other")


def test_label_ids_are_deduplicated_and_checked() -> None:
    assert _label_ids({"a": [5, 3, 5], "b": [7]}, "a", "b") == [[3, 5], [7]]
    assert _label_ids({"a": [np.int64(4)], "b": [1]}, "a", "b") == [[4], [1]]
    with pytest.raises(SteerlabError, match="both 'a' and 'b'"):
        _label_ids({"a": [3, 4], "b": [4]}, "a", "b")
    with pytest.raises(SteerlabError, match="no answer token ids"):
        _label_ids({"a": [], "b": [4]}, "a", "b")
    with pytest.raises(SteerlabError, match="integers >= 0"):
        _label_ids({"a": [-1], "b": [4]}, "a", "b")
    with pytest.raises(SteerlabError, match="integers >= 0"):
        _label_ids({"a": [True], "b": [4]}, "a", "b")
    with pytest.raises(SteerlabError, match="must both be labels"):
        _label_ids({"a": [1], "b": [4]}, "a", "c")


# ----------------------------------------------------------------------------- paired effects


def test_paired_effect_is_the_mean_difference_with_a_paired_interval() -> None:
    rng = np.random.default_rng(0)
    before = rng.normal(size=200) * 5  # large spread between examples...
    after = before + 0.3 + rng.normal(size=200) * 0.05  # ...a small, consistent paired shift
    e = paired_effect(after, before)
    assert e.mean == pytest.approx(float(np.mean(after - before)))
    assert 0.28 < e.lo < e.mean < e.hi < 0.32  # pairing removes the between-example spread
    # NaN on either side drops the pair
    a, b = np.array([1.0, np.nan, 3.0]), np.array([0.0, 1.0, np.nan])
    assert paired_effect(a, b).mean == 1.0
    with pytest.raises(SteerlabError, match="differ in length"):
        paired_effect([1.0, 2.0], [1.0])


def test_signed_effect_flips_the_interval() -> None:
    assert PairedEffect(0.2, 0.1, 0.3).signed(-1.0) == PairedEffect(-0.2, -0.3, -0.1)


# ----------------------------------------------------------------------------- sign check


def planted(
    n: int = 40, shift: float = 1.0, seed: int = 0
) -> tuple[LogitScores, LogitScores, LogitScores, list[str]]:
    """Baseline, +α, -α scores where +α raises the vulnerable margin by ``shift`` (with noise),
    -α lowers it by as much; half the examples are vulnerable."""
    rng = np.random.default_rng(seed)
    base = rng.normal(size=n)
    noise = rng.normal(size=(2, n)) * 0.2
    labels = ["vulnerable" if i % 2 else "secure" for i in range(n)]
    return (
        scores(base),
        scores(base + shift + noise[0]),
        scores(base - shift + noise[1]),
        labels,
    )


@pytest.mark.parametrize("metric", ["p_target", "margin", "logp"])
def test_right_sign_is_ok_and_negated_vector_is_flipped(metric: str) -> None:
    base, plus, minus, labels = planted()
    ok = sign_check(base, plus, minus, labels, "vulnerable", "raise", metric=metric, alpha=4)
    assert ok.verdict == "ok" and not ok.flip_suggested
    assert ok.plus > ok.baseline > ok.minus
    assert ok.plus_effect.lo > 0 and ok.minus_effect.hi < 0 and ok.plus_vs_minus.lo > 0
    # the negated vector: +α now does what -α did
    flipped = sign_check(base, minus, plus, labels, "vulnerable", "raise", metric=metric)
    assert flipped.verdict == "flipped" and flipped.flip_suggested
    assert "--flip-sign" in flipped.message


def test_values_are_means_over_the_target_slice() -> None:
    base, plus, minus, labels = planted()
    c = sign_check(base, plus, minus, labels, "vulnerable", "raise")
    idx = [i for i, y in enumerate(labels) if y == "vulnerable"]
    assert c.n == len(idx) == 20 and c.on_label == "vulnerable"
    assert c.baseline == pytest.approx(float(sigmoid(base.margin.double().numpy()[idx]).mean()))
    assert c.plus == pytest.approx(float(sigmoid(plus.margin.double().numpy()[idx]).mean()))
    assert c.plus_effect.mean == pytest.approx(c.plus - c.baseline)
    assert c.plus_vs_minus.mean == pytest.approx(c.plus - c.minus)
    # the margin metric toward the negative label is the negated margin
    m = sign_check(base, plus, minus, labels, "secure", "lower", metric="margin")
    sidx = [i for i, y in enumerate(labels) if y == "secure"]
    assert m.baseline == pytest.approx(float(-base.margin.double().numpy()[sidx].mean()))


def test_target_and_direction_orient_the_verdict() -> None:
    base, plus, minus, labels = planted()
    # raising P(vulnerable) == lowering P(secure): same vector, same verdict
    c = sign_check(base, plus, minus, labels, "secure", "lower", on_label="vulnerable")
    assert c.verdict == "ok"
    # asking the vector to lower P(vulnerable) means its sign is backwards for that goal
    assert sign_check(base, plus, minus, labels, "vulnerable", "lower").verdict == "flipped"
    # evaluated on secure examples (on_label), the shift is the same
    c = sign_check(base, plus, minus, labels, "vulnerable", "raise", on_label="secure")
    assert c.verdict == "ok" and c.n == 20


def test_no_movement_is_inconclusive() -> None:
    base, _, _, labels = planted()
    c = sign_check(base, base, base, labels, "vulnerable", "raise")
    assert c.verdict == "inconclusive"
    assert c.plus_effect == PairedEffect(0.0, 0.0, 0.0)
    assert "Neither sign" in c.message


def test_noise_alone_is_inconclusive() -> None:
    base, _, _, labels = planted()
    rng = np.random.default_rng(1)
    b = base.margin.numpy()
    plus, minus = (
        scores(b + rng.normal(size=b.size) * 0.3),
        scores(b + rng.normal(size=b.size) * 0.3),
    )
    assert sign_check(base, plus, minus, labels, "vulnerable", "raise").verdict == "inconclusive"


def test_both_signs_moving_the_same_way_is_inconclusive() -> None:
    base, plus, _, labels = planted()
    c = sign_check(base, plus, plus, labels, "vulnerable", "raise")
    assert c.verdict == "inconclusive" and "Both signs" in c.message
    c = sign_check(base, plus, scores(base.margin.numpy() + 2.0), labels, "vulnerable", "raise")
    assert c.verdict == "inconclusive"  # -α raises it even more: not the vector's sign at work


def test_too_few_examples_is_inconclusive() -> None:
    base, plus, minus, labels = planted(n=8)  # 4 vulnerable
    c = sign_check(base, plus, minus, labels, "vulnerable", "raise")
    assert c.verdict == "inconclusive" and c.n == 4 and "only 4" in c.message
    assert sign_check(base, plus, minus, labels, "vulnerable", min_examples=4).verdict == "ok"
    c = sign_check(base, plus, minus, ["secure"] * 8, "vulnerable", "raise")
    assert c.verdict == "inconclusive" and c.n == 0 and math.isnan(c.baseline)


def test_min_effect_demands_a_larger_change() -> None:
    base, plus, minus, labels = planted(shift=0.3)
    loose = sign_check(base, plus, minus, labels, "vulnerable", metric="margin")
    strict = sign_check(base, plus, minus, labels, "vulnerable", metric="margin", min_effect=0.5)
    assert loose.verdict == "ok" and strict.verdict == "inconclusive"


def test_message_reports_the_numbers() -> None:
    base, plus, minus, labels = planted()
    c = sign_check(base, plus, minus, labels, "vulnerable", "raise", alpha=4.0)
    assert c.message.startswith("Sign check OK")
    for text in ("20 held-out", "'vulnerable'", "P(vulnerable)", "+α=4", "-α=4", "95% CI"):
        assert text in c.message
    assert f"{c.baseline:.3f}" in c.message and f"{c.plus:.3f}" in c.message
    d = c.as_dict()
    assert d["verdict"] == "ok" and d["plus_effect"]["mean"] == c.plus_effect.mean
    assert isinstance(c, SignCheck)


def test_sign_check_refuses_misaligned_inputs() -> None:
    base, plus, minus, labels = planted()
    with pytest.raises(SteerlabError, match="same held-out prompts"):
        sign_check(base, plus.select(range(10)), minus, labels, "vulnerable")
    with pytest.raises(SteerlabError, match="true labels"):
        sign_check(base, plus, minus, labels[:-1], "vulnerable")
    other = LogitScores(("secure", "vulnerable"), plus.logp, "vulnerable", "secure")
    with pytest.raises(SteerlabError, match="other labels"):
        sign_check(base, other, minus, labels, "vulnerable")
    with pytest.raises(SteerlabError, match="direction"):
        sign_check(base, plus, minus, labels, "vulnerable", "up")
    with pytest.raises(SteerlabError, match="metric"):
        sign_check(base, plus, minus, labels, "vulnerable", metric="accuracy")
    with pytest.raises(SteerlabError, match="neither"):
        sign_check(base, plus, minus, labels, "benign")


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("shift", [1.0, 0.2, 0.0, -0.3])
def test_negating_the_vector_mirrors_the_verdict(seed: int, shift: float) -> None:
    """Swapping +α and -α (the vector negated) turns ok into flipped and back, and leaves every
    inconclusive case inconclusive: a backwards vector passes once negated."""
    rng = np.random.default_rng(seed)
    n = 12
    base = rng.normal(size=n)
    common = rng.normal() * 0.5  # a sign-independent change (disruption)
    plus = scores(base + shift + common + rng.normal(size=n) * 0.3)
    minus = scores(base - shift + common + rng.normal(size=n) * 0.3)
    labels = ["vulnerable" if i % 2 else "secure" for i in range(n)]
    a = sign_check(scores(base), plus, minus, labels, "vulnerable", on_label=LABELS)
    b = sign_check(scores(base), minus, plus, labels, "vulnerable", on_label=LABELS)
    mirror = {"ok": "flipped", "flipped": "ok", "inconclusive": "inconclusive"}
    assert b.verdict == mirror[a.verdict]
    assert b.plus_vs_minus.lo == pytest.approx(-a.plus_vs_minus.hi)


def test_both_signs_moving_the_intended_way_is_not_ok() -> None:
    base, plus, _, labels = planted()
    also = scores(base.margin.numpy() + 0.5)  # -α raises P(vulnerable) too, less than +α
    c = sign_check(base, plus, also, labels, "vulnerable", "raise")
    assert c.verdict == "inconclusive" and "Both signs" in c.message


def test_a_slice_of_several_labels() -> None:
    base, plus, minus, labels = planted()
    c = sign_check(base, plus, minus, labels, "vulnerable", on_label=("vulnerable", "secure"))
    assert c.n == 40 and c.on_label == ("vulnerable", "secure") and c.verdict == "ok"
    assert "labeled 'vulnerable' or 'secure'" in c.message
    assert c.baseline == pytest.approx(float(sigmoid(base.margin.double().numpy()).mean()))
    with pytest.raises(SteerlabError, match="at least one label"):
        sign_check(base, plus, minus, labels, "vulnerable", on_label=())


def test_remedy_replaces_the_flip_advice() -> None:
    base, plus, minus, labels = planted()
    c = sign_check(base, minus, plus, labels, "vulnerable", remedy="Negate group B.")
    assert c.verdict == "flipped" and c.message.endswith("Negate group B.")
    assert "--flip-sign" not in c.message


# ----------------------------------------------------------------------------- generated answers


def answers(n: int, stating: int, label: str = "vulnerable") -> list[str]:
    """``n`` parsed answers, the first ``stating`` of which state ``label``."""
    return [label] * stating + ["uncertain"] * (n - stating)


def test_answer_sign_check_reads_the_rate_of_target_answers() -> None:
    labels = ["vulnerable"] * 10 + ["secure"] * 10
    base = answers(10, 3) + answers(10, 1)
    plus = answers(10, 9) + answers(10, 6)  # +α: many more "vulnerable" answers
    minus = ["secure"] * 10 + answers(10, 0)  # -α: none
    ok = answer_sign_check(base, plus, minus, labels, "vulnerable", "raise", alpha=2.0)
    assert ok.verdict == "ok" and ok.metric == "answer_rate" and ok.n == 10
    assert ok.baseline == 0.3 and ok.plus == 0.9 and ok.minus == 0.0
    assert "the rate of answers stating 'vulnerable' is 0.300 unsteered" in ok.message
    flipped = answer_sign_check(base, minus, plus, labels, "vulnerable", "raise")
    assert flipped.verdict == "flipped"
    # the whole slice: both labels
    both = answer_sign_check(
        base, plus, minus, labels, "vulnerable", on_label=("vulnerable", "secure")
    )
    assert both.n == 20 and both.plus == pytest.approx(15 / 20)
    # an uncertain or other answer is not the target
    none = answer_sign_check(base, base, base, labels, "vulnerable")
    assert none.verdict == "inconclusive" and none.plus_effect == PairedEffect(0.0, 0.0, 0.0)


def test_answer_sign_check_refuses_misaligned_answers() -> None:
    labels = ["vulnerable"] * 6
    a = answers(6, 2)
    with pytest.raises(SteerlabError, match="plus has 5 answers"):
        answer_sign_check(a, a[:5], a, labels, "vulnerable")
    with pytest.raises(SteerlabError, match="true labels"):
        answer_sign_check(a, a, a, labels[:-1], "vulnerable")
    with pytest.raises(SteerlabError, match="direction"):
        answer_sign_check(a, a, a, labels, "vulnerable", "up")
