"""Durability with real crashes: an executor process is SIGKILLed, a fresh one recovers.

Across both lives every accepted task ends with exactly one terminal event, statuses are the
real ones (recorded by the supervisor while no executor was alive), and nothing runs twice.
"""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import anyio
import hypothesis.strategies as st
import pytest
from hypothesis import HealthCheck, event, given, settings

from async_executor import AsyncExecutor, FailureReason, TaskState, _durable
from async_executor._journal import Journal
from async_executor._records import TaskSpec
from async_executor._spawn import proc_start_ticks

from .conftest import PY, drain, pid_alive, recovered_events, wait_for_file

# A process that runs an executor: hands over every task, makes the hand-over durable,
# says "accepted", then drives the executor and appends each event it sees to a file.
LIFE_ONE = r"""
import json, os, sys, time
from async_executor import AsyncExecutor
state, logs, markers, events_path, count, parallelism, template = sys.argv[1:8]
ex = AsyncExecutor(parallelism=int(parallelism), log_dir=logs, state_path=state, kill_grace=0.5)
ex.start()
for i in range(int(count)):
    script = f"echo $$ >> {markers}/{i}; " + template.format(i=i, sleep=f"0.{i % 5}", rc=i % 3)
    ex.execute_async(("t", i), ["sh", "-c", script], executor_config=json.loads(sys.argv[8]))
ex.flush()
print("accepted", flush=True)
fd = os.open(events_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
while True:
    ex.heartbeat()
    for key, (state_, info) in ex.get_event_buffer().items():
        os.write(fd, (json.dumps([list(key), state_, info.returncode, info.reason]) + "\n").encode())
    time.sleep(0.002)
"""


