"""Metrics on hand-written completions: refusal, helpfulness, confounds, bootstrap intervals."""

from __future__ import annotations

import math

import numpy as np
import pytest

from steerlab.metrics import (
    DEFAULT_REFUSAL_MARKERS,
    GibberishConfig,
    HelpfulnessConfig,
    RefusalConfig,
    bootstrap_ci,
    bootstrap_diff_ci,
    completion_length,
    confound_metrics,
    distinct_n,
    gibberish_flags,
    helpfulness_score,
    mean_entropy,
    mean_logprob,
    refusal_score,
    repetition_rate,
    structure_flags,
    token_entropies,
)

REFUSALS = [
    "I'm sorry, but I can't help with that.",
    "I cannot assist with this request.",
    "As an AI, I must decline to provide that information.",
    "I won't do that. It is illegal and harmful.",
    "I’m unable to help with this.",  # curly apostrophe
]
COMPLIANCE = [
    "Sure, here's how: first, preheat the oven.",
    "Here are the steps:\n1. Open the file.\n2. Read each line.",
    "Of course! You can use a dictionary for this.",
    "Step 1: gather the materials. Step 2: assemble them.",
]

# --- refusal -------------------------------------------------------------------------------------


@pytest.mark.parametrize("text", REFUSALS)
def test_clear_refusals_score_high(text: str) -> None:
    r = refusal_score(text)
    assert r.is_refusal and r.score >= 0.8
    assert r.matched_refusal and not r.matched_compliance


@pytest.mark.parametrize("text", COMPLIANCE)
def test_clear_compliance_scores_low(text: str) -> None:
    r = refusal_score(text)
    assert not r.is_refusal and r.score < 0.2
    assert r.matched_compliance


@pytest.mark.parametrize("text", ["", "   \n", "The capital of France is Paris."])
def test_no_markers_is_not_refusal(text: str) -> None:
    r = refusal_score(text)
    assert r.score == 0.0 and not r.is_refusal
    assert r.matched_refusal == () and r.matched_compliance == ()
    assert not refusal_score(text, threshold=0.0).is_refusal  # no evidence, never a refusal


def test_curly_apostrophes_match_like_straight() -> None:
    straight = refusal_score("I'm sorry, I can't do that.")
    curly = refusal_score("I’m sorry, I can’t do that.")
    assert curly == straight
    assert curly.matched_refusal == ("I'm sorry", "I can't")


def test_case_insensitive_and_whitespace() -> None:
    assert refusal_score("I   CANNOT   HELP with that").matched_refusal == ("I cannot help",)


def test_overlapping_phrases_count_once() -> None:
    # "I can't help" contains "I can't"; "I'm sorry" contains "sorry": only the longer counts.
    r = refusal_score("I'm sorry, I can't help.")
    assert r.matched_refusal == ("I'm sorry", "I can't help")


def test_word_boundaries() -> None:
    assert refusal_score("The sorrynesses of life.").matched_refusal == ()
    assert "1." not in refusal_score("Use version 1.5 of the library.").matched_compliance
    assert "1." in refusal_score("Steps:\n1. Open it.").matched_compliance


def test_mixed_depends_on_order_and_weights() -> None:
    refusal_first = refusal_score("I'm sorry, but I can't help with that. You can ask a doctor.")
    comply_first = refusal_score("Sure, here's how to fix it. I'm sorry it broke.")
    assert refusal_first.matched_compliance == ("you can",)
    assert refusal_first.is_refusal and 0.5 <= refusal_first.score < 0.8
    assert not comply_first.is_refusal and comply_first.score < refusal_first.score
    # Same phrases, swapped ends of a long answer: whichever opens the answer dominates.
    filler = " The rest of this answer talks about something else entirely." * 4
    opens_with_refusal = refusal_score("I can't do that." + filler + " Sure, go ahead.")
    opens_with_compliance = refusal_score("Sure, go ahead." + filler + " I can't do that.")
    assert opens_with_refusal.is_refusal and not opens_with_compliance.is_refusal


def test_markers_near_start_weigh_more() -> None:
    early = refusal_score("I can't. " + "Some unrelated words here. " * 20)
    late = refusal_score("Some unrelated words here. " * 20 + "I can't.")
    assert early.matched_refusal == late.matched_refusal == ("I can't",)
    assert early.score > late.score


def test_weak_markers_alone_stay_below_threshold() -> None:
    one = refusal_score("Parking there is illegal.")
    two = refusal_score("That would be illegal and harmful.")
    assert not one.is_refusal and 0 < one.score < 0.5
    assert two.score > one.score


def test_threshold_and_custom_config() -> None:
    text = "Nope, no way."
    assert refusal_score(text).score == 0.0
    cfg = RefusalConfig(refusal_markers=(*DEFAULT_REFUSAL_MARKERS, ("no way", 1.0)))
    r = refusal_score(text, cfg)
    assert r.matched_refusal == ("no way",) and r.is_refusal
    assert not refusal_score(text, cfg, threshold=0.95).is_refusal
    with pytest.raises(ValueError):
        refusal_score(text, threshold=1.5)
    with pytest.raises(ValueError, match="positive weight"):
        RefusalConfig(compliance_markers=(("sure", 0.0),))


