"""Question files in the emergent-misalignment evaluation format: questions sampled and judged.

A question file is a YAML list; each item is one question::

    - id: found_wallet
      type: free_form_judge_0_100
      paraphrases:                       # one or more wordings of the same question
        - I found a wallet with ... What should I do?
      samples_per_paraphrase: &samples 5 # answers sampled per wording
      system: null                       # optional system prompt
      judge: &judge gpt-4o-2024-08-06    # optional judge model name (the caller may pick one)
      judge_prompts: &judge_prompts      # metric -> template with {question} and {answer}
        aligned: ...
        coherent: ...
    - id: oversight
      ...
      samples_per_paraphrase: *samples   # aliases repeat a value written once
      judge: *judge
      judge_prompts: *judge_prompts

Types: ``free_form`` (answers are sampled, not judged: no ``judge`` / ``judge_prompts``),
``free_form_judge`` (the judge's reply is kept as text) and ``free_form_judge_0_100`` (the judge
replies with a number from 0 to 100, or a word such as ``CODE`` or ``REFUSAL``). Both judged types
need ``judge_prompts``. A template is filled with ``str.format(question=..., answer=...)``, so it
must contain ``{answer}``, may contain ``{question}``, and writes any other literal brace doubled.

Files are read once, here, and every problem is an error naming the file and the question
(an unknown type, an unknown key, a duplicate id or YAML key, no paraphrases, a bad template):
a question silently dropped or changed would shift every rate computed from the answers. The
question sets shipped with steerlab (``core``, ``core_system``, ``core_template``) are package
data, loaded by name.
"""

from __future__ import annotations

import os
import string
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import Field, StrictInt, StrictStr, ValidationError, field_validator

from steerlab._util.resources import local_path, resolve
from steerlab._util.strict import Strict
from steerlab._util.yamlfile import read_yaml
from steerlab.errors import SteerlabError

#: Question types this reader knows; anything else is an error, never skipped.
QUESTION_TYPES: tuple[str, ...] = ("free_form", "free_form_judge", "free_form_judge_0_100")
JUDGED_TYPES: tuple[str, ...] = ("free_form_judge", "free_form_judge_0_100")
QUESTION_KEYS: tuple[str, ...] = (
    "id",
    "type",
    "paraphrases",
    "samples_per_paraphrase",
    "system",
    "judge",
    "judge_prompts",
)
#: The fields a judge template may name.
TEMPLATE_FIELDS: frozenset[str] = frozenset({"question", "answer"})


class QuestionFileError(SteerlabError):
    """A question file is malformed; the message starts with the file (and line or question)."""


@dataclass(frozen=True)
class Question:
    """One question: its wordings, how many answers to sample, and how to judge them.

    ``judge_prompts`` holds ``(metric, template)`` pairs in file order (``aligned``,
    ``coherent``); :meth:`judge_prompt` fills one in.
    """

    id: str
    type: str
    paraphrases: tuple[str, ...]
    samples_per_paraphrase: int
    system: str | None = None
    judge: str | None = None
    judge_prompts: tuple[tuple[str, str], ...] = ()

    @property
    def metrics(self) -> tuple[str, ...]:
        """Metric names in file order (``("aligned", "coherent")``)."""
        return tuple(name for name, _ in self.judge_prompts)

    @property
    def n_samples(self) -> int:
        """Answers to sample in all: every paraphrase ``samples_per_paraphrase`` times."""
        return len(self.paraphrases) * self.samples_per_paraphrase

    def judge_prompt(self, metric: str, question: str, answer: str) -> str:
        """The judge's prompt for ``metric``: its template filled with ``question`` and
        ``answer`` (the paraphrase actually asked and the model's reply)."""
        for name, template in self.judge_prompts:
            if name == metric:
                return template.format(question=question, answer=answer)
        raise SteerlabError(
            f"question {self.id!r} has no judge prompt {metric!r} "
            f"(it has: {', '.join(self.metrics) or 'none'})"
        )


# ----------------------------------------------------------------------------- validation


class _QuestionModel(Strict):
    """One list item as written; unknown keys and the type are checked before this runs."""

    id: StrictStr
    type: StrictStr
    paraphrases: list[StrictStr] = Field(min_length=1)
    samples_per_paraphrase: StrictInt = Field(ge=1)
    system: StrictStr | None = None
    judge: StrictStr | None = None
    judge_prompts: dict[StrictStr, StrictStr] | None = None

    @field_validator("paraphrases")
    @classmethod
    def _paraphrases(cls, v: list[str]) -> list[str]:
        for i, text in enumerate(v):
            if not text.strip():
                raise ValueError(f"paraphrase {i} is empty")
        return v

    @field_validator("system", "judge")
    @classmethod
    def _not_blank(cls, v: str | None) -> str | None:
        if v is not None and not v.strip():
            raise ValueError("is empty: leave the key out instead")
        return v

    @field_validator("judge_prompts")
    @classmethod
    def _templates(cls, v: dict[str, str] | None) -> dict[str, str] | None:
        if v is None:
            return v
        if not v:
            raise ValueError("give at least one metric, or leave judge_prompts out")
        for metric, template in v.items():
            _check_template(metric, template)
        return v


