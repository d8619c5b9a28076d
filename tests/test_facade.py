"""The Airflow-style interface of the sync façade: heartbeat, sync, event buffer, gauges."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, NamedTuple

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from async_executor import (
    AsyncExecutor,
    ExecutorStatistics,
    FailureReason,
    InvalidTaskError,
    TaskInfo,
    TaskState,
)
from async_executor._validation import build_spec

from .conftest import drain


class TIKey(NamedTuple):
    dag_id: str
    task_id: str
    run_id: str
    try_number: int
    map_index: int


def test_issue_example_scheduler_loop(log_dir: Path, mode: dict[str, Any]) -> None:
    """The loop from the issue: 1,000 tasks, priorities, heartbeat + get_event_buffer."""
    ex = AsyncExecutor(parallelism=64, log_dir=log_dir, **mode)
    ex.start()
    try:
        for i in range(1000):
            ex.queue_command(("job", i), ["sh", "-c", f"echo {i}; sleep 0.01"], priority=i % 3)
        events = drain(ex)
    finally:
        ex.end()
    assert len(events) == 1000
    assert all(len(evs) == 1 for evs in events.values())
    assert all(evs[0][0] == TaskState.SUCCESS == "success" for evs in events.values())
    assert ex.get_task_log(("job", 417)) == (
        [f"Captured output of the task process at {events['job', 417][0][1].log_path}"],
        ["417\n"],
    )


def test_heartbeat_launches_highest_priority_first(executor: AsyncExecutor, tmp_path: Path) -> None:
    order = tmp_path / "order"
    ex = AsyncExecutor(parallelism=1, log_dir=tmp_path / "logs", loop="asyncio")
    ex.start()
    try:
        for i, prio in enumerate([1, 5, 3, 5, 0, 9]):
            ex.queue_command(f"t{i}", ["sh", "-c", f"echo t{i} >> {order}"], priority=prio)
        drain(ex)
    finally:
        ex.end()
    # highest priority first; equal priorities keep their queueing order
    assert order.read_text().split() == ["t5", "t1", "t3", "t2", "t0", "t4"]


@pytest.mark.parametrize("mode", ["facade", "journal"])
def test_execute_async_waiting_tasks_start_highest_priority_first(tmp_path: Path, mode: str) -> None:
    """Handed over while the only slot is taken, tasks wait in the engine in priority order."""
    order = tmp_path / "order"
    gate = tmp_path / "gate"
    state = tmp_path / "state" / "j.sqlite" if mode == "journal" else None
    ex = AsyncExecutor(parallelism=1, log_dir=tmp_path / "logs", state_path=state)
    ex.start()
    try:
        wait_for_gate = f"while [ ! -e {gate} ]; do sleep 0.01; done; echo first >> {order}"
        ex.execute_async("first", ["sh", "-c", wait_for_gate])
        for i, prio in enumerate([1, 5, 3, 5, 0, 9]):
            ex.execute_async(f"t{i}", ["sh", "-c", f"echo t{i} >> {order}"], priority=prio)
        gate.touch()
        events = drain(ex)
    finally:
        ex.end()
    assert len(events) == 7
    assert order.read_text().split() == ["first", "t5", "t1", "t3", "t2", "t0", "t4"]


def test_is_waiting_sees_a_hand_off_still_in_flight(tmp_path: Path) -> None:
    """A task handed over while the engine's loop is busy is waiting, not unknown."""
    ex = AsyncExecutor(parallelism=1, log_dir=tmp_path / "logs")
    ex.start()
    try:
        ex.execute_async("first", ["sleep", "30"])
        while ex.statistics().running < 1:
            ex.sync()
            time.sleep(0.01)
        assert not ex.is_waiting("first")
        assert ex._loop is not None
        ex._loop.call_soon_threadsafe(time.sleep, 0.5)  # the loop is busy: the hand-off waits
        ex.execute_async("second", ["true"])
        assert ex.is_waiting("second")
        assert not ex.is_waiting("never-queued")
        ex.queue_command("third", ["true"])
        assert ex.is_waiting("third")
    finally:
        ex.terminate()


def test_execute_async_refuses_a_bad_priority(executor: AsyncExecutor) -> None:
    with pytest.raises(InvalidTaskError, match="priority"):
        executor.execute_async("bad", ["true"], priority="high")  # type: ignore[arg-type]
    assert not executor.has_task("bad")


def test_heartbeat_fills_only_open_slots(log_dir: Path) -> None:
    ex = AsyncExecutor(parallelism=3, log_dir=log_dir)
    ex.start()
    try:
        for i in range(5):
            ex.queue_command(i, ["sleep", "0.5"], priority=i)
        assert ex.slots_available == -2
        assert ex.slots_occupied == 5
        ex.heartbeat()
        assert ex.running == {4, 3, 2}
        assert set(ex.queued_tasks) == {0, 1}
        ex.heartbeat()
        assert len(ex.running) == 3  # nothing finished yet: no slot opened
        drain(ex)
        assert ex.slots_available == 3
    finally:
        ex.end()


