"""async_executor: a high-concurrency local task executor built on asyncio.

Task commands run as subprocesses (each in its own process group) under a parallelism
limit; outcomes come back through an event buffer drained by a non-blocking ``sync()``.
It speaks Apache Airflow's executor interface (``async_executor.airflow`` for Airflow
itself) and offers an async API for programs that already run an event loop.
"""

from __future__ import annotations

from ._exceptions import (
    AsyncExecutorError,
    DuplicateTaskError,
    ExecutorClosedError,
    ExecutorNotStartedError,
    InvalidTaskError,
)
from ._executor import AsyncExecutor, TaskHandle
from ._forkserver import WarmStart
from ._journal import JournalError
from ._records import ExecutorStatistics, FailureReason, TaskInfo, TaskSpec, TaskState
from ._spawn import Child, ExecLauncher, Launcher

__all__ = [
    "AsyncExecutor",
    "AsyncExecutorError",
    "Child",
    "DuplicateTaskError",
    "ExecLauncher",
    "ExecutorClosedError",
    "ExecutorNotStartedError",
    "ExecutorStatistics",
    "FailureReason",
    "InvalidTaskError",
    "JournalError",
    "Launcher",
    "TaskHandle",
    "TaskInfo",
    "TaskSpec",
    "TaskState",
    "WarmStart",
]

__version__ = "0.1.0"
