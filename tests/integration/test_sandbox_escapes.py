"""Probe programs that try to get out of the sandbox's limits or read what they should not (the
hardening round's 60 probes that got through, each now a test): new user namespaces and
mounts, the kernel keyring, ptrace, memory outside the address-space limit (memfd, SysV shared
memory, forked children that each stay under it), the base interpreter's third-party packages,
and verdicts faked by leaving early.

One limit is documented rather than closed (see the README's sandbox section): the candidate and
its tests run in one interpreter, so a program written to forge its verdict can reach the
runner's report channel; the last test keeps that probe and says what it shows."""

from __future__ import annotations

import ast
import ctypes
import os
import textwrap
import uuid
from pathlib import Path

import pytest

from steerlab.execution import Limits, cgroup, run_program
from steerlab.execution import sandbox as sb
from steerlab.execution.seccomp import filter_program

pytestmark = pytest.mark.skipif(
    sb.shutil.which("bwrap") is None or filter_program() is None,
    reason="bubblewrap is not installed, or no seccomp filter for this architecture",
)

FAST = Limits(wall_s=15.0, cpu_s=5.0)

LIBC = """
import ctypes, ctypes.util, os
libc = ctypes.CDLL(None, use_errno=True)
def sys_call(nr, *args):
    r = libc.syscall(ctypes.c_long(nr), *[ctypes.c_long(a) for a in args])
    return r, ctypes.get_errno()
"""


def _probe(body: str) -> tuple[str, str]:
    result = run_program(LIBC + textwrap.dedent(body), FAST)
    return result.status, result.stdout.strip()


NR = {  # x86_64, aarch64
    "unshare": (272, 97),
    "clone3": (435, 435),
    "keyctl": (250, 219),
    "add_key": (248, 217),
    "ptrace": (101, 117),
    "mount": (165, 40),
    "shmget": (29, 194),
    "bpf": (321, 280),
    "perf_event_open": (298, 241),
    "setns": (308, 268),
}


def _nr(name: str) -> int:
    return NR[name][0 if os.uname().machine == "x86_64" else 1]


@pytest.mark.parametrize(
    ("name", "args"),
    [
        ("unshare", (0x10000000,)),  # CLONE_NEWUSER: uid 0 in a namespace, then mount a tmpfs
        ("unshare", (0x00020000,)),  # CLONE_NEWNS
        ("unshare", (0x40000000,)),  # CLONE_NEWNET
        ("keyctl", (0, -3, 0)),  # KEYCTL_GET_KEYRING_ID of the session keyring
        ("add_key", (0, 0, 0, 0, -3)),
        ("ptrace", (0, 0, 0, 0)),  # PTRACE_TRACEME
        ("mount", (0, 0, 0, 0, 0)),
        ("shmget", (0, 800 * 1024 * 1024, 0o1600)),  # 800 MB of SysV shared memory
        ("bpf", (0, 0, 0)),
        ("perf_event_open", (0, 0, -1, -1, 0)),
        ("setns", (0, 0)),
    ],
)
def test_a_refused_system_call_fails_with_eperm(name: str, args: tuple[int, ...]) -> None:
    status, out = _probe(f"print(*sys_call({_nr(name)}, *{args!r}))\n")
    assert status == "pass", out
    ret, errno = (int(x) for x in out.split())
    assert (ret, errno) == (-1, 1), f"{name}{args}: returned {ret}, errno {errno}"


def test_clone3_says_enosys_so_threads_and_processes_still_work() -> None:
    status, out = _probe(
        f"""
        print(*sys_call({_nr("clone3")}, 0, 0))
        import subprocess, threading
        t = threading.Thread(target=lambda: None); t.start(); t.join()
        print(subprocess.run(["/usr/bin/true"]).returncode)
        pid = os.fork()
        if pid == 0:
            os._exit(7)
        print(os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]))
        """
    )
    assert status == "pass", out
    assert out.split("\n") == ["-1 38", "0", "7"]


