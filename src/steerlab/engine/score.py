"""Score a classification prompt from one forward pass: the next-token log-probability of each
label's answer tokens, steered per row exactly as the decode engine steers the prompt.

For a prompt ending just before the answer (``"... Answer:"``), ``log P(label)`` is the
log-sum-exp of the next-token log-probabilities over the label's answer token ids (every
tokenization variant's first token: ``" yes"``, ``"yes"``, ``" Yes"``, ...). The margin
``log P(positive) - log P(negative)`` is the model's log-odds between the two answers, and
``sigmoid(margin)`` is ``P(positive | {positive, negative})``: the probability of the positive
answer among the two, whatever mass falls on other tokens.

Steering uses the engine's machinery unchanged: rows are left-padded, positions come from the
attention mask, each row's interventions compile into one
:class:`~steerlab.engine.plan.SteeringPlan` applied through a
:class:`~steerlab.engine.handle.SteeringHandle` by the one steered forward pass
(:func:`~steerlab.engine.forward.steered_forward`). Every fed token is a prompt token, so a position
mode selects what it selects during generation's prefill: ``all`` and ``prompt`` steer every prompt
token, ``last-prompt`` the last one (the one whose logits are read), ``window:S:E`` the prompt
tokens inside it. ``generated`` selects no prompt token; in this mode it would steer nothing, so it
is refused. The scores therefore equal the distribution of the first generated token under
:func:`steerlab.generate` with the same rows.

A grid scores each prompt under many settings; rows of one prompt whose steering differs only at
the last token (``last-prompt``), or the last few (``window:-3:``), compute the rest of the prompt
once and feed those tokens alone on a copy of its KV cache
(:mod:`steerlab.engine.score_prefix`), with the same scores. The
rows go through the model's runner (:meth:`~steerlab.engine.runner.Runner.score`).
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from steerlab.backends.base import Backend
from steerlab.engine.batch import check_interventions, left_pad
from steerlab.engine.forward import local_backend, steered_forward, steering_for
from steerlab.engine.generate import model_max_positions
from steerlab.engine.runner import runner_for
from steerlab.errors import SteerlabError
from steerlab.interventions import Intervention
from steerlab.models import Model
from steerlab.models.prompting import Prompt

RowInterventions = Sequence[tuple[Intervention, ...]]


@dataclass(frozen=True, eq=False)
class LogitScores:
    """Per-prompt answer log-probabilities.

    Attributes:
        labels: the label names, in the column order of ``logp``.
        logp: (N, L) float32 CPU; ``logp[i, j]`` = log P(label j) for prompt i, the log-sum-exp
            of the next-token log-probabilities over that label's answer token ids.
        positive, negative: the two labels the margin compares.
    """

    labels: tuple[str, ...]
    logp: torch.Tensor
    positive: str
    negative: str

    def __post_init__(self) -> None:
        if self.logp.ndim != 2 or self.logp.shape[1] != len(self.labels):
            raise SteerlabError(
                f"logp must be (N, {len(self.labels)}) for labels {self.labels}, "
                f"got {tuple(self.logp.shape)}"
            )
        if len(set(self.labels)) != len(self.labels):
            raise SteerlabError(f"labels must be distinct, got {self.labels}")
        for name in (self.positive, self.negative):
            if name not in self.labels:
                raise SteerlabError(f"label {name!r} is not one of {self.labels}")
        if self.positive == self.negative:
            raise SteerlabError("the positive and negative labels must differ")

    def __len__(self) -> int:
        return int(self.logp.shape[0])

    def log_prob(self, label: str) -> torch.Tensor:
        """(N,) log P(label): the mass on the label's answer tokens."""
        if label not in self.labels:
            raise SteerlabError(f"label {label!r} is not one of {self.labels}")
        return self.logp[:, self.labels.index(label)]

    @property
    def margin(self) -> torch.Tensor:
        """(N,) log P(positive) - log P(negative): log-odds of the positive answer."""
        return self.log_prob(self.positive) - self.log_prob(self.negative)

    @property
    def p_positive(self) -> torch.Tensor:
        """(N,) P(positive | {positive, negative}) = sigmoid(margin)."""
        return torch.sigmoid(self.margin)

    def margin_toward(self, label: str) -> torch.Tensor:
        """(N,) the margin oriented toward ``label`` (the positive or the negative label)."""
        if label == self.positive:
            return self.margin
        if label == self.negative:
            return -self.margin
        raise SteerlabError(
            f"label {label!r} is neither the positive ({self.positive!r}) nor the negative "
            f"({self.negative!r}) label"
        )

    def p_label(self, label: str) -> torch.Tensor:
        """(N,) P(label | {positive, negative}) for ``label`` one of the two."""
        return torch.sigmoid(self.margin_toward(label))

    def select(self, idx: Sequence[int] | torch.Tensor) -> LogitScores:
        """The scores of rows ``idx`` only (e.g. one group or one split)."""
        index = torch.as_tensor(idx, dtype=torch.long)
        return LogitScores(
            self.labels, self.logp.index_select(0, index), self.positive, self.negative
        )


