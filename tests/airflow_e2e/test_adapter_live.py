"""AsyncLocalExecutor driven directly, with real Airflow installed (no scheduler, no mocks).

Run inside an Airflow venv: ``python -m pytest tests/airflow_e2e/test_adapter_live.py``.
Skipped where Airflow is not installed. Plain commands (``sleep``, ``sh -c``) stand in for task
processes so that stopping, revoking and draining can be observed precisely; the real task
path (workloads through ``execute_workload``) is covered by ``run_e2e.py``.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

airflow = pytest.importorskip("airflow")
if not airflow.__version__.startswith("3."):
    # Airflow 2's execute_async accepts only `airflow tasks run` commands; see check_airflow2.py
    pytest.skip("these tests drive plain commands through Airflow 3's executor", allow_module_level=True)

from airflow.models.taskinstancekey import TaskInstanceKey  # noqa: E402

from async_executor._airflow._executor import _engine_key  # noqa: E402
from async_executor.airflow import AsyncLocalExecutor  # noqa: E402


@contextlib.contextmanager
def _started(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[AsyncLocalExecutor]:
    """An executor (parallelism 4) with its files under ``tmp_path``, started in the environment
    as it is now; terminated at the end."""
    monkeypatch.setenv("AIRFLOW__ASYNC_EXECUTOR__LOG_DIR", str(tmp_path / "logs"))
    monkeypatch.setenv("AIRFLOW__ASYNC_EXECUTOR__WORKLOAD_DIR", str(tmp_path / "workloads"))
    monkeypatch.setenv("AIRFLOW__ASYNC_EXECUTOR__STATE_PATH", str(tmp_path / "state.db"))
    monkeypatch.setenv("AIRFLOW__ASYNC_EXECUTOR__KILL_GRACE", "1")
    monkeypatch.setenv("AIRFLOW__ASYNC_EXECUTOR__DRAIN_TIMEOUT", "1")
    ex = AsyncLocalExecutor(parallelism=4)
    ex.start()
    try:
        yield ex
    finally:
        ex.terminate()


@pytest.fixture
def executor(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[AsyncLocalExecutor]:
    with _started(tmp_path, monkeypatch) as ex:
        yield ex


def key(task: str, try_number: int = 1) -> TaskInstanceKey:
    return TaskInstanceKey("dag", task, "run", try_number, -1)


def wait_events(ex: AsyncLocalExecutor, keys: set[Any], timeout: float = 20) -> dict[Any, Any]:
    got: dict[Any, Any] = {}
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ex.sync()
        for k, v in ex.get_event_buffer().items():
            got.setdefault(k, []).append(v)
        if all(k in got and str(got[k][-1][0]) in ("success", "failed") for k in keys):
            return got
        time.sleep(0.05)
    raise AssertionError(f"no terminal events for {keys - set(got)} in {timeout}s; got {got}")


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[-1].split()[0] != "Z"


def test_init_is_cheap() -> None:
    ex = AsyncLocalExecutor(parallelism=2)
    assert ex._inner is None
    assert "not started" in repr(ex)
    ex.end()  # ending an executor that never started is a no-op
    ex.terminate()


def test_success_failure_and_running_state_with_pid(executor: AsyncLocalExecutor) -> None:
    ok, bad = key("ok"), key("bad")
    executor.execute_async(ok, ["sh", "-c", "echo hello; sleep 0.3"])
    executor.execute_async(bad, ["sh", "-c", "echo boom >&2; exit 3"])
    assert executor.running == {ok, bad}
    assert executor.slots_occupied == 0  # within the 4 held ahead
    got = wait_events(executor, {ok, bad})
    assert str(got[ok][-1][0]) == "success"
    assert str(got[bad][-1][0]) == "failed"
    assert "exited with status 3" in got[bad][-1][1]
    assert "boom" in got[bad][-1][1]  # the tail of the captured output explains the failure
    running = [v for v in got[ok] if str(v[0]) == "running"]
    if running:  # reported when the start was seen before the end
        assert running[0][1].isdigit()  # the pid, as external_executor_id
    assert executor.running == set()


def test_get_task_log_reads_the_capture(executor: AsyncLocalExecutor) -> None:
    k = key("logged", try_number=2)
    executor.execute_async(k, ["sh", "-c", "echo captured-line"])
    wait_events(executor, {k})

    class TI:
        key = TaskInstanceKey("dag", "logged", "run", 5, -1)

    messages, lines = executor.get_task_log(TI(), 2)
    assert messages
    assert "captured-line" in "".join(lines)
    assert executor.get_task_log(TI(), 3) == ([], [])  # nothing captured for that try


def test_terminate_stops_process_groups(executor: AsyncLocalExecutor, tmp_path: Path) -> None:
    pidfile = tmp_path / "grandchild.pid"
    k = key("long")
    executor.execute_async(k, ["sh", "-c", f"sleep 60 & echo $! > {pidfile}; wait"])
    deadline = time.monotonic() + 10
    while not pidfile.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    grandchild = int(pidfile.read_text())
    assert pid_alive(grandchild)
    t0 = time.monotonic()
    executor.terminate()
    took = time.monotonic() - t0
    events = executor.get_event_buffer()
    assert str(events[k][0]) == "failed"
    assert "terminated" in events[k][1]
    assert not pid_alive(grandchild)
    print(f"terminate() took {took:.2f}s")


def test_revoke_running_task_reports_nothing(executor: AsyncLocalExecutor) -> None:
    k = key("revoked")
    executor.execute_async(k, ["sleep", "60"])

    class TI:
        pass

    ti = TI()
    ti.key = k  # type: ignore[attr-defined]
    time.sleep(0.3)
    executor.revoke_task(ti=ti)
    assert k not in executor.running
    time.sleep(2.5)  # > kill_grace
    executor.sync()
    assert k not in executor.get_event_buffer()  # Airflow's contract: no event for a revoked task
    assert executor._inner is not None
    assert not executor._inner.has_task(k[:])


def test_a_task_waiting_for_a_slot_is_not_revoked_as_stuck(executor: AsyncLocalExecutor) -> None:
    """Stuck in queued (past task_queued_timeout) but only waiting for a slot: it stays."""
    keys = [key(f"busy{i}") for i in range(5)]  # parallelism 4: the fifth waits
    for k in keys:
        executor.execute_async(k, ["sleep", "60"])
    tis = [SimpleNamespace(key=k) for k in keys]
    assert executor._inner is not None
    deadline = time.monotonic() + 20
    while executor._inner.statistics().running < 4 and time.monotonic() < deadline:
        time.sleep(0.05)
    with pytest.raises(NotImplementedError, match="waits for a slot"):
        executor.revoke_task(ti=tis[4])
    assert keys[4] in executor.running and executor._inner.is_waiting(_engine_key(keys[4]))
    # Airflow 2.x's call: only the started one is cleaned up (and stopped)
    assert executor.cleanup_stuck_queued_tasks([tis[4], tis[0]]) == [repr(tis[0])]
    assert keys[0] not in executor.running and keys[4] in executor.running


def test_end_is_bounded_and_leaves_running_tasks_for_adoption(executor: AsyncLocalExecutor) -> None:
    k = key("sleeper")
    executor.execute_async(k, ["sh", "-c", "trap '' TERM; echo $$; exec sleep 60"])  # ignores SIGTERM
    events = {}
    deadline = time.monotonic() + 10
    while k not in events and time.monotonic() < deadline:  # the RUNNING event carries the pid
        executor.sync()
        events.update(executor.get_event_buffer())
        time.sleep(0.05)
    pid = int(events[k][1])
    t0 = time.monotonic()
    executor.end()
    took = time.monotonic() - t0
    assert took < 30, took  # drain_timeout 1 s; far from the task's 60 s
    assert k not in executor.get_event_buffer()  # no event: it was left running, not stopped
    assert pid_alive(pid)
    # The next scheduler's executor (same [async_executor] settings) adopts it, and can stop it.
    nxt = AsyncLocalExecutor(parallelism=4)
    nxt.start()
    try:
        ti = type("TI", (), {"key": k})()
        assert list(nxt.try_adopt_task_instances([ti])) == []
        assert k in nxt.running
        nxt.terminate()
        state, detail = nxt.get_event_buffer()[k]
        assert str(state) == "failed"
        assert str(detail).startswith("terminated")
    finally:
        nxt.terminate()
    deadline = time.monotonic() + 5
    while pid_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not pid_alive(pid)
    print(f"end() took {took:.2f}s")


def test_bad_executor_config_fails_the_task_not_the_caller(executor: AsyncLocalExecutor) -> None:
    k = key("badconfig")
    executor.execute_async(k, ["true"], executor_config={"async_executor": {"nope": 1}})
    executor.running.add(k)  # what Airflow 2's BaseExecutor does after execute_async returns
    executor.sync()
    events = executor.get_event_buffer()
    assert str(events[k][0]) == "failed"
    assert "nope" in events[k][1]
    assert k not in executor.running


def test_executor_config_options_apply(executor: AsyncLocalExecutor, tmp_path: Path) -> None:
    out = tmp_path / "env.txt"
    k = key("opts")
    executor.execute_async(
        k,
        ["sh", "-c", f'echo "$E2E_VAR $(pwd)" > {out}'],
        executor_config={
            "async_executor": {"env": {"E2E_VAR": "hello"}, "cwd": str(tmp_path)},
            "KubernetesExecutor": {"ignored": True},
        },
    )
    got = wait_events(executor, {k})
    assert str(got[k][-1][0]) == "success"
    assert out.read_text().strip() == f"hello {tmp_path}"


def test_timeout_option_fails_the_task(executor: AsyncLocalExecutor) -> None:
    k = key("timeout")
    executor.execute_async(k, ["sleep", "30"], executor_config={"async_executor": {"timeout": 0.5}})
    got = wait_events(executor, {k})
    assert str(got[k][-1][0]) == "failed"
    assert got[k][-1][1].startswith("timed_out")


def test_sigterm_reaches_the_task_first(executor: AsyncLocalExecutor, tmp_path: Path) -> None:
    marker = tmp_path / "got-term"
    k = key("onkill")
    executor.execute_async(k, ["sh", "-c", f"trap 'echo term > {marker}; exit 0' TERM; sleep 60 & wait"])
    time.sleep(0.5)
    executor.terminate()
    assert marker.read_text().strip() == "term"  # SIGTERM first: a supervisor can run on_kill
    assert signal.SIGTERM


def test_provider_info_matches_airflows_schema() -> None:
    import json
    from importlib.resources import files

    jsonschema = pytest.importorskip("jsonschema")
    from async_executor._airflow.provider import get_provider_info

    schema_file = files("airflow").joinpath("provider_info.schema.json")
    if not schema_file.is_file():
        pytest.skip("this Airflow ships no provider_info schema")
    jsonschema.validate(get_provider_info(), json.loads(schema_file.read_text()))


def started_with(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, parallelism: int, **settings: str
) -> AsyncLocalExecutor:
    """A started executor in ``tmp_path`` with ``[async_executor]`` ``settings``."""
    monkeypatch.setenv("AIRFLOW__ASYNC_EXECUTOR__STATE_PATH", str(tmp_path / "state.db"))
    monkeypatch.setenv("AIRFLOW__ASYNC_EXECUTOR__LOG_DIR", str(tmp_path / "logs"))
    for name, value in settings.items():
        monkeypatch.setenv(f"AIRFLOW__ASYNC_EXECUTOR__{name.upper()}", value)
    executor = AsyncLocalExecutor(parallelism=parallelism)
    executor.start()
    return executor


def queue_counting_tasks(executor: AsyncLocalExecutor, tmp_path: Path, count: int) -> set[Any]:
    """``count`` tasks that each record how many of them run at once, then hold their slot."""
    marks = tmp_path / "marks"
    marks.mkdir()
    keys = [key(f"held{i}") for i in range(count)]
    for i, k in enumerate(keys):
        count_and_hold = (
            f"touch {marks}/{i}; ls {marks} | wc -l >> {tmp_path}/seen; sleep 0.3; rm {marks}/{i}"
        )
        executor.execute_async(k, ["sh", "-c", count_and_hold])
    return set(keys)


def wait_and_count(executor: AsyncLocalExecutor, tmp_path: Path, keys: set[Any]) -> list[int]:
    """Wait for ``keys`` and return what the tasks of :func:`queue_counting_tasks` recorded."""
    wait_events(executor, keys)
    return [int(n) for n in (tmp_path / "seen").read_text().split()]


def test_queue_ahead_is_unlimited_by_default_and_runs_at_most_parallelism(
    executor: AsyncLocalExecutor, tmp_path: Path
) -> None:
    """Airflow 3's LocalExecutor takes whatever the scheduler offers; so do we, by default."""
    from async_executor._airflow._executor import UNLIMITED_AHEAD

    assert executor.queue_ahead == UNLIMITED_AHEAD
    keys = queue_counting_tasks(executor, tmp_path, 12)
    assert executor.slots_occupied == 0 and executor.slots_available == 4  # 12 held: none count
    seen = wait_and_count(executor, tmp_path, keys)
    assert len(seen) == 12 and max(seen) <= 4, seen


