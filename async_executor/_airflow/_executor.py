"""``AsyncLocalExecutor``: Airflow's ``BaseExecutor`` over one ``AsyncExecutor``.

Imports Airflow; reach it through ``async_executor.airflow``, which gives a clear error when
Airflow is not installed.

* Airflow 3 hands over *workloads* (``_process_workloads``). Each one runs as
  ``python -m airflow.sdk.execution_time.execute_workload --json-path FILE``; FILE is a 0600
  file (see ``_workload_files``) because the workload carries a JWT.
* Airflow 2.11 hands over ``airflow tasks run ...`` command lists (``execute_async``).
* Warm start is on by default (``[async_executor] warm_start``): these Python commands are
  forked by a fork server that has Airflow's task-running modules imported already, instead
  of paying ~1.5 s of imports per task. Tasks whose ``env`` changes ``AIRFLOW*`` or
  ``PYTHON*`` variables are exec'd cold, since those shape what was imported.
* With warm start on Airflow 3, ``[async_executor] exit_wake`` (on by default) makes the task
  supervisor notice its task process's exit at once instead of up to 5 s later (``_warmup``).
* ``sync()`` drains the engine's results without blocking and reports them with
  ``running_state`` (pid as the external executor id), ``success`` and ``fail``.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import re
import shutil
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from airflow.executors.base_executor import BaseExecutor
from airflow.utils.state import TaskInstanceState

from .._records import FailureReason, TaskInfo, TaskState
from ._workload_files import WorkloadFiles

if TYPE_CHECKING:
    from .._executor import AsyncExecutor
    from .._forkserver import WarmStart

_workloads: Any
try:  # Airflow 3.x
    _workloads = importlib.import_module("airflow.executors.workloads")
except ImportError:  # Airflow 2.x
    _workloads = None

AIRFLOW_V3 = _workloads is not None
_ExecuteTask: Any = getattr(_workloads, "ExecuteTask", None)
_ExecuteCallback: Any = getattr(_workloads, "ExecuteCallback", None)
_TestConnection: Any = getattr(_workloads, "TestConnection", None)
_base_executor: Any = importlib.import_module("airflow.executors.base_executor")
#: Team executors (``[core] multi_team``): config per team, and the team's Execution API URL.
MULTI_TEAM = all(hasattr(_base_executor, name) for name in ("ExecutorConf", "get_execution_api_server_url"))
#: Where a task's supervisor sends its Execution API calls. Read when the task runs (not at
#: import), so a team executor's tasks set it and still start warm.
API_URL_VARIABLE = "AIRFLOW__CORE__EXECUTION_API_SERVER_URL"

WORKLOAD_MODULE = "airflow.sdk.execution_time.execute_workload"
#: What the fork server imports for Airflow 3 workloads: everything a task needs before
#: its own DAG file (measured: ~1.3 s of CPU and ~120 MB cold).  The task runner parses the
#: DAG file through ``airflow.dag_processing.dagbag`` (serialisation, ORM models: profiled at
#: ~90 modules and most of a warm task's own CPU), so that is preloaded too, as it is in
#: LocalExecutor's workers, which are forked from the scheduler.
PRELOAD_V3 = (
    WORKLOAD_MODULE,
    "airflow.executors.workloads",
    "airflow.executors.base_executor",
    "airflow.sdk.log",
    "airflow.settings",
    "airflow.sdk.execution_time.supervisor",
    "airflow.sdk.execution_time.task_runner",
    "airflow.dag_processing.dagbag",
    "pydantic",
    "jinja2.ext",
    "encodings.idna",
)
#: Imported last by the fork server (Airflow 3): see its docstring.
WARMUP_MODULE = "async_executor._airflow._warmup"
#: Preloaded when installed: the operators most DAGs import, and what each task's supervisor
#: imports on its first secrets look-up (profiled: ~10 ms per warm task otherwise).
PRELOAD_OPTIONAL = (
    "airflow.providers.standard.operators.bash",
    "airflow.providers.standard.operators.python",
    "airflow.sdk.definitions.connection",
    # Airflow 3.3+: what a TestConnection workload (a connection test from the UI) runs
    "airflow.sdk.execution_time.connection_test_supervisor",
)
#: ... and for Airflow 2 ``python -m airflow tasks run``.
PRELOAD_V2 = (
    "airflow.__main__",
    "airflow.cli.cli_parser",
    "airflow.cli.commands.task_command",
    "airflow.jobs.local_task_job_runner",
    "airflow.task.task_runner.standard_task_runner",
)
SECTION = "async_executor"
#: ``queue_ahead`` when it is not limited (Airflow 3's default): more than any scheduler offers.
UNLIMITED_AHEAD = 1 << 31


def _priority_weight(workload: Any) -> int:
    """The task's ``priority_weight`` (1 when there is none: callbacks, or a bad value)."""
    weight = getattr(getattr(workload, "ti", None), "priority_weight", None)
    return weight if isinstance(weight, int) and not isinstance(weight, bool) else 1


