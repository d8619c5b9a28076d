"""Shared fixtures: real subprocesses, a started executor, and the anyio backends to test on."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from async_executor import AsyncExecutor, TaskInfo, TaskState, WarmStart

PY = sys.executable

try:
    import uvloop  # noqa: F401

    HAVE_UVLOOP = True
except ImportError:  # pragma: no cover
    HAVE_UVLOOP = False

BACKENDS = [pytest.param(("asyncio", {"use_uvloop": False}), id="asyncio")]
if HAVE_UVLOOP:
    BACKENDS.append(pytest.param(("asyncio", {"use_uvloop": True}), id="asyncio+uvloop"))
LOOPS = ["asyncio", "uvloop"] if HAVE_UVLOOP else ["asyncio"]


@pytest.fixture(params=BACKENDS)
def anyio_backend(request: pytest.FixtureRequest) -> Any:
    """Every async test runs on asyncio with and without uvloop."""
    return request.param


#: Warm start for the tests' own Python commands (``python -c ...``): forked by a fork server.
WARM = WarmStart(inline_code=True, modules=("json.tool",), preload=("json", "subprocess"))

# Each sync-façade test runs in four modes that together cover both loops, both backends, both
# launchers and both ways of capturing output: tasks spawned in this process (no journal), the
# same with lazy logs (output in memory files until a task ends), tasks owned by the supervisor
# process, and the supervisor with warm start (its ``python -c`` tasks come from the fork server)
# and lazy logs (memory files held by the supervisor, passed to the fork server).
MODES = [pytest.param({"loop": "asyncio", "state_path": None}, id="asyncio-local")]
MODES.append(
    pytest.param(
        {"loop": "uvloop" if HAVE_UVLOOP else "asyncio", "state_path": None, "lazy_logs": True},
        id="uvloop-local-lazy-logs",
    )
)
MODES.append(pytest.param({"loop": "uvloop" if HAVE_UVLOOP else "asyncio"}, id="uvloop-supervisor"))
MODES.append(
    pytest.param({"loop": "asyncio", "warm_start": WARM, "lazy_logs": True}, id="warm-supervisor-lazy-logs")
)


@pytest.fixture(params=MODES)
def mode(request: pytest.FixtureRequest, tmp_path: Path) -> dict[str, Any]:
    options = dict(request.param)
    options.setdefault("state_path", tmp_path / "state" / "journal.sqlite")
    return options


@pytest.fixture
def log_dir(tmp_path: Path) -> Path:
    return tmp_path / "logs"


@pytest.fixture
def executor(log_dir: Path, mode: dict[str, Any]) -> Iterator[AsyncExecutor]:
    """A started sync-façade executor, terminated after the test whatever happens."""
    ex = AsyncExecutor(parallelism=8, log_dir=log_dir, kill_grace=1.0, **mode)
    ex.start()
    try:
        yield ex
    finally:
        ex.terminate()


def recovered_events(ex: AsyncExecutor) -> dict[Any, Any]:
    """What a just-started executor reports from earlier lives (recovery is done by start())."""
    events = ex.get_event_buffer()
    ex.sync()
    events.update(ex.get_event_buffer())
    return events


def drain(ex: AsyncExecutor, timeout: float = 60.0) -> dict[Any, list[tuple[TaskState, TaskInfo]]]:
    """Drive ``ex`` like a scheduler until nothing is queued or running; every event per key."""
    events: dict[Any, list[tuple[TaskState, TaskInfo]]] = {}
    deadline = time.monotonic() + timeout
    while ex.queued_tasks or ex.running:
        ex.heartbeat()
        for key, event in ex.get_event_buffer().items():
            events.setdefault(key, []).append(event)
        if time.monotonic() > deadline:
            raise AssertionError(f"tasks did not finish in {timeout}s: {ex!r}{supervisor_report(ex)}")
        time.sleep(0.002)
    ex.sync()
    for key, event in ex.get_event_buffer().items():
        events.setdefault(key, []).append(event)
    return events


def supervisor_report(ex: AsyncExecutor) -> str:
    """What the executor's supervisor (if any) logged, and whether it runs: for a stuck test."""
    backend = ex._engine.backend
    path = getattr(backend, "_log_path", None)
    if path is None:
        return ""
    pid = getattr(backend, "supervisor_pid", None)
    try:
        text = Path(path).read_text(errors="replace")[-6000:]
    except OSError as exc:
        text = f"(no log: {exc})"
    alive = pid is not None and pid_alive(pid)
    return f"\nsupervisor pid {pid} ({'running' if alive else 'gone'}); its log:\n{text}"


