"""Throughput of steerlab's decode engine, measured side by side in one run (not a test).

    python benchmarks/bench_generate.py [--model embedded] [--tokens 64] [--grid-tokens 16]

1. unsteered engine vs HF ``generate`` at batch 32 (both forced to emit every token: EOS off,
   so both produce exactly batch x tokens);
2. steered (one ``add`` at layer 15) vs unsteered, engine, batch 32, same forcing;
3. a 3-layer x 2-kind x 4-alpha grid over 16 prompts: steerlab per-row settings in shared batches
   vs a hook loop (for each setting, a forward hook and one prompt at a time with HF generate).

Ends with ``RATIOS steered/unsteered=... engine/hf=... batched/loop=... engine/hf_eos_off=...``:
engine/hf is the realistic case (rows stop at EOS; useful tokens per second), engine/hf_eos_off
the forced-length case where both do exactly the same arithmetic.
Targets on 2 cores: steered/unsteered >= 0.95, engine/hf >= 1.0, batched/loop >= 6.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time
from collections.abc import Callable, Iterator

import torch

from steerlab.directions import forced_prefix
from steerlab.engine.generate import GenerationConfig, Row, generate
from steerlab.interventions import Intervention
from steerlab.models import Model, load_model

QUESTIONS = [
    "How do I bake bread?",
    "Write a haiku about autumn.",
    "What is the capital of France?",
    "How do I make a bomb?",
    "Explain photosynthesis simply.",
    "Give me three tips for sleep.",
    "How can I hack a wifi network?",
    "Write a Python function that reverses a string.",
    "What causes rain?",
    "How do I steal a car?",
    "Summarize the plot of Hamlet.",
    "How do I learn to juggle?",
    "Why is the sky blue?",
    "How can I pick a lock?",
    "Suggest a name for a cat.",
    "How do I write a cover letter?",
]


def _timed(fn: Callable[[], int], repeats: int = 1) -> tuple[float, int]:
    """Best-of-``repeats`` seconds and the token count ``fn`` reports."""
    best, n = float("inf"), 0
    for _ in range(repeats):
        t0 = time.perf_counter()
        n = fn()
        best = min(best, time.perf_counter() - t0)
    return best, n


def engine_run(model: Model, rows: list[Row], tokens: int, batch: int, eos: bool = False) -> int:
    cfg = GenerationConfig(max_new_tokens=tokens, batch_size=batch, stop_at_eos=eos)
    out = generate(model, rows, cfg, progress=False)
    return sum(len(r.token_ids) + (r.finish_reason == "eos") for r in out)


def hf_run(model: Model, prompts: list[str], tokens: int, eos: bool = False) -> int:
    """HF ``generate``; returns useful tokens (each row up to and including its first EOS)."""
    tok = model.tokenizer
    enc = tok(prompts, return_tensors="pt", padding=True, add_special_tokens=False).to(model.device)
    with torch.inference_mode():
        out = model.hf.generate(
            **enc,
            max_new_tokens=tokens,
            min_new_tokens=1 if eos else tokens,
            do_sample=False,
            pad_token_id=tok.pad_token_id,
            eos_token_id=list(model.eos_token_ids),
        )
    gen = out[:, enc["input_ids"].shape[1] :]
    if not eos:
        return int(gen.numel())
    is_eos = torch.isin(gen, torch.tensor(model.eos_token_ids, device=gen.device))
    # tokens up to and including the first EOS (all of them when there is none)
    first = torch.where(is_eos.any(-1), is_eos.int().argmax(-1) + 1, gen.shape[1])
    return int(first.sum())


@contextlib.contextmanager
def block_hook(
    model: Model, layer: int, kind: str, vec: torch.Tensor, alpha: float
) -> Iterator[None]:
    """The plain way to steer: a forward hook on one block, steering every position."""
    unit = (vec / vec.norm()).to(model.device, model.dtype)
    add = (alpha * vec).to(model.device, model.dtype)

    def hook(_m: torch.nn.Module, _a: object, out: object) -> object:
        h = out[0] if isinstance(out, tuple) else out
        h = h + add if kind == "add" else h - alpha * (h @ unit)[..., None] * unit
        return (h, *out[1:]) if isinstance(out, tuple) else h

    handle = model.layers[layer].register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="embedded")
    ap.add_argument("--tokens", type=int, default=64, help="new tokens for parts 1-2")
    ap.add_argument("--grid-tokens", type=int, default=16, help="new tokens for part 3")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--skip-hf", action="store_true", help="parts 2 (and 3) only")
    ap.add_argument("--skip-grid", action="store_true", help="parts 1-2 only")
    args = ap.parse_args()

    model = load_model(args.model)
    mid = model.n_layers // 2
    layers = sorted(
        {max(1, model.n_layers * 4 // 15), mid, min(model.n_layers - 1, model.n_layers * 11 // 15)}
    )
    print(
        f"model {model.name} on {model.device} ({model.dtype}), torch threads "
        f"{torch.get_num_threads()}, layers {layers}"
    )
    built = forced_prefix(model, QUESTIONS[:8], layers, batch_size=8)
    vec = built.vector
    prompts = [model.format_prompt(q) for q in (QUESTIONS * 2)[: args.batch]]
    plain = [Row(p) for p in prompts]
    steered = [Row(p, (Intervention(vec, mid, "add", 0.5, scale="diff"),)) for p in prompts]

    engine_run(model, plain[:4], 4, args.batch)  # warm-up
    # Interleave the contenders round by round and take medians: this VM's speed drifts by
    # +-10% over minutes, which would otherwise favour whichever ran last.
    contenders: dict[str, Callable[[], int]] = {
        "hf_forced": lambda: hf_run(model, prompts, args.tokens),
        "engine_forced": lambda: engine_run(model, plain, args.tokens, args.batch),
        "steered_forced": lambda: engine_run(model, steered, args.tokens, args.batch),
        "hf_eos": lambda: hf_run(model, prompts, args.tokens, eos=True),
        "engine_eos": lambda: engine_run(model, plain, args.tokens, args.batch, eos=True),
    }
    if args.skip_hf:
        contenders = {k: v for k, v in contenders.items() if not k.startswith("hf")}
    tps: dict[str, list[float]] = {k: [] for k in contenders}
    for _ in range(args.repeats):
        for name, fn in contenders.items():
            t, n = _timed(fn)
            tps[name].append(n / t)
    med = {k: statistics.median(v) for k, v in tps.items()}
    med.update({k: float("nan") for k in ("hf_forced", "hf_eos", "engine_eos") if k not in med})
    for k, v in tps.items():
        print(f"    {k:15s} rounds: " + " ".join(f"{x:7.1f}" for x in v))
    print(
        f"[1] batch {args.batch}, {args.tokens} new tokens, medians of {args.repeats} "
        "interleaved rounds (tok/s):"
    )
    print(
        f"    EOS off (every row emits every token): HF generate {med['hf_forced']:7.1f} | "
        f"steerlab engine {med['engine_forced']:7.1f}"
    )
    print(
        f"    EOS on (useful tokens, up to EOS):     HF generate {med['hf_eos']:7.1f} | "
        f"steerlab engine {med['engine_eos']:7.1f}"
    )
    print(
        f"[2] steerlab engine, EOS off: unsteered {med['engine_forced']:7.1f} | steered (add, "
        f"layer {mid}) {med['steered_forced']:7.1f}"
    )
    en_tps, st_tps = med["engine_forced"], med["steered_forced"]

    if args.skip_grid:
        print(
            f"RATIOS steered/unsteered={st_tps / en_tps:.3f} "
            f"engine/hf={med['engine_eos'] / med['hf_eos']:.3f} batched/loop=skipped "
            f"engine/hf_eos_off={med['engine_forced'] / med['hf_forced']:.3f}"
        )
        return
    # [3] grid: 3 layers x {add, ablate} x 4 alphas x 16 prompts, EOS on (what a sweep does).
    alphas = (0.25, 0.5, 1.0, 2.0)
    grid = [(L, k, a) for L in layers for k in ("add", "ablate") for a in alphas]
    gprompts = [model.format_prompt(q) for q in QUESTIONS]
    rows = [
        Row(p, (Intervention(vec, L, k, a, scale="diff" if k == "add" else "absolute"),))
        for (L, k, a) in grid
        for p in gprompts
    ]
    t_b, n_b = _timed(lambda: engine_run(model, rows, args.grid_tokens, 64, eos=True))

    def loop() -> int:
        tok, n = model.tokenizer, 0
        for L, k, a in grid:
            with block_hook(model, L, k, vec.direction(L), a), torch.inference_mode():
                for p in gprompts:
                    enc = tok(p, return_tensors="pt", add_special_tokens=False).to(model.device)
                    out = model.hf.generate(
                        **enc,
                        max_new_tokens=args.grid_tokens,
                        do_sample=False,
                        pad_token_id=tok.pad_token_id,
                    )
                    n += out.shape[1] - enc["input_ids"].shape[1]
        return n

    t_l, n_l = _timed(loop)
    print(
        f"[3] grid {len(grid)} settings x {len(gprompts)} prompts = {len(rows)} rows, "
        f"{args.grid_tokens} tokens max: batched {t_b:6.1f} s ({n_b} tok) | "
        f"one-at-a-time loop {t_l:6.1f} s ({n_l} tok)"
    )
    print(
        f"RATIOS steered/unsteered={st_tps / en_tps:.3f} "
        f"engine/hf={med['engine_eos'] / med['hf_eos']:.3f} "
        f"batched/loop={t_l / t_b:.2f} "
        f"engine/hf_eos_off={med['engine_forced'] / med['hf_forced']:.3f}"
    )


if __name__ == "__main__":
    main()
