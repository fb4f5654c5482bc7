"""Behaviour metrics for steered completions: pure functions of text, tokens and logprobs.

* :mod:`~steerlab.metrics.refusal`: rule-based refusal score with matched phrases.
* :mod:`~steerlab.metrics.helpfulness`: benign-helpfulness proxy.
* :mod:`~steerlab.metrics.confounds`: length, entropy, logprob, repetition, gibberish flags.
* :mod:`~steerlab.metrics.stats`: bootstrap confidence intervals.
"""

from __future__ import annotations

from steerlab.metrics.confounds import (
    ConfoundResult,
    GibberishConfig,
    completion_length,
    confound_metrics,
    distinct_n,
    gibberish_flags,
    mean_entropy,
    mean_logprob,
    repetition_rate,
    token_entropies,
)
from steerlab.metrics.helpfulness import (
    HelpfulnessConfig,
    HelpfulnessResult,
    helpfulness_score,
    structure_flags,
)
from steerlab.metrics.refusal import (
    DEFAULT_COMPLIANCE_MARKERS,
    DEFAULT_REFUSAL_MARKERS,
    RefusalConfig,
    RefusalResult,
    refusal_score,
)
from steerlab.metrics.stats import bootstrap_ci, bootstrap_diff_ci

__all__ = [
    "DEFAULT_COMPLIANCE_MARKERS",
    "DEFAULT_REFUSAL_MARKERS",
    "ConfoundResult",
    "GibberishConfig",
    "HelpfulnessConfig",
    "HelpfulnessResult",
    "RefusalConfig",
    "RefusalResult",
    "bootstrap_ci",
    "bootstrap_diff_ci",
    "completion_length",
    "confound_metrics",
    "distinct_n",
    "gibberish_flags",
    "helpfulness_score",
    "mean_entropy",
    "mean_logprob",
    "refusal_score",
    "repetition_rate",
    "structure_flags",
    "token_entropies",
]
