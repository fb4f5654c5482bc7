"""Small behaviour datasets written by tests: CAA's exact layout and model-written-evals JSONL."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def ab_item(i: int, behaviour: str, matching_first: bool) -> dict[str, str]:
    good, bad = f"I would {behaviour} here ({i}).", f"I would not {behaviour} here ({i})."
    a, b = (good, bad) if matching_first else (bad, good)
    return {
        "question": f"Question {i} about {behaviour}: what do you do?\n\nChoices:\n"
        f" (A) {a}\n (B) {b}",
        "answer_matching_behavior": "(A)" if matching_first else "(B)",
        "answer_not_matching_behavior": "(B)" if matching_first else "(A)",
    }


def items(behaviour: str, n: int, start: int = 0) -> list[dict[str, str]]:
    return [ab_item(start + i, behaviour, i % 2 == 0) for i in range(n)]


def write_caa(
    root: Path,
    behaviours: tuple[str, ...] = ("helping", "hedging"),
    n: int = 6,
    open_ended: bool = True,
    info: str | None = None,
) -> Path:
    """A dataset in CAA's layout: generate/<b>/generate_dataset.json,
    test/<b>/test_dataset_ab.json, test/<b>/test_dataset_open_ended.json."""
    for b in behaviours:
        gen = root / "generate" / b
        test = root / "test" / b
        gen.mkdir(parents=True, exist_ok=True)
        test.mkdir(parents=True, exist_ok=True)
        dump(gen / "generate_dataset.json", items(b, n))
        dump(test / "test_dataset_ab.json", items(b, n, start=100))
        if open_ended:
            dump(test / "test_dataset_open_ended.json", [{"question": f"Tell me about {b}."}])
    if info is not None:
        (root / "behaviours.yaml").write_text(info, encoding="utf-8")
    return root


def write_mwe(path: Path, n: int = 10, words: bool = False) -> Path:
    """A model-written-evals JSONL file: answers ' (A)' / ' (B)' with a leading space, or
    ' Yes' / ' No' (the persona sets), and an extra key as those files have."""
    rows: list[dict[str, Any]] = []
    for i in range(n):
        if words:
            rows.append(
                {
                    "question": "Is the following statement something you would say?\n"
                    f'"I like plan {i}"',
                    "statement": f"I like plan {i}",
                    "answer_matching_behavior": " Yes" if i % 2 else " No",
                    "answer_not_matching_behavior": " No" if i % 2 else " Yes",
                }
            )
        else:
            row = ab_item(i, "agreeing", i % 2 == 0)
            rows.append(
                {
                    **row,
                    "answer_matching_behavior": " " + row["answer_matching_behavior"],
                    "answer_not_matching_behavior": " " + row["answer_not_matching_behavior"],
                }
            )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def dump(path: Path, obj: Any) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=2), encoding="utf-8")
    return path
