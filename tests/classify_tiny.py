"""A tiny labeled task for ``steerlab classify`` tests (two groups of matched pairs, three per
split) and helpers to run the workflow on tiny-llama, by the CLI or with a config."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from steerlab.cli import main
from steerlab.pipelines.classify.config import ClassifyConfig, EvalModelCfg

CONFIG = """\
name: tinyvuln
prompt_template: "Is this {group_name}? {text} Answer:"
labels: [vulnerable, secure]
positive: vulnerable
answer_words:
  vulnerable: [vulnerable]
  secure: [secure]
groups:
  A: bug a
  B: bug b
intended: {target: vulnerable, direction: raise}
data: tiny.jsonl
chat: false
"""
GROUPS = ("A", "B")
N_EVAL = 12  # 2 groups x 3 pairs


def examples() -> list[dict[str, str]]:
    rows = []
    for g in GROUPS:
        for split, pairs in (("build", (1, 2, 3)), ("eval", (4, 5, 6))):
            for p in pairs:
                for label, text in (("vulnerable", f"x[{p}] = y"), ("secure", f"x[{p}] = 0")):
                    rows.append(
                        {
                            "id": f"{g}-{p}-{label[0]}",
                            "text": f"{g}{text}",
                            "label": label,
                            "group": g,
                            "split": split,
                            "pair": f"{g}-{p}",
                        }
                    )
    return rows


def write_task(directory: Path) -> Path:
    (directory / "tiny.jsonl").write_text("".join(json.dumps(r) + "\n" for r in examples()))
    p = directory / "task.yaml"
    p.write_text(CONFIG)
    return p


def prompt(example_id: str) -> str:
    """The exact text the workflow feeds for an example (``chat: false``)."""
    ex = next(r for r in examples() if r["id"] == example_id)
    return f"Is this bug {ex['group'].lower()}? {ex['text']} Answer:"


def run(out: Path, task: Path, *extra: str) -> None:
    """``steerlab classify`` on tiny-llama at layers 1 and 2, strengths 1 and 4 (diff scale)."""
    main(
        [
            "classify", "--model", "tiny-llama", "--task", str(task), "--out", str(out),
            "--layers", "1,2", "--strengths", "1,4", "--scale", "diff",
            "--max-new-tokens", "4", "--quiet", *extra,
        ]
    )  # fmt: skip


def config(out: Path, task: Path, **fields: Any) -> ClassifyConfig:
    """The config the CLI would make for ``task`` (tiny-llama), with ``fields`` set."""
    from steerlab.cli.classify import _task_ref

    stored, digest = _task_ref(str(task))
    data: dict[str, Any] = {
        "out": str(out.resolve()),
        "model": EvalModelCfg(name="tiny-llama", chat=True),
        "task": stored,
        "task_sha256": digest,
        **fields,
    }
    return ClassifyConfig.parse(data, "test")
