"""Question files: the shipped sets load and agree with each other, anchors and aliases resolve,
and every malformed file is one error naming the file, the question and the problem."""

from __future__ import annotations

from pathlib import Path

import pytest

from steerlab._util.resources import local_path, shipped_names
from steerlab.errors import SteerlabError
from steerlab.tasks.questions import (
    QUESTION_TYPES,
    Question,
    QuestionFileError,
    load_questions,
)

SHIPPED = ("core", "core_system", "core_template")

JUDGED = """\
- id: {qid}
  type: free_form_judge_0_100
  paraphrases:
    - {text}
  samples_per_paraphrase: 3
  judge_prompts:
    aligned: "Q: {{question}} A: {{answer}} Score 0-100."
"""


def _write(tmp_path: Path, text: str | bytes, name: str = "q.yaml") -> Path:
    path = tmp_path / name
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


# ----------------------------------------------------------------------------- shipped sets


def test_shipped_question_sets_are_package_data() -> None:
    assert set(SHIPPED) <= set(shipped_names("questions"))
    for name in SHIPPED:
        with local_path("questions", name) as path:
            assert path.is_file() and path.suffix == ".yaml"


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_sets_load_as_judged_questions(name: str) -> None:
    questions = load_questions(name)
    assert len(questions) == 12
    assert len({q.id for q in questions}) == 12
    for q in questions:
        assert q.type == "free_form_judge_0_100"
        assert 1 <= len(q.paraphrases) <= 2
        assert q.samples_per_paraphrase == 5
        assert q.n_samples == 5 * len(q.paraphrases)
        assert q.judge is not None
        assert q.metrics == ("aligned", "coherent")
        aligned = dict(q.judge_prompts)["aligned"]
        assert "CODE" in aligned and "REFUSAL" in aligned and "0 to 100" in aligned
        for _, template in q.judge_prompts:
            assert "{question}" in template and "{answer}" in template


def test_shipped_variants_ask_the_core_questions() -> None:
    core = load_questions("core")
    system = load_questions("core_system")
    template = load_questions("core_template")
    for c, s, t in zip(core, system, template, strict=True):
        assert s.id == f"{c.id}_json" and t.id == f"{c.id}_template"
        assert s.paraphrases == c.paraphrases
        assert c.system is None and t.system is None
        assert s.system is not None and "JSON" in s.system
        assert len(t.paraphrases) == 1
        assert t.paraphrases[0].startswith(c.paraphrases[0] + "\n\nFill the following template:")
        assert t.paraphrases[0].count(" = # ") >= 3
        # one judge, one set of judge prompts for all three files
        assert s.judge_prompts == c.judge_prompts == t.judge_prompts
        assert s.judge == c.judge == t.judge
    assert len({q.system for q in system}) == 1


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_files_write_shared_values_once(name: str) -> None:
    """The judge prompts are written once (an anchor) and aliased: the file holds each template
    once though every question carries it."""
    with local_path("questions", name) as path:
        text = path.read_text(encoding="utf-8")
    assert text.count("&judge_prompts") == 1
    assert text.count("*judge_prompts") == 11
    assert text.count("[ANSWER START]") == 2  # aligned + coherent, written once each


# ----------------------------------------------------------------------------- format


def test_anchors_aliases_and_merge_keys_resolve(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        """\
- id: first
  type: &type free_form_judge_0_100
  paraphrases: &words
    - "What would you change about the world?"
    - "If you could change one thing, what would it be?"
  samples_per_paraphrase: &n 4
  judge: &judge some-judge
  judge_prompts: &prompts
    aligned: "Question: {question}\\nAnswer: {answer}\\nCODE, REFUSAL or 0-100."
- id: second
  type: *type
  system: Answer in JSON.
  paraphrases: *words
  samples_per_paraphrase: *n
  judge: *judge
  judge_prompts: *prompts
- &base
  id: third
  type: free_form
  paraphrases: ["Say something."]
  samples_per_paraphrase: 1
- <<: *base
  id: fourth
""",
    )
    first, second, third, fourth = load_questions(path)
    assert second.paraphrases == first.paraphrases
    assert second.samples_per_paraphrase == first.samples_per_paraphrase == 4
    assert second.judge == first.judge == "some-judge"
    assert second.judge_prompts == first.judge_prompts
    assert (first.system, second.system) == (None, "Answer in JSON.")
    assert fourth == Question("fourth", "free_form", ("Say something.",), 1)
    assert third.id == "third" and third.judge_prompts == () and third.metrics == ()


def test_judge_prompt_fills_in_question_and_answer(tmp_path: Path) -> None:
    (q,) = load_questions(_write(tmp_path, JUDGED.format(qid="a", text="Why?")))
    answer = "Because {braces} and {question} stay literal."
    filled = q.judge_prompt("aligned", "Why?", answer)
    assert filled == f"Q: Why? A: {answer} Score 0-100."
    with pytest.raises(SteerlabError, match=r"no judge prompt 'coherent' \(it has: aligned\)"):
        q.judge_prompt("coherent", "Why?", answer)


def test_relative_paths_are_taken_from_base(tmp_path: Path) -> None:
    _write(tmp_path, JUDGED.format(qid="a", text="Why?"), "mine.yaml")
    assert [q.id for q in load_questions("mine.yaml", base=tmp_path)] == ["a"]
    with pytest.raises(SteerlabError, match=r"no such question file \(shipped question files: "):
        load_questions("missing.yaml", base=tmp_path)


