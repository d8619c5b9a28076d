"""Timeouts, terminate() and end(): whole process groups die, each task reports exactly once."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Any

import pytest

from async_executor import AsyncExecutor, ExecutorClosedError, FailureReason, TaskState

from .conftest import PY, drain, group_members, pid_alive, wait_for_file

# Starts a grandchild that ignores SIGTERM, writes "<child pid> <grandchild pid>", then ignores
# SIGTERM itself and sleeps: the worst case for stopping a task.
STUBBORN = """
import os, signal, subprocess, sys, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)
grandchild = subprocess.Popen([sys.executable, "-c",
    "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(600)"])
with open(sys.argv[1] + ".tmp", "w") as f:
    f.write(f"{os.getpid()} {grandchild.pid}")
os.rename(sys.argv[1] + ".tmp", sys.argv[1])
time.sleep(600)
"""

# Exits on SIGTERM but leaves a grandchild that ignores it.
POLITE_PARENT = """
import os, subprocess, sys, time
grandchild = subprocess.Popen([sys.executable, "-c",
    "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(600)"])
with open(sys.argv[1] + ".tmp", "w") as f:
    f.write(f"{os.getpid()} {grandchild.pid}")
os.rename(sys.argv[1] + ".tmp", sys.argv[1])
time.sleep(600)
"""


def pids_from(path: Path) -> list[int]:
    return [int(p) for p in wait_for_file(path).split()]


def assert_gone(pids: list[int], within: float) -> None:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if not any(pid_alive(pid) for pid in pids):
            return
        time.sleep(0.02)
    alive = [pid for pid in pids if pid_alive(pid)]
    for pid in alive:
        os.kill(pid, signal.SIGKILL)
    raise AssertionError(f"processes survived: {alive}")


@pytest.mark.parametrize("script", [STUBBORN, POLITE_PARENT], ids=["ignores-term", "leaves-grandchild"])
def test_timeout_kills_the_whole_group(tmp_path: Path, script: str, mode: dict[str, Any]) -> None:
    ex = AsyncExecutor(parallelism=2, log_dir=tmp_path / "logs", kill_grace=0.5, **mode)
    ex.start()
    try:
        ex.queue_command("slow", [PY, "-c", script, str(tmp_path / "pids")], timeout=1.0)
        ex.queue_command("quick", ["true"], timeout=30)
        events = drain(ex)
        pids = pids_from(tmp_path / "pids")
        assert_gone(pids, within=1.0)
    finally:
        ex.end()
    state, info = events["slow"][0]
    assert len(events["slow"]) == 1
    assert state == TaskState.FAILED and info.reason is FailureReason.TIMED_OUT
    assert info.detail == "timed out after 1s"
    assert info.duration is not None and info.duration >= 1.0
    assert events["quick"][0][0] == TaskState.SUCCESS
    assert ex.statistics().timed_out == 1


def test_timeout_through_executor_config(executor: AsyncExecutor) -> None:
    executor.execute_async("t", ["sleep", "30"], executor_config={"timeout": 0.3})
    info = drain(executor)["t"][0][1]
    assert info.reason is FailureReason.TIMED_OUT and info.signal == signal.SIGTERM


def test_terminate_stops_everything_within_grace(tmp_path: Path, mode: dict[str, Any]) -> None:
    grace = 1.0
    ex = AsyncExecutor(parallelism=4, log_dir=tmp_path / "logs", kill_grace=grace, **mode)
    ex.start()
    for i in range(2):
        ex.queue_command(("stubborn", i), [PY, "-c", STUBBORN, str(tmp_path / f"s{i}")])
        ex.queue_command(("polite", i), [PY, "-c", POLITE_PARENT, str(tmp_path / f"p{i}")])
    for i in range(3):
        ex.queue_command(("queued", i), ["sleep", "60"])  # no slot: never started
    ex.heartbeat()
    pids = [pid for name in ("s0", "s1", "p0", "p1") for pid in pids_from(tmp_path / name)]
    leaders = set(pids[::2])
    started = time.monotonic()
    ex.terminate()
    took = time.monotonic() - started
    assert_gone(pids, within=0.2)
    assert took < grace + 1.0 + 2.0  # generous on a loaded machine; the bound is grace + 1 s
    for pgid in leaders:
        assert group_members(pgid) == []
    events = ex.get_event_buffer()
    assert len(events) == 7
    for key, (state, info) in events.items():
        assert state == TaskState.FAILED
        assert info.reason is FailureReason.TERMINATED, key
    assert {key for key, (_, info) in events.items() if info.pid is None} == {("queued", i) for i in range(3)}
    assert not ex.running and not ex.queued_tasks
    with pytest.raises(ExecutorClosedError):
        ex.queue_command("late", ["true"])
    assert ex.statistics().terminated == 7
    # in warm mode the four Python tasks came from the fork server; `sleep` never goes warm
    assert ex.statistics().warm_launched == (4 if "warm_start" in mode else 0)


def test_end_with_timeout_terminates_leftovers(tmp_path: Path) -> None:
    ex = AsyncExecutor(parallelism=2, log_dir=tmp_path / "logs", kill_grace=0.5)
    ex.start()
    ex.queue_command("fast", ["true"])
    ex.queue_command("slow", ["sleep", "60"])
    ex.heartbeat()
    started = time.monotonic()
    ex.end(timeout=0.5)
    assert time.monotonic() - started < 5
    events = ex.get_event_buffer()
    assert events["fast"][0] == TaskState.SUCCESS
    assert events["slow"][1].reason is FailureReason.TERMINATED
    assert not pid_alive(events["slow"][1].pid or 0)


def test_terminate_and_end_before_start_are_harmless(tmp_path: Path) -> None:
    ex = AsyncExecutor(log_dir=tmp_path)
    ex.terminate()
    ex.end()
    with pytest.raises(ExecutorClosedError):
        ex.queue_command("k", ["true"])


def test_executor_left_running_is_terminated_at_exit(tmp_path: Path) -> None:
    """A program that forgets end() exits anyway, and its tasks die with it."""
    import subprocess

    pidfile = tmp_path / "pid"
    program = f"""
import time
from async_executor import AsyncExecutor
ex = AsyncExecutor(log_dir={str(tmp_path / "logs")!r}, kill_grace=0.5)
ex.start()
ex.queue_command("forgotten", ["sh", "-c", "echo $$ > {pidfile}; exec sleep 600"])
ex.heartbeat()
while not __import__("os").path.exists({str(pidfile)!r}):
    time.sleep(0.01)
"""
    result = subprocess.run([PY, "-c", program], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    assert "was not ended; terminating its tasks at exit" in result.stderr
    assert_gone([int(pidfile.read_text())], within=1.0)
