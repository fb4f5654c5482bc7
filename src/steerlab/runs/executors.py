"""The executor factory: the executor an :class:`~steerlab.runs.executor.ExecutorSpec` names
(Ray's is imported only when asked for)."""

from __future__ import annotations

from steerlab.runs.executor import Executor, ExecutorSpec, LocalExecutor


def make_executor(spec: ExecutorSpec) -> Executor:
    if spec.kind == "ray":
        from steerlab.runs.ray_executor import RayExecutor

        return RayExecutor(spec)
    return LocalExecutor()
