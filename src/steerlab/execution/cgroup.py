"""One memory and process limit for a whole sandbox: a cgroup made for each program.

``RLIMIT_AS`` and ``RLIMIT_NPROC`` (set by the runner, ``_child.py``) bound each process: a
program that forks gets the memory limit again in every child. A cgroup counts all the
processes of one sandbox together. For each program :func:`sandbox_cgroup` makes a child cgroup:

* cgroup v2: ``memory.max`` = the memory limit, ``memory.swap.max`` = 0 (where the file exists),
  ``pids.max`` = the process limit plus the harness's own processes (:data:`HARNESS_TASKS`);
* cgroup v1: ``memory.limit_in_bytes`` and, where swap is accounted,
  ``memory.memsw.limit_in_bytes`` = the memory limit (so no swap either); ``pids.max`` as above,
  in the pids hierarchy.

The launcher (``/bin/sh``) writes its own pid into the cgroup and then ``exec``s the sandbox, so
every process of the program is born inside it. When the program has ended, the kernel's counts
of OOM kills (``memory.events`` on v2, ``memory.oom_control`` on v1) and of refused forks
(``pids.events``) are read, whatever is left is killed, and the cgroup is removed (also when the
run fails).

Where: the nearest cgroup at or above this process's own that this user may write (root, or a
delegated subtree such as systemd's ``Delegate=yes``) and, on v2, whose ``cgroup.subtree_control``
gives children the memory controller. v2 is used when it has the memory controller, else v1
(memory, and pids where mounted). Where no cgroup is writable, :func:`hierarchy` returns None,
logs why once, and the sandbox keeps only the per-process limits.
"""

from __future__ import annotations

import atexit
import contextlib
import errno
import itertools
import logging
import os
import re
import secrets
import signal
import subprocess
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from steerlab.errors import SteerlabError

logger = logging.getLogger(__name__)

#: processes in a sandbox's cgroup besides the program's own: bwrap, its pid-1 reaper, the runner
HARNESS_TASKS = 3
_MIB = 1024 * 1024
_SH = "/bin/sh"
_PREFIX = "steerlab-"
_CLEANUP_S = 5.0  # how long removing a cgroup may wait for its last processes to be reaped
_PROC = Path("/proc")


@dataclass(frozen=True)
class Hierarchy:
    """Where per-program cgroups are made. ``memory`` is the parent directory of the memory
    cgroup; ``pids`` that of the pids cgroup (on v2 the same directory, on v1 another
    hierarchy), or None when no pids controller can be had."""

    version: int  # 1 or 2
    memory: Path
    pids: Path | None

    def describe(self) -> str:
        pids = "" if self.pids is None else f", pids in {self.pids}"
        return f"cgroup v{self.version}: memory in {self.memory}{pids}"


# ----------------------------------------------------------------------------- discovery


def _unescape(field: str) -> str:
    """A mountinfo field with its octal escapes (``\\040`` for a space) decoded."""
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


@dataclass(frozen=True)
class _Mount:
    root: str  # the cgroup path the mount shows at its mount point
    point: Path
    fstype: str  # cgroup or cgroup2
    options: frozenset[str]  # super options: v1's controllers


def _mounts(mountinfo: str) -> list[_Mount]:
    found = []
    for line in mountinfo.splitlines():
        left, sep, right = line.partition(" - ")
        f, r = left.split(), right.split()
        if not sep or len(f) < 5 or len(r) < 3 or r[0] not in ("cgroup", "cgroup2"):
            continue
        options = frozenset(r[2].split(","))
        found.append(_Mount(_unescape(f[3]), Path(_unescape(f[4])), r[0], options))
    return found


def _own_paths(proc_cgroup: str) -> dict[str, str]:
    """This process's cgroup path per controller (``""`` for the v2 hierarchy)."""
    paths: dict[str, str] = {}
    for line in proc_cgroup.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _, controllers, path = parts
        path = path.removesuffix(" (deleted)")
        if not controllers:
            paths[""] = path
        for c in controllers.split(","):
            if c:
                paths[c] = path
    return paths


def _own_dir(mount: _Mount, path: str) -> Path | None:
    """The directory of cgroup ``path`` under ``mount``, or None if the mount does not show it."""
    rel = os.path.relpath(path, mount.root)
    if rel == ".":
        return mount.point
    if rel == ".." or rel.startswith("../"):
        return None
    return mount.point / rel


def _upwards(start: Path, top: Path) -> Iterator[Path]:
    d = start
    while True:
        yield d
        if d == top or d == d.parent:
            return
        d = d.parent


def _writable(d: Path) -> bool:
    return os.access(d, os.W_OK | os.X_OK) and os.access(d / "cgroup.procs", os.W_OK)


def _subtree(d: Path) -> set[str]:
    try:
        return set((d / "cgroup.subtree_control").read_text().split())
    except OSError:
        return set()


