"""Warm start: the fork server forks Python tasks that behave like freshly exec'd ones.

The engine-level behaviour (timeouts, terminate, parallelism, bad input) runs over both
launchers through the ``warm-supervisor-lazy-logs`` mode in conftest; this file covers what is
particular to warm launches: Python's start-up semantics, the rule, the fork server's
life (restart, threads, preload errors), the go pipe, its socket, and adoption.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import sys
import time
from pathlib import Path
from typing import Any

import attrs
import pytest

from async_executor import AsyncExecutor, FailureReason, TaskState, WarmStart
from async_executor._forkserver import ForkServer, same_python

from .conftest import PY, WARM, adopt_three_after_crash, drain, pid_alive, wait_for_file, warm_three_then_wait

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="warm start needs Linux")

# Prints what a task sees of its interpreter, as JSON, then exits with argv's last item.
PROBE = r"""
import gc, json, os, random, sys
print(json.dumps({
    "argv": sys.argv, "path0": sys.path[0], "cwd": os.getcwd(), "env": os.environ.get("PROBE"),
    "name": __name__, "pid": os.getpid(), "ppid": os.getppid(), "pgid": os.getpgid(0),
    "sid": os.getsid(0), "stdin": sys.stdin.read(), "random": random.random(),
    "frozen": gc.get_freeze_count(), "warm": "async_executor._forkserver" in sys.modules,
    "cmdline": open("/proc/self/cmdline").read(),
}))
sys.exit(int(sys.argv[-1]))
"""


def warm_executor(tmp_path: Path, local: bool = True, **options: Any) -> AsyncExecutor:
    state: dict[str, Any] = {"state_path": None} if local else {"state_path": tmp_path / "state" / "j.sqlite"}
    options.setdefault("warm_start", WARM)
    ex = AsyncExecutor(parallelism=4, log_dir=tmp_path / "logs", kill_grace=0.5, **state, **options)
    ex.start()
    return ex


def probe_output(info: Any) -> dict[str, Any]:
    assert info.log_path is not None
    return dict(json.loads(Path(info.log_path).read_text().splitlines()[0]))


@pytest.mark.parametrize("local", [True, False], ids=["local", "supervisor"])
def test_a_warm_task_looks_like_a_fresh_interpreter(tmp_path: Path, local: bool) -> None:
    workdir = tmp_path / "work"
    workdir.mkdir()
    ex = warm_executor(tmp_path, local=local)
    try:
        ex.queue_command("a", [PY, "-c", PROBE, "x", "0"], env={"PROBE": "yes"}, cwd=str(workdir))
        ex.queue_command("b", [PY, "-c", PROBE, "3"])
        events = drain(ex)
        stats = ex.statistics()
    finally:
        ex.end()
    state_a, info_a = events["a"][0]
    state_b, info_b = events["b"][0]
    assert state_a == TaskState.SUCCESS and state_b == TaskState.FAILED and info_b.returncode == 3
    a, b = probe_output(info_a), probe_output(info_b)
    assert a["warm"] and b["warm"] and stats.warm_launched == 2
    assert a["argv"] == ["-c", "x", "0"] and a["path0"] == "" and a["name"] == "__main__"
    assert a["cwd"] == str(workdir) and a["env"] == "yes" and b["env"] is None
    assert a["pid"] == info_a.pid == a["pgid"] == a["sid"]  # its own session and group
    assert a["stdin"] == ""  # /dev/null
    assert a["frozen"] > 0  # the fork server froze its heap before forking
    assert "--control-fd" not in a["cmdline"]  # ps shows the task's command, not the server's
    assert a["cmdline"].startswith(f"{PY} -c ")
    assert a["random"] != b["random"]  # reseeded in every child
    owner = os.getpid() if local else a["ppid"]
    assert a["ppid"] == b["ppid"] == owner  # a child of the owner, not of the fork server
    if not local:
        assert a["ppid"] != os.getpid()


def test_python_dash_m_semantics_and_exit_paths(tmp_path: Path) -> None:
    pkg = tmp_path / "work" / "warmpkg"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "job.py").write_text(
        "import atexit, sys, threading, time\n"
        "atexit.register(lambda: print('atexit ran', flush=True))\n"
        "def later():\n    time.sleep(0.2); print('thread joined', flush=True)\n"
        "threading.Thread(target=later).start()\n"
        "print('main', __name__, sys.argv[1:], __spec__.name)\n"
    )
    (pkg / "fail.py").write_text("raise RuntimeError('boom')\n")
    (pkg / "message.py").write_text("import sys\nsys.exit('bad input')\n")
    warm = WarmStart(modules=("warmpkg.*",))
    ex = warm_executor(tmp_path, warm_start=warm)
    cwd = str(tmp_path / "work")
    try:
        ex.queue_command("job", [PY, "-m", "warmpkg.job", "--flag", "v"], cwd=cwd)
        ex.queue_command("fail", [PY, "-m", "warmpkg.fail"], cwd=cwd)
        ex.queue_command("message", [PY, "-m", "warmpkg.message"], cwd=cwd)
        ex.queue_command("missing", [PY, "-m", "warmpkg.nope"], cwd=cwd)
        ex.queue_command("killed", [PY, "-c", "import os, signal; os.kill(os.getpid(), signal.SIGUSR1)"])
        events = drain(ex)
        warm_launched = ex.statistics().warm_launched
    finally:
        ex.end()
    logs = {key: Path(info.log_path or "").read_text() for key, [(_, info)] in events.items()}
    assert events["job"][0][0] == TaskState.SUCCESS
    assert logs["job"].splitlines() == [
        "main __main__ ['--flag', 'v'] warmpkg.job",
        "thread joined",  # non-daemon threads are joined before atexit, as at interpreter exit
        "atexit ran",
    ]
    assert events["fail"][0][1].returncode == 1
    assert "RuntimeError: boom" in logs["fail"] and "_forkserver" not in logs["fail"]
    assert events["message"][0][1].returncode == 1 and "bad input" in logs["message"]
    assert events["missing"][0][1].returncode == 1 and "No module named warmpkg.nope" in logs["missing"]
    # "-c" is not allowed by this rule: exec'd cold, and the signal is reported as such
    assert events["killed"][0][1].signal == signal.SIGUSR1
    assert warm_launched == 4


def test_the_rule_decides_what_goes_warm() -> None:
    rule = WarmStart(modules=("pkg.mod", "tools.*"), inline_code=False, match_env=("PYTHON", "AIRFLOW"))
    env = {"PATH": os.environ.get("PATH", ""), "PYTHONPATH": "/x", "AIRFLOW__CORE__X": "1"}
    assert rule.accepts((PY, "-m", "pkg.mod", "arg"), None, env)
    assert rule.accepts((PY, "-m", "tools.a.b"), None, env)
    assert not rule.accepts((PY, "-m", "pkg.other"), None, env)
    assert not rule.accepts((PY, "-m", "toolsx"), None, env)
    assert not rule.accepts((PY, "-c", "pass"), None, env)  # inline code not allowed
    assert not rule.accepts((PY, "-u", "-m", "pkg.mod"), None, env)  # interpreter options: cold
    assert not rule.accepts(("/usr/bin/env", "-m", "pkg.mod"), None, env)
    assert not rule.accepts((PY, "-m"), None, env)
    # overrides of interpreter- or module-shaping variables go cold; others do not matter
    assert not rule.accepts((PY, "-m", "pkg.mod"), {"PYTHONPATH": "/y"}, env)
    assert not rule.accepts((PY, "-m", "pkg.mod"), {"AIRFLOW__CORE__X": "2"}, env)
    assert rule.accepts((PY, "-m", "pkg.mod"), {"PYTHONPATH": "/x", "OTHER": "z"}, env)
    # ... except the variables named as read at run time
    runtime = attrs.evolve(rule, runtime_env=("AIRFLOW__CORE__X",))
    assert runtime.accepts((PY, "-m", "pkg.mod"), {"AIRFLOW__CORE__X": "2"}, env)
    assert not runtime.accepts((PY, "-m", "pkg.mod"), {"AIRFLOW__CORE__X": "2", "AIRFLOW__CORE__Y": "1"}, env)
    assert WarmStart.from_json(runtime.to_json()) == runtime
    assert WarmStart(runtime_env="ONE").runtime_env == {"ONE"}  # a name, not its letters
    for bad_names in (("",), ("A=B",), (3,)):
        with pytest.raises(ValueError, match="variable names"):
            WarmStart(runtime_env=bad_names)
    assert WarmStart(modules=("m",)).imports == ("m",)
    assert WarmStart(modules=("a.*", "b")).imports == ("b",)
    assert WarmStart(modules=("a.*",), preload=("a.core",)).imports == ("a.core",)
    for bad in ("", "1abc", "a b", "a.*.b"):
        with pytest.raises(ValueError, match="module name"):
            WarmStart(modules=(bad,))
    with pytest.raises(ValueError, match="patterns"):
        WarmStart(modules=("a",), preload=("a.*",))


def test_same_python_by_path_and_by_name(tmp_path: Path) -> None:
    env = {"PATH": os.path.dirname(PY)}
    assert same_python(PY, PY, env)
    assert same_python(os.path.basename(PY), PY, env)
    assert not same_python("python-nope", PY, env)
    other = tmp_path / "bin" / "python3"
    other.parent.mkdir()
    other.symlink_to(PY)  # another environment, even though it links to the same binary
    assert not same_python(str(other), PY, env)


def test_a_dead_fork_server_is_restarted_and_running_tasks_are_unaffected(tmp_path: Path) -> None:
    ex = warm_executor(tmp_path)
    try:
        ex.queue_command("first", [PY, "-c", "import time; time.sleep(1.0); raise SystemExit(4)"])
        ex.heartbeat()
        server = ex._engine.backend.forkserver  # type: ignore[attr-defined]
        deadline = time.monotonic() + 30
        while ex.statistics().warm_launched < 1 and time.monotonic() < deadline:
            ex.heartbeat()
            time.sleep(0.01)
        first_server = server.pid
        os.kill(first_server, signal.SIGKILL)
        time.sleep(0.2)
        ex.queue_command("second", [PY, "-c", "pass"])
        events = drain(ex)
        stats = ex.statistics()
    finally:
        ex.end()
    assert events["first"][0][1].returncode == 4  # its real status: it never depended on the server
    assert events["second"][0][0] == TaskState.SUCCESS
    assert stats.warm_launched == 2 and server.starts == 2
    assert not pid_alive(first_server)


def test_a_preloaded_module_that_starts_threads_means_cold_launches(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / "threaded.py").write_text(
        "import threading, time\nthreading.Thread(target=time.sleep, args=(600,), daemon=True).start()\n"
    )
    warm = WarmStart(inline_code=True, preload=("threaded", "no_such_module_here"))
    env = {"PYTHONPATH": str(tmp_path)}
    old = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = str(tmp_path)
    try:
        ex = warm_executor(tmp_path, warm_start=warm)
    finally:
        if old is None:
            del os.environ["PYTHONPATH"]
        else:
            os.environ["PYTHONPATH"] = old
    try:
        for i in range(3):
            ex.queue_command(i, [PY, "-c", "print('ran')"], env=env)
        events = drain(ex)
        stats = ex.statistics()
    finally:
        ex.end()
    assert all(evs[0][0] == TaskState.SUCCESS for evs in events.values())
    assert stats.warm_launched == 0  # never forked while threaded: exec'd instead
    assert "could not preload no_such_module_here" in caplog.text
    assert "threads" in caplog.text


def test_warm_start_is_switched_off_when_the_server_cannot_start(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    broken = tmp_path / "python"
    broken.write_text("#!/bin/sh\nexit 1\n")
    broken.chmod(0o755)
    warm = WarmStart(inline_code=True, python=str(broken))
    ex = warm_executor(tmp_path, warm_start=warm)
    try:
        for i in range(4):
            ex.queue_command(i, [str(broken), "-c", "pass"])
            drain(ex)
        stats = ex.statistics()
    finally:
        ex.end()
    assert stats.warm_launched == 0 and stats.failed == 4  # exec'd: the fake python exits 1
    assert "warm start switched off" in caplog.text


@pytest.mark.anyio
async def test_a_child_that_never_gets_go_exits_without_running(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    server = ForkServer(WARM, dict(os.environ))
    log = os.open(tmp_path / "log", os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        pid, go_w = await server.launch((PY, "-c", f"open({str(marker)!r}, 'w')"), None, None, log)
        os.close(go_w)  # the owner gives up before registering it
        _, status = os.waitpid(pid, 0)
    finally:
        os.close(log)
        server.close()
    assert os.waitstatus_to_exitcode(status) == 126
    assert not marker.exists()


# A fork server that dies the way a real one can, between its fork and its answer: it says
# ready, takes one launch request, forks a child that waits for "go" as a task child does (and
# marks a file if it ever gets it), and exits without answering.
DYING_SERVER = r"""
import os, socket, sys
sock = socket.socket(fileno=3)
sock.send(b'{"op": "ready", "pid": %d}' % os.getpid())
_, fds, _, _ = socket.recv_fds(sock, 1 << 16, 4)
if os.fork() == 0:
    sock.close()
    with open(sys.argv[1] + ".pid", "w") as handle:
        handle.write(str(os.getpid()))
    if os.read(fds[1], 1) == b"1":
        open(sys.argv[1], "w").close()
    os._exit(0)
