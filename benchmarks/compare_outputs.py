"""Capture steerlab's outputs from one source tree and compare two captures exactly.

Use it around a refactor that must not change behaviour (moving modules, renaming internals):

    # 1. BEFORE: a pristine copy of the old source, captured twice to prove determinism
    git worktree add /tmp/base <old-commit>          # or: git archive <commit> | tar -x -C DIR
    .venv/bin/python benchmarks/compare_outputs.py capture --pythonpath /tmp/base/src \\
        --out /tmp/outputs_before
    .venv/bin/python benchmarks/compare_outputs.py capture --pythonpath /tmp/base/src \\
        --out /tmp/outputs_before2
    .venv/bin/python benchmarks/compare_outputs.py compare /tmp/outputs_before /tmp/outputs_before2

    # 2. AFTER: the refactored tree, same venv, same machine
    .venv/bin/python benchmarks/compare_outputs.py capture --pythonpath src --out /tmp/outputs_after
    .venv/bin/python benchmarks/compare_outputs.py compare /tmp/outputs_before /tmp/outputs_after

``capture`` runs the ``steerlab`` CLI in subprocesses with ``PYTHONPATH=SRC`` (and checks that
``steerlab`` is imported from SRC, not from the editable install), one job at a time, each into
``OUT/<name>/``: ``run`` (the reliability pipeline, ``--config default`` on tiny-llama),
``eval_questions`` (the shipped ``core`` set under two steering configs, scored by a
deterministic fake OpenAI-compatible judge that this script serves on 127.0.0.1),
``classify_logit`` and ``classify_generate`` (a small task written into ``inputs/``), and
``select_coefficients`` (a vector from ``build-vector``, the shipped ``basic`` tasks, model code
run in bubblewrap). The CLI is called as ``from steerlab.cli import main; main()``, which works
whether ``steerlab.cli`` is a module or a package. Inputs go to ``OUT/<name>/inputs/``, each
command's stdout/stderr to ``OUT/<name>/logs/``, and the exact commands, exit codes and wall
times to ``OUT/capture.json``. A command stopped from outside by SIGINT/SIGTERM is rerun in place
(it resumes, which the workflows guarantee gives the same results) up to ``MAX_RESUMES`` times;
``capture.json`` and ``compare`` say so. A step's directory must not exist yet (runs resume,
so a rerun into a finished directory would compute nothing); ``--only NAME`` (repeatable)
captures a subset, e.g. to redo one step after removing its directory (the other steps'
records in ``capture.json`` are kept).

``compare A B`` matches files by path relative to A and B (part files ``part-NNNNN-<hash>`` are
matched by index, and a differing hash is reported, since it is derived from the work rows'
keys) and compares:

* ``.parquet`` and ``.csv``: row count, column names and dtypes, then every column value by
  value in stored row order; floats compare with ``==`` (NaN equals NaN), never approximately
  (a CSV with no ignored column must also be identical as text);
* ``.json`` and ``.yaml`` (the frozen run configs): every leaf value, keyed by its path;
* ``.safetensors``: tensor names, dtypes, shapes and bytes (bitwise), and the metadata (JSON
  values compared as above);
* ``.md``, ``.jsonl``, ``.txt`` and each command's stdout: the text line by line
  (``.jsonl`` as a sorted list of lines: the judge cache is appended in completion order).

Before comparing, strings have each capture's own root directory replaced by ``<OUT>``, its
source directory by ``<SRC>`` and the fake judge's port by ``<PORT>``. Volatile fields are left
out: parquet/CSV columns and JSON/YAML keys whose name matches ``VOLATILE`` (run ids,
timestamps, wall times and durations, hosts, pids, git commit, and ``config_digest``, a hash of
the config that includes the absolute output path), the ``sha256`` beside a ``path`` to a
``.safetensors`` file (vector files hold their creation time), and text lines matching
``VOLATILE_LINE`` (lines that report times). Every left-out column and key is listed in the
output. Figures (``.png``), locks, ``inputs/`` and stderr logs are not compared. ``compare``
also lists every captured command's exit code and wall time on both sides (from
``capture.json``); a resumed command's ``manifest.json`` differs by its extra executor run. The
exit code is 1 when anything differs, a file is missing on one side or a command failed, else 0.

On a free 2-core CPU the ``run`` step takes minutes (the README says about 4) and the others
well under a minute each; on a loaded machine ``run`` can take an hour.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import math
import os
import re
import shlex
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

# --------------------------------------------------------------------------------------------
# capture
# --------------------------------------------------------------------------------------------

CLI = "import sys; from steerlab.cli import main; sys.argv[0] = 'steerlab'; main()"
JUDGE_KEY_ENV = "STEERLAB_CAPTURE_JUDGE_KEY"
INTERRUPTED = (130, 143)  # SIGINT / SIGTERM from outside: the command is rerun, and resumes
MAX_RESUMES = 3

STEER_A = """\
vectors:
  - name: kind
    positive_prompt: "I am kind and careful."
    negative_prompt: "I am cruel and careless."
    layer: 1
    coefficient: 4.0
