"""The engine: priority admission, the parallelism limit and each task's lifecycle.

It is written once and runs inside an asyncio event loop: the caller's own (``async with
AsyncExecutor()``) or a private loop thread (the sync façade). Every method here runs on
that loop. Each task is a small state machine driven by loop callbacks, not a coroutine:
spawn -> (pidfd readable | timeout -> TERM group -> grace -> KILL group) -> reap -> result.

Results leave the engine in one of two ways: the ``results`` deque, which the façade's
``sync()`` drains from any thread without a lock, or a future the async API awaits.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import logging
import os
import signal
import time
from collections import deque
from typing import Any, Protocol

from . import _logs
from ._limits import task_capacity
from ._records import FailureReason, TaskInfo, TaskSpec, TaskState
from ._spawn import RESOURCE_ERRNOS, Backend, LocalBackend
from ._validation import plain_key

logger = logging.getLogger("async_executor.engine")

#: Seconds between checks of running tasks' log sizes against the cap.
LOG_SWEEP_INTERVAL = 1.0
#: Seconds to wait before retrying a launch that ran out of descriptors or processes.
RESOURCE_RETRY = 0.05
#: How long past the kill grace ``terminate()`` waits for a process that ignores SIGKILL.
STUCK_MARGIN = 5.0


class _Run:
    """One task handed to the backend: spawning until ``pid`` is set, then running."""

    __slots__ = (
        "backend",
        "detail",
        "future",
        "kill_timer",
        "log_path",
        "pid",
        "reason",
        "spec",
        "started_at",
        "timer",
    )

    def __init__(
        self,
        spec: TaskSpec,
        started_at: float,
        log_path: str | None,
        future: asyncio.Future[TaskInfo] | None,
    ) -> None:
        self.spec = spec
        self.started_at = started_at
        self.log_path = log_path
        self.future = future
        self.pid: int | None = None
        self.reason: FailureReason | None = None
        self.detail: str | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.kill_timer: asyncio.TimerHandle | None = None
        #: The backend that owns the process (adopted tasks belong to an earlier supervisor).
        self.backend: Backend | None = None


class Recorder(Protocol):
    """Where the engine reports each task's transitions (the journal, when there is one)."""

    def accepted(self, spec: TaskSpec) -> None: ...

    def started(
        self, spec: TaskSpec, pid: int, proc_start: int | None, log_path: str | None, started_at: float
    ) -> None: ...

    def finished(self, info: TaskInfo) -> None: ...

    def reported(self, infos: list[TaskInfo]) -> None:
        """The caller confirmed these outcomes: they need not be delivered again after a crash."""
        ...

    async def wait_durable(self) -> None:
        """Return once everything recorded so far is on disk."""
        ...


_Pending = tuple[int, int, TaskSpec, "asyncio.Future[TaskInfo] | None"]


