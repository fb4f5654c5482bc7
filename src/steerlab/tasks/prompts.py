"""Prompt sets for the steering-reliability experiments: schema, generation, JSONL I/O, ingest.

Three splits drive the experiment: ``harm_train`` (requests a direction is built from),
``harm_test`` (requests from *other* families, phrased in *other* styles, with *other* templates,
to measure generalization under distribution shift) and ``benign`` (ordinary requests, to measure
side effects). One JSONL line per prompt::

    {"id": "harm_train_0001", "prompt": "...", "meta": {"family": "weapons", "style": "direct"}}

``meta`` needs ``family`` and ``style``; ``template`` (the generator's template id, written by
:func:`generate_prompt_sets`) and any other string keys are optional and kept. The sets shipped
with steerlab are package data, read by name with :func:`shipped_prompts`.

Every reader here fails loudly with the file and line (or row, or index) of the first problem,
because a silently skipped or mangled prompt shifts every rate computed downstream.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import random
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from steerlab._util.io import atomic_path
from steerlab._util.resources import is_shipped, local_path, shipped_names
from steerlab.errors import SteerlabError
from steerlab.tasks.prompt_templates import (
    BENIGN_TASKS,
    BENIGN_TEMPLATES,
    HARM_TEST_TASKS,
    HARM_TEST_TEMPLATES,
    HARM_TRAIN_TASKS,
    HARM_TRAIN_TEMPLATES,
    PromptTemplate,
)

SPLITS: tuple[str, ...] = ("harm_train", "harm_test", "benign")
REQUIRED_META: tuple[str, ...] = ("family", "style")
META_KEYS: tuple[str, ...] = (*REQUIRED_META, "template")  # the meta keys every table knows
_ROW_KEYS = frozenset({"id", "prompt", "meta"})
_INGEST_KEYS = frozenset({"id", "prompt", "meta", *META_KEYS})


class PromptFileError(SteerlabError):
    """A prompt file is malformed; the message starts with ``file:line`` (or ``file[index]``)."""


class PromptSetError(SteerlabError):
    """A requested prompt-set size the template generator cannot make."""


@dataclass(frozen=True)
class PromptRow:
    """One prompt: a unique ``id``, the ``prompt`` text and string ``meta``.

    The keys in :data:`REQUIRED_META` (family, style) must be present so every downstream table
    can group by them; ``template`` and any other keys are optional and kept.
    """

    id: str
    prompt: str
    meta: dict[str, str]

    def __post_init__(self) -> None:
        if not isinstance(self.id, str) or not self.id.strip():
            raise ValueError(f"id must be a non-empty string, got {self.id!r}")
        if not isinstance(self.prompt, str):
            raise ValueError(f"prompt must be a string, got {type(self.prompt).__name__}")
        if not self.prompt.strip():
            raise ValueError("prompt is empty or whitespace")
        if not isinstance(self.meta, dict):
            raise ValueError(f"meta must be an object, got {type(self.meta).__name__}")
        for k, v in self.meta.items():
            if not isinstance(k, str) or not isinstance(v, str):
                raise ValueError(f"meta values must be strings, got {k!r}: {v!r}")
        missing = [k for k in REQUIRED_META if k not in self.meta]
        if missing:
            raise ValueError(f"meta is missing {', '.join(missing)}")

    def to_dict(self) -> dict[str, Any]:
        """The JSONL object for this row."""
        return {"id": self.id, "prompt": self.prompt, "meta": dict(self.meta)}


# --- generation --------------------------------------------------------------------------------


def _interleave(queues: Sequence[list[Any]]) -> list[Any]:
    """Round-robin merge: first items of every queue, then second items, and so on."""
    out: list[Any] = []
    for i in range(max((len(q) for q in queues), default=0)):
        out.extend(q[i] for q in queues if i < len(q))
    return out


def _sample(
    split: str,
    n: int,
    tasks: Mapping[str, Sequence[str]],
    templates_for: Mapping[str, Sequence[PromptTemplate]],
    rng: random.Random,
) -> list[PromptRow]:
    """Draw ``n`` distinct (task, template) prompts, balanced over families, then styles.

    Each family's combinations are shuffled within each style and the styles interleaved; the
    families are then interleaved in a shuffled order. Any prefix of the result therefore covers
    families (and, within a family, styles) about equally.
    """
    capacity = sum(len(templates_for[f]) * len(tasks[f]) for f in tasks)
    if n > capacity:
        raise PromptSetError(
            f"cannot make {n} distinct {split} prompts: the templates allow at most {capacity}"
        )
    family_queues: list[list[tuple[str, str, PromptTemplate]]] = []
    for family in sorted(tasks):
        by_style: dict[str, list[tuple[str, str, PromptTemplate]]] = {}
        for template in templates_for[family]:
            for task in tasks[family]:
                by_style.setdefault(template.style, []).append((family, task, template))
        style_queues = [by_style[s] for s in sorted(by_style)]
        rng.shuffle(style_queues)
        for q in style_queues:
            rng.shuffle(q)
        family_queues.append(_interleave(style_queues))
    rng.shuffle(family_queues)

    rows: list[PromptRow] = []
    seen: set[str] = set()
    for family, task, template in _interleave(family_queues):
        if len(rows) == n:
            break
        text = template.render(task)
        if text in seen:  # two combinations rendering alike; skip rather than duplicate
            continue
        seen.add(text)
        meta = {"family": family, "style": template.style, "template": template.id}
        rows.append(PromptRow(id=f"{split}_{len(rows) + 1:04d}", prompt=text, meta=meta))
    if len(rows) < n:
        raise PromptSetError(
            f"cannot make {n} distinct {split} prompts: the templates allow only {len(rows)}"
        )
    return rows


def generate_prompt_sets(
    n_train: int = 150, n_test: int = 150, n_benign: int = 200, seed: int = 0
) -> dict[str, list[PromptRow]]:
    """Template-generated ``harm_train``, ``harm_test`` and ``benign`` splits.

    Deterministic in ``seed``; each split has its own RNG stream, so changing one size does not
    reshuffle the other splits. ``harm_train`` and ``harm_test`` share no family, style or
    template. Raises :class:`PromptSetError` (a ``ValueError``) when a size is negative or exceeds
    the distinct prompts the templates allow, before any prompt is made.
    """
    for name, n in (("n_train", n_train), ("n_test", n_test), ("n_benign", n_benign)):
        if n < 0:
            raise PromptSetError(f"{name} must be >= 0, got {n}")

    def rng(split: str) -> random.Random:
        # A string seed is hashed with SHA-512 by `random`, so this is stable across processes.
        return random.Random(f"steerlab.prompts:{split}:{seed}")

    train_templates = {f: HARM_TRAIN_TEMPLATES for f in HARM_TRAIN_TASKS}
    test_templates = {f: HARM_TEST_TEMPLATES for f in HARM_TEST_TASKS}
    return {
        "harm_train": _sample(
            "harm_train", n_train, HARM_TRAIN_TASKS, train_templates, rng("harm_train")
        ),
        "harm_test": _sample(
            "harm_test", n_test, HARM_TEST_TASKS, test_templates, rng("harm_test")
        ),
        "benign": _sample("benign", n_benign, BENIGN_TASKS, BENIGN_TEMPLATES, rng("benign")),
    }


# --- JSONL I/O -----------------------------------------------------------------------------------


def _nonblank_lines(path: Path) -> Iterable[tuple[int, str]]:
    with path.open("rb") as f:
        for lineno, raw in enumerate(f, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise PromptFileError(f"{path}:{lineno}: not valid UTF-8 ({e.reason})") from e
            if line.strip():
                yield lineno, line


def _read_utf8(path: Path) -> str:
    """The whole file as text; invalid UTF-8 is an error naming ``file:line``."""
    raw = path.read_bytes()
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw.count(b"\n", 0, e.start) + 1
        raise PromptFileError(f"{path}:{line}: not valid UTF-8 ({e.reason})") from e


def _loads(text: str, loc: str) -> Any:
    """``json.loads`` with errors (malformed, nested too deeply) naming ``loc``."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise PromptFileError(f"{loc}: invalid JSON: {e.msg}") from e
    except RecursionError as e:
        raise PromptFileError(f"{loc}: invalid JSON: nested too deeply") from e


