"""What one A/B item is for one model: the prompt scored (the question in the user turn, the
answer's opening ``(`` starting the assistant turn, as CAA applies the chat template), the two
answer tokens whose next-token log-probabilities are compared, the token sequences the vector is
read from, and the positions steered.

Token ids are concatenated, never re-tokenized across the turn boundary: the scored prompt is the
formatted question's ids followed by the opening's ids, and an answer token is the first token
that tokenizing ``opening + letter`` adds after the opening's own tokens (for a SentencePiece
tokenizer the letter after ``(`` is ``A``, not ``▁A``).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from steerlab.errors import SteerlabError
from steerlab.pipelines.behaviours.config import AFTER_INSTRUCTION, BASE
from steerlab.tasks.behaviours import ABItem, BehaviourData, OpenItem, load_behaviours

if TYPE_CHECKING:
    from steerlab.models import Model
    from steerlab.pipelines.behaviours.config import BehavioursConfig


@functools.lru_cache(maxsize=4)
def _data(ref: str, keep: tuple[str, ...] | None, test_fraction: float, seed: int) -> BehaviourData:
    return load_behaviours(ref, keep, test_fraction, seed)


def data_of(cfg: BehavioursConfig) -> BehaviourData:
    """The run's dataset (loaded once per process)."""
    keep = tuple(cfg.behaviours) if cfg.behaviours is not None else None
    return _data(cfg.data, keep, cfg.test_fraction, cfg.split_seed)


@dataclass(frozen=True)
class Scored:
    """One item under one condition, encoded: ``prompt`` ends where the answer's scored token
    comes next; ``matching`` / ``not_matching`` are those tokens; ``after`` is how many of the
    prompt's last tokens come after the instruction (the template's last token and the
    opening)."""

    prompt: tuple[int, ...]
    matching: int
    not_matching: int
    after: int


def _plain(model: Model, text: str) -> list[int]:
    ids = model.tokenizer(text, add_special_tokens=False, split_special_tokens=True)["input_ids"]
    return [int(i) for i in ids]


def continuation(model: Model, opening: str, text: str) -> tuple[list[int], list[int]]:
    """``(opening ids, ids that text adds after them)``; when the tokenizer merges the opening
    with the text (``(A`` one token), ``([], ids of opening + text)``: the merged token is then
    the one scored, read where the assistant's answer starts."""
    op = _plain(model, opening) if opening else []
    full = _plain(model, opening + text)
    if full[: len(op)] != op or len(full) == len(op):
        op = []
    rest = full[len(op) :]
    if not rest:
        raise SteerlabError(f"the answer {text!r} encodes to zero tokens")
    return op, rest


def _answers(model: Model, item: ABItem) -> tuple[list[int], list[int], list[int]]:
    """``(opening ids, matching ids, non-matching ids)`` after the formatted question, the two
    answers cut at the same opening (errors name the item)."""
    words_raw = not item.lettered and not (model.chat and model.has_chat_template)
    yes_text = item.answer_matching if words_raw else item.matching
    no_text = item.answer_not_matching if words_raw else item.not_matching
    try:
        op, yes = continuation(model, item.opening, yes_text)
        op_no, no = continuation(model, item.opening, no_text)
        if op != op_no:  # one answer merges with the opening: score both merged
            op, yes = continuation(model, "", item.opening + yes_text)
            _, no = continuation(model, "", item.opening + no_text)
    except SteerlabError as e:
        raise SteerlabError(f"{item.where}: {e}") from None
    return op, yes, no


def system_of(data: BehaviourData, item: ABItem | OpenItem, condition: str) -> str | None:
    info = data.info[item.behaviour]
    return {"system-toward": info.system_toward, "system-against": info.system_against}.get(
        condition
    )


def item_for(data: BehaviourData, item: ABItem, condition: str) -> ABItem:
    """The item as asked under ``condition`` (``swapped``: the options exchanged)."""
    if condition != "swapped":
        return item
    swapped = item.swapped()
    if swapped is None:
        raise SteerlabError(f"{item.where}: the answers cannot be swapped (no choice lines)")
    return swapped


def encode(model: Model, data: BehaviourData, item: ABItem, condition: str = BASE) -> Scored:
    """The scored prompt and answer tokens of ``item`` under ``condition``."""
    asked = item_for(data, item, condition)
    head = model.encode(
        model.format_prompt(asked.question, system=system_of(data, item, condition))
    )
    op, yes, no = _answers(model, asked)
    if yes[0] == no[0]:
        raise SteerlabError(
            f"{item.where}: the answers {asked.answer_matching!r} and "
            f"{asked.answer_not_matching!r} start with the same token under this model's "
            "tokenizer, so their probabilities cannot be told apart"
        )
    return Scored(tuple(head + op), yes[0], no[0], len(op) + 1)


def answer_sequences(model: Model, item: ABItem, read_position: str) -> tuple[list[int], list[int]]:
    """The two sequences a vector reads (the prompt followed by the matching / non-matching
    answer), each ending at the read position: the answer's scored token (``answer``) or the
    last token of the answer as written (``answer-end``, the ``)`` of ``(A)``)."""
    head = model.encode(model.format_prompt(item.question))
    op, yes, no = _answers(model, item)
    if read_position == "answer":
        return head + op + yes[:1], head + op + no[:1]
    if not item.lettered:  # a word answer ends where its own tokens end
        return head + op + yes, head + op + no
    out = []
    for scored, written in (
        (item.matching, item.answer_matching),
        (item.not_matching, item.answer_not_matching),
    ):
        rest = written.strip()[len(item.opening) + len(scored) :] if item.lettered else ""
        opening, text = (item.opening, scored) if op else ("", item.opening + scored)
        try:
            _, ids = continuation(model, opening, text + rest)
        except SteerlabError as e:
            raise SteerlabError(f"{item.where}: {e}") from None
        out.append(head + op + ids)
    return out[0], out[1]


def steer_window(positions: str, after: int) -> str:
    """The position mode interventions use: CAA's after-instruction window (``after`` tokens
    back from the prompt end, through every generated token) or the configured mode."""
    return f"window:-{after}:" if positions == AFTER_INSTRUCTION else positions


def open_prompt(model: Model, data: BehaviourData, item: OpenItem) -> tuple[str, int]:
    """An open-ended item's prompt and its after-instruction length (the template's last
    token: the answer starts with nothing given)."""
    return model.format_prompt(item.question), 1


def check_answers(model: Model, data: BehaviourData, conditions: Sequence[str]) -> None:
    """Encode every test item under every condition it is scored in, so a tokenizer that
    cannot tell two answers apart stops the run before anything is written."""
    for name in data.behaviours:
        for item in data.split(name, "test"):
            for condition in conditions:
                if condition == "swapped" and item.swapped() is None:
                    continue
                encode(model, data, item, condition)
        for item in data.split(name, "generate"):
            encode(model, data, item)
