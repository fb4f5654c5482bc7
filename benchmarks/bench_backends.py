"""The same steered batch through the three backends, tokens/s side by side (not a test).

    python benchmarks/bench_backends.py [--model embedded] [--batch 32] [--tokens 32] [--rounds 3]

One weight copy (loaded once) is wrapped by each backend: Hugging Face (torch hooks),
TransformerLens (a TransformerBridge and its hook points), nnsight (interventions in its trace).
Every row carries its own setting (add at three coefficients, an ablate, an unsteered row, ...),
greedy, EOS off so every backend emits exactly batch x tokens. Rounds are interleaved so a drift
in machine speed hits every backend alike; medians are printed with every round, then one line
``RATIOS transformer_lens/hf=... nnsight/hf=...`` and whether the greedy tokens agreed.
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import time

import torch

import steerlab as sl
from steerlab.models import Model, model_from_hf

QUESTIONS = [
    "How do I bake bread?",
    "Write a haiku about autumn.",
    "What is the capital of France?",
    "How do I make a bomb?",
    "Explain photosynthesis simply.",
    "Give me three tips for sleep.",
    "How can I hack a wifi network?",
    "Why is the sky blue?",
]


def rows_for(model: Model, vec: sl.SteeringVector, layer: int, batch: int) -> list[sl.Row]:
    settings: list[tuple[sl.Intervention, ...]] = [
        (),
        (sl.Intervention(vec, layer, "add", 0.5, scale="diff"),),
        (sl.Intervention(vec, layer, "add", 1.0, scale="diff"),),
        (sl.Intervention(vec, layer, "add", 1.0, scale="diff", positions="generated"),),
        (sl.Intervention(vec, layer, "ablate", 1.0),),
        (sl.Intervention(vec, layer, "clamp", 0.5, scale="diff"),),
    ]
    return [
        sl.Row(
            model.format_prompt(QUESTIONS[i % len(QUESTIONS)]),
            settings[i % len(settings)],
            seed=i,
        )
        for i in range(batch)
    ]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="embedded")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--tokens", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--layer", type=int, default=None)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    base = sl.load_model(args.model)
    layer = args.layer if args.layer is not None else base.n_layers // 2
    vec = sl.forced_prefix(base, QUESTIONS[:4], layers=[layer]).vector
    models = {"hf": base}
    for name in ("transformer_lens", "nnsight"):
        if importlib.util.find_spec(name) is None:
            print(f"    {name}: not installed, skipped")
            continue
        models[name] = model_from_hf(base.hf, base.tokenizer, base.name, backend=name)
    rows = rows_for(base, vec, layer, args.batch)
    cfg = sl.GenerationConfig(max_new_tokens=args.tokens, batch_size=args.batch, stop_at_eos=False)
    tps: dict[str, list[float]] = {k: [] for k in models}
    tokens: dict[str, list[tuple[int, ...]]] = {}
    for m in models.values():  # warm-up (first-call setup is not throughput)
        sl.generate(m, rows[:2], sl.GenerationConfig(max_new_tokens=2), progress=False)
    for _ in range(args.rounds):
        for name, m in models.items():
            t0 = time.perf_counter()
            out = sl.generate(m, rows, cfg, progress=False)
            dt = time.perf_counter() - t0
            tps[name].append(sum(len(r.token_ids) for r in out) / dt)
            tokens[name] = [r.token_ids for r in out]
    med = {k: statistics.median(v) for k, v in tps.items()}
    print(
        f"model {base.name}, layer {layer}, batch {args.batch} steered rows (6 settings), "
        f"{args.tokens} new tokens, greedy, EOS off, {args.threads} threads, "
        f"{args.rounds} interleaved rounds (tok/s):"
    )
    for k, v in tps.items():
        same = "tokens == hf" if tokens[k] == tokens["hf"] else "TOKENS DIFFER from hf"
        print(
            f"    {k:17s} median {med[k]:7.1f}  rounds: "
            + " ".join(f"{x:7.1f}" for x in v)
            + f"  ({same})"
        )
    ratios = " ".join(f"{k}/hf={med[k] / med['hf']:.3f}" for k in models if k != "hf")
    print(f"RATIOS {ratios}")


if __name__ == "__main__":
    main()