def _installed(modules: Sequence[str]) -> tuple[str, ...]:
    """The ``modules`` that can be found (looked up, not imported; parent packages are)."""
    found = []
    for name in modules:
        try:
            if importlib.util.find_spec(name) is not None:
                found.append(name)
        except ImportError:  # a parent package is missing
            continue
    return tuple(found)


#: ``executor_config`` keys read from ``executor_config["async_executor"]`` (per task).
TASK_OPTIONS = ("timeout", "env", "cwd")
_TAIL_BYTES = 4096
#: BaseExecutor's dicts of work handed to the executor and not yet given to us.
_AIRFLOW_QUEUES = ("queued_tasks", "queued_callbacks", "queued_connection_tests")
_JWT = re.compile(r"eyJ[A-Za-z0-9_-]{4,}\.eyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]+")
_UNLIMITED = 4096  # Airflow 2's parallelism 0 ("unlimited"); the engine caps it by descriptors


@dataclass(frozen=True)
class Settings:
    """The ``[async_executor]`` section."""

    state_path: str
    log_dir: str
    workload_dir: str
    kill_grace: float
    drain_timeout: float
    log_max_bytes: int
    loop: str
    warm_start: bool = True
    warm_preload: tuple[str, ...] = ()
    warm_fork_scheduler: bool = True
    exit_wake: bool = True  # parsed here so a bad value fails start(); _warmup reads it
    queue_ahead: int | None = None  # None: as many as [core] parallelism

    @classmethod
    def from_conf(cls, conf: Any, team_name: str | None = None) -> Settings:
        """Read from ``conf``; a team executor's default directories are its team's own."""
        home = os.environ.get("AIRFLOW_HOME") or str(Path("~/airflow").expanduser())
        base = os.path.join(home, "async_executor")
        if team_name:
            base = os.path.join(base, "teams", team_name)

        def get(key: str, default: str) -> str:
            value = conf.get(SECTION, key, fallback=None)
            return str(value) if value not in (None, "") else default

        def number(key: str, default: str) -> float:
            raw = get(key, default)
            try:
                value = float(raw)
            except ValueError:
                raise ValueError(f"[{SECTION}] {key} must be a number of seconds, not {raw!r}") from None
            if value < 0:
                raise ValueError(f"[{SECTION}] {key} must not be negative, not {raw!r}")
            return value

        def flag(key: str, default: str) -> bool:
            raw = get(key, default).strip().lower()
            if raw in ("true", "1", "yes", "on"):
                return True
            if raw in ("false", "0", "no", "off"):
                return False
            raise ValueError(f"[{SECTION}] {key} must be true or false, not {raw!r}")

        return cls(
            warm_start=flag("warm_start", "true"),
            warm_preload=tuple(name.strip() for name in get("warm_preload", "").split(",") if name.strip()),
            # Off on 2.x: `airflow tasks run` uses the metadata database in the task process,
            # and forked from the process holding its connection, SQLite failed ("disk I/O
            # error" in `dags test --use-executor`). Airflow 3 tasks talk to the API server.
            warm_fork_scheduler=flag("warm_fork_scheduler", "true" if AIRFLOW_V3 else "false"),
            exit_wake=flag("exit_wake", "true"),
            queue_ahead=None if get("queue_ahead", "") == "" else int(number("queue_ahead", "0")),
            state_path=os.path.expanduser(get("state_path", os.path.join(base, "state.db"))),
            log_dir=os.path.expanduser(get("log_dir", os.path.join(base, "logs"))),
            workload_dir=os.path.expanduser(get("workload_dir", os.path.join(base, "workloads"))),
            kill_grace=number("kill_grace", "5.0") or 5.0,
            drain_timeout=number("drain_timeout", "10.0"),
            log_max_bytes=int(number("log_max_bytes", str(64 * 1024 * 1024))),
            # asyncio, not uvloop: next to a supervisor this loop only relays messages and
            # journal writes, where uvloop gains nothing measurable and costs the scheduler
            # ~2 MB (its library and a thread)
            loop=get("loop", "asyncio"),
        )