def test_memfd_is_refused() -> None:
    status, out = _probe(
        """
        try:
            os.memfd_create("x")
            print("created")
        except PermissionError:
            print("refused")
        """
    )
    assert (status, out) == ("pass", "refused")


def test_a_user_namespace_cannot_be_made_by_any_route() -> None:
    """``unshare -U`` style and ``clone(CLONE_NEWUSER)``: no uid 0 anywhere, no tmpfs mounted
    past the 16 MB /tmp cap."""
    status, out = _probe(
        """
        import subprocess
        clone_nr = {"x86_64": 56, "aarch64": 220}[os.uname().machine]
        print(*sys_call(clone_nr, 0x10000000 | 17, 0, 0, 0, 0))  # CLONE_NEWUSER | SIGCHLD
        r = subprocess.run(["/usr/bin/unshare", "-Ur", "id", "-u"], capture_output=True)
        print(r.returncode != 0 or r.stdout.strip() != b"0")
        """
    )
    assert status == "pass", out
    first, second = out.split("\n")
    assert first == "-1 1" and second == "True"


def test_the_parent_sessions_keyring_secret_cannot_be_read() -> None:
    """A secret the parent plants in its session keyring is out of the program's reach."""
    libc = ctypes.CDLL(None, use_errno=True)
    key = libc.syscall(
        ctypes.c_long(_nr("add_key")),
        b"user",
        b"steerlab-probe",
        b"s3cret",
        ctypes.c_long(6),
        ctypes.c_long(-3),
    )
    if key < 0:
        pytest.skip("no session keyring to plant a secret in here")
    try:
        status, out = _probe(
            f"""
            buf = ctypes.create_string_buffer(64)
            r = libc.syscall(ctypes.c_long({_nr("keyctl")}), ctypes.c_long(11),
                             ctypes.c_long({key}), buf, ctypes.c_long(64))
            print(r, ctypes.get_errno(), buf.value)
            """
        )
    finally:
        libc.syscall(ctypes.c_long(_nr("keyctl")), ctypes.c_long(21), ctypes.c_long(key))
    assert status == "pass", out
    assert "s3cret" not in out and out.startswith("-1 1 ")


def test_third_party_packages_are_out_of_reach_even_by_path() -> None:
    status, out = _probe(
        """
        import glob, sys
        dirs = [d for pat in ("/usr/lib/python3*/*-packages", "/usr/local/lib/python3*/*-packages",
                              "/opt/python/lib/python3*/site-packages") for d in glob.glob(pat)]
        sys.path.extend(dirs)
        print(sum(len(os.listdir(d)) for d in dirs))
        for name in ("yaml", "numpy", "pip", "setuptools"):
            try:
                __import__(name)
                print("imported", name)
            except ImportError:
                pass
        """
    )
    assert (status, out) == ("pass", "0")


def _needs_cgroup() -> cgroup.Hierarchy:
    h = cgroup.hierarchy()
    if h is None:
        pytest.skip(f"no writable cgroup here ({cgroup.unavailable_reason()})")
    return h


FORKED_CHILDREN = """
import os, time
kids = []
for _ in range(7):
    pid = os.fork()
    if pid == 0:
        held = b"\\x01" * (200 * 1024 * 1024)  # written, so resident: 200 MB a child
        time.sleep(3)
        os._exit(0)
    kids.append(pid)
codes = [os.waitstatus_to_exitcode(os.waitpid(p, 0)[1]) for p in kids]
print(codes)
assert codes == [0] * 7, codes
"""


def test_forked_children_share_one_memory_limit() -> None:
    """Each child stays under the 256 MB address-space limit; together they would hold 1.4 GB.
    The sandbox's cgroup holds them all to 256 MB: the kernel kills children, and the program
    ends ``oom``."""
    _needs_cgroup()
    result = run_program(FORKED_CHILDREN, Limits(wall_s=30.0, cpu_s=20.0, memory_mb=256))
    assert result.status == "oom", result
    assert "over the sandbox's memory limit of 256 MB (all its processes together)" in result.detail
    codes = ast.literal_eval(result.stdout.strip())
    assert len(codes) == 7 and codes.count(0) <= 1, codes  # one 200 MB child fits, two do not


