"""JSONL reading and atomic writing with errors that name ``file:line``."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from steerlab._util.io import atomic_path
from steerlab.errors import SteerlabError


class JsonlError(SteerlabError):
    """A JSONL file is missing or malformed; the message names ``file:line``."""


def read_jsonl(path: str | Path) -> list[tuple[int, dict[str, Any]]]:
    """``(line_number, object)`` for every non-blank line; each line must be a JSON object."""
    path = Path(path)
    if not path.is_file():
        raise JsonlError(f"{path}: no such file")
    rows: list[tuple[int, dict[str, Any]]] = []
    with path.open("rb") as f:
        for n, raw in enumerate(f, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise JsonlError(f"{path}:{n}: not valid UTF-8 ({e.reason})") from e
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise JsonlError(f"{path}:{n}: malformed JSON ({e.msg})") from e
            except RecursionError as e:
                raise JsonlError(f"{path}:{n}: malformed JSON (nested too deeply)") from e
            if not isinstance(obj, dict):
                raise JsonlError(f"{path}:{n}: expected a JSON object, got {type(obj).__name__}")
            rows.append((n, obj))
    if not rows:
        raise JsonlError(f"{path}: the file has no rows")
    return rows


def read_field(path: str | Path, *names: str) -> list[str]:
    """The first present field among ``names`` of every line, as a non-empty string."""
    out = []
    for n, obj in read_jsonl(path):
        key = next((k for k in names if k in obj), None)
        if key is None:
            raise JsonlError(f"{path}:{n}: missing field {' or '.join(repr(k) for k in names)}")
        value = obj[key]
        if not isinstance(value, str) or not value.strip():
            raise JsonlError(f"{path}:{n}: field {key!r} must be a non-empty string")
        out.append(value)
    return out


def write_jsonl(path: str | Path, rows: Iterable[Mapping[str, Any]]) -> None:
    """Write all rows atomically: readers never see a half-written file."""
    with atomic_path(path) as tmp, tmp.open("w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False, allow_nan=False) + "\n")