@dataclass(frozen=True)
class _Tracked:
    """What the adapter remembers about one task it handed to the engine."""

    key: Any  # Airflow's key (TaskInstanceKey, CallbackKey, ConnectionTestKey)
    success_state: Any
    failure_state: Any
    running_state: Any  # None: report TaskInstanceState.RUNNING with the pid (tasks)
    workload_file: str | None = None


class AsyncLocalExecutor(BaseExecutor):  # type: ignore[misc,unused-ignore]  # Any without Airflow
    """Run Airflow tasks as asyncio-managed local subprocesses.

    ``[core] executor = async_executor.airflow.AsyncLocalExecutor``; settings in ``[async_executor]``
    (``state_path``, ``log_dir``, ``workload_dir``, ``kill_grace``, ``drain_timeout``).
    ``__init__`` is cheap: the api-server and ``airflow dags test`` instantiate executors too.
    """

    is_local: bool = True
    is_single_threaded: bool = False
    is_production: bool = True
    serve_logs: bool = True
    supports_pickling: bool = False
    supports_sentry: bool = False
    change_sensor_mode_to_reschedule: bool = False
    supports_ad_hoc_ti_run: bool = False
    supports_callbacks: bool = _ExecuteCallback is not None
    supports_connection_test: bool = _TestConnection is not None
    supports_multi_team: bool = MULTI_TEAM

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._inner: AsyncExecutor | None = None
        self._log_reader: AsyncExecutor | None = None
        self._settings: Settings | None = None
        self._files: WorkloadFiles | None = None
        self._tracked: dict[Any, _Tracked] = {}  # engine key -> what we know
        self._quiet: set[Any] = set()  # revoked: their engine events are swallowed
        self._start_failures: list[tuple[Any, str]] = []  # Airflow 2: reported at the next sync()
        self._team_env: dict[str, str] = {}  # a team executor's: its tasks' Execution API URL

    # ------------------------------------------------------------------ slots

    @property
    def queue_ahead(self) -> int:
        """How many tasks beyond ``parallelism`` this executor takes to hold, not yet started.

        They wait in the engine's queue, highest ``priority_weight`` first, so a task starts
        the moment another one's process exits, instead of a scheduler loop (one to a few
        seconds under load) later.  At most ``parallelism`` processes run either way.
        ``[async_executor] queue_ahead``. By default, on Airflow 3, any number: what its
        LocalExecutor does (it never counts queued work in ``running``); on 2.x, as many
        as ``parallelism`` (2.x's LocalExecutor takes none ahead).
        """
        configured = self._settings.queue_ahead if self._settings is not None else None
        if configured is not None:
            return configured
        if AIRFLOW_V3:
            return UNLIMITED_AHEAD
        return self.parallelism if self.parallelism and self.parallelism > 0 else 0

    def _queued_here(self) -> int:
        return sum(len(getattr(self, name, None) or ()) for name in _AIRFLOW_QUEUES)

    @property
    def slots_occupied(self) -> int:
        """Tasks counted against ``[core] parallelism``: those held ahead are not."""
        return max(0, len(self.running) + self._queued_here() - self.queue_ahead)

    @property
    def slots_available(self) -> int:
        """New tasks this executor takes now (``parallelism`` plus ``queue_ahead``, minus held)."""
        return int(self.parallelism) - self.slots_occupied

    def trigger_tasks(self, open_slots: int) -> None:
        """Hand over queued tasks: as many as ``open_slots`` plus what we hold ahead."""
        super().trigger_tasks(open_slots + self.queue_ahead)

    # ------------------------------------------------------------------ settings / lifecycle

    @property
    def settings(self) -> Settings:
        if self._settings is None:
            self._settings = Settings.from_conf(self._conf(), getattr(self, "team_name", None))
        return self._settings

    def _for_team(self) -> str:
        """`` for team 'X'`` in a team executor's log lines, else nothing."""
        return f" for team {self.team_name!r}" if self._team_env else ""

    def _conf(self) -> Any:
        team_conf = getattr(self, "conf", None)  # Airflow 3: ExecutorConf (team aware)
        if team_conf is not None and hasattr(team_conf, "get"):
            return team_conf
        from airflow.configuration import conf

        return conf

    def start(self) -> None:
        """Start the engine (its event-loop thread) and the workload-file directory."""
        from .._executor import AsyncExecutor

        settings = self.settings
        os.makedirs(settings.log_dir, mode=0o700, exist_ok=True)
        os.makedirs(os.path.dirname(settings.state_path) or ".", mode=0o700, exist_ok=True)
        kwargs: dict[str, Any] = {
            "log_dir": settings.log_dir,
            "log_max_bytes": settings.log_max_bytes or None,
            "kill_grace": settings.kill_grace,
            "loop": settings.loop,
            "report_running": True,
            "state_path": settings.state_path,
            "warm_start": self._warm_start(settings),
        }
        parallelism = self.parallelism if self.parallelism and self.parallelism > 0 else _UNLIMITED
        inner = AsyncExecutor(parallelism, **kwargs)
        if AIRFLOW_V3:
            self._files = WorkloadFiles(settings.workload_dir)
            self._files.open()
        if MULTI_TEAM and getattr(self, "team_name", None):
            # as LocalExecutor's team workers do: the team's own URL, from the team's config
            self._team_env = {API_URL_VARIABLE: _base_executor.get_execution_api_server_url(self._conf())}
        inner.start()
        self._inner = inner
        self.log.info(
            "async_executor started%s: parallelism=%s warm start=%s log_dir=%s journal=%s "
            "workload files=%s (inotify %s)",
            self._for_team(),
            parallelism,
            "on" if settings.warm_start else "off",
            settings.log_dir,
            settings.state_path,
            settings.workload_dir if self._files else "-",
            "on" if self._files and self._files.watching else "off",
        )

    @staticmethod
    def _warm_start(settings: Settings) -> WarmStart | None:
        """The fork-server rule for Airflow's task commands (``None`` when switched off)."""
        if not settings.warm_start:
            return None
        from .._forkserver import WarmStart

        modules = (WORKLOAD_MODULE,) if AIRFLOW_V3 else ("airflow",)
        preload = (PRELOAD_V3 if AIRFLOW_V3 else PRELOAD_V2) + _installed(PRELOAD_OPTIONAL)
        if AIRFLOW_V3:
            preload += (WARMUP_MODULE,)
        preload += settings.warm_preload
        return WarmStart(
            modules=modules,
            preload=preload,
            match_env=("PYTHON", "AIRFLOW"),
            runtime_env=(API_URL_VARIABLE,),
            # forked from the scheduler at start(), as LocalExecutor's workers are: it shares
            # the Airflow the scheduler imported instead of importing its own (~100 MB)
            fork_from_caller=settings.warm_fork_scheduler,
        )

    # ------------------------------------------------------------------ Airflow 3: workloads

    def _process_workloads(self, workload_items: Sequence[Any]) -> None:
        inner = self._require_inner()
        files = self._files
        assert files is not None
        for workload in workload_items:
            key = workload.key
            queue = self._queue_holding(key)
            if queue is None:
                raise KeyError(f"workload {key!r} was not found in any queue")
            engine_key = _engine_key(key)
            if inner.has_task(engine_key):
                # Airflow re-queued a key whose previous process has not been reported yet
                # (e.g. a deferral race): keep it queued; the next heartbeat tries again.
                self.log.info("async_executor: %s is still running here; keeping it queued", key)
                continue
            queue.pop(key)
            path: str | None = None
            try:
                options = _task_options(getattr(getattr(workload, "ti", None), "executor_config", None))
                if self._team_env:  # a task's own env (executor_config) has the last word
                    own = options.get("env", {})
                    options["env"] = {**self._team_env, **own} if isinstance(own, Mapping) else own
                path = files.write(workload.model_dump_json())
                inner.execute_async(
                    engine_key,
                    [sys.executable, "-m", WORKLOAD_MODULE, "--json-path", path],
                    executor_config=options or None,
                    # held ahead, the highest priority_weight starts first (Airflow's order)
                    priority=_priority_weight(workload),
                )
            except Exception as exc:
                files.discard(path)
                self.log.error("async_executor: could not start %s: %s", key, exc)
                self.change_state(key, workload.failure_state, f"async_executor could not start it: {exc}")
                continue
            self._tracked[engine_key] = _Tracked(
                key=key,
                success_state=workload.success_state,
                failure_state=workload.failure_state,
                running_state=getattr(workload, "running_state", None),
                workload_file=path,
            )
            self.running.add(key)

    def _queue_holding(self, key: Any) -> dict[Any, Any] | None:
        for name in _AIRFLOW_QUEUES:
            queue = getattr(self, name, None)
            if queue is not None and key in queue:
                return queue  # type: ignore[no-any-return]
        return None

    # ------------------------------------------------------------------ Airflow 2: commands

    def execute_async(
        self,
        key: Any,
        command: Any,
        queue: str | None = None,
        executor_config: Any | None = None,
    ) -> None:
        """Airflow 2.x: run ``["airflow", "tasks", "run", ...]`` for ``key``.

        A task that cannot be started fails (its event comes with the next ``sync()``);
        the scheduler loop never sees an exception from here.
        """
        inner = self._require_inner()
        engine_key = _engine_key(key)
        self._tracked[engine_key] = _Tracked(
            key=key,
            success_state=TaskInstanceState.SUCCESS,
            failure_state=TaskInstanceState.FAILED,
            running_state=None,
        )
        try:
            if hasattr(self, "validate_airflow_tasks_run_command"):
                self.validate_airflow_tasks_run_command(command)
            argv = list(command)
            if argv and argv[0] == "airflow":
                # warm start forks `python -m airflow`; cold, the console script is the same
                argv[:1] = [sys.executable, "-m", "airflow"] if self.settings.warm_start else _airflow_cli()
            options = _task_options(executor_config)
            inner.execute_async(engine_key, argv, queue=queue, executor_config=options or None)
        except Exception as exc:
            del self._tracked[engine_key]
            self.log.error("async_executor: could not start %s: %s", key, exc)
            # BaseExecutor adds the key to `running` after we return: report at the next sync()
            self._start_failures.append((key, f"async_executor could not start it: {exc}"))
            return
        self.running.add(key)

    # ------------------------------------------------------------------ results

    def sync(self) -> None:
        """Report what finished (and what started) since the last call. Never blocks."""
        inner = self._inner
        if inner is None:
            return
        if self._files is not None:
            self._files.poll()
        while self._start_failures:
            key, detail = self._start_failures.pop(0)
            self.change_state(key, TaskInstanceState.FAILED, detail)
        inner.sync()
        events = inner.get_event_buffer()
        for engine_key, (state, info) in events.items():
            self._report(engine_key, state, info)

    def _report(self, engine_key: Any, state: TaskState, info: TaskInfo) -> None:
        if state is TaskState.RUNNING:
            tracked = self._tracked.get(engine_key)
            if tracked is None or engine_key in self._quiet:
                return
            if tracked.running_state is not None:  # callbacks / connection tests
                self.change_state(tracked.key, tracked.running_state, None, remove_running=False)
            else:
                self.running_state(tracked.key, str(info.pid) if info.pid is not None else None)
            return
        tracked = self._tracked.pop(engine_key, None)
        if tracked is None:
            # An outcome recovered from an earlier scheduler's executor (ended while none ran,
            # or delivered again after a crash) for a task this one does not track: its task
            # instance got its state from the task itself, or is reset by Airflow and re-queued.
            self.log.info(
                "async_executor: %s outcome of %r from an earlier executor%s: not reported to Airflow",
                state,
                engine_key,
                " (delivered again)" if info.redelivered else "",
            )
            return
        if self._files is not None:
            self._files.discard(tracked.workload_file)
        if engine_key in self._quiet:  # revoked: no event, per BaseExecutor.revoke_task
            self._quiet.discard(engine_key)
            self.running.discard(tracked.key)
            return
        if info.reason is FailureReason.NOT_STARTED:
            # The executor ended before this task started: no event, so it stays queued in
            # Airflow and the next scheduler queues it again (as with LocalExecutor's queue).
            self.log.info("async_executor: %s was not started before the end; left queued", tracked.key)
            self.running.discard(tracked.key)
            return
        if state is TaskState.SUCCESS:
            self.change_state(tracked.key, tracked.success_state, None)
        else:
            detail = _describe_failure(info)
            self.log.warning("task %s failed in the executor: %s", tracked.key, detail)
            self.change_state(tracked.key, tracked.failure_state, detail)

    # ------------------------------------------------------------------ stopping

    def end(self) -> None:
        """Stop taking work; wait up to ``drain_timeout`` for running tasks.

        Tasks still running then are left to their supervisor for the next scheduler to adopt
        (``terminate()`` stops them instead).
        """
        inner = self._inner
        if inner is None:
            return
        timeout = self.settings.drain_timeout
        self.log.info(
            "async_executor: ending; waiting up to %ss for %d running task(s)", timeout, len(self.running)
        )
        try:
            # Tasks still running after the drain stay with their supervisor: the next
            # scheduler adopts them (try_adopt_task_instances) instead of running them again.
            inner.end(timeout=timeout, detach=True)
        finally:
            self._finish()

    def terminate(self) -> None:
        """Stop every task now: SIGTERM each process group, SIGKILL after ``kill_grace``."""
        inner = self._inner
        if inner is None:
            return
        try:
            inner.terminate()
        finally:
            self._finish()

    def _finish(self) -> None:
        self.sync()
        if self._files is not None:
            self._files.close()
        inner = self._inner
        if inner is not None:
            stats = inner.statistics()
            self.log.info(
                "async_executor%s: ended; launched %d task(s) (%d warm): %d succeeded, %d failed "
                "(%d timed out, %d terminated)",
                self._for_team(),
                stats.launched,
                stats.warm_launched,
                stats.succeeded,
                stats.failed,
                stats.timed_out,
                stats.terminated,
            )

    # ------------------------------------------------------------------ revoke / stuck / adopt

    def revoke_task(self, *, ti: Any) -> None:
        """Stop ``ti`` (queued or running) and forget it, without an event (Airflow's contract).

        Airflow calls this only for a task "stuck in queued" past ``[scheduler]
        task_queued_timeout``, then queues it again (twice) or fails it. A task held ahead
        here, waiting for a slot, is not stuck: it starts when a slot frees. For it this raises
        ``NotImplementedError``, which makes the scheduler leave it queued, as it leaves
        LocalExecutor's queued work (LocalExecutor has no ``revoke_task``).
        """
        key = ti.key
        engine_key = _engine_key(key)
        inner = self._inner
        if inner is not None and inner.is_waiting(engine_key):
            raise NotImplementedError(
                f"{key} waits for a slot here, it is not stuck: it starts when one frees"
            )
        self.queued_tasks.pop(key, None)
        self._stop_quietly(key)

    def fail_connection_test(self, key: Any) -> None:
        """Airflow 3.3's reaper failed a connection test (past its timeout and grace).

        Airflow only forgets it (LocalExecutor's worker runs it on); here its process, if it
        still runs, is stopped as a revoked task's is, and reports nothing more.
        """
        super().fail_connection_test(key)
        self._stop_quietly(key)

    def _stop_quietly(self, key: Any) -> None:
        """Stop ``key``'s process if it is ours and forget it: no event, not ``running``."""
        engine_key = _engine_key(key)
        inner = self._inner
        if inner is not None and inner.has_task(engine_key):
            self._quiet.add(engine_key)
            try:
                inner.cancel_task(engine_key)
            except Exception:
                self.log.exception("could not stop %s", key)
        self.running.discard(key)
        self.event_buffer.pop(key, None)

    def cleanup_stuck_queued_tasks(self, tis: list[Any]) -> list[str]:
        """Airflow 2.x: drop tasks stuck in queued; return readable names of those dropped.

        Tasks waiting here for a slot are not stuck (see :meth:`revoke_task`): they stay.
        """
        readable = []
        for ti in tis:
            try:
                self.revoke_task(ti=ti)
            except NotImplementedError:
                continue
            readable.append(repr(ti))
        return readable

    def try_adopt_task_instances(self, tis: Sequence[Any]) -> Sequence[Any]:
        """Adopt tasks a previous scheduler's executor left running (needs the journal)."""
        if not tis:
            return tis
        inner = self._inner
        if inner is None:
            self.log.warning("async_executor: not started; %d task instance(s) will be reset", len(tis))
            return tis
        by_key = {_engine_key(ti.key): ti for ti in tis}
        not_adopted = set(inner.try_adopt_task_instances(list(by_key)))
        adopted = [key for key in by_key if key not in not_adopted]
        for engine_key in adopted:
            key = by_key[engine_key].key
            self._tracked[engine_key] = _Tracked(
                key, TaskInstanceState.SUCCESS, TaskInstanceState.FAILED, None
            )
            self.running.add(key)
        self.log.info("async_executor: adopted %d of %d task instance(s)", len(adopted), len(by_key))
        return [ti for key, ti in by_key.items() if key in not_adopted]

    # ------------------------------------------------------------------ logs

    def get_task_log(self, ti: Any, try_number: int) -> tuple[list[str], list[str]]:
        """What the task process wrote to stdout/stderr (our capture), for a running task."""
        key = ti.key.with_try_number(try_number) if hasattr(ti.key, "with_try_number") else ti.key
        reader = self._inner or self._reader()
        # The engine key already holds Airflow's try number; the engine numbers each (new) key's
        # runs from 1, so its capture for this key is run 1.
        messages, lines = reader.get_task_log(_engine_key(key), 1)
        if not lines:  # nothing captured (yet): let Airflow's own sources speak
            return [], []
        return messages, [_JWT.sub("<redacted-jwt>", text) for text in lines]

    def _reader(self) -> AsyncExecutor:
        if self._log_reader is None:
            from .._executor import AsyncExecutor

            self._log_reader = AsyncExecutor(1, log_dir=self.settings.log_dir)
        return self._log_reader

    # ------------------------------------------------------------------ internals

    def _require_inner(self) -> AsyncExecutor:
        if self._inner is None:
            raise RuntimeError("AsyncLocalExecutor.start() has not been called")
        return self._inner

    def __repr__(self) -> str:
        inner = self._inner
        state = repr(inner) if inner is not None else "not started"
        return f"AsyncLocalExecutor(parallelism={self.parallelism}, {state})"


