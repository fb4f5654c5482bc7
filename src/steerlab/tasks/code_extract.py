"""Pulling a program out of a model's reply to a code task; pure string work, no execution.

Two kinds of reply, matching the two prompt modes of :mod:`steerlab.tasks.code`:

* **chat**: the model answers in prose and code. The code is the fenced block that defines the
  entry point, else the first ````` ``python`` block, else the first unlabeled one that holds code;
  a fence the model never closed (it hit the token cap) runs to the end of the reply. Without
  fences, the code is the run of code-looking lines (``def``, ``import``, indented lines,
  assignments) that starts at a ``def``/``import`` line after any prose. Calls, asserts and
  ``if __name__ == ...`` blocks at top level after the entry point's definition (the model's
  example usage) are dropped, and so is a trailing top-level statement cut off mid-way when that
  makes the program parse. Code cut off inside the function is kept as written.
* **completion**: the model continues the prompt, which ends inside the function (after the
  HumanEval docstring, or the stub :func:`~steerlab.tasks.code.build_prompt` writes). The body is
  every line up to the first non-blank line at column 0 (a second ``def``, ``if __name__``,
  ``print(``, a closing fence, prose), as with the stop sequences of the HumanEval paper, and the
  prompt is put back in front of it. A reply that restarts at column 0 instead (a whole function,
  a fenced block) is read as a chat reply.

Code holding only an indented function body goes under the prompt's signature; a full
definition of the entry point gets the prompt's preamble (the imports and helpers written before
its ``def``) in front of it, in completion mode and for HumanEval in chat mode. A reply with no
code gives ``""``.
"""

from __future__ import annotations

import ast
import re
import textwrap
from dataclasses import dataclass

#: Fence labels read as Python; an unlabeled fence counts too, after the labeled ones.
PYTHON_LABELS: frozenset[str] = frozenset({"python", "python3", "py", "py3"})

# A line that starts a piece of code after prose.
_START = re.compile(r"(?:async\s+def|def|class)\s+\w+|import\s+\w|from\s+[\w.]+\s+import\s|@\w")
# A line at the code's own indentation that still reads as code (not prose).
_CODE = re.compile(
    r"""(?:async\s+def|def|class)\s+\w+|import\s+\w|from\s+[\w.]+\s+import\s|@\w|\#
    |(?:if|elif|while|with|try|except|finally|else)\b.*:\s*(?:\#.*)?$
    |for\s+[\w, ()]+\s+in\s.*:\s*(?:\#.*)?$
    |(?:return|assert|raise|pass|break|continue)\b
    |[A-Za-z_][\w.]*(?:\[.*\])?\s*(?:[-+*/%|&^@]|//|\*\*|<<|>>)?=(?!=)
    |[A-Za-z_][\w.]*\s*\(|[A-Za-z_][\w.]*\s*:\s*[\w.\[\], ]+=|[)\]}]""",
    re.VERBOSE,
)


def syntax_ok(code: str) -> bool:
    """Whether ``code`` is non-empty and parses as Python (nothing is run)."""
    if not code.strip():
        return False
    try:
        ast.parse(code)
    except (SyntaxError, ValueError):  # ValueError: a NUL byte in the source
        return False
    return True


@dataclass(frozen=True)
class _Block:
    label: str  # the fence's language tag, lower case ("" when unlabeled)
    code: str
    closed: bool


def _fenced_blocks(text: str) -> list[_Block]:
    """Every ````` ``-fenced block in order; an unclosed last fence runs to the end."""
    blocks: list[_Block] = []
    label: str | None = None  # None: outside a fence
    body: list[str] = []
    for line in text.splitlines(keepends=True):
        stripped = line.strip()
        if label is None:
            if stripped.startswith("```"):
                words = stripped[3:].split()
                label = words[0].lower() if words else ""
                body = []
        elif stripped.startswith("```"):
            blocks.append(_Block(label, "".join(body), closed=True))
            label = None
        else:
            body.append(line)
    if label is not None:
        blocks.append(_Block(label, "".join(body), closed=False))
    return blocks


def _def_pattern(entry_point: str) -> re.Pattern[str]:
    """The line defining ``entry_point`` at column 0 (a function or a class)."""
    return re.compile(rf"^(?:async\s+def|def|class)\s+{re.escape(entry_point)}\b", re.MULTILINE)


def defines(code: str, entry_point: str) -> bool:
    """Whether ``code`` has a top-level ``def``/``class`` named ``entry_point``."""
    return _def_pattern(entry_point).search(code) is not None


def _bare_regions(text: str) -> list[str]:
    """Runs of code-looking lines in unfenced text, each dedented to column 0.

    A run starts at a ``def``/``class``/``import`` line (at any indentation ``base``) and goes on
    through blank lines, lines indented deeper than ``base``, and lines at ``base`` that match
    :data:`_CODE`; the first other line (prose, a fence) ends it.
    """
    lines = text.splitlines(keepends=True)
    regions: list[str] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        stripped = line.lstrip(" \t")
        if not _START.match(stripped):
            i += 1
            continue
        base = len(line) - len(stripped)
        j = i + 1
        while j < len(lines):
            cur = lines[j]
            rest = cur.lstrip(" \t")
            indent = len(cur) - len(rest)
            if rest.strip() and (indent < base or (indent == base and not _CODE.match(rest))):
                break
            j += 1
        regions.append(textwrap.dedent("".join(lines[i:j])).strip("\n") + "\n")
        i = j
    return regions


