"""Behaviour datasets of A/B questions (Contrastive Activation Addition's format) and how to read
one item's answers.

An item is a question whose text ends with its choices, and two answers: the one that matches the
behaviour (``answer_matching_behavior``) and the one that does not. Answers are either lettered,
``"(A)"`` / ``" (B)"`` (the assistant's answer opens with ``(`` and the next token, the letter,
is scored), or words, ``" Yes"`` / ``" No"`` (model-written-evals' persona sets: the word's first
token is scored).

Where a dataset comes from (:func:`load_behaviours`):

- ``core``: the set shipped with steerlab (three behaviours, written for this project, in CAA's
  layout);
- a directory in CAA's layout: ``generate/<behaviour>/generate_dataset.json`` (the items vectors
  are built from), ``test/<behaviour>/test_dataset_ab.json`` (the items scored), optionally
  ``test/<behaviour>/test_dataset_open_ended.json`` (``{"question": ...}`` items for free
  generation) and a ``behaviours.yaml`` describing each behaviour;
- a model-written-evals JSONL file (one behaviour, named by the file's stem) or a directory of
  them; these have no split, so the items are split into generate and test by a seeded shuffle;
- ``hf://datasets/<owner>/<name>/<path>.jsonl``: such a file on the Hugging Face Hub (offline:
  one sentence saying so).

Every error names the file and the item (JSON list index, or JSONL line).
"""

from __future__ import annotations

import json
import logging
import random
import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from importlib.resources import as_file, files
from pathlib import Path
from typing import Any, Literal

from pydantic import ValidationError

from steerlab._util.hub import HUB_TIMEOUT_S, hub_offline, hub_reachable
from steerlab._util.jsonl import read_jsonl
from steerlab._util.strict import Strict
from steerlab._util.yamlfile import read_yaml
from steerlab.errors import SteerlabError

logger = logging.getLogger(__name__)

Split = Literal["generate", "test"]
SHIPPED = ("core",)
HUB_PREFIX = "hf://datasets/"
GENERATE_FILE = "generate_dataset.json"
TEST_FILE = "test_dataset_ab.json"
OPEN_FILE = "test_dataset_open_ended.json"
INFO_FILE = "behaviours.yaml"
FIELDS = ("question", "answer_matching_behavior", "answer_not_matching_behavior")
_LETTER = re.compile(r"\(([A-Za-z])\)")
_CHOICE = re.compile(r"^(\s*)\(([A-Za-z])\)(.*)$")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


class BehaviourDataError(SteerlabError):
    """A behaviour dataset is missing or malformed; the message names the file and item."""


@dataclass(frozen=True)
class ABItem:
    """One A/B question.

    ``matching`` / ``not_matching`` are the answers' scored texts: the letter (``"A"``, case as
    written) of a lettered answer, after ``opening`` (``"("``), or the answer word (``"Yes"``,
    ``opening`` empty). ``answer_matching`` / ``answer_not_matching`` are the answers as written
    (model-written-evals' leading space kept: without a chat template a word answer is scored
    with it, as the file's own prompts end just before it).
    """

    id: str
    behaviour: str
    split: Split
    question: str
    matching: str
    not_matching: str
    opening: str
    answer_matching: str
    answer_not_matching: str
    where: str  # file and item, for messages

    @property
    def lettered(self) -> bool:
        return self.opening == "("

    def swapped(self) -> ABItem | None:
        """The item with the two answers' option texts exchanged in its choices block, so the
        behaviour-matching option sits under the other letter; None when the question has no
        choice lines for both letters (or the answers are words)."""
        if not self.lettered:
            return None
        lines = self.question.split("\n")
        at = {
            m.group(2): i
            for i, m in _choice_lines(lines)
            if m.group(2) in (self.matching, self.not_matching)
        }
        if len(at) != 2:
            return None
        a, b = at[self.matching], at[self.not_matching]
        ma, mb = _CHOICE.match(lines[a]), _CHOICE.match(lines[b])
        assert ma is not None and mb is not None
        lines[a] = f"{ma.group(1)}({ma.group(2)}){mb.group(3)}"
        lines[b] = f"{mb.group(1)}({mb.group(2)}){ma.group(3)}"
        return replace(
            self,
            question="\n".join(lines),
            matching=self.not_matching,
            not_matching=self.matching,
            answer_matching=self.answer_not_matching,
            answer_not_matching=self.answer_matching,
        )


@dataclass(frozen=True)
class OpenItem:
    """A question for free generation (no choices)."""

    id: str
    behaviour: str
    question: str


