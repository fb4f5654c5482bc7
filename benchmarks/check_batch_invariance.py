"""Does a row's output depend on its batch? A check on a real model, on any device (not a test).

    python benchmarks/check_batch_invariance.py [--model embedded] [--device cuda]
        [--dtype float32] [--prompts 10] [--tokens 24]

Every prompt runs unsteered and under 18 settings (add / ablate / clamp x positions all,
generated, last-prompt x two layers) through the engine three ways: fixed batches (no continuous
batching, nothing shared), continuous batching with shared prefixes and lower layers, and
continuous batching without sharing; greedy and sampled (T=0.8, top-p 0.9, a seed per row).
Greedy rows of the first three prompts also run one at a time. Prints, for each pair, the rows
whose tokens are identical, the share of tokens before the first divergence and the largest
logprob difference where tokens agree.

In float32 all of them agree (the tiny-model tests check the same on every architecture). In
bf16 on a GPU they do not: which other rows share a batch changes the matmuls' rounding.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import torch

from steerlab._util.jsonl import read_jsonl
from steerlab.directions import contrast
from steerlab.engine.generate import GenerationConfig, Row, RowResult, generate
from steerlab.interventions import Intervention
from steerlab.models import load_model

PROMPTS = Path(__file__).resolve().parents[1] / "src/steerlab/data/prompts/benign.jsonl"


def compare(ref: list[RowResult], out: list[RowResult], name: str) -> None:
    same = sum(a.token_ids == b.token_ids for a, b in zip(ref, out, strict=True))
    diffs = [
        max((abs(x - y) for x, y in zip(a.logprobs, b.logprobs, strict=True)), default=0.0)
        for a, b in zip(ref, out, strict=True)
        if a.token_ids == b.token_ids
    ]
    before, total = 0, 0
    for a, b in zip(ref, out, strict=True):
        n = 0
        while n < min(len(a.token_ids), len(b.token_ids)) and a.token_ids[n] == b.token_ids[n]:
            n += 1
        before, total = before + n, total + len(a.token_ids)
    print(
        f"  {name}: tokens equal {same}/{len(ref)} rows, {before / max(total, 1):.1%} of tokens "
        f"before the first divergence; max |dlogprob| where equal {max(diffs, default=0):.2e}"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="embedded")
    ap.add_argument("--device", default=None, help="default: cuda when available, else cpu")
    ap.add_argument("--dtype", default=None, help="default: bf16 on cuda, float32 on cpu")
    ap.add_argument("--prompts", type=int, default=10)
    ap.add_argument("--tokens", type=int, default=24)
    args = ap.parse_args()

    model = load_model(args.model, device=args.device, dtype=args.dtype)
    print(f"{model.name} on {model.device}, {model.dtype}, torch {torch.__version__}")
    records = read_jsonl(PROMPTS)[: args.prompts]
    texts = [model.format_prompt(str(obj["prompt"])) for _, obj in records]
    layers = sorted({model.n_layers * 4 // 15, model.n_layers // 2})
    vec = contrast(
        model,
        ["I refuse. I can't help with that."],
        ["Sure, here is how to do it."],
        layers=layers,
    ).vector
    settings: list[tuple[Intervention, ...]] = [()]
    for layer in layers:
        for kind, alpha in (("add", 4.0), ("ablate", 1.0), ("clamp", 2.0)):
            for pos in ("all", "generated", "last-prompt"):
                settings.append((Intervention(vec, layer, kind, alpha, positions=pos),))
    rows = [Row(t, s, seed=i * 7 + j) for i, t in enumerate(texts) for j, s in enumerate(settings)]
    print(f"{len(rows)} rows, {args.tokens} new tokens")
    ways: dict[str, dict[str, Any]] = {
        "fixed": {"continuous": False, "share_prefix": False, "batch_size": 32},
        "continuous": {"batch_size": 16},
        "continuous_unshared": {"batch_size": 16, "share_prefix": False},
    }
    for temperature in (0.0, 0.8):
        outs: dict[str, list[RowResult]] = {}
        for name, kw in ways.items():
            cfg = GenerationConfig(
                max_new_tokens=args.tokens, temperature=temperature, top_p=0.9, **kw
            )
            t0 = time.perf_counter()
            outs[name] = generate(model, rows, cfg, progress=False)
            print(f"T={temperature} {name}: {time.perf_counter() - t0:.1f} s")
        for name in ("continuous", "continuous_unshared"):
            compare(outs["fixed"], outs[name], f"{name} vs fixed")
        if temperature == 0.0:
            n = min(len(rows), 3 * len(settings))
            cfg = GenerationConfig(max_new_tokens=args.tokens)
            alone = [generate(model, [r], cfg, progress=False)[0] for r in rows[:n]]
            compare(alone, outs["continuous"][:n], f"continuous vs each row alone ({n} rows)")
            compare(alone, outs["fixed"][:n], f"fixed batches vs each row alone ({n} rows)")


if __name__ == "__main__":
    main()
