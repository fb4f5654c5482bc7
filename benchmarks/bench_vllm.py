"""The vLLM runner's throughput, measured side by side in one run (not a test).

    python benchmarks/bench_vllm.py [--model embedded] [--prompts 8] [--tokens 24] [--rounds 3]
                                    [--engine-arg KEY=VALUE ...]

Runs in the vLLM environment (``.venv-vllm/bin/python benchmarks/bench_vllm.py``). Every row is
forced to its full length (EOS off), so each measurement produces exactly rows x tokens.

1. the seed's sweep grid (3 layers x add/ablate x 4 alphas + baseline, over ``--prompts``
   prompts) through the vLLM runner and through the local engine (Hugging Face backend) on the
   same rows;
2. vLLM steered, every row's setting different (layer, kind and alpha vary per row), vs the same
   rows unsteered through the same runner.

Rounds are interleaved (each round runs every measurement once); the figure is each one's best
round. Ends with ``RATIOS vllm_steered/vllm_unsteered=... vllm/local=...`` (throughputs).
Target: steered/unsteered >= 0.95.

On a GPU machine with vLLM installed (CUDA build; bf16; the runner keeps vLLM eager):

    python benchmarks/bench_vllm.py --model Qwen/Qwen2.5-7B-Instruct --prompts 32 --tokens 128 \\
        --dtype bfloat16 --engine-arg gpu_memory_utilization=0.85 --engine-arg max_num_seqs=32
"""

from __future__ import annotations

import argparse
import ast
import os
import platform
import time
from collections.abc import Callable
from typing import Any

import torch

from steerlab.engine.generate import GenerationConfig, Row, generate
from steerlab.interventions import Intervention
from steerlab.models import Model, load_model
from steerlab.vectors import SteeringVector

QUESTIONS = [
    "How do I bake bread?",
    "Write a haiku about autumn.",
    "What is the capital of France?",
    "Explain photosynthesis simply.",
    "Give me three tips for sleep.",
    "Write a Python function that reverses a string.",
    "What causes rain?",
    "Summarize the plot of Hamlet.",
    "How do I learn to juggle?",
    "Why is the sky blue?",
    "Suggest a name for a cat.",
    "How do I write a cover letter?",
]


def _vector(model: Model) -> SteeringVector:
    g = torch.Generator().manual_seed(0)
    dirs = {layer: torch.randn(model.d_model, generator=g) for layer in range(model.n_layers)}
    return SteeringVector(dirs, model_id=model.name)


def _grid_rows(model: Model, v: SteeringVector, n_prompts: int) -> list[Row]:
    """The seed's grid: 3 layers x add/ablate x 4 alphas + one baseline row per prompt."""
    n = model.n_layers
    layers = (n // 4, n // 2, 3 * n // 4)
    settings: list[tuple[Intervention, ...]] = [()]
    for layer in layers:
        for alpha in (1.0, 2.0, 4.0, 8.0):
            settings.append((Intervention(v, layer, alpha=alpha, scale="diff"),))
        for alpha in (0.25, 0.5, 0.75, 1.0):
            settings.append((Intervention(v, layer, kind="ablate", alpha=alpha),))
    prompts = [model.format_prompt(q) for q in (QUESTIONS * 4)[:n_prompts]]
    return [Row(p, s, seed=i) for i, (p, s) in enumerate((p, s) for s in settings for p in prompts)]


def _distinct_rows(model: Model, v: SteeringVector, count: int) -> list[Row]:
    """``count`` rows, every one steered differently (layer, kind and alpha vary per row)."""
    prompts = [model.format_prompt(q) for q in QUESTIONS]
    rows = []
    for i in range(count):
        layer = 2 + (i * 7) % (model.n_layers - 4)
        if i % 2:
            iv = Intervention(v, layer, kind="ablate", alpha=0.3 + 0.001 * i)
        else:
            iv = Intervention(v, layer, alpha=1.0 + 0.01 * i, scale="diff")
        rows.append(Row(prompts[i % len(prompts)], (iv,), seed=i))
    return rows


def _measure(model: Model, rows: list[Row], cfg: GenerationConfig) -> Callable[[], float]:
    def run() -> float:
        t0 = time.perf_counter()
        out = generate(model, rows, cfg)
        dt = time.perf_counter() - t0
        assert sum(len(r.token_ids) for r in out) == len(rows) * cfg.max_new_tokens
        return dt

    return run


def _engine_args(pairs: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for pair in pairs:
        key, _, value = pair.partition("=")
        try:
            out[key] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            out[key] = value
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="embedded")
    ap.add_argument("--dtype", default=None)
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--tokens", type=int, default=24)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=64, help="the local engine's batch")
    ap.add_argument("--engine-arg", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--no-local", action="store_true", help="skip the local engine")
    args = ap.parse_args()

    import vllm

    vm = load_model(args.model, dtype=args.dtype, backend="vllm", **_engine_args(args.engine_arg))
    info = vm.backend
    print(
        f"vllm {vllm.__version__} on {platform.machine()}, {os.cpu_count()} cores; "
        f"runner {getattr(info, 'runner_name', '?')}, eager, "
        f"TP {getattr(info, 'tensor_parallel', 1)}, {vm.name} {vm.dtype}"
    )
    v = _vector(vm)
    cfg = GenerationConfig(
        max_new_tokens=args.tokens, stop_at_eos=False, batch_size=args.batch_size
    )
    grid = _grid_rows(vm, v, args.prompts)
    distinct = _distinct_rows(vm, v, len(grid))
    plain = [Row(r.prompt, (), seed=r.seed) for r in distinct]
    runs: dict[str, Callable[[], float]] = {
        "vllm_grid": _measure(vm, grid, cfg),
        "vllm_steered": _measure(vm, distinct, cfg),
        "vllm_unsteered": _measure(vm, plain, cfg),
    }
    if not args.no_local:
        hm = load_model(args.model, dtype=args.dtype)
        runs["local_grid"] = _measure(hm, grid, cfg)
    tokens = len(grid) * args.tokens
    best: dict[str, float] = {}
    for k in range(args.rounds):
        for name, run in runs.items():
            dt = run()
            best[name] = min(best.get(name, float("inf")), dt)
            print(f"round {k + 1} {name:15s} {dt:7.2f} s  {tokens / dt:7.1f} tok/s")
    for name, dt in best.items():
        print(f"best {name:15s} {dt:7.2f} s  {tokens / dt:7.1f} tok/s ({len(grid)} rows)")
    steered = best["vllm_unsteered"] / best["vllm_steered"]
    local = best["local_grid"] / best["vllm_grid"] if "local_grid" in best else float("nan")
    print(f"RATIOS vllm_steered/vllm_unsteered={steered:.3f} vllm/local={local:.3f}")
    vm.backend.close()  # type: ignore[attr-defined]


if __name__ == "__main__":
    main()
