"""The schema of a classification task's YAML config (see :mod:`steerlab.tasks.classification`
for the file format): the config model, its checks, and the one-sentence errors naming the file
and key.

:func:`norm_word` is how answer words are compared, here (no word may state two labels) and when
:func:`steerlab.tasks.answers.parse_answer` reads an answer.
"""

from __future__ import annotations

import string
from typing import Any, Literal

from pydantic import Field, StrictBool, StrictInt, StrictStr, ValidationError, model_validator

from steerlab._util.strict import Strict
from steerlab.errors import SteerlabError

__all__ = [
    "BUILD_SPLIT",
    "EVAL_SPLIT",
    "AnswerParser",
    "ClassificationTaskError",
    "Intended",
    "TaskConfig",
    "format_error",
    "norm_word",
    "parse_config",
]

#: The default split names: examples vectors are built from, and held-out examples.
BUILD_SPLIT = "build"
EVAL_SPLIT = "eval"
#: The fields a prompt template may name.
TEMPLATE_FIELDS: frozenset[str] = frozenset({"text", "group", "group_name"})

DEFAULT_NEGATIONS: tuple[str, ...] = ("not", "n't", "never", "no", "cannot", "hardly")
DEFAULT_HEDGES: tuple[str, ...] = (
    "not sure",
    "unsure",
    "uncertain",
    "unclear",
    "cannot determine",
    "can't determine",
    "cannot tell",
    "can't tell",
    "hard to say",
    "difficult to say",
    "impossible to say",
    "it depends",
    "not enough information",
    "insufficient information",
)
DEFAULT_CONDITIONALS: tuple[str, ...] = ("whether", "if")


class ClassificationTaskError(SteerlabError):
    """A task config or data file is malformed; the message names the file (and line or key)."""


def norm_word(word: str) -> str:
    """An answer word as it is compared: case-folded, any run of spaces as one."""
    return " ".join(word.casefold().split())


class Intended(Strict):
    """The effect steering should have: ``raise`` (or ``lower``) the probability of ``target``."""

    target: StrictStr
    direction: Literal["raise", "lower"]


class AnswerParser(Strict):
    """How :func:`~steerlab.tasks.answers.parse_answer` reads a generated answer (see there for
    the rules).

    ``leading_only``: answer words that count only as the whole first clause ("Yes." / "No,"),
    since "no" inside a sentence ("no bounds check") states nothing (an entry that is no label's
    answer word has no effect). ``extra_words``: per label, more words that state it in
    generated text but whose first tokens are too common to count in logit mode ("insecure"
    starts with the token "in"). ``negations``: words that turn a following answer word into the
    other label (``n't`` matches "isn't", "doesn't"); with more than two labels a negated word is
    ignored instead. ``negation_window``: how many words may stand between a negation and the
    word it turns. ``hedges``: phrases that make the answer uncertain when they come before its
    first verdict. ``conditionals``: words that make an answer word in the rest of their clause
    a condition, not a verdict ("whether it is vulnerable"). ``conflict``: when the verdicts
    disagree, ``first`` takes the first stated, ``uncertain`` gives up.
    """

    leading_only: list[StrictStr] = Field(default_factory=lambda: ["yes", "no"])
    extra_words: dict[StrictStr, list[StrictStr]] = Field(default_factory=dict)
    negations: list[StrictStr] = Field(default_factory=lambda: list(DEFAULT_NEGATIONS))
    negation_window: StrictInt = Field(default=3, ge=0, le=10)
    hedges: list[StrictStr] = Field(default_factory=lambda: list(DEFAULT_HEDGES))
    conditionals: list[StrictStr] = Field(default_factory=lambda: list(DEFAULT_CONDITIONALS))
    conflict: Literal["first", "uncertain"] = "first"