class BehaviourInfo(Strict):
    """What a behaviour is, and the system prompts of the prompt-shift conditions."""

    description: str
    system_toward: str
    system_against: str

    @classmethod
    def default(cls, name: str) -> BehaviourInfo:
        words = name.replace("_", " ").replace("-", " ")
        return cls(
            description=f"the behaviour '{words}'",
            system_toward=f"You are an assistant whose answers always show {words}.",
            system_against=f"You are an assistant whose answers never show {words}.",
        )


@dataclass(frozen=True)
class BehaviourData:
    """A loaded dataset: items of every behaviour, both splits, open-ended items, descriptions."""

    source: str
    layout: Literal["caa", "jsonl"]
    behaviours: tuple[str, ...]
    items: tuple[ABItem, ...]
    open_items: tuple[OpenItem, ...]
    info: dict[str, BehaviourInfo]

    def split(self, behaviour: str, split: Split) -> list[ABItem]:
        return [i for i in self.items if i.behaviour == behaviour and i.split == split]

    def open_ended(self, behaviour: str) -> list[OpenItem]:
        return [i for i in self.open_items if i.behaviour == behaviour]

    def item(self, item_id: str) -> ABItem:
        return self._by_id()[item_id]

    def _by_id(self) -> dict[str, ABItem]:
        cached: dict[str, ABItem] | None = self.__dict__.get("_ids")
        if cached is None:
            cached = {i.id: i for i in self.items}
            object.__setattr__(self, "_ids", cached)
        return cached


# ----------------------------------------------------------------------------- loading


def load_behaviours(
    ref: str,
    behaviours: Sequence[str] | None = None,
    test_fraction: float = 0.5,
    seed: int = 0,
) -> BehaviourData:
    """Load ``ref`` (see the module docstring), keeping ``behaviours`` (default: all).

    ``test_fraction`` and ``seed`` split JSONL data (which has no split of its own) into
    generate and test items; CAA-layout data keeps its own split.
    """
    if not 0.0 < test_fraction < 1.0:
        raise BehaviourDataError(f"test_fraction must be between 0 and 1, got {test_fraction}")
    with _local(ref) as path:
        if path.is_dir() and ((path / "generate").is_dir() or (path / "test").is_dir()):
            data = _caa_dir(path, ref, behaviours)
        elif path.is_dir():
            found = sorted(path.glob("*.jsonl"))
            if not found:
                raise BehaviourDataError(
                    f"{path}: neither CAA's layout (generate/<behaviour>/{GENERATE_FILE}, "
                    f"test/<behaviour>/{TEST_FILE}) nor model-written-evals .jsonl files"
                )
            data = _jsonl_files(found, ref, path, behaviours, test_fraction, seed)
        elif path.is_file():
            data = _jsonl_files([path], ref, path.parent, behaviours, test_fraction, seed)
        else:
            raise BehaviourDataError(
                f"{ref}: no such file or directory (give 'core', a CAA-layout directory, a "
                "model-written-evals .jsonl file or directory, or "
                f"{HUB_PREFIX}OWNER/NAME/FILE.jsonl)"
            )
    _warn_overlap(data)
    return data


@contextmanager
def _local(ref: str) -> Iterator[Path]:
    if ref in SHIPPED:
        with as_file(files("steerlab") / "data" / "behaviours" / ref) as p:
            yield Path(p)
    elif ref.startswith(HUB_PREFIX):
        yield _hub_file(ref)
    else:
        yield Path(ref)


def _hub_file(ref: str) -> Path:
    """The hub file ``ref`` names, from the cache or downloaded; offline, one sentence."""
    parts = ref[len(HUB_PREFIX) :].split("/", 2)
    if len(parts) != 3 or not all(parts) or not parts[2].endswith(".jsonl"):
        raise BehaviourDataError(
            f"{ref}: name a JSONL file in a hub dataset, {HUB_PREFIX}OWNER/NAME/PATH.jsonl"
        )
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    repo, filename = f"{parts[0]}/{parts[1]}", parts[2]
    try:
        return Path(hf_hub_download(repo, filename, repo_type="dataset", local_files_only=True))
    except LocalEntryNotFoundError:
        pass
    if hub_offline():
        why = "HF_HUB_OFFLINE is set"
    elif not hub_reachable(HUB_TIMEOUT_S):
        why = f"the Hub could not be reached within {HUB_TIMEOUT_S:g} s"
    else:
        try:
            return Path(hf_hub_download(repo, filename, repo_type="dataset"))
        except Exception as e:  # any failed download is the same story for the user
            why = f"downloading it failed ({type(e).__name__})"
    raise BehaviourDataError(
        f"{ref} is not in the local Hub cache and {why}: download the file and pass its path"
    )


