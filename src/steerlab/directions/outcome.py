"""Outcome-conditioned direction: mean activation on the model's own refusals minus mean
activation on its own helpful answers.

For a model that refuses some prompts unprompted: its baseline completions are labeled refusal or
helpful, each completion is teacher-forced after its chat-formatted prompt (token ids
concatenated, exactly as the forced-prefix builder does with its prefixes), and the two classes
are averaged separately. Unlike forced prefixes, the text on each side is what the model really
said, so the classes need not be paired or equally sized.

Positions: ``mean_completion`` (default: mean over each completion's tokens),
``first_completion`` (the completion's first token), ``last_prompt`` (the last token of the
formatted prompt; the completion cannot reach it in a causal model, so it is not fed at all and
the direction separates the prompts the model went on to refuse from those it answered).
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

POSITIONS = ("mean_completion", "first_completion", "last_prompt")


def _positions(spec: str, n_prompt: int, n_completion: int) -> list[int]:
    """Indices into ``prompt ids + completion ids`` (the prompt alone for ``last_prompt``)."""
    if spec == "mean_completion":
        return list(range(n_prompt, n_prompt + n_completion))
    if spec == "first_completion":
        return [n_prompt]
    return [n_prompt - 1]  # last_prompt


def outcome_conditioned(
    model: Model,
    prompts: Sequence[str],
    completions: Sequence[str],
    refused: Sequence[bool],
    layers: Sequence[int],
    hook_point: str = "resid_post",
    position: str = "mean_completion",
    chat: bool = True,
    system: str | None = None,
    batch_size: int = 16,
    min_per_class: int = 2,
    progress: bool = False,
) -> BuildResult:
    """``mean(act | refused) - mean(act | helpful)`` over the model's own baseline completions.

    ``prompts`` are the unformatted user prompts, ``completions[i]`` the model's baseline answer
    to ``prompts[i]`` and ``refused[i]`` its label (True: refusal, False: helpful). The sign is
    fixed: +vector points from helpful to refusal, so adding it pushes towards refusing.

    With a completion position, an example whose completion encodes to zero tokens has nothing
    to read and is skipped (counted in ``extra["n_skipped"]``); ``last_prompt`` never skips.
    Each class needs at least ``min_per_class`` examples after skipping. ``batch_cosines``
    compare each batch of refusals (against the helpful mean) with the final vector.
    """
    if not len(prompts) == len(completions) == len(refused):
        raise SteerlabError(
            f"outcome-conditioned direction needs one completion and one label per prompt: got "
            f"{len(prompts)} prompts, {len(completions)} completions and {len(refused)} labels"
        )
    layers = check_layers(model, layers)
    if position not in POSITIONS:
        raise SteerlabError(f"unknown position {position!r}: use one of {POSITIONS}")
    if min_per_class < 1:
        raise SteerlabError(f"min_per_class must be at least 1, got {min_per_class}")

    use_completion = position != "last_prompt"
    seqs: dict[bool, list[list[int]]] = {True: [], False: []}
    pos: dict[bool, list[list[int]]] = {True: [], False: []}
    n_skipped = 0
    for prompt, completion, label in zip(prompts, completions, refused, strict=True):
        head = model.encode(model.format_prompt(prompt, system=system, chat=chat))
        tail: list[int] = []
        if use_completion:
            ids = model.tokenizer(completion, add_special_tokens=False, split_special_tokens=True)[
                "input_ids"
            ]
            tail = [int(i) for i in ids]
            if not tail:
                n_skipped += 1
                continue
        seqs[bool(label)].append(head + tail)
        pos[bool(label)].append(_positions(position, len(head), len(tail)))

    n_refusal, n_helpful = len(seqs[True]), len(seqs[False])
    if min(n_refusal, n_helpful) < min_per_class:
        plural = "" if n_skipped == 1 else "s"
        skipped = f" (after skipping {n_skipped} empty completion{plural})" if n_skipped else ""
        raise SteerlabError(
            f"outcome-conditioned direction needs at least {min_per_class} refusal and "
            f"{min_per_class} helpful baseline completions; the baseline has {n_refusal} refusal "
            f"and {n_helpful} helpful{skipped}: use more prompts, a different model, or "
            "direction.method: forced_prefix"
        )

    args = (layers, hook_point, batch_size, progress)
    rec = {
        label: record(model, seqs[label], pos[label], *args, desc)
        for label, desc in ((True, "refusal"), (False, "helpful"))
    }
    dirs, stats = {}, {}
    for layer in layers:
        ref, helpful = rec[True].acts[layer], rec[False].acts[layer]  # (N_ref, d), (N_help, d)
        dirs[layer] = ref.mean(0) - helpful.mean(0)
        # pseudo-pairs (each refusal against the helpful mean) give per-example spread and
        # batch stability, as for the labeled builder
        diffs = ref - helpful.mean(0, keepdim=True)
        resid = mean_resid(rec[True], rec[False], layer=layer)
        stats[layer] = diff_stats(diffs, dirs[layer], resid, batch_size)
    phash = prompts_hash(
        "outcome_conditioned",
        list(prompts),
        list(completions),
        [bool(r) for r in refused],
        position,
        chat,
        system,
    )
    extra = {
        "position": position,
        "chat": chat,
        "n_refusal": n_refusal,
        "n_helpful": n_helpful,
        "n_skipped": n_skipped,
    }
    return make_vector(model, dirs, stats, hook_point, "outcome_conditioned", phash, extra)
