"""Judge results cached in memory and in an append-only JSONL file keyed by (model, prompt).

Each result is one line written with a single ``write()`` on an ``O_APPEND`` descriptor, so
threads and processes appending to the same file never interleave, and a run killed mid-line
leaves at most a torn last line, which loading skips.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
from dataclasses import asdict
from pathlib import Path
from typing import Any

from steerlab.errors import SteerlabError
from steerlab.judge.scoring import KINDS, METHODS, JudgeResult

logger = logging.getLogger(__name__)


def cache_key(model: str, prompt: str) -> str:
    """sha256 over (judge model, prompt): the same prompt to another judge is a new entry."""
    blob = json.dumps([model, prompt], ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


def _entry(obj: Any) -> tuple[str, JudgeResult] | None:
    """A cache line back into ``(key, result)``; None for anything this module did not write."""
    if not isinstance(obj, dict) or not isinstance(obj.get("key"), str):
        return None
    score, kind, raw = obj.get("score"), obj.get("kind"), obj.get("raw")
    method, mass = obj.get("method"), obj.get("prob_mass")
    if kind not in KINDS or method not in METHODS or not isinstance(raw, str):
        return None
    if (score is None) != (kind != "score"):
        return None
    for value in (score, mass):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int | float)):
            return None
    result = JudgeResult(
        score=None if score is None else float(score),
        kind=kind,
        raw=raw,
        method=method,
        prob_mass=None if mass is None else float(mass),
    )
    return obj["key"], result


class ResultCache:
    """Thread-safe ``key -> JudgeResult`` map, persisted to ``path`` when one is given."""

    def __init__(self, path: str | Path | None) -> None:
        self.path = None if path is None else Path(path)
        self._lock = threading.Lock()
        self._results: dict[str, JudgeResult] = {}
        self._needs_newline = False
        if self.path is not None:
            self._load(self.path)

    def _load(self, path: Path) -> None:
        if path.is_dir():
            raise SteerlabError(f"judge cache_path {path} is a directory, not a file")
        if not path.exists():
            return
        data = path.read_bytes()
        # a torn last line stays where it is; the next line starts on a fresh one
        self._needs_newline = bool(data) and not data.endswith(b"\n")
        bad = 0
        for line in data.split(b"\n"):
            if not line.strip():
                continue
            try:
                entry = _entry(json.loads(line))
            except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
                entry = None
            if entry is None:
                bad += 1
            else:
                self._results[entry[0]] = entry[1]
        if bad:
            logger.warning("skipped %d unreadable line(s) in judge cache %s", bad, path)

    def __len__(self) -> int:
        with self._lock:
            return len(self._results)

    def __getitem__(self, key: str) -> JudgeResult:
        with self._lock:
            return self._results[key]

    def get(self, key: str) -> JudgeResult | None:
        with self._lock:
            return self._results.get(key)

    def put(self, key: str, model: str, result: JudgeResult) -> None:
        """Remember ``result``; with a file, append it as one line before returning."""
        record = {"key": key, "model": model, **asdict(result)}
        line = json.dumps(record, ensure_ascii=False, allow_nan=False) + "\n"
        with self._lock:
            self._results[key] = result
            if self.path is None:
                return
            if self._needs_newline:
                line = "\n" + line
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
            try:
                os.write(fd, line.encode("utf-8"))  # one write per line: lines never interleave
            finally:
                os.close(fd)
            self._needs_newline = False
