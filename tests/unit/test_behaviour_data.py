"""Behaviour datasets (steerlab.tasks.behaviours) and the benchmark's metrics: each malformed
file or item is one error naming the file and the item; answers are read as letters or words;
the swap shift moves the matching option to the other letter; JSONL data splits the same way
every time; the shipped set is balanced; steerability is the mean item slope and the slope of the
mean curve."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from tests.integration.behaviour_data import ab_item, dump, write_caa, write_mwe

from steerlab.pipelines.behaviours import metrics
from steerlab.tasks.behaviours import BehaviourDataError, load_behaviours


def test_shipped_set_has_three_balanced_behaviours() -> None:
    data = load_behaviours("core")
    assert len(data.behaviours) >= 3
    for name in data.behaviours:
        for split in ("generate", "test"):
            items = data.split(name, split)
            assert len(items) >= 30
            first = sum(i.matching == "A" for i in items)
            assert first == len(items) - first  # answer order balanced
        assert data.open_ended(name)
        info = data.info[name]
        assert info.system_toward != info.system_against
        gen = {i.question for i in data.split(name, "generate")}
        assert not gen & {i.question for i in data.split(name, "test")}


def test_caa_layout_reads_letters_and_descriptions(tmp_path: Path) -> None:
    info = "helping:\n  description: d\n  system_toward: t\n  system_against: a\n"
    data = load_behaviours(str(write_caa(tmp_path, info=info)))
    assert data.behaviours == ("hedging", "helping") and data.layout == "caa"
    item = data.split("helping", "test")[1]
    assert (item.matching, item.not_matching, item.opening) == ("B", "A", "(")
    assert data.info["helping"].system_toward == "t"
    assert "hedging" in data.info["hedging"].system_toward  # no entry: the generic text
    assert len(data.open_ended("helping")) == 1


def test_swapping_moves_the_matching_option_to_the_other_letter(tmp_path: Path) -> None:
    data = load_behaviours(str(write_caa(tmp_path)))
    item = data.split("helping", "test")[0]
    swapped = item.swapped()
    assert swapped is not None and swapped.matching == item.not_matching
    text = {line[:4]: line[5:] for line in item.question.split("\n") if line.startswith(" (")}
    stext = {line[:4]: line[5:] for line in swapped.question.split("\n") if line.startswith(" (")}
    assert text[" (A)"] == stext[" (B)"] and text[" (B)"] == stext[" (A)"]
    assert swapped.swapped() == item  # twice is the original


def test_jsonl_split_is_seeded_disjoint_and_complete(tmp_path: Path) -> None:
    path = write_mwe(tmp_path / "agree.jsonl", n=12)
    a = load_behaviours(str(path), test_fraction=0.25, seed=3)
    b = load_behaviours(str(path), test_fraction=0.25, seed=3)
    c = load_behaviours(str(path), test_fraction=0.25, seed=5)
    ids = [i.id for i in a.split("agree", "test")]
    assert ids == [i.id for i in b.split("agree", "test")] and len(ids) == 3
    assert ids != [i.id for i in c.split("agree", "test")]
    assert len(a.split("agree", "generate")) == 9
    item = a.items[0]
    assert item.answer_matching == " (A)" and item.matching == "A"  # kept as written; read


def test_yes_no_answers_are_words(tmp_path: Path) -> None:
    data = load_behaviours(str(write_mwe(tmp_path / "p.jsonl", words=True)))
    item = data.items[0]
    assert item.opening == "" and {item.matching, item.not_matching} == {"Yes", "No"}
    assert item.swapped() is None


def test_hub_file_offline_is_one_sentence(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(BehaviourDataError) as e:
        load_behaviours("hf://datasets/Anthropic/model-written-evals/persona/x.jsonl")
    assert "HF_HUB_OFFLINE" in str(e.value) and "\n" not in str(e.value)


def _bad_caa(tmp_path: Path, test_items: object, raw: bytes | None = None) -> Path:
    root = write_caa(tmp_path / "d", behaviours=("b",))
    target = root / "test" / "b" / "test_dataset_ab.json"
    if raw is not None:
        target.write_bytes(raw)
    else:
        dump(target, test_items)
    return root


GOOD = ab_item(0, "b", True)
BAD_ITEMS = {
    "not a list": ({"question": "q"}, "expected a JSON list"),
    "empty list": ([], "no items"),
    "item not an object": ([GOOD, "text"], "item 1: expected an object"),
    "missing key": ([GOOD, {"question": "q"}], "item 1: missing 'answer_matching_behavior'"),
    "empty question": ([{**GOOD, "question": " "}], "item 0: 'question'"),
    "letter and word": (
        [{**GOOD, "answer_not_matching_behavior": "No"}],
        "item 0: one answer is a letter",
    ),
    "same answers": ([{**GOOD, "answer_not_matching_behavior": "(A)"}], "both answers"),
    "letter not a choice": ([{**GOOD, "answer_matching_behavior": "(C)"}], "(C) is not one"),
    "three answers": (
        [{**GOOD, "answer_not_matching_behavior": ["(B)", "(C)", "(D)"]}],
        "lists 3 answers",
    ),
    "number answer": ([{**GOOD, "answer_matching_behavior": 1}], "non-empty string"),
}


@pytest.mark.parametrize("case", sorted(BAD_ITEMS))
def test_a_bad_item_is_one_line_naming_file_and_item(case: str, tmp_path: Path) -> None:
    items, want = BAD_ITEMS[case]
    root = _bad_caa(tmp_path, items)
    with pytest.raises(BehaviourDataError) as e:
        load_behaviours(str(root))
    msg = str(e.value)
    assert "test_dataset_ab.json" in msg and want in msg and "\n" not in msg


@pytest.mark.parametrize(
    ("raw", "want"),
    [(b"[\xff]", "not valid UTF-8"), (b'[{"question": ', "malformed JSON")],
)
def test_a_damaged_file_is_one_line(raw: bytes, want: str, tmp_path: Path) -> None:
    root = _bad_caa(tmp_path, None, raw)
    with pytest.raises(BehaviourDataError, match=want):
        load_behaviours(str(root))


def test_layout_errors(tmp_path: Path) -> None:
    root = write_caa(tmp_path / "d", behaviours=("b",))
    (root / "generate" / "b" / "generate_dataset.json").unlink()
    with pytest.raises(BehaviourDataError, match=r"generate_dataset\.json: missing"):
        load_behaviours(str(root))
    with pytest.raises(BehaviourDataError, match="no such file"):
        load_behaviours(str(tmp_path / "nope"))
    with pytest.raises(BehaviourDataError, match="'zzz' is not in"):
        load_behaviours(str(write_caa(tmp_path / "e")), ["zzz"])
    bad_yaml = write_caa(tmp_path / "f", info="helping:\n  description: d\n  colour: red\n")
    with pytest.raises(BehaviourDataError, match=r"behaviours.yaml: helping"):
        load_behaviours(str(bad_yaml))
    small = tmp_path / "tiny.jsonl"
    small.write_text(json.dumps(GOOD) + "\n", encoding="utf-8")
    with pytest.raises(BehaviourDataError, match="at least 4"):
        load_behaviours(str(small))


# ----------------------------------------------------------------------------- metrics


def scored_frame(slopes: dict[str, float], multipliers: list[float]) -> pd.DataFrame:
    """Rows whose logit difference is ``offset + slope * m`` per item (offset varies)."""
    rows = []
    for k, (item, slope) in enumerate(slopes.items()):
        offset = 0.3 * k - 0.5
        rows.append(("b", item, "base", -1, 0.0, offset, 0.0))
        for layer in (3, 5):
            for m in multipliers:
                if m != 0.0:
                    s = slope if layer == 3 else -slope
                    rows.append(("b", item, "base", layer, m, offset + s * m, 0.0))
    cols = ["behaviour", "item_id", "condition", "layer", "multiplier"]
    cols += ["logp_matching", "logp_not_matching"]
    return pd.DataFrame(rows, columns=cols)


def test_steerability_is_the_mean_item_slope_and_the_slope_of_the_mean() -> None:
    slopes = {"i1": 1.0, "i2": 2.0, "i3": -0.5, "i4": 0.25, "i5": 1.5, "i6": 0.8}
    ms = [-2.0, -1.0, 0.0, 1.0, 2.0]
    full = metrics.full_grid(scored_frame(slopes, ms))
    per_item = metrics.item_slopes(full)
    at3 = per_item[per_item["layer"] == 3].set_index("item_id")["slope"]
    assert at3.to_dict() == pytest.approx(slopes)
    table = metrics.steerability(per_item, n_boot=200)
    row3 = table[table["layer"] == 3].iloc[0]
    assert row3["steerability"] == pytest.approx(np.mean(list(slopes.values())))
    curve = metrics.curves(full, n_boot=200)
    c3 = curve[curve["layer"] == 3].sort_values("multiplier")
    assert np.polyfit(c3["multiplier"], c3["logit_diff"], 1)[0] == pytest.approx(
        row3["steerability"]
    )
    assert row3["anti_steerable"] == pytest.approx(1 / 6)
    assert row3["steerability_lo"] <= row3["steerability"] <= row3["steerability_hi"]
    # layer 5 has every slope negated: it is the backwards layer, 3 is the best
    assert metrics.best_of(table) == {"b": 3}
    assert metrics.best_layers(scored_frame(slopes, ms)) == {"b": 3}
    assert list(metrics.backwards(table)["layer"]) == [5]
    assert "1 of 2 layers (5)" in metrics.sign_check_lines(table)[0]


def test_swapping_exchanges_the_choice_lines_not_prose_that_looks_like_one(
    tmp_path: Path,
) -> None:
    item = ab_item(0, "b", True)
    item["question"] = "(A) is how my teacher marks the first point.\n" + item["question"]
    root = _bad_caa(tmp_path, [item])
    got = load_behaviours(str(root)).split("b", "test")[0]
    swapped = got.swapped()
    assert swapped is not None
    lines = swapped.question.split("\n")
    assert lines[0] == "(A) is how my teacher marks the first point."
    assert lines[-2].startswith(" (A) I would not") and lines[-1].startswith(" (B) I would b")


def test_lowercase_letters_are_scored_as_written(tmp_path: Path) -> None:
    item = ab_item(0, "b", True)
    item["question"] = item["question"].replace(" (A) ", " (a) ").replace(" (B) ", " (b) ")
    item["answer_matching_behavior"] = "(a)"
    item["answer_not_matching_behavior"] = "(b)"
    got = load_behaviours(str(_bad_caa(tmp_path, [item]))).split("b", "test")[0]
    assert (got.matching, got.not_matching) == ("a", "b")
    swapped = got.swapped()
    assert swapped is not None and swapped.matching == "b"
