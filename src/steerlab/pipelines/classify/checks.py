"""The sign check of ``steerlab classify``: every vector, before the grid is read.

For the pooled vector and each group's vector, at every layer, the held-out split is scored
unsteered, at ``+α`` and at ``−α`` (α: the sign-check strength), in the grid's mode, and
:func:`steerlab.analysis.signcheck.sign_check` (logit mode: mean P(target)) or
:func:`steerlab.analysis.signcheck.answer_sign_check` (generate mode: the rate of answers stating
the target) asks whether ``+α`` moves the target the intended way. Slices:

- pooled: the held-out examples labeled with the target (e.g. "raise P(vulnerable)
  on vulnerable snippets");
- a group: all of that group's held-out examples, every label (a vector's sign shows on every
  example, and a group's slice is small).

The rows are one sharded stage (resumable; :func:`steerlab.pipelines.classify.run.signcheck_stage`
scores them, this module reads them); ``signcheck.json`` holds one entry per (vector, layer). A
vector is *backwards* when some layer says ``flipped`` and none says ``ok``; those vectors are named
at the top of the log and of ``report.md`` with the flipped vector's effect (the ``−α`` column),
next to the command that reruns with them negated (``--flip-groups``, or ``--flip-sign`` when every
vector is backwards).
"""

from __future__ import annotations

import logging
import shlex
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import pandas as pd

from steerlab.pipelines.classify.config import BASELINE, POOLED, ClassifyConfig
from steerlab.pipelines.classify.results import task_of

logger = logging.getLogger(__name__)
STAGE = "signcheck"


def judge(
    cfg: ClassifyConfig, df: pd.DataFrame, vectors: Sequence[str], layers: Sequence[int]
) -> list[dict[str, Any]]:
    """One sign-check entry per (vector, layer) from the scored check rows: the pooled vector
    first, then the groups in the task's order."""
    task = task_of(cfg.task)
    held = task.split(task.config.eval_split)
    a = cfg.check_strength()
    by_key = df.set_index(["vector", "layer", "strength", "example_id"]).sort_index()
    out = []
    for vector in vectors:
        exs = held if vector == POOLED else [e for e in held if e.group == vector]
        ids = [e.id for e in exs]
        labels = [e.label for e in exs]
        on = None if vector == POOLED else tuple(task.config.labels)
        base = by_key.loc[(BASELINE, -1, 0.0)].loc[ids]
        for layer in layers:
            plus, minus = (by_key.loc[(vector, layer, s)].loc[ids] for s in (a, -a))
            check = _check(cfg, base, plus, minus, labels, on, a)
            out.append(
                {"vector": vector, "layer": layer, "flipped_in_run": cfg.flipped(vector), **check}
            )
    return out


def _check(
    cfg: ClassifyConfig,
    base: pd.DataFrame,
    plus: pd.DataFrame,
    minus: pd.DataFrame,
    labels: list[str],
    on: tuple[str, ...] | None,
    alpha: float,
) -> dict[str, Any]:
    from steerlab.analysis.signcheck import answer_sign_check, sign_check

    c = task_of(cfg.task).config
    kw: dict[str, Any] = dict(
        target_label=c.intended.target,
        direction=c.intended.direction,
        on_label=on,
        alpha=alpha,
        min_examples=cfg.sign_check_min_examples,
        remedy="Rerun with it negated: the command is at the top of the log and of report.md.",
    )
    if cfg.grid_mode() == "generate":
        b_ans, p_ans, m_ans = (f["parsed"].tolist() for f in (base, plus, minus))
        return answer_sign_check(b_ans, p_ans, m_ans, labels, **kw).as_dict()
    b, p, m = (_scores(f, c.positive, _negative(c.labels, c.positive)) for f in (base, plus, minus))
    return sign_check(b, p, m, labels, **kw).as_dict()


def _negative(labels: Sequence[str], positive: str) -> str:
    return next(label for label in labels if label != positive)