class Engine:
    """Runs task specs as subprocesses, at most ``parallelism`` at once."""

    def __init__(
        self,
        *,
        parallelism: int,
        log_dir: str | None,
        log_max_bytes: int | None,
        kill_grace: float,
        report_running: bool = False,
        backend: Backend | None = None,
        lazy_logs: bool = False,
    ) -> None:
        #: Set by the executor when it keeps a journal.
        self.recorder: Recorder | None = None
        self.parallelism = parallelism
        self.capacity = parallelism
        self.log_dir = log_dir
        self.log_max_bytes = log_max_bytes
        #: Lazy logs: the backend captures every task's output in memory and names its log
        #: file (:meth:`log_path_of`) only if the task writes; such logs are capped as written.
        self._lazy_logs = lazy_logs and log_dir is not None
        #: The cap the engine enforces on log files the tasks write themselves.
        self._log_cap = None if self._lazy_logs else log_max_bytes
        self.kill_grace = kill_grace
        self.report_running = report_running
        self.loop: asyncio.AbstractEventLoop | None = None
        #: Finished (and, with ``report_running``, started) tasks for the façade to drain.
        self.results: deque[TaskInfo] = deque()
        self.backend: Backend = backend if backend is not None else LocalBackend()
        self._pending: list[_Pending] = []
        self._seq = itertools.count()
        #: Tasks handed to the backend (spawning or running): they hold parallelism slots.
        self._runs: dict[Any, _Run] = {}
        self._pending_keys: set[Any] = set()
        self._retry_handle: asyncio.TimerHandle | None = None
        self._sweep_handle: asyncio.TimerHandle | None = None
        self._idle_waiters: list[asyncio.Future[None]] = []
        #: Outcomes waiting for their journal commit before they are reported.
        self._undurable: list[tuple[TaskInfo, asyncio.Future[TaskInfo] | None]] = []
        self._durable_task: asyncio.Task[None] | None = None
        self._admitting = False
        self._tagged = False
        self.accepting = True
        self.counters = dict.fromkeys(
            (
                "launched",
                "succeeded",
                "failed",
                "timed_out",
                "terminated",
                "spawn_failures",
                "resource_waits",
                "warm_launched",
            ),
            0,
        )

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Bind to the running loop and get the backend ready; a clear error if it cannot."""
        loop = asyncio.get_running_loop()
        self.loop = loop
        self.capacity = task_capacity(self.parallelism)
        if self.log_dir is not None:
            os.makedirs(self.log_dir, mode=0o700, exist_ok=True)
        self._tagged = self.backend.name != "local"
        self.backend.open(loop, self)
        try:
            await self.backend.wait_ready()
        except BaseException:
            self.backend.close()
            raise

    def detach(self) -> None:
        """Release what ``attach`` took; the engine must be idle."""
        for handle in (self._retry_handle, self._sweep_handle):
            if handle is not None:
                handle.cancel()
        self.backend.close()

    @property
    def running_count(self) -> int:
        return len(self._runs)

    @property
    def pending_count(self) -> int:
        return len(self._pending)

    def has_key(self, key: Any) -> bool:
        return key in self._runs or key in self._pending_keys

    def is_waiting(self, key: Any) -> bool:
        """Handed over and waiting for a slot (not started)? Ask on the loop: from another thread
        a hand-off still in flight (``call_soon_threadsafe``) is not seen yet."""
        return key in self._pending_keys

    def pid_of(self, key: Any) -> int | None:
        run = self._runs.get(key)
        return run.pid if run is not None else None

    def running_log_path(self, key: Any) -> str | None:
        """Where a running task's output is going: its log file (with lazy logs, the file its
        output is spilled to, which may not exist yet); ``None`` if it is not running."""
        run = self._runs.get(key)
        if run is None or self.log_dir is None:
            return None
        return run.log_path or self.log_path_of(run)

    # ------------------------------------------------------------------ admission

    def submit(self, spec: TaskSpec, future: asyncio.Future[TaskInfo] | None = None) -> None:
        """Accept one task (already validated and de-duplicated by the caller)."""
        if not self.accepting:
            self._finish_unstarted(
                spec,
                future,
                FailureReason.NOT_STARTED,
                "the executor stopped taking work before the task was handed over",
            )
            return
        if self.recorder is not None:
            self.recorder.accepted(spec)
        heapq.heappush(self._pending, (-spec.priority, next(self._seq), spec, future))
        self._pending_keys.add(spec.key)
        self._admit()

    def submit_many(self, specs: list[TaskSpec]) -> None:
        """Accept a batch handed over from another thread (one loop wake-up for all)."""
        if not self.accepting:
            self.reject(
                specs,
                FailureReason.NOT_STARTED,
                "the executor stopped taking work before the task was handed over",
            )
            return
        recorder = self.recorder
        for spec in specs:
            if recorder is not None:
                recorder.accepted(spec)
            heapq.heappush(self._pending, (-spec.priority, next(self._seq), spec, None))
            self._pending_keys.add(spec.key)
        self._admit()

    def adopt(
        self,
        spec: TaskSpec,
        pid: int,
        started_at: float,
        log_path: str | None,
        backend: Backend,
        timeout: float | None,
    ) -> _Run:
        """Take over a running task that an earlier executor started (its backend owns it)."""
        assert self.loop is not None
        run = _Run(spec, started_at, log_path, None)
        run.pid = pid
        run.backend = backend
        self._runs[spec.key] = run
        if timeout is not None:
            run.timer = self.loop.call_later(max(0.0, timeout), self._timed_out, run)
        return run

    def reject(self, specs: list[TaskSpec], reason: FailureReason, detail: str) -> None:
        """Report tasks that will never start (one failed event each)."""
        for spec in specs:
            self._finish_unstarted(spec, None, reason, detail)

    def stop_task(
        self, key: Any, reason: FailureReason = FailureReason.TERMINATED, detail: str = "cancelled"
    ) -> bool:
        """Drop a pending task, or stop a running one's process group (its outcome says
        ``reason`` and ``detail``: by default ``TERMINATED``, "cancelled")."""
        if self.revoke(key):
            return True
        run = self._runs.get(key)
        if run is None:
            return False
        if run.reason is None:
            run.reason = reason
            run.detail = detail
        self._stop(run)
        return True

    def revoke(self, key: Any) -> bool:
        """Drop a task that has not started yet; it gets a ``REVOKED`` failure."""
        if key not in self._pending_keys:
            return False
        for index, entry in enumerate(self._pending):
            if entry[2].key == key:
                self._pending[index] = self._pending[-1]
                self._pending.pop()
                heapq.heapify(self._pending)
                self._pending_keys.discard(key)
                self._finish_unstarted(entry[2], entry[3], FailureReason.REVOKED, "revoked before it started")
                return True
        return False  # pragma: no cover - _pending_keys and _pending agree

    def _admit(self) -> None:
        if self._admitting:  # re-entered from a synchronous backend event; the outer loop goes on
            return
        self._admitting = True
        try:
            pending = self._pending
            while pending and len(self._runs) < self.capacity and self._retry_handle is None:
                _, _, spec, future = heapq.heappop(pending)
                self._pending_keys.discard(spec.key)
                self._launch(spec, future)
        finally:
            self._admitting = False

    def _launch(self, spec: TaskSpec, future: asyncio.Future[TaskInfo] | None) -> None:
        path = None
        try:
            # Lazy logs in this process name a log only for a task that writes; a supervisor
            # needs the name in the spawn request (and the journal keeps it for recovery).
            if self.log_dir is not None and (self._tagged or not self._lazy_logs):
                path = _logs.log_path(self.log_dir, spec.key, spec.try_number)
            run = _Run(spec, time.time(), path, future)
            run.backend = self.backend
            self._runs[spec.key] = run
            tag = [plain_key(spec.key), spec.try_number] if self._tagged else None
            self.backend.spawn(run, spec.argv, spec.env, spec.cwd, path, tag)
        except Exception as exc:  # a bug must fail this one task, never lose it or the engine
            logger.exception("launching task %r failed", spec.key)
            if self._runs.get(spec.key) is not None and self._runs[spec.key].pid is None:
                del self._runs[spec.key]
                self._finish_unstarted(
                    spec, future, FailureReason.SPAWN_FAILED, f"internal error: {exc!r}", path
                )

    # ------------------------------------------------------------------ backend events

    def spawned(self, run: _Run, pid: int, proc_start: int | None = None, warm: bool = False) -> None:
        """The backend started the task's process (``warm``: forked by the fork server)."""
        assert self.loop is not None
        run.pid = pid
        self.counters["launched"] += 1
        if warm:
            self.counters["warm_launched"] += 1
        spec = run.spec
        if self.recorder is not None:
            # A lazy log may never exist: the journal learns its path with the outcome.
            log_path = None if self._lazy_logs else run.log_path
            self.recorder.started(spec, pid, proc_start, log_path, run.started_at)
        if run.reason is not None:  # terminated or cancelled while it was being spawned
            self._stop(run)
        elif spec.timeout is not None:
            run.timer = self.loop.call_later(spec.timeout, self._timed_out, run)
        if self._log_cap is not None and run.log_path is not None and self._sweep_handle is None:
            self._sweep_handle = self.loop.call_later(LOG_SWEEP_INTERVAL, self._sweep_logs)
        if self.report_running and run.future is None:
            self.results.append(
                TaskInfo(
                    key=spec.key,
                    state=TaskState.RUNNING,
                    pid=pid,
                    started_at=run.started_at,
                    log_path=run.log_path,
                    try_number=spec.try_number,
                )
            )

    def spawn_failed(self, run: _Run, exc: OSError, detail: str) -> None:
        """The backend could not start the task: retry later if out of resources, else fail it."""
        spec = run.spec
        if self._runs.get(spec.key) is run:
            del self._runs[spec.key]
        if exc.errno in RESOURCE_ERRNOS and run.reason is None:
            self._requeue_for_resources(spec, run.future, exc)
        else:
            self.counters["spawn_failures"] += 1
            reason = run.reason or FailureReason.SPAWN_FAILED
            self._finish_unstarted(spec, run.future, reason, detail, run.log_path)
        if self._pending:
            self._admit()

    def exited(
        self,
        run: _Run,
        returncode: int | None,
        signum: int | None,
        detail: str | None = None,
        log_written: bool = True,
    ) -> None:
        """The task's process has exited and been reaped (``log_written=False``: lazy logs, and
        the task wrote nothing, so it has no log file)."""
        for handle in (run.timer, run.kill_timer):
            if handle is not None:
                handle.cancel()
        if not log_written:  # lazy logs, and the task wrote nothing: it has no log file
            run.log_path = None
        elif run.log_path is None and self._lazy_logs:  # named only now that it wrote
            run.log_path = self.log_path_of(run)
        if run.log_path is not None and self._log_cap is not None:
            _logs.enforce_cap(run.log_path, self._log_cap)
        succeeded = returncode == 0 and run.reason is None
        if run.reason is FailureReason.TIMED_OUT:
            self.counters["timed_out"] += 1
        elif run.reason is FailureReason.TERMINATED:
            self.counters["terminated"] += 1
        detail = run.detail or detail
        if detail is None and not succeeded and run.log_path is not None and _logs.disk_full(run.log_path):
            detail = "the file system of its log is full: its output could not be written"
        if detail is None and returncode is None and signum is None:
            detail = "exit status lost (reaped elsewhere)"
        info = TaskInfo(
            key=run.spec.key,
            state=TaskState.SUCCESS if succeeded else TaskState.FAILED,
            returncode=returncode,
            signal=signum,
            pid=run.pid,
            started_at=run.started_at,
            ended_at=time.time(),
            log_path=run.log_path,
            reason=run.reason,
            detail=detail,
            try_number=run.spec.try_number,
        )
        if self._runs.get(run.spec.key) is run:
            del self._runs[run.spec.key]
        # A plain exit (no reason, no detail of ours) is all in the supervisor's exits record.
        on_disk = (run.backend or self.backend).records_exits and run.reason is None and detail is None
        self.deliver(info, run.future, on_disk=on_disk)
        if self._pending:
            self._admit()

    def log_path_of(self, run: _Run) -> str:
        """The log file of a task's try (lazy logs name it only when the task writes)."""
        assert self.log_dir is not None
        return _logs.log_path(self.log_dir, run.spec.key, run.spec.try_number)

    def _requeue_for_resources(
        self, spec: TaskSpec, future: asyncio.Future[TaskInfo] | None, exc: OSError
    ) -> None:
        """Out of descriptors/processes: put the task back and retry later, never fail it."""
        assert self.loop is not None
        self.counters["resource_waits"] += 1
        heapq.heappush(self._pending, (-spec.priority, next(self._seq), spec, future))
        self._pending_keys.add(spec.key)
        if self._retry_handle is None:
            logger.warning("out of resources launching %r (%s); admission waits", spec.key, exc.strerror)
            self._retry_handle = self.loop.call_later(RESOURCE_RETRY, self._retry_admission)

    def _retry_admission(self) -> None:
        self._retry_handle = None
        self._admit()

    # ------------------------------------------------------------------ timeout, stop, kill

    def _timed_out(self, run: _Run) -> None:
        run.timer = None
        if run.reason is None:
            run.reason = FailureReason.TIMED_OUT
            run.detail = f"timed out after {run.spec.timeout:g}s"
            logger.info(
                "task %r timed out after %ss; stopping its process group", run.spec.key, run.spec.timeout
            )
            self._stop(run)

    def _stop(self, run: _Run) -> None:
        """SIGTERM the task's whole process group; SIGKILL it after the grace period."""
        assert self.loop is not None
        if run.pid is None:
            return  # still spawning: spawned() stops it as soon as it has a pid
        (run.backend or self.backend).stop(run)
        if run.kill_timer is None:
            run.kill_timer = self.loop.call_later(self.kill_grace, self._force_kill, run)

    def _force_kill(self, run: _Run) -> None:
        run.kill_timer = None
        if self._runs.get(run.spec.key) is run:
            (run.backend or self.backend).kill(run)

    def _sweep_logs(self) -> None:
        self._sweep_handle = None
        cap = self._log_cap
        if cap is None or not self._runs or self.loop is None:
            return
        for run in self._runs.values():
            if run.log_path is not None:
                _logs.enforce_cap(run.log_path, cap)
        self._sweep_handle = self.loop.call_later(LOG_SWEEP_INTERVAL, self._sweep_logs)

    # ------------------------------------------------------------------ results

    def _finish_unstarted(
        self,
        spec: TaskSpec,
        future: asyncio.Future[TaskInfo] | None,
        reason: FailureReason,
        detail: str,
        path: str | None = None,
    ) -> None:
        if reason is FailureReason.TERMINATED:
            self.counters["terminated"] += 1
        info = TaskInfo(
            key=spec.key,
            state=TaskState.FAILED,
            reason=reason,
            detail=detail,
            ended_at=time.time(),
            log_path=path,
            try_number=spec.try_number,
        )
        self.deliver(info, future)

    def deliver(
        self,
        info: TaskInfo,
        future: asyncio.Future[TaskInfo] | None = None,
        *,
        record: bool = True,
        on_disk: bool = False,
    ) -> None:
        """Report a terminal outcome: through ``future`` if given, else the results deque.

        With a journal, an outcome a caller saw is always one the next executor knows. Most
        become visible only once their journal record is committed (commits stay grouped: one
        covers every outcome that waited for it). ``on_disk``: the outcome is on disk already,
        as a plain exit in the supervisor's exits file, which recovery reads; it is journaled
        with the next commit but reported now (waiting for the commit held each task's slot
        ~5 ms longer: 5-8% of the wall of short tasks). ``record=False`` is for an outcome
        the journal already holds (delivered again after a crash).
        """
        self.counters["succeeded" if info.state is TaskState.SUCCESS else "failed"] += 1
        if self.recorder is None or not record:
            self._publish(info, future)
            return
        self.recorder.finished(info)
        if on_disk:
            self._publish(info, future)
            return
        self._undurable.append((info, future))
        if self._durable_task is None and self.loop is not None:
            self._durable_task = self.loop.create_task(self._publish_when_durable())

    async def _publish_when_durable(self) -> None:
        assert self.recorder is not None
        try:
            while self._undurable:
                batch, self._undurable = self._undurable, []
                try:
                    await self.recorder.wait_durable()
                except Exception:  # a broken journal must not swallow outcomes
                    logger.exception(
                        "could not commit %d outcome(s) to the journal; reporting them anyway", len(batch)
                    )
                for info, future in batch:
                    self._publish(info, future)
        finally:
            self._durable_task = None
            self._check_idle()

    async def wait_published(self) -> None:
        """Wait until every outcome delivered so far has been reported (and, unless it was on
        disk already, committed)."""
        while self._durable_task is not None:
            await asyncio.shield(self._durable_task)

    def _publish(self, info: TaskInfo, future: asyncio.Future[TaskInfo] | None) -> None:
        if future is None:
            self.results.append(info)  # confirmed when the façade hands it out (get_event_buffer)
        elif not future.done():
            future.set_result(info)  # handed to its awaiting caller: confirmed now
            if self.recorder is not None:
                self.recorder.reported([info])
        self._check_idle()

    def _is_idle(self) -> bool:
        return not self._runs and not self._pending and not self._undurable and self._durable_task is None

    def _check_idle(self) -> None:
        if self._idle_waiters and self._is_idle():
            for waiter in self._idle_waiters:
                if not waiter.done():
                    waiter.set_result(None)
            self._idle_waiters.clear()

    # ------------------------------------------------------------------ draining, terminating

    async def wait_idle(self, timeout: float | None = None) -> bool:
        """Wait until nothing is pending, running or unreported; ``False`` on timeout."""
        if self._is_idle():
            return True
        assert self.loop is not None
        waiter: asyncio.Future[None] = self.loop.create_future()
        self._idle_waiters.append(waiter)
        try:
            await asyncio.wait_for(asyncio.shield(waiter), timeout)
        except asyncio.TimeoutError:
            return False
        return True

    def fail_pending(self, reason: FailureReason, detail: str) -> None:
        """Report every task still waiting for a slot as failed, in admission order, once each."""
        pending, self._pending = self._pending, []
        self._pending_keys.clear()
        for _, _, spec, future in sorted(pending):
            self._finish_unstarted(spec, future, reason, detail)

    def detach_all(self) -> list[Any]:
        """Forget every running task without stopping it (its supervisor keeps it); return keys."""
        keys = []
        for run in list(self._runs.values()):
            for handle in (run.timer, run.kill_timer):
                if handle is not None:
                    handle.cancel()
            keys.append(run.spec.key)
        self._runs.clear()
        return keys

    async def drain(self, timeout: float | None = None) -> None:
        """Stop taking work, let accepted tasks finish; terminate the rest after ``timeout``."""
        self.accepting = False
        if not await self.wait_idle(timeout):
            logger.warning(
                "end(): %d task(s) still running after %ss; terminating them",
                len(self._runs) + len(self._pending),
                timeout,
            )
            await self.terminate()

    async def terminate(self) -> None:
        """Fail every pending task and stop every running one; return when all are reported."""
        self.accepting = False
        self.fail_pending(FailureReason.TERMINATED, "terminated before it started")
        for run in list(self._runs.values()):
            if run.reason is None:
                run.reason = FailureReason.TERMINATED
                run.detail = "terminated by the executor"
            self._stop(run)
        if not await self.wait_idle(self.kill_grace + STUCK_MARGIN):
            self._abandon_stuck()

    def _abandon_stuck(self) -> None:
        """Report tasks whose process survived SIGKILL (e.g. stuck in the kernel); stop watching."""
        for run in list(self._runs.values()):
            logger.error(
                "pid %s of task %r did not exit after SIGKILL; giving up on it", run.pid, run.spec.key
            )
            (run.backend or self.backend).abandon(run)
            run.detail = f"{run.detail}; the process did not exit after SIGKILL"
            self.exited(run, None, signal.SIGKILL)