"""
STEER_B = """\
vectors:
  - name: terse
    positive_prompt: "Short answer."
    layer: 2
    coefficient: 20.0
    normalize: true
    positions: generated
"""
CLASSIFY_TASK = """\
name: capture_vuln
prompt_template: "Is this code vulnerable to {group_name}? {text} Answer:"
labels: [vulnerable, secure]
positive: vulnerable
answer_words:
  vulnerable: [vulnerable, "yes"]
  secure: [secure, "no"]
groups:
  A: overflow
  B: injection
  C: traversal
intended: {target: vulnerable, direction: raise}
data: task.jsonl
chat: true
"""
CLASSIFY_SNIPPETS = {
    "A": ("buf[{p}] = x", "if {p} < n: buf[{p}] = x"),
    "B": ("run('ls ' + a{p})", "run(['ls', a{p}])"),
    "C": ("open(base + p{p})", "open(safe(base, p{p}))"),
}


def classify_rows() -> list[dict[str, str]]:
    """3 groups x (3 build + 3 eval pairs) of a vulnerable and a secure snippet."""
    rows = []
    for group, (bad, good) in CLASSIFY_SNIPPETS.items():
        for split, pairs in (("build", (1, 2, 3)), ("eval", (4, 5, 6))):
            for p in pairs:
                for label, text in (("vulnerable", bad), ("secure", good)):
                    rows.append(
                        {
                            "id": f"{group}-{p}-{label[0]}",
                            "text": text.format(p=p),
                            "label": label,
                            "group": group,
                            "split": split,
                            "pair": f"{group}-{p}",
                        }
                    )
    return rows


@dataclass(frozen=True)
class Step:
    """One capture: files written to ``inputs/``, then CLI commands run in order.

    In ``commands``, ``{dir}`` is the step's directory, ``{inputs}`` its inputs and ``{judge}``
    the fake judge's URL."""

    name: str
    commands: tuple[tuple[str, ...], ...]
    inputs: dict[str, str] = field(default_factory=dict)
    judge: bool = False


STEPS: tuple[Step, ...] = (
    Step(
        "run",
        (
            (
                "run", "--config", "default", "--model", "tiny-llama",
                "--output-dir", "{dir}/out", "--run-id", "capture", "--quiet",
            ),
        ),
    ),
    Step(
        "eval_questions",
        (
            (
                "eval-questions", "--model", "tiny-llama", "--questions", "core",
                "--steering-config", "{inputs}/steer_a.yaml",
                "--steering-config", "{inputs}/steer_b.yaml",
                "--n-per-question", "2", "--max-new-tokens", "16", "--batch-size", "16",
                "--judge-url", "{judge}", "--judge-model", "fake-judge",
                "--judge-key-env", JUDGE_KEY_ENV, "--quiet", "--out", "{dir}/out",
            ),
        ),
        inputs={"steer_a.yaml": STEER_A, "steer_b.yaml": STEER_B},
        judge=True,
    ),
    Step(
        "classify_logit",
        (
            (
                "classify", "--model", "tiny-llama", "--task", "{inputs}/task.yaml",
                "--layers", "1,2", "--strengths", "0.1,0.4", "--max-new-tokens", "8",
                "--quiet", "--out", "{dir}/out",
            ),
        ),
        inputs={
            "task.yaml": CLASSIFY_TASK,
            "task.jsonl": "".join(json.dumps(r) + "\n" for r in classify_rows()),
        },
    ),
    Step(
        "classify_generate",
        (
            (
                "classify", "--model", "tiny-llama", "--task", "{inputs}/task.yaml",
                "--mode", "generate", "--layers", "2", "--strengths", "0.4,2",
                "--no-cross-group", "--max-new-tokens", "8", "--quiet", "--out", "{dir}/out",
            ),
        ),
        inputs={
            "task.yaml": CLASSIFY_TASK,
            "task.jsonl": "".join(json.dumps(r) + "\n" for r in classify_rows()),
        },
    ),
    Step(
        "select_coefficients",
        (
            (
                "build-vector", "--model", "tiny-llama", "--method", "contrast",
                "--positive", "def f(x): return x + 1", "--positive", "The code is correct.",
                "--negative", "def f(x): return x +", "--negative", "The code is wrong.",
                "--layer", "1", "--layer", "2", "--out", "{dir}/vector/v.safetensors",
            ),
            (
                "select-coefficients", "--model", "tiny-llama", "--tasks", "basic",
                "--max-tasks", "16", "--prompt-mode", "completion",
                "--correct-vector", "{dir}/vector/v.safetensors", "--layer", "2",
                "--coefficients", "0,3,30", "--n-per-coefficient", "4",
                "--max-new-tokens", "24", "--batch-size", "8", "--quiet", "--out", "{dir}/out",
            ),
        ),
    ),
)  # fmt: skip


