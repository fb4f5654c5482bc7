"""The run framework every workflow is built on (see :mod:`steerlab.runs.runner`)."""

from steerlab.runs.config import RunConfig, Strict
from steerlab.runs.executor import Executor, ExecutorSpec, LocalExecutor
from steerlab.runs.executors import make_executor
from steerlab.runs.rundir import LOCK_NAME, RunDir
from steerlab.runs.runner import Runtime, Workflow, execute, format_summary
from steerlab.runs.shards import Shard, plan_shards, read_part

__all__ = [
    "LOCK_NAME",
    "Executor",
    "ExecutorSpec",
    "LocalExecutor",
    "RunConfig",
    "RunDir",
    "Runtime",
    "Shard",
    "Strict",
    "Workflow",
    "execute",
    "format_summary",
    "make_executor",
    "plan_shards",
    "read_part",
]