def _scores(df: pd.DataFrame, positive: str, negative: str) -> Any:
    import torch

    from steerlab.engine.score import LogitScores

    logp = torch.tensor(df[["logp_positive", "logp_negative"]].to_numpy(), dtype=torch.float32)
    return LogitScores((positive, negative), logp, positive, negative)  # (N, 2)


# ----------------------------------------------------------------------------- verdicts per vector


@dataclass(frozen=True)
class Advice:
    """What the sign checks say about each vector as applied in this run, and what to run.

    ``backwards``: vectors flipped at some layer and ok at none; ``mixed``: flipped at one
    layer and ok at another (the layer decides); ``flips``: the vectors to negate in a rerun
    (this run's negated vectors, with the backwards ones toggled); ``command``: that rerun, or
    None when nothing is backwards."""

    backwards: tuple[str, ...]
    mixed: tuple[str, ...]
    flips: tuple[str, ...]
    command: str | None


def advise(cfg: ClassifyConfig, checks: Sequence[dict[str, Any]]) -> Advice:
    verdicts: dict[str, set[str]] = {}
    for c in checks:
        verdicts.setdefault(c["vector"], set()).add(c["verdict"])
    backwards = tuple(v for v, s in verdicts.items() if "flipped" in s and "ok" not in s)
    mixed = tuple(v for v, s in verdicts.items() if {"flipped", "ok"} <= s)
    now = {v for v in verdicts if cfg.flipped(v)}
    flips = tuple(v for v in verdicts if (v in now) != (v in backwards))
    command = rerun_command(cfg, flips, list(verdicts)) if backwards else None
    return Advice(backwards, mixed, flips, command)


def rerun_command(cfg: ClassifyConfig, flips: Sequence[str], vectors: Sequence[str]) -> str:
    """The ``steerlab classify`` command line for ``cfg`` in a new run directory, with exactly
    the vectors ``flips`` negated (``--flip-sign`` when that is every vector)."""
    args = ["steerlab", "classify", "--out", f"{cfg.out}-flipped", "--task", cfg.task]
    args += ["--model", cfg.model.name, "--backend", cfg.model.backend]
    if cfg.layers is not None:
        args += ["--layers", ",".join(str(x) for x in cfg.layers)]
    args += ["--positions", cfg.positions, "--mode", cfg.mode]
    args += ["--strengths", ",".join(repr(float(s)) for s in cfg.strengths)]
    args += ["--scale", cfg.scale, "--build-position", cfg.build_position]
    args.append("--cross-group" if cfg.cross_group else "--no-cross-group")
    args.append("--generate" if cfg.generate else "--no-generate")
    args += ["--max-new-tokens", str(cfg.max_new_tokens), "--batch-size", str(cfg.batch_size)]
    if flips and set(flips) == set(vectors):
        args.append("--flip-sign")
    elif flips:
        args += ["--flip-groups", ",".join(flips)]
    return shlex.join(args)


def _effects(c: dict[str, Any]) -> str:
    """The check's +α effect and the flipped vector's (−α) effect on the target metric."""

    def eff(e: dict[str, float]) -> str:
        return f"{e['mean']:+.3f} [{e['lo']:+.3f}, {e['hi']:+.3f}]"

    return (
        f"layer {c['layer']}: +α {eff(c['plus_effect'])}, flipped vector (−α) "
        f"{eff(c['minus_effect'])}"
    )


def _metric_name(c: dict[str, Any]) -> str:
    t = c["target_label"]
    return f"rate of answers stating {t!r}" if c["metric"] == "answer_rate" else f"P({t})"


def _backwards_lines(checks: Sequence[dict[str, Any]], vectors: Sequence[str]) -> list[str]:
    lines = []
    for v in vectors:
        bad = [c for c in checks if c["vector"] == v and c["verdict"] == "flipped"]
        lines.append(f"{v} ({'; '.join(_effects(c) for c in bad)})")
    return lines


