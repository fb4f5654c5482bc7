"""Run one untrusted program in a bubblewrap sandbox and classify how it ended.

Each program gets its own ``bwrap``: new pid, network, IPC and UTS namespaces (no network, no view
of other processes); a read-only root holding ``/usr`` (and the ``/lib*`` links), the base Python
install (standard library only: ``-s -S``), a fresh ``/proc`` and a minimal ``/dev`` (no
``/dev/shm``, so no multiprocessing); the one writable place is a private tmpfs on ``/tmp`` of at
most ``file_size_mb``, also the working directory. ``/root``, ``/home``, the project and any
virtual environment are absent. A Python install outside ``/usr`` (pyenv, conda, a tool cache)
is bound read-only at ``/opt/python``. The runner (``_child.py``) sets the rlimits of
:class:`Limits`, drops privileges and runs the program; it documents how outcomes are reported.

Memory and processes are limited twice. Each process has ``RLIMIT_AS`` (a single large
allocation is a ``MemoryError``, status ``oom``) and ``RLIMIT_NPROC``. Where a cgroup is writable
(:mod:`steerlab.execution.cgroup`), the sandbox as a whole also gets its own cgroup, entered
before bwrap starts: all its processes together stay under ``memory_mb`` (no swap) and
``nproc`` processes; a program whose processes the kernel killed there ends ``oom``. Without a
writable cgroup (logged once) a program that forks can use ``memory_mb`` in each process.

* As root (CI, containers) bwrap makes no user namespace and the runner switches to an
  unprivileged uid/gid of its own, distinct for each sandbox this process runs at once, so
  ``RLIMIT_NPROC`` (counted per real uid) confines a fork bomb to its own sandbox; bwrap sets
  ``no_new_privs``, so setuid binaries cannot regain root.
* As an ordinary user bwrap makes a user namespace and the program keeps the user's uid;
  ``RLIMIT_NPROC`` is the user's current task count plus ``Limits.nproc`` (older kernels count
  all the user's tasks against it), and the pid namespace and wall timer bound a fork bomb.

The wall timer kills bwrap; ``--die-with-parent`` and the pid namespace take every process of
the sandbox with it, detached or not. ``unsafe`` mode runs the same runner under the same rlimits
with no namespaces and no uid change; at the end its process group is killed, and with a cgroup
every process left in it, so only without a cgroup can a program that calls ``setsid`` leave
processes behind there.
"""

from __future__ import annotations

import contextlib
import functools
import json
import math
import os
import secrets
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from steerlab.errors import SteerlabError
from steerlab.execution.cgroup import sandbox_cgroup
from steerlab.execution.seccomp import filter_program

STATUSES = ("pass", "fail", "error", "syntax_error", "timeout", "oom", "sandbox_error")
MODES = ("bubblewrap", "unsafe")

_RUNNER = (Path(__file__).parent / "_child.py").read_text(encoding="utf-8")
_SANDBOX_PYTHON = "/opt/python"  # where a Python install outside /usr appears in the sandbox
_UID_BASE = 2_000_000  # sandbox uids: far above real accounts and the usual subuid ranges
_UID_SPAN = 1 << 24
_DRAIN_S = 2.0  # after the sandbox is gone, how long its pipes may take to reach EOF
_READ = 65536


@dataclass(frozen=True)
class Limits:
    """Per-program limits. ``memory_mb`` bounds the address space (``RLIMIT_AS``) of each
    process and, where a cgroup is writable, the memory of all the program's processes together
    (``nproc`` likewise); ``file_size_mb`` bounds each file and also the private ``/tmp`` in
    total."""

    cpu_s: float = 10.0  # CPU seconds per process (RLIMIT_CPU), then status timeout
    wall_s: float = 20.0  # the whole sandbox is killed after this, status timeout
    memory_mb: int = 1024  # exceeding it gives status oom
    file_size_mb: int = 16
    nproc: int = 32  # processes and threads
    output_bytes: int = 65536  # stdout and stderr are each cut to this, with a marker

    def __post_init__(self) -> None:
        for name in ("cpu_s", "wall_s", "memory_mb", "file_size_mb", "nproc", "output_bytes"):
            if not getattr(self, name) > 0:
                raise SteerlabError(f"Limits.{name} must be positive, got {getattr(self, name)}.")


