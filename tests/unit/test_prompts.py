"""Prompt sets: generator determinism and shift, JSONL round trip, file:line errors, ingest."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from steerlab.tasks.prompts import (
    PromptFileError,
    PromptRow,
    generate_prompt_sets,
    ingest,
    read_prompts,
    shipped_prompts,
    write_prompts,
)


def _meta(family: str = "f", style: str = "s", template: str = "t") -> dict[str, str]:
    return {"family": family, "style": style, "template": template}


def _at(path: Path, line: int) -> str:
    """Regex for the ``file:line`` prefix of an error message."""
    return re.escape(f"{path}:{line}")


def _line(**overrides: object) -> str:
    obj: dict[str, object] = {"id": "a", "prompt": "hello there", "meta": _meta()}
    obj.update(overrides)
    return json.dumps(obj)


# --- generator -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sets() -> dict[str, list[PromptRow]]:
    return generate_prompt_sets(150, 150, 200, seed=0)


def test_sizes_and_ids(sets: dict[str, list[PromptRow]]) -> None:
    assert {k: len(v) for k, v in sets.items()} == {
        "harm_train": 150,
        "harm_test": 150,
        "benign": 200,
    }
    assert sets["harm_train"][0].id == "harm_train_0001"
    assert sets["benign"][-1].id == "benign_0200"
    for split, rows in sets.items():
        assert len({r.id for r in rows}) == len(rows)
        assert all(r.id.startswith(f"{split}_") for r in rows)


def test_no_duplicate_prompts_and_short(sets: dict[str, list[PromptRow]]) -> None:
    for rows in sets.values():
        prompts = [r.prompt for r in rows]
        assert len(set(prompts)) == len(prompts)
        assert all(len(p.split()) < 30 for p in prompts)
        assert all("{" not in p and "}" not in p for p in prompts)  # every slot filled


def test_train_and_test_are_disjoint(sets: dict[str, list[PromptRow]]) -> None:
    train, test = sets["harm_train"], sets["harm_test"]
    for key in ("family", "style", "template"):
        a = {r.meta[key] for r in train}
        b = {r.meta[key] for r in test}
        assert a and b and not a & b, key
    assert not {r.prompt for r in train} & {r.prompt for r in test}
    assert {r.meta["family"] for r in train} == {"weapons", "hacking", "drugs", "fraud"}
    assert {r.meta["style"] for r in test} == {"slang", "indirect", "fiction", "hypothetical"}


def test_balanced_over_families(sets: dict[str, list[PromptRow]]) -> None:
    for rows in sets.values():
        counts: dict[str, int] = {}
        for r in rows:
            counts[r.meta["family"]] = counts.get(r.meta["family"], 0) + 1
        assert max(counts.values()) - min(counts.values()) <= 1


def test_benign_families(sets: dict[str, list[PromptRow]]) -> None:
    families = {r.meta["family"] for r in sets["benign"]}
    assert families == {"how-to", "coding", "writing", "facts", "advice"}


def test_deterministic_per_seed(sets: dict[str, list[PromptRow]]) -> None:
    assert generate_prompt_sets(150, 150, 200, seed=0) == sets
    other = generate_prompt_sets(150, 150, 200, seed=1)
    for split in sets:
        assert [r.prompt for r in other[split]] != [r.prompt for r in sets[split]]


def test_split_streams_independent() -> None:
    a = generate_prompt_sets(10, 20, 30, seed=3)
    b = generate_prompt_sets(50, 20, 30, seed=3)
    assert a["harm_test"] == b["harm_test"] and a["benign"] == b["benign"]


def test_too_many_raises() -> None:
    with pytest.raises(ValueError, match="harm_test"):
        generate_prompt_sets(n_test=100_000)
    with pytest.raises(ValueError, match="n_benign"):
        generate_prompt_sets(n_benign=-1)


def test_shipped_files_match_generator(sets: dict[str, list[PromptRow]]) -> None:
    for split, rows in sets.items():
        assert shipped_prompts(split) == rows


def test_module_entry_point(tmp_path: Path) -> None:
    cmd = [sys.executable, "-m", "steerlab.tasks.prompts", "--out-dir", str(tmp_path)]
    cmd += ["--n-train", "5", "--n-test", "6", "--n-benign", "7", "--seed", "2"]
    subprocess.run(cmd, check=True, capture_output=True)
    expected = generate_prompt_sets(5, 6, 7, seed=2)
    for split, rows in expected.items():
        assert read_prompts(tmp_path / f"{split}.jsonl") == rows


# --- read / write --------------------------------------------------------------------------------


def test_round_trip(tmp_path: Path, sets: dict[str, list[PromptRow]]) -> None:
    path = tmp_path / "sub" / "x.jsonl"
    rows = [*sets["benign"][:3], PromptRow("u", "naïve “quotes” ✓", {**_meta(), "extra": "1"})]
    write_prompts(rows, path)
    assert read_prompts(path) == rows
    assert [p.name for p in path.parent.iterdir()] == ["x.jsonl"]  # no temp file left


def test_write_is_atomic_on_failure(tmp_path: Path) -> None:
    path = tmp_path / "x.jsonl"
    path.write_text(_line() + "\n")
    bad = [PromptRow("a", "p", _meta()), PromptRow("a", "q", _meta())]
    with pytest.raises(PromptFileError, match="duplicate id 'a'"):
        write_prompts(bad, path)
    assert path.read_text() == _line() + "\n"
    assert os.listdir(tmp_path) == ["x.jsonl"]


def test_reads_both_schemas(tmp_path: Path) -> None:
    """The plain schema (meta: family, style) and ours (plus template and any extra keys)."""
    path = tmp_path / "x.jsonl"
    plain = {
        "id": "harm_train_0001",
        "prompt": "...",
        "meta": {"family": "weapons", "style": "direct"},
    }
    ours = {"id": "b", "prompt": "q", "meta": {**_meta(), "source": "hand-written"}}
    path.write_text(json.dumps(plain) + "\n" + json.dumps(ours) + "\n")
    rows = read_prompts(path)
    assert rows == [
        PromptRow("harm_train_0001", "...", {"family": "weapons", "style": "direct"}),
        PromptRow("b", "q", {**_meta(), "source": "hand-written"}),
    ]
    write_prompts(rows, tmp_path / "y.jsonl")  # written back unchanged: nothing filled in
    assert read_prompts(tmp_path / "y.jsonl") == rows
    assert (tmp_path / "y.jsonl").read_text().splitlines()[0] == json.dumps(plain)
    # ingest of the plain schema keeps what is there and fills only the missing template
    assert ingest(path, "harm_train")[0].meta == {
        "family": "weapons",
        "style": "direct",
        "template": "user",
    }


def test_blank_lines_skipped(tmp_path: Path) -> None:
    path = tmp_path / "x.jsonl"
    path.write_text("\n" + _line() + "\n\n")
    assert [r.id for r in read_prompts(path)] == ["a"]


@pytest.mark.parametrize(
    ("lines", "bad_line", "message"),
    [
        ([_line(), "{not json"], 2, "invalid JSON"),
        ([_line(), "[1, 2]"], 2, "expected a JSON object"),
        ([_line(id="b"), _line(id="c", prompt=None)], 2, "prompt must be a string"),
        (['{"id": "a", "meta": {}}'], 1, r"missing keys \['prompt'\]"),
        ([_line(score=1)], 1, r"unexpected keys \['score'\]"),
        ([_line(id="x"), _line(id="y"), _line(id="z", prompt=3)], 3, "prompt must be a string"),
        ([_line(prompt="   ")], 1, "empty or whitespace"),
        ([_line(prompt="")], 1, "empty or whitespace"),
        ([_line(meta={"family": "f", "template": "t"})], 1, "meta is missing style"),
        ([_line(meta={})], 1, "meta is missing family, style"),
        ([_line(id="b"), _line(meta={"style": "s"})], 2, "meta is missing family"),
        ([_line(meta={**_meta(), "n": 1})], 1, "meta values must be strings"),
        ([_line(meta="weapons")], 1, "meta must be an object"),
        ([_line(id="")], 1, "id must be a non-empty string"),
    ],
)
def test_malformed_lines(tmp_path: Path, lines: list[str], bad_line: int, message: str) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(PromptFileError, match=message) as info:
        read_prompts(path)
    assert str(info.value).startswith(f"{path}:{bad_line}: ")


def test_duplicate_id_names_both_lines(tmp_path: Path) -> None:
    path = tmp_path / "dup.jsonl"
    path.write_text("\n".join([_line(id="a"), _line(id="b"), _line(id="a", prompt="x")]) + "\n")
    with pytest.raises(PromptFileError) as info:
        read_prompts(path)
    msg = str(info.value)
    assert msg.startswith(f"{path}:3: duplicate id 'a'") and f"{path}:1" in msg


@pytest.mark.parametrize("content", ["", "\n\n  \n"])
def test_empty_file(tmp_path: Path, content: str) -> None:
    path = tmp_path / "empty.jsonl"
    path.write_text(content)
    with pytest.raises(PromptFileError, match=r"empty\.jsonl:1: file has no prompts"):
        read_prompts(path)


# --- ingest --------------------------------------------------------------------------------------


def test_ingest_csv(tmp_path: Path) -> None:
    path = tmp_path / "user.csv"
    path.write_text('prompt,id,family\nHow do I bake bread?,,cooking\n"Multi, with comma",q2,\n')
    rows = ingest(path, "benign")
    assert rows == [
        PromptRow("benign_0001", "How do I bake bread?", _meta("cooking", "unknown", "user")),
        PromptRow("q2", "Multi, with comma", _meta("unknown", "unknown", "user")),
    ]


def test_ingest_csv_errors(tmp_path: Path) -> None:
    path = tmp_path / "user.csv"
    path.write_text("text\nhello\n")
    with pytest.raises(PromptFileError, match=r"user\.csv:1: .*'prompt' column"):
        ingest(path, "x")
    path.write_text("prompt,label\nhello,1\n")
    with pytest.raises(PromptFileError, match=r"unexpected CSV columns \['label'\]"):
        ingest(path, "x")
    path.write_text("prompt\nfine\n\n  \nok\n")
    with pytest.raises(PromptFileError, match=rf"^{_at(path, 4)}: prompt is empty"):
        ingest(path, "x")
    path.write_text("prompt,id\na,1\nb,1\n")
    with pytest.raises(
        PromptFileError, match=rf"^{_at(path, 3)}: duplicate id '1' \(first at {_at(path, 2)}\)"
    ):
        ingest(path, "x")


def test_ingest_json(tmp_path: Path) -> None:
    path = tmp_path / "user.json"
    items = [
        "plain string",
        {"prompt": "obj", "style": "slang"},
        {"id": "k", "prompt": "nested", "meta": {"family": "fam", "template": "tpl"}},
    ]
    path.write_text(json.dumps(items))
    rows = ingest(path, "harm_test")
    assert rows == [
        PromptRow("harm_test_0001", "plain string", _meta("unknown", "unknown", "user")),
        PromptRow("harm_test_0002", "obj", _meta("unknown", "slang", "user")),
        PromptRow("k", "nested", _meta("fam", "unknown", "tpl")),
    ]


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        (["ok", 5], r"\[1\]: expected a string or an object"),
        (["ok", {"text": "x"}], r"\[1\]: unexpected keys \['text'\]"),
        ([{"id": "a"}], r"\[0\]: missing key 'prompt'"),
        (["ok", " "], r"\[1\]: prompt is empty"),
        ([{"prompt": "p", "family": "a", "meta": {"family": "b"}}], r"\[0\]: 'family' given twice"),
        ({"prompts": []}, "expected a JSON list"),
        ([], "file has no prompts"),
    ],
)
def test_ingest_json_errors(tmp_path: Path, payload: object, message: str) -> None:
    path = tmp_path / "user.json"
    path.write_text(json.dumps(payload))
    with pytest.raises(PromptFileError, match=message) as info:
        ingest(path, "x")
    assert str(info.value).startswith(str(path))


def test_ingest_json_syntax_error_names_line(tmp_path: Path) -> None:
    path = tmp_path / "user.json"
    path.write_text('[\n "a",\n "b" "c"\n]')
    with pytest.raises(PromptFileError, match=rf"^{_at(path, 3)}: invalid JSON"):
        ingest(path, "x")


def test_ingest_jsonl_own_schema_and_flat(tmp_path: Path, sets: dict[str, list[PromptRow]]) -> None:
    ours = tmp_path / "ours.jsonl"
    write_prompts(sets["harm_train"][:4], ours)
    assert ingest(ours, "harm_train") == sets["harm_train"][:4]

    flat = tmp_path / "flat.jsonl"
    flat.write_text('{"prompt": "a", "family": "f"}\n\n{"prompt": "b", "id": "z"}\n')
    assert ingest(flat, "s") == [
        PromptRow("s_0001", "a", _meta("f", "unknown", "user")),
        PromptRow("z", "b", _meta("unknown", "unknown", "user")),
    ]
    flat.write_text('{"prompt": "a"}\n\n{"prompt": 7}\n')
    with pytest.raises(PromptFileError, match=rf"^{_at(flat, 3)}: prompt must be a string"):
        ingest(flat, "s")


def test_ingest_unknown_extension(tmp_path: Path) -> None:
    path = tmp_path / "user.txt"
    path.write_text("hello\n")
    with pytest.raises(PromptFileError, match="unsupported extension"):
        ingest(path, "x")
