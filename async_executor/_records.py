"""Frozen records: task states, outcomes, specs and executor statistics."""

from __future__ import annotations

import enum
from collections.abc import Hashable, Mapping
from typing import Any

import attrs

TaskKey = Hashable
"""A task key: ``str``, ``int``, or (named) tuples of them."""


class TaskState(str, enum.Enum):
    """A task's state, equal to Airflow's state strings (``TaskState.SUCCESS == "success"``)."""

    QUEUED = "queued"
    RUNNING = "running"
    SUCCESS = "success"
    FAILED = "failed"

    def __str__(self) -> str:
        return self.value


class FailureReason(str, enum.Enum):
    """Why a task failed when the failure did not come from the command's own exit status."""

    #: The command could not be started (missing binary, not executable, missing cwd, ...).
    SPAWN_FAILED = "spawn_failed"
    #: The task ran longer than its ``timeout``; its process group was killed.
    TIMED_OUT = "timed_out"
    #: ``terminate()`` (or ``end()`` running out of time) stopped the task.
    TERMINATED = "terminated"
    #: ``revoke_task()`` / ``cleanup_stuck_queued_tasks()`` dropped the task before it started.
    REVOKED = "revoked"
    #: The executor stopped before the task could start.
    NOT_STARTED = "not_started"

    def __str__(self) -> str:
        return self.value


@attrs.frozen(slots=True, kw_only=True)
class TaskInfo:
    """The outcome of one task: what ``get_event_buffer()`` and ``TaskHandle.wait()`` report."""

    key: Any
    state: TaskState
    #: Exit status when the process exited normally, else ``None``.
    returncode: int | None = None
    #: The signal that ended the process, if one did.
    signal: int | None = None
    pid: int | None = None
    #: Wall-clock times (``time.time()``) of launch and end.
    started_at: float | None = None
    ended_at: float | None = None
    log_path: str | None = None
    #: Set when the failure did not come from the command itself.
    reason: FailureReason | None = None
    #: Human-readable detail for ``reason`` (e.g. the ``OSError`` of a failed spawn).
    detail: str | None = None
    try_number: int = 1
    #: Delivered again after a crash: an earlier executor recorded this outcome (in its
    #: journal, or its supervisor in its exits file) but died before its caller confirmed it
    #: (see ``AsyncExecutor.get_event_buffer``). The caller may have seen it already; callers
    #: that keep their own records dedupe on ``(key, try_number)``.
    redelivered: bool = False

    @property
    def duration(self) -> float | None:
        """Seconds from launch to end, when the task ran."""
        if self.started_at is None or self.ended_at is None:
            return None
        return self.ended_at - self.started_at

    @property
    def succeeded(self) -> bool:
        return self.state is TaskState.SUCCESS


@attrs.frozen(slots=True, kw_only=True)
class TaskSpec:
    """A validated task: what the engine needs to launch it. Built by ``_validation``."""

    key: Any
    argv: tuple[str, ...]
    priority: int = 1
    queue: str | None = None
    timeout: float | None = None
    #: Environment overrides, merged over the executor's own environment.
    env: Mapping[str, str] | None = None
    cwd: str | None = None
    try_number: int = 1


@attrs.frozen(slots=True, kw_only=True)
class ExecutorStatistics:
    """A snapshot of an executor's counters (``AsyncExecutor.statistics()``)."""

    parallelism: int
    #: The in-flight limit actually applied: ``parallelism`` capped by file descriptors.
    effective_parallelism: int
    running: int
    queued: int
    #: Tasks handed to the engine but waiting for a slot.
    pending: int
    slots_available: int
    launched: int
    succeeded: int
    failed: int
    timed_out: int
    terminated: int
    spawn_failures: int
    #: Times admission waited because descriptors or processes ran out.
    resource_waits: int
    #: Tasks forked by the warm fork server (a subset of ``launched``).
    warm_launched: int
    loop: str