os._exit(0)
"""


def launch_through_a_dying_server(tmp_path: Path) -> tuple[TaskState, Any, int, Path]:
    """One task, whose first launch goes to ``DYING_SERVER``: its event, info, orphan, marker."""
    tmp_path.mkdir()
    marker = tmp_path / "orphan-ran"
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    server = os.posix_spawn(
        PY,
        [PY, "-c", DYING_SERVER, str(marker)],
        dict(os.environ),
        file_actions=[(os.POSIX_SPAWN_DUP2, theirs.fileno(), 3)],
    )
    theirs.close()
    ex = AsyncExecutor(parallelism=1, log_dir=tmp_path / "logs", state_path=None, warm_start=WARM)
    ex._engine.backend.adopt_forkserver(server, ours)  # type: ignore[attr-defined]
    ex.start()
    try:
        ex.queue_command("task", [PY, "-c", "print('ran')"])
        events = drain(ex)
        assert ex.statistics().warm_launched == 1  # by the server started in the dead one's place
    finally:
        ex.end()
    orphan = int(wait_for_file(Path(f"{marker}.pid")))
    deadline = time.monotonic() + 10
    while pid_alive(orphan) and time.monotonic() < deadline:
        time.sleep(0.01)
    [(state, info)] = events["task"]
    return state, info, orphan, marker


def test_a_server_that_dies_mid_launch_leaves_no_child_to_run_unwatched(tmp_path: Path) -> None:
    """The launch is retried on a new server; the dead one's child never gets that task's "go".

    With one go pipe for both attempts, the orphan and the new child raced for the "go": when
    the orphan won, it ran the task unwatched and the registered child found the pipe closed
    (the task ran, but was reported failed, exit 126). The race went the orphan's way in about
    a third of the runs, hence several rounds.
    """
    for attempt in range(4):
        state, info, orphan, marker = launch_through_a_dying_server(tmp_path / str(attempt))
        assert state is TaskState.SUCCESS, info
        assert Path(info.log_path or "").read_text() == "ran\n"
        assert not pid_alive(orphan)
        assert not marker.exists()  # the orphan saw its own pipe closed, and exited without running


@pytest.mark.anyio
async def test_a_server_that_dies_right_after_ready_is_replaced_for_the_waiting_launch(
    tmp_path: Path,
) -> None:
    """A launch waits for the server's "ready"; "ready" and the server's death arrive together.

    The launch then found the server ready but its socket gone, and failed an assertion: the
    task got no event at all (the CI hang of 2026-11-25). It must go to a new server.
    """
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    stand_in = os.posix_spawn("/bin/true", ["true"], {})  # the server's pid (reaped when dropped)
    server = ForkServer(WARM, dict(os.environ))
    server.adopt(asyncio.get_running_loop(), stand_in, ours)
    log = os.open(tmp_path / "log", os.O_WRONLY | os.O_CREAT, 0o600)
    go_w = -1
    try:
        launch = asyncio.ensure_future(server.launch((PY, "-c", "pass"), None, None, log))
        await asyncio.sleep(0.05)  # it waits for "ready"
        assert not launch.done()
        theirs.send(b'{"op": "ready", "pid": 1}')
        theirs.close()  # read in the same go as "ready"
        pid, go_w = await asyncio.wait_for(launch, 60)
        os.write(go_w, b"1")
        _, status = os.waitpid(pid, 0)
    finally:
        if go_w >= 0:
            os.close(go_w)
        os.close(log)
        server.close()
    assert os.waitstatus_to_exitcode(status) == 0
    assert server.starts == 2  # the adopted one, then the one that served the launch


def test_an_unexpected_error_in_a_warm_launch_fails_that_task_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Whatever goes wrong inside a warm launch, the task gets its one event; others run on."""
    original = ForkServer.launch

    async def launch(self: ForkServer, argv: tuple[str, ...], *args: Any) -> tuple[int, int]:
        if argv[-1] == "broken":
            raise RuntimeError("a bug in the launch path")
        return await original(self, argv, *args)

    monkeypatch.setattr(ForkServer, "launch", launch)
    ex = warm_executor(tmp_path)
    try:
        ex.queue_command("broken", [PY, "-c", "pass", "broken"])
        ex.queue_command("fine", [PY, "-c", "pass", "fine"])
        events = drain(ex)
        stats = ex.statistics()
    finally:
        ex.end()
    [(state, info)] = events["broken"]
    assert state is TaskState.FAILED and info.reason is FailureReason.SPAWN_FAILED
    assert "a bug in the launch path" in (info.detail or "")
    assert events["fine"] == [(TaskState.SUCCESS, events["fine"][0][1])]
    assert stats.warm_launched == 1


