"""The reliability pipeline's sweep grid, timed side by side in one run (a script, not a test).

    python benchmarks/bench_sweep.py [--prompts 24] [--tokens 48] [--rounds 2] [--batch 128]
        [--matmul-dtype bf16] [--device cuda --dtype bfloat16]

On the embedded model (fp32), with the sweep's sampling (temperature 0.7, top-p 0.9):

- ``sweep``: steerlab, the pipeline's grid (3 layers x {add, ablate} x 4 non-zero α, plus the
  unsteered baseline) as per-row settings in one ``generate`` call;
- ``hf_per_setting``: Hugging Face ``generate`` once per setting, all prompts batched, with a
  forward hook steering every position (how the steering-vectors library does it);
- ``unsteered``: steerlab on the same rows with no steering.

The contenders run in interleaved rounds (this VM's speed drifts by several percent over
minutes); each figure is the median over rounds. A GEMM ceiling is measured in the same run
(matmuls in the model's dtype on its device, at the model's widths and at a large size);
``ceiling_fraction`` is the FLOPs the sweep did on real tokens (prompt tokens it computed,
shared prefixes once and blocks it skipped left out, plus generated tokens, each 2 x
parameters) per second over that ceiling.

Ends with ``RATIOS sweep/hf_per_setting=... steered/unsteered=... ceiling_fraction=...``.
Targets on 2 cores: >= 3, >= 0.95, >= 0.6.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import torch

from steerlab.directions import forced_prefix
from steerlab.engine.generate import GenerationConfig, Row, generate
from steerlab.interventions import Intervention
from steerlab.models import Model, load_model

ALPHAS = (0.5, 1.0, 2.0, 4.0)
KINDS = ("add", "ablate")
PROMPTS = Path(__file__).resolve().parents[1] / "src/steerlab/data/prompts"


def gemm_ceiling(device: torch.device, dtype: torch.dtype, repeats: int = 5) -> float:
    """Best GEMM rate (FLOP/s) in the model's dtype on its device, over a large square and the
    model's decode shapes."""
    big = 8192 if device.type == "cuda" else 2048
    best = 0.0
    for m, k, n in ((big, big, big), (256, 576, 1536), (256, 1536, 576), (256, 576, 49152)):
        a = torch.randn(m, k, device=device, dtype=dtype)
        b = torch.randn(k, n, device=device, dtype=dtype)
        torch.mm(a, b)
        for _ in range(repeats):
            _sync(device)
            t0 = time.perf_counter()
            torch.mm(a, b)
            _sync(device)
            best = max(best, 2 * m * k * n / (time.perf_counter() - t0))
    return best


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def read_prompts(n: int) -> list[str]:
    """``n`` prompts, alternating the shipped harmful and benign test sets."""
    out: list[str] = []
    for name in ("harm_test", "benign"):
        with open(PROMPTS / f"{name}.jsonl", encoding="utf-8") as f:
            rows = [json.loads(line) for line in f if line.strip()]
        out += [r.get("prompt") or r.get("text") for r in rows[: (n + 1) // 2]]
    return out[:n]


@contextlib.contextmanager
def hook(model: Model, layer: int, kind: str, vec: torch.Tensor, alpha: float) -> Iterator[None]:
    """A forward hook on one block steering every position: add α·v (steerlab's ``add`` with
    ``scale="diff"``), or remove α times the projection on v's unit vector (``ablate``)."""
    unit = (vec / vec.norm()).to(model.device, model.dtype)
    add = (alpha * vec).to(model.device, model.dtype)

    def fn(_m: torch.nn.Module, _a: object, out: object) -> object:
        h = out[0] if isinstance(out, tuple) else out
        h = h + add if kind == "add" else h - alpha * (h @ unit)[..., None] * unit
        return (h, *out[1:]) if isinstance(out, tuple) else h

    handle = model.layers[layer].register_forward_hook(fn)
    try:
        yield
    finally:
        handle.remove()


def greedy_agreement(a: Model, b: Model, rows: list[Row], tokens: int) -> tuple[float, float]:
    """Greedy decoding of ``rows`` on both models: the fraction of rows whose tokens are
    identical, and the fraction of tokens (of ``a``'s) before the first divergence."""
    cfg = GenerationConfig(max_new_tokens=tokens, batch_size=128)
    ra, rb = generate(a, rows, cfg, progress=False), generate(b, rows, cfg, progress=False)
    same, agree, total = 0, 0, 0
    for x, y in zip(ra, rb, strict=True):
        same += x.token_ids == y.token_ids
        n = 0
        while n < min(len(x.token_ids), len(y.token_ids)) and x.token_ids[n] == y.token_ids[n]:
            n += 1
        agree, total = agree + n, total + len(x.token_ids)
    return same / len(rows), agree / max(total, 1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="embedded")
    ap.add_argument("--prompts", type=int, default=24)
    ap.add_argument("--tokens", type=int, default=48)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument(
        "--matmul-dtype",
        default=None,
        help="also time the sweep with this reduced-precision matmul mode (bf16) and report its "
        "greedy-token agreement with float32",
    )
    ap.add_argument("--skip-hf", action="store_true", help="leave out HF generate per setting")
    ap.add_argument("--device", default="cpu", help="cpu (where the targets hold), cuda, auto")
    ap.add_argument("--dtype", default=None, help="model dtype (default: float32 on CPU)")
    args = ap.parse_args()

    device = None if args.device == "auto" else args.device
    model = load_model(args.model, device=device, dtype=args.dtype)
    n = model.n_layers
    layers = sorted({n * 4 // 15, n // 2, n * 11 // 15})
    n_params = sum(p.numel() for p in model.hf.parameters())
    prompts = [model.format_prompt(q) for q in read_prompts(args.prompts)]
    vec = forced_prefix(model, read_prompts(8), layers, batch_size=8).vector
    grid = [(L, k, a) for L in layers for k in KINDS for a in ALPHAS]
    settings: list[tuple[Intervention, ...]] = [()] + [
        (Intervention(vec, L, k, a, scale="diff"),) for L, k, a in grid
    ]
    rows = [Row(p, s, seed=i) for s in settings for i, p in enumerate(prompts)]
    plain = [Row(r.prompt, (), seed=r.seed) for r in rows]
    cfg = GenerationConfig(
        max_new_tokens=args.tokens, temperature=0.7, top_p=0.9, batch_size=args.batch
    )
    print(
        f"model {model.name} ({n_params / 1e6:.1f} M parameters, {model.dtype}) on "
        f"{model.device}, torch threads {torch.get_num_threads()}; {len(prompts)} prompts x "
        f"{len(settings)} settings = {len(rows)} rows, {args.tokens} new tokens, layers {layers}"
    )
    stats: dict[str, int] = {}

    def sweep() -> int:
        stats.clear()
        out = generate(model, rows, cfg, progress=False, stats=stats)
        return sum(len(r.token_ids) for r in out)

    plain_stats: dict[str, int] = {}

    def unsteered() -> int:
        plain_stats.clear()
        out = generate(model, plain, cfg, progress=False, stats=plain_stats)
        return sum(len(r.token_ids) for r in out)

    def hf_per_setting() -> int:
        tok = model.tokenizer
        enc = tok(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
        total = 0
        for setting in settings:
            ctx: contextlib.AbstractContextManager[None] = contextlib.nullcontext()
            if setting:
                iv = setting[0]
                ctx = hook(model, iv.layer, iv.kind, vec.direction(iv.layer), iv.alpha)
            with ctx, torch.inference_mode():
                out = model.hf.generate(
                    **enc.to(model.device),
                    max_new_tokens=args.tokens,
                    do_sample=True,
                    temperature=0.7,
                    top_p=0.9,
                    pad_token_id=tok.pad_token_id,
                    eos_token_id=list(model.eos_token_ids),
                )
            gen = out[:, enc["input_ids"].shape[1] :]
            is_eos = torch.isin(gen, torch.tensor(model.eos_token_ids, device=gen.device))
            first = torch.where(is_eos.any(-1), is_eos.int().argmax(-1), gen.shape[1])
            total += int(first.sum())
        return total

    generate(model, rows[:4], GenerationConfig(max_new_tokens=4), progress=False)  # warm-up
    contenders: dict[str, Callable[[], int]] = {
        "sweep": sweep,
        "hf_per_setting": hf_per_setting,
        "unsteered": unsteered,
    }
    if args.skip_hf:
        del contenders["hf_per_setting"]
    low: Model | None = None
    if args.matmul_dtype:
        low = load_model(
            args.model, device=device, dtype=args.dtype, matmul_dtype=args.matmul_dtype
        )

        def sweep_low() -> int:
            assert low is not None
            return sum(len(r.token_ids) for r in generate(low, rows, cfg, progress=False))

        contenders[f"sweep_{args.matmul_dtype}"] = sweep_low
    secs: dict[str, list[float]] = {k: [] for k in contenders}
    toks: dict[str, list[int]] = {k: [] for k in contenders}
    ceilings: list[float] = []
    sweep_stats: list[dict[str, int]] = []
    for r in range(args.rounds):
        ceilings.append(gemm_ceiling(model.device, model.dtype))
        for name, fn in contenders.items():
            t0 = time.perf_counter()
            toks[name].append(fn())
            secs[name].append(time.perf_counter() - t0)
            if name == "sweep":
                sweep_stats.append(dict(stats))
            print(f"  round {r + 1} {name:15s} {secs[name][-1]:7.1f} s  {toks[name][-1]} tokens")
    med = {k: statistics.median(v) for k, v in secs.items()}
    med.setdefault("hf_per_setting", float("nan"))
    tps = {k: statistics.median(t / s for t, s in zip(toks[k], secs[k], strict=True)) for k in secs}
    ceiling = statistics.median(ceilings)
    st = sweep_stats[-1]
    # blocks a prompt token did not run (its prompt's lower layers were shared) did no work
    block_params = sum(p.numel() for p in model.layers[0].parameters())
    skipped = st.get("prompt_block_tokens_skipped", 0)
    flops = 2 * n_params * (st["prompt_tokens_computed"] + st["generated_tokens"])
    flops -= 2 * block_params * skipped
    frac = flops / med["sweep"] / ceiling
    print(
        f"wall (median of {args.rounds}): sweep {med['sweep']:.1f} s | HF generate per setting "
        f"{med['hf_per_setting']:.1f} s | steerlab unsteered {med['unsteered']:.1f} s"
    )
    print("generated tokens/s: " + " | ".join(f"{k} {v:.0f}" for k, v in tps.items()))
    print(
        f"sweep work: {st['prompt_tokens']} prompt tokens, of which computed "
        f"{st['prompt_tokens_computed']} (shared prefix {st['shared_prefix']} tokens; "
        f"{skipped / n / max(st['prompt_tokens_computed'], 1):.0%} of their blocks skipped, lower "
        f"layers shared; {st.get('prompt_tokens_reused', 0)} reused whole), "
        f"{st['generated_tokens']} generated; positions run incl. pads and "
        f"finished rows {st['positions_run']}"
    )
    if low is not None:
        name = f"sweep_{args.matmul_dtype}"
        same, frac_tok = greedy_agreement(model, low, rows, args.tokens)
        print(
            f"{args.matmul_dtype} matmuls: sweep {med[name]:.1f} s, {tps[name]:.0f} tok/s "
            f"({tps[name] / tps['sweep']:.2f}x float32); greedy agreement with float32 over "
            f"{len(rows)} rows: {same:.1%} of rows identical, {frac_tok:.1%} of tokens before "
            "the first divergence"
        )
    print(
        f"GEMM ceiling {ceiling / 1e9:.1f} GFLOP/s; sweep did {flops / med['sweep'] / 1e9:.1f} "
        f"GFLOP/s on real tokens"
    )
    # Steered rows run longer than unsteered ones (strong steering rarely stops at EOS), so
    # steered/unsteered compares generated tokens per second, not wall time. The unsteered rows
    # repeat each prompt once per setting, so the engine prefills each prompt once for all of
    # them; steered rows recompute the blocks from their steered layer up.
    print(
        "unsteered: each prompt's prefill computed once for its "
        f"{len(settings)} identical rows; steered rows rerun the blocks from their steered layer up"
    )
    if "decode_ms" in st and "decode_ms" in plain_stats:  # the last round of each
        ps, pd = st["prefill_ms"] / 1000, st["decode_ms"] / 1000
        qs, qd = plain_stats["prefill_ms"] / 1000, plain_stats["decode_ms"] / 1000
        print(
            f"time in prefill / decode steps (last round): sweep {ps:.1f} s / {pd:.1f} s | "
            f"unsteered {qs:.1f} s / {qd:.1f} s; decode steps steered/unsteered "
            f"{qd / max(pd, 1e-9):.3f} (tokens/s ratio, same token counts within "
            f"{abs(st['generated_tokens'] - plain_stats['generated_tokens'])})"
        )
    print(
        f"RATIOS sweep/hf_per_setting={med['hf_per_setting'] / med['sweep']:.2f} "
        f"steered/unsteered={tps['sweep'] / tps['unsteered']:.3f} ceiling_fraction={frac:.2f}"
    )


if __name__ == "__main__":
    main()