def test_queue_ahead_takes_more_than_parallelism_but_runs_at_most_parallelism(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    executor = started_with(tmp_path, monkeypatch, 4, queue_ahead="4")
    try:
        assert executor.queue_ahead == executor.parallelism == 4
        assert executor.slots_available == 4 and executor.slots_occupied == 0
        keys = queue_counting_tasks(executor, tmp_path, 6)
        # 6 held: 2 beyond the held-ahead allowance count against [core] parallelism
        assert executor.slots_occupied == 2 and executor.slots_available == 2
        seen = wait_and_count(executor, tmp_path, keys)
        assert len(seen) == 6 and max(seen) <= 4, seen
    finally:
        executor.terminate()
    assert executor.slots_occupied == 0 and executor.slots_available == 4


def test_queue_ahead_zero_is_airflows_accounting(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ex = started_with(tmp_path, monkeypatch, 3, queue_ahead="0")
    try:
        assert ex.queue_ahead == 0
        ex.execute_async(key("one"), ["sleep", "5"])
        assert ex.slots_occupied == 1 and ex.slots_available == 2
    finally:
        ex.terminate()


@pytest.mark.parametrize(("setting", "value"), [("queue_ahead", "lots"), ("warm_fork_scheduler", "maybe")])
def test_a_bad_setting_fails_start(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, setting: str, value: str
) -> None:
    monkeypatch.setenv("AIRFLOW__ASYNC_EXECUTOR__STATE_PATH", str(tmp_path / "state.db"))
    monkeypatch.setenv(f"AIRFLOW__ASYNC_EXECUTOR__{setting.upper()}", value)
    ex = AsyncLocalExecutor(parallelism=3)
    with pytest.raises(ValueError, match=setting):
        ex.start()


def test_tasks_not_started_by_the_end_are_left_queued(executor: AsyncLocalExecutor) -> None:
    busy = [key(f"busy{i}") for i in range(4)]
    waiting = [key(f"waiting{i}") for i in range(2)]
    for k in busy:
        executor.execute_async(k, ["sleep", "60"])
    for k in waiting:
        executor.execute_async(k, ["true"])  # held ahead: all 4 slots are taken
    executor.end()  # drain_timeout 1 s: the sleepers are left running, the others never start
    events = executor.get_event_buffer()
    # no terminal event for either: the sleepers were left running; the others stay queued in
    # Airflow, whose next scheduler queues them again
    terminal = {k for k, (state, _) in events.items() if str(state) in ("success", "failed")}
    assert not terminal & set(busy + waiting), events
    assert not set(events) & set(waiting), events
    assert not set(executor.running) & set(waiting)
    nxt = AsyncLocalExecutor(parallelism=4)
    nxt.start()
    try:
        tis = [type("TI", (), {"key": k})() for k in busy + waiting]
        left = {ti.key for ti in nxt.try_adopt_task_instances(tis)}
        assert left == set(waiting)  # never started: Airflow resets them to be scheduled again
        nxt.terminate()  # stops the adopted sleepers
        assert {k for k, (state, _) in nxt.get_event_buffer().items() if str(state) == "failed"} == set(busy)
    finally:
        nxt.terminate()


def test_fork_server_warmup_prepares_the_task_sdk() -> None:
    from airflow.sdk.api.client import Client
    from airflow.sdk.execution_time.supervisor import ActivitySubprocess

    from async_executor._airflow import _warmup

    assert _warmup.prebuild_client_tls()
    assert Client._get_ssl_context_cached.cache_info().currsize >= 1
    assert _warmup.install_exit_wake()
    assert getattr(ActivitySubprocess._service_subprocess, "_async_executor_exit_wake", False)


def test_fork_server_warmup_does_the_task_supervisors_set_up() -> None:
    """execute_workload's own calls find the work done (in a fresh process: it is global)."""
    code = textwrap.dedent(
        """
        import sys
        from airflow import settings
        from airflow.sdk import log
        settings.configure_orm()  # as a fork of the scheduler has it
        assert settings.engine is not None
        from async_executor._airflow import _warmup  # the fork server imports it: it does the set-up
        assert settings.engine is None and settings.Session is None
        assert getattr(log.configure_logging, "_async_executor_preconfigured", False)
        assert not _warmup.preconfigure_task_logging()  # once
        before = log.configure_logging.cache_info()
        # what airflow.sdk.execution_time.execute_workload does first
        from airflow.sdk.log import configure_logging
        configure_logging(output=sys.stdout.buffer, json_output=True)
        after = log.configure_logging.cache_info()
        assert (after.hits, after.misses) == (before.hits + 1, before.misses), (before, after)
        print("ok")
        """
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip().endswith("ok"), proc.stdout + proc.stderr


def _supervisor_children(ex: AsyncLocalExecutor) -> list[int]:
    supervisor = ex._require_inner()._engine.backend.supervisor_pid  # type: ignore[attr-defined]
    with open(f"/proc/{supervisor}/task/{supervisor}/children") as f:
        return [int(pid) for pid in f.read().split()]


@pytest.mark.parametrize("fork", ["true", "false", ""])  # "": the default, on for Airflow 3
def test_warm_fork_scheduler_forks_the_fork_server_at_start(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fork: str
) -> None:
    monkeypatch.setenv("AIRFLOW__ASYNC_EXECUTOR__STATE_PATH", str(tmp_path / "state.db"))
    monkeypatch.setenv("AIRFLOW__ASYNC_EXECUTOR__LOG_DIR", str(tmp_path / "logs"))
    monkeypatch.setenv("AIRFLOW__ASYNC_EXECUTOR__WORKLOAD_DIR", str(tmp_path / "workloads"))
    monkeypatch.setenv("AIRFLOW__ASYNC_EXECUTOR__WARM_FORK_SCHEDULER", fork)
    ex = AsyncLocalExecutor(parallelism=2)
    ex.start()
    try:
        children = _supervisor_children(ex)
    finally:
        ex.end()
    # forked: the server is the supervisor's child from start(); exec'd: started by a first task
    assert len(children) == (1 if fork in ("true", "") else 0)


def test_the_scheduler_side_loop_is_asyncio_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    """Next to its supervisor the engine's loop in the scheduler only relays: uvloop would add
    ~2 MB to the scheduler for nothing measurable; ``loop = uvloop`` still asks for it."""
    from airflow.configuration import conf

    from async_executor._airflow._executor import Settings

    assert Settings.from_conf(conf).loop == "asyncio"
    monkeypatch.setenv("AIRFLOW__ASYNC_EXECUTOR__LOOP", "uvloop")
    assert Settings.from_conf(conf).loop == "uvloop"


def test_priority_weight_orders_the_tasks_held_ahead() -> None:
    from async_executor._airflow._executor import _priority_weight

    assert _priority_weight(SimpleNamespace(ti=SimpleNamespace(priority_weight=7))) == 7
    assert _priority_weight(SimpleNamespace(ti=None)) == 1  # callbacks carry no task instance
    assert _priority_weight(SimpleNamespace(ti=SimpleNamespace(priority_weight="7"))) == 1


def test_a_connection_test_workload_runs_as_a_task_and_reports_its_states(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Airflow 3.3+ hands the UI's connection tests to executors that support them.

    No API server here (``run_e2e.py`` has the real round trip): the test's process cannot
    reach one, so it fails, and what is checked is the executor's part: the workload is
    accepted, runs as a task of this executor under the connection test's key, and its
    states are the connection test's own.
    """
    import uuid

    from airflow.executors import workloads

    if not hasattr(workloads, "TestConnection"):
        pytest.skip("this Airflow has no TestConnection workload (3.3+)")
    from airflow.models.connection_test import ConnectionTestState

    assert AsyncLocalExecutor.supports_connection_test
    # nothing listens there: the connection test's API calls fail at once
    monkeypatch.setenv(
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL", f"http://127.0.0.1:{_closed_port()}/execution/"
    )
    workload = workloads.TestConnection.make(
        connection_test_id=uuid.uuid4(), connection_id="live_fs", timeout=10
    )
    with _started(tmp_path, monkeypatch) as executor:
        executor.queue_workload(workload, session=None)
        assert workload.key in executor.queued_connection_tests
        executor.heartbeat()  # hands it to the engine, as the scheduler's loop does
        assert not executor.queued_connection_tests
        assert workload.key in executor.running
        got = wait_events(executor, {workload.key}, timeout=120)
        states = [state for state, _ in got[workload.key]]
        assert states[-1] == ConnectionTestState.FAILED, got
        assert set(states) <= {ConnectionTestState.RUNNING, ConnectionTestState.FAILED}, got
        assert workload.key not in executor.running
        _, lines = executor.get_task_log(SimpleNamespace(key=workload.key), 1)
        assert "".join(lines), "its captured output is there to read"


def _closed_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_a_team_executor_has_its_own_directories_and_its_teams_api_url(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``[core] multi_team``: one of ours per team, each with the team's config only (as
    Airflow reads team-scoped options: the team's own values, else the defaults)."""
    from async_executor._airflow._executor import API_URL_VARIABLE, MULTI_TEAM

    if not MULTI_TEAM:
        pytest.skip("this Airflow has no team executors")
    monkeypatch.setenv("AIRFLOW_HOME", str(tmp_path))
    monkeypatch.setenv("AIRFLOW__CORE__MULTI_TEAM", "True")
    monkeypatch.setenv("AIRFLOW__ASYNC_EXECUTOR__STATE_PATH", str(tmp_path / "global.db"))  # not the team's
    monkeypatch.setenv("AIRFLOW__TEAM_X___ASYNC_EXECUTOR__KILL_GRACE", "7")
    monkeypatch.setenv("AIRFLOW__TEAM_X___CORE__EXECUTION_API_SERVER_URL", "http://team-x.invalid/execution/")
    assert AsyncLocalExecutor.supports_multi_team
    team = AsyncLocalExecutor(parallelism=2, team_name="team_x")
    own = tmp_path / "async_executor" / "teams" / "team_x"
    assert team.settings.state_path == str(own / "state.db")
    assert team.settings.log_dir == str(own / "logs")
    assert team.settings.workload_dir == str(own / "workloads")
    assert team.settings.kill_grace == 7
    assert AsyncLocalExecutor(parallelism=2).settings.state_path == str(tmp_path / "global.db")
    team.start()
    try:
        assert team._team_env == {API_URL_VARIABLE: "http://team-x.invalid/execution/"}
        rule = team._warm_start(team.settings)
        assert rule is not None
        argv = (sys.executable, "-m", "airflow.sdk.execution_time.execute_workload", "--json-path", "f")
        # the team's URL in a task's environment does not make it cold
        assert rule.accepts(argv, team._team_env, dict(os.environ))
        assert not rule.accepts(argv, {"AIRFLOW__CORE__DAGS_FOLDER": "/elsewhere"}, dict(os.environ))
    finally:
        team.terminate()


def test_a_connection_test_the_reaper_fails_is_stopped_and_reports_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``fail_connection_test`` (Airflow 3.3's reaper): the test's process is stopped, not left."""
    import socket
    import uuid

    from airflow.executors import workloads

    if not hasattr(workloads, "TestConnection"):
        pytest.skip("this Airflow has no TestConnection workload (3.3+)")
    with socket.socket() as silent:  # accepts connections, never answers: the test hangs
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)
        port = silent.getsockname()[1]
        monkeypatch.setenv("AIRFLOW__CORE__EXECUTION_API_SERVER_URL", f"http://127.0.0.1:{port}/execution/")
        workload = workloads.TestConnection.make(
            connection_test_id=uuid.uuid4(), connection_id="hangs", timeout=60
        )
        with _started(tmp_path, monkeypatch) as executor:
            executor.queue_workload(workload, session=None)
            executor.heartbeat()
            engine_key = _engine_key(workload.key)
            inner = executor._require_inner()
            deadline = time.monotonic() + 60
            pid = None
            while pid is None and time.monotonic() < deadline:
                executor.sync()
                pid = inner._engine.pid_of(engine_key)  # read across threads: a test's peek
                time.sleep(0.05)
            assert pid is not None, "the connection test never started"
            time.sleep(1)  # it is now waiting for an answer that does not come
            assert pid_alive(pid)
            executor.fail_connection_test(workload.key)
            assert workload.key not in executor.running
            deadline = time.monotonic() + 20
            while pid_alive(pid) and time.monotonic() < deadline:
                executor.sync()
                time.sleep(0.05)
            assert not pid_alive(pid), "its process was left running"
            for _ in range(20):
                executor.sync()
                time.sleep(0.05)
            assert workload.key not in executor.get_event_buffer()
