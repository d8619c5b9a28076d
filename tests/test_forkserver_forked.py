"""Warm start with ``fork_from_caller``: the fork server is a fork of the executor's process.

It shares the caller's imported modules (what makes it cheap next to an Airflow scheduler),
and must still behave like the exec'd one where it matters: tasks are children of their
owner (the supervisor, or this process), nothing of the caller's descriptors, signal
handlers or ``atexit`` handlers reaches the tasks, a dead server is replaced, and tasks
outlive a SIGKILLed executor with their statuses recorded.
"""

from __future__ import annotations

import atexit
import json
import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from async_executor import AsyncExecutor, JournalError, TaskState, WarmStart

from .conftest import PY, adopt_three_after_crash, drain, pid_alive, wait_for_file, warm_three_then_wait

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="warm start needs Linux")

FORKED = WarmStart(inline_code=True, preload=("json",), fork_from_caller=True)

# What a task sees: its parent, whether the caller's marker module is imported, and where
# the descriptor number ``argv[1]`` (open in the caller on a pipe) points.
PROBE = r"""
import json, os, sys
fd = sys.argv[1]
try:
    target = os.readlink(f"/proc/self/fd/{fd}")
except OSError:
    target = None
print(json.dumps({"ppid": os.getppid(), "marker": "forked_marker_mod" in sys.modules, "fd": target,
                  "warm": "async_executor._forkserver" in sys.modules}))
"""


@pytest.fixture
def marker_module(tmp_path: Path) -> Iterator[str]:
    """A module only this process has imported (not in the fork server's preload)."""
    (tmp_path / "forked_marker_mod.py").write_text("VALUE = 1\n")
    sys.path.insert(0, str(tmp_path))
    try:
        __import__("forked_marker_mod")
        yield "forked_marker_mod"
    finally:
        sys.modules.pop("forked_marker_mod", None)
        sys.path.remove(str(tmp_path))


def forked_executor(tmp_path: Path, local: bool, **options: Any) -> AsyncExecutor:
    state = None if local else tmp_path / "state" / "j.sqlite"
    options.setdefault("warm_start", FORKED)
    ex = AsyncExecutor(parallelism=4, log_dir=tmp_path / "logs", kill_grace=0.5, state_path=state, **options)
    ex.start()
    return ex


def forkserver_of(ex: AsyncExecutor, local: bool) -> int:
    """The pid of the executor's fork server (under the supervisor: the supervisor's child)."""
    if local:
        pid = ex._engine.backend.forkserver.pid  # type: ignore[attr-defined]
        assert pid is not None
        return int(pid)
    supervisor = ex._engine.backend.supervisor_pid  # type: ignore[attr-defined]
    deadline = time.monotonic() + 30  # a just-forked server names itself a moment later
    while True:
        children = Path(f"/proc/{supervisor}/task/{supervisor}/children").read_text().split()
        servers = [
            int(pid) for pid in children if "_forkserver" in cmdline(int(pid)) or forked_server(int(pid))
        ]
        if servers or time.monotonic() > deadline:
            break
        time.sleep(0.01)
    assert len(servers) == 1, children
    return servers[0]


def forked_server(pid: int) -> bool:
    """Is ``pid`` a fork server forked from its owner (titled so, or named so without setproctitle)?"""
    if "--forked-from" in cmdline(pid):
        return True
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip() == "forkserver"
    except OSError:
        return False


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_text().replace("\0", " ")
    except OSError:
        return ""


@pytest.mark.parametrize("local", [True, False], ids=["local", "supervisor"])
def test_the_server_shares_the_callers_modules_but_not_its_descriptors(
    tmp_path: Path, local: bool, marker_module: str
) -> None:
    r, w = os.pipe()  # open in this process when it forks
    try:
        ex = forked_executor(tmp_path, local)
        try:
            ex.queue_command("a", [PY, "-c", PROBE, str(r)])
            ex.queue_command("b", [PY, "-c", PROBE, str(r)])
            events = drain(ex)
            stats = ex.statistics()
            server = forkserver_of(ex, local)
            assert forked_server(server)  # forked, not exec'd (titled once it has started)
            os.close(w)
            w = -1
            # nobody else holds the write end: EOF (a leaked copy would block this for good)
            assert select.select([r], [], [], 30)[0] == [r] and os.read(r, 1) == b""
            owner = os.getpid() if local else ex._engine.backend.supervisor_pid  # type: ignore[attr-defined]
            server_parent = int(Path(f"/proc/{server}/stat").read_text().rsplit(")", 1)[1].split()[1])
        finally:
            ex.end()
    finally:
        os.close(r)
        if w >= 0:
            os.close(w)
    assert stats.warm_launched == 2
    assert server_parent == owner  # so the tasks it forks are the owner's children
    for key in ("a", "b"):
        state, info = events[key][0]
        assert state == TaskState.SUCCESS
        seen = json.loads(Path(info.log_path or "").read_text().splitlines()[0])
        assert seen["ppid"] == owner
        assert seen["marker"]  # imported by the caller before start(): shared, not re-imported
        assert seen["fd"] in (None, "/dev/null")  # the caller's pipe is not the task's