def find_hierarchy(proc: Path = _PROC / "self") -> tuple[Hierarchy | None, str]:
    """Where this process could make sandbox cgroups (not yet tried), and if nowhere, why."""
    try:
        mounts = _mounts((proc / "mountinfo").read_text())
        own = _own_paths((proc / "cgroup").read_text())
    except OSError as e:
        return None, f"cannot read {proc}/mountinfo or cgroup ({e.strerror})"
    reasons = []
    for m in (m for m in mounts if m.fstype == "cgroup2" and "" in own):
        start = _own_dir(m, own[""])
        if start is None:
            continue
        for d in _upwards(start, m.point):
            enabled = _subtree(d)
            if "memory" in enabled and _writable(d):
                return Hierarchy(2, d, d if "pids" in enabled else None), ""
        reasons.append(
            f"no cgroup v2 directory at or above {start} gives children the memory controller "
            "and is writable by this user"
        )
    v1: dict[str, Path] = {}
    for controller in ("memory", "pids"):
        for m in (m for m in mounts if m.fstype == "cgroup" and controller in m.options):
            start = _own_dir(m, own.get(controller, "/"))
            if start is None:
                continue
            found = next((d for d in _upwards(start, m.point) if _writable(d)), None)
            if found is not None:
                v1[controller] = found
                break
    if "memory" in v1:
        return Hierarchy(1, v1["memory"], v1.get("pids")), ""
    if not any(m.fstype == "cgroup" and "memory" in m.options for m in mounts):
        reasons.append("no cgroup v1 memory hierarchy is mounted")
    else:
        reasons.append("the cgroup v1 memory hierarchy is not writable by this user")
    return None, "; ".join(reasons) or "no cgroup file system is mounted"


# ----------------------------------------------------------------------------- one cgroup


def _make_dir(path: Path) -> None:
    os.mkdir(path)


def _write(path: Path, value: str) -> None:
    fd = os.open(path, os.O_WRONLY)
    try:
        os.write(fd, value.encode())
    finally:
        os.close(fd)


def _keyed(path: Path) -> dict[str, int]:
    """A ``key value`` file such as ``memory.events`` (missing or unreadable: empty)."""
    out: dict[str, int] = {}
    with contextlib.suppress(OSError):
        for line in path.read_text().splitlines():
            key, _, value = line.partition(" ")
            with contextlib.suppress(ValueError):
                out[key] = int(value)
    return out


def _pids_in(d: Path) -> list[int]:
    with contextlib.suppress(OSError):
        return [int(x) for x in (d / "cgroup.procs").read_text().split()]
    return []


_counter = itertools.count()


class SandboxCgroup:
    """The cgroup (one directory on v2; a memory and a pids directory on v1) of one program."""

    def __init__(self, h: Hierarchy, memory: Path, pids: Path | None) -> None:
        self.hierarchy, self.memory, self.pids = h, memory, pids

    @property
    def dirs(self) -> tuple[Path, ...]:
        return tuple(dict.fromkeys(d for d in (self.memory, self.pids) if d is not None))

    @classmethod
    def create(cls, h: Hierarchy, memory_mb: int, nproc: int) -> SandboxCgroup:
        """Make the cgroup with its limits; a :class:`SteerlabError` (and nothing left) if not."""
        name = f"{_PREFIX}{os.getpid()}-{next(_counter)}-{secrets.token_hex(3)}"
        memory = h.memory / name
        pids = None if h.pids is None else h.pids / name
        cg = cls(h, memory, pids)
        made: list[Path] = []
        limit = str(memory_mb * _MIB)
        try:
            for d in cg.dirs:
                _make_dir(d)
                made.append(d)
            if h.version == 2:
                _write(memory / "memory.max", limit)
                if (memory / "memory.swap.max").exists():
                    _write(memory / "memory.swap.max", "0")
            else:
                _write(memory / "memory.limit_in_bytes", limit)
                if (memory / "memory.memsw.limit_in_bytes").exists():
                    _write(memory / "memory.memsw.limit_in_bytes", limit)
            if pids is not None:
                _write(pids / "pids.max", str(nproc + HARNESS_TASKS))
        except OSError as e:
            for d in reversed(made):
                with contextlib.suppress(OSError):
                    d.rmdir()
            raise SteerlabError(
                f"cannot set up the sandbox's cgroup {memory}: {e.strerror or e}"
            ) from None
        return cg

    def launcher(self, argv: Sequence[str]) -> list[str]:
        """``argv`` started by a shell that first puts itself into this cgroup (its pid into
        each ``cgroup.procs``), then ``exec``s it: nothing of the program starts outside."""
        files = [str(d / "cgroup.procs") for d in self.dirs]
        script = "".join('echo $$ >"$1" && shift && ' for _ in files) + 'exec "$@"'
        return [_SH, "-c", script, "steerlab-sandbox", *files, *argv]

    def oom_kills(self) -> int:
        """Processes the kernel killed for going over the memory limit."""
        if self.hierarchy.version == 2:
            return _keyed(self.memory / "memory.events").get("oom_kill", 0)
        return _keyed(self.memory / "memory.oom_control").get("oom_kill", 0)

    def refused_forks(self) -> int:
        """Forks and thread starts refused for reaching the process limit."""
        return 0 if self.pids is None else _keyed(self.pids / "pids.events").get("max", 0)

    def remove(self) -> None:
        """Kill whatever is left inside and remove the cgroup; a directory that cannot be removed
        yet is retried later (and at exit), with a warning if it never can."""
        deadline = time.monotonic() + _CLEANUP_S
        for d in self.dirs:
            if self.hierarchy.version == 2 and (d / "cgroup.kill").exists():
                with contextlib.suppress(OSError):
                    _write(d / "cgroup.kill", "1")
        while True:
            left = [p for d in self.dirs for p in _pids_in(d)]
            if not left or time.monotonic() > deadline:
                break
            for pid in left:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.01)
        for d in self.dirs:
            if not _rmdir(d, deadline):
                with _leftover_lock:
                    _leftovers.append(d)


