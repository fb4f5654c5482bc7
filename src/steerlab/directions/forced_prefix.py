"""Forced-prefix direction: act(p + refusal prefix) - act(p + compliance prefix).

Each prompt is formatted as a chat turn and both prefixes are teacher-forced as the start of the
assistant's answer (token ids concatenated, so the prompt tokens are identical on both sides).

Positions: ``mean_prefix`` (default: mean over each prefix's tokens), ``first_prefix``,
``last_prefix``. ``last_prompt`` is refused: in a causal model the last prompt token cannot see
the prefix, so both sides are identical there and the difference is exactly zero.
"""

from __future__ import annotations

from collections.abc import Sequence

from steerlab.directions.base import (
    BuildResult,
    check_layers,
    diff_stats,
    make_vector,
    mean_resid,
    prompts_hash,
)
from steerlab.engine.record import record
from steerlab.errors import SteerlabError
from steerlab.models import Model

REFUSAL_PREFIX = " I can't help with that."
COMPLIANCE_PREFIX = " Sure, here's how:"
POSITIONS = ("mean_prefix", "first_prefix", "last_prefix")


def _prefix_positions(spec: str, n_prompt: int, n_prefix: int) -> list[int]:
    if spec == "mean_prefix":
        return list(range(n_prompt, n_prompt + n_prefix))
    if spec == "first_prefix":
        return [n_prompt]
    if spec == "last_prefix":
        return [n_prompt + n_prefix - 1]
    if spec in ("last_prompt", "last_prompt_token"):
        raise SteerlabError(
            "position 'last_prompt' gives a zero direction for forced prefixes: a causal model's "
            "last prompt token cannot see the prefix; use mean_prefix, first_prefix or last_prefix"
        )
    raise SteerlabError(f"unknown position {spec!r}: use one of {POSITIONS}")


def forced_prefix(
    model: Model,
    prompts: Sequence[str],
    layers: Sequence[int],
    refusal_prefix: str = REFUSAL_PREFIX,
    compliance_prefix: str = COMPLIANCE_PREFIX,
    hook_point: str = "resid_post",
    position: str = "mean_prefix",
    chat: bool = True,
    system: str | None = None,
    batch_size: int = 16,
    progress: bool = False,
) -> BuildResult:
    """Mean over prompts of the refusal-minus-compliance activation difference."""
    layers = check_layers(model, layers)
    if not prompts:
        raise SteerlabError("forced-prefix needs at least one prompt")
    pre_ids = {}
    for name, prefix in (("refusal", refusal_prefix), ("compliance", compliance_prefix)):
        ids = model.tokenizer(prefix, add_special_tokens=False, split_special_tokens=True)[
            "input_ids"
        ]
        if not ids:
            raise SteerlabError(f"the {name} prefix encodes to zero tokens")
        pre_ids[name] = [int(i) for i in ids]
    recs = {}
    for name, ids in pre_ids.items():
        seqs, pos = [], []
        for p in prompts:
            head = model.encode(model.format_prompt(p, system=system, chat=chat))
            seqs.append(head + ids)
            pos.append(_prefix_positions(position, len(head), len(ids)))
        recs[name] = record(model, seqs, pos, layers, hook_point, batch_size, progress, name)
    dirs, stats = {}, {}
    for layer in layers:
        diffs = recs["refusal"].acts[layer] - recs["compliance"].acts[layer]  # (N, d)
        dirs[layer] = diffs.mean(0)
        resid = mean_resid(recs["refusal"], recs["compliance"], layer=layer)
        stats[layer] = diff_stats(diffs, dirs[layer], resid, batch_size)
    phash = prompts_hash(
        "forced_prefix", list(prompts), refusal_prefix, compliance_prefix, position, chat, system
    )
    extra = {
        "position": position,
        "chat": chat,
        "refusal_prefix": refusal_prefix,
        "compliance_prefix": compliance_prefix,
        "n_prompts": len(prompts),
    }
    return make_vector(model, dirs, stats, hook_point, "forced_prefix", phash, extra)
