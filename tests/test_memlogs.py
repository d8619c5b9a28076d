"""Lazy logs: output in memory files, a log file only for a task that wrote something."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import anyio
import orjson
import pytest

from async_executor import AsyncExecutor, TaskState, _memlogs
from async_executor._journal import Journal
from async_executor._records import TaskSpec

from .conftest import recovered_events

pytestmark = pytest.mark.skipif(not _memlogs.AVAILABLE, reason="no memfd_create on this platform")


# --------------------------------------------------------------------------- MemoryLogs itself


def test_a_log_file_only_for_output(tmp_path: Path) -> None:
    logs = _memlogs.MemoryLogs(max_bytes=None, name_log=lambda token: str(tmp_path / "logs" / f"{token}.log"))
    silent = logs.open("silent")
    talker = logs.open("talker")
    os.write(talker, b"hello\n")
    assert logs.finish("silent") == (False, None)
    assert logs.finish("talker") == (True, None)
    assert (tmp_path / "logs" / "talker.log").read_bytes() == b"hello\n"
    assert [p.name for p in (tmp_path / "logs").iterdir()] == ["talker.log"]
    assert logs.finish("talker") == (False, None)  # once
    for fd in (silent, talker):  # finish() closed the memory files
        with pytest.raises(OSError):
            os.fstat(fd)


def test_the_log_is_capped_keeping_its_head(tmp_path: Path) -> None:
    logs = _memlogs.MemoryLogs(max_bytes=200, name_log=lambda token: str(tmp_path / f"{token}.log"))
    fd = logs.open("k")
    os.write(fd, b"x" * 1000)
    assert logs.finish("k") == (True, None)
    data = (tmp_path / "k.log").read_bytes()
    assert len(data) == 200
    assert data.startswith(b"xxx") and data.endswith(b"truncated at the log size cap]\n")


def test_large_output_of_a_running_task_leaves_memory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_memlogs, "SPILL_BYTES", 4096)
    logs = _memlogs.MemoryLogs(max_bytes=None, name_log=lambda token: str(tmp_path / f"{token}.log"))
    fd = logs.open("k")
    child = os.dup(fd)  # what the task holds (its offset goes on growing)
    first = os.urandom(64 * 1024)
    os.write(child, first)
    logs._sweep()
    assert (tmp_path / "k.log").read_bytes() == first
    assert os.fstat(fd).st_blocks * 512 < len(first)  # punched out of the memory file
    os.write(child, b"tail\n")
    assert logs.finish("k") == (True, None)
    os.close(child)
    assert (tmp_path / "k.log").read_bytes() == first + b"tail\n"


def test_a_long_running_task_s_output_reaches_its_log_as_it_comes(tmp_path: Path) -> None:
    logs = _memlogs.MemoryLogs(max_bytes=None, name_log=lambda token: str(tmp_path / f"{token}.log"))
    fd = logs.open("k")
    logs._sweep()  # the task is running at the first sweep
    os.write(fd, b"early\n")
    logs._sweep()  # ... and still at the next: its new output goes to its log
    assert (tmp_path / "k.log").read_bytes() == b"early\n"
    quick = logs.open("q")
    os.write(quick, b"x")
    logs._sweep()  # a task seen for the first time keeps small output in memory
    assert not (tmp_path / "q.log").exists()
    assert logs.finish("k") == (True, None)
    assert logs.finish("q") == (True, None)


def test_a_write_error_is_reported_not_raised(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    logs = _memlogs.MemoryLogs(max_bytes=None, name_log=lambda token: str(blocker / f"{token}.log"))
    fd = logs.open("k")
    os.write(fd, b"lost\n")
    written, problem = logs.finish("k")
    assert not written
    assert problem is not None and "could not all be written" in problem


# --------------------------------------------------------------------------- through the executor

#: Lazy logs in this process (no journal) and in the supervisor process (with a journal).
BACKENDS = [pytest.param(False, id="local"), pytest.param(True, id="supervisor")]


def _state(tmp_path: Path, journal: bool) -> Path | None:
    return tmp_path / "state" / "journal.sqlite" if journal else None


@pytest.mark.anyio
@pytest.mark.parametrize("journal", BACKENDS)
async def test_executor_outcomes_carry_a_log_path_only_for_output(tmp_path: Path, journal: bool) -> None:
    log_dir = tmp_path / "logs"
    state = _state(tmp_path, journal)
    async with AsyncExecutor(parallelism=4, log_dir=log_dir, state_path=state, lazy_logs=True) as ex:
        silent = await ex.run("silent", ["true"])
        talker = await ex.run("talker", ["sh", "-c", "echo out; echo err >&2; exit 3"])
        missing = await ex.run("missing", ["/no/such/program"])
    assert silent.state is TaskState.SUCCESS and silent.log_path is None
    assert talker.state is TaskState.FAILED and talker.returncode == 3
    assert talker.log_path is not None
    assert sorted(Path(talker.log_path).read_text().splitlines()) == ["err", "out"]
    assert missing.state is TaskState.FAILED and "could not start" in (missing.detail or "")
    assert [p.name for p in log_dir.iterdir()] == [Path(talker.log_path).name]
    if state is not None:  # the journal has the same: a path only for the task that wrote
        journal_ = Journal(state)
        await journal_.open()
        try:
            rows = {key: await journal_.row(key) for key in ("silent", "talker")}
        finally:
            await journal_.close()
        assert {key: row.log_path if row else "?" for key, row in rows.items()} == {
            "silent": None,
            "talker": talker.log_path,
        }


@pytest.mark.parametrize("journal", BACKENDS)
def test_get_task_log_of_a_silent_task_says_there_is_no_output(tmp_path: Path, journal: bool) -> None:
    ex = AsyncExecutor(
        parallelism=2, log_dir=tmp_path / "logs", state_path=_state(tmp_path, journal), lazy_logs=True
    )
    ex.start()
    try:
        ex.queue_command("silent", ["true"])
        ex.queue_command("talker", ["echo", "hi"])
        events: dict[Any, Any] = {}
        while len(events) < 2:
            ex.heartbeat()
            events.update(ex.get_event_buffer())
    finally:
        ex.end()
    assert ex.get_task_log("silent")[1] == []
    assert ex.get_task_log("silent")[0][0].startswith("No captured output")
    assert ex.get_task_log("talker")[1] == ["hi\n"]


@pytest.mark.anyio
async def test_a_running_task_s_output_reaches_its_log_under_the_supervisor(tmp_path: Path) -> None:
    """The supervisor spills a running task's output to its log file, as this process does."""
    log_dir = tmp_path / "logs"
    state = _state(tmp_path, True)
    async with AsyncExecutor(parallelism=2, log_dir=log_dir, state_path=state, lazy_logs=True) as ex:
        handle = await ex.submit("chatty", ["sh", "-c", "echo first; exec sleep 30"])
        with anyio.fail_after(30):
            while not list(log_dir.glob("*.log")) or not next(log_dir.glob("*.log")).read_text():
                await anyio.sleep(0.05)
        assert next(log_dir.glob("*.log")).read_text() == "first\n"
        await ex.aterminate()
        info = await handle.wait()
    assert info.log_path is not None and Path(info.log_path).read_text() == "first\n"