@dataclass(frozen=True)
class ExecResult:
    """How one program ended. ``sandbox_error`` means the harness failed (bwrap could not start,
    a report was garbled): it says nothing about the program and must not count against it."""

    status: str  # one of STATUSES
    detail: str  # one line: "AssertionError: ...", "timed out after 20 s", "bwrap: ..."
    stdout: str
    stderr: str
    wall_s: float  # from starting the sandbox to its end, setup included
    truncated: bool  # stdout or stderr was cut to Limits.output_bytes


@dataclass(frozen=True)
class _Python:
    """The interpreter the sandbox runs: the base install behind any virtual environment."""

    host_prefix: str
    host_executable: str
    executable: str  # its path inside the sandbox
    relocated: bool  # True when host_prefix is bound at _SANDBOX_PYTHON


@functools.cache
def _python() -> _Python:
    prefix = os.path.realpath(sys.base_prefix)
    exe = os.path.realpath(getattr(sys, "_base_executable", None) or sys.executable)
    if prefix == "/usr" or prefix.startswith("/usr/") or not exe.startswith(prefix + os.sep):
        # in /usr already, or a layout we do not know (then bwrap fails: a sandbox_error)
        return _Python(prefix, exe, exe, relocated=False)
    return _Python(prefix, exe, _SANDBOX_PYTHON + exe[len(prefix) :], relocated=True)


def _python_argv(executable: str) -> list[str]:
    safe_path = ["-P"] if sys.version_info >= (3, 11) else []  # no cwd on sys.path
    return [executable, "-s", "-S", "-B", "-u", *safe_path, "-c", _RUNNER]


