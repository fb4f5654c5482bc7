"""Run directory and resumable, crash-safe part files.

Every stage is a deterministic list of work rows cut into shards of fixed composition. A shard's
results go to ``parts/<stage>/part-<i>-<hash>.parquet`` through a temp name, fsync and atomic
rename, so a SIGKILL at any point loses at most the shard in flight, never corrupts a file, and
a rerun of the same command skips finished shards. The config is frozen into ``config.yaml`` at
creation; a different config for an existing run directory is refused.

One process at a time works in a run directory: it holds an exclusive ``flock`` on ``.lock``
(which records its pid, host and start time) from opening the directory until it is done. A
second process fails at once with a message naming the holder. The kernel drops the lock when
its holder dies, so a lock left by a dead process is simply taken over. Temp files are removed
only while holding the lock, so a live writer's are never touched.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import logging
import os
import platform
import socket
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from steerlab import __version__
from steerlab.errors import SteerlabError
from steerlab.io import atomic_path, atomic_write_text
from steerlab.pipelines.reliability.config import PipelineConfig, dump_config, parse_config

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class WorkRow:
    """One completion to produce. ``layer == -1`` / ``intervention == "none"`` is unsteered."""

    stage: str
    split: str
    prompt_id: str
    prompt: str
    family: str
    style: str
    template: str
    layer: int
    intervention: str
    alpha: float
    direction: str
    seed: int

    @property
    def key(self) -> str:
        return (
            f"{self.stage}|{self.split}|{self.prompt_id}|{self.layer}|{self.intervention}|"
            f"{self.alpha!r}|{self.direction}|{self.seed}"
        )

    def row_seed(self) -> int:
        """Per-prompt sampling seed shared by every setting (common random numbers)."""
        h = hashlib.sha256(f"{self.seed}|{self.split}|{self.prompt_id}".encode()).hexdigest()
        return int(h[:8], 16)


def shard_name(index: int, rows: Sequence[WorkRow]) -> str:
    digest = hashlib.sha256("\n".join(r.key for r in rows).encode()).hexdigest()[:10]
    return f"part-{index:05d}-{digest}.parquet"


LOCK_NAME = ".lock"


class RunDir:
    """Paths and bookkeeping of ``artifacts/runs/<run_id>/``."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock_fd: int | None = None

    # ------------------------------------------------------------------ creation

    @staticmethod
    def path_for(cfg: PipelineConfig, run_id: str | None = None) -> Path:
        """Where the run directory for ``cfg`` lives (nothing is created)."""
        rid = run_id or cfg.run_id or f"{cfg.model.name.replace('/', '_')}-{cfg.digest()}"
        return Path(cfg.experiment.output_dir) / rid

    @staticmethod
    def check_free(path: Path) -> None:
        """Fail early (before loading a model) when another process holds ``path``'s lock;
        creates nothing. The lock is taken for real by :meth:`acquire`."""
        lock = path / LOCK_NAME
        try:
            fd = os.open(lock, os.O_RDONLY)
        except OSError:
            return
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise SteerlabError(
                f"run directory {path} is in use by {_describe_holder(lock)}; "
                "wait for it to finish or stop it"
            ) from None
        finally:
            os.close(fd)

    @classmethod
    def open(cls, cfg: PipelineConfig, run_id: str | None = None) -> RunDir:
        """Create the run directory for ``cfg`` or reopen it (same config only), locked for this
        process until :meth:`release`."""
        rd = cls(RunDir.path_for(cfg, run_id))
        rd.path.mkdir(parents=True, exist_ok=True)
        rd.acquire()
        try:
            existing = rd.path / "config.yaml"
            if existing.is_file():
                old = rd.load_config()
                if old.canonical() != cfg.canonical():
                    diff = _diff_keys(old.canonical(), cfg.canonical())
                    raise SteerlabError(
                        f"{rd.path} was created with a different config (differs in: "
                        f"{', '.join(diff[:5])}); use a new --run-id or remove the directory"
                    )
            else:
                atomic_write_text(existing, dump_config(cfg))
            rd.cleanup_temp()
        except BaseException:
            rd.release()
            raise
        return rd

    @classmethod
    def existing(cls, path: Path) -> RunDir:
        rd = cls(path)
        if not (path / "config.yaml").is_file():
            raise SteerlabError(f"{path} is not a run directory (no config.yaml)")
        return rd

    def load_config(self) -> PipelineConfig:
        p = self.path / "config.yaml"
        return parse_config(yaml.safe_load(p.read_text(encoding="utf-8")), str(p))

    def cleanup_temp(self) -> None:
        """Remove temp files a killed run left behind (they are never read). Only the lock holder
        may do this: every writer holds the lock, so no temp file here belongs to a live one."""
        if self._lock_fd is None:
            raise RuntimeError(f"{self.path}: cleanup_temp without holding the run lock")
        for tmp in self.path.rglob(".*.tmp"):
            tmp.unlink(missing_ok=True)

    # ------------------------------------------------------------------ lock

    @property
    def locked(self) -> bool:
        return self._lock_fd is not None

    def acquire(self) -> None:
        """Take the exclusive lock on this run directory, or fail with one sentence naming the
        process that holds it. A lock recorded by a process that is gone is taken over."""
        if self._lock_fd is not None:
            return
        lock = self.path / LOCK_NAME
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            os.close(fd)
            if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise
            raise SteerlabError(
                f"run directory {self.path} is in use by {_describe_holder(lock)}; "
                "wait for it to finish or stop it"
            ) from None
        try:
            previous = _read_holder(fd)
            if previous.get("pid") not in (None, os.getpid()):
                logger.info(
                    "run directory %s: taking over the lock of pid %s (started %s), which is gone",
                    self.path,
                    previous.get("pid"),
                    previous.get("started", "?"),
                )
            info = {
                "pid": os.getpid(),
                "host": socket.gethostname(),
                "started": time.strftime("%Y-%m-%dT%H:%M:%S"),
            }
            os.ftruncate(fd, 0)
            os.pwrite(fd, (json.dumps(info) + "\n").encode(), 0)
            os.fsync(fd)
        except BaseException:
            os.close(fd)
            raise
        self._lock_fd = fd

    def release(self) -> None:
        """Give the lock back (the file stays: unlinking it would let two processes lock
        different inodes). Idempotent; a process that dies releases it through the kernel."""
        fd, self._lock_fd = self._lock_fd, None
        if fd is None:
            return
        try:
            os.ftruncate(fd, 0)
        except OSError:
            pass
        finally:
            os.close(fd)  # closing the last descriptor drops the flock

    # ------------------------------------------------------------------ paths

    @property
    def directions(self) -> Path:
        return self.path / "directions"

    def direction_path(self, layer: int, kind: str = "main") -> Path:
        prefix = "layer" if kind == "main" else f"{kind}_layer"
        return self.directions / f"{prefix}_{layer}.safetensors"

    def parts(self, stage: str) -> Path:
        return self.path / "parts" / stage

    # ------------------------------------------------------------------ json side files

    def read_json(self, name: str) -> dict[str, Any]:
        p = self.path / name
        return json.loads(p.read_text(encoding="utf-8")) if p.is_file() else {}

    def update_json(self, name: str, **updates: Any) -> dict[str, Any]:
        data = self.read_json(name)
        data.update(updates)
        atomic_write_text(self.path / name, json.dumps(data, indent=2, default=str) + "\n")
        return data

    def record_stage(self, stage: str, seconds: float, **info: Any) -> None:
        manifest = self.read_json("manifest.json")
        timings = manifest.get("timings_s", {})
        timings[stage] = round(seconds, 2)
        stages = manifest.get("stages", {})
        stages[stage] = {"finished": time.strftime("%Y-%m-%dT%H:%M:%S"), **info}
        self.update_json("manifest.json", timings_s=timings, stages=stages)

    # ------------------------------------------------------------------ shards

    def run_shards(
        self,
        stage: str,
        rows: Sequence[WorkRow],
        shard_size: int,
        compute: Callable[[Sequence[WorkRow], Callable[[int], object]], pd.DataFrame],
        progress: Callable[[int], object],
    ) -> int:
        """Compute every missing shard of ``rows``; returns how many rows were computed now.

        ``compute(shard, progress)`` reports rows as they finish; finished shards count at once.
        """
        out = self.parts(stage)
        out.mkdir(parents=True, exist_ok=True)
        computed = 0
        expected = set()
        for i, start in enumerate(range(0, len(rows), shard_size)):
            shard = rows[start : start + shard_size]
            path = out / shard_name(i, shard)
            expected.add(path.name)
            if path.is_file():
                progress(len(shard))
                continue
            df = compute(shard, progress)
            if len(df) != len(shard):
                raise RuntimeError(f"shard {path.name}: {len(df)} results for {len(shard)} rows")
            with atomic_path(path) as tmp:
                df.to_parquet(tmp, index=False)
            computed += len(shard)
        stray = [p for p in out.glob("part-*.parquet") if p.name not in expected]
        if stray:
            raise SteerlabError(f"{out} holds part files this config does not produce: {stray[0]}")
        return computed

    def load_stage(self, stage: str) -> pd.DataFrame:
        files = sorted(self.parts(stage).glob("part-*.parquet"))
        if not files:
            return pd.DataFrame()
        return pd.concat([read_part(f, stage) for f in files], ignore_index=True)


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


