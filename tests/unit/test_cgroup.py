"""Where the sandbox's cgroup goes, read from made-up ``/proc/self`` files and cgroup trees (v2
delegated, v1 as root, none writable), the files a v2 cgroup is given, and the fallback to the
per-process limits with one warning."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from steerlab.errors import SteerlabError
from steerlab.execution import Limits, cgroup, run_program
from steerlab.execution import sandbox as sb


def _proc(tmp: Path, mountinfo: str, own: str) -> Path:
    proc = tmp / "proc"
    proc.mkdir(parents=True)
    (proc / "mountinfo").write_text(mountinfo)
    (proc / "cgroup").write_text(own)
    return proc


def _dir(path: Path, **files: str) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    (path / "cgroup.procs").write_text("")
    for name, text in files.items():
        (path / name.replace("_", ".", 1)).write_text(text)
    return path


def test_v2_uses_the_nearest_ancestor_that_gives_children_memory(tmp_path: Path) -> None:
    """Our own cgroup holds processes, so it cannot enable controllers for children: the
    sandbox cgroups go beside it, under the parent that does (a delegated subtree)."""
    root = tmp_path / "fs" / "cg 2"  # a space, escaped as \\040 in mountinfo
    _dir(root, cgroup_subtree_control="cpu memory pids\n")
    _dir(root / "user.slice", cgroup_subtree_control="memory pids\n")
    _dir(root / "user.slice" / "app.scope", cgroup_subtree_control="\n")
    point = str(root).replace(" ", "\\040")
    mountinfo = f"41 31 0:38 / {point} rw,relatime - cgroup2 cgroup2 rw\n"
    proc = _proc(tmp_path, mountinfo, "0::/user.slice/app.scope\n")
    h, why = cgroup.find_hierarchy(proc)
    assert (h, why) == (cgroup.Hierarchy(2, root / "user.slice", root / "user.slice"), "")


def test_v2_without_pids_in_the_subtree_limits_memory_only(tmp_path: Path) -> None:
    root = _dir(tmp_path / "v2", cgroup_subtree_control="memory\n")
    proc = _proc(tmp_path, f"1 0 0:1 / {root} rw - cgroup2 cgroup2 rw\n", "0::/\n")
    h, _ = cgroup.find_hierarchy(proc)
    assert h == cgroup.Hierarchy(2, root, None)


def test_v1_as_root_uses_its_own_memory_and_pids_cgroups(tmp_path: Path) -> None:
    """This machine's layout: memory and pids mounted apart; the cgroup v2 mount has no
    controllers (they are all bound to v1)."""
    mem, pids, v2 = tmp_path / "memory", tmp_path / "pids", tmp_path / "unified"
    _dir(mem / "process_api" / "abc")
    _dir(pids)
    _dir(v2, cgroup_subtree_control="\n")
    mountinfo = (
        f"32 31 0:29 / {tmp_path}/cpu rw - cgroup cgroup rw,cpu\n"
        f"35 31 0:32 / {mem} rw,relatime - cgroup cgroup rw,memory\n"
        f"39 31 0:36 / {pids} rw,relatime - cgroup cgroup rw,pids\n"
        f"41 31 0:38 / {v2} rw,relatime - cgroup2 cgroup2 rw\n"
    )
    own = "8:pids:/\n4:memory:/process_api/abc\n1:cpu:/\n0::/\n"
    h, why = cgroup.find_hierarchy(_proc(tmp_path, mountinfo, own))
    assert (h, why) == (cgroup.Hierarchy(1, mem / "process_api" / "abc", pids), "")


def test_nothing_writable_says_why(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    mem = _dir(tmp_path / "memory")
    mountinfo = f"35 31 0:32 / {mem} rw - cgroup cgroup rw,memory\n"
    proc = _proc(tmp_path, mountinfo, "4:memory:/\n")
    monkeypatch.setattr(cgroup, "_writable", lambda d: False)
    h, why = cgroup.find_hierarchy(proc)
    assert h is None and why == "the cgroup v1 memory hierarchy is not writable by this user"
    h, why = cgroup.find_hierarchy(_proc(tmp_path / "none", "", ""))
    assert h is None and why == "no cgroup v1 memory hierarchy is mounted"


def test_a_cgroup_outside_the_mount_is_not_used(tmp_path: Path) -> None:
    """A mount showing another part of the tree (its root is not an ancestor of ours)."""
    mem = _dir(tmp_path / "memory")
    mountinfo = f"35 31 0:32 /other {mem} rw - cgroup cgroup rw,memory\n"
    h, _ = cgroup.find_hierarchy(_proc(tmp_path, mountinfo, "4:memory:/mine\n"))
    assert h is None


def _fake_kernel(monkeypatch: pytest.MonkeyPatch, version: int) -> None:
    """``mkdir`` in a cgroup file system makes its interface files; here, an ordinary one."""
    names = ["cgroup.procs", "pids.max", "pids.events"]
    names += (
        ["memory.max", "memory.swap.max", "memory.events", "cgroup.kill"]
        if version == 2
        else ["memory.limit_in_bytes", "memory.memsw.limit_in_bytes", "memory.oom_control"]
    )

    def make(path: Path) -> None:
        path.mkdir()
        for name in names:
            (path / name).write_text("")

    monkeypatch.setattr(cgroup, "_make_dir", make)


@pytest.mark.parametrize("version", [1, 2])
def test_limits_written_counts_read_and_the_cgroup_removed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, version: int
) -> None:
    _fake_kernel(monkeypatch, version)
    mem = _dir(tmp_path / "mem")
    pids = mem if version == 2 else _dir(tmp_path / "pids")
    h = cgroup.Hierarchy(version, mem, pids)
    cg = cgroup.SandboxCgroup.create(h, 256, 8)
    assert cg.memory.parent == mem and cg.memory.name.startswith("steerlab-")
    if version == 2:
        assert cg.dirs == (cg.memory,)
        assert (cg.memory / "memory.max").read_text() == str(256 * 1024 * 1024)
        assert (cg.memory / "memory.swap.max").read_text() == "0"
        (cg.memory / "memory.events").write_text("low 0\nhigh 0\nmax 9\noom 2\noom_kill 2\n")
    else:
        assert cg.dirs == (cg.memory, pids / cg.memory.name)
        for name in ("memory.limit_in_bytes", "memory.memsw.limit_in_bytes"):
            assert (cg.memory / name).read_text() == str(256 * 1024 * 1024)
        (cg.memory / "memory.oom_control").write_text(
            "oom_kill_disable 0\nunder_oom 0\noom_kill 2\n"
        )
    assert cg.pids is not None
    assert (cg.pids / "pids.max").read_text() == str(8 + cgroup.HARNESS_TASKS)
    (cg.pids / "pids.events").write_text("max 5\n")
    assert (cg.oom_kills(), cg.refused_forks()) == (2, 5)
    argv = cg.launcher(["bwrap", "--", "python"])
    procs = [str(d / "cgroup.procs") for d in cg.dirs]
    assert argv[:2] == ["/bin/sh", "-c"] and argv[3:] == [
        "steerlab-sandbox",
        *procs,
        "bwrap",
        "--",
        "python",
    ]
    assert argv[2].count('echo $$ >"$1"') == len(procs) and argv[2].endswith('exec "$@"')
    for d in cg.dirs:  # the kernel removes the interface files with the directory
        for f in d.iterdir():
            f.unlink()
    cg.remove()
    assert [p.name for p in mem.iterdir()] == ["cgroup.procs"]


def test_a_cgroup_that_cannot_be_set_up_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    mem = _dir(tmp_path / "mem")
    monkeypatch.setattr(cgroup, "_make_dir", lambda path: path.mkdir())  # no interface files
    with pytest.raises(SteerlabError, match="cannot set up the sandbox's cgroup"):
        cgroup.SandboxCgroup.create(cgroup.Hierarchy(2, mem, mem), 256, 8)
    assert [p.name for p in mem.iterdir()] == ["cgroup.procs"]


def test_without_a_cgroup_the_rlimits_stay_and_one_warning_says_so(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(cgroup, "_setup", None)
    monkeypatch.setattr(cgroup, "find_hierarchy", lambda: (None, "nothing mounted"))
    with caplog.at_level(logging.WARNING, logger="steerlab.execution.cgroup"):
        assert cgroup.hierarchy() is None and cgroup.hierarchy() is None
        result = run_program("x = bytearray(4 * 1024**3)\n", Limits(wall_s=10.0), mode="unsafe")
    assert (result.status, result.detail) == ("oom", "MemoryError")  # RLIMIT_AS still holds
    [record] = caplog.records
    message = record.getMessage()
    assert "no writable cgroup for the code sandbox (nothing mounted)" in message
    assert "RLIMIT_AS" in message and "RLIMIT_NPROC" in message
    assert cgroup.unavailable_reason() == "nothing mounted"


def test_oom_kills_make_a_failed_program_oom_and_leave_a_pass() -> None:
    lim = Limits(memory_mb=256, nproc=8)
    status, detail = sb._whole_sandbox("fail", "AssertionError: [-9, 0]", lim, 1, 0)
    assert status == "oom" and detail == (
        "the kernel killed 1 process(es) for going over the sandbox's memory limit of 256 MB "
        "(all its processes together); then fail: AssertionError: [-9, 0]"
    )
    assert sb._whole_sandbox("pass", "", lim, 3, 0) == ("pass", "")
    assert sb._whole_sandbox("syntax_error", "x", lim, 1, 0) == ("syntax_error", "x")
    assert sb._whole_sandbox("error", "OSError: x", lim, 0, 2) == (
        "error",
        "OSError: x (the sandbox's limit of 8 processes was reached)",
    )