class TaskConfig(Strict):
    """A classification task as written in its YAML file (see the module docstring)."""

    name: StrictStr
    prompt_template: StrictStr
    labels: list[StrictStr] = Field(min_length=2)
    positive: StrictStr
    answer_words: dict[StrictStr, list[StrictStr]]
    uncertain_label: StrictStr = "uncertain"
    groups: dict[StrictStr, StrictStr] = Field(default_factory=dict)
    intended: Intended
    data: StrictStr
    build_split: StrictStr = BUILD_SPLIT
    eval_split: StrictStr = EVAL_SPLIT
    chat: StrictBool = True
    system: StrictStr | None = None
    parser: AnswerParser = Field(default_factory=AnswerParser)

    @model_validator(mode="after")
    def _consistent(self) -> TaskConfig:
        for key in ("name", "data", "build_split", "eval_split", "uncertain_label"):
            if not getattr(self, key).strip():
                raise ValueError(f"{key}: is empty")
        if self.system is not None and not self.system.strip():
            raise ValueError("system: is empty: leave the key out instead")
        labels = self.labels
        for label in labels:
            if not label.strip():
                raise ValueError("labels: a label is empty")
        _no_repeats("labels", labels)
        if self.uncertain_label in labels:
            raise ValueError(f"uncertain_label: {self.uncertain_label!r} is also one of the labels")
        shown = ", ".join(labels)
        for key, label in (("positive", self.positive), ("intended.target", self.intended.target)):
            if label not in labels:
                raise ValueError(f"{key}: {label!r} is not one of the labels ({shown})")
        if self.build_split == self.eval_split:
            raise ValueError(f"eval_split: {self.eval_split!r} is also the build_split")
        _check_words("answer_words", self.answer_words, labels, every_label=True)
        _check_words("parser.extra_words", self.parser.extra_words, labels, every_label=False)
        owner: dict[str, str] = {}
        for where, words_of in (
            ("answer_words", self.answer_words),
            ("parser.extra_words", self.parser.extra_words),
        ):
            for label, words in words_of.items():
                for word in words:
                    key = norm_word(word)
                    if owner.setdefault(key, label) != label:
                        raise ValueError(
                            f"{where}.{label}: {word!r} also states {owner[key]!r}, "
                            "so an answer using it could not be read"
                        )
        for key in ("leading_only", "negations", "hedges", "conditionals"):
            for word in getattr(self.parser, key):
                if not word.strip():
                    raise ValueError(f"parser.{key}: an entry is empty")
        for group, display in self.groups.items():
            if not group.strip() or not display.strip():
                raise ValueError(f"groups: {group!r}: the group id and its name must be non-empty")
        _check_template(self.prompt_template, bool(self.groups))
        return self

    def group_name(self, group: str) -> str:
        """What ``{group_name}`` is filled with for ``group``: its name, else the id itself."""
        return self.groups.get(group, group)


def _no_repeats(key: str, items: list[str]) -> None:
    seen: set[str] = set()
    for item in items:
        if item in seen:
            raise ValueError(f"{key}: {item!r} is listed twice")
        seen.add(item)


def _check_words(
    key: str, words_of: dict[str, list[str]], labels: list[str], every_label: bool
) -> None:
    for label, words in words_of.items():
        if label not in labels:
            raise ValueError(f"{key}: {label!r} is not one of the labels ({', '.join(labels)})")
        if not words:
            raise ValueError(f"{key}.{label}: give at least one word")
        for word in words:
            if not word.strip():
                raise ValueError(f"{key}.{label}: a word is empty")
    if every_label:
        for label in labels:
            if label not in words_of:
                raise ValueError(f"{key}: no words for the label {label!r}")


def _check_template(template: str, has_groups: bool) -> None:
    """Raise ``ValueError`` unless ``template.format(text=..., group=..., group_name=...)``
    works and shows the text."""
    try:
        names = {n for _, n, _, _ in string.Formatter().parse(template) if n is not None}
    except ValueError as e:
        raise ValueError(
            f"prompt_template: not a format template ({e}); write a literal brace as {{{{ or }}}}"
        ) from e
    unknown = sorted(names - TEMPLATE_FIELDS)
    if unknown:
        shown = ", ".join("{" + n + "}" for n in unknown)
        raise ValueError(
            f"prompt_template: unknown field {shown}: a template may use only {{text}}, {{group}} "
            "and {group_name} (write a literal brace as {{ or }})"
        )
    if "text" not in names:
        raise ValueError("prompt_template: lacks {text}, so the model never sees the example")
    if "group_name" in names and not has_groups:
        raise ValueError(
            "prompt_template: uses {group_name} but the config has no groups mapping "
            "(group id -> name)"
        )


def parse_config(data: Any, where: str) -> TaskConfig:
    """A :class:`TaskConfig` from parsed YAML ``data``; errors name ``where`` and the key."""
    if data is None:
        raise ClassificationTaskError(f"{where}: the file is empty: write a YAML mapping")
    if not isinstance(data, dict):
        raise ClassificationTaskError(f"{where}: a task config must be a YAML mapping")
    try:
        return TaskConfig.model_validate(data)
    except ValidationError as e:
        raise ClassificationTaskError(format_error(where, e)) from e


def format_error(where: str, err: ValidationError, known: tuple[str, ...] = ()) -> str:
    """The first validation error as one sentence: ``where: key: problem``."""
    first = err.errors()[0]
    loc = ".".join(str(x) for x in first["loc"])
    more = f" (and {err.error_count() - 1} more)" if err.error_count() > 1 else ""
    if first["type"] == "extra_forbidden":
        hint = f" (known keys: {', '.join(known)})" if known else ""
        return f"{where}: unknown key {loc!r}{hint}{more}"
    if first["type"] == "missing":
        return f"{where}: missing key {loc!r}{more}"
    msg = str(first["msg"]).removeprefix("Value error, ")
    return f"{where}: {loc}: {msg}{more}" if loc else f"{where}: {msg}{more}"
