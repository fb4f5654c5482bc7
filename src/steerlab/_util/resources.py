"""Files shipped inside the package: pipeline configs, prompt sets, questions, steering configs,
code task sets, classification tasks (a task config ``classify/<name>.yaml`` with the data it
names beside it).

They live under ``steerlab/data/<kind>/`` and are found through :mod:`importlib.resources`, so
they are there wherever steerlab is installed and whatever the working directory is. A shipped
file is named by its stem, without directory or extension: the config ``fast``, the prompt set
``harm_train``.

Where a user names a file (``--config``, a prompt path inside a config), :func:`resolve` looks for
the user's file first, relative to where they said, and only then for a shipped file of that
name; it returns an absolute path or a shipped name, so the result means the same thing from any
working directory. :func:`local_path` turns either into a real path to read.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from importlib.resources import as_file, files
from pathlib import Path
from typing import Any, Literal

from steerlab.errors import SteerlabError

Kind = Literal["classify", "code", "configs", "prompts", "questions", "steering"]
SUFFIX: dict[str, str] = {
    "classify": ".yaml",
    "code": ".jsonl",
    "configs": ".yaml",
    "prompts": ".jsonl",
    "questions": ".yaml",
    "steering": ".yaml",
}
_WHAT = {
    "classify": ("classification task config", "classification tasks"),
    "code": ("code task file", "code task sets"),
    "configs": ("config file", "configs"),
    "prompts": ("prompt file", "prompt sets"),
    "questions": ("question file", "question files"),
    "steering": ("steering config", "steering configs"),
}


def _dir(kind: Kind) -> Any:  # a Traversable (its import path differs across Python versions)
    return files("steerlab") / "data" / kind


def shipped_names(kind: Kind) -> tuple[str, ...]:
    """Names of the shipped files of ``kind``, sorted (``("default", "fast")`` for configs)."""
    suffix = SUFFIX[kind]
    return tuple(
        sorted(p.name[: -len(suffix)] for p in _dir(kind).iterdir() if p.name.endswith(suffix))
    )


def is_shipped(kind: Kind, ref: str | os.PathLike[str]) -> bool:
    """Whether ``ref`` is the bare name (no directory, no extension) of a shipped file."""
    return str(ref) in shipped_names(kind)


@contextlib.contextmanager
def local_path(kind: Kind, ref: str | os.PathLike[str]) -> Iterator[Path]:
    """A real path to read ``ref``: a shipped file if ``ref`` is a shipped name, else ``ref``.

    A shipped file is a temporary copy only while the ``with`` block runs when the package is
    installed zipped; otherwise it is the installed file itself.
    """
    if is_shipped(kind, ref):
        with as_file(_dir(kind) / f"{ref}{SUFFIX[kind]}") as path:
            yield Path(path)
    else:
        yield Path(ref)


def resolve(kind: Kind, ref: str | os.PathLike[str], base: Path | None = None) -> str:
    """What a user's ``ref`` names: an absolute path, or the name of a shipped file.

    A relative ``ref`` is taken relative to ``base`` (default: the working directory). An
    existing file wins over a shipped file of the same name; neither raises
    :class:`~steerlab.errors.SteerlabError` naming the path tried and the shipped names.
    """
    path = Path(ref).expanduser()
    if not path.is_absolute():
        path = (base or Path.cwd()) / path
    if path.is_file():
        return os.path.abspath(path)
    if is_shipped(kind, ref):
        return str(ref)
    what, shipped = _WHAT[kind]
    names = ", ".join(shipped_names(kind))
    raise SteerlabError(f"{path}: no such {what} (shipped {shipped}: {names})")
