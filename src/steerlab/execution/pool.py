"""The run-level entry points: choose the execution mode once, then run many programs in
sandboxes on a bounded pool of worker threads.

The work happens in the sandbox processes; each worker thread only starts one and waits for it,
so threads are enough. Execution time is measured here, apart from whatever produced the
programs: each result carries its own wall time and the batch its total.
"""

from __future__ import annotations

import functools
import logging
import os
import shutil
import time
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass

from steerlab.errors import SteerlabError
from steerlab.execution.sandbox import MODES, ExecResult, Limits, run_program

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ExecBatch:
    """The results of a batch, in input order, and its total wall time in seconds."""

    results: tuple[ExecResult, ...]
    wall_s: float


def run_batch(
    sources: Sequence[str],
    limits: Limits = Limits(),  # noqa: B008 (a frozen value)
    mode: str = "bubblewrap",
    workers: int | None = None,
    progress: Callable[[int], object] | None = None,
) -> ExecBatch:
    """Run every program with at most ``workers`` (default: the CPU count) at once.

    ``progress(1)`` is called, on the calling thread, each time a program finishes (so a
    ``tqdm(...).update`` fits). On an exception (from ``progress``, or Ctrl-C) programs not yet
    started are dropped and the ones running finish within their wall limit.
    """
    if mode not in MODES:
        raise SteerlabError(f"Unknown execution mode {mode!r}; expected one of {MODES}.")
    if workers is not None and workers < 1:
        raise SteerlabError(f"workers must be at least 1, got {workers}.")
    start = time.monotonic()
    n_workers = min(workers or os.cpu_count() or 1, max(len(sources), 1))
    results: list[ExecResult | None] = [None] * len(sources)
    pool = ThreadPoolExecutor(n_workers, thread_name_prefix="steerlab-exec")
    try:
        pending: dict[Future[ExecResult], int] = {
            pool.submit(run_program, src, limits, mode): i for i, src in enumerate(sources)
        }
        while pending:
            done, _ = wait(pending, return_when=FIRST_COMPLETED)
            for fut in done:
                results[pending.pop(fut)] = fut.result()
                if progress is not None:
                    progress(1)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    final = tuple(r for r in results if r is not None)
    assert len(final) == len(sources)
    return ExecBatch(final, time.monotonic() - start)


def run_programs(
    sources: Sequence[str],
    limits: Limits = Limits(),  # noqa: B008 (a frozen value)
    mode: str = "bubblewrap",
    workers: int | None = None,
    progress: Callable[[int], object] | None = None,
) -> list[ExecResult]:
    """:func:`run_batch` without the total time: the results, in input order."""
    return list(run_batch(sources, limits, mode, workers, progress).results)


@functools.cache
def _bubblewrap_problem(bwrap: str) -> str | None:
    """Why ``bwrap`` cannot sandbox a trivial program, or None when it can (checked once)."""
    result = run_program("assert 1 + 1 == 2\n", Limits(wall_s=60.0), "bubblewrap")
    if result.status == "pass":
        return None
    return f"bubblewrap is installed but could not run a sandboxed program ({result.detail})"


def sandbox_mode(unsafe_exec: bool = False) -> str:
    """The execution mode to pass to :func:`run_program`: ``"bubblewrap"`` when ``bwrap`` can run
    a trivial sandboxed program; otherwise ``"unsafe"`` if ``unsafe_exec`` (logging a WARNING
    that generated code runs unconfined), else a :class:`SteerlabError`."""
    bwrap = shutil.which("bwrap")
    problem = _bubblewrap_problem(bwrap) if bwrap else "bubblewrap (bwrap) is not installed"
    if problem is None:
        return "bubblewrap"
    if unsafe_exec:
        logger.warning(
            "%s; --unsafe-exec was given, so generated code runs UNCONFINED, with this user's "
            "access to files, processes and the network.",
            problem,
        )
        return "unsafe"
    raise SteerlabError(
        f"Generated code runs only in a sandbox, but {problem}: install bubblewrap "
        "(apt-get install bubblewrap) or pass --unsafe-exec to run it without one."
    )