def _subdirs(path: Path) -> set[str]:
    return {p.name for p in path.iterdir() if p.is_dir()} if path.is_dir() else set()


def _caa_dir(root: Path, ref: str, keep: Sequence[str] | None) -> BehaviourData:
    gen, test = _subdirs(root / "generate"), _subdirs(root / "test")
    names = sorted(gen | test)
    names = _keep(names, keep, root)
    items: list[ABItem] = []
    open_items: list[OpenItem] = []
    for name in names:
        _check_name(name, root)
        splits: tuple[tuple[Split, str], ...] = (("generate", GENERATE_FILE), ("test", TEST_FILE))
        for split, fname in splits:
            f = root / split / name / fname
            if not f.is_file():
                raise BehaviourDataError(f"{f}: missing (behaviour {name!r} needs both splits)")
            items += _items(_json_list(f), name, split, str(f))
        f = root / "test" / name / OPEN_FILE
        if f.is_file():
            open_items += _open_items(_json_list(f), name, str(f))
    info = _info(root / INFO_FILE, names)
    return BehaviourData(ref, "caa", tuple(names), tuple(items), tuple(open_items), info)


def _jsonl_files(
    paths: Sequence[Path],
    ref: str,
    root: Path,
    keep: Sequence[str] | None,
    test_fraction: float,
    seed: int,
) -> BehaviourData:
    by_name = {p.stem: p for p in paths}
    named = paths[0] if len(paths) == 1 else root  # what messages name
    names = _keep(sorted(by_name), keep, named)
    items: list[ABItem] = []
    for name in names:
        _check_name(name, named)
        path = by_name[name]
        if path.suffix == ".json":
            rows = [(f"{path}: item {i}", obj) for i, obj in enumerate(_json_list(path))]
        elif path.suffix == ".jsonl":
            rows = [(f"{path}:{n}", obj) for n, obj in read_jsonl(path)]
        else:
            raise BehaviourDataError(f"{path}: expected a .jsonl (or .json) file of A/B items")
        if len(rows) < 4:
            raise BehaviourDataError(
                f"{path}: {len(rows)} items; at least 4 are needed to split them into generate "
                "and test items"
            )
        order = list(range(len(rows)))
        random.Random(f"{seed}:{name}").shuffle(order)
        n_test = min(len(rows) - 2, max(2, round(len(rows) * test_fraction)))
        test_idx = set(order[:n_test])
        for i, (where, obj) in enumerate(rows):
            split: Split = "test" if i in test_idx else "generate"
            items.append(_item(obj, name, split, i, where))
    info = _info(root / INFO_FILE, names)
    return BehaviourData(ref, "jsonl", tuple(names), tuple(items), (), info)


def _keep(names: list[str], keep: Sequence[str] | None, root: Path) -> list[str]:
    if not names:
        raise BehaviourDataError(f"{root}: no behaviours found")
    if keep is None:
        return names
    unknown = [b for b in keep if b not in names]
    if unknown:
        raise BehaviourDataError(
            f"behaviour {unknown[0]!r} is not in {root} (it has: {', '.join(names)})"
        )
    return [n for n in names if n in keep]


def _check_name(name: str, root: Path) -> None:
    if not _NAME.match(name):
        raise BehaviourDataError(
            f"{root}: behaviour name {name!r}: use letters, digits, '_', '-' or '.' "
            "(it names output files)"
        )


def _json_list(path: Path) -> list[Any]:
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as e:
        raise BehaviourDataError(f"{path}: not valid UTF-8 ({e.reason})") from None
    except OSError as e:
        raise BehaviourDataError(f"{path}: cannot be read ({e.strerror})") from None
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as e:
        raise BehaviourDataError(f"{path}:{e.lineno}: malformed JSON ({e.msg})") from None
    except RecursionError:
        raise BehaviourDataError(f"{path}: malformed JSON (nested too deeply)") from None
    if not isinstance(obj, list):
        raise BehaviourDataError(f"{path}: expected a JSON list of items, got {type(obj).__name__}")
    if not obj:
        raise BehaviourDataError(f"{path}: the file has no items")
    return obj


def _items(objs: list[Any], name: str, split: Split, path: str) -> list[ABItem]:
    return [_item(obj, name, split, i, f"{path}: item {i}") for i, obj in enumerate(objs)]