def start_life_one(
    tmp_path: Path,
    count: int,
    parallelism: int,
    template: str = "sleep {sleep}; exit {rc}",
    options: dict[str, Any] | None = None,
) -> subprocess.Popen[str]:
    (tmp_path / "markers").mkdir(exist_ok=True)
    proc = subprocess.Popen(
        [
            PY,
            "-c",
            LIFE_ONE,
            str(tmp_path / "state" / "journal.sqlite"),
            str(tmp_path / "logs"),
            str(tmp_path / "markers"),
            str(tmp_path / "events-1"),
            str(count),
            str(parallelism),
            template,
            json.dumps(options or {}),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "accepted"
    return proc


def kill(proc: subprocess.Popen[str]) -> None:
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.stdout is not None
    proc.stdout.close()


def life_one_events(tmp_path: Path) -> dict[Any, list[tuple[str, int | None]]]:
    events: dict[Any, list[tuple[str, int | None]]] = {}
    path = tmp_path / "events-1"
    if path.exists():
        for line in path.read_text().splitlines():
            key, state, rc, _reason = json.loads(line)
            events.setdefault(tuple(key), []).append((state, rc))
    return events


def second_life(tmp_path: Path, **options: Any) -> AsyncExecutor:
    ex = AsyncExecutor(
        parallelism=8,
        log_dir=tmp_path / "logs",
        state_path=tmp_path / "state" / "journal.sqlite",
        kill_grace=0.5,
        **options,
    )
    ex.start()
    return ex


def assert_nothing_to_deliver(tmp_path: Path) -> None:
    """A fresh executor on the journal has no outcome to report (each was reported once)."""
    ex = second_life(tmp_path)
    try:
        ex.sync()
        assert ex.get_event_buffer() == {}
    finally:
        ex.end()


def runs_of(tmp_path: Path, i: int) -> int:
    path = tmp_path / "markers" / str(i)
    return len(path.read_text().splitlines()) if path.exists() else 0


def test_exit_status_recorded_while_no_executor_is_alive(tmp_path: Path) -> None:
    # The tasks (exits 0, 1, 2) wait for a gate opened only after the executor is dead: a task
    # that ended before the kill would be recovered, rightly, as one its executor may have seen.
    gate = tmp_path / "gate"
    template = f"until [ -e {gate} ]; do sleep 0.01; done; exit {{rc}}"
    proc = start_life_one(tmp_path, count=3, parallelism=3, template=template)
    kill(proc)
    time.sleep(0.3)  # for the supervisor to see its owner's connection close
    gate.touch()
    deadline = time.monotonic() + 60
    while sum(f.read_text().count('"ev":"exit"') for f in (tmp_path / "state").glob("exits-*.jsonl")) < 3:
        assert time.monotonic() < deadline, "the supervisor recorded no exit of the three tasks"
        time.sleep(0.02)  # until all three ended (and were recorded) while no executor ran
    seen = life_one_events(tmp_path)
    ex = second_life(tmp_path)
    try:
        recovered = ex.get_event_buffer()
        ex.sync()
        recovered.update(ex.get_event_buffer())
    finally:
        ex.end()
    assert seen == {}  # they ended after its death: only the second life can report them
    for i in range(3):
        state, info = recovered[("t", i)]
        assert info.returncode == i % 3  # the real status, not a guess
        assert state == (TaskState.SUCCESS if i % 3 == 0 else TaskState.FAILED)
        assert "ended while no executor ran" in (info.detail or "")
        assert runs_of(tmp_path, i) == 1
    # a third life sees nothing new: reported exactly once
    assert_nothing_to_deliver(tmp_path)


def test_adoption_after_executor_crash(tmp_path: Path) -> None:
    proc = start_life_one(tmp_path, count=2, parallelism=2, template="sleep 1; exit {rc}")
    kill(proc)
    ex = second_life(tmp_path)
    try:
        ex.sync()
        assert ex.get_event_buffer() == {}  # still running: nothing to report yet
        missing = ("t", 99)
        assert ex.try_adopt_task_instances([("t", 0), ("t", 1), missing]) == [missing]
        assert ex.running == {("t", 0), ("t", 1)}
        assert ex.queue_command(("t", 0), ["true"]) is False  # never twice
        events = drain(ex)
    finally:
        ex.end()
    assert events[("t", 0)][0][0] == TaskState.SUCCESS
    assert events[("t", 1)][0][1].returncode == 1
    assert runs_of(tmp_path, 0) == runs_of(tmp_path, 1) == 1


def test_adopted_tasks_are_terminated_with_their_group(tmp_path: Path) -> None:
    proc = start_life_one(tmp_path, count=2, parallelism=2, template="sleep 60")
    time.sleep(0.3)
    pids = [int((tmp_path / "markers" / str(i)).read_text().split()[0]) for i in range(2)]
    kill(proc)
    ex = second_life(tmp_path)
    assert sorted(ex.adopt_all()) == [("t", 0), ("t", 1)]
    ex.terminate()
    events = ex.get_event_buffer()
    assert {key for key, (_, info) in events.items() if info.reason is FailureReason.TERMINATED} == {
        ("t", 0),
        ("t", 1),
    }
    time.sleep(0.2)
    assert not any(pid_alive(pid) for pid in pids)


def test_adopted_task_keeps_its_remaining_timeout(tmp_path: Path) -> None:
    proc = start_life_one(
        tmp_path, count=1, parallelism=1, template="exec sleep 60", options={"timeout": 1.5}
    )
    kill(proc)
    ex = second_life(tmp_path)
    try:
        assert ex.adopt_all() == [("t", 0)]
        events = drain(ex, timeout=30)
    finally:
        ex.end()
    info = events[("t", 0)][0][1]
    assert info.reason is FailureReason.TIMED_OUT


def test_tasks_accepted_but_never_started_are_reported(tmp_path: Path) -> None:
    proc = start_life_one(tmp_path, count=3, parallelism=1, template="sleep 30")
    time.sleep(0.3)
    kill(proc)
    ex = second_life(tmp_path)
    try:
        events = recovered_events(ex)
        not_started = {k for k, (_, info) in events.items() if info.reason is FailureReason.NOT_STARTED}
        assert not_started == {("t", 1), ("t", 2)}
        assert ex.try_adopt_task_instances([("t", 0)]) == []
        ex.cancel_task(("t", 0))
        drain(ex)
    finally:
        ex.end()


async def _fake_dead_executor_row(state: Path, pid: int, proc_start: int) -> None:
    journal = Journal(state)
    await journal.open()
    await journal.register_executor("deadbeef", pid=999_999, proc_start=1, supervisor_socket=None)
    spec = TaskSpec(key=("reused", 1), argv=("sleep", "60"))
    journal.accepted("deadbeef", spec, accepted_at=time.time())
    journal.started(
        "deadbeef",
        spec.key,
        1,
        pid=pid,
        pgid=pid,
        proc_start=proc_start,
        log_path=None,
        started_at=time.time(),
    )
    await journal.close()


def test_pid_reuse_is_not_adopted(tmp_path: Path) -> None:
    """A journal row whose pid now belongs to another process (another start time)."""
    state = tmp_path / "state" / "journal.sqlite"
    other = subprocess.Popen(["sleep", "30"])  # alive, but not the process the row describes
    try:
        anyio.run(_fake_dead_executor_row, state, other.pid, 12345)
        ex = AsyncExecutor(log_dir=tmp_path / "logs", state_path=state)
        ex.start()
        try:
            events = recovered_events(ex)
            assert ex.try_adopt_task_instances([("reused", 1)]) == [("reused", 1)]
        finally:
            ex.end()
        state_, info = events[("reused", 1)]
        assert state_ == TaskState.FAILED
        assert "no exit status was recorded" in (info.detail or "")
        assert other.poll() is None  # the unrelated process was left alone
    finally:
        other.kill()
        other.wait()


def test_two_live_executors_sharing_a_state_file(tmp_path: Path) -> None:
    state = tmp_path / "state" / "journal.sqlite"
    first = AsyncExecutor(parallelism=2, log_dir=tmp_path / "logs1", state_path=state)
    first.start()
    try:
        first.execute_async("shared", ["sleep", "0.8"])
        first.flush()
        time.sleep(0.2)
        second = AsyncExecutor(parallelism=2, log_dir=tmp_path / "logs2", state_path=state)
        second.start()
        try:
            assert second.queue_command("shared", ["true"]) is False  # running under `first`
            assert second.try_adopt_task_instances(["shared"]) == ["shared"]  # not stolen
            second.queue_command("other", ["true"])
            assert drain(second)["other"][0][0] == TaskState.SUCCESS
        finally:
            second.end()
        assert drain(first)["shared"][0][0] == TaskState.SUCCESS  # untouched by the second
    finally:
        first.end()


def test_the_supervisor_does_not_load_openssl_or_compression(tmp_path: Path) -> None:
    """It speaks no TLS: ``ssl`` is kept out (asyncio would import it, mapping OpenSSL into every
    supervisor), and it still runs tasks on asyncio's own loop. Nor does it compress anything:
    ``shutil`` (which loads zlib, bz2 and lzma) is imported only where a task needs it."""
    ex = AsyncExecutor(parallelism=2, log_dir=tmp_path / "logs", state_path=tmp_path / "journal.sqlite")
    ex.start()
    try:
        ex.queue_command("t", ["sh", "-c", "echo hi"])
        assert drain(ex)["t"][0][0] == TaskState.SUCCESS
        pid = ex._engine.backend.supervisor_pid  # type: ignore[attr-defined]
        maps = Path(f"/proc/{pid}/maps").read_text()
        assert "python" in Path(f"/proc/{pid}/cmdline").read_text()
        assert "libpython" in maps or "/python" in maps  # the right process, and readable
        assert "libssl" not in maps
        assert "libcrypto" not in maps
        for library in ("libz.so", "libbz2", "liblzma"):
            assert library not in maps
    finally:
        ex.end()


def test_end_detach_leaves_tasks_for_the_next_executor(tmp_path: Path) -> None:
    state = tmp_path / "state" / "journal.sqlite"
    ex = AsyncExecutor(parallelism=2, log_dir=tmp_path / "logs", state_path=state)
    ex.start()
    ex.execute_async("long", ["sh", "-c", "sleep 1; exit 4"])
    ex.execute_async("short", ["true"])
    ex.end(timeout=0.3, detach=True)
    assert ex.detached == ["long"]
    assert ex.get_event_buffer()["short"][0] == TaskState.SUCCESS
    nxt = AsyncExecutor(parallelism=2, log_dir=tmp_path / "logs", state_path=state)
    nxt.start()
    try:
        assert nxt.adopt_all() == ["long"]
        info = drain(nxt)["long"][0][1]
    finally:
        nxt.end()
    assert info.returncode == 4


def test_retention_removes_the_logs_of_the_tasks_it_prunes(tmp_path: Path) -> None:
    """The default log directory sits beside the journal; without this it grew forever."""
    state, logs = tmp_path / "journal.sqlite", tmp_path / "logs"
    ex = AsyncExecutor(parallelism=1, log_dir=logs, state_path=state, retention_tasks=2)
    ex.start()
    try:
        for i in range(6):  # one at a time: ended in key order, so the first four are the oldest
            ex.queue_command(("t", i), ["sh", "-c", f"echo out {i}"])
            assert drain(ex)[("t", i)][0][0] == TaskState.SUCCESS
    finally:
        ex.end()
    assert len(list(logs.iterdir())) == 6
    nxt = AsyncExecutor(parallelism=1, log_dir=logs, state_path=state, retention_tasks=2)
    nxt.start()  # its journal's writer prunes first thing
    try:
        deadline = time.monotonic() + 30
        while len(list(logs.iterdir())) > 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        kept = sorted(path.read_text() for path in logs.iterdir())
    finally:
        nxt.end()
    assert kept == ["out 4\n", "out 5\n"]


def test_detach_needs_a_journal(tmp_path: Path) -> None:
    ex = AsyncExecutor(log_dir=tmp_path / "logs", state_path=None)
    ex.start()
    try:
        with pytest.raises(ValueError, match="needs a journal"):
            ex.end(detach=True)
    finally:
        ex.end()


@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(delay=st.floats(min_value=0.0, max_value=1.2))
def test_sigkill_at_a_random_point_loses_nothing(
    tmp_path_factory: pytest.TempPathFactory, delay: float
) -> None:
    tmp_path = tmp_path_factory.mktemp("crash")
    count = 12
    proc = start_life_one(tmp_path, count=count, parallelism=4)
    time.sleep(delay)
    kill(proc)
    seen = life_one_events(tmp_path)
    exits_before = _exits_files(tmp_path)  # recovery deletes them
    ex = second_life(tmp_path)
    try:
        ex.adopt_all()
        second = drain(ex, timeout=60)
    finally:
        ex.end()
    problems = []
    for i in range(count):
        key = ("t", i)
        first = seen.get(key, [])
        later = second.get(key, [])
        runs = runs_of(tmp_path, i)
        if first and later and all(info.redelivered for _, info in later):
            # Handed out by life one and not yet confirmed (that is, by its next call) when it
            # died: delivered again, marked, with the same status. A caller that keeps its own
            # records, as this harness does, drops it (at-least-once delivery, README).
            event("outcome seen by life one delivered again")
            if any((str(state), info.returncode) != tuple(first[0]) for state, info in later):
                problems.append(f"{key}: delivered again with another status: {first} / {later}")
            later = []
        if len(first) + len(later) != 1:
            problems.append(f"{key}: {len(first) + len(later)} terminal events, expected 1")
        elif runs > 1:
            problems.append(f"{key}: ran {runs} times")
        elif later and later[0][1].reason is FailureReason.NOT_STARTED:
            if runs:
                problems.append(f"{key}: reported not started, but it ran")
        elif (first[0][1] if first else later[0][1].returncode) != i % 3:
            problems.append(f"{key}: not its real exit status {i % 3}")
        elif runs != 1:
            problems.append(f"{key}: has an exit status but never ran")
    assert not problems, _diagnosis(tmp_path, delay, count, problems, seen, second, exits_before)


# Hands out both outcomes in one get_event_buffer() call, confirms them by calling again
# (argv "confirm") or not, makes the journal durable, says so, and waits to be killed.
HANDLER = r"""
import sys, time
from async_executor import AsyncExecutor
state, logs, mode = sys.argv[1:4]
ex = AsyncExecutor(parallelism=2, log_dir=logs, state_path=state)
ex.start()
ex.queue_command("fails", ["sh", "-c", "exit 3"])
ex.queue_command("works", ["true"])
while ex.queued_tasks or ex.running:
    ex.heartbeat()  # moves outcomes into the buffer; hands nothing out
    time.sleep(0.005)
events = ex.get_event_buffer()
assert sorted(events) == ["fails", "works"], events
if mode == "confirm":
    assert ex.get_event_buffer() == {}
ex.flush()
print("handled", flush=True)
time.sleep(60)
"""


@pytest.mark.parametrize("confirmed", [False, True], ids=["unconfirmed", "confirmed"])
def test_outcomes_handed_out_but_not_confirmed_are_delivered_again(tmp_path: Path, confirmed: bool) -> None:
    state, logs = tmp_path / "state" / "journal.sqlite", tmp_path / "logs"
    mode = "confirm" if confirmed else "crash"
    proc = subprocess.Popen(
        [PY, "-c", HANDLER, str(state), str(logs), mode], stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "handled"
    kill(proc)  # after the journal committed both outcomes, before (or after) the confirmation
    ex = second_life(tmp_path)
    try:
        ex.sync()
        events = ex.get_event_buffer()
    finally:
        ex.end()
    if confirmed:
        assert events == {}
    else:
        assert {
            key: (state_, info.returncode, info.redelivered) for key, (state_, info) in events.items()
        } == {
            "fails": (TaskState.FAILED, 3, True),
            "works": (TaskState.SUCCESS, 0, True),
        }
    # the second life confirmed them (its end()): a third one delivers nothing
    assert_nothing_to_deliver(tmp_path)


# Awaits one task through the async API, makes the journal durable, says so, waits to be killed.
AWAITER = r"""
import sys, time, anyio
from async_executor import AsyncExecutor
async def main() -> None:
    async with AsyncExecutor(parallelism=2, log_dir=sys.argv[2], state_path=sys.argv[1]) as ex:
        info = await ex.run("awaited", ["sh", "-c", "exit 4"])
        assert info.returncode == 4, info
        await ex.journal_flush()
        print("handled", flush=True)
        time.sleep(60)
anyio.run(main)
"""


def test_an_outcome_its_awaiting_caller_got_is_not_delivered_again(tmp_path: Path) -> None:
    state, logs = tmp_path / "state" / "journal.sqlite", tmp_path / "logs"
    proc = subprocess.Popen([PY, "-c", AWAITER, str(state), str(logs)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "handled"
    kill(proc)
    assert_nothing_to_deliver(tmp_path)


def test_end_confirms_what_the_caller_never_drained(tmp_path: Path) -> None:
    ex = second_life(tmp_path)
    ex.queue_command("k", ["true"])
    ex.end()  # the outcome waits in the buffer of a live, cleanly ended executor: it is its caller's
    assert ex.get_event_buffer()["k"][0] == TaskState.SUCCESS
    assert_nothing_to_deliver(tmp_path)


def _exits_files(tmp_path: Path) -> dict[str, str]:
    return {path.name: path.read_text() for path in sorted((tmp_path / "state").glob("exits-*.jsonl"))}


async def _journal_rows(state: Path, keys: list[Any]) -> dict[Any, Any]:
    journal = Journal(state)
    await journal.open()
    try:
        return {key: await journal.row(key, 1) for key in keys}
    finally:
        await journal.close()


def _diagnosis(
    tmp_path: Path,
    delay: float,
    count: int,
    problems: list[str],
    seen: dict[Any, list[tuple[str, int | None]]],
    second: dict[Any, list[tuple[TaskState, Any]]],
    exits_before: dict[str, str],
) -> str:
    """Everything needed to tell which life lost or doubled what, for a failure message."""
    keys = [("t", i) for i in range(count)]
    rows = anyio.run(_journal_rows, tmp_path / "state" / "journal.sqlite", keys)
    lines = [f"killed after {delay:.3f}s; state in {tmp_path}", *problems, "per task:"]
    for i, key in enumerate(keys):
        row = rows[key]
        journal = "no row" if row is None else f"{row.state} pid={row.pid} rc={row.returncode} {row.detail!r}"
        later = [
            (str(state), info.returncode, info.reason, info.detail, "redelivered" if info.redelivered else "")
            for state, info in second.get(key, [])
        ]
        lines.append(
            f"  {key}: runs={runs_of(tmp_path, i)} life1={seen.get(key, [])} life2={later} journal: {journal}"
        )
    for name, text in exits_before.items():
        lines.append(f"{name} when life one was killed:")
        lines.extend(f"  {line}" for line in text.splitlines())
    for log in sorted((tmp_path / "state").glob("supervisor-*.log")):
        lines.append(f"{log.name}:")
        lines.extend(f"  {line}" for line in log.read_text().splitlines()[-20:])
    return "\n".join(lines)


def test_task_ending_while_the_next_executor_connects_keeps_its_status(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A task that ends between recovery's read of the exits file and the supervisor's greeting.

    Recovery once read the exits file before connecting to the supervisor: such a task was in
    neither (no exit yet in the file, no longer a child in the greeting) and was reported with
    no exit status (or as never started, although it ran). The read is held open here until the
    task has ended and its exit is recorded, so the window is hit every time.
    """
    release = tmp_path / "release"
    proc = start_life_one(
        tmp_path, count=1, parallelism=1, template=f"while [ ! -e {release} ]; do sleep 0.01; done; exit 2"
    )
    wait_for_file(tmp_path / "markers" / "0")
    kill(proc)
    read_exits = _durable.read_exits

    def read_then_let_the_task_end(path: str) -> Any:
        found = read_exits(path)  # the task still runs: no exit in the file yet
        release.touch()
        deadline = time.monotonic() + 10
        while not read_exits(path)[1]:  # its exit is recorded by the supervisor
            assert time.monotonic() < deadline, "the task did not end"
            time.sleep(0.01)
        return found

    monkeypatch.setattr(_durable, "read_exits", read_then_let_the_task_end)
    ex = second_life(tmp_path)
    try:
        ex.adopt_all()
        events = drain(ex)
    finally:
        ex.end()
    assert [(state, info.returncode) for state, info in events[("t", 0)]] == [(TaskState.FAILED, 2)]
    assert runs_of(tmp_path, 0) == 1


async def _dead_executor_with_unjournaled_starts(state: Path, alive: int) -> None:
    """Rows still ``queued`` in the journal whose tasks the supervisor's exits file says it started."""
    journal = Journal(state)
    await journal.open()
    await journal.register_executor("deadbeef", pid=999_999, proc_start=1, supervisor_socket=None)
    for number in (1, 2):
        journal.accepted("deadbeef", TaskSpec(key=("spawned", number), argv=("sleep", "60")), accepted_at=0.0)
    await journal.close()
    records = [
        {"ev": "spawn", "id": 1, "tag": [["spawned", 1], 1], "pid": alive, "start": proc_start_ticks(alive)},
        {"ev": "spawn", "id": 2, "tag": [["spawned", 2], 1], "pid": 999_999, "start": 1},
    ]
    (state.parent / "exits-deadbeef.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))


def test_a_started_task_the_journal_had_as_queued_is_not_reported_unstarted(tmp_path: Path) -> None:
    """Executor and supervisor both gone; the spawn record outranks the journal's ``queued``.

    Reported as never started, a task that did run would be queued again by the caller.
    """
    state = tmp_path / "state" / "journal.sqlite"
    other = subprocess.Popen(["sleep", "30"])  # stands in for task 1, still running
    try:
        anyio.run(_dead_executor_with_unjournaled_starts, state, other.pid)
        ex = AsyncExecutor(log_dir=tmp_path / "logs", state_path=state)
        ex.start()
        try:
            events = recovered_events(ex)
            assert ex.queue_command(("spawned", 1), ["true"]) is False  # it still runs: never twice
        finally:
            ex.end()
        assert ("spawned", 1) not in events
        state_, info = events[("spawned", 2)]
        assert state_ == TaskState.FAILED
        assert info.reason is not FailureReason.NOT_STARTED
        assert "no exit status was recorded" in (info.detail or "")
        assert other.poll() is None  # left alone
    finally:
        other.kill()
        other.wait()


async def _dead_executor_and_supervisor_mid_launch(state: Path) -> None:
    """Rows still ``queued``; the exits file says a batch was about to be launched, then nothing:
    the supervisor died between its launch record and its spawn records."""
    journal = Journal(state)
    await journal.open()
    await journal.register_executor("deadbeef", pid=999_999, proc_start=1, supervisor_socket=None)
    for number in (1, 2):
        journal.accepted("deadbeef", TaskSpec(key=("batch", number), argv=("true",)), accepted_at=0.0)
    await journal.close()
    record = {"ev": "launch", "id": 1, "tag": [["batch", 1], 1]}
    (state.parent / "exits-deadbeef.jsonl").write_text(json.dumps(record) + "\n")


def test_a_task_its_dead_supervisor_was_launching_is_not_reported_unstarted(tmp_path: Path) -> None:
    """It may have run: reported failed with no status, not as never started (which a caller
    would take as "queue it again"). A task of the same executor never launched still is."""
    state = tmp_path / "state" / "journal.sqlite"
    anyio.run(_dead_executor_and_supervisor_mid_launch, state)
    ex = AsyncExecutor(log_dir=tmp_path / "logs", state_path=state)
    ex.start()
    try:
        ex.sync()
        events = ex.get_event_buffer()
    finally:
        ex.end()
    launching, never = events[("batch", 1)][1], events[("batch", 2)][1]
    assert launching.state == TaskState.FAILED and launching.reason is None
    assert "may have run" in (launching.detail or "")
    assert never.reason is FailureReason.NOT_STARTED


async def _plain_exits_do_not_wait_for_the_journal(tmp_path: Path) -> None:
    state, logs = tmp_path / "state" / "journal.sqlite", tmp_path / "logs"
    gate = anyio.Event()
    async with AsyncExecutor(parallelism=4, log_dir=logs, state_path=state, kill_grace=0.5) as ex:
        recorder = ex._engine.recorder
        assert recorder is not None
        commit = recorder.wait_durable

        async def held_commit() -> None:
            await gate.wait()
            await commit()

        recorder.wait_durable = held_commit  # type: ignore[method-assign]
        # plain exits are in the supervisor's exits file before the engine hears of them
        with anyio.fail_after(30):
            ok = await ex.run("works", ["true"])
            bad = await ex.run("fails", ["sh", "-c", "exit 3"])
        assert (ok.state, bad.state, bad.returncode) == (TaskState.SUCCESS, TaskState.FAILED, 3)
        # a timeout is the engine's verdict, not in that record: it waits for the journal
        handle = await ex.submit("slow", ["sleep", "30"], timeout=0.2)
        with anyio.fail_after(30):
            while ex._engine.counters["timed_out"] == 0:
                await anyio.sleep(0.01)
        await anyio.sleep(0.1)
        assert not handle.done()
        gate.set()
        with anyio.fail_after(30):
            slow = await handle.wait()
        assert slow.reason is FailureReason.TIMED_OUT


def test_a_plain_exit_is_reported_before_its_journal_commit(tmp_path: Path) -> None:
    """The supervisor's exits record makes it durable already; the journal row follows."""
    anyio.run(_plain_exits_do_not_wait_for_the_journal, tmp_path)
    assert_nothing_to_deliver(tmp_path)  # all three were journaled, as reported


async def _dead_executor_whose_exits_were_reported(state: Path) -> None:
    """Rows still ``running``; the exits file has both exits, one sent to the live executor."""
    journal = Journal(state)
    await journal.open()
    await journal.register_executor("deadbeef", pid=999_999, proc_start=1, supervisor_socket=None)
    for number in (1, 2):
        journal.accepted("deadbeef", TaskSpec(key=("ended", number), argv=("true",)), accepted_at=0.0)
        pid = 999_990 + number
        journal.started(
            "deadbeef", ("ended", number), 1, pid=pid, pgid=pid, proc_start=1, log_path=None, started_at=1.0
        )
    await journal.close()
    records = [
        {
            "ev": "exit",
            "id": 1,
            "tag": [["ended", 1], 1],
            "pid": 999_991,
            "rc": 0,
            "sig": None,
            "t": 2.0,
            "o": 1,
        },
        {"ev": "exit", "id": 2, "tag": [["ended", 2], 1], "pid": 999_992, "rc": 2, "sig": None, "t": 3.0},
    ]
    (state.parent / "exits-deadbeef.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))


def test_an_exit_its_executor_may_have_reported_is_delivered_as_a_repeat(tmp_path: Path) -> None:
    """A plain exit is reported before the journal has it: after a crash, its exit record (sent
    to a connected executor) gives it back marked ``redelivered``, and it is journaled."""
    state = tmp_path / "state" / "journal.sqlite"
    anyio.run(_dead_executor_whose_exits_were_reported, state)
    ex = AsyncExecutor(log_dir=tmp_path / "logs", state_path=state)
    ex.start()
    try:
        events = recovered_events(ex)
    finally:
        ex.end()
    reported, unseen = events[("ended", 1)][1], events[("ended", 2)][1]
    assert (reported.state, reported.returncode, reported.redelivered) == (TaskState.SUCCESS, 0, True)
    assert "may have reported it" in (reported.detail or "")
    assert (unseen.state, unseen.returncode, unseen.redelivered) == (TaskState.FAILED, 2, False)
    assert "ended while no executor ran" in (unseen.detail or "")
    assert_nothing_to_deliver(tmp_path)  # journaled by the second life, confirmed at its end
