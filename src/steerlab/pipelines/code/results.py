"""Reading a ``select-coefficients`` run directory: the baseline, the grid's rows, and what each
vector is meant to do."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from steerlab._util.io import atomic_path
from steerlab._util.version import __version__
from steerlab.errors import SteerlabError
from steerlab.pipelines.code.config import CodeConfig
from steerlab.runs.shards import stage_results

#: What a baseline's statuses mean, stamped into its Parquet metadata. 2: ``pass`` means the
#: program reached its last statement (an early ``sys.exit`` is an ``error``), and tasks whose
#: reference solution fails its own tests are left out. Files without a stamp (format 1) were
#: written before that, when an early exit counted as a pass.
BASELINE_FORMAT = 2
_STAMP_KEY = b"steerlab.baseline"


def baseline_path(run: Path) -> Path:
    return run / "baseline.parquet"


def write_baseline(df: pd.DataFrame, path: Path) -> None:
    """Write ``df`` to ``path`` atomically, stamped with :data:`BASELINE_FORMAT`."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.Table.from_pandas(df, preserve_index=False)
    stamp = json.dumps({"format": BASELINE_FORMAT, "steerlab_version": __version__})
    table = table.replace_schema_metadata({**(table.schema.metadata or {}), _STAMP_KEY: stamp})
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)


def check_baseline_format(path: Path, what: str = "--baseline") -> None:
    """Refuse, in one line naming ``path``, a baseline whose statuses mean something else than
    this steerlab's: no stamp (an earlier steerlab, or another tool), or another format."""
    import pyarrow.parquet as pq

    try:
        meta = pq.read_schema(path).metadata or {}
    except (OSError, ValueError) as e:
        raise SteerlabError(f"{what} {path}: not a readable Parquet file ({e})") from None
    raw = meta.get(_STAMP_KEY)
    if raw is None:
        raise SteerlabError(
            f"{what} {path} has no baseline format stamp: it was written by an earlier steerlab "
            "(whose sandbox counted a program that exited early as a pass) or another tool; "
            "generate the baseline again with this version (run without --baseline)"
        )
    try:
        stamp = json.loads(raw)
        found = stamp["format"]
    except (ValueError, TypeError, KeyError):
        raise SteerlabError(f"{what} {path}: its baseline format stamp is damaged") from None
    if found != BASELINE_FORMAT:
        version = stamp.get("steerlab_version", "?")
        raise SteerlabError(
            f"{what} {path} is baseline format {found!r} (steerlab {version}), but this steerlab "
            f"{__version__} reads format {BASELINE_FORMAT}: generate the baseline again with "
            "this version (run without --baseline)"
        )


def load_baseline(run: Path) -> pd.DataFrame:
    path = baseline_path(run)
    if not path.is_file():
        raise SteerlabError(f"{run}: no baseline yet; run the baseline stage first")
    return pd.read_parquet(path)


def baseline_summary(run: Path) -> str:
    """One paragraph: the baseline's pass rate overall and per complexity."""
    df = load_baseline(run)
    ok = df["status"] == "pass"
    by = df.assign(ok=ok).groupby("complexity")["ok"].agg(["sum", "size"])
    strata = ", ".join(f"{c}: {int(r['sum'])}/{int(r['size'])}" for c, r in by.iterrows())
    mix = ", ".join(f"{k} {v}" for k, v in df["status"].value_counts().items())
    return (
        f"baseline: {int(ok.sum())} of {len(df)} pass ({100 * ok.mean():.1f}%); statuses {mix}; "
        f"passing by complexity {strata}"
    )


def intents(cfg: CodeConfig) -> dict[str, str]:
    out: dict[str, str] = {r.name: r.intent for r in cfg.vectors}
    if cfg.from_baseline is not None:
        out |= {"correct": "correct", "incorrect": "incorrect"}
    return out


def grid_results(run: Path) -> pd.DataFrame:
    return stage_results(run, "grid")