def judge_reply(prompt: str) -> dict[str, Any]:
    """A chat completion whose first-token top_logprobs depend only on ``prompt`` (its sha256):
    mostly a spread over three scores, sometimes REFUSAL, CODE or too little number mass."""
    h = hashlib.sha256(prompt.encode("utf-8")).digest()
    kind = h[0] % 10
    if kind == 0:
        dist = {"REFUSAL": 0.7, "50": 0.3}
    elif kind == 1:
        dist = {"CODE": 0.8, "10": 0.2}
    elif kind == 2:
        dist = {"hello": 0.99, "5": 0.01}
    else:
        weights = [1 + h[4], 1 + h[5], 1 + h[6]]
        total = sum(weights)
        dist = {}
        for tok, w in zip(
            (str(h[1] % 101), f" {h[2] % 101}", str(h[3] % 101)), weights, strict=True
        ):
            dist[tok] = dist.get(tok, 0.0) + w / total
    top = [{"token": t, "logprob": math.log(p), "bytes": None} for t, p in dist.items()]
    first = max(dist, key=lambda t: dist[t])
    content = [{"token": first, "logprob": math.log(dist[first]), "top_logprobs": top}]
    return {
        "id": "chatcmpl-capture",
        "object": "chat.completion",
        "model": "fake-judge",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": first},
                "logprobs": {"content": content},
                "finish_reason": "length",
            }
        ],
    }


class _JudgeHandler(BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", "0"))))
        if not self.path.endswith("/chat/completions"):
            self.send_error(404)
            return
        data = json.dumps(judge_reply(body["messages"][-1]["content"])).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        pass


class FakeJudge:
    """A deterministic OpenAI-compatible judge on 127.0.0.1 (a free port), in a thread."""

    def __enter__(self) -> str:
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), _JudgeHandler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        return f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join()


