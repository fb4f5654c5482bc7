"""Small number and markdown formatters shared by the write-ups."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any


def isnan(x: Any) -> bool:
    try:
        return math.isnan(float(x))
    except (TypeError, ValueError):
        return True


def pct(x: Any) -> str:
    """A rate as a percentage: ``0.453 -> "45.3%"``; NaN/None -> ``"n/a"``."""
    return "n/a" if isnan(x) else f"{100 * float(x):.1f}%"


def pct_ci(m: Any, lo: Any, hi: Any) -> str:
    """``"45.3% [38.0, 52.1]"``: a rate with its interval in percent."""
    if isnan(m):
        return "n/a"
    if isnan(lo) or isnan(hi):
        return pct(m)
    return f"{pct(m)} [{100 * float(lo):.1f}, {100 * float(hi):.1f}]"


def _pp(x: Any) -> str:
    # round first, then add 0.0: a bound of -1e-17 (bootstrap interpolation) prints +0.0, not -0.0
    return f"{round(100 * float(x), 1) + 0.0:+.1f}"


def pp_ci(d: Any, lo: Any, hi: Any) -> str:
    """A rate difference in percentage points: ``"+12.0 pp [+5.0, +19.0]"``."""
    if isnan(d):
        return "n/a"
    if isnan(lo) or isnan(hi):
        return f"{_pp(d)} pp"
    return f"{_pp(d)} pp [{_pp(lo)}, {_pp(hi)}]"


def table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A GitHub-markdown table (cells are converted with ``str``, pipes escaped)."""

    def cell(x: Any) -> str:
        return str(x).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(cell(h) for h in header) + " |"]
    lines.append("|" + "|".join("---" for _ in header) + "|")
    lines += ["| " + " | ".join(cell(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


def quote(text: str, limit: int = 1200) -> str:
    """``text`` as a markdown blockquote (every line prefixed), cut at ``limit`` characters."""
    text = str(text)
    if len(text) > limit:
        text = text[:limit] + " […]"
    if not text.strip():
        return "> *(empty completion)*"
    return "\n".join("> " + line if line.strip() else ">" for line in text.splitlines())


def phrases(values: Any) -> str:
    """Matched-phrase lists (list, numpy array or None) as ``"a", "b"`` or ``—``."""
    if values is None or isinstance(values, float):
        return "—"
    if isinstance(values, str):
        return f"“{values}”"
    items = [str(v) for v in values]
    return ", ".join(f"“{v}”" for v in items) if items else "—"