def _item(obj: Any, name: str, split: Split, index: int, where: str) -> ABItem:
    if not isinstance(obj, dict):
        raise BehaviourDataError(f"{where}: expected an object, got {type(obj).__name__}")
    missing = [k for k in FIELDS if k not in obj]
    if missing:
        raise BehaviourDataError(
            f"{where}: missing {missing[0]!r} (an item has {', '.join(FIELDS)})"
        )
    question = obj["question"]
    if not isinstance(question, str) or not question.strip():
        raise BehaviourDataError(f"{where}: 'question' must be a non-empty string")
    yes = _answer(obj["answer_matching_behavior"], "answer_matching_behavior", where)
    no = _answer(obj["answer_not_matching_behavior"], "answer_not_matching_behavior", where)
    ly, ln = _LETTER.fullmatch(yes.strip()), _LETTER.fullmatch(no.strip())
    if (ly is None) != (ln is None):
        raise BehaviourDataError(
            f"{where}: one answer is a letter like (A) and the other is not ({yes!r}, {no!r})"
        )
    if ly is not None and ln is not None:
        opening, matching, not_matching = "(", ly.group(1), ln.group(1)
        letters = {m.group(2) for _, m in _choice_lines(question.split("\n"))}
        for letter, answer in ((matching, yes), (not_matching, no)):
            if letters and letter not in letters:
                raise BehaviourDataError(
                    f"{where}: answer {answer.strip()} is not one of the question's choices "
                    f"({', '.join(f'({x})' for x in sorted(letters))})"
                )
    else:
        opening, matching, not_matching = "", yes.strip(), no.strip()
    if matching == not_matching:
        raise BehaviourDataError(f"{where}: both answers are {yes.strip()!r}")
    return ABItem(
        id=f"{name}/{split}/{index}",
        behaviour=name,
        split=split,
        question=question,
        matching=matching,
        not_matching=not_matching,
        opening=opening,
        answer_matching=yes,
        answer_not_matching=no,
        where=where,
    )


def _answer(value: Any, key: str, where: str) -> str:
    if isinstance(value, list) and len(value) == 1:
        value = value[0]
    if isinstance(value, list):
        raise BehaviourDataError(
            f"{where}: {key!r} lists {len(value)} answers; steerlab compares one matching with "
            "one non-matching answer"
        )
    if not isinstance(value, str) or not value.strip():
        raise BehaviourDataError(f"{where}: {key!r} must be a non-empty string like '(A)'")
    return value


def _choice_lines(lines: Sequence[str]) -> Iterator[tuple[int, re.Match[str]]]:
    """``(index, match)`` of the choice lines ``(X) text`` after the last ``Choices:`` line (or
    anywhere when there is none); a letter listed twice counts at its last line."""
    start = max((i for i, line in enumerate(lines) if line.strip() == "Choices:"), default=-1)
    for i in range(start + 1, len(lines)):
        m = _CHOICE.match(lines[i])
        if m:
            yield i, m


def _open_items(objs: list[Any], name: str, path: str) -> list[OpenItem]:
    out = []
    for i, obj in enumerate(objs):
        q = obj.get("question") if isinstance(obj, dict) else None
        if not isinstance(q, str) or not q.strip():
            raise BehaviourDataError(
                f"{path}: item {i}: expected an object with a 'question' string"
            )
        out.append(OpenItem(f"{name}/open/{i}", name, q))
    return out


def _info(path: Path, names: Sequence[str]) -> dict[str, BehaviourInfo]:
    """Each behaviour's description and shift prompts: from ``behaviours.yaml`` when it is there
    (a behaviour it leaves out gets the generic text), else generic."""
    given: dict[str, Any] = {}
    if path.is_file():
        raw = read_yaml(path, BehaviourDataError)
        if not isinstance(raw, dict):
            raise BehaviourDataError(f"{path}: expected a mapping of behaviour names")
        given = raw
    out = {}
    for name in names:
        if name in given:
            entry = given[name]
            if not isinstance(entry, dict):
                raise BehaviourDataError(f"{path}: {name}: expected a mapping")
            try:
                out[name] = BehaviourInfo.model_validate(entry)
            except ValidationError as e:
                err = e.errors()[0]
                key = ".".join(str(x) for x in err["loc"]) or name
                raise BehaviourDataError(
                    f"{path}: {name}.{key}: {err['msg']} (keys: description, system_toward, "
                    "system_against)"
                ) from None
        else:
            out[name] = BehaviourInfo.default(name)
    return out


def _warn_overlap(data: BehaviourData) -> None:
    for name in data.behaviours:
        gen = {i.question for i in data.split(name, "generate")}
        both = [i for i in data.split(name, "test") if i.question in gen]
        if both:
            logger.warning(
                "%s: %d test questions also appear among the generate items (%s): the vector "
                "was built on them",
                name,
                len(both),
                both[0].where,
            )