def _our_cgroups(h: cgroup.Hierarchy) -> list[str]:
    prefix = f"steerlab-{os.getpid()}-"
    parents = {h.memory, h.pids} - {None}
    return [d.name for p in parents if p for d in Path(p).iterdir() if d.name.startswith(prefix)]


def test_the_process_limit_holds_where_rlimit_nproc_does_not() -> None:
    """Root ignores RLIMIT_NPROC, and unsafe mode keeps root: only the cgroup bounds the
    processes there (the program's own ``nproc``, plus the harness's)."""
    h = _needs_cgroup()
    if os.geteuid() != 0 or h.pids is None:
        pytest.skip("needs root (which RLIMIT_NPROC does not bind) and a pids controller")
    src = (
        "import threading, time\n"
        "for _ in range(64):\n"
        "    threading.Thread(target=time.sleep, args=(2,), daemon=True).start()\n"
    )
    result = run_program(src, Limits(wall_s=15.0, nproc=8), mode="unsafe")
    assert result.status == "error", result
    assert result.detail == (
        "RuntimeError: can't start new thread (the sandbox's limit of 8 processes was reached)"
    )


def test_no_cgroup_and_no_process_is_left_behind() -> None:
    """After a timeout in unsafe mode (no pid namespace), a daemon that left the session is
    still in the cgroup, and is killed with it; the cgroup is removed."""
    h = _needs_cgroup()
    marker = f"steerlab-cgroup-daemon-{uuid.uuid4().hex}"
    src = (
        "import os, sys, time\n"
        "if os.fork() == 0:\n"
        "    os.setsid()\n"
        "    if os.fork() == 0:\n"
        "        os.closerange(0, 1024)\n"
        f"        argv = [sys.executable, '-c', 'import time; time.sleep(60)', {marker!r}]\n"
        "        os.execv(sys.executable, argv)\n"
        "    os._exit(0)\n"
        "time.sleep(60)\n"
    )
    result = run_program(src, Limits(wall_s=2.0), mode="unsafe")
    assert result.status == "timeout", result
    assert _our_cgroups(h) == []
    alive = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
                state = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[0]
            except OSError:
                continue
            if marker.encode() in cmdline and state != "Z":
                alive.append(entry)
    assert alive == []


HUMANEVAL_0_WRONG = """
def has_close_elements(numbers, threshold):
    return True
import sys
sys.exit(0)

def check(candidate):
    assert candidate([1.0, 2.0, 3.0], 0.5) == False
check(has_close_elements)
"""


@pytest.mark.parametrize(
    "program",
    [
        HUMANEVAL_0_WRONG,
        "def f():\n    import sys\n    sys.exit(0)\nf()\nassert False\n",
        "raise SystemExit\nassert False\n",
    ],
    ids=["wrong-answer-then-exit", "exit-in-a-function", "bare-systemexit"],
)
def test_leaving_before_the_tests_is_never_a_pass(program: str) -> None:
    result = run_program(program, FAST)
    assert result.status == "error" and "SystemExit" in result.detail, result


FORGE = """
import sys, json
frame = sys._getframe()
while frame is not None and "report" not in frame.f_locals:
    frame = frame.f_back
report = frame.f_locals["report"]
cells = {name: cell.cell_contents
         for name, cell in zip(report.__code__.co_freevars, report.__closure__)}
line = cells["line"]
os.write(cells["status_fd"], line("pass", ""))
os._exit(0)
assert False, "never reached: the tests below would fail"
"""


def test_a_program_written_to_forge_its_verdict_still_can(tmp_path: object) -> None:
    """The documented limit: the runner and the program share an interpreter, so a program
    that walks up to the runner's frame can write its own verdict. The test keeps the probe so
    that a sandbox that closes this (tests in another process) turns it around."""
    result = run_program(LIBC + FORGE, FAST)
    assert result.status == "pass"