def _read_holder(fd: int) -> dict[str, Any]:
    try:
        data = json.loads(os.pread(fd, 4096, 0).decode() or "{}")
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _describe_holder(lock: Path) -> str:
    """``pid N on HOST (started T)`` from the lock file; the holder writes it right after it
    locks, so an empty file is read again briefly before giving up on the details."""
    info: dict[str, Any] = {}
    for _ in range(20):
        try:
            fd = os.open(lock, os.O_RDONLY)
        except OSError:
            break
        try:
            info = _read_holder(fd)
        finally:
            os.close(fd)
        if info.get("pid"):
            break
        time.sleep(0.05)
    if not info.get("pid"):
        return "another process"
    host = info.get("host")
    where = f" on {host}" if host and host != socket.gethostname() else ""
    return f"pid {info['pid']}{where} (started {info.get('started', '?')})"


def _diff_keys(a: dict[str, Any], b: dict[str, Any], prefix: str = "") -> list[str]:
    out = []
    for k in sorted(set(a) | set(b)):
        va, vb = a.get(k), b.get(k)
        if isinstance(va, dict) and isinstance(vb, dict):
            out += _diff_keys(va, vb, f"{prefix}{k}.")
        elif va != vb:
            out.append(f"{prefix}{k}")
    return out


def environment_info(device: str, model_name: str) -> dict[str, Any]:
    """Versions, git commit, device: what a reader needs to reproduce a run."""
    import torch
    import transformers

    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, check=False
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = ""
    return {
        "steerlab_version": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "git_commit": commit or None,
        "device": device,
        "model": model_name,
    }