def _rmdir(d: Path, deadline: float) -> bool:
    while True:
        try:
            d.rmdir()
            return True
        except FileNotFoundError:
            return True
        except OSError as e:
            # EBUSY: a process of it is still being reaped
            if e.errno != errno.EBUSY or time.monotonic() > deadline:
                return False
            time.sleep(0.01)


_leftover_lock = threading.Lock()
_leftovers: list[Path] = []


def _retry_leftovers(final: bool = False) -> None:
    with _leftover_lock:
        todo, _leftovers[:] = list(_leftovers), []
    for d in todo:
        if not _rmdir(d, time.monotonic()):
            if final:
                logger.warning("could not remove the sandbox cgroup %s", d)
            else:
                with _leftover_lock:
                    _leftovers.append(d)


atexit.register(_retry_leftovers, True)


# ----------------------------------------------------------------------------- the front door


_setup_lock = threading.Lock()
_setup: tuple[Hierarchy | None, str] | None = None


def _probe(h: Hierarchy) -> str:
    """Why making a cgroup and moving a process into it fails here ("" when it works)."""
    _remove_stale(h)
    try:
        cg = SandboxCgroup.create(h, 64, 8)
    except SteerlabError as e:
        return str(e)
    try:
        proc = subprocess.run(cg.launcher(["/bin/true"]), capture_output=True, timeout=30)
        if proc.returncode != 0:
            err = proc.stderr.decode("utf-8", "replace").strip().splitlines() or ["?"]
            return f"cannot move a process into {cg.memory}: {err[-1]}"
        return ""
    except (OSError, subprocess.SubprocessError) as e:
        return f"cannot start {_SH}: {e}"
    finally:
        cg.remove()


def _remove_stale(h: Hierarchy) -> None:
    """Empty sandbox cgroups that a process which no longer exists left behind."""
    for parent in {h.memory, h.pids} - {None}:
        assert parent is not None
        with contextlib.suppress(OSError):
            for d in parent.iterdir():
                m = re.fullmatch(rf"{_PREFIX}(\d+)-\d+-[0-9a-f]+", d.name)
                if m and not (_PROC / m.group(1)).exists():
                    with contextlib.suppress(OSError):
                        d.rmdir()


def hierarchy() -> Hierarchy | None:
    """Where sandbox cgroups go, checked once per process by making one; None (logged once, as a
    warning) where no cgroup is writable."""
    global _setup
    with _setup_lock:
        if _setup is None:
            h, why = find_hierarchy()
            if h is not None:
                why = _probe(h)
                if why:
                    h = None
            if h is None:
                logger.warning(
                    "no writable cgroup for the code sandbox (%s): memory is limited per process "
                    "(RLIMIT_AS) and processes per user id (RLIMIT_NPROC), so a program that "
                    "forks can use the memory limit once in each of its processes",
                    why,
                )
            else:
                logger.debug("code sandbox limits: %s", h.describe())
            _setup = (h, why)
        return _setup[0]


def unavailable_reason() -> str | None:
    """Why sandboxes get no cgroup here, or None when they do."""
    return None if hierarchy() is not None else (_setup or (None, "?"))[1]


@contextlib.contextmanager
def sandbox_cgroup(memory_mb: int, nproc: int) -> Iterator[SandboxCgroup | None]:
    """A fresh cgroup for one program (None where cgroups are not available), removed on exit."""
    h = hierarchy()
    if h is None:
        yield None
        return
    _retry_leftovers()
    cg = SandboxCgroup.create(h, memory_mb, nproc)
    try:
        yield cg
    finally:
        cg.remove()
