"""``AsyncExecutor``: Airflow's executor interface over the engine, for sync and async callers.

Two drivers, one engine. ``start()`` runs the engine on a private loop thread and the
Airflow-style methods hand work to it without blocking; ``async with AsyncExecutor()`` runs
the same engine in the caller's loop and adds ``submit()`` / ``run()``.

The Airflow-style methods are meant to be called from one thread (the scheduler's).
"""

from __future__ import annotations

import asyncio
import atexit
import heapq
import logging
import os
import threading
import time
import uuid
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable, Generator, Iterable, Mapping
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeVar

from . import _logs
from ._aio import shielded
from ._engine import Engine
from ._exceptions import DuplicateTaskError, ExecutorClosedError, ExecutorNotStartedError
from ._journal import Journal, JournalRow
from ._loopthread import LoopThread
from ._records import ExecutorStatistics, FailureReason, TaskInfo, TaskSpec, TaskState
from ._spawn import Backend, Launcher, LocalBackend, proc_start_ticks
from ._validation import build_spec, check_key, check_parallelism, check_timeout, check_try_number

if TYPE_CHECKING:
    # Imported where used: an executor without a journal (``state_path=None``, e.g. the CLI's)
    # never needs the supervisor, recovery or the fork server (measured: ~15% of the CLI's start).
    from ._durable import Adoptable
    from ._forkserver import WarmStart
    from ._memlogs import MemoryLogs
    from ._supervisor import AttachedSupervisor, Message

logger = logging.getLogger("async_executor")

T = TypeVar("T")
EventBuffer = dict[Any, tuple[TaskState, TaskInfo]]

_NEW, _STARTED, _CLOSED = "new", "started", "closed"
_TERMINAL = (TaskState.SUCCESS, TaskState.FAILED)


class _DefaultState:
    """The default ``state_path``: ``journal.sqlite`` in the state home (see ``_logs.default_home``)."""

    def __repr__(self) -> str:
        return "DEFAULT_STATE"


DEFAULT_STATE = _DefaultState()
_live: weakref.WeakSet[AsyncExecutor] = weakref.WeakSet()


class TaskHandle:
    """A task submitted through the async API.

    Awaitable: ``await handle`` is ``await handle.wait()``, so handles go straight into
    ``asyncio.gather``, ``asyncio.wait_for`` or ``asyncio.as_completed``. For many handles,
    :meth:`AsyncExecutor.as_completed` costs no task per handle.
    """

    __slots__ = ("_executor", "_future", "key")

    def __init__(self, key: Any, future: asyncio.Future[TaskInfo], executor: AsyncExecutor) -> None:
        self.key = key
        self._future = future
        self._executor = executor

    async def wait(self) -> TaskInfo:
        """Wait for the task's outcome (cancelling the wait does not cancel the task)."""
        return await asyncio.shield(self._future)

    def __await__(self) -> Generator[Any, None, TaskInfo]:
        return self.wait().__await__()

    def done(self) -> bool:
        return self._future.done()

    def add_done_callback(self, callback: Callable[[TaskInfo], object]) -> None:
        """Call ``callback(info)`` on the executor's loop once the task has its outcome.

        Cheaper than a coroutine per task awaiting :meth:`wait` when there are many tasks.
        Called soon (not immediately) if the outcome is already there.
        """
        self._future.add_done_callback(lambda future: callback(future.result()))

    @property
    def info(self) -> TaskInfo | None:
        """The outcome, or ``None`` while the task is pending or running."""
        return self._future.result() if self._future.done() else None

    @property
    def pid(self) -> int | None:
        return self._executor._engine.pid_of(self.key)

    def cancel(self) -> bool:
        """Stop the task: drop it if it has not started, else stop its process group."""
        return self._executor._engine.stop_task(self.key)

    async def output(self, poll_interval: float = 0.05) -> AsyncIterator[bytes]:
        """The task's captured output (stdout and stderr, as its log file holds them) as it is
        written, until the task has ended: ``async for chunk in handle.output(): ...``.

        It follows the log file, looking again every ``poll_interval`` seconds while nothing
        new is there; a task not started yet is waited for. With ``lazy_logs=True`` a running
        task's output reaches its file only every 0.5 s once it has run for a second, so it
        comes that much later. ``ValueError`` without capture (``capture=False``).
        """
        if self._executor.log_dir is None:
            raise ValueError("task output is not captured (capture=False): there is nothing to follow")
        if not poll_interval > 0:
            raise ValueError(f"poll_interval must be > 0 seconds, not {poll_interval!r}")
        engine = self._executor._engine
        offset = 0
        while True:
            done = self._future.done()
            path = self._future.result().log_path if done else engine.running_log_path(self.key)
            if path is not None:
                # A regular file, read a chunk at a time: no wait worth a thread.
                data, offset = _logs.read_new(path, offset)
                if data:
                    yield data
                    continue
            if done:
                return
            await asyncio.sleep(poll_interval)

    def _stop_as(self, reason: FailureReason, detail: str) -> bool:
        """:meth:`cancel`, with the outcome's ``reason`` and ``detail`` (e.g. the CLI's
        ``--timeout N%``, a deadline the engine does not know)."""
        return self._executor._engine.stop_task(self.key, reason, detail)

    def __repr__(self) -> str:
        state = self._future.result().state if self._future.done() else "pending"
        return f"<TaskHandle {self.key!r} {state}>"