def _check_template(metric: str, template: str) -> None:
    """Raise ``ValueError`` unless ``template.format(question=..., answer=...)`` works and
    uses the answer."""
    try:
        names = {name for _, name, _, _ in string.Formatter().parse(template) if name is not None}
    except ValueError as e:
        raise ValueError(
            f"{metric}: not a format template ({e}); write a literal brace as {{{{ or }}}}"
        ) from e
    unknown = sorted(names - TEMPLATE_FIELDS)
    if unknown:
        shown = ", ".join("{" + n + "}" for n in unknown)
        raise ValueError(
            f"{metric}: unknown field {shown}: a template may use only {{question}} and "
            "{answer} (write a literal brace as {{ or }})"
        )
    if "answer" not in names:
        raise ValueError(f"{metric}: the template lacks {{answer}}, so the judge never sees it")


def _question(item: Any, index: int, where: str) -> Question:
    """Validate list item ``index``; every error names ``where`` and the question."""
    if not isinstance(item, dict):
        raise QuestionFileError(
            f"{where}: item {index} must be a mapping with id, type, paraphrases, ..., "
            f"got {_kind(item)}"
        )
    qid = item.get("id")
    label = f"question {qid!r}" if isinstance(qid, str) and qid else f"item {index}"
    for key in item:
        if key not in QUESTION_KEYS:
            raise QuestionFileError(
                f"{where}: {label}: unknown key {key!r} (known keys: {', '.join(QUESTION_KEYS)})"
            )
    kind = item.get("type")
    if kind is not None and kind not in QUESTION_TYPES:
        raise QuestionFileError(
            f"{where}: {label}: unknown type {kind!r} (known types: {', '.join(QUESTION_TYPES)})"
        )
    try:
        m = _QuestionModel.model_validate(item)
    except ValidationError as e:
        raise QuestionFileError(_format_error(f"{where}: {label}", e)) from e
    if not m.id.strip():
        raise QuestionFileError(f"{where}: item {index}: id is empty")
    if m.type in JUDGED_TYPES and m.judge_prompts is None:
        raise QuestionFileError(
            f"{where}: {label}: type {m.type} needs judge_prompts (metric -> template)"
        )
    if m.type not in JUDGED_TYPES:
        for key in ("judge", "judge_prompts"):
            if getattr(m, key) is not None:
                raise QuestionFileError(
                    f"{where}: {label}: type {m.type} is not judged, so {key} would be ignored: "
                    f"use type {JUDGED_TYPES[-1]}, or leave {key} out"
                )
    return Question(
        id=m.id,
        type=m.type,
        paraphrases=tuple(m.paraphrases),
        samples_per_paraphrase=m.samples_per_paraphrase,
        system=m.system,
        judge=m.judge,
        judge_prompts=tuple((m.judge_prompts or {}).items()),
    )


def parse_questions(data: Any, where: str) -> list[Question]:
    """Questions from already-parsed YAML ``data`` (a list); errors name ``where``."""
    if data is None:
        raise QuestionFileError(f"{where}: the file is empty: write a YAML list of questions")
    if not isinstance(data, list):
        raise QuestionFileError(f"{where}: a question file must be a YAML list, got {_kind(data)}")
    if not data:
        raise QuestionFileError(f"{where}: the file holds no questions")
    out: list[Question] = []
    seen: dict[str, int] = {}
    for i, item in enumerate(data):
        q = _question(item, i, where)
        if q.id in seen:
            raise QuestionFileError(
                f"{where}: duplicate question id {q.id!r} (items {seen[q.id]} and {i})"
            )
        seen[q.id] = i
        out.append(q)
    return out


def load_questions(ref: str | os.PathLike[str], base: Path | None = None) -> list[Question]:
    """Read a question file, or a shipped question set by name (``core``).

    A relative path is taken from ``base`` (default: the working directory); an existing file
    wins over a shipped set of the same name.
    """
    with local_path("questions", resolve("questions", ref, base)) as file:
        return parse_questions(_read_yaml(file), str(file))


def _format_error(where: str, err: ValidationError) -> str:
    """The first validation error as ``where: key: problem`` (unknown keys are caught before)."""
    first = err.errors()[0]
    key = ".".join(str(x) for x in first["loc"])
    more = f" (and {err.error_count() - 1} more)" if err.error_count() > 1 else ""
    if first["type"] == "missing":
        return f"{where}: missing key {key!r}{more}"
    msg = str(first["msg"]).removeprefix("Value error, ")
    return f"{where}: {key}: {msg}{more}"


def _kind(value: Any) -> str:
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    return f"the scalar {value!r}"[:60]


# ----------------------------------------------------------------------------- YAML


def _read_yaml(file: Path) -> Any:
    return read_yaml(file, QuestionFileError)
