"""Classification steering: score answers from next-token logits, check a vector's sign, and
build labeled mean-difference vectors per group.

- :func:`answer_margins`: log P(label) per prompt from one steered forward pass per batch, the
  margin ``log P(positive) - log P(negative)`` and ``P(positive | {positive, negative})``;
- :func:`sign_check`: does positive strength move the target metric the intended way on held-out
  data (``ok``), the opposite way (``flipped``: the vector's sign is backwards), or neither;
  :func:`answer_sign_check` asks the same of parsed generated answers;
- :func:`group_vectors`: ``mean(positive) - mean(negative)`` per group and pooled, streamed in
  batches (memory does not grow with the number of examples).

This package takes plain prompts, labels and token ids; it does not depend on the task layer.
"""

from __future__ import annotations

from steerlab.classify.logits import LogitScores, answer_margins, next_token_logprobs
from steerlab.classify.signcheck import (
    ANSWER_METRIC,
    DIRECTIONS,
    METRICS,
    VERDICTS,
    PairedEffect,
    SignCheck,
    answer_sign_check,
    paired_effect,
    sign_check,
)
from steerlab.classify.vectors import SIGN, GroupVectors, group_vectors

__all__ = [
    "ANSWER_METRIC",
    "DIRECTIONS",
    "METRICS",
    "SIGN",
    "VERDICTS",
    "GroupVectors",
    "LogitScores",
    "PairedEffect",
    "SignCheck",
    "answer_margins",
    "answer_sign_check",
    "group_vectors",
    "next_token_logprobs",
    "paired_effect",
    "sign_check",
]