def log_checks(cfg: ClassifyConfig, checks: Sequence[dict[str, Any]]) -> None:
    """The backwards vectors first, in one warning with the command to run; then one line per
    check."""
    adv = advise(cfg, checks)
    if adv.backwards:
        name = _metric_name(checks[0])
        logger.warning(
            "SIGN CHECK FAILED: %d vector(s) point the wrong way (positive strength moves %s "
            "against the intended direction; change in %s, 95%% CI): %s. Rerun with them "
            "negated: %s",
            len(adv.backwards),
            name,
            name,
            " | ".join(_backwards_lines(checks, adv.backwards)),
            adv.command,
        )
    if adv.mixed:
        logger.warning(
            "sign check: the vectors of %s are flipped at one layer and ok at another: read "
            "their results per layer",
            ", ".join(adv.mixed),
        )
    for c in checks:
        where = f"{c['vector']} at layer {c['layer']}"
        if c["verdict"] == "ok":
            logger.info("sign check, %s: ok (%s)", where, c["message"])
        elif c["verdict"] == "flipped":
            logger.warning("SIGN CHECK FAILED, %s: %s", where, c["message"])
        else:
            logger.warning("sign check, %s inconclusive: %s", where, c["message"])


def markdown(cfg: ClassifyConfig, checks: Sequence[dict[str, Any]]) -> tuple[list[str], list[str]]:
    """``(banner, section)``: the banner goes right under the title (empty when no vector is
    backwards); the section tabulates every check."""
    adv = advise(cfg, checks)
    banner: list[str] = []
    if adv.backwards:
        name = _metric_name(checks[0])
        banner += [
            f"> **Sign check FAILED: {len(adv.backwards)} vector(s) point the wrong way.** "
            f"Positive strength moves {name} against the intended direction; the flipped "
            "vector's effect (−α) is next to it (change vs unsteered, 95% CI). The results "
            "below use these vectors as applied in this run:",
            ">",
            *(f"> - {line}" for line in _backwards_lines(checks, adv.backwards)),
            ">",
            "> Rerun with them negated:",
            ">",
            f"> `{adv.command}`",
            "",
        ]
    if adv.mixed:
        banner += [
            f"> The vectors of {', '.join(adv.mixed)} are flipped at one layer and ok at "
            "another: read their results per layer.\n"
        ]
    c0 = checks[0] if checks else None
    metric = _metric_name(c0) if c0 is not None else "the target metric"
    lines = [
        "## Sign check (held-out split, every vector)\n",
        f"Unsteered, +α and −α (α = {cfg.check_strength():g}): {metric}, averaged over the "
        "slice. Pooled vector: "
        "the held-out examples labeled with the target; a group's vector: all of that group's "
        "held-out examples. OK = +α moves it the intended way and further than −α (95% "
        f"bootstrap CIs); fewer than {cfg.sign_check_min_examples} examples is inconclusive.\n",
        "| vector | layer | verdict | n | unsteered | +α | −α (flipped vector) | negated in run |",
        "|---|---|---|---|---|---|---|---|",
    ]
    mark = {"ok": "OK", "flipped": "**FLIPPED**", "inconclusive": "inconclusive"}
    for c in checks:
        lines.append(
            f"| {c['vector']} | {c['layer']} | {mark[c['verdict']]} | {c['n']} | "
            f"{c['baseline']:.3f} | {c['plus']:.3f} | {c['minus']:.3f} | "
            f"{'yes' if c.get('flipped_in_run') else 'no'} |"
        )
    pooled = [c for c in checks if c["vector"] == POOLED]
    lines += ["", *(f"- pooled, layer {c['layer']}: {c['message']}" for c in pooled)]
    if cfg.flip_sign:
        lines.append("\nThis run applies −vector for every vector (`--flip-sign`).")
    elif cfg.flip_groups:
        lines.append(
            f"\nThis run applies −vector for {', '.join(cfg.flip_groups)} (`--flip-groups`)."
        )
    return banner, lines
