"""``--executor ray``: shards go to Ray actors, each holding one loaded resource (model).

One actor per GPU on a GPU cluster (``num_gpus=1``, so Ray gives each its own device), else
``--workers`` CPU actors sharing the cluster's cores. The driver hands each idle actor one shard
at a time and writes every part file itself, so resume works as for a local run. An actor that
dies mid-shard (killed, out of memory, node lost) costs only that shard: Ray restarts the actor
(reloading the model), and the shard goes to another worker (the same one only when no other is
free); the restarted actor gets work again once its model is loaded. A shard whose result was
already taken is never written again. An error raised by the work itself (bad input, a bug) is
not retried: it stops the run with its own message.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import os
import signal
import socket
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import pandas as pd

from steerlab.errors import SteerlabError
from steerlab.runs.executor import Compute, Executor, ExecutorSpec, Loader
from steerlab.runs.shards import Shard

logger = logging.getLogger(__name__)
INSTALL_HINT = "--executor ray needs Ray: pip install 'steerlab[ray]'"
MAX_DEFAULT_CPU_WORKERS = 8
AUTH_LOGGER = "ray._private.authentication.authentication_token_setup"


def _no_progress(n: int) -> None:
    return None


class _Worker:
    """The actor class (made remote at start). A loader error is kept and raised by ``ready``,
    so it reaches the driver as the error it is instead of an actor crash retried in a loop."""

    def __init__(self, loader: Loader, threads: int | None) -> None:
        self.error: BaseException | None = None
        self.resource: Any = None
        try:
            if threads:
                import torch

                torch.set_num_threads(threads)
            self.resource = loader()
        except Exception as e:  # re-raised by ready()
            self.error = e

    def ready(self) -> dict[str, Any]:
        if self.error is not None:
            raise self.error
        import ray

        return {"host": socket.gethostname(), "pid": os.getpid(), "gpus": ray.get_gpu_ids()}

    def call(self, fn: Callable[..., Any], *args: Any) -> Any:
        if self.error is not None:  # a restarted actor whose loader failed this time
            raise self.error
        return fn(self.resource, *args)

    def run(self, compute: Compute, rows: Sequence[Any]) -> pd.DataFrame:
        if self.error is not None:
            raise self.error
        return compute(self.resource, rows, _no_progress)


class RayExecutor(Executor):
    kind = "ray"

    def __init__(self, spec: ExecutorSpec) -> None:
        try:
            import ray
        except ImportError:
            raise SteerlabError(INSTALL_HINT) from None
        self._ray = ray
        self.spec = spec
        self._owns_cluster = False
        self._actors: list[Any] = []
        self._where: list[dict[str, Any]] = []
        self._dead: set[int] = set()
        self._failures: collections.Counter[int] = collections.Counter()
        self._shards: collections.Counter[int] = collections.Counter()
        self._retried: list[dict[str, Any]] = []
        self._restarting: dict[Any, int] = {}  # ready-ref of a restarting worker -> worker

    # ------------------------------------------------------------------ start / stop

    def _connect(self) -> None:
        ray = self._ray
        if ray.is_initialized():
            return
        address = self.spec.address
        try:
            with contextlib.ExitStack() as stack:
                if address is not None:
                    _probe(address)
                    # Ray tries an unanswering GCS 20 times, ~40 s each (minutes in all); one
                    # try tells a live cluster from a dead one. (When starting a cluster, the
                    # same variable is how long its new GCS may take to start: left alone.)
                    stack.enter_context(_env_default("RAY_gcs_server_port_wait_time_s", "1"))
                else:
                    # a new local cluster turns Ray's token authentication on (its default)
                    # and says so in a warning line: noise on stderr for a private cluster
                    stack.enter_context(_muted(AUTH_LOGGER))
                # ray.init installs a SIGTERM handler that exits with code 15; keep ours (the
                # CLI's: clean up, say "interrupted", exit 143)
                handlers = _signal_handlers()
                try:
                    ray.init(
                        address=address,
                        include_dashboard=False,
                        log_to_driver=False,
                        logging_level=logging.WARNING,
                    )
                finally:
                    _restore(handlers)
        except (ConnectionError, RuntimeError, ValueError) as e:
            where = address or "a new local cluster"
            first = (str(e).strip().splitlines() or [type(e).__name__])[0]
            raise SteerlabError(f"cannot start Ray on {where}: {first}") from None
        self._owns_cluster = True

    def start(self, loader: Loader, progress: bool = True) -> None:
        ray = self._ray
        self._connect()
        res = ray.cluster_resources()
        gpus, cpus = int(res.get("GPU", 0)), int(res.get("CPU", 0))
        if gpus:
            n = self.spec.workers or gpus
            if n > gpus:
                raise SteerlabError(f"--workers {n}: the Ray cluster has {gpus} GPUs (one each)")
            opts: dict[str, Any] = {"num_gpus": 1, "num_cpus": 1}
            threads = self.spec.threads
        else:
            n = self.spec.workers or max(1, min(cpus, MAX_DEFAULT_CPU_WORKERS))
            if n > max(cpus, 1):
                raise SteerlabError(
                    f"--workers {n}: the Ray cluster has {cpus} CPUs (at least one per worker)"
                )
            # as many threads as a local run uses: CPU kernels (GEMMs at small batch, fused
            # attention) split sums by thread, so only equal counts give equal numbers
            threads = self.spec.threads or _local_threads()
            opts = {"num_cpus": max(1, cpus // n)}
            if threads * n > cpus:
                # oversubscribed cores: OpenMP threads that spin while waiting starve each other
                # (measured 10x slower); passive waiting keeps a shared core useful
                opts["runtime_env"] = {"env_vars": {"OMP_WAIT_POLICY": "PASSIVE"}}
        actor_cls = ray.remote(max_restarts=self.spec.shard_retries, max_task_retries=0, **opts)(
            _Worker
        )
        self._actors = [actor_cls.remote(loader, threads) for _ in range(n)]
        try:
            self._where = ray.get([a.ready.remote() for a in self._actors])
        except ray.exceptions.RayTaskError as e:
            self.close()
            raise _cause(e) from None
        except ray.exceptions.RayError as e:  # the process died (OOM killer, unpicklable loader)
            self.close()
            raise SteerlabError(
                f"a Ray worker died while loading: {_first_line(e)}; see the Ray logs"
            ) from None
        for i, w in enumerate(self._where):
            w["worker"] = f"w{i}"
            w["threads"] = threads
        logger.info(
            "ray: %d workers on %d GPUs / %d CPUs, %s threads each (%s)",
            n,
            gpus,
            cpus,
            threads or "default",
            ", ".join(f"w{i} pid {w['pid']} on {w['host']}" for i, w in enumerate(self._where)),
        )

    def close(self) -> None:
        ray = self._ray
        for a in self._actors:
            with contextlib.suppress(Exception):  # already gone
                ray.kill(a)
        self._actors = []
        if self._owns_cluster and ray.is_initialized():
            ray.shutdown()
            self._owns_cluster = False

    # ------------------------------------------------------------------ work

    def _alive(self) -> list[int]:
        return [i for i in range(len(self._actors)) if i not in self._dead]

    def _lost(self, worker: int, what: str, err: BaseException) -> None:
        """Book a worker's death; after its restarts are spent it is not used again."""
        self._failures[worker] += 1
        if self._failures[worker] > self.spec.shard_retries:
            self._dead.add(worker)
        reason = _first_line(err)[:200]
        self._retried.append({"worker": f"w{worker}", "what": what, "reason": reason})
        logger.warning("ray: worker w%d died during %s (%s); retrying", worker, what, reason)

    def _restarted(self, worker: int) -> Any:
        """A ref that resolves once Ray has restarted a lost worker (model loaded again) and
        fails once Ray gave up on it. Work sent to an actor while it restarts fails at once,
        as if it had died again, so a lost worker gets no work before this resolves."""
        return self._actors[worker].ready.options(max_task_retries=-1).remote()

    def _check_restart(self, worker: int, ref: Any) -> bool:
        """Whether the worker is back; if Ray gave up on it, it is not used again."""
        ray = self._ray
        try:
            ray.get(ref)
            return True
        except ray.exceptions.RayTaskError as e:  # its loader failed this time
            raise _cause(e) from None
        except ray.exceptions.RayError as e:
            self._dead.add(worker)
            logger.warning("ray: worker w%d is gone (%s)", worker, _first_line(e)[:200])
            return False

    def _usable(self) -> list[int]:
        """Live workers not restarting; waits for a restart when every live one is."""
        ray = self._ray
        while True:
            if self._restarting:
                refs = list(self._restarting)
                ready, _ = ray.wait(refs, num_returns=len(refs), timeout=0)
                for ref in ready:
                    self._check_restart(self._restarting.pop(ref), ref)
            busy = set(self._restarting.values())
            usable = [i for i in self._alive() if i not in busy]
            if usable or not self._restarting:
                return usable
            ray.wait(list(self._restarting), num_returns=1)

    def call(self, fn: Callable[..., Any], *args: Any) -> Any:
        ray = self._ray
        for _attempt in range(self.spec.shard_retries + 1):
            alive = self._usable()
            if not alive:
                break
            i = alive[0]
            try:
                return ray.get(self._actors[i].call.remote(fn, *args))
            except ray.exceptions.RayTaskError as e:
                raise _cause(e) from None
            except ray.exceptions.RayError as e:
                self._lost(i, getattr(fn, "__name__", "a call"), e)
                if i not in self._dead:
                    self._restarting[self._restarted(i)] = i
        raise SteerlabError("every Ray worker died; see the Ray logs (ray logs / /tmp/ray)")

    def map(
        self, compute: Compute, shards: Sequence[Shard], on_rows: Callable[[int], object]
    ) -> Iterator[tuple[Shard, pd.DataFrame]]:
        ray = self._ray
        compute_ref = ray.put(compute)
        queue: collections.deque[tuple[Shard, int | None]] = collections.deque(
            (s, None) for s in shards
        )
        pending: dict[Any, tuple[Shard, int]] = {}
        # lost workers until Ray has them back; kept across stages, so a worker still
        # restarting when a stage ends gets no work in the next one before it is back
        restarting = self._restarting
        idle = set(self._alive()) - set(restarting.values())
        attempts: collections.Counter[str] = collections.Counter()
        taken: set[str] = set()
        while queue or pending:
            while queue and idle:
                shard, avoid = queue.popleft()
                others = sorted(idle - {avoid}) if avoid is not None else sorted(idle)
                worker = (others or sorted(idle))[0]
                idle.discard(worker)
                ref = self._actors[worker].run.remote(compute_ref, shard.rows)
                pending[ref] = (shard, worker)
            if not pending and not restarting:
                raise SteerlabError("every Ray worker died; see the Ray logs (ray logs / /tmp/ray)")
            (ref,), _ = ray.wait([*pending, *restarting], num_returns=1)
            if ref in restarting:
                worker = restarting.pop(ref)
                if self._check_restart(worker, ref):
                    idle.add(worker)
                continue
            shard, worker = pending.pop(ref)
            try:
                df = ray.get(ref)
            except ray.exceptions.RayTaskError as e:
                raise _cause(e) from None
            except ray.exceptions.RayError as e:
                attempts[shard.name] += 1
                self._lost(worker, f"shard {shard.stage}/{shard.name}", e)
                if attempts[shard.name] > self.spec.shard_retries:
                    raise SteerlabError(
                        f"shard {shard.stage}/{shard.name} was lost {attempts[shard.name]} times "
                        "(its worker died each time); see the Ray logs"
                    ) from None
                if worker not in self._dead:
                    restarting[self._restarted(worker)] = worker
                queue.appendleft((shard, worker))
                continue
            idle.add(worker)
            if shard.name in taken:  # cannot happen with one submission per shard; never twice
                continue
            taken.add(shard.name)
            self._shards[worker] += 1
            on_rows(len(shard.rows))
            yield shard, df

    def summary(self) -> dict[str, Any]:
        return {
            "executor": "ray",
            "address": self.spec.address,
            "workers": len(self._where),
            "where": self._where,
            "shards_per_worker": {f"w{i}": self._shards[i] for i in range(len(self._where))},
            "retries": len(self._retried),
            "retried": self._retried,
            "dead_workers": sorted(f"w{i}" for i in self._dead),
        }