class AsyncExecutor:
    """Run task commands as subprocesses, at most ``parallelism`` at once.

    :param parallelism: the most task processes running at any instant (a positive int).
    :param log_dir: where each task's stdout+stderr file goes; default
        ``$ASYNC_EXECUTOR_HOME/logs`` (``~/.local/state/async-executor/logs``).
    :param log_max_bytes: cap on one task's log (the head is kept); ``None`` for no cap.
    :param capture: ``False`` sends task output to ``/dev/null`` instead of log files.
    :param lazy_logs: create a task's log file only if it writes something (Linux). Output
        waits in an anonymous memory file (held by the supervisor process when there is a
        journal) and reaches the log file when the task ends, or every 0.5 s for a task that
        runs longer; creating a file per task costs more than spawning ``/bin/true`` on some
        file systems. A task that wrote nothing has ``log_path=None``. Elsewhere it is ignored
        (log files as usual).
    :param kill_grace: seconds between SIGTERM and SIGKILL when a task is stopped.
    :param callback_sink: where ``send_callback()`` sends requests (``.send(r)`` or callable).
    :param loop: the private loop for the sync façade: ``"auto"`` (uvloop if installed),
        ``"asyncio"`` or ``"uvloop"``. The async API always uses the caller's loop.
    :param report_running: also put a ``RUNNING`` event (with the pid) in the event buffer
        when a task starts; a later terminal event for the key replaces it.
    :param warm_start: a :class:`WarmStart` rule: Python commands it accepts are forked by a
        warm fork server (modules pre-imported) instead of exec'd; ``None``: all exec'd.
    """

    # Compatibility flags, with Airflow's meanings.
    supports_ad_hoc_ti_run: bool = False
    supports_pickling: bool = False
    supports_sentry: bool = False
    sentry_integration: str = ""
    is_local: bool = True
    is_single_threaded: bool = False
    is_production: bool = True
    change_sensor_mode_to_reschedule: bool = False
    serve_logs: bool = True
    supports_callbacks: bool = False
    supports_multi_team: bool = False

    def __init__(
        self,
        parallelism: int = 32,
        *,
        log_dir: str | os.PathLike[str] | None = None,
        log_max_bytes: int | None = 64 * 1024 * 1024,
        capture: bool = True,
        lazy_logs: bool = False,
        kill_grace: float = 5.0,
        callback_sink: Any = None,
        loop: str = "auto",
        report_running: bool = False,
        launcher: Launcher | None = None,
        warm_start: WarmStart | None = None,
        state_path: str | os.PathLike[str] | _DefaultState | None = DEFAULT_STATE,
        retention_seconds: float | None = 7 * 86400,
        retention_tasks: int | None = 100_000,
    ) -> None:
        self.parallelism = check_parallelism(parallelism)
        if loop not in ("auto", "asyncio", "uvloop"):
            raise ValueError(f'loop must be "auto", "asyncio" or "uvloop", not {loop!r}')
        if log_max_bytes is not None and (
            isinstance(log_max_bytes, bool) or not isinstance(log_max_bytes, int) or log_max_bytes <= 0
        ):
            raise ValueError(f"log_max_bytes must be a positive int or None, not {log_max_bytes!r}")
        grace = check_timeout(kill_grace)
        if grace is None:
            raise ValueError("kill_grace must be a positive number of seconds")
        if capture:
            default = _logs.default_home() / "logs"
            self.log_dir: str | None = os.fspath(log_dir) if log_dir is not None else str(default)
        else:
            self.log_dir = None
        self.kill_grace = grace
        self.callback_sink = callback_sink
        #: Tasks waiting for a slot (Airflow's attribute): read it, delete from it; tasks come in
        #: through ``queue_command`` (one written in directly still launches, later).
        self.queued_tasks: dict[Any, TaskSpec] = {}
        #: ``queued_tasks`` in launch order: ``(-priority, sequence, spec)``. A heap, so each
        #: heartbeat costs O(slots x log n), not a pass over every queued task (quadratic over a
        #: large backlog). Entries of tasks no longer queued (revoked, cleaned up) are skipped
        #: when they come up; see ``_pop_queued``.
        self._queue_heap: list[tuple[int, int, TaskSpec]] = []
        self._queue_seq = 0
        self.running: set[Any] = set()
        self.event_buffer: EventBuffer = {}
        #: Outcomes the last get_event_buffer() handed out, confirmed to the journal by the next
        #: call (or end()): the caller has handled them by then.
        self._handed: list[TaskInfo] = []
        self._loop_kind = loop
        self._tries: dict[Any, int] = {}
        self._state = _NEW
        self._thread: LoopThread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread_id: int | None = None
        self._loop_name = ""
        if isinstance(state_path, _DefaultState):
            state_path = _logs.default_home() / "journal.sqlite"
        self.state_path: str | None = os.fspath(state_path) if state_path is not None else None
        self.executor_id = uuid.uuid4().hex[:16]
        self._journal: Journal | None = None
        self._adoptable: dict[Any, Adoptable] = {}
        self._foreign_live: set[Any] = set()
        self._attached: list[AttachedSupervisor] = []
        #: Keys left running by ``end(detach=True)`` for a later executor to adopt.
        self.detached: list[Any] = []
        memory_logs: MemoryLogs | None = None
        if self.state_path is not None:
            self._journal = Journal(
                self.state_path, keep_seconds=retention_seconds, keep_tasks=retention_tasks
            )
            if launcher is not None:
                raise ValueError("a custom launcher runs in this process: pass state_path=None with it")
            from ._supervisor import LazyLogs, SupervisorBackend

            lazy_logs = lazy_logs and _lazy_logs_available(self.log_dir)
            backend: Backend = SupervisorBackend(
                os.path.dirname(os.path.abspath(self.state_path)),
                self.executor_id,
                warm_start,
                LazyLogs(log_max_bytes) if lazy_logs else None,
            )
        else:
            if lazy_logs and _lazy_logs_available(self.log_dir):
                from . import _memlogs

                memory_logs = _memlogs.MemoryLogs(log_max_bytes)
            lazy_logs = memory_logs is not None
            backend = LocalBackend(launcher, warm_start, memory_logs)
        self._engine = Engine(
            parallelism=self.parallelism,
            log_dir=self.log_dir,
            log_max_bytes=log_max_bytes,
            kill_grace=grace,
            report_running=report_running,
            backend=backend,
            lazy_logs=lazy_logs,
        )
        if memory_logs is not None:
            memory_logs.name_log = self._engine.log_path_of

    # ------------------------------------------------------------------ starting

    def start(self) -> None:
        """Start the engine on a private event-loop thread (for synchronous callers)."""
        if self._state != _NEW:
            raise RuntimeError(f"executor is {self._state}; start() can be called once")
        prefork = getattr(self._engine.backend, "prefork", None)
        if prefork is not None:  # warm start's fork_from_caller: fork while single-threaded
            prefork()
        thread = LoopThread(self._loop_kind)
        loop = thread.start()
        try:
            thread.run(self._start_on_loop)
        except BaseException:
            thread.stop()
            drop = getattr(self._engine.backend, "drop_prefork", None)
            if drop is not None:  # start failed before the backend took what prefork() started
                drop()
            raise
        self._thread, self._loop, self._loop_name = thread, loop, thread.loop_name
        self._loop_thread_id = thread.thread.ident
        self._state = _STARTED
        _live.add(self)
        self.sync()  # outcomes recovered from earlier executors are in the buffer right away
        logger.debug("started %r", self)

    async def __aenter__(self) -> AsyncExecutor:
        """Run the engine inside the caller's (asyncio) event loop."""
        if self._state != _NEW:
            raise RuntimeError(f"executor is {self._state}; it can be entered once")
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            raise RuntimeError("async with AsyncExecutor() needs a running asyncio event loop") from None
        await self._start_on_loop()
        self._loop, self._loop_thread_id = loop, threading.get_ident()
        self._loop_name = type(loop).__module__.split(".")[0]
        self._state = _STARTED
        self.sync()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        """On success wait for every task; on an exception (or cancellation) terminate them."""
        if exc_type is None:
            await self.aend()
        else:
            await self.aterminate()

    # ------------------------------------------------------------------ Airflow interface

    def queue_command(
        self, key: Any, command: Any, priority: int = 1, queue: str | None = None, **options: Any
    ) -> bool:
        """Queue a task for the next ``heartbeat()``; returns ``False`` (and logs) for a duplicate key.

        ``options``: ``timeout`` (seconds), ``env`` (merged over the executor's environment),
        ``cwd``, ``shell`` (run a string command through ``/bin/sh -c``).
        """
        self._require_open()
        check_key(key)
        if key in self.queued_tasks or key in self.running:
            logger.error("refusing to queue task %r: it is already queued or running", key)
            return False
        if key in self._adoptable or key in self._foreign_live:
            logger.error("refusing to queue task %r: an earlier executor's process still runs it", key)
            return False
        spec = build_spec(
            key, command, priority=priority, queue=queue, options=options, try_number=self._peek_try(key)
        )
        self.queued_tasks[key] = spec
        self._queue_seq += 1
        heapq.heappush(self._queue_heap, (-spec.priority, self._queue_seq, spec))
        self._tries[key] = spec.try_number
        return True

    def execute_async(
        self,
        key: Any,
        command: Any,
        queue: str | None = None,
        executor_config: Mapping[str, Any] | None = None,
        *,
        priority: int = 1,
    ) -> None:
        """Hand one task to the engine now (it starts as soon as a slot is free).

        Tasks handed over while every slot is taken wait in the engine, and ``priority``
        (higher first, then first come) orders them, as in ``queue_command``.
        """
        self._require_started()
        check_key(key)
        self._refuse_duplicate(key)
        if executor_config is not None and not isinstance(executor_config, Mapping):
            raise TypeError(f"executor_config must be a mapping, not {type(executor_config).__name__}")
        spec = build_spec(
            key,
            command,
            priority=priority,
            queue=queue,
            options=executor_config or {},
            try_number=self._peek_try(key),
        )
        self._tries[key] = spec.try_number
        self.running.add(key)
        self._handoff([spec])

    def heartbeat(self) -> None:
        """Launch the highest-priority queued tasks into the open slots, then ``sync()``."""
        self._require_started()
        self._launch_queued(self.parallelism - len(self.running))
        self.sync()

    def trigger_tasks(self, open_slots: int) -> None:
        """Launch up to ``open_slots`` queued tasks, highest priority first (Airflow's name)."""
        self._require_started()
        self._launch_queued(open_slots)

    def _launch_queued(self, count: int) -> None:
        chosen = self._pop_queued(count)
        if chosen:
            self.running.update(spec.key for spec in chosen)
            self._handoff(chosen)

    def _pop_queued(self, count: int) -> list[TaskSpec]:
        """Take up to ``count`` tasks out of ``queued_tasks``: highest priority first, then the
        first queued."""
        queued = self.queued_tasks
        if count <= 0 or not queued:
            return []
        heap = self._queue_heap
        if len(queued) > len(heap) or len(heap) > 2 * len(queued) + 64:
            # entries put into queued_tasks by hand (not by queue_command), or mostly stale ones
            self._rebuild_queue_heap()
        chosen: list[TaskSpec] = []
        while len(chosen) < count and queued:
            if not heap:  # what is left was put into queued_tasks by hand
                self._rebuild_queue_heap()
            spec = heapq.heappop(heap)[2]
            if queued.get(spec.key) is spec:  # else: revoked, cleaned up or queued again since
                del queued[spec.key]
                chosen.append(spec)
        return chosen

    def _rebuild_queue_heap(self) -> None:
        """The heap from ``queued_tasks`` alone (whose order is the order of queueing)."""
        heap = self._queue_heap
        heap[:] = [(-spec.priority, seq, spec) for seq, spec in enumerate(self.queued_tasks.values())]
        heapq.heapify(heap)
        self._queue_seq = len(heap)

    def sync(self) -> None:
        """Move finished results into the event buffer. Never blocks."""
        results = self._engine.results
        if not results:
            if self._thread is not None:
                # Nothing new: yield the GIL so the engine thread can run. Without this a
                # caller spinning on heartbeat() starves the engine (measured: 300 vs 2,000
                # launches/s). sleep(0) does not wait for anything.
                time.sleep(0)
            return
        buffer = self.event_buffer
        running = self.running
        while results:
            info = results.popleft()
            if info.state is TaskState.RUNNING:
                buffer.setdefault(info.key, (info.state, info))
                continue
            running.discard(info.key)
            buffer[info.key] = (info.state, info)

    def get_event_buffer(self, keys_or_dag_ids: Iterable[Any] | None = None) -> EventBuffer:
        """Return and flush ``{key: (state, info)}``; optionally only for these keys / dag_ids.

        With a journal, delivery is at-least-once: the outcomes one call hands out count as
        handled when the caller comes back for more (the next call), or at ``end()`` /
        ``terminate()``. If the process dies before that, the next executor on the same
        journal delivers them again, marked ``info.redelivered``.
        """
        if self._handed:  # the caller is back: it has handled what the last call handed out
            recorder = self._engine.recorder
            if recorder is not None and self._state == _STARTED:
                recorder.reported(self._handed)
            self._handed = []
        if keys_or_dag_ids is None:
            buffer, self.event_buffer = self.event_buffer, {}
        else:
            wanted = set(keys_or_dag_ids)
            buffer = {}
            for key in list(self.event_buffer):
                if key in wanted or getattr(key, "dag_id", None) in wanted:
                    buffer[key] = self.event_buffer.pop(key)
        if buffer and self._journal is not None:
            self._handed = [info for state, info in buffer.values() if state in _TERMINAL]
        return buffer

    def _confirm_all(self) -> None:
        """At a clean end: everything handed out, buffered or about to be is confirmed (the
        caller's process is alive and owns the buffer)."""
        recorder = self._engine.recorder
        infos, self._handed = self._handed, []
        infos += [info for state, info in self.event_buffer.values() if state in _TERMINAL]
        infos += [info for info in self._engine.results if info.state in _TERMINAL]
        if recorder is not None and infos:
            recorder.reported(infos)

    def has_task(self, key: Any) -> bool:
        """Is the task queued or running here?"""
        return key in self.queued_tasks or key in self.running

    def is_waiting(self, key: Any) -> bool:
        """Is the task queued here, or handed to the engine and waiting for a slot (not started)?

        Asked on the engine's loop, so a hand-off still in flight from this thread is seen.
        """
        if key in self.queued_tasks:
            return True
        if key not in self.running or self._state != _STARTED:
            return False
        return self._call(self._engine.is_waiting, key)

    def send_callback(self, request: Any) -> None:
        """Hand ``request`` to the configured callback sink."""
        sink = self.callback_sink
        if sink is None:
            raise ValueError("no callback sink is configured: pass callback_sink= to AsyncExecutor")
        send = getattr(sink, "send", None)
        (send if send is not None else sink)(request)

    def end(self, timeout: float | None = None, *, detach: bool = False) -> None:
        """Stop taking work, run what was accepted; after ``timeout`` seconds terminate the rest.

        With ``detach=True`` (needs a journal), tasks still running after ``timeout`` are left
        running under their supervisor instead, for the next executor to adopt; their keys
        are in ``detached`` and they get no event from this executor.
        """
        if self._state == _NEW:
            self._state = _CLOSED
        if self._state == _CLOSED:
            return
        self._require_other_thread("aend")
        timeout = check_timeout(timeout)
        if detach and self._journal is None:
            raise ValueError("end(detach=True) needs a journal (state_path) so that tasks can be adopted")
        specs = self._take_queued()
        assert self._thread is not None
        self._thread.run(self._end_on_loop, specs, timeout, detach)
        self._close_thread()

    def terminate(self) -> None:
        """Stop every task now: SIGTERM each process group, SIGKILL after ``kill_grace``."""
        if self._state == _NEW:
            self._state = _CLOSED
        if self._state == _CLOSED:
            return
        self._require_other_thread("aterminate")
        specs = self._take_queued()
        assert self._thread is not None
        self._thread.run(self._terminate_on_loop, specs)
        self._close_thread()

    def revoke_task(self, key: Any) -> bool:
        """Drop a task that has not started; it gets one ``failed`` event (reason ``revoked``)."""
        spec = self.queued_tasks.pop(key, None)
        if spec is not None:
            info = TaskInfo(
                key=key,
                state=TaskState.FAILED,
                reason=FailureReason.REVOKED,
                detail="revoked before it started",
                try_number=spec.try_number,
            )
            self.event_buffer[key] = (info.state, info)
            return True
        if key not in self.running or self._state != _STARTED:
            return False
        revoked = self._call(self._engine.revoke, key)
        self.sync()
        return revoked

    def cleanup_stuck_queued_tasks(self, keys: Iterable[Any]) -> list[Any]:
        """Drop each of ``keys`` that has not started; return the ones dropped."""
        return [key for key in keys if self.revoke_task(key)]

    def try_adopt_task_instances(self, keys: Iterable[Any]) -> list[Any]:
        """Adopt tasks an earlier executor left running; return the keys that could not be.

        Adoptable tasks were found at ``start()`` in the journal and verified: pid *and*
        process start time, still owned by that executor's supervisor. Adopted tasks are
        watched, keep their remaining timeout, stop with ``terminate()`` and report once.
        """
        keys = list(keys)
        if self._journal is None or self._state != _STARTED:
            if keys:
                logger.info(
                    "adoption needs a started executor with a journal; %d task(s) not adopted", len(keys)
                )
            return keys
        adopted = set(self._adopt(keys))
        rest = [key for key in keys if key not in adopted]
        for key in rest:
            why = "running under another live executor" if key in self._foreign_live else "no running process"
            logger.info("cannot adopt %r: %s", key, why)
        return rest

    def adopt_all(self) -> list[Any]:
        """Adopt every task earlier executors left running; return their keys."""
        if self._journal is None or self._state != _STARTED:
            return []
        return self._adopt(None)

    def flush(self) -> None:
        """Wait until every transition so far is committed to the journal (no-op without one).

        ``sync()`` and ``heartbeat()`` never wait for the disk; call this when you need to
        know that what was handed over will survive a crash of this process.
        """
        if self._journal is None or self._state != _STARTED:
            return
        self._require_other_thread("journal_flush")
        assert self._thread is not None
        self._thread.run(self._journal.flush)

    async def journal_flush(self) -> None:
        """Async ``flush()``."""
        if self._journal is not None and self._state == _STARTED:
            await self._journal.flush()

    def cancel_task(self, key: Any) -> bool:
        """Stop one task: drop it if not started (``revoked``), else stop its process group."""
        if self.revoke_task(key):
            return True
        if key not in self.running or self._state != _STARTED:
            return False
        return self._call(self._engine.stop_task, key)

    def get_task_log(self, key: Any, try_number: int | None = None) -> tuple[list[str], list[str]]:
        """``(messages, log_lines)`` from the task's captured stdout/stderr."""
        if self.log_dir is None:
            return ["Task output is not captured (capture=False)"], []
        number = try_number if try_number is not None else self._tries.get(key, 1)
        return _logs.read_log(_logs.log_path(self.log_dir, key, number))

    def get_cli_commands(self) -> list[Any]:
        """CLI commands for Airflow to vend; the core offers none (see ``async-executor``)."""
        return []

    # ------------------------------------------------------------------ gauges

    @property
    def slots_available(self) -> int:
        return self.parallelism - len(self.running) - len(self.queued_tasks)

    @property
    def slots_occupied(self) -> int:
        return len(self.running) + len(self.queued_tasks)

    def statistics(self) -> ExecutorStatistics:
        engine = self._engine
        return ExecutorStatistics(
            parallelism=self.parallelism,
            effective_parallelism=engine.capacity,
            running=engine.running_count,
            queued=len(self.queued_tasks),
            pending=engine.pending_count,
            slots_available=self.slots_available,
            loop=self._loop_name or self._loop_kind,
            **engine.counters,
        )

    def __repr__(self) -> str:
        return (
            f"<AsyncExecutor {self._state} running {len(self.running)}/{self.parallelism} "
            f"queued {len(self.queued_tasks)} loop={self._loop_name or self._loop_kind}>"
        )

    # ------------------------------------------------------------------ async API

    async def submit(
        self, key: Any, command: Any, *, priority: int = 1, try_number: int | None = None, **options: Any
    ) -> TaskHandle:
        """Accept a task and return its handle; it starts as soon as a slot is free.

        ``try_number``: which try of ``key`` this is (default: one more than this executor's
        last try of it), e.g. to continue a count kept elsewhere; later default numbers
        follow the highest seen.
        """
        self._require_in_loop()
        check_key(key)
        self._refuse_duplicate(key)
        number = self._peek_try(key) if try_number is None else check_try_number(try_number)
        spec = build_spec(key, command, priority=priority, options=options, try_number=number)
        self._tries[key] = max(self._tries.get(key, 0), number)
        assert self._loop is not None
        future: asyncio.Future[TaskInfo] = self._loop.create_future()
        self._engine.submit(spec, future)
        return TaskHandle(key, future, self)

    async def run(
        self, key: Any, command: Any, *, priority: int = 1, try_number: int | None = None, **options: Any
    ) -> TaskInfo:
        """Submit a task and wait for its outcome.

        Cancelled while it waits, it stops the task (as ``TaskHandle.cancel()``) and re-raises:
        no one else holds the task's handle, so it would run on unobserved, holding its key.
        """
        handle = await self.submit(key, command, priority=priority, try_number=try_number, **options)
        try:
            return await handle.wait()
        except asyncio.CancelledError:
            handle.cancel()
            raise

    def as_completed(
        self, handles: Iterable[TaskHandle], *, timeout: float | None = None
    ) -> AsyncIterator[TaskInfo]:
        """Yield each handle's outcome as its task ends (ended ones first, in the given order).

        ``async for info in ex.as_completed(handles)``: one callback per handle and no task or
        coroutine per handle, so it suits thousands. A handle given twice is yielded once.
        ``timeout``: seconds for the whole iteration, counted from this call; when they pass
        with outcomes still missing, ``TimeoutError`` is raised (the tasks go on). Leaving the
        loop early leaves the tasks running too. Bad arguments raise here, not when iterating.
        """
        self._require_in_loop()
        limit = check_timeout(timeout)
        futures: dict[asyncio.Future[TaskInfo], None] = {}  # insertion-ordered, each once
        for handle in handles:
            if not isinstance(handle, TaskHandle):
                raise TypeError(f"as_completed() takes TaskHandle objects, not {type(handle).__name__}")
            if handle._executor is not self:
                raise ValueError(f"{handle!r} belongs to another executor")
            futures[handle._future] = None
        loop = asyncio.get_running_loop()
        deadline = None if limit is None else loop.time() + limit
        return _outcomes(list(futures), loop, deadline, timeout)

    async def aend(self, timeout: float | None = None) -> None:
        """Async ``end()``: run what was accepted, terminate what is left after ``timeout``."""
        if self._state != _STARTED:
            self._state = _CLOSED
            return
        self._require_in_loop()
        await shielded(self._then_close(self._end_on_loop(self._take_queued(), check_timeout(timeout))))

    async def aterminate(self) -> None:
        """Async ``terminate()``."""
        if self._state != _STARTED:
            self._state = _CLOSED
            return
        self._require_in_loop()
        await shielded(self._then_close(self._terminate_on_loop(self._take_queued())))

    async def _then_close(self, work: Awaitable[None]) -> None:
        """Finish ``work`` (ending or terminating), then close (run shielded from cancellation)."""
        await work
        self._state = _CLOSED
        self.sync()

    # ------------------------------------------------------------------ internals

    def _peek_try(self, key: Any) -> int:
        explicit = getattr(key, "try_number", None) if isinstance(key, tuple) else None
        if isinstance(explicit, int) and not isinstance(explicit, bool):
            return explicit
        return self._tries.get(key, 0) + 1

    def _take_queued(self) -> list[TaskSpec]:
        specs = list(self.queued_tasks.values())
        self.queued_tasks.clear()
        self._queue_heap.clear()
        self.running.update(spec.key for spec in specs)
        return specs

    async def _start_on_loop(self) -> None:
        """Open the journal, recover what dead executors left, start the engine."""
        journal = self._journal
        recovery = None
        if journal is not None:
            from ._durable import JournalRecorder, recover
            from ._supervisor import socket_name

            await journal.open()
            try:
                await journal.register_executor(
                    self.executor_id,
                    pid=os.getpid(),
                    proc_start=proc_start_ticks(os.getpid()),
                    supervisor_socket=socket_name(self.executor_id)[1:],
                )
                recovery = await recover(journal, self.executor_id, self._state_dir(), self._late_exit)
            except BaseException:
                await journal.close()
                raise
        try:
            await self._engine.start()
        except BaseException:
            if journal is not None:
                await journal.close()
            raise
        if journal is not None and recovery is not None:
            self._engine.recorder = JournalRecorder(journal, self.executor_id)
            self._adoptable, self._foreign_live = recovery.adoptable, recovery.foreign_live
            self._attached = recovery.supervisors
            loop = asyncio.get_running_loop()
            for supervisor in self._attached:
                supervisor.open(loop, self._engine)
            for info in recovery.repeats:  # already final in the journal: deliver, do not record
                self._engine.deliver(info, record=False)
            for info in recovery.events:
                self._report_recovered(info)
            await self._engine.wait_idle()  # recovered outcomes committed and in the results
            if recovery.events or recovery.repeats or recovery.adoptable:
                logger.info(
                    "recovered %d outcome(s) and %d adoptable task(s) from earlier executors",
                    len(recovery.events) + len(recovery.repeats),
                    len(recovery.adoptable),
                )

    def _report_recovered(self, info: TaskInfo) -> None:
        """An outcome of an earlier executor's task: journaled, then reported (exactly once)."""
        self._engine.deliver(info)

    def _late_exit(self, row: JournalRow, message: Message) -> None:
        """A task of an earlier executor ended before anyone adopted it."""
        if self._adoptable.pop(row.key, None) is not None:
            from ._durable import info_from_exit

            self._report_recovered(info_from_exit(row, message, "ended before it was adopted"))

    async def _adopt_on_loop(self, keys: list[Any] | None) -> list[Any]:
        """Adopt ``keys`` (``None``: all); outcomes of tasks that ended first are reported."""
        from ._durable import adopt

        adopted = []
        for key in list(self._adoptable) if keys is None else keys:
            adoptable = self._adoptable.pop(key, None)
            if adoptable is None:
                continue
            adopt(self._engine, adoptable)
            adopted.append(key)
        await self._engine.wait_published()
        return adopted

    def _adopt(self, keys: list[Any] | None) -> list[Any]:
        if threading.get_ident() == self._loop_thread_id or self._thread is None:
            raise RuntimeError("inside the event loop, use await executor.aadopt()")
        adopted = self._thread.run(self._adopt_on_loop, keys)
        self.running.update(adopted)
        self.sync()
        return adopted

    async def aadopt(self, keys: Iterable[Any] | None = None) -> list[Any]:
        """Async adoption (``keys=None`` adopts all); returns the adopted keys."""
        self._require_in_loop_started()
        adopted = await self._adopt_on_loop(None if keys is None else list(keys))
        self.running.update(adopted)
        self.sync()
        return adopted

    async def _close_durable(self, *, keep_exits: bool) -> None:
        for supervisor in self._attached:
            supervisor.close()
        if self._journal is not None:
            from ._supervisor import SupervisorBackend, socket_name

            self._confirm_all()
            # Ended: a later executor in this same process must treat our rows as recoverable.
            await self._journal.register_executor(
                self.executor_id, pid=0, proc_start=None, supervisor_socket=socket_name(self.executor_id)[1:]
            )
            await self._journal.close()
            backend = self._engine.backend
            if not keep_exits and isinstance(backend, SupervisorBackend):
                try:
                    os.unlink(backend.exits_path)  # every status in it is in the journal now
                except FileNotFoundError:
                    pass

    def _state_dir(self) -> str:
        assert self.state_path is not None
        return os.path.dirname(os.path.abspath(self.state_path))

    async def _end_on_loop(self, specs: list[TaskSpec], timeout: float | None, detach: bool = False) -> None:
        if specs:
            self._engine.submit_many(specs)
        if detach:
            self._engine.accepting = False
            if not await self._engine.wait_idle(timeout):
                self.detached = self._engine.detach_all()
                self._engine.fail_pending(
                    FailureReason.NOT_STARTED, "the executor ended before the task started"
                )
                logger.info(
                    "end(): left %d task(s) running for the next executor to adopt", len(self.detached)
                )
        else:
            await self._engine.drain(timeout)
        self._engine.detach()
        await self._close_durable(keep_exits=bool(self.detached))

    async def _terminate_on_loop(self, specs: list[TaskSpec]) -> None:
        self._engine.accepting = False
        self._engine.reject(specs, FailureReason.TERMINATED, "terminated before it started")
        await self._engine.terminate()
        self._engine.detach()
        await self._close_durable(keep_exits=False)

    def _close_thread(self) -> None:
        self._state = _CLOSED
        _live.discard(self)
        if self._thread is not None:
            self._thread.stop()
        self.sync()

    def _handoff(self, specs: list[TaskSpec]) -> None:
        assert self._loop is not None
        if threading.get_ident() == self._loop_thread_id:
            self._engine.submit_many(specs)
        else:
            self._loop.call_soon_threadsafe(self._engine.submit_many, specs)

    def _call(self, func: Callable[..., T], *args: Any) -> T:
        if threading.get_ident() == self._loop_thread_id or self._thread is None:
            return func(*args)
        return self._thread.call(func, *args)

    def _refuse_duplicate(self, key: Any) -> None:
        if key in self.queued_tasks or key in self.running or self._engine.has_key(key):
            raise DuplicateTaskError(f"task {key!r} is already queued or running")
        if key in self._adoptable or key in self._foreign_live:
            raise DuplicateTaskError(f"task {key!r} still runs under an earlier executor's supervisor")

    def _require_open(self) -> None:
        if self._state == _CLOSED:
            raise ExecutorClosedError("the executor has ended or been terminated; it takes no more tasks")

    def _require_started(self) -> None:
        if self._state != _STARTED:
            if self._state == _CLOSED:
                self._require_open()
            raise ExecutorNotStartedError("call start() (or use async with) before running tasks")

    def _require_in_loop_started(self) -> None:
        self._require_started()
        if threading.get_ident() != self._loop_thread_id:
            raise RuntimeError("aadopt() must run in the executor's event loop")

    def _require_in_loop(self) -> None:
        self._require_started()
        if self._thread is not None:
            raise RuntimeError(
                "submit()/run() are for async with AsyncExecutor(); use queue_command() "
                "and heartbeat() with start()"
            )

    def _require_other_thread(self, async_name: str) -> None:
        if threading.get_ident() == self._loop_thread_id:
            raise RuntimeError(f"inside the event loop, use await executor.{async_name}()")


