"""Lazy logs: output in memory files, a log file only for a task that wrote something."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from async_executor import AsyncExecutor, TaskState, _memlogs

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


@pytest.mark.anyio
async def test_executor_outcomes_carry_a_log_path_only_for_output(tmp_path: Path) -> None:
    log_dir = tmp_path / "logs"
    async with AsyncExecutor(parallelism=4, log_dir=log_dir, state_path=None, lazy_logs=True) as ex:
        silent = await ex.run("silent", ["true"])
        talker = await ex.run("talker", ["sh", "-c", "echo out; echo err >&2; exit 3"])
        missing = await ex.run("missing", ["/no/such/program"])
    assert silent.state is TaskState.SUCCESS and silent.log_path is None
    assert talker.state is TaskState.FAILED and talker.returncode == 3
    assert talker.log_path is not None
    assert sorted(Path(talker.log_path).read_text().splitlines()) == ["err", "out"]
    assert missing.state is TaskState.FAILED and "could not start" in (missing.detail or "")
    assert [p.name for p in log_dir.iterdir()] == [Path(talker.log_path).name]


def test_get_task_log_of_a_silent_task_says_there_is_no_output(tmp_path: Path) -> None:
    ex = AsyncExecutor(parallelism=2, log_dir=tmp_path, state_path=None, lazy_logs=True)
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


def test_lazy_logs_with_a_journal_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="lazy_logs needs state_path=None"):
        AsyncExecutor(state_path=tmp_path / "journal.sqlite", lazy_logs=True)


@pytest.mark.anyio
async def test_no_memory_file_outlives_its_task(tmp_path: Path) -> None:
    """Started, failed to start, timed out or terminated: every memory file is closed."""

    def memfds() -> int:
        count = 0
        for fd in os.listdir("/proc/self/fd"):
            try:
                count += os.readlink(f"/proc/self/fd/{fd}").startswith("/memfd:")
            except OSError:
                pass
        return count

    before = memfds()
    async with AsyncExecutor(parallelism=8, log_dir=tmp_path, state_path=None, lazy_logs=True) as ex:
        handles = [await ex.submit(("ok", i), ["sh", "-c", f"echo {i}"]) for i in range(20)]
        handles.append(await ex.submit("bad", ["/no/such/program"]))
        handles.append(await ex.submit("slow", ["sleep", "30"], timeout=0.2))
        for handle in handles:
            await handle.wait()
        await ex.submit("left", ["sleep", "30"])
        await ex.aterminate()
    assert memfds() == before
