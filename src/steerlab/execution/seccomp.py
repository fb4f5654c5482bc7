"""The seccomp filter every sandboxed program runs under (bubblewrap's ``--seccomp FD``).

A classic BPF program, built here from the kernel's documented constants (no library needed),
that refuses with ``EPERM`` what container runtimes refuse: new namespaces (``unshare``, and
``clone`` with any ``CLONE_NEW*`` flag; ``clone3``, whose flags sit in memory a filter cannot
read, gets ``ENOSYS`` so the C library falls back to ``clone``), ``setns``, mounts, the kernel
keyrings (``keyctl``, ``add_key``, ``request_key``), ``ptrace`` and reading or writing another
process's memory, ``bpf``, ``perf_event_open``, ``userfaultfd``, kernel modules and ``kexec``,
and memory outside the address-space limit (SysV shared memory, ``memfd_create``). Everything
else is allowed. System calls of another ABI than the native one (x32, i386 on x86_64) are
refused, so the numbers checked mean what they say.

Supported: x86_64 and aarch64; elsewhere :func:`filter_program` returns None and the sandbox runs
without it (the README says so).
"""

from __future__ import annotations

import platform
import struct

# BPF instruction classes and modes (linux/bpf_common.h)
_LD_W_ABS = 0x20
_JEQ = 0x15
_JGE = 0x35
_JSET = 0x45
_RET = 0x06
# seccomp return values (linux/seccomp.h)
_ALLOW = 0x7FFF0000
_ERRNO = 0x00050000
EPERM, ENOSYS = 1, 38
# struct seccomp_data offsets: nr, arch, then args[0] (low 32 bits on little-endian)
_NR, _ARCH, _ARG0 = 0, 4, 16
_X32_BIT = 0x40000000
#: every CLONE_NEW* flag (namespaces), time namespace included
CLONE_NEW = 0x00000080 | 0x00020000 | 0x02000000 | 0x04000000 | 0x08000000 | 0x10000000
CLONE_NEW |= 0x20000000 | 0x40000000

_DENIED = (
    "ptrace",
    "process_vm_readv",
    "process_vm_writev",
    "mount",
    "umount2",
    "pivot_root",
    "move_mount",
    "open_tree",
    "fsopen",
    "fsconfig",
    "fsmount",
    "fspick",
    "mount_setattr",
    "setns",
    "keyctl",
    "add_key",
    "request_key",
    "bpf",
    "perf_event_open",
    "userfaultfd",
    "kexec_load",
    "init_module",
    "finit_module",
    "delete_module",
    "open_by_handle_at",
    "shmget",
    "shmat",
    "memfd_create",
)

_ARCHES: dict[str, tuple[int, dict[str, int]]] = {
    "x86_64": (
        0xC000003E,
        {
            "clone": 56,
            "unshare": 272,
            "clone3": 435,
            "ptrace": 101,
            "process_vm_readv": 310,
            "process_vm_writev": 311,
            "mount": 165,
            "umount2": 166,
            "pivot_root": 155,
            "move_mount": 429,
            "open_tree": 428,
            "fsopen": 430,
            "fsconfig": 431,
            "fsmount": 432,
            "fspick": 433,
            "mount_setattr": 442,
            "setns": 308,
            "keyctl": 250,
            "add_key": 248,
            "request_key": 249,
            "bpf": 321,
            "perf_event_open": 298,
            "userfaultfd": 323,
            "kexec_load": 246,
            "init_module": 175,
            "finit_module": 313,
            "delete_module": 176,
            "open_by_handle_at": 304,
            "shmget": 29,
            "shmat": 30,
            "memfd_create": 319,
        },
    ),
    "aarch64": (
        0xC00000B7,
        {
            "clone": 220,
            "unshare": 97,
            "clone3": 435,
            "ptrace": 117,
            "process_vm_readv": 270,
            "process_vm_writev": 271,
            "mount": 40,
            "umount2": 39,
            "pivot_root": 41,
            "move_mount": 429,
            "open_tree": 428,
            "fsopen": 430,
            "fsconfig": 431,
            "fsmount": 432,
            "fspick": 433,
            "mount_setattr": 442,
            "setns": 268,
            "keyctl": 219,
            "add_key": 217,
            "request_key": 218,
            "bpf": 280,
            "perf_event_open": 241,
            "userfaultfd": 282,
            "kexec_load": 104,
            "init_module": 105,
            "finit_module": 273,
            "delete_module": 106,
            "open_by_handle_at": 265,
            "shmget": 194,
            "shmat": 196,
            "memfd_create": 279,
        },
    ),
}


def _insn(code: int, k: int, jt: int = 0, jf: int = 0) -> bytes:
    return struct.pack("<HBBI", code, jt, jf, k)


def filter_program(machine: str | None = None) -> bytes | None:
    """The filter as bytes of ``struct sock_filter`` (what ``bwrap --seccomp`` reads), or None
    on an architecture this module does not know."""
    arch = _ARCHES.get(machine or platform.machine())
    if arch is None:
        return None
    audit_arch, nr = arch
    denied = [nr[name] for name in _DENIED]
    # Layout (relative jumps count the instructions skipped):
    #   0  ld arch          1  jeq native ? 0 : DENY   2  ld nr   3  jge X32 ? DENY : 0
    #   4  jeq clone3 ? NOSYS : 0   5  jeq clone ? FLAGS : 0   6  jeq unshare ? FLAGS : 0
    #   7.. jeq denied ? DENY : 0   ALLOW   FLAGS: ld arg0; jset CLONE_NEW ? DENY : ALLOW
    #   ALLOW2   DENY   NOSYS
    n = len(denied)
    allow = 7 + n
    flags = allow + 1
    allow2 = flags + 2
    deny = allow2 + 1
    nosys = deny + 1
    prog = [
        _insn(_LD_W_ABS, _ARCH),
        _insn(_JEQ, audit_arch, 0, deny - 2),
        _insn(_LD_W_ABS, _NR),
        _insn(_JGE, _X32_BIT, deny - 4, 0),
        _insn(_JEQ, nr["clone3"], nosys - 5, 0),
        _insn(_JEQ, nr["clone"], flags - 6, 0),
        _insn(_JEQ, nr["unshare"], flags - 7, 0),
    ]
    for i, number in enumerate(denied):
        at = 7 + i
        prog.append(_insn(_JEQ, number, deny - at - 1, 0))
    prog.append(_insn(_RET, _ALLOW))  # allow
    prog.append(_insn(_LD_W_ABS, _ARG0))  # flags
    prog.append(_insn(_JSET, CLONE_NEW, deny - (flags + 1) - 1, 0))
    prog.append(_insn(_RET, _ALLOW))  # allow2
    prog.append(_insn(_RET, _ERRNO | EPERM))  # deny
    prog.append(_insn(_RET, _ERRNO | ENOSYS))  # nosys
    assert len(prog) == nosys + 1
    return b"".join(prog)
