"""Classification tasks: the shipped vulnerability set is sound (every CWE has matched pairs in
both splits, twins differ minimally and give their label away by no surface cue, the C compiles
and the Python parses), configs and data files are checked strictly with errors naming the file
and the key or line, answers are read from hand-written model outputs, and answer words map to
first tokens without two labels sharing one."""

from __future__ import annotations

import ast
import difflib
import json
import re
import shutil
import statistics
import subprocess
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import yaml

from steerlab._util.resources import shipped_names
from steerlab.errors import SteerlabError
from steerlab.tasks.classification import (
    ClassificationTask,
    ClassificationTaskError,
    Example,
    TaskConfig,
    answer_token_ids,
    load_task,
    parse_answer,
    parse_config,
)

REPO = Path(__file__).resolve().parents[2]
CWES = tuple(f"CWE-{n}" for n in (22, 77, 78, 79, 89, 190, 416, 476, 787))


@pytest.fixture(scope="module")
def vuln() -> ClassificationTask:
    return load_task("vuln")


# ----------------------------------------------------------------------------- the shipped set


def test_vuln_is_shipped_and_found_from_the_repository_root(
    vuln: ClassificationTask, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert "vuln" in shipped_names("classify")
    assert vuln.source == "vuln"
    monkeypatch.chdir(REPO)
    by_path = load_task("data/vuln/task.yaml")
    assert by_path.source == str(REPO / "data" / "vuln" / "task.yaml")
    assert by_path.examples == vuln.examples
    assert by_path.config == vuln.config


def test_vuln_counts_per_cwe_and_split(vuln: ClassificationTask) -> None:
    cfg = vuln.config
    assert vuln.groups() == list(CWES)
    assert cfg.labels == ["vulnerable", "secure"]
    assert cfg.positive == "vulnerable"
    assert (cfg.intended.target, cfg.intended.direction) == ("vulnerable", "raise")
    counts = Counter((ex.group, ex.split, ex.label) for ex in vuln.examples)
    for cwe in CWES:
        for label in cfg.labels:
            assert counts[cwe, "build", label] == 3, (cwe, label)
            assert counts[cwe, "eval", label] == 2, (cwe, label)
    assert len(vuln.split("build")) == 54
    assert len(vuln.split("eval")) == 36
    assert len({ex.id for ex in vuln.examples}) == 90


def _pairs(task: ClassificationTask) -> dict[str, dict[str, Example]]:
    out: dict[str, dict[str, Example]] = {}
    for ex in task.examples:
        assert ex.pair is not None, ex.id
        out.setdefault(ex.pair, {})[ex.label] = ex
    return out


def test_vuln_twins_differ_minimally(vuln: ClassificationTask) -> None:
    pairs = _pairs(vuln)
    assert len(pairs) == 45
    secure_longer = 0
    for name, pair in pairs.items():
        bad, good = pair["vulnerable"].text, pair["secure"].text
        assert pair["vulnerable"].split == pair["secure"].split
        assert difflib.SequenceMatcher(None, bad, good).ratio() >= 0.75, name
        assert max(len(bad), len(good)) <= 1.3 * min(len(bad), len(good)), name
        changed = [
            line
            for line in difflib.unified_diff(bad.splitlines(), good.splitlines(), lineterm="")
            if line[:1] in "+-" and not line.startswith(("+++", "---"))
        ]
        assert 1 <= len(changed) <= 6, (name, changed)
        secure_longer += len(good) > len(bad)
    # the fix adds a check in some pairs, so length alone must not give the label away
    assert secure_longer <= 0.7 * len(pairs)
    lengths = {
        label: statistics.mean(len(ex.text) for ex in vuln.examples if ex.label == label)
        for label in vuln.config.labels
    }
    assert abs(lengths["vulnerable"] - lengths["secure"]) <= 0.1 * lengths["vulnerable"]


# at the start of a word or identifier part ("is_safe", "unsafe"; not "suffix")
TELLTALE = re.compile(
    r"(?<![a-z])(?:un|in|not_?)?(?:safe|secur|vuln|fix|bad|good|danger|attack|exploit|sanitiz"
    r"|malicious|evil|hack|inject|overflow|todo|patch|cwe|valid|trust)",
    re.IGNORECASE,
)


def test_vuln_snippets_carry_no_telltale_words_or_comments(vuln: ClassificationTask) -> None:
    for ex in vuln.examples:
        assert not TELLTALE.search(ex.text), (ex.id, TELLTALE.search(ex.text))
        assert "//" not in ex.text.replace("://", "") and "/*" not in ex.text, ex.id
        if _is_python(ex.text):
            assert not any(line.lstrip().startswith("#") for line in ex.text.splitlines())
        assert ex.text == ex.text.strip() and "\t" not in ex.text, ex.id


def _is_python(text: str) -> bool:
    return not text.startswith(("#include", "static ", "struct ")) and "{\n" not in text


def test_vuln_python_parses_and_c_compiles(vuln: ClassificationTask, tmp_path: Path) -> None:
    c_files = []
    for ex in vuln.examples:
        if _is_python(ex.text):
            ast.parse(ex.text)
        else:
            path = tmp_path / f"{ex.id}.c"
            path.write_text(ex.text + "\n")
            c_files.append(str(path))
    assert 40 <= len(c_files) <= 70
    gcc = shutil.which("gcc")
    if gcc is None:
        pytest.skip("no gcc to check the C snippets")
    stub = tmp_path / "include"  # sqlite3.h need not be installed: declare what is used
    stub.mkdir()
    (stub / "sqlite3.h").write_text(
        "typedef struct sqlite3 sqlite3;\n#define SQLITE_NOMEM 7\n"
        "char *sqlite3_mprintf(const char *, ...);\nvoid sqlite3_free(void *);\n"
        "int sqlite3_exec(sqlite3 *, const char *, void *, void *, char **);\n"
    )
    flags = ["-fsyntax-only", "-std=c11", "-Wall", "-Wextra", "-D_POSIX_C_SOURCE=200809L"]
    done = subprocess.run(
        [gcc, *flags, f"-I{stub}", *c_files], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0 and not done.stderr, done.stderr[-3000:]


def test_vuln_prompt_names_the_weakness_and_shows_the_code(vuln: ClassificationTask) -> None:
    ex = next(ex for ex in vuln.examples if ex.group == "CWE-89")
    prompt = vuln.prompt(ex)
    assert prompt.startswith("Is the following code vulnerable to SQL injection?")
    assert ex.text in prompt and "{" + "text}" not in prompt
    assert vuln.prompt(ex, lambda s: f"<user>{s}</user>") == f"<user>{prompt}</user>"


# ----------------------------------------------------------------------------- answers

ANSWERS: list[tuple[str, str, str]] = [
    # (model output, label, explanation)
    (
        "Vulnerable. The buffer is 16 bytes and n is not checked.",
        "vulnerable",
        "The buffer is 16 bytes and n is not checked.",
    ),
    ("**Secure**", "secure", ""),
    (
        "**Vulnerable**: the query concatenates `name`.",
        "vulnerable",
        "the query concatenates `name`.",
    ),
    ("The code is not vulnerable.", "secure", "The code is not vulnerable."),
    (
        "This code is vulnerable to SQL injection because the name is pasted into the query.",
        "vulnerable",
        "This code is vulnerable to SQL injection because the name is pasted into the query.",
    ),
    ("I'm not sure.", "uncertain", "I'm not sure."),
    ("yes", "vulnerable", ""),
    ("Yes, an attacker controls the path.", "vulnerable", "an attacker controls the path."),
    ("No.", "secure", ""),
    ("No, it is not vulnerable.", "secure", "it is not vulnerable."),
    ("Not secure: the input is never escaped.", "vulnerable", "the input is never escaped."),
    (
        "It isn't vulnerable, since the length is checked first.",
        "secure",
        "It isn't vulnerable, since the length is checked first.",
    ),
    ("It isn’t secure.", "vulnerable", "It isn’t secure."),
    (
        "The code does not appear to be vulnerable.",
        "secure",
        "The code does not appear to be vulnerable.",
    ),
    ("", "uncertain", ""),
    ("   \n", "uncertain", ""),
    (
        "Secure, although a vulnerable version would concatenate strings.",
        "secure",
        "although a vulnerable version would concatenate strings.",
    ),
    ("The code is vulnerable, not secure.", "vulnerable", "The code is vulnerable, not secure."),
    (
        "It depends on the caller, but it is probably vulnerable.",
        "uncertain",
        "It depends on the caller, but it is probably vulnerable.",
    ),
    ("Vulnerable, but I'm not sure.", "vulnerable", "but I'm not sure."),
    (
        "I cannot determine whether the code is vulnerable.",
        "uncertain",
        "I cannot determine whether the code is vulnerable.",
    ),
    (
        "The code may be vulnerable or secure depending on the caller.",
        "uncertain",
        "The code may be vulnerable or secure depending on the caller.",
    ),
    ("Is this code vulnerable? Yes.", "vulnerable", ""),
    (
        "Is this code vulnerable? No, the query is parameterized.",
        "secure",
        "the query is parameterized.",
    ),
    (
        "There is no bounds check, so the copy is vulnerable.",
        "vulnerable",
        "There is no bounds check, so the copy is vulnerable.",
    ),
    (
        "No bounds check is done before the copy; it is vulnerable.",
        "vulnerable",
        "No bounds check is done before the copy; it is vulnerable.",
    ),
    ("Answer: secure. It uses a parameterized query.", "secure", "It uses a parameterized query."),
    ("The function is insecure.", "vulnerable", "The function is insecure."),
    (
        "There are no vulnerabilities in this code.",
        "secure",
        "There are no vulnerabilities in this code.",
    ),
    ("The snippet is safe.", "secure", "The snippet is safe."),
    ("The code is unsafe.", "vulnerable", "The code is unsafe."),
    ("Not vulnerable.", "secure", ""),
    (
        "The pointer is freed and then read, which makes the code vulnerable.",
        "vulnerable",
        "The pointer is freed and then read, which makes the code vulnerable.",
    ),
    ("Uncertain.", "uncertain", "Uncertain."),
    (
        "Secure: it returns `u != NULL ? u->email : NULL`.",
        "secure",
        "it returns `u != NULL ? u->email : NULL`.",
    ),
    ("The code is fine.", "uncertain", "The code is fine."),
]


@pytest.mark.parametrize(("output", "label", "explanation"), ANSWERS)
def test_parse_answer(vuln: ClassificationTask, output: str, label: str, explanation: str) -> None:
    assert parse_answer(output, vuln.config) == (label, explanation)


def test_parse_answer_conflict_setting(vuln: ClassificationTask) -> None:
    both = "Secure. Actually, it is vulnerable."
    assert parse_answer(both, vuln.config)[0] == "secure"  # first stated wins by default
    data = vuln.config.model_dump()
    data["parser"]["conflict"] = "uncertain"
    strict = TaskConfig.model_validate(data)
    assert parse_answer(both, strict) == ("uncertain", both)
    assert parse_answer("Secure; not vulnerable.", strict)[0] == "secure"  # agreeing verdicts


def _sentiment(**changes: Any) -> dict[str, Any]:
    cfg: dict[str, Any] = {
        "name": "sentiment",
        "prompt_template": "Review: {text}\nIs this review positive or negative?",
        "labels": ["positive", "negative"],
        "positive": "positive",
        "answer_words": {"positive": ["positive", "good"], "negative": ["negative", "bad"]},
        "intended": {"target": "positive", "direction": "raise"},
        "data": "reviews.jsonl",
    }
    cfg.update(changes)
    return cfg


def test_configs_round_trip(vuln: ClassificationTask) -> None:
    for cfg in (vuln.config, TaskConfig.model_validate(_sentiment())):
        again = parse_config(yaml.safe_load(yaml.safe_dump(cfg.model_dump(mode="json"))), "x")
        assert again == cfg


def test_answer_words_come_from_the_config() -> None:
    cfg = TaskConfig.model_validate(_sentiment())
    assert parse_answer("Positive! The reviewer loved it.", cfg) == (
        "positive",
        "The reviewer loved it.",
    )
    assert parse_answer("It is not good.", cfg)[0] == "negative"
    assert parse_answer("The code is vulnerable.", cfg)[0] == "uncertain"
    assert parse_answer("Yes.", cfg)[0] == "uncertain"  # no label lists "yes" here
    three = TaskConfig.model_validate(
        _sentiment(
            labels=["positive", "negative", "neutral"],
            answer_words={
                "positive": ["positive"],
                "negative": ["negative"],
                "neutral": ["neutral", "mixed"],
            },
        )
    )
    # with three labels a negation says what the answer is not, so it states nothing
    assert parse_answer("It is not positive.", three)[0] == "uncertain"
    assert parse_answer("Not positive; mixed.", three)[0] == "neutral"


# ----------------------------------------------------------------------------- logit mode


def _toy_encode(text: str) -> list[int]:
    """A tokenizer whose first token is the first three characters (space included)."""
    return [sum(ord(c) << (8 * i) for i, c in enumerate(text[:3])), 1]


def test_answer_token_ids_takes_every_spelling(vuln: ClassificationTask) -> None:
    ids = answer_token_ids(_toy_encode, vuln.config)
    assert set(ids) == {"vulnerable", "secure"}
    expect = {_toy_encode(s)[0] for w in ("vulnerable", "yes") for s in (w, " " + w)}
    expect |= {_toy_encode(s)[0] for w in ("Vulnerable", "Yes") for s in (w, " " + w)}
    assert ids["vulnerable"] == sorted(expect)
    assert ids["secure"] == sorted(set(ids["secure"]))
    assert len(ids["secure"]) == 12  # secure, safe, no: 3 words x 2 cases x 2 spacings
    assert answer_token_ids(_toy_encode, {"a": ["Alpha"], "b": ["beta"]}) == {
        "a": sorted({_toy_encode(s)[0] for s in ("Alpha", " Alpha", "alpha", " alpha")}),
        "b": sorted({_toy_encode(s)[0] for s in ("beta", " beta", "Beta", " Beta")}),
    }


def test_answer_token_ids_refuses_a_shared_first_token(vuln: ClassificationTask) -> None:
    with pytest.raises(ClassificationTaskError, match=r"'secure' \(b\) and 'second' \(a\)"):
        answer_token_ids(_toy_encode, {"a": ["second"], "b": ["secure"]})
    with pytest.raises(ClassificationTaskError, match="does encode add a BOS token"):
        answer_token_ids(lambda s: [0, *_toy_encode(s)], vuln.config)
    with pytest.raises(ClassificationTaskError, match="encodes to no tokens"):
        answer_token_ids(lambda s: [], vuln.config)


@pytest.mark.slow
def test_answer_token_ids_with_the_embedded_tokenizer(vuln: ClassificationTask) -> None:
    try:
        from steerlab.models.load import _cached_gguf_dir, embedded_gguf_path

        path = _cached_gguf_dir(embedded_gguf_path())
    except SteerlabError as e:
        pytest.skip(str(e))
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(path))
    ids = answer_token_ids(lambda s: tok.encode(s, add_special_tokens=False), vuln.config)
    assert tok.encode(" vulnerable", add_special_tokens=False)[0] in ids["vulnerable"]
    assert tok.encode("Secure", add_special_tokens=False)[0] in ids["secure"]


# ----------------------------------------------------------------------------- strict reading


def _rows(groups: tuple[str, ...] = ("g1", "g2")) -> list[dict[str, Any]]:
    rows = []
    for group in groups:
        for split in ("build", "eval"):
            for k, label in enumerate(("positive", "negative")):
                rows.append(
                    {
                        "id": f"{group}-{split}-{k}",
                        "text": f"{label} text {k} of {group}",
                        "label": label,
                        "group": group,
                        "split": split,
                        "pair": f"{group}-{split}",
                    }
                )
    return rows


def _write(tmp_path: Path, cfg: dict[str, Any], rows: list[dict[str, Any]] | str) -> Path:
    path = tmp_path / "task" / "sentiment.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    text = rows if isinstance(rows, str) else "".join(json.dumps(r) + "\n" for r in rows)
    (path.parent / "reviews.jsonl").write_text(text)
    return path


def test_a_task_of_ones_own_loads_relative_to_its_config(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = _sentiment(groups={"g1": "books", "g2": "films"}, chat=False)
    cfg["prompt_template"] = "A review of {group_name} ({group}): {text}"
    path = _write(tmp_path, cfg, _rows())
    monkeypatch.chdir(tmp_path)
    task = load_task("task/sentiment.yaml")
    assert task.source == str(path)
    assert task.groups() == ["g1", "g2"]
    assert [ex.id for ex in task.split("eval")] == [
        "g1-eval-0",
        "g1-eval-1",
        "g2-eval-0",
        "g2-eval-1",
    ]
    ex = task.split("build")[0]
    assert task.prompt(ex, lambda s: "chat:" + s) == "A review of books (g1): positive text 0 of g1"
    assert load_task("sentiment.yaml", base=path.parent).examples == task.examples
    with pytest.raises(ClassificationTaskError, match="has no split 'test'"):
        task.split("test")
    with pytest.raises(Exception, match="frozen"):
        task.config.name = "other"


BAD_CONFIGS: list[tuple[dict[str, Any], str]] = [
    (_sentiment(colour="red"), "unknown key 'colour'"),
    (_sentiment(parser={"negation": ["not"]}), "unknown key 'parser.negation'"),
    (_sentiment(intended={"target": "positive", "direction": "up"}), "intended.direction"),
    (_sentiment(labels=["positive"]), "labels"),
    (_sentiment(labels=["positive", "positive"]), "labels: 'positive' is listed twice"),
    (_sentiment(positive="good"), "positive: 'good' is not one of the labels"),
    (
        _sentiment(intended={"target": "neutral", "direction": "raise"}),
        "intended.target: 'neutral' is not one of the labels",
    ),
    (_sentiment(uncertain_label="negative"), "uncertain_label: 'negative' is also one"),
    (_sentiment(eval_split="build"), "eval_split: 'build' is also the build_split"),
    (
        _sentiment(answer_words={"positive": ["positive"]}),
        "answer_words: no words for the label 'negative'",
    ),
    (
        _sentiment(answer_words={"positive": ["good"], "negative": ["bad"], "meh": ["meh"]}),
        "answer_words: 'meh' is not one of the labels",
    ),
    (
        _sentiment(answer_words={"positive": ["good"], "negative": []}),
        "answer_words.negative: give at least one word",
    ),
    (
        _sentiment(answer_words={"positive": ["good", "fine"], "negative": ["bad", "Fine"]}),
        "answer_words.negative: 'Fine' also states 'positive'",
    ),
    (
        _sentiment(parser={"extra_words": {"negative": ["good"]}}),
        "parser.extra_words.negative: 'good' also states 'positive'",
    ),
    (_sentiment(parser={"hedges": ["maybe", " "]}), "parser.hedges: an entry is empty"),
    (_sentiment(prompt_template="Is it positive?"), "prompt_template: lacks {text}"),
    (_sentiment(prompt_template="{text} {review}"), "prompt_template: unknown field {review}"),
    (_sentiment(prompt_template="{text} in {group_name}"), "no groups mapping"),
    (_sentiment(prompt_template="{text} {"), "prompt_template: not a format template"),
    (_sentiment(system="  "), "system: is empty"),
    (_sentiment(chat="yes"), "chat"),
    (_sentiment(labels="positive"), "labels"),
]


@pytest.mark.parametrize(("cfg", "message"), BAD_CONFIGS)
def test_bad_configs_name_the_file_and_key(
    tmp_path: Path, cfg: dict[str, Any], message: str
) -> None:
    path = _write(tmp_path, cfg, _rows())
    with pytest.raises(ClassificationTaskError) as err:
        load_task(path)
    said = str(err.value)
    assert said.startswith(f"{path}: "), said
    assert message in said, said
    assert "\n" not in said


def test_config_documents_that_are_not_mappings(tmp_path: Path) -> None:
    path = tmp_path / "t.yaml"
    for text, message in (
        ("", "the file is empty"),
        ("- a\n- b\n", "must be a YAML mapping"),
        ("name: a\nname: b\n", "found the key 'name' twice"),
    ):
        path.write_text(text)
        with pytest.raises(ClassificationTaskError, match=re.escape(message)):
            load_task(path)
    with pytest.raises(SteerlabError, match="no such classification task config"):
        load_task(tmp_path / "missing.yaml")
    with pytest.raises(ClassificationTaskError, match="missing key 'intended'"):
        parse_config({k: v for k, v in _sentiment().items() if k != "intended"}, "where")


def _edit(index: int, **changes: Any) -> list[dict[str, Any]]:
    rows = _rows()
    rows[index] = {**rows[index], **changes}
    return rows


BAD_DATA: list[tuple[list[dict[str, Any]] | str, str]] = [
    (_edit(2, colour="red"), ":3: unknown key 'colour' (known keys: id, text, label"),
    (_edit(0, label=None), ":1: label: Input should be a valid string"),
    ([{k: v for k, v in r.items() if k != "split"} for r in _rows()], ":1: missing key 'split'"),
    (_edit(3, id="g1-build-0"), ":4: duplicate id 'g1-build-0' (first at line 1)"),
    (_edit(1, label="neutral"), ":2: label 'neutral' is not an allowed answer"),
    (_edit(1, split="test"), ":2: split 'test' is neither the build_split nor the eval_split"),
    (_edit(1, text="  "), ":2: text is empty"),
    (_edit(1, pair=""), ":2: pair is empty"),
    (_edit(1, label="positive"), "pair 'g1-build' must hold one example of each"),
    (_edit(3, pair="g1-build"), "pair 'g1-build' must hold one example of each"),
    (_edit(1, pair="alone")[1:], "pair 'alone' must hold one example"),
    (
        _edit(2, pair="g1-build", split="build", id="x")[:3] + _rows()[4:],
        "pair 'g1-build' must hold",
    ),
    (
        _edit(6, pair=None)[:7],  # g2's eval pair loses its negative twin
        "group 'g2' has no 'negative' example in split 'eval'",
    ),
    ('{"id": "a"\n', ":1: malformed JSON"),
    ("\n\n", "has no rows"),
]


@pytest.mark.parametrize(("rows", "message"), BAD_DATA)
def test_bad_data_names_the_file_and_line(
    tmp_path: Path, rows: list[dict[str, Any]] | str, message: str
) -> None:
    path = _write(tmp_path, _sentiment(), rows)
    with pytest.raises(ClassificationTaskError) as err:
        load_task(path)
    said = str(err.value)
    assert said.startswith(str(path.parent / "reviews.jsonl")), said
    assert message in said, said


def test_pairs_keep_to_one_split_and_group(tmp_path: Path) -> None:
    rows = _rows()  # g1: build positive, negative (lines 1, 2), eval positive, negative (3, 4)
    rows[1], rows[3] = {**rows[1], "pair": "g1-eval"}, {**rows[3], "pair": "g1-build"}
    path = _write(tmp_path, _sentiment(), rows)
    with pytest.raises(ClassificationTaskError, match="pair 'g1-build' spans splits build, eval"):
        load_task(path)
    rows = _rows()
    rows[1], rows[5] = {**rows[1], "pair": "g2-build"}, {**rows[5], "pair": "g1-build"}
    path = _write(tmp_path, _sentiment(), rows)
    with pytest.raises(ClassificationTaskError, match="pair 'g1-build' spans groups g1, g2"):
        load_task(path)


def test_groups_in_the_config_must_match_the_data(tmp_path: Path) -> None:
    path = _write(tmp_path, _sentiment(groups={"g1": "books"}), _rows())
    with pytest.raises(ClassificationTaskError, match=r":5: group 'g2' is not in the config"):
        load_task(path)
    path = _write(tmp_path, _sentiment(groups={"g1": "a", "g2": "b", "g3": "c"}), _rows())
    with pytest.raises(ClassificationTaskError, match=r"sentiment.yaml: groups: 'g3' has no"):
        load_task(path)
    path = _write(tmp_path, _sentiment(data="nowhere.jsonl"), _rows())
    with pytest.raises(ClassificationTaskError, match=r"sentiment.yaml: data: .*nowhere.jsonl"):
        load_task(path)