async def _outcomes(
    futures: list[asyncio.Future[TaskInfo]],
    loop: asyncio.AbstractEventLoop,
    deadline: float | None,
    timeout: float | None,
) -> AsyncIterator[TaskInfo]:
    """:meth:`AsyncExecutor.as_completed`'s iteration: outcomes in the order they arrive."""
    ended: asyncio.Queue[TaskInfo] = asyncio.Queue()

    def on_done(future: asyncio.Future[TaskInfo]) -> None:
        ended.put_nowait(future.result())

    waiting = []
    for future in futures:
        if future.done():
            ended.put_nowait(future.result())
        else:
            future.add_done_callback(on_done)
            waiting.append(future)
    try:
        for _ in range(len(futures)):
            if deadline is None or not ended.empty():
                yield await ended.get()
                continue
            try:
                info = await asyncio.wait_for(ended.get(), max(deadline - loop.time(), 0.0))
            except asyncio.TimeoutError:
                missing = sum(1 for future in waiting if not future.done())
                raise TimeoutError(
                    f"as_completed(): {missing} task(s) still running after {timeout} s"
                ) from None
            yield info
    finally:
        for future in waiting:
            future.remove_done_callback(on_done)


def _lazy_logs_available(log_dir: str | None) -> bool:
    """Whether lazy logs apply: output is captured, and the platform has memory files."""
    if log_dir is None:
        return False
    from . import _memlogs

    if not _memlogs.AVAILABLE:  # pragma: no cover - Linux has memfd_create
        logger.debug("lazy_logs: no memfd_create here; every task gets a log file")
    return _memlogs.AVAILABLE


@atexit.register
def _terminate_forgotten() -> None:
    """At interpreter exit, stop tasks of executors that were started and never ended."""
    for executor in list(_live):
        logger.warning("%r was not ended; terminating its tasks at exit", executor)
        try:
            executor.terminate()
        except Exception:  # pragma: no cover - best effort at exit
            logger.exception("terminating %r at exit failed", executor)
