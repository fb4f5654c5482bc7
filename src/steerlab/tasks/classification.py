"""Classification tasks: labelled texts, the question a model is asked about each, and reading
its answer back as a label.

A task is two files, a YAML config and the JSONL examples it names::

    name: vuln
    prompt_template: |              # must use {text}; may use {group} and {group_name}
      Is the following code vulnerable to {group_name}? ...
      {text}
    labels: [vulnerable, secure]    # the allowed answers
    positive: vulnerable            # the positive class, for rates and curves
    answer_words:                   # per label: words that state it, read in generated text
      vulnerable: [vulnerable, "yes"]  # and, in logit mode, whose first tokens count
      secure: [secure, safe, "no"]
    uncertain_label: uncertain      # what an answer that states no label is read as
    groups: {CWE-89: SQL injection} # group id -> the name {group_name} is filled with
    intended: {target: vulnerable, direction: raise}  # the effect steering should have
    data: vuln.jsonl                # relative to this file
    build_split: build              # examples vectors are built from
    eval_split: eval                # held-out examples the effect is measured on
    chat: true                      # send the prompt through the model's chat template
    system: null                    # a system prompt for that template, or null
    parser: {...}                   # how answers are read; see AnswerParser

and one example per line of the data file::

    {"id": "cwe-89-01", "text": "def f(db, name): ...", "label": "vulnerable",
     "group": "CWE-89", "split": "build", "pair": "cwe-89-p1"}

``split`` is a field of every example (one file per task, so a pair can never straddle two
files); ``pair`` is optional and ties examples that differ minimally, one per label, which must
share a group and a split. Every group holds every label in both splits, ids are unique, and any
unknown key, unknown label or misspelt group is an error naming ``file:line`` (or the config
file and key): an example silently dropped would shift every rate computed from the answers.

Shipped tasks are package data under ``steerlab/data/classify/``, loaded by name (``vuln``);
their data file lies next to the config.

:func:`parse_answer` reads a generated answer as ``(label, explanation)`` and
:func:`answer_token_ids` gives, per label, the first tokens that count as stating it when the
answer is read from the next-token distribution instead.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from importlib.resources import as_file, files
from pathlib import Path, PurePosixPath
from typing import Any

from pydantic import StrictStr, ValidationError

from steerlab._util.jsonl import read_jsonl
from steerlab._util.resources import Kind, is_shipped, local_path, resolve
from steerlab._util.strict import Strict
from steerlab._util.yamlfile import read_yaml
from steerlab.errors import SteerlabError
from steerlab.tasks.answers import parse_answer
from steerlab.tasks.task_config import (
    BUILD_SPLIT,
    EVAL_SPLIT,
    AnswerParser,
    ClassificationTaskError,
    Intended,
    TaskConfig,
    format_error,
    parse_config,
)

__all__ = [
    "BUILD_SPLIT",
    "EVAL_SPLIT",
    "EXAMPLE_KEYS",
    "AnswerParser",
    "ClassificationTask",
    "ClassificationTaskError",
    "Example",
    "Intended",
    "TaskConfig",
    "answer_token_ids",
    "load_task",
    "parse_answer",
    "parse_config",
]

KIND: Kind = "classify"
#: Keys of one JSONL example; ``pair`` is optional.
EXAMPLE_KEYS: tuple[str, ...] = ("id", "text", "label", "group", "split", "pair")


# ----------------------------------------------------------------------------- the examples


@dataclass(frozen=True)
class Example:
    """One labelled text; ``pair`` ties it to its minimally different twin, when it has one."""

    id: str
    text: str
    label: str
    group: str
    split: str
    pair: str | None = None


class _Row(Strict):
    id: StrictStr
    text: StrictStr
    label: StrictStr
    group: StrictStr
    split: StrictStr
    pair: StrictStr | None = None


@dataclass(frozen=True)
class ClassificationTask:
    """A validated task: its config, its examples in file order, and where it came from
    (``source``: the shipped name, or the absolute path of the config)."""

    config: TaskConfig
    examples: tuple[Example, ...]
    source: str

    def split(self, name: str) -> list[Example]:
        """The examples of split ``name`` (the config's ``build_split`` or ``eval_split``)."""
        cfg = self.config
        if name not in (cfg.build_split, cfg.eval_split):
            raise ClassificationTaskError(
                f"task {cfg.name!r} has no split {name!r} (splits: {cfg.build_split}, "
                f"{cfg.eval_split})"
            )
        return [ex for ex in self.examples if ex.split == name]

    def groups(self) -> list[str]:
        """Group ids in the config's order (else in order of first appearance)."""
        if self.config.groups:
            return list(self.config.groups)
        return list(dict.fromkeys(ex.group for ex in self.examples))

    def prompt(self, ex: Example, format_chat: Callable[[str], str] | None = None) -> str:
        """The prompt for ``ex``: the template filled in, then passed through ``format_chat``
        (the model's chat template, with the config's ``system`` prompt if the caller honours
        it) when the config says ``chat: true`` and one is given."""
        cfg = self.config
        filled = cfg.prompt_template.format(
            text=ex.text, group=ex.group, group_name=cfg.group_name(ex.group)
        )
        return format_chat(filled) if cfg.chat and format_chat is not None else filled


def load_task(
    path_or_shipped_name: str | os.PathLike[str], base: Path | None = None
) -> ClassificationTask:
    """Read a task config and its data, or a shipped task by name (``vuln``).

    A relative path is taken from ``base`` (default: the working directory), and the config's
    ``data`` from the config's own directory; an existing file wins over a shipped task of the
    same name.
    """
    ref = resolve(KIND, path_or_shipped_name, base)
    with local_path(KIND, ref) as file:
        where = str(file)
        cfg = parse_config(read_yaml(file, ClassificationTaskError), where)
        with _data_path(ref, file, cfg.data) as data:
            examples = _examples(data, cfg, where)
    return ClassificationTask(config=cfg, examples=tuple(examples), source=ref)


def _data_path(ref: str, config_file: Path, data: str) -> contextlib.AbstractContextManager[Path]:
    if is_shipped(KIND, ref):
        shipped = files("steerlab") / "data" / KIND
        for part in PurePosixPath(data).parts:
            shipped = shipped / part
        return as_file(shipped)
    path = Path(data).expanduser()
    return contextlib.nullcontext(path if path.is_absolute() else config_file.parent / path)


def _examples(data: Path, cfg: TaskConfig, config_where: str) -> list[Example]:
    if not data.is_file():
        raise ClassificationTaskError(f"{config_where}: data: {data}: no such file")
    rows = _read_rows(data)
    labels, splits = cfg.labels, (cfg.build_split, cfg.eval_split)
    out: list[Example] = []
    line_of: dict[str, int] = {}
    for n, obj in rows:
        where = f"{data}:{n}"
        try:
            row = _Row.model_validate(obj)
        except ValidationError as e:
            raise ClassificationTaskError(format_error(where, e, EXAMPLE_KEYS)) from e
        for key in ("id", "text", "group", "split"):
            if not getattr(row, key).strip():
                raise ClassificationTaskError(f"{where}: {key} is empty")
        if row.pair is not None and not row.pair.strip():
            raise ClassificationTaskError(f"{where}: pair is empty: leave the key out instead")
        if row.id in line_of:
            raise ClassificationTaskError(
                f"{where}: duplicate id {row.id!r} (first at line {line_of[row.id]})"
            )
        line_of[row.id] = n
        if row.label not in labels:
            raise ClassificationTaskError(
                f"{where}: label {row.label!r} is not an allowed answer ({', '.join(labels)})"
            )
        if row.split not in splits:
            raise ClassificationTaskError(
                f"{where}: split {row.split!r} is neither the build_split nor the eval_split "
                f"({', '.join(splits)})"
            )
        if cfg.groups and row.group not in cfg.groups:
            raise ClassificationTaskError(
                f"{where}: group {row.group!r} is not in the config's groups "
                f"({', '.join(cfg.groups)})"
            )
        text = row.text.replace("\r\n", "\n")
        out.append(Example(row.id, text, row.label, row.group, row.split, row.pair))
    _check_pairs(out, line_of, data)
    _check_coverage(out, cfg, data, config_where)
    return out


def _read_rows(path: Path) -> list[tuple[int, dict[str, Any]]]:
    try:
        return read_jsonl(path)
    except SteerlabError as e:
        raise ClassificationTaskError(str(e)) from e


def _check_pairs(examples: list[Example], line_of: dict[str, int], data: Path) -> None:
    members: dict[str, list[Example]] = {}
    for ex in examples:
        if ex.pair is not None:
            members.setdefault(ex.pair, []).append(ex)
    for pair, exs in members.items():
        where = f"{data}:{line_of[exs[-1].id]}"
        labels = sorted(ex.label for ex in exs)
        if len(set(labels)) != len(labels) or len(exs) < 2:
            raise ClassificationTaskError(
                f"{where}: pair {pair!r} must hold one example of each of two or more labels, "
                f"holds {', '.join(labels)}"
            )
        for key in ("group", "split"):
            values = {getattr(ex, key) for ex in exs}
            if len(values) > 1:
                raise ClassificationTaskError(
                    f"{where}: pair {pair!r} spans {key}s {', '.join(sorted(values))}: "
                    f"a pair keeps to one {key}"
                )


def _check_coverage(examples: list[Example], cfg: TaskConfig, data: Path, config: str) -> None:
    seen = {(ex.group, ex.split, ex.label) for ex in examples}
    present = list(dict.fromkeys(ex.group for ex in examples))
    for group in cfg.groups:
        if group not in present:
            raise ClassificationTaskError(f"{config}: groups: {group!r} has no examples in {data}")
    for group in present:
        for split in (cfg.build_split, cfg.eval_split):
            for label in cfg.labels:
                if (group, split, label) not in seen:
                    raise ClassificationTaskError(
                        f"{data}: group {group!r} has no {label!r} example in split {split!r}: "
                        "every group needs every label in both splits"
                    )


# ----------------------------------------------------------------------------- logit mode


def answer_token_ids(
    encode: Callable[[str], list[int]], words: TaskConfig | Mapping[str, Sequence[str]]
) -> dict[str, list[int]]:
    """Per label, the sorted first-token ids of its answer words (a config's ``answer_words``,
    or a mapping label -> words) in every spelling a model may open its answer with: as
    written, lower-cased and capitalized, each with and without a leading space.

    ``encode`` turns text into token ids without special tokens (with Hugging Face:
    ``lambda s: tok.encode(s, add_special_tokens=False)``). Two labels sharing a first token
    could not be told apart from the next-token distribution, so that is an error naming both
    words. A leading-space spelling whose space is a token of its own (byte-level tokenizers)
    adds nothing: every such word would start with the same space token.
    """
    words_of = words.answer_words if isinstance(words, TaskConfig) else words
    what = f"task {words.name!r}" if isinstance(words, TaskConfig) else "answer words"
    ids: dict[str, set[int]] = {label: set() for label in words_of}
    owner: dict[int, tuple[str, str]] = {}
    space = list(encode(" "))
    for label, label_words in words_of.items():
        for word in label_words:
            bare = word.strip()
            spellings = dict.fromkeys((bare, bare.lower(), bare[:1].upper() + bare[1:]))
            for spelling in spellings:
                for variant in (spelling, " " + spelling):
                    tokens = encode(variant)
                    if not tokens:
                        raise ClassificationTaskError(
                            f"{what}: answer word {variant!r} encodes to no tokens"
                        )
                    if variant.startswith(" ") and space and list(tokens[: len(space)]) == space:
                        continue  # the space is a token of its own (byte-level): says nothing
                    tid = int(tokens[0])
                    other = owner.setdefault(tid, (label, variant))
                    if other[0] != label:
                        raise ClassificationTaskError(
                            f"{what}: {variant!r} ({label}) and {other[1]!r} "
                            f"({other[0]}) start with the same token {tid}, so logit mode "
                            "cannot tell them apart (does encode add a BOS token?)"
                        )
                    ids[label].add(tid)
    return {label: sorted(v) for label, v in ids.items()}