def answer_margins(
    model: Model,
    prompts: Sequence[str],
    label_token_ids: Mapping[str, Sequence[int]],
    positive: str,
    negative: str,
    interventions: RowInterventions | None = None,
    batch_size: int = 16,
    progress: bool = False,
    on_rows: Callable[[int], object] | None = None,
    *,
    share_prefix: bool = True,
    stats: dict[str, int] | None = None,
) -> LogitScores:
    """log P(label) for every label and prompt, from steered forward passes in batches.

    ``prompts`` are the exact texts to feed (format them first), ending where the answer token
    comes next. ``label_token_ids`` maps each label to its answer token ids (duplicates are
    ignored; labels may not share an id). ``interventions[i]`` steers prompt ``i`` (see the
    module docstring for positions; ``generated`` is refused). Memory per batch is one
    (batch, vocab) row of logits; only (N, labels) is kept.

    ``share_prefix``: rows with the same prompt whose steering leaves everything but the last
    token or last few tokens alike (``last-prompt`` or ``window:-3:`` grids) compute that prefix
    once (see
    :mod:`steerlab.engine.score_prefix`); the scores are the same either way. ``stats``, when
    given, is filled with counts of the work done (``prompt_tokens``, ``prompt_tokens_computed``,
    ``positions_run``, ``forwards``, ``shared_prefixes``, ``shared_rows``).
    """
    labels = tuple(label_token_ids)
    id_lists = _label_ids(label_token_ids, positive, negative)
    out = torch.empty(len(prompts), len(labels), dtype=torch.float32)
    index: list[torch.Tensor] | None = None
    for idx, logp in _next_token_batches(
        model, prompts, interventions, batch_size, progress, on_rows, share_prefix, stats
    ):
        if index is None:
            _check_vocab(id_lists, labels, int(logp.shape[-1]))
            index = [torch.tensor(ids, dtype=torch.long, device=logp.device) for ids in id_lists]
        rows = torch.tensor(idx, dtype=torch.long)
        cols = [logp.index_select(-1, ids).logsumexp(-1) for ids in index]  # L x (b,)
        out[rows] = torch.stack(cols, dim=-1).cpu()  # (b, L)
    return LogitScores(labels, out, positive, negative)


def next_token_logprobs(
    model: Model,
    prompts: Sequence[str],
    interventions: RowInterventions | None = None,
    batch_size: int = 16,
    progress: bool = False,
    on_rows: Callable[[int], object] | None = None,
    *,
    share_prefix: bool = True,
    stats: dict[str, int] | None = None,
) -> torch.Tensor:
    """(N, vocab) float32 CPU next-token log-probabilities, steered per row.

    Holds N x vocab floats (about 0.6 GB for 1,000 prompts at a 150k vocabulary): prefer
    :func:`answer_margins`, which keeps only the labels' columns. ``share_prefix`` and
    ``stats`` as in :func:`answer_margins`.
    """
    out: torch.Tensor | None = None
    for idx, logp in _next_token_batches(
        model, prompts, interventions, batch_size, progress, on_rows, share_prefix, stats
    ):
        if out is None:
            out = torch.empty(len(prompts), logp.shape[-1], dtype=torch.float32)
        out[torch.tensor(idx, dtype=torch.long)] = logp.cpu()
    assert out is not None  # at least one prompt (checked)
    return out