def _probe(address: str, timeout_s: float = 5.0) -> None:
    """Fail fast when nothing listens at a ``host:port`` address: Ray would wait minutes.

    Ray connects to a loopback address through this node's IP, so either answering will do.
    Other forms (``auto``, ``ray://...``) are left to Ray."""
    host, sep, port = address.rpartition(":")
    if not sep or not host or "://" in address or not port.isdigit():
        return
    hosts = [host.strip("[]")]
    if hosts[0] in ("localhost", "127.0.0.1", "::1"):
        from ray.util import get_node_ip_address

        hosts.append(get_node_ip_address())
    last: OSError | None = None
    for h in hosts:
        try:
            socket.create_connection((h, int(port)), timeout=timeout_s).close()
            return
        except OSError as e:
            last = e
    reason = (last.strerror if last is not None else None) or type(last).__name__
    raise ConnectionError(f"nothing answers at {address} ({reason})")


@contextlib.contextmanager
def _env_default(name: str, value: str) -> Iterator[None]:
    """``os.environ[name] = value`` for the block, unless the user set it."""
    if name in os.environ:
        yield
        return
    os.environ[name] = value
    try:
        yield
    finally:
        os.environ.pop(name, None)


@contextlib.contextmanager
def _muted(name: str) -> Iterator[None]:
    """No records from logger ``name`` during the block."""
    log = logging.getLogger(name)

    def mute(record: logging.LogRecord) -> bool:
        return False

    log.addFilter(mute)
    try:
        yield
    finally:
        log.removeFilter(mute)


def _signal_handlers() -> dict[int, Any]:
    if threading.current_thread() is not threading.main_thread():
        return {}
    return {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}


def _restore(handlers: dict[int, Any]) -> None:
    for sig, handler in handlers.items():
        if handler is not None:
            signal.signal(sig, handler)


def _local_threads() -> int:
    """The intra-op thread count a local run uses here (torch's default for this machine)."""
    import torch

    return int(torch.get_num_threads())


def _first_line(err: BaseException) -> str:
    return (str(err).strip().splitlines() or [type(err).__name__])[0]


def _cause(err: Exception) -> BaseException:
    """The exception raised inside the actor (a SteerlabError stays a one-line message)."""
    cause = getattr(err, "cause", None)
    return cause if isinstance(cause, BaseException) else err