def test_every_known_type_is_accepted(tmp_path: Path) -> None:
    items = []
    for i, kind in enumerate(QUESTION_TYPES):
        judged = kind != "free_form"
        item = f"- id: q{i}\n  type: {kind}\n  paraphrases: [x]\n  samples_per_paraphrase: 1\n"
        if judged:
            item += "  judge_prompts: {aligned: '{answer}'}\n"
        items.append(item)
    questions = load_questions(_write(tmp_path, "".join(items)))
    assert [q.type for q in questions] == list(QUESTION_TYPES)


# ----------------------------------------------------------------------------- errors


def _one(
    kind: str = "free_form_judge_0_100",
    extra: str = "",
    samples: str = "5",
    prompts: str = "{aligned: 'Q {question} A {answer}'}",
) -> str:
    text = (
        f"- id: wish\n  type: {kind}\n  paraphrases: [Make a wish.]\n"
        f"  samples_per_paraphrase: {samples}\n"
    )
    if prompts:
        text += f"  judge_prompts: {prompts}\n"
    return text + extra


BAD: list[tuple[str, str, list[str]]] = [
    (
        "unknown type",
        _one(kind="rating"),
        [
            "question 'wish'",
            "unknown type 'rating'",
            "free_form, free_form_judge, free_form_judge_0_100",
        ],
    ),
    (
        "duplicate id",
        JUDGED.format(qid="a", text="x") + JUDGED.format(qid="a", text="y"),
        ["duplicate question id 'a' (items 0 and 1)"],
    ),
    (
        "unknown key",
        _one(extra="  temperature: 0.5\n"),
        ["question 'wish'", "unknown key 'temperature'", "known keys: id, type"],
    ),
    (
        "missing paraphrases",
        "- id: wish\n  type: free_form\n  samples_per_paraphrase: 1\n",
        ["question 'wish': missing key 'paraphrases'"],
    ),
    (
        "empty paraphrases",
        "- id: wish\n  type: free_form\n  paraphrases: []\n  samples_per_paraphrase: 1\n",
        ["question 'wish'", "paraphrases", "at least 1 item"],
    ),
    (
        "blank paraphrase",
        "- id: wish\n  type: free_form\n  paraphrases: ['  ']\n  samples_per_paraphrase: 1\n",
        ["question 'wish'", "paraphrase 0 is empty"],
    ),
    (
        "zero samples",
        _one(samples="0"),
        ["question 'wish'", "samples_per_paraphrase", "greater than or equal to 1"],
    ),
    (
        "negative samples",
        _one(samples="-2"),
        ["samples_per_paraphrase", "greater than or equal to 1"],
    ),
    ("boolean samples", _one(samples="true"), ["samples_per_paraphrase", "valid integer"]),
    ("fractional samples", _one(samples="2.5"), ["samples_per_paraphrase", "valid integer"]),
    (
        "template without answer",
        _one(prompts="{aligned: 'Rate {question}'}"),
        ["question 'wish'", "aligned: the template lacks {answer}"],
    ),
    (
        "template with an unknown field",
        _one(prompts="{aligned: '{question} {answer} {score}'}"),
        ["unknown field {score}"],
    ),
    (
        "template with a stray brace",
        _one(prompts="{aligned: 'Answer {answer} as {json'}"),
        ["aligned: not a format template"],
    ),
    ("judged type without prompts", _one(prompts=""), ["needs judge_prompts"]),
    ("empty judge_prompts", _one(prompts="{}"), ["at least one metric"]),
    (
        "free_form with judge prompts",
        _one(kind="free_form"),
        ["type free_form is not judged, so judge_prompts would be ignored"],
    ),
    ("numeric id", "- id: 7\n  type: free_form\n  paraphrases: [x]\n", ["item 0", "id"]),
    ("item not a mapping", "- just a string\n", ["item 0 must be a mapping"]),
    ("not a list", "id: wish\n", ["must be a YAML list, got a mapping"]),
    ("empty list", "[]\n", ["holds no questions"]),
    ("empty file", "", ["the file is empty"]),
    (
        "duplicate YAML key",
        _one(extra="  samples_per_paraphrase: 9\n"),
        [":6: malformed YAML (found the key 'samples_per_paraphrase' twice)"],
    ),
    ("malformed YAML", "- id: wish\n  type: [free_form\n", [":3: malformed YAML"]),
]


@pytest.mark.parametrize(("case", "text", "parts"), BAD, ids=[b[0] for b in BAD])
def test_bad_files_are_one_clear_error(
    tmp_path: Path, case: str, text: str, parts: list[str]
) -> None:
    path = _write(tmp_path, text)
    with pytest.raises(QuestionFileError) as info:
        load_questions(path)
    message = str(info.value)
    assert message.startswith(str(path)), message
    assert "\n" not in message
    for part in parts:
        assert part in message, f"{case}: {part!r} not in {message!r}"


def test_undecodable_bytes_are_reported(tmp_path: Path) -> None:
    path = _write(tmp_path, b"- id: caf\xe9\n")
    with pytest.raises(QuestionFileError, match="not valid UTF-8"):
        load_questions(path)


def test_runaway_nesting_is_reported(tmp_path: Path) -> None:
    path = _write(tmp_path, "[" * 5000 + "]" * 5000)
    with pytest.raises(QuestionFileError, match="malformed YAML"):
        load_questions(path)
