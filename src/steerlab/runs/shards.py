"""Work rows cut into shards of fixed composition, each stored as one atomic part file.

A stage is a deterministic list of work rows (anything with a string ``key`` that identifies
the row's content). It is cut into shards of ``shard_size`` rows; a shard's file name carries
its index and a hash of its rows' keys, so a shard's file is only ever the result of exactly
those rows. Results go to ``parts/<stage>/part-<i>-<hash>.parquet`` through a temp name, fsync
and atomic rename: a SIGKILL at any point loses at most the shards in flight, never corrupts a
file, and a rerun skips finished shards. Only the driver process writes part files.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import pandas as pd

from steerlab._util.io import atomic_path
from steerlab.errors import SteerlabError


class WorkItem(Protocol):
    """A row of work: its ``key`` names everything that determines its result."""

    @property
    def key(self) -> str: ...


@dataclass(frozen=True)
class Shard:
    stage: str
    index: int
    rows: tuple[Any, ...]

    @property
    def name(self) -> str:
        digest = hashlib.sha256("\n".join(r.key for r in self.rows).encode()).hexdigest()[:10]
        return f"part-{self.index:05d}-{digest}.parquet"


def plan_shards(stage: str, rows: Sequence[WorkItem], shard_size: int) -> list[Shard]:
    """``rows`` cut into consecutive shards; the same rows always give the same shards."""
    if shard_size < 1:
        raise ValueError("shard_size must be >= 1")
    keys = [r.key for r in rows]
    if len(set(keys)) != len(keys):
        dup = next(k for k in keys if keys.count(k) > 1)
        raise ValueError(f"stage {stage}: two work rows share the key {dup!r}")
    return [
        Shard(stage, i, tuple(rows[start : start + shard_size]))
        for i, start in enumerate(range(0, len(rows), shard_size))
    ]


def check_strays(out: Path, shards: Sequence[Shard]) -> None:
    """Part files in ``out`` that ``shards`` do not produce mean the directory holds another
    config's work: refuse rather than mix them into the results."""
    expected = {s.name for s in shards}
    stray = sorted(p for p in out.glob("part-*.parquet") if p.name not in expected)
    if stray:
        raise SteerlabError(f"{out} holds part files this config does not produce: {stray[0]}")


def write_part(path: Path, df: pd.DataFrame) -> None:
    with atomic_path(path) as tmp:
        df.to_parquet(tmp, index=False)


def read_part(path: Path, stage: str) -> pd.DataFrame:
    """One part file; a damaged one (e.g. truncated by a full disk or a copy cut short) is an
    error naming it and saying how to recompute it."""
    try:
        return pd.read_parquet(path)
    except Exception as e:  # pyarrow raises ArrowInvalid, OSError, ... depending on the damage
        reason = (str(e).strip().splitlines() or [type(e).__name__])[0]
        reason = reason.split(f"{path}': ", 1)[-1]  # pyarrow repeats the path first
        raise SteerlabError(
            f"{path}: unreadable part file ({reason}); delete it and rerun the {stage} stage to "
            "recompute it"
        ) from e


def stage_results(run: Path, stage: str) -> pd.DataFrame:
    """Every part file of ``stage`` in the run directory ``run``, in shard order; one clear error
    when the stage has written none yet."""
    files = sorted((run / "parts" / stage).glob("part-*.parquet"))
    if not files:
        raise SteerlabError(f"{run}: no {stage} rows yet; run the {stage} stage first")
    frames = [read_part(f, stage) for f in files]
    want = list(frames[0].columns)
    for f, df in zip(files, frames, strict=True):
        if list(df.columns) != want:
            odd = sorted(set(df.columns) ^ set(want)) or ["(column order)"]
            raise SteerlabError(
                f"{f}: its columns differ from {files[0].name}'s ({', '.join(map(str, odd[:4]))}): "
                f"a part file from another version or run; delete it and rerun the {stage} stage"
            )
    return pd.concat(frames, ignore_index=True)