def _memfds(pid: int | str) -> int:
    """The memory files process ``pid`` holds (none once it has exited)."""
    count = 0
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except FileNotFoundError:
        return 0
    for fd in fds:
        try:
            count += os.readlink(f"/proc/{pid}/fd/{fd}").startswith("/memfd:")
        except OSError:
            pass
    return count


@pytest.mark.anyio
@pytest.mark.parametrize("journal", BACKENDS)
async def test_no_memory_file_outlives_its_task(tmp_path: Path, journal: bool) -> None:
    """Started, failed to start, timed out or terminated: every memory file is closed (in the
    process that holds them: this one, or the supervisor)."""
    before = _memfds("self")
    async with AsyncExecutor(
        parallelism=8, log_dir=tmp_path / "logs", state_path=_state(tmp_path, journal), lazy_logs=True
    ) as ex:
        holder = getattr(ex._engine.backend, "supervisor_pid", None) or "self"
        handles = [await ex.submit(("ok", i), ["sh", "-c", f"echo {i}"]) for i in range(20)]
        handles.append(await ex.submit("bad", ["/no/such/program"]))
        handles.append(await ex.submit("slow", ["sleep", "30"], timeout=0.2))
        for handle in handles:
            await handle.wait()
        left = await ex.submit("left", ["sleep", "30"])
        while ex._engine.pid_of("left") is None:
            await anyio.sleep(0.01)
        assert _memfds(holder) == (before if holder == "self" else 0) + 1  # the one running task's
        await ex.aterminate()
        await left.wait()
        if holder != "self":
            assert _memfds(holder) == 0  # the supervisor holds none after its tasks ended
    assert _memfds("self") == before


async def _dead_executor_with_lazy_logs(state: Path, log_dir: Path) -> None:
    """A dead executor whose supervisor recorded two lazy-log exits: one wrote, one did not."""
    journal = Journal(state)
    await journal.open()
    await journal.register_executor("deadbeef", pid=999_999, proc_start=1, supervisor_socket=None)
    for name in ("silent", "talker"):
        journal.accepted("deadbeef", TaskSpec(key=name, argv=("true",)), accepted_at=0.0)
        journal.started(
            "deadbeef", name, 1, pid=999_990, pgid=999_990, proc_start=1, log_path=None, started_at=1.0
        )
    await journal.close()
    written = log_dir / "talker.1.log"
    written.write_text("said something\n")
    records = [
        {"ev": "exit", "id": 1, "tag": ["silent", 1], "pid": 999_990, "rc": 0, "sig": None, "t": 2.0, "w": 0},
        {
            "ev": "exit",
            "id": 2,
            "tag": ["talker", 1],
            "pid": 999_990,
            "rc": 0,
            "sig": None,
            "t": 2.0,
            "log": str(written),
        },
    ]
    (state.parent / "exits-deadbeef.jsonl").write_text(
        "".join(orjson.dumps(r).decode() + "\n" for r in records)
    )


def test_recovery_knows_which_lazy_logs_were_written(tmp_path: Path) -> None:
    """The journal learns a lazy log's path with the outcome; the exit record has it meanwhile."""
    state, log_dir = tmp_path / "state" / "journal.sqlite", tmp_path / "logs"
    state.parent.mkdir()
    log_dir.mkdir()
    anyio.run(_dead_executor_with_lazy_logs, state, log_dir)
    ex = AsyncExecutor(log_dir=log_dir, state_path=state, lazy_logs=True)
    ex.start()
    try:
        events = recovered_events(ex)
    finally:
        ex.end()
    assert events["silent"][1].log_path is None
    assert events["talker"][1].log_path == str(log_dir / "talker.1.log")
