"""async_executor: a high-concurrency local task executor built on asyncio.

Task commands run as subprocesses (each in its own process group) under a parallelism
limit; outcomes come back through an event buffer drained by a non-blocking ``sync()``.
It speaks Apache Airflow's executor interface (``async_executor.airflow`` for Airflow
itself) and offers an async API for programs that already run an event loop.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
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

#: Where each public name lives. Imported on first use (PEP 562), so that the task supervisor
#: and ``async-executor --help`` do not pay for the journal, anyio and aiosqlite.
_EXPORTS = {
    "AsyncExecutor": "._executor",
    "AsyncExecutorError": "._exceptions",
    "Child": "._spawn",
    "DuplicateTaskError": "._exceptions",
    "ExecLauncher": "._spawn",
    "ExecutorClosedError": "._exceptions",
    "ExecutorNotStartedError": "._exceptions",
    "ExecutorStatistics": "._records",
    "FailureReason": "._records",
    "InvalidTaskError": "._exceptions",
    "JournalError": "._journal",
    "Launcher": "._spawn",
    "TaskHandle": "._executor",
    "TaskInfo": "._records",
    "TaskSpec": "._records",
    "TaskState": "._records",
    "WarmStart": "._forkserver",
}


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


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