def _duplicate_check(rows: Sequence[PromptRow], where: Sequence[str]) -> None:
    first: dict[str, str] = {}
    for row, loc in zip(rows, where, strict=True):
        if row.id in first:
            raise PromptFileError(f"{loc}: duplicate id {row.id!r} (first at {first[row.id]})")
        first[row.id] = loc


def read_prompts(path: str | os.PathLike[str]) -> list[PromptRow]:
    """Read and validate a prompt JSONL file in the schema above (blank lines are skipped).

    Raises :class:`PromptFileError` naming ``file:line`` for malformed JSON, a line that is not an
    object, missing or extra keys, a non-string or empty prompt, bad meta, a duplicate id (both
    lines named), or a file with no rows.
    """
    p = Path(path)
    rows: list[PromptRow] = []
    where: list[str] = []
    for lineno, line in _nonblank_lines(p):
        loc = f"{p}:{lineno}"
        obj = _loads(line, loc)
        if not isinstance(obj, dict):
            raise PromptFileError(f"{loc}: expected a JSON object, got {type(obj).__name__}")
        missing, extra = _ROW_KEYS - obj.keys(), obj.keys() - _ROW_KEYS
        if missing or extra:
            parts = [f"missing keys {sorted(missing)}"] if missing else []
            parts += [f"unexpected keys {sorted(extra)}"] if extra else []
            raise PromptFileError(f"{loc}: {'; '.join(parts)}")
        try:
            rows.append(PromptRow(id=obj["id"], prompt=obj["prompt"], meta=obj["meta"]))
        except ValueError as e:
            raise PromptFileError(f"{loc}: {e}") from e
        where.append(loc)
    if not rows:
        raise PromptFileError(f"{p}:1: file has no prompts")
    _duplicate_check(rows, where)
    return rows