def _env(src: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(src)
    env[JUDGE_KEY_ENV] = "capture"
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    return env


def check_source(python: str, src: Path) -> str:
    """Where ``steerlab`` is imported from under ``PYTHONPATH=src``; it must be inside src."""
    done = subprocess.run(
        [python, "-c", "import steerlab; print(steerlab.__file__)"],
        env=_env(src),
        cwd="/",
        capture_output=True,
        text=True,
        check=True,
    )
    where = done.stdout.strip()
    if not Path(where).resolve().is_relative_to(src):
        sys.exit(f"error: steerlab imports from {where}, not from {src}")
    return where


def capture(src: Path, out: Path, python: str, only: Sequence[str]) -> int:
    src, out = src.resolve(), out.resolve()
    steps = [s for s in STEPS if not only or s.name in only]
    unknown = set(only) - {s.name for s in STEPS}
    if unknown:
        sys.exit(f"error: unknown step(s) {sorted(unknown)}; known: {[s.name for s in STEPS]}")
    # runs resume, so a step must start from nothing; other steps' captures may be kept (--only)
    if busy := [s.name for s in steps if (out / s.name).exists()]:
        sys.exit(f"error: {out} already holds {busy}: remove them, or capture into a new directory")
    meta = out / "capture.json"
    old: dict[str, Any] = json.loads(meta.read_text()) if meta.is_file() else {}
    if old and old["pythonpath"] != str(src):
        sys.exit(f"error: {out} was captured from {old['pythonpath']}, not {src}")
    out.mkdir(parents=True, exist_ok=True)
    names = {s.name for s in steps}
    record: dict[str, Any] = {
        "pythonpath": str(src),
        "out": str(out),
        "python": python,
        "steerlab_file": check_source(python, src),
        "steps": [s for s in old.get("steps", []) if s["name"] not in names],
    }
    failed = 0
    for step in steps:
        d = out / step.name
        (d / "logs").mkdir(parents=True)
        for fname, text in step.inputs.items():
            (d / "inputs").mkdir(exist_ok=True)
            (d / "inputs" / fname).write_text(text, encoding="utf-8")
        with FakeJudge() if step.judge else contextlib.nullcontext("") as url:
            for i, template in enumerate(step.commands):
                args = [a.format(dir=d, inputs=d / "inputs", judge=url) for a in template]
                shown = ["<JUDGE>" if a == url else a for a in args]
                log = d / "logs" / f"{i}-{args[0]}"
                print(f"[{step.name}] {shlex.join(['steerlab', *shown])}", flush=True)
                t0 = time.perf_counter()
                for resumes in range(MAX_RESUMES + 1):
                    # stdout: the last attempt's; stderr: every attempt's
                    with open(f"{log}.stdout", "w") as so, open(f"{log}.stderr", "a") as se:
                        rc = subprocess.run(
                            [python, "-c", CLI, *args], env=_env(src), cwd=d, stdout=so, stderr=se
                        ).returncode
                    if rc not in INTERRUPTED or resumes == MAX_RESUMES:
                        break
                    print(f"[{step.name}] stopped from outside (exit {rc}); resuming", flush=True)
                wall = time.perf_counter() - t0
                print(f"[{step.name}] exit {rc}, {wall:.1f} s", flush=True)
                record["steps"].append(
                    {
                        "name": step.name,
                        "argv": ["steerlab", *shown],
                        "rc": rc,
                        "wall_s": wall,
                        "resumes": resumes,
                    }
                )
                if rc != 0:
                    failed += 1
                    tail = Path(f"{log}.stderr").read_text(errors="replace")[-2000:]
                    print(f"[{step.name}] FAILED; stderr tail:\n{tail}", flush=True)
                    break
    (out / "capture.json").write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    return 1 if failed else 0


# --------------------------------------------------------------------------------------------
# compare
# --------------------------------------------------------------------------------------------

VOLATILE = re.compile(
    r"^(run_id|timestamp|created|started|finished|host|hostname|pid|git_commit|config_digest"
    r"|.*_wall_s|timings_s|timing_s|gen_s|exec_s|program_s|.*(elapsed|duration|seconds).*)$"
)
VOLATILE_LINE = re.compile(
    r"(?i)\b(time|times|timing|wall|elapsed|took|eta)\b[^|]*\d\s*(s|ms|min)\b"
)
PART = re.compile(r"^part-(\d{5})-([0-9a-f]{10})\.parquet$")
RUN_ID = re.compile(r"^[\w.-]+-[0-9a-f]{10}$")  # a default run id: <model>-<config digest>
TABLES = {".parquet", ".csv"}
TREES = {".json", ".yaml"}
TEXTS = {".md", ".jsonl", ".txt", ".stdout"}
COMPARED = TABLES | TREES | TEXTS | {".safetensors"}
JUDGE_URL = re.compile(r"http://127\.0\.0\.1:\d+/")


@dataclass
class Side:
    root: Path
    src: str
    steps: list[dict[str, Any]] = field(default_factory=list)

    def norm(self, s: str) -> str:
        s = JUDGE_URL.sub("http://127.0.0.1:<PORT>/", s.replace(str(self.root), "<OUT>"))
        return s.replace(self.src, "<SRC>") if self.src else s


def load_side(root: Path) -> Side:
    root = root.resolve()
    meta = root / "capture.json"
    data = json.loads(meta.read_text()) if meta.is_file() else {}
    return Side(root, data.get("pythonpath", ""), data.get("steps", []))


def command_table(sa: Side, sb: Side) -> int:
    """Each captured command's exit code and wall time on both sides; how many failed."""
    ra = {(s["name"], s["argv"][1]): s for s in sa.steps}
    rb = {(s["name"], s["argv"][1]): s for s in sb.steps}
    failed = 0
    print("commands (exit code, wall time: A | B):")
    for k in [*ra, *(k for k in rb if k not in ra)]:
        cells = []
        for r in (ra, rb):
            s = r.get(k)
            resumed = f" (resumed {s['resumes']}x)" if s and s.get("resumes") else ""
            cells.append("-" if s is None else f"exit {s['rc']}, {s['wall_s']:.1f} s{resumed}")
            failed += s is None or s["rc"] != 0
        print(f"  {k[0]} ({k[1]}): {cells[0]} | {cells[1]}")
    return failed


def normalised_rel(rel: Path) -> str:
    parts = list(rel.parts)
    m = PART.match(parts[-1])
    if m:
        parts[-1] = f"part-{m.group(1)}-<hash>.parquet"
    parts[:-1] = ["<run_id>" if RUN_ID.match(d) else d for d in parts[:-1]]
    return "/".join(parts)


def collect(root: Path) -> dict[str, Path]:
    files: dict[str, Path] = {}
    for p in sorted(root.rglob("*")):
        if not p.is_file() or p.suffix not in COMPARED or p.name == "capture.json":
            continue
        if p.parent.name == "inputs":
            continue
        files[normalised_rel(p.relative_to(root))] = p
    return files


def same(a: Any, b: Any) -> bool:
    """Exact equality: floats by ``==`` with NaN equal to NaN, containers element by element."""
    import numpy as np

    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        la, lb = list(np.asarray(a, dtype=object)), list(np.asarray(b, dtype=object))
        return len(la) == len(lb) and all(same(x, y) for x, y in zip(la, lb, strict=True))
    if isinstance(a, list | tuple) and isinstance(b, list | tuple):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    na, nb = _missing(a), _missing(b)
    if na or nb:
        return na and nb
    if type(a) is not type(b) and not (_number(a) and _number(b)):
        return False
    return bool(a == b)


def _missing(x: Any) -> bool:
    import pandas as pd

    if x is None or x is pd.NA or x is pd.NaT:
        return True
    return isinstance(x, float) and math.isnan(x)


def _number(x: Any) -> bool:
    import numpy as np

    return isinstance(x, int | float | np.number) and not isinstance(x, bool | np.bool_)


@dataclass
class Result:
    rel: str
    summary: str
    diffs: list[str]
    ignored: list[str] = field(default_factory=list)


def compare_frames(rel: str, a: Any, b: Any, sa: Side, sb: Side) -> Result:
    import numpy as np
    import pandas as pd

    assert isinstance(a, pd.DataFrame) and isinstance(b, pd.DataFrame)
    diffs: list[str] = []
    if len(a) != len(b):
        diffs.append(f"rows {len(a)} vs {len(b)}")
    ca, cb = list(a.columns), list(b.columns)
    if ca != cb:
        if set(ca) == set(cb):
            diffs.append("column order differs")
        else:
            if only_a := [c for c in ca if c not in cb]:
                diffs.append(f"columns only in A: {only_a}")
            if only_b := [c for c in cb if c not in ca]:
                diffs.append(f"columns only in B: {only_b}")
    ignored = [str(c) for c in ca if VOLATILE.match(str(c))]
    n = min(len(a), len(b))
    for c in ca:
        if c not in cb or str(c) in ignored:
            continue
        x, y = a[c], b[c]
        if str(x.dtype) != str(y.dtype):
            diffs.append(f"{c}: dtype {x.dtype} vs {y.dtype}")
        xv, yv = x.to_numpy()[:n], y.to_numpy()[:n]
        if xv.dtype.kind == "f" and yv.dtype.kind == "f":
            eq = (xv == yv) | (np.isnan(xv) & np.isnan(yv))
        else:
            xs = [sa.norm(v) if isinstance(v, str) else v for v in xv]
            ys = [sb.norm(v) if isinstance(v, str) else v for v in yv]
            eq = np.array([same(p, q) for p, q in zip(xs, ys, strict=True)], dtype=bool)
        bad = int((~eq).sum())
        if bad:
            i = int(np.flatnonzero(~eq)[0])
            diffs.append(
                f"{c}: {bad}/{n} values differ (first at row {i}: {_show(xv[i])} vs {_show(yv[i])})"
            )
    summary = f"{len(a)} rows, {len(ca)} columns"
    return Result(rel, summary, diffs, ignored)


def _show(x: Any) -> str:
    return repr(x.item() if hasattr(x, "item") and getattr(x, "ndim", 1) == 0 else x)[:200]


def read_table(p: Path) -> Any:
    import pandas as pd

    if p.suffix == ".parquet":
        return pd.read_parquet(p)
    return pd.read_csv(p)


def flatten(obj: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
    if isinstance(obj, dict):
        if not obj:
            yield prefix, {}
        for k, v in obj.items():
            yield from flatten(v, f"{prefix}.{k}" if prefix else str(k))
    elif isinstance(obj, list):
        if not obj:
            yield prefix, []
        for i, v in enumerate(obj):
            yield from flatten(v, f"{prefix}[{i}]")
    else:
        yield prefix, obj


def _volatile_path(path: str, flat: dict[str, Any]) -> bool:
    if any(VOLATILE.match(k) for k in re.split(r"[.\[\]]+", path) if k):
        return True
    # the sha256 of a .safetensors file: the file holds its creation time
    head, _, last = path.rpartition(".")
    sibling = flat.get(f"{head}.path" if head else "path")
    return last == "sha256" and isinstance(sibling, str) and sibling.endswith(".safetensors")


def compare_trees(rel: str, a: Any, b: Any, sa: Side, sb: Side, what: str) -> Result:
    fa, fb = dict(flatten(a)), dict(flatten(b))
    ignored = sorted({k for f in (fa, fb) for k in f if _volatile_path(k, f)})
    diffs: list[str] = []
    for k in sorted(set(fa) | set(fb)):
        if k in ignored:
            continue
        if k not in fa or k not in fb:
            diffs.append(f"{k}: only in {'B' if k not in fa else 'A'}")
            continue
        x = sa.norm(fa[k]) if isinstance(fa[k], str) else fa[k]
        y = sb.norm(fb[k]) if isinstance(fb[k], str) else fb[k]
        if not same(x, y):
            diffs.append(f"{k}: {x!r} vs {y!r}")
    return Result(rel, f"{len(fa)} {what}", diffs, ignored)


def read_safetensors(p: Path) -> tuple[dict[str, tuple[str, tuple[int, ...], bytes]], Any]:
    import torch
    from safetensors import safe_open

    tensors: dict[str, tuple[str, tuple[int, ...], bytes]] = {}
    with safe_open(str(p), "pt") as f:
        meta: dict[str, Any] = {}
        for k, v in (f.metadata() or {}).items():
            try:
                meta[k] = json.loads(v)
            except ValueError:
                meta[k] = v
        for k in f.keys():  # noqa: SIM118 - safe_open has no __iter__
            t = f.get_tensor(k).contiguous()
            raw = t.view(torch.uint8).numpy().tobytes() if t.numel() else b""
            tensors[k] = (str(t.dtype), tuple(t.shape), raw)
    return tensors, meta


def compare_safetensors(rel: str, pa: Path, pb: Path, sa: Side, sb: Side) -> Result:
    ta, ma = read_safetensors(pa)
    tb, mb = read_safetensors(pb)
    res = compare_trees(rel, ma, mb, sa, sb, "metadata values")
    if list(ta) != list(tb):
        res.diffs.append(f"tensor names {list(ta)} vs {list(tb)}")
    for k in ta.keys() & tb.keys():
        if ta[k][:2] != tb[k][:2]:
            res.diffs.append(f"tensor {k}: {ta[k][:2]} vs {tb[k][:2]}")
        elif ta[k][2] != tb[k][2]:
            res.diffs.append(f"tensor {k}: values differ (bitwise)")
    res.summary = f"{len(ta)} tensors, {res.summary}"
    return res


def compare_text(rel: str, pa: Path, pb: Path, sa: Side, sb: Side) -> Result:
    la = sa.norm(pa.read_text(encoding="utf-8", errors="replace")).splitlines()
    lb = sb.norm(pb.read_text(encoding="utf-8", errors="replace")).splitlines()
    if pa.suffix == ".jsonl":
        la, lb = sorted(la), sorted(lb)
    masked = sum(1 for line in la if VOLATILE_LINE.search(line))
    ka = [line for line in la if not VOLATILE_LINE.search(line)]
    kb = [line for line in lb if not VOLATILE_LINE.search(line)]
    diffs: list[str] = []
    if ka != kb:
        bad = sum(1 for x, y in zip(ka, kb, strict=False) if x != y) + abs(len(ka) - len(kb))
        i = next(
            (i for i, (x, y) in enumerate(zip(ka, kb, strict=False)) if x != y),
            min(len(ka), len(kb)),
        )
        first = (ka[i] if i < len(ka) else "<end>", kb[i] if i < len(kb) else "<end>")
        diffs.append(f"{bad} lines differ (first: {first[0][:120]!r} vs {first[1][:120]!r})")
    ignored = [f"{masked} time line(s)"] if masked else []
    return Result(rel, f"{len(la)} lines", diffs, ignored)


def read_tree(p: Path) -> Any:
    text = p.read_text(encoding="utf-8")
    if p.suffix == ".json":
        return json.loads(text)
    import yaml

    return yaml.safe_load(text)


def compare_one(rel: str, pa: Path, pb: Path, sa: Side, sb: Side) -> Result:
    if pa.suffix in TABLES:
        res = compare_frames(rel, read_table(pa), read_table(pb), sa, sb)
        if pa.suffix == ".csv" and not res.diffs and not res.ignored:  # parsing may round
            ta = sa.norm(pa.read_text(encoding="utf-8"))
            if ta != sb.norm(pb.read_text(encoding="utf-8")):
                res.diffs.append("values parse equal but the CSV text differs")
    elif pa.suffix in TREES:
        res = compare_trees(rel, read_tree(pa), read_tree(pb), sa, sb, "values")
    elif pa.suffix == ".safetensors":
        res = compare_safetensors(rel, pa, pb, sa, sb)
    else:
        res = compare_text(rel, pa, pb, sa, sb)
    if pa.name != pb.name:
        res.diffs.append(f"file name {pa.name} vs {pb.name} (part hash = the work rows' keys)")
    return res


def compare(dir_a: Path, dir_b: Path) -> int:
    sa, sb = load_side(dir_a), load_side(dir_b)
    fa, fb = collect(sa.root), collect(sb.root)
    results: list[Result] = []
    for rel in sorted(fa.keys() | fb.keys()):
        if rel not in fb:
            results.append(Result(rel, "", ["only in A"]))
        elif rel not in fa:
            results.append(Result(rel, "", ["only in B"]))
        else:
            try:
                results.append(compare_one(rel, fa[rel], fb[rel], sa, sb))
            except Exception as e:  # a file that cannot be read is a difference
                results.append(Result(rel, "", [f"could not compare: {type(e).__name__}: {e}"]))
    ignored: dict[str, set[str]] = {}
    for r in results:
        status = "identical" if not r.diffs else "DIFFERS"
        print(f"{r.rel}: {r.summary}{', ' if r.summary else ''}{status}")
        for d in r.diffs:
            print(f"    {d}")
        if r.ignored:
            print(f"    ignored: {', '.join(r.ignored)}")
        for name in r.ignored:
            ignored.setdefault(name, set()).add(r.rel)
    print("\nignored (not compared), in how many files:")
    for name in sorted(ignored):
        print(f"  {name}: in {len(ignored[name])} file(s)")
    print()
    failed = command_table(sa, sb)
    n_bad = sum(1 for r in results if r.diffs)
    kinds = sorted({Path(r.rel).suffix for r in results})
    print(f"\n{len(results)} files ({', '.join(kinds)}), {n_bad} differ")
    if failed:
        print(f"{failed} command(s) failed or are missing on one side")
    print("RESULT:", "IDENTICAL" if n_bad == 0 and not failed else "DIFFERENT")
    return 1 if n_bad or failed else 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    sub = parser.add_subparsers(dest="cmd", required=True)
    cap = sub.add_parser("capture", help="run every job with SRC on PYTHONPATH into OUT")
    cap.add_argument("--pythonpath", type=Path, required=True, help="the source tree (…/src)")
    cap.add_argument("--out", type=Path, required=True, help="a new or empty directory")
    cap.add_argument("--python", default=sys.executable, help="the interpreter (default: this)")
    cap.add_argument("--only", action="append", default=[], help="capture this step only")
    cmp = sub.add_parser("compare", help="compare two captures; exit 1 if anything differs")
    cmp.add_argument("dir_a", type=Path)
    cmp.add_argument("dir_b", type=Path)
    args = parser.parse_args(argv)
    if args.cmd == "capture":
        return capture(args.pythonpath, args.out, args.python, args.only)
    return compare(args.dir_a, args.dir_b)


if __name__ == "__main__":
    sys.exit(main())