def test_the_callers_signal_and_atexit_handlers_do_not_reach_tasks(tmp_path: Path) -> None:
    ran = tmp_path / "atexit-ran"

    def caller_atexit() -> None:
        with open(ran, "a") as handle:
            handle.write(f"{os.getpid()}\n")

    previous = signal.signal(signal.SIGUSR1, lambda *_: None)  # a fresh interpreter dies of it
    atexit.register(caller_atexit)
    try:
        ex = forked_executor(tmp_path, local=False)
    finally:
        signal.signal(signal.SIGUSR1, previous)
        atexit.unregister(caller_atexit)
    try:
        ex.queue_command("sig", [PY, "-c", "import os, signal; os.kill(os.getpid(), signal.SIGUSR1)"])
        ex.queue_command("int", [PY, "-c", "import signal; print(signal.getsignal(signal.SIGINT).__name__)"])
        ex.queue_command("exit", [PY, "-c", "import atexit; atexit.register(print, 'own atexit')"])
        events = drain(ex)
        stats = ex.statistics()
    finally:
        ex.end()
    assert stats.warm_launched == 3
    assert events["sig"][0][1].signal == signal.SIGUSR1
    assert Path(events["int"][0][1].log_path or "").read_text().strip() == "default_int_handler"
    assert Path(events["exit"][0][1].log_path or "").read_text().strip() == "own atexit"
    assert not ran.exists()  # the caller's handler ran in no task


@pytest.mark.parametrize("local", [True, False], ids=["local", "supervisor"])
def test_a_dead_forked_server_is_replaced_by_an_execd_one(tmp_path: Path, local: bool) -> None:
    ex = forked_executor(tmp_path, local)
    try:
        first = forkserver_of(ex, local)
        os.kill(first, signal.SIGKILL)
        for i in range(3):
            ex.queue_command(i, [PY, "-c", "pass"])
            drain(ex)
        second = forkserver_of(ex, local)
        stats = ex.statistics()
        second_cmdline = cmdline(second)
        second_forked = forked_server(second)
    finally:
        ex.end()
    assert second != first and not pid_alive(first)
    assert "_forkserver" in second_cmdline and not second_forked
    assert stats.succeeded == 3 and stats.warm_launched >= 2  # the first may race the death: cold


def test_warm_start_off_or_async_api_means_no_fork(tmp_path: Path) -> None:
    """Without ``fork_from_caller`` nothing is forked at start(); the server starts lazily."""
    ex = forked_executor(tmp_path, local=False, warm_start=WarmStart(inline_code=True))
    try:
        supervisor = ex._engine.backend.supervisor_pid  # type: ignore[attr-defined]
        children = Path(f"/proc/{supervisor}/task/{supervisor}/children").read_text().split()
    finally:
        ex.end()
    assert children == []


def test_forked_warm_tasks_outlive_a_killed_executor(tmp_path: Path) -> None:
    """SIGKILL the executor: its forked-server tasks run on, and their exits are adopted."""
    program = warm_three_then_wait(tmp_path, fork_from_caller=True)
    proc = subprocess.Popen([PY, "-c", program], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    word, supervisor = proc.stdout.readline().split()
    assert word == "running"
    pids = [int(wait_for_file(tmp_path / f"m{i}").split()[0]) for i in range(3)]
    children = Path(f"/proc/{supervisor}/task/{supervisor}/children").read_text().split()
    servers = [int(pid) for pid in children if forked_server(int(pid))]
    assert len(servers) == 1
    proc.kill()
    proc.wait()
    proc.stdout.close()
    adopt_three_after_crash(tmp_path, pids)
    deadline = time.monotonic() + 30  # the supervisor, done, lets its fork server go
    while pid_alive(servers[0]) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not pid_alive(servers[0])


def test_a_failed_start_lets_the_forked_supervisor_and_server_go(tmp_path: Path) -> None:
    """start() fails after prefork() (here: a journal that is not SQLite): nothing is left."""
    state = tmp_path / "state" / "j.sqlite"
    state.parent.mkdir()
    state.write_bytes(b"not a database" * 100)
    ex = AsyncExecutor(parallelism=2, log_dir=tmp_path / "logs", state_path=state, warm_start=FORKED)
    with pytest.raises(JournalError):
        ex.start()
    supervisor = ex._engine.backend.supervisor_pid  # type: ignore[attr-defined]
    assert supervisor is not None
    deadline = time.monotonic() + 30  # it sees EOF, has no task, exits (and is reaped)
    while pid_alive(supervisor) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not pid_alive(supervisor)