def pid_alive(pid: int) -> bool:
    """True if ``pid`` exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError):
        return False


def wait_for_file(path: Path, timeout: float = 10.0) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and path.stat().st_size > 0:
            time.sleep(0.05)
            return path.read_text()
        time.sleep(0.01)
    raise AssertionError(f"{path} did not appear within {timeout}s")


def group_members(pgid: int) -> list[int]:
    """Live (non-zombie) processes whose process group is ``pgid``."""
    members = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as handle:
                fields = handle.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            members.append(int(entry))
    return members


@pytest.fixture(autouse=True, scope="session")
def _private_state_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Executors created with the default state path write under a private directory."""
    home = tmp_path_factory.mktemp("state-home")
    old = os.environ.get("ASYNC_EXECUTOR_HOME")
    os.environ["ASYNC_EXECUTOR_HOME"] = str(home)
    yield
    if old is None:
        del os.environ["ASYNC_EXECUTOR_HOME"]
    else:
        os.environ["ASYNC_EXECUTOR_HOME"] = old


def adopt_three_after_crash(tmp_path: Path, pids: list[int]) -> None:
    """A fresh executor adopts tasks ("t", 0..2) of a killed one (exit status i, marker file
    m<i> written once per run) and reports each with its real status and pid, run once."""
    ex = AsyncExecutor(
        parallelism=4, log_dir=tmp_path / "logs", state_path=tmp_path / "state" / "j.sqlite", kill_grace=0.5
    )
    ex.start()
    try:
        assert sorted(ex.adopt_all()) == [("t", i) for i in range(3)]
        events = drain(ex)
    finally:
        ex.end()
    for i in range(3):
        state, info = events[("t", i)][0]
        assert info.returncode == i and info.pid == pids[i]
        assert state == (TaskState.SUCCESS if i == 0 else TaskState.FAILED)
        assert len((tmp_path / f"m{i}").read_text().splitlines()) == 1  # ran once


def warm_three_then_wait(tmp_path: Path, *, fork_from_caller: bool = False) -> str:
    """A program (for ``python -c``) that runs an executor with warm start, launches tasks
    ("t", 0..2) warm (each appends its pid to m<i>, sleeps 1.5 s, exits i), prints "running"
    (and, forked from the caller, the supervisor's pid), then waits to be killed."""
    said = ", ex._engine.backend.supervisor_pid" if fork_from_caller else ""
    return f"""
import sys, time
from async_executor import AsyncExecutor, WarmStart
ex = AsyncExecutor(parallelism=4, log_dir={str(tmp_path / "logs")!r},
                   state_path={str(tmp_path / "state" / "j.sqlite")!r},
                   warm_start=WarmStart(inline_code=True, fork_from_caller={fork_from_caller!r}))
ex.start()
for i in range(3):
    ex.queue_command(("t", i), [sys.executable, "-c",
        "import os, sys, time; open(sys.argv[1], 'a').write(str(os.getpid()) + chr(10)); "
        "time.sleep(1.5); sys.exit(int(sys.argv[2]))", {str(tmp_path)!r} + f"/m{{i}}", str(i)])
while ex.statistics().warm_launched < 3:
    ex.heartbeat(); time.sleep(0.01)
print("running"{said}, flush=True)
time.sleep(600)
"""
