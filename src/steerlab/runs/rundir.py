"""A run directory: the frozen config, an exclusive lock, JSON side files, part files per stage.

The config is frozen into ``config.yaml`` at creation; reopening with a different config is
refused, naming the keys that differ. One process at a time works in a run directory: it holds
an exclusive ``flock`` on ``.lock`` (which records its pid, host and start time) from opening the
directory until it is done. A second process fails at once with a message naming the holder. The
kernel drops the lock when its holder dies, so a lock left by a dead process is simply taken
over. Temp files are removed only while holding the lock, so a live writer's are never touched.
"""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import socket
import time
from pathlib import Path
from typing import Any, Generic

import pandas as pd

from steerlab._util.io import atomic_write_text
from steerlab._util.yamlfile import read_yaml
from steerlab.errors import SteerlabError
from steerlab.runs.config import C, diff_keys
from steerlab.runs.shards import read_part

logger = logging.getLogger(__name__)

LOCK_NAME = ".lock"


class RunDir(Generic[C]):
    """Paths and bookkeeping of one run directory whose config is a ``config_type``."""

    def __init__(self, path: Path, config_type: type[C]) -> None:
        self.path = Path(path)
        self.config_type = config_type
        self._lock_fd: int | None = None

    # ------------------------------------------------------------------ creation

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
    def create(cls, path: Path, cfg: C) -> RunDir[C]:
        """Create the run directory for ``cfg`` or reopen it (same config only), locked for this
        process until :meth:`release`."""
        rd = cls(path, type(cfg))
        rd.path.mkdir(parents=True, exist_ok=True)
        rd.acquire()
        try:
            existing = rd.path / "config.yaml"
            if existing.is_file():
                rd.check_same(cfg)
            else:
                atomic_write_text(existing, cfg.dump())
            rd.cleanup_temp()
        except BaseException:
            rd.release()
            raise
        return rd

    @classmethod
    def existing(cls, path: Path, config_type: type[C]) -> RunDir[C]:
        rd = cls(path, config_type)
        if not (path / "config.yaml").is_file():
            raise SteerlabError(f"{path} is not a run directory (no config.yaml)")
        return rd

    def reopen(self, cfg: C) -> None:
        """Lock an existing run directory for ``cfg`` (which must be its config)."""
        self.acquire()
        try:
            self.check_same(cfg)
            self.cleanup_temp()
        except BaseException:
            self.release()
            raise

    def check_same(self, cfg: C) -> None:
        old = self.load_config()
        if old.canonical() != cfg.canonical():
            diff = diff_keys(old.canonical(), cfg.canonical())
            raise SteerlabError(
                f"{self.path} was created with a different config (differs in: "
                f"{', '.join(diff[:5])}); use a new --run-id or remove the directory"
            )

    def load_config(self) -> C:
        p = self.path / "config.yaml"
        try:
            data = read_yaml(p)
        except (SteerlabError, OSError) as e:
            what = str(e) if isinstance(e, SteerlabError) else f"{p}: cannot be read ({e.strerror})"
            raise SteerlabError(
                f"{what}; this run directory is damaged: use a new --run-id, or remove {self.path}"
            ) from e
        return self.config_type.parse(data, str(p))

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

    # ------------------------------------------------------------------ json side files

    def read_json(self, name: str) -> dict[str, Any]:
        """A JSON object side file (``{}`` when absent); a damaged one is one sentence."""
        p = self.path / name
        if not p.is_file():
            return {}
        try:
            data = json.loads(p.read_text(encoding="utf-8"))
        except (ValueError, RecursionError, OSError) as e:  # JSONDecodeError, bad UTF-8
            data = e
        if not isinstance(data, dict):
            raise SteerlabError(
                f"{p}: not a JSON object; this run directory is damaged: use a new --run-id, or "
                f"remove {self.path}"
            )
        return data

    def update_json(self, name: str, **updates: Any) -> dict[str, Any]:
        data = self.read_json(name)
        data.update(updates)
        atomic_write_text(self.path / name, json.dumps(data, indent=2, default=str) + "\n")
        return data

    def record_stage(self, stage: str, seconds: float, **info: Any) -> None:
        """Wall time and details of a finished stage, in ``manifest.json``."""
        manifest = self.read_json("manifest.json")
        timings = manifest.get("timings_s", {})
        timings[stage] = round(seconds, 2)
        stages = manifest.get("stages", {})
        stages[stage] = {"finished": time.strftime("%Y-%m-%dT%H:%M:%S"), **info}
        self.update_json("manifest.json", timings_s=timings, stages=stages)

    # ------------------------------------------------------------------ part files

    def parts(self, stage: str) -> Path:
        return self.path / "parts" / stage

    def load_stage(self, stage: str) -> pd.DataFrame:
        """Every part file of ``stage`` in shard order (empty when there are none)."""
        files = sorted(self.parts(stage).glob("part-*.parquet"))
        if not files:
            return pd.DataFrame()
        return pd.concat([read_part(f, stage) for f in files], ignore_index=True)


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
