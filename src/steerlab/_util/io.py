"""Atomic file writes: write to a temp name in the same directory, fsync, then rename."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success it replaces ``path`` atomically.

    On an exception the temporary file is removed, ``path`` is left untouched (readers never see
    a half-written file) and the folders made for it are removed again.
    """
    path = Path(path)
    made = [p for p in (path.parent, *path.parent.parents) if not p.exists()]
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp: Path | None = None
    done = False
    try:
        # inside the try, so an interrupt (SIGINT/SIGTERM) right after mkstemp leaves no file
        fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        tmp = Path(tmp_name)
        os.close(fd)
        yield tmp
        # mkstemp creates 0600; a finished file gets the mode any new file would get (0666 & ~umask)
        os.chmod(tmp, 0o666 & ~_umask())
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
        done = True
    except OSError as e:
        # the temp name is ours, not the user's: report the path they asked for (os.replace
        # names both; mkstemp fails before ``tmp`` is set, naming a candidate temp name)
        ours = str(tmp) if tmp is not None else None
        if e.filename is None and e.errno is not None:  # a failed write names no file
            raise type(e)(e.errno, e.strerror, str(path)) from e
        if isinstance(e.filename, str) and (
            e.filename == ours or Path(e.filename).name.startswith(f".{path.name}.")
        ):
            raise type(e)(e.errno, e.strerror, str(path)) from e
        raise
    finally:
        if tmp is not None:
            tmp.unlink(missing_ok=True)
        if not done:
            for folder in made:  # deepest first; one still holding something stays
                try:
                    folder.rmdir()
                except OSError:
                    break


def _umask() -> int:
    """The process umask (read by setting and restoring it; there is no getter)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write_text(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