def write_prompts(rows: Sequence[PromptRow], path: str | os.PathLike[str]) -> None:
    """Write rows as JSONL atomically: a temp file in the same directory, fsync, ``os.replace``.

    A reader never sees a half-written file, and a crash leaves the previous file intact.
    Duplicate ids are refused so what is written always reads back.
    """
    p = Path(path)
    _duplicate_check(rows, [f"row {i}" for i in range(len(rows))])
    with atomic_path(p) as tmp, tmp.open("w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row.to_dict(), ensure_ascii=False) + "\n")


def shipped_prompts(name: str) -> list[PromptRow]:
    """A prompt set shipped with steerlab, by name: ``harm_train``, ``harm_test`` or ``benign``."""
    if not is_shipped("prompts", name):
        names = ", ".join(shipped_names("prompts"))
        raise PromptFileError(f"no shipped prompt set {name!r} (shipped: {names})")
    with local_path("prompts", name) as path:
        return read_prompts(path)


# --- ingest of user files ------------------------------------------------------------------------


def _row_from_object(obj: Any, loc: str, default_id: str) -> PromptRow:
    """Normalize one user record (a string, or an object with flat and/or nested meta)."""
    if isinstance(obj, str):
        obj = {"prompt": obj}
    if not isinstance(obj, dict):
        raise PromptFileError(f"{loc}: expected a string or an object, got {type(obj).__name__}")
    extra = obj.keys() - _INGEST_KEYS
    if extra:
        raise PromptFileError(f"{loc}: unexpected keys {sorted(extra)}")
    if "prompt" not in obj:
        raise PromptFileError(f"{loc}: missing key 'prompt'")
    nested = obj.get("meta", {})
    if not isinstance(nested, dict):
        raise PromptFileError(f"{loc}: meta must be an object, got {type(nested).__name__}")
    meta: dict[str, Any] = {"family": "unknown", "style": "unknown", "template": "user"}
    meta.update(nested)
    for key in META_KEYS:
        value = obj.get(key)
        if value in (None, ""):
            continue
        if key in nested and nested[key] != value:
            raise PromptFileError(f"{loc}: {key!r} given twice with different values")
        meta[key] = value
    row_id = obj.get("id")
    if row_id in (None, ""):
        row_id = default_id
    try:
        return PromptRow(id=row_id, prompt=obj["prompt"], meta=meta)
    except ValueError as e:
        raise PromptFileError(f"{loc}: {e}") from e


def _ingest_csv(p: Path, split: str) -> tuple[list[PromptRow], list[str]]:
    text = _read_utf8(p).removeprefix("\ufeff")
    reader = csv.DictReader(io.StringIO(text, newline=""))
    try:
        return _csv_rows(p, split, reader)
    except csv.Error as e:  # e.g. a field over the csv module's size limit
        # line_num counts the lines of finished records; the bad one starts on the next
        raise PromptFileError(f"{p}:{reader.line_num + 1}: malformed CSV ({e})") from e


def _csv_rows(
    p: Path, split: str, reader: csv.DictReader[str]
) -> tuple[list[PromptRow], list[str]]:
    rows: list[PromptRow] = []
    where: list[str] = []
    header = reader.fieldnames
    if not header:
        raise PromptFileError(f"{p}:1: empty CSV file")
    if "prompt" not in header:
        raise PromptFileError(f"{p}:1: CSV header needs a 'prompt' column, got {header}")
    extra = set(header) - {"prompt", "id", *META_KEYS}
    if extra:
        raise PromptFileError(f"{p}:1: unexpected CSV columns {sorted(extra)}")
    for i, record in enumerate(reader, start=1):
        loc = f"{p}:{reader.line_num}"
        if None in record:  # DictReader stores surplus fields under the key None
            raise PromptFileError(f"{loc}: more fields than header columns")
        obj = {k: v for k, v in record.items() if v is not None}
        rows.append(_row_from_object(obj, loc, f"{split}_{i:04d}"))
        where.append(loc)
    return rows, where


def _ingest_json(p: Path, split: str) -> tuple[list[PromptRow], list[str]]:
    text = _read_utf8(p)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise PromptFileError(f"{p}:{e.lineno}: invalid JSON: {e.msg}") from e
    except RecursionError as e:
        raise PromptFileError(f"{p}: invalid JSON: nested too deeply") from e
    if not isinstance(data, list):
        raise PromptFileError(f"{p}: expected a JSON list, got {type(data).__name__}")
    where = [f"{p}[{i}]" for i in range(len(data))]
    rows = [_row_from_object(o, where[i], f"{split}_{i + 1:04d}") for i, o in enumerate(data)]
    return rows, where


def _ingest_jsonl(p: Path, split: str) -> tuple[list[PromptRow], list[str]]:
    rows: list[PromptRow] = []
    where: list[str] = []
    for lineno, line in _nonblank_lines(p):
        loc = f"{p}:{lineno}"
        obj = _loads(line, loc)
        rows.append(_row_from_object(obj, loc, f"{split}_{len(rows) + 1:04d}"))
        where.append(loc)
    return rows, where


def ingest(path: str | os.PathLike[str], split: str) -> list[PromptRow]:
    """Convert a user's ``.csv``, ``.json`` or ``.jsonl`` prompt file into :class:`PromptRow` s.

    CSV needs a ``prompt`` column; ``id``, ``family``, ``style``, ``template`` are optional.
    JSON is a list of strings or of objects; JSONL is one object a line. Objects take ``prompt``
    plus the optional keys, flat or nested under ``meta`` (so our own files ingest unchanged).
    Missing ids become ``{split}_{i:04d}`` (1-based position); missing meta becomes ``"unknown"``
    (template ``"user"``). Errors are :class:`PromptFileError` naming file and line or index.
    """
    p = Path(path)
    readers = {".csv": _ingest_csv, ".json": _ingest_json, ".jsonl": _ingest_jsonl}
    reader = readers.get(p.suffix.lower())
    if reader is None:
        raise PromptFileError(f"{p}: unsupported extension {p.suffix!r}; use .csv, .json, .jsonl")
    rows, where = reader(p, split)
    if not rows:
        raise PromptFileError(f"{p}: file has no prompts")
    _duplicate_check(rows, where)
    return rows


# --- entry point ---------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> None:
    """Write the three generated splits: ``python -m steerlab.tasks.prompts --out-dir DIR``."""
    ap = argparse.ArgumentParser(description=main.__doc__)
    ap.add_argument("--out-dir", type=Path, default=Path("data/prompts"))
    ap.add_argument("--n-train", type=int, default=150)
    ap.add_argument("--n-test", type=int, default=150)
    ap.add_argument("--n-benign", type=int, default=200)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    sets = generate_prompt_sets(args.n_train, args.n_test, args.n_benign, args.seed)
    for split, rows in sets.items():
        out = args.out_dir / f"{split}.jsonl"
        write_prompts(rows, out)
        print(f"wrote {len(rows)} prompts to {out}")


if __name__ == "__main__":
    main()