@functools.cache
def _tmpfs_size_supported(bwrap: str) -> bool:
    try:
        out = subprocess.run([bwrap, "--help"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return False
    return "--size" in out.stdout + out.stderr


def _third_party_dirs(py: _Python) -> list[str]:
    """Where third-party packages of the base interpreter live, as paths inside the sandbox
    (each is covered with an empty read-only tmpfs: the program gets the standard library
    only, even if it puts these directories on ``sys.path`` itself)."""
    roots = [("/usr", "/usr")]
    if py.relocated:
        roots.append((py.host_prefix, _SANDBOX_PYTHON))
    found: list[str] = []
    for host, inside in roots:
        for pattern in ("lib/python3*/site-packages", "lib/python3*/dist-packages"):
            for d in sorted(Path(host).glob(pattern)):
                found.append(inside + str(d)[len(host) :])
        if host == "/usr":
            for d in sorted(Path("/usr/local").glob("lib/python3*/dist-packages")):
                found.append(str(d))
            for d in sorted(Path("/usr/local").glob("lib/python3*/site-packages")):
                found.append(str(d))
    return [d for d in dict.fromkeys(found) if Path(d).is_dir() or d.startswith(_SANDBOX_PYTHON)]


def _bwrap_argv(bwrap: str, limits: Limits, seccomp_fd: int | None) -> list[str]:
    py = _python()
    argv = [bwrap, "--die-with-parent", "--new-session"]
    if os.geteuid() == 0:  # no user namespace: the runner drops to its own uid instead
        argv += ["--unshare-ipc", "--unshare-pid", "--unshare-net", "--unshare-uts"]
        argv += ["--unshare-cgroup-try"]
    else:
        argv += ["--unshare-all", "--unshare-user", "--disable-userns"]
    argv += ["--ro-bind", "/usr", "/usr"]
    for top in ("/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32"):
        if os.path.islink(top):
            argv += ["--symlink", os.readlink(top), top]
        elif os.path.isdir(top):
            argv += ["--ro-bind", top, top]
    # Directories bwrap creates itself are 0700: make the parents of binds traversable.
    argv += ["--perms", "0755", "--dir", "/etc"]
    argv += ["--ro-bind-try", "/etc/ld.so.cache", "/etc/ld.so.cache"]
    if py.relocated:
        argv += ["--perms", "0755", "--dir", "/opt"]
        argv += ["--ro-bind", py.host_prefix, _SANDBOX_PYTHON]
    for d in _third_party_dirs(py):
        argv += ["--tmpfs", d, "--remount-ro", d]
    argv += ["--proc", "/proc", "--dev", "/dev", "--perms", "1777"]
    if _tmpfs_size_supported(bwrap):
        argv += ["--size", str(limits.file_size_mb * 1024 * 1024)]
    argv += ["--tmpfs", "/tmp", "--remount-ro", "/", "--chdir", "/tmp"]
    if seccomp_fd is not None:
        argv += ["--seccomp", str(seccomp_fd)]
    return [*argv, "--", *_python_argv(py.executable)]


def _seccomp_fd(stack: contextlib.ExitStack) -> int | None:
    """A file descriptor holding the seccomp filter (closed with ``stack``); None where this
    machine's architecture has none (see :mod:`steerlab.execution.seccomp`)."""
    program = filter_program()
    if program is None:
        return None
    fd = os.memfd_create("steerlab-seccomp", os.MFD_CLOEXEC)
    stack.callback(os.close, fd)
    os.write(fd, program)
    os.lseek(fd, 0, os.SEEK_SET)
    return fd


_slot_lock = threading.Lock()
_slots_used: set[int] = set()


@contextlib.contextmanager
def _uid_slot() -> Iterator[int]:
    """A uid no other sandbox of this process is using right now."""
    with _slot_lock:
        slot = next(i for i in range(len(_slots_used) + 1) if i not in _slots_used)
        _slots_used.add(slot)
    try:
        yield _UID_BASE + ((os.getpid() << 8) + slot) % _UID_SPAN
    finally:
        with _slot_lock:
            _slots_used.discard(slot)


def _user_tasks() -> int:
    """Tasks (processes and threads) of this uid now: the base of RLIMIT_NPROC for non-root."""
    uid, total = os.getuid(), 0
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            if entry.stat().st_uid == uid:
                total += len(os.listdir(f"/proc/{entry.name}/task"))
    return total


class _Capture:
    """Keeps the first ``limit`` bytes of a stream and counts the rest."""

    def __init__(self, limit: int) -> None:
        self.limit, self.data, self.dropped = limit, bytearray(), 0

    def feed(self, chunk: bytes) -> None:
        room = max(self.limit - len(self.data), 0)
        self.data += chunk[:room]
        self.dropped += len(chunk) - min(room, len(chunk))

    def text(self) -> str:
        text = self.data.decode("utf-8", "replace")
        if self.dropped:
            text += f"\n[output truncated: {self.dropped} more bytes not kept]\n"
        return text


@dataclass
class _Outcome:
    returncode: int
    cpu_s: float
    timed_out: bool
    stdout: _Capture
    stderr: _Capture
    status_lines: list[bytes]
    wall_s: float


def _communicate(launch: _Launch, data: bytes, pipe: tuple[int, int], limits: Limits) -> _Outcome:
    """Start the runner, feed it ``data``, collect its output and status lines (capped) until
    it ends or the wall limit, then kill what is left of it and reap it."""
    start = time.monotonic()
    status_r, status_w = pipe
    try:
        proc = subprocess.Popen(
            launch.argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            pass_fds=(status_w, *launch.pass_fds),
            env=launch.env,
            cwd=launch.cwd,
            start_new_session=True,
        )
    finally:
        os.close(status_w)  # the child has its copy; EOF on status_r must mean it is gone
    assert proc.stdin and proc.stdout and proc.stderr
    out, err = _Capture(limits.output_bytes), _Capture(limits.output_bytes)
    status = _Capture(1 << 20)
    sel = selectors.DefaultSelector()
    streams = {proc.stdout.fileno(): out, proc.stderr.fileno(): err, status_r: status}
    for fd in streams:
        os.set_blocking(fd, False)
        sel.register(fd, selectors.EVENT_READ)
    stdin_fd = proc.stdin.fileno()
    os.set_blocking(stdin_fd, False)
    sel.register(stdin_fd, selectors.EVENT_WRITE)
    pidfd: int | None = None
    with contextlib.suppress(OSError):  # no pidfd before Linux 5.3: poll instead
        pidfd = os.pidfd_open(proc.pid)
        sel.register(pidfd, selectors.EVENT_READ)
    deadline, sent, exited, timed_out = start + limits.wall_s, 0, False, False
    try:
        while sel.get_map():
            now = time.monotonic()
            # WNOWAIT: see the exit without reaping, so the pid (and group) cannot be reused yet
            wnowait = os.WEXITED | os.WNOHANG | os.WNOWAIT
            if not exited and os.waitid(os.P_PID, proc.pid, wnowait) is not None:
                exited, deadline = True, now + _DRAIN_S
                # The sandbox's main process is gone: end whatever is left of its group.
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
            if now >= deadline:
                if exited:
                    break  # stray writers outlived the sandbox (unsafe mode only)
                timed_out = True
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                continue
            wait = deadline - now if pidfd is not None else min(deadline - now, 0.01)
            for key, _ in sel.select(wait):
                fd = int(key.fd)
                if fd == pidfd:
                    sel.unregister(fd)
                    continue  # the loop top notices the exit
                if fd == stdin_fd:
                    try:
                        sent += os.write(fd, data[sent : sent + _READ])
                    except BrokenPipeError:
                        sent = len(data)
                    if sent >= len(data):
                        sel.unregister(fd)
                        proc.stdin.close()
                    continue
                chunk = os.read(fd, _READ)
                if chunk:
                    streams[fd].feed(chunk)
                else:
                    sel.unregister(fd)
    finally:
        sel.close()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        _, wstatus, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(wstatus)
        for f in (proc.stdin, proc.stdout, proc.stderr):
            f.close()
        if pidfd is not None:
            os.close(pidfd)
    return _Outcome(
        returncode=proc.returncode,
        cpu_s=usage.ru_utime + usage.ru_stime,
        timed_out=timed_out,
        stdout=out,
        stderr=err,
        status_lines=bytes(status.data).splitlines(),
        wall_s=time.monotonic() - start,
    )


def _cpu_limit(limits: Limits) -> int:
    """RLIMIT_CPU counts whole seconds: round up, never stricter than asked."""
    return max(1, math.ceil(limits.cpu_s))


def _classify(o: _Outcome, nonce: str, limits: Limits, bubblewrap: bool) -> tuple[str, str]:
    started, report = False, None
    prefix = nonce.encode() + b" "
    for raw in o.status_lines:
        if not raw.startswith(prefix):
            continue  # not from the runner
        try:
            msg = json.loads(raw[len(prefix) :])
        except ValueError:
            continue
        if isinstance(msg, dict) and msg.get("event") == "start":
            started = True
        elif isinstance(msg, dict) and msg.get("status") in STATUSES:
            report = (str(msg["status"]), " ".join(str(msg.get("detail", "")).split()))
    if report is not None:
        return report
    if not started:
        lines = [x for x in o.stderr.data.decode("utf-8", "replace").splitlines() if x.strip()]
        bwrap_lines = [x for x in lines if x.startswith("bwrap:")]
        why = (bwrap_lines or lines or [f"exit code {o.returncode}"])[-1].strip()
        if o.timed_out:
            return "sandbox_error", f"the sandbox did not start within {limits.wall_s:g} s: {why}"
        return "sandbox_error", why if why.startswith("bwrap:") else f"the runner failed: {why}"
    if o.timed_out:
        return "timeout", f"timed out after {limits.wall_s:g} s"
    code = o.returncode
    # bwrap turns a child killed by a signal into exit code 128 + signal
    sig = -code if code < 0 else code - 128 if bubblewrap and code > 128 else 0
    if sig == signal.SIGXCPU or (sig == signal.SIGKILL and o.cpu_s >= _cpu_limit(limits)):
        return "timeout", f"CPU time limit of {_cpu_limit(limits)} s exceeded"
    if sig == signal.SIGKILL:
        return "oom", "killed by SIGKILL, most likely for lack of memory"
    if sig:
        name = next((s.name for s in signal.Signals if s == sig), f"signal {sig}")
        return "error", f"killed by {name}"
    return "error", f"the program exited with code {code} before finishing"


class _Launch(NamedTuple):
    argv: list[str]
    env: dict[str, str]
    cwd: str | None
    pass_fds: tuple[int, ...] = ()


def _launch(mode: str, limits: Limits, stack: contextlib.ExitStack) -> _Launch:
    """How to start the runner in ``mode``; a SteerlabError is a harness failure."""
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8", "PYTHONHASHSEED": "0"}
    env.update(PYTHONDONTWRITEBYTECODE="1", PYTHONIOENCODING="utf-8")
    if mode == "unsafe":
        cwd = stack.enter_context(tempfile.TemporaryDirectory(prefix="steerlab-exec-"))
        env.update(HOME=cwd, TMPDIR=cwd)
        return _Launch(_python_argv(_python().host_executable), env, cwd)
    bwrap = shutil.which("bwrap")
    if bwrap is None:
        raise SteerlabError("bwrap: not found on PATH")
    env.update(HOME="/tmp", TMPDIR="/tmp")
    if _python().relocated:  # a shared libpython lives in the prefix, now at /opt/python
        env["LD_LIBRARY_PATH"] = _SANDBOX_PYTHON + "/lib"
    seccomp = _seccomp_fd(stack)
    fds = () if seccomp is None else (seccomp,)
    return _Launch(_bwrap_argv(bwrap, limits, seccomp), env, None, fds)


def run_program(source: str, limits: Limits = Limits(), mode: str = "bubblewrap") -> ExecResult:
    """Run ``source`` as a Python program under ``limits`` and say how it ended.

    ``mode`` is ``"bubblewrap"`` (the sandbox) or ``"unsafe"`` (no confinement); get it from
    :func:`~steerlab.execution.pool.sandbox_mode`. A harness failure is an ``ExecResult`` with
    status ``sandbox_error``, never an exception. The program runs as the module
    ``__candidate__`` with the standard library only; ``pass`` means it reached its last
    statement; ``sys.exit`` (any code) or ``os._exit`` before that is an ``error``.
    """
    if mode not in MODES:
        raise SteerlabError(f"Unknown execution mode {mode!r}; expected one of {MODES}.")
    nonce = secrets.token_hex(16)
    cfg: dict[str, object] = {"nonce": nonce, "cpu_s": _cpu_limit(limits)}
    cfg.update(memory_mb=limits.memory_mb, file_size_mb=limits.file_size_mb)
    cfg.update(nproc=limits.nproc, uid=None, gid=None)
    with contextlib.ExitStack() as stack:
        if os.geteuid() != 0:
            cfg["nproc"] = _user_tasks() + limits.nproc
        elif mode == "bubblewrap":
            uid = stack.enter_context(_uid_slot())
            cfg.update(uid=uid, gid=uid)
        else:
            cfg["nproc"] = None  # root ignores RLIMIT_NPROC; unsafe mode keeps root
        try:
            launch = _launch(mode, limits, stack)
        except SteerlabError as exc:
            return _harness_failure(str(exc))
        try:
            cg = stack.enter_context(sandbox_cgroup(limits.memory_mb, limits.nproc))
        except SteerlabError as exc:
            return _harness_failure(str(exc))
        argv = launch.argv if cg is None else cg.launcher(launch.argv)
        pipe = os.pipe()
        stack.callback(os.close, pipe[0])
        cfg["status_fd"] = pipe[1]
        payload = json.dumps(cfg).encode() + b"\n" + source.encode("utf-8", "surrogatepass")
        try:
            outcome = _communicate(launch._replace(argv=argv), payload, pipe, limits)
        except OSError as exc:
            return _harness_failure(f"could not start {launch.argv[0]}: {exc}")
        counts = (0, 0) if cg is None else (cg.oom_kills(), cg.refused_forks())
    status, detail = _classify(outcome, nonce, limits, bubblewrap=mode == "bubblewrap")
    status, detail = _whole_sandbox(status, detail, limits, *counts)
    return ExecResult(
        status=status,
        detail=detail,
        stdout=outcome.stdout.text(),
        stderr=outcome.stderr.text(),
        wall_s=outcome.wall_s,
        truncated=bool(outcome.stdout.dropped or outcome.stderr.dropped),
    )


def _whole_sandbox(
    status: str, detail: str, limits: Limits, oom_kills: int, refused_forks: int
) -> tuple[str, str]:
    """The verdict with what the sandbox's cgroup saw: processes the kernel killed for memory
    make a failed program's status ``oom`` (a program that still passed keeps its pass); a fork
    refused at the process limit is named in an error's detail."""
    if oom_kills and status in ("fail", "error", "timeout", "oom"):
        then = "" if status == "oom" else f"; then {status}: {detail}"
        return "oom", (
            f"the kernel killed {oom_kills} process(es) for going over the sandbox's memory limit "
            f"of {limits.memory_mb} MB (all its processes together){then}"
        )
    if refused_forks and status == "error":
        return status, f"{detail} (the sandbox's limit of {limits.nproc} processes was reached)"
    return status, detail


def _harness_failure(detail: str) -> ExecResult:
    return ExecResult("sandbox_error", detail, "", "", 0.0, truncated=False)