def test_sync_is_nonblocking_and_moves_results(executor: AsyncExecutor) -> None:
    executor.execute_async("a", ["true"])
    executor.execute_async("b", ["sh", "-c", "exit 3"])
    executor.execute_async("c", ["sleep", "30"])
    deadline = time.monotonic() + 10
    while len(executor.event_buffer) < 2 and time.monotonic() < deadline:
        executor.sync()
        time.sleep(0.005)
    buffer = executor.get_event_buffer()
    assert set(buffer) == {"a", "b"}
    assert buffer["a"][1].returncode == 0
    state, info = buffer["b"]
    assert state == TaskState.FAILED
    assert info.returncode == 3
    assert info.reason is None  # the command itself failed
    assert executor.running == {"c"}
    assert executor.has_task("c") and not executor.has_task("a")
    assert executor.get_event_buffer() == {}


def test_event_buffer_filter_by_key_and_dag_id(executor: AsyncExecutor) -> None:
    k1 = TIKey("dag_a", "t1", "r", 1, -1)
    k2 = TIKey("dag_b", "t1", "r", 1, -1)
    for key in (k1, k2, "plain"):
        executor.queue_command(key, ["true"])
    while executor.queued_tasks or executor.running:
        executor.heartbeat()
        time.sleep(0.005)
    assert set(executor.get_event_buffer(["dag_a"])) == {k1}
    assert set(executor.get_event_buffer(["plain"])) == {"plain"}
    assert set(executor.get_event_buffer()) == {k2}


def test_ti_key_try_number_names_the_log(executor: AsyncExecutor) -> None:
    key = TIKey("dag", "task", "run", 3, -1)
    executor.queue_command(key, ["echo", "third try"])
    info = drain(executor)[key][0][1]
    assert info.try_number == 3
    assert info.log_path is not None and info.log_path.endswith(".3.log")
    assert executor.get_task_log(key, 3)[1] == ["third try\n"]
    messages, lines = executor.get_task_log(key, 1)
    assert lines == [] and "No captured output" in messages[0]


def test_result_records(executor: AsyncExecutor) -> None:
    executor.queue_command("ok", ["true"])
    executor.queue_command("killed", ["sh", "-c", "kill -9 $$"])
    events = drain(executor)
    ok = events["ok"][0][1]
    assert isinstance(ok, TaskInfo)
    assert ok.succeeded and ok.pid and ok.started_at and ok.ended_at and ok.duration is not None
    assert ok.duration >= 0
    killed = events["killed"][0][1]
    assert killed.state == "failed" and killed.signal == 9 and killed.returncode is None
    with pytest.raises(AttributeError):
        ok.state = TaskState.FAILED  # type: ignore[misc]


def test_report_running_events(log_dir: Path) -> None:
    ex = AsyncExecutor(parallelism=2, log_dir=log_dir, report_running=True)
    ex.start()
    try:
        ex.execute_async("slow", ["sleep", "0.5"])
        deadline = time.monotonic() + 10
        while "slow" not in ex.event_buffer and time.monotonic() < deadline:
            ex.sync()
            time.sleep(0.005)
        state, info = ex.get_event_buffer()["slow"]
        assert state == TaskState.RUNNING and info.pid
        events = drain(ex)
        assert [s for s, _ in events["slow"]] == [TaskState.SUCCESS]
    finally:
        ex.end()


def test_revoke_and_cleanup_stuck_queued(log_dir: Path) -> None:
    ex = AsyncExecutor(parallelism=1, log_dir=log_dir)
    ex.start()
    try:
        ex.queue_command("queued-1", ["true"])
        ex.queue_command("queued-2", ["true"])
        ex.execute_async("running", ["sleep", "0.5"])
        ex.execute_async("pending", ["true"])  # handed to the engine, waits for the slot
        assert ex.revoke_task("queued-1") is True
        assert ex.revoke_task("nope") is False
        assert ex.cleanup_stuck_queued_tasks(["queued-2", "pending", "running"]) == ["queued-2", "pending"]
        events = drain(ex)
    finally:
        ex.end()
    for key in ("queued-1", "queued-2", "pending"):
        assert len(events[key]) == 1
        state, info = events[key][0]
        assert state == TaskState.FAILED and info.reason is FailureReason.REVOKED and info.pid is None
    assert events["running"][0][0] == TaskState.SUCCESS