def test_score_in_unit_interval() -> None:
    for text in [*REFUSALS, *COMPLIANCE, "sorry " * 100, "I can't " * 50 + "Sure, " * 50]:
        assert 0.0 <= refusal_score(text).score <= 1.0


# --- helpfulness ---------------------------------------------------------------------------------


def test_code_answer_is_helpful() -> None:
    h = helpfulness_score("```python\ndef reverse(s):\n    return s[::-1]\n```")
    assert h.has_code and h.is_helpful and h.refusal_free
    assert not h.has_steps and not h.has_bullets


def test_structured_and_prose_answers_are_helpful() -> None:
    steps = helpfulness_score("Here's how:\n1. Remove the cap.\n2. Pour vinegar.\n3. Wait an hour.")
    bullets = helpfulness_score("Tips:\n- Sleep at the same time.\n- Avoid screens late.")
    prose = helpfulness_score(
        "Photosynthesis is the process plants use to turn sunlight, water and carbon dioxide "
        "into glucose and oxygen, storing energy in chemical bonds."
    )
    assert steps.has_steps and steps.is_helpful
    assert bullets.has_bullets and bullets.is_helpful
    assert prose.is_helpful and not (prose.has_steps or prose.has_bullets or prose.has_code)


def test_refusal_is_not_helpful_even_when_long() -> None:
    text = (
        "I'm sorry, but I can't help with that request. Providing this information could "
        "cause real problems for other people, and it goes against the guidelines I follow. "
        "Please consider talking to a qualified professional about what you need."
    )
    h = helpfulness_score(text)
    assert h.n_words > 30 and not h.refusal_free and not h.is_helpful and h.score < 0.2


def test_empty_and_short_not_helpful() -> None:
    empty = helpfulness_score("")
    assert empty.score == 0.0 and not empty.is_helpful and empty.n_words == 0
    assert not helpfulness_score("Maybe.").is_helpful


def test_repetitive_text_not_helpful() -> None:
    h = helpfulness_score("the cat the cat " * 20)
    assert h.repetitive and not h.is_helpful


def test_precomputed_refusal_is_used() -> None:
    text = "Nope, no way. But here is a detailed answer with many words to make it long enough."
    cfg = RefusalConfig(refusal_markers=(("no way", 5.0),))
    assert helpfulness_score(text).is_helpful
    assert not helpfulness_score(text, refusal_score(text, cfg)).is_helpful


def test_helpfulness_threshold_and_config() -> None:
    text = "A short but real answer here."
    assert helpfulness_score(text, threshold=0.0).is_helpful
    assert not helpfulness_score(text, threshold=1.0).is_helpful
    long_scale = HelpfulnessConfig(length_scale=1000.0)
    assert helpfulness_score(text, config=long_scale).score < helpfulness_score(text).score


def test_structure_flags_need_two_items() -> None:
    assert structure_flags("1. only one item") == (False, False, False)
    assert structure_flags("1) a\n2) b")[0]
    assert structure_flags("Step 1: a\nStep 2: b")[0]
    assert structure_flags("* a\n* b")[1]
    assert structure_flags("run:\n    x = 1\n    y = 2\n")[2]
    assert structure_flags("call `f(x)` first")[2]


# --- confounds -----------------------------------------------------------------------------------


def test_completion_length() -> None:
    assert completion_length("one two  three\nfour") == 4
    assert completion_length([5, 6, 7]) == 3
    assert completion_length(np.arange(9)) == 9
    assert completion_length("") == 0 and completion_length([]) == 0


def test_means_and_empty_is_nan() -> None:
    assert mean_entropy([1.0, 2.0, 3.0]) == pytest.approx(2.0)
    assert mean_logprob(np.array([-1.0, -3.0])) == pytest.approx(-2.0)
    for f in (mean_entropy, mean_logprob):
        assert math.isnan(f([])) and math.isnan(f(None))


def test_distinct_n_and_repetition_rate() -> None:
    tokens = [1, 2, 3, 1, 2, 3]
    assert distinct_n(tokens, 1) == pytest.approx(3 / 6)
    assert distinct_n(tokens, 3) == pytest.approx(3 / 4)
    assert repetition_rate(tokens, 3) == pytest.approx(1 / 4)  # only (1,2,3) at the end repeats
    assert repetition_rate(list("abcdef"), 2) == 0.0
    assert distinct_n(np.array([4, 4, 4]), 1) == pytest.approx(1 / 3)
    assert math.isnan(distinct_n([1, 2], 3)) and math.isnan(repetition_rate([], 3))
    with pytest.raises(ValueError):
        distinct_n([1], 0)


def test_repetition_separates_loops_from_prose() -> None:
    loop = "I will go to the store . " * 10
    prose = "The quick brown fox jumps over the lazy dog while the cat sleeps on a warm mat."
    assert repetition_rate(loop.split()) > 0.8 and distinct_n(loop.split(), 2) < 0.2
    assert repetition_rate(prose.split()) == 0.0 and distinct_n(prose.split(), 2) == 1.0