def _engine_key(key: Any) -> Any:
    """The engine's key for an Airflow key: plain str/int tuples (journal- and file-name-safe).

    ``TaskInstanceKey`` (a NamedTuple) becomes ``(dag_id, task_id, run_id, try_number, map_index)``;
    callback and connection-test keys (dataclasses) become ``(type name, id)``.
    """
    if isinstance(key, tuple):
        return tuple(key)
    return (type(key).__name__, str(getattr(key, "id", key)))


def _task_options(executor_config: Any) -> dict[str, Any]:
    """Our per-task options live under ``executor_config["async_executor"]``; the rest is not ours."""
    if not isinstance(executor_config, Mapping):
        return {}
    ours = executor_config.get(SECTION)
    if not isinstance(ours, Mapping):
        return {}
    unknown = set(ours) - set(TASK_OPTIONS)
    if unknown:
        raise ValueError(
            f"unknown executor_config[{SECTION!r}] option(s) {sorted(unknown)}; "
            f"accepted: {list(TASK_OPTIONS)}"
        )
    return {k: ours[k] for k in TASK_OPTIONS if ours.get(k) is not None}


def _airflow_cli() -> list[str]:
    sibling = Path(sys.executable).with_name("airflow")
    if sibling.exists():
        return [str(sibling)]
    found = shutil.which("airflow")
    return [found] if found else [sys.executable, "-m", "airflow"]


def _describe_failure(info: TaskInfo) -> str:
    if info.reason is not None:
        text = f"{info.reason}: {info.detail or ''}".rstrip(": ")
    elif info.signal is not None:
        text = f"task process killed by signal {info.signal}"
    else:
        text = f"task process exited with status {info.returncode}"
    tail = _tail(info.log_path)
    if tail:
        text += f"; last output ({info.log_path}):\n{tail}"
    return text


def _tail(path: str | None) -> str:
    if not path:
        return ""
    try:
        with open(path, "rb") as handle:
            handle.seek(0, os.SEEK_END)
            size = handle.tell()
            handle.seek(max(0, size - _TAIL_BYTES))
            data = handle.read()
    except OSError:
        return ""
    text = data.decode("utf-8", "replace")
    if len(data) == _TAIL_BYTES and "\n" in text:
        text = text.split("\n", 1)[1]
    return _JWT.sub("<redacted-jwt>", text.strip())