def test_send_callback(log_dir: Path) -> None:
    ex = AsyncExecutor(log_dir=log_dir)
    with pytest.raises(ValueError, match="no callback sink"):
        ex.send_callback({"x": 1})
    received: list[Any] = []

    class Sink:
        def send(self, request: Any) -> None:
            received.append(request)

    AsyncExecutor(log_dir=log_dir, callback_sink=Sink()).send_callback("r1")
    AsyncExecutor(log_dir=log_dir, callback_sink=received.append).send_callback("r2")
    assert received == ["r1", "r2"]


def test_flags_gauges_repr_and_statistics(executor: AsyncExecutor) -> None:
    assert executor.is_local and executor.serve_logs and executor.is_production
    assert not executor.is_single_threaded and not executor.supports_pickling
    assert not executor.supports_sentry and not executor.change_sensor_mode_to_reschedule
    assert executor.sentry_integration == "" and not executor.supports_multi_team
    assert executor.get_cli_commands() == []
    assert executor.try_adopt_task_instances(["a", ("b", 1)]) == ["a", ("b", 1)]
    executor.execute_async("s", ["sleep", "5"])
    executor.queue_command("q", ["true"])
    assert "running 1/8 queued 1" in repr(executor)
    time.sleep(0.2)
    stats = executor.statistics()
    assert isinstance(stats, ExecutorStatistics)
    assert stats.running == 1 and stats.queued == 1 and stats.launched == 1 and stats.parallelism == 8
    assert stats.loop in ("asyncio", "uvloop")


def test_end_runs_queued_tasks_and_waits(log_dir: Path) -> None:
    ex = AsyncExecutor(parallelism=2, log_dir=log_dir)
    ex.start()
    for i in range(5):
        ex.queue_command(i, ["sh", "-c", "sleep 0.1"])
    ex.end()
    events = ex.get_event_buffer()
    assert sorted(events) == [0, 1, 2, 3, 4]
    assert all(state == TaskState.SUCCESS for state, _ in events.values())
    assert not ex.running and not ex.queued_tasks


def test_capture_false_discards_output(tmp_path: Path) -> None:
    ex = AsyncExecutor(capture=False)
    ex.start()
    try:
        ex.queue_command("x", ["echo", "hi"])
        events = drain(ex)
    finally:
        ex.end()
    assert events["x"][0][1].log_path is None
    assert "not captured" in ex.get_task_log("x")[0][0]


def test_default_log_dir_honours_home_variable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ASYNC_EXECUTOR_HOME", str(tmp_path / "home"))
    assert AsyncExecutor().log_dir == str(tmp_path / "home" / "logs")


# ------------------------------------------------------------------ launch order over a backlog

_QUEUE_OPS = st.lists(
    st.one_of(
        st.tuples(st.just("queue"), st.integers(0, 40), st.integers(-2, 3)),
        st.tuples(st.just("revoke"), st.integers(0, 40), st.just(0)),
        st.tuples(st.just("take"), st.integers(0, 6), st.just(0)),
    ),
    max_size=120,
)


@settings(max_examples=150, deadline=None)
@given(ops=_QUEUE_OPS)
def test_queued_tasks_leave_in_priority_then_queueing_order(ops: list[tuple[str, int, int]]) -> None:
    """The launch heap beside ``queued_tasks`` picks what sorting the whole dict would, through
    revokes (stale heap entries) and keys queued again, without a pass over the backlog."""
    ex = AsyncExecutor(parallelism=4, state_path=None, capture=False)
    for op, key, priority in ops:
        if op == "queue":
            ex.queue_command(key, ["true"], priority=priority)
        elif op == "revoke":
            ex.revoke_task(key)
        else:
            expected = sorted(ex.queued_tasks.values(), key=lambda spec: -spec.priority)[:key]
            assert ex._pop_queued(key) == expected
            assert all(spec.key not in ex.queued_tasks for spec in expected)
    assert len(ex._queue_heap) <= 2 * len(ex.queued_tasks) + 64 + len(ops)


def test_tasks_put_into_queued_tasks_by_hand_are_not_lost() -> None:
    """``queue_command`` is the way in; an entry written into the dict directly still launches
    (its priority counts from the next rebuild of the heap on)."""
    ex = AsyncExecutor(parallelism=4, state_path=None, capture=False)
    ex.queue_command("a", ["true"], priority=1)
    ex.queue_command("b", ["true"], priority=1)
    ex.revoke_task("b")
    ex.queued_tasks["hand"] = build_spec("hand", ["true"], priority=5, queue=None, options={}, try_number=1)
    # the dict has as many entries as the heap here: found when the heap runs dry
    assert [spec.key for spec in ex._pop_queued(5)] == ["a", "hand"]
    ex.queued_tasks["x"] = build_spec("x", ["true"], priority=0, queue=None, options={}, try_number=1)
    ex.queue_command("y", ["true"], priority=3)
    assert [spec.key for spec in ex._pop_queued(5)] == ["y", "x"]