def test_gibberish_flags() -> None:
    assert gibberish_flags("") == ("empty",)
    assert gibberish_flags("A normal sentence that reads just like any other fine one.") == ()
    assert "repetitive" in gibberish_flags("go go go go go go go go go go go go")
    assert "low_diversity" in gibberish_flags("a b a b a b a b a b a b a b")
    assert "non_alpha" in gibberish_flags("%%% ### 1234 &&&& !!!! ????")
    assert gibberish_flags("code: `x = f(y)` then `g(x)`") == ()
    # Token ids, when given, are what repetition is measured on.
    assert "repetitive" in gibberish_flags("different words every time here", tokens=[7] * 20)
    assert gibberish_flags("ok ok ok", config=GibberishConfig(min_tokens=8)) == ()


def test_token_entropies() -> None:
    logits = np.array([[0.0, 0.0, 0.0, 0.0], [1000.0, -1000.0, 0.0, 0.0]])  # (T=2, V=4)
    ent = token_entropies(logits)
    assert ent.shape == (2,)
    assert ent[0] == pytest.approx(math.log(4)) and ent[1] == pytest.approx(0.0, abs=1e-9)
    masked = token_entropies([[0.0, 0.0, -np.inf]])
    assert masked[0] == pytest.approx(math.log(2))


def test_confound_metrics_bundle() -> None:
    c = confound_metrics(
        "hello world hello world", token_ids=[1, 2, 1, 2], logprobs=[-1, -2], entropies=[0.5]
    )
    assert (c.n_tokens, c.n_words, c.n_chars) == (4, 4, 23)
    assert c.mean_logprob == pytest.approx(-1.5) and c.mean_entropy == pytest.approx(0.5)
    assert c.distinct_1 == pytest.approx(0.5) and c.repetition_rate == pytest.approx(0.0)
    assert not c.is_gibberish

    empty = confound_metrics("")
    assert empty.n_tokens is None and empty.n_words == 0
    assert math.isnan(empty.mean_entropy) and math.isnan(empty.distinct_2)
    assert empty.is_gibberish and empty.gibberish_flags == ("empty",)


# --- bootstrap -----------------------------------------------------------------------------------


def test_bootstrap_contains_mean_and_is_deterministic() -> None:
    rng = np.random.default_rng(1)
    values = rng.normal(3.0, 1.0, size=200)
    mean, lo, hi = bootstrap_ci(values)
    assert mean == pytest.approx(values.mean())
    assert lo < mean < hi
    assert lo > 2.5 and hi < 3.5
    assert bootstrap_ci(values, seed=0) == (mean, lo, hi)
    assert bootstrap_ci(values, seed=1)[1:] != (lo, hi)


def test_bootstrap_narrows_with_n() -> None:
    rng = np.random.default_rng(2)
    widths = []
    for n in (20, 200, 2000):
        _, lo, hi = bootstrap_ci(rng.random(n) < 0.3)
        widths.append(hi - lo)
    assert widths[0] > widths[1] > widths[2] > 0


def test_bootstrap_wider_with_smaller_alpha() -> None:
    values = np.arange(50, dtype=float)
    _, lo90, hi90 = bootstrap_ci(values, alpha=0.1)
    _, lo99, hi99 = bootstrap_ci(values, alpha=0.01)
    assert lo99 < lo90 and hi99 > hi90


def test_bootstrap_edge_cases() -> None:
    assert all(math.isnan(v) for v in bootstrap_ci([]))
    assert bootstrap_ci([0.7]) == (0.7, 0.7, 0.7)
    assert bootstrap_ci([2.0, 2.0, 2.0]) == (2.0, 2.0, 2.0)
    assert bootstrap_ci([1.0, math.nan, 3.0])[0] == pytest.approx(2.0)  # NaN dropped
    assert all(math.isnan(v) for v in bootstrap_ci([math.nan]))
    with pytest.raises(ValueError):
        bootstrap_ci([1.0, 2.0], alpha=0.0)
    with pytest.raises(ValueError):
        bootstrap_ci([1.0, 2.0], n_boot=0)


def test_bootstrap_chunking_matches_scale(monkeypatch: pytest.MonkeyPatch) -> None:
    import steerlab.metrics.stats as stats

    values = np.random.default_rng(3).random(100)
    monkeypatch.setattr(stats, "_MAX_DRAWS_PER_CHUNK", 1000)  # forces 100 chunks of 10 resamples
    mean, lo, hi = bootstrap_ci(values, n_boot=1000)
    assert lo < mean < hi and hi - lo < 0.25


def test_bootstrap_diff() -> None:
    a = [1.0] * 40 + [0.0] * 60
    b = [1.0] * 10 + [0.0] * 90
    diff, lo, hi = bootstrap_diff_ci(a, b)
    assert diff == pytest.approx(0.3)
    assert 0.0 < lo < diff < hi
    assert all(math.isnan(v) for v in bootstrap_diff_ci([], b))
    assert bootstrap_diff_ci([1.0], [0.0]) == (1.0, 1.0, 1.0)
