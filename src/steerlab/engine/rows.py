"""What goes into the engine and what comes out: rows, decoding settings, requests and results.

A :class:`Row` is one generation request as the user writes it (the exact text to feed, its
interventions, its seed). The front door (:func:`steerlab.engine.generate.generate`) checks the
rows against the model and encodes them once into :class:`Request` objects, which is what a
runner receives; a runner returns one :class:`RowResult` per request.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from steerlab.errors import SteerlabError
from steerlab.interventions import Intervention


@dataclass(frozen=True)
class GenerationConfig:
    """Decoding settings shared by all rows. ``temperature == 0`` means greedy."""

    max_new_tokens: int = 64
    temperature: float = 0.0
    top_p: float = 1.0
    batch_size: int = 32
    use_cache: bool = True
    stop_at_eos: bool = True
    #: keep the batch full (finished rows replaced by waiting ones); False: fixed batches
    continuous: bool = True
    #: compute the prompt prefix all rows share once per distinct steering of it
    share_prefix: bool = True

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise SteerlabError("max_new_tokens must be at least 1")
        if not math.isfinite(self.temperature) or self.temperature < 0:
            raise SteerlabError("temperature must be a finite number >= 0 (0 = greedy)")
        if not math.isfinite(self.top_p) or not 0 < self.top_p <= 1:
            raise SteerlabError("top_p must be in (0, 1]")
        if self.batch_size < 1:
            raise SteerlabError("batch_size must be at least 1")


@dataclass(frozen=True)
class Row:
    """One generation request: the exact text to feed (format it first), steering, seed."""

    prompt: str
    interventions: tuple[Intervention, ...] = ()
    seed: int = 0
    max_new_tokens: int | None = None


@dataclass(frozen=True)
class RowResult:
    """What one row produced. ``logprobs``/``entropies`` align with ``token_ids`` (EOS excluded)."""

    text: str
    token_ids: tuple[int, ...]
    logprobs: tuple[float, ...]
    entropies: tuple[float, ...]
    finish_reason: str  # "eos" | "length"
    prompt_tokens: int


@dataclass(frozen=True, eq=False)
class Request:
    """A row as a runner receives it: checked against the model and encoded.

    ``ids`` the prompt's token ids (non-empty; requests of one prompt may share the list, which
    runners only read); ``max_new_tokens`` the row's own budget, resolved from the config.
    """

    ids: Sequence[int]
    interventions: tuple[Intervention, ...]
    seed: int
    max_new_tokens: int


#: ``on_finish(indices, results)``: requests ``indices`` finished with ``results``
OnFinish = Callable[[list[int], list[RowResult]], None]

# what ``torch.Generator.manual_seed`` accepts
SEED_MIN, SEED_MAX = -(2**63), 2**64 - 1


@dataclass
class Track:
    """A row's tokens so far, with their log-probabilities and entropies."""

    ids: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    entropies: list[float] = field(default_factory=list)
    reason: str = "length"


def record(
    tracks: Sequence[Track],
    rows: Sequence[int],
    tok: torch.Tensor,
    logprob: torch.Tensor,
    entropy: torch.Tensor,
    is_eos: torch.Tensor,
    alive: torch.Tensor,
) -> None:
    """Append each live batch row's token (or note its EOS) to ``tracks[rows[i]]``."""
    for r, t, lp, en, e, keep in zip(
        rows,
        tok.tolist(),
        logprob.tolist(),
        entropy.tolist(),
        is_eos.tolist(),
        alive.tolist(),
        strict=True,
    ):
        if not keep:
            continue
        tr = tracks[r]
        if e:
            tr.reason = "eos"
        else:
            tr.ids.append(t)
            tr.logprobs.append(lp)
            tr.entropies.append(en)


def result(decode: Callable[[list[int]], str], tr: Track, n_prompt: int) -> RowResult:
    """The :class:`RowResult` of a finished track."""
    return RowResult(
        text=decode(tr.ids),
        token_ids=tuple(tr.ids),
        logprobs=tuple(tr.logprobs),
        entropies=tuple(tr.entropies),
        finish_reason=tr.reason,
        prompt_tokens=n_prompt,
    )