def steered_logprobs(
    model: Model,
    sequences: Sequence[Sequence[int]],
    interventions: Sequence[Sequence[Intervention]],
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Next-token log-probabilities (B, V) float32 after each token sequence, row ``r`` steered
    by ``interventions[r]`` (at every position its windows select), all rows in one forward
    pass; with a (B,) bool flag of rows whose steered residual left the float range (None when
    nothing is steered). Nothing is checked: the caller names what went wrong. Every hook is
    removed on return, also on exceptions."""
    if not isinstance(model.backend, Backend):  # an engine of its own (vLLM)
        return runner_for(model).steered_logprobs(sequences, interventions)
    ids, mask = left_pad(sequences, model.pad_token_id, model.device)  # (B, W)
    handle = steering_for(model, interventions, mask.sum(-1))
    with torch.inference_mode():
        logits = steered_forward(local_backend(model), ids, mask, steer=handle)
    assert logits is not None  # (B, V) float32
    overflow = handle.overflow if handle is not None else None
    return torch.log_softmax(logits, dim=-1), overflow


# ----------------------------------------------------------------------------- the batch loop


def _next_token_batches(
    model: Model,
    prompts: Sequence[str],
    interventions: RowInterventions | None,
    batch_size: int,
    progress: bool,
    on_rows: Callable[[int], object] | None,
    share_prefix: bool,
    stats: dict[str, int] | None,
) -> Iterator[tuple[list[int], torch.Tensor]]:
    """Yield ``(indices, logp)``: the prompts of one batch and their (b, V) float32 next-token
    log-probabilities on the model's device (the forward passes are in
    :mod:`steerlab.engine.score_prefix`)."""
    if batch_size < 1:
        raise SteerlabError("batch_size must be at least 1")
    if not prompts:
        raise SteerlabError("no prompts to score")
    ivs = _per_row(interventions, len(prompts))
    check_interventions(model, ivs, "prompt", scoring=True)
    encoded = _encode(model, prompts)
    max_positions = model_max_positions(model)
    for i, toks in enumerate(encoded):
        if not toks:
            raise SteerlabError(f"prompt {i} encodes to zero tokens")
        if max_positions is not None and len(toks) > max_positions:
            raise SteerlabError(
                f"prompt {i}: {len(toks)} tokens > the model's {max_positions} positions"
            )
    bar = tqdm(total=len(prompts), desc="score", unit="prompt", disable=not progress)
    try:
        for idx, logp in runner_for(model).score(
            encoded, ivs, batch_size, share_prefix=share_prefix, stats=stats
        ):
            yield idx, logp
            bar.update(len(idx))
            if on_rows is not None:
                on_rows(len(idx))
    finally:
        bar.close()


def _encode(model: Model, prompts: Sequence[str]) -> list[list[int]]:
    """Each prompt's tokens; a grid repeats each prompt for many rows, so each distinct prompt is
    tokenized once (rows of one prompt share the list, which the forward passes only read). A
    formatted :class:`~steerlab.models.prompting.Prompt` carries its own ids, which may differ from
    those of the same text given plainly, so the two are told apart."""
    seen: dict[tuple[str, tuple[int, ...] | None], list[int]] = {}
    out = []
    for p in prompts:
        key = (str(p), p.ids if isinstance(p, Prompt) else None)
        toks = seen.get(key)
        if toks is None:
            toks = seen[key] = list(model.encode(p))
        out.append(toks)
    return out


def _per_row(interventions: RowInterventions | None, n: int) -> list[tuple[Intervention, ...]]:
    if interventions is None:
        return [()] * n
    if len(interventions) != n:
        raise SteerlabError(
            f"interventions cover {len(interventions)} prompts, but {n} prompts were given"
        )
    return [tuple(ivs) for ivs in interventions]


def _label_ids(
    label_token_ids: Mapping[str, Sequence[int]], positive: str, negative: str
) -> list[list[int]]:
    """Each label's distinct ids, checked: non-empty, integers >= 0, no id shared by two labels
    (a shared id would count toward both sides of the margin)."""
    if positive not in label_token_ids or negative not in label_token_ids:
        raise SteerlabError(
            f"positive {positive!r} and negative {negative!r} must both be labels of "
            f"label_token_ids (it has {list(label_token_ids)})"
        )
    if positive == negative:
        raise SteerlabError("the positive and negative labels must differ")
    owner: dict[int, str] = {}
    out = []
    for label, ids in label_token_ids.items():
        try:
            if any(isinstance(t, bool) or operator.index(t) < 0 for t in ids):
                raise TypeError
        except TypeError:
            raise SteerlabError(
                f"label {label!r}: token ids must be integers >= 0, got {list(ids)!r:.200}"
            ) from None
        distinct = sorted({operator.index(t) for t in ids})
        if not distinct:
            raise SteerlabError(f"label {label!r} has no answer token ids")
        for t in distinct:
            if t in owner:
                raise SteerlabError(
                    f"token id {t} is an answer token of both {owner[t]!r} and {label!r}: the "
                    "labels' answer words must start with different tokens"
                )
            owner[t] = label
        out.append(distinct)
    return out


def _check_vocab(id_lists: Sequence[Sequence[int]], labels: Sequence[str], vocab: int) -> None:
    for label, ids in zip(labels, id_lists, strict=True):
        if ids[-1] >= vocab:
            raise SteerlabError(
                f"label {label!r}: token id {ids[-1]} is outside the model's vocabulary "
                f"({vocab} logits); were the ids made with another tokenizer?"
            )