@pytest.mark.anyio
async def test_the_fork_server_talks_only_to_its_parent(tmp_path: Path) -> None:
    server = ForkServer(WARM, dict(os.environ))
    log = os.open(tmp_path / "log", os.O_WRONLY | os.O_CREAT, 0o600)
    go_w = -1
    try:
        pid, go_w = await server.launch((PY, "-c", "pass"), None, None, log)
        os.write(go_w, b"1")
        os.waitpid(pid, 0)
        assert server.pid is not None
        inodes = {
            os.readlink(f"/proc/{server.pid}/fd/{fd}")[8:-1]
            for fd in os.listdir(f"/proc/{server.pid}/fd")
            if os.readlink(f"/proc/{server.pid}/fd/{fd}").startswith("socket:")
        }
        memory = server.memory()
        unix = {}
        with open("/proc/net/unix") as handle:
            next(handle)
            for line in handle:
                fields = line.split()
                unix[fields[6]] = fields
    finally:
        for fd in (go_w, log):
            if fd >= 0:
                os.close(fd)
        server.close()
    assert inodes, "the fork server has its control socket"
    for inode in inodes:
        fields = unix[inode]
        assert len(fields) == 7, f"socket {inode} has a path: {fields[7:]}"  # unnamed: a socketpair
        assert int(fields[3], 16) & 0x10000 == 0  # not listening (__SO_ACCEPTCON)
    assert memory is not None and memory["pss_kb"] > 0


def test_warm_tasks_are_adopted_after_an_executor_crash(tmp_path: Path) -> None:
    """SIGKILL the executor while warm tasks run: the next one adopts them, real statuses."""
    import subprocess

    program = warm_three_then_wait(tmp_path)
    proc = subprocess.Popen([PY, "-c", program], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "running"
    pids = [int(wait_for_file(tmp_path / f"m{i}").split()[0]) for i in range(3)]
    proc.kill()
    proc.wait()
    proc.stdout.close()
    adopt_three_after_crash(tmp_path, pids)


def test_terminate_reaches_warm_tasks_still_waiting_for_the_server(tmp_path: Path) -> None:
    """Tasks whose launch is still in flight when terminate() comes get one terminal event."""
    ex = warm_executor(tmp_path)
    for i in range(8):
        ex.queue_command(i, [PY, "-c", "import time; time.sleep(60)"])
    ex.heartbeat()
    ex.terminate()
    events = ex.get_event_buffer()
    assert len(events) == 8
    assert all(info.reason is FailureReason.TERMINATED for _, info in events.values())
    for _, info in events.values():
        if info.pid is not None:
            assert not pid_alive(info.pid)
