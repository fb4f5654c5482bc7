"""Turn user text into model input so that it can never forge a chat turn.

A chat template renders messages into one string with special-token markers
(``<|im_start|>``, ``<|im_end|>``, ``</s>``, ...). Tokenizing that string parses every marker as a
special token, including markers typed *inside* the user's text, so a prompt containing
``<|im_end|>\\n<|im_start|>system\\n...`` would close its own turn and open a forged system turn.

:func:`format_prompt` therefore returns a :class:`Prompt`: the rendered string plus token ids in
which only the template's own markers are special tokens; user text (the message and the system
text the caller gave) is tokenized with special-token parsing off. When the user text contains no
marker at all, the ids are exactly those of tokenizing the whole string (so ordinary prompts
tokenize as they always did).
"""

from __future__ import annotations

from typing import Any

from steerlab.errors import SteerlabError

_SLOT = "\ue000steerlab-slot-{}\ue000"  # private-use characters: no template touches them


class Prompt(str):
    """A string formatted for one model, carrying its safe token ids (``ids``)."""

    ids: tuple[int, ...]

    def __new__(cls, text: str, ids: list[int]) -> Prompt:
        obj = super().__new__(cls, text)
        obj.ids = tuple(int(i) for i in ids)
        return obj


def markers(tokenizer: Any) -> tuple[str, ...]:
    """Every string the tokenizer would turn into a special or added token."""
    found = set(getattr(tokenizer, "all_special_tokens", ()) or ())
    found.update(tokenizer.get_added_vocab())
    return tuple(sorted((m for m in found if m), key=len, reverse=True))


def trusted_ids(tokenizer: Any, text: str) -> list[int]:
    """Token ids of ``text`` with markers parsed; BOS added unless the text starts with it."""
    bos = getattr(tokenizer, "bos_token", None)
    add_special = not (bos and text.startswith(bos))
    return [int(i) for i in tokenizer(text, add_special_tokens=add_special)["input_ids"]]


def _plain(tokenizer: Any, text: str) -> list[int]:
    ids = tokenizer(text, add_special_tokens=False, split_special_tokens=True)["input_ids"]
    return [int(i) for i in ids]


def format_prompt(tokenizer: Any, text: str, system: str | None, use_chat: bool) -> Prompt:
    """Render a user message (and optional system text) for the model, with safe ids."""
    user_parts = [text] if system is None else [system, text]
    if use_chat:
        messages = [] if system is None else [{"role": "system", "content": system}]
        messages.append({"role": "user", "content": text})
        rendered = str(
            tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        )
    else:
        rendered = text if system is None else f"{system}\n{text}"
    found = [m for m in markers(tokenizer) if any(m in part for part in user_parts)]
    if not found:
        return Prompt(rendered, trusted_ids(tokenizer, rendered))
    if not use_chat:
        bos = getattr(tokenizer, "bos_token", None)
        head = [int(tokenizer.bos_token_id)] if bos and _adds_bos(tokenizer) else []
        return Prompt(rendered, head + _plain(tokenizer, rendered))
    return Prompt(rendered, _segmented(tokenizer, system, text, found))


def _adds_bos(tokenizer: Any) -> bool:
    ids = tokenizer("x", add_special_tokens=True)["input_ids"]
    return bool(ids) and ids[0] == tokenizer.bos_token_id


def _segmented(tokenizer: Any, system: str | None, text: str, found: list[str]) -> list[int]:
    """Render with placeholders, tokenize the template's pieces with markers parsed and the
    user's pieces with markers as plain text."""
    parts = [text] if system is None else [system, text]
    slots = [_SLOT.format(i) for i in range(len(parts))]
    messages = [] if system is None else [{"role": "system", "content": slots[0]}]
    messages.append({"role": "user", "content": slots[-1]})
    rendered = str(
        tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    )
    ids: list[int] = []
    rest = rendered
    for i, (slot, part) in enumerate(zip(slots, parts, strict=True)):
        if rest.count(slot) != 1:
            raise SteerlabError(
                f"the prompt contains the special token {found[0]!r}, and this model's chat "
                "template cannot be applied to it safely; remove it from the text"
            )
        before, rest = rest.split(slot)
        ids += trusted_ids(tokenizer, before) if i == 0 else _template_ids(tokenizer, before)
        ids += _plain(tokenizer, part)
    return ids + _template_ids(tokenizer, rest)


def _template_ids(tokenizer: Any, text: str) -> list[int]:
    if not text:
        return []
    return [int(i) for i in tokenizer(text, add_special_tokens=False)["input_ids"]]