def _choose(candidates: list[str], entry_point: str) -> str:
    """The first candidate defining the entry point, else the first one, else ``""``."""
    for code in candidates:
        if defines(code, entry_point):
            return code
    return candidates[0] if candidates else ""


def _looks_like_code(text: str) -> bool:
    return syntax_ok(text) or any(_START.match(line.lstrip()) for line in text.splitlines())


def _find_code(output: str, entry_point: str) -> str:
    """The code in a chat reply: a fenced block, or bare code after prose."""
    blocks = _fenced_blocks(output)
    labeled = [b.code for b in blocks if b.label in PYTHON_LABELS and b.code.strip()]
    # an unlabeled fence may hold prose (a model closing a fence it never opened, then talking)
    unlabeled = [b.code for b in blocks if b.label == "" and _looks_like_code(b.code)]
    for code in labeled + unlabeled:
        if defines(code, entry_point):
            return code
    if labeled or unlabeled:
        return (labeled or unlabeled)[0]
    return _choose(_bare_regions(output), entry_point)


def _is_example_usage(node: ast.stmt) -> bool:
    """A top-level statement that only exercises the code: a call, an assert, a main guard."""
    if isinstance(node, ast.Assert):
        return True
    if isinstance(node, ast.Expr) and isinstance(node.value, (ast.Call, ast.Await)):
        return True
    if isinstance(node, ast.If):
        names = {n.id for n in ast.walk(node.test) if isinstance(n, ast.Name)}
        return "__name__" in names
    return False


def _drop_example_usage(code: str, entry_point: str) -> str:
    """``code`` without the example usage after the entry point's definition (if it parses)."""
    try:
        tree = ast.parse(code)
    except (SyntaxError, ValueError):
        return code
    lines = code.splitlines(keepends=True)
    seen_entry = False
    drop: list[tuple[int, int]] = []  # 0-based [start, end) line ranges
    for node in tree.body:
        if seen_entry and _is_example_usage(node):
            start = min([node.lineno] + [d.lineno for d in getattr(node, "decorator_list", [])])
            drop.append((start - 1, node.end_lineno or node.lineno))
        if (
            isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))
            and node.name == entry_point
        ):
            seen_entry = True
    if not drop:
        return code
    keep = [line for k, line in enumerate(lines) if not any(a <= k < b for a, b in drop)]
    return "".join(keep).rstrip() + "\n"


def _drop_cut_tail(code: str, entry_point: str) -> str:
    """If ``code`` does not parse, drop trailing top-level statements after the entry point's
    definition until it does (the reply was cut off in its example usage); else ``code``."""
    if syntax_ok(code):
        return code
    found = _def_pattern(entry_point).search(code)
    if found is None:
        return code
    head = code.count("\n", 0, found.start())  # the def's 0-based line
    lines = code.splitlines(keepends=True)
    starts = [
        k
        for k in range(head + 1, len(lines))
        if lines[k][:1] not in ("", " ", "\t", "\n", "\r", "#", ")", "]", "}")
    ]
    for k in reversed(starts):
        shorter = "".join(lines[:k]).rstrip() + "\n"
        if syntax_ok(shorter):
            return shorter
    return code


def preamble(prompt: str, entry_point: str) -> str:
    """What ``prompt`` writes before its ``def`` of ``entry_point`` (imports, helpers)."""
    found = list(_def_pattern(entry_point).finditer(prompt))
    return prompt[: found[-1].start()] if found else ""


def _combine(code: str, prompt: str, entry_point: str, keep_preamble: bool) -> str:
    """Put ``code`` together with the prompt it answers.

    A definition of the entry point gets the prompt's preamble in front (if ``keep_preamble``);
    code that starts indented is a function body and goes under the whole prompt; anything else
    is returned as it is.
    """
    if not code.strip():
        return ""
    if defines(code, entry_point):
        return (preamble(prompt, entry_point) if keep_preamble else "") + code
    first = next(line for line in code.splitlines() if line.strip())
    if first[:1] in (" ", "\t"):
        return prompt + code.rstrip() + "\n"
    return code


def extract_chat(output: str, entry_point: str, prompt: str, keep_preamble: bool) -> str:
    """The program in a chat reply; ``prompt`` is the completion-style prompt of the task, used
    to complete a reply holding only a body, or (``keep_preamble``) a definition without the
    imports the task's prompt gave."""
    code = _find_code(output, entry_point)
    if not code.strip():
        return ""
    code = _drop_cut_tail(code.strip("\n") + "\n", entry_point)
    code = _drop_example_usage(code, entry_point)
    return _combine(code, prompt, entry_point, keep_preamble)


def extract_completion(output: str, prompt: str, entry_point: str) -> str:
    """The program from a continuation of ``prompt``: the prompt plus the body up to the first
    line at column 0; a reply that restarts at column 0 is read as a chat reply."""
    if not output.strip():
        return ""
    lines = output.splitlines(keepends=True)
    kept: list[str] = []
    if not prompt.endswith("\n"):
        kept.append(lines.pop(0))  # finishes the prompt's last line (``def f(`` -> ``x):``)
    else:
        first = next(line for line in lines if line.strip())
        if first[:1] not in (" ", "\t"):
            return extract_chat(output, entry_point, prompt, keep_preamble=True)
    for line in lines:
        if line.strip() and line[:1] not in (" ", "\t"):
            break
        kept.append(line)
    body = "".join(kept).rstrip()
    return prompt + body + "\n" if body.strip() else ""
