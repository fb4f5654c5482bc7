"""Where shards are computed: in this process (``local``) or on Ray actors (``ray``).

An executor holds one *resource* per worker (for steering workflows, a loaded model) made by a
``loader``. Work reaches it as callables; for Ray, loader, callables and arguments must be
picklable by cloudpickle (what Ray uses; it handles more than the standard pickle):

- ``call(fn, *args)`` runs ``fn(resource, *args)`` on one worker and returns its (picklable)
  result: building directions, describing the model.
- ``map(compute, shards, on_rows)`` runs ``compute(resource, shard.rows, on_rows)`` for every
  shard and yields ``(shard, DataFrame)`` as shards finish, in any order. The caller (the driver)
  writes the part files, so resume works the same whatever the executor.

Both executors run the same ``compute`` on the same shards, so their results are the same.
:func:`steerlab.runs.executors.make_executor` makes the one a spec names.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import pandas as pd

from steerlab.errors import SteerlabError
from steerlab.runs.shards import Shard

Loader = Callable[[], Any]
Compute = Callable[[Any, Sequence[Any], Callable[[int], object]], pd.DataFrame]
EXECUTORS = ("local", "ray")


@dataclass(frozen=True)
class ExecutorSpec:
    """``--executor``, ``--ray-address``, ``--workers``, ``--threads-per-worker``.

    ``threads`` is the intra-op thread count of each Ray CPU worker. By default it is the count
    a local run uses on the driver's machine: CPU kernels (GEMMs at small batch sizes, fused
    attention) split their sums by thread, so only equal thread counts give a Ray run exactly a
    local run's numbers. Fewer threads per worker avoid oversubscribing cores, at that price
    (rare differences in the last bits of logprobs, rarer still a different sampled token).
    """

    kind: Literal["local", "ray"] = "local"
    address: str | None = None
    workers: int | None = None
    threads: int | None = None
    shard_retries: int = 3

    def __post_init__(self) -> None:
        if self.kind not in EXECUTORS:
            raise SteerlabError(
                f"unknown executor {self.kind!r}: use one of {', '.join(EXECUTORS)}"
            )
        if self.kind == "local" and (
            self.address is not None or self.workers is not None or self.threads is not None
        ):
            raise SteerlabError(
                "--ray-address, --workers and --threads-per-worker need --executor ray"
            )
        for value, what in ((self.workers, "--workers"), (self.threads, "--threads-per-worker")):
            if value is not None and value < 1:
                raise SteerlabError(f"{what} must be >= 1, got {value}")


class Executor(ABC):
    kind: str

    @abstractmethod
    def start(self, loader: Loader, progress: bool = True) -> None:
        """Make the resource on every worker (load the model)."""

    @abstractmethod
    def call(self, fn: Callable[..., Any], *args: Any) -> Any:
        """``fn(resource, *args)`` on one worker."""

    @abstractmethod
    def map(
        self, compute: Compute, shards: Sequence[Shard], on_rows: Callable[[int], object]
    ) -> Iterator[tuple[Shard, pd.DataFrame]]:
        """Every shard's result, as shards finish; ``on_rows(n)`` as rows finish."""

    @abstractmethod
    def summary(self) -> dict[str, Any]:
        """What ran where: workers, shards per worker, retries (for the log and the manifest)."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Free the workers (idempotent)."""

    @property
    def local(self) -> bool:
        return self.kind == "local"


class LocalExecutor(Executor):
    """One worker: this process."""

    kind = "local"

    def __init__(self) -> None:
        self._resource: Any = None
        self._started = False
        self._shards = 0
        self._rows = 0

    def start(self, loader: Loader, progress: bool = True) -> None:
        self._resource = loader()
        self._started = True

    def _need(self) -> Any:
        if not self._started:
            raise RuntimeError("executor not started")
        return self._resource

    def call(self, fn: Callable[..., Any], *args: Any) -> Any:
        return fn(self._need(), *args)

    def map(
        self, compute: Compute, shards: Sequence[Shard], on_rows: Callable[[int], object]
    ) -> Iterator[tuple[Shard, pd.DataFrame]]:
        resource = self._need()
        for shard in shards:
            df = compute(resource, shard.rows, on_rows)
            self._shards += 1
            self._rows += len(shard.rows)
            yield shard, df

    def summary(self) -> dict[str, Any]:
        return {"executor": "local", "workers": 1, "shards": self._shards, "rows": self._rows}

    def close(self) -> None:
        self._resource = None
        self._started = False
