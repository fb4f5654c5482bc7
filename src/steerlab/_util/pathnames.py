"""Names that become path components (run ids, split names) stay inside their directory."""

from __future__ import annotations

import re
from pathlib import Path

from steerlab.errors import SteerlabError

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


def check_name(name: str, what: str) -> str:
    """``name`` if it is one plain path component (letters, digits, ``._-``; no ``/``, no
    ``..``, not absolute), else one clear error naming ``what``."""
    if not _NAME.match(name) or ".." in name:
        raise SteerlabError(
            f"{what} {name!r} must be a plain name (letters, digits, '.', '_', '-'; at most 128 "
            "characters, no '/' or '..'): it names a file or directory inside the output folder"
        )
    return name


def check_not_input(out: Path, inputs: dict[str, Path | None]) -> None:
    """Refuse an output path that is one of the inputs (it would be overwritten)."""
    target = out.resolve()
    for what, path in inputs.items():
        if path is not None and Path(path).resolve() == target:
            raise SteerlabError(f"--out {out} is the {what} file: choose another output path")
