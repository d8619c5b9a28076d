"""Spawning: sessions, stdin, log files, env, cwd, and commands that cannot start."""

from __future__ import annotations

import os
import signal
import stat
import time
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest

from async_executor import AsyncExecutor, Child, ExecLauncher, FailureReason, TaskState

from .conftest import PY, drain


def log_of(ex: AsyncExecutor, key: str) -> str:
    return "".join(ex.get_task_log(key)[1])


def test_each_task_gets_its_own_session_and_devnull_stdin(executor: AsyncExecutor) -> None:
    script = (
        "import os,sys; print(os.getsid(0) == os.getpid() == os.getpgid(0)); print(repr(sys.stdin.read()))"
    )
    executor.queue_command("a", [PY, "-c", script])
    executor.queue_command("b", [PY, "-c", script])
    events = drain(executor)
    assert events["a"][0][1].pid != events["b"][0][1].pid
    for key in ("a", "b"):
        assert log_of(executor, key) == "True\n''\n"


@pytest.mark.parametrize("cwd", [None, "/"], ids=["posix_spawn", "popen"])
def test_signals_python_ignores_are_default_again_in_the_task(
    executor: AsyncExecutor, cwd: str | None
) -> None:
    # Python ignores SIGPIPE; an ignored disposition survives exec. A task must get the default
    # back (as Popen(restore_signals=True) does), so `yes | head` ends quietly.
    executor.queue_command("pipe", ["sh", "-c", "yes | head -n 1; grep SigIgn /proc/self/status"], cwd=cwd)
    info = drain(executor)["pipe"][0][1]
    lines = log_of(executor, "pipe").splitlines()
    assert info.state is TaskState.SUCCESS
    assert lines[0] == "y", lines  # no "yes: standard output: Broken pipe"
    ignored = int(lines[1].split()[1], 16)
    for signum in (signal.SIGPIPE, signal.SIGXFSZ):
        assert not ignored & (1 << (signum - 1)), f"{signum!r} still ignored: {lines[1]}"


_DISPOSITIONS = """
import os, signal, sys
from async_executor import AsyncExecutor, WarmStart
signal.signal(signal.SIGHUP, signal.SIG_IGN)        # as under nohup: tasks inherit it
signal.signal(signal.SIGUSR2, signal.SIG_IGN)
signal.signal(signal.SIGUSR1, lambda *a: None)      # caught here: default in the task
signal.signal(signal.SIGINT, signal.SIG_IGN)
signal.signal(signal.SIGINT, signal.default_int_handler)  # ignored once, caught now: not ignored
home, where, launcher = sys.argv[1:4]
state = None if where == "local" else os.path.join(home, "journal.sqlite")
warm = None
if launcher != "exec":
    warm = WarmStart(inline_code=True, preload=("json",), fork_from_caller=launcher == "forked")
ex = AsyncExecutor(parallelism=2, log_dir=os.path.join(home, "logs"), state_path=state, warm_start=warm)
ex.start()
show = "grep -E '^Sig(Ign|Cgt)' /proc/self/status"
if warm is None:
    ex.queue_command("t", ["sh", "-c", show])
    ex.queue_command("c", ["sh", "-c", show], cwd="/")
else:  # a Python task, forked by the fork server
    code = "import sys; sys.stdout.write(''.join(l for l in open('/proc/self/status') if l.startswith('Sig')))"
    ex.queue_command("t", [sys.executable, "-c", code])
    ex.queue_command("c", [sys.executable, "-c", code], cwd="/")
done = {}
while len(done) < 2:
    ex.heartbeat()
    done.update(ex.get_event_buffer())
warm_launched = ex.statistics().warm_launched
ex.end()
assert warm_launched == (0 if warm is None else 2), warm_launched
for key in ("t", "c"):
    print(key, "".join(ex.get_task_log(key)[1]).replace(chr(10), " "))
"""


@pytest.mark.parametrize("launcher", ["exec", "warm", "forked"])
@pytest.mark.parametrize("where", ["local", "supervisor"])
def test_a_task_inherits_ignored_signals_and_no_handlers(tmp_path: Path, where: str, launcher: str) -> None:
    # posix_spawn is told to reset every signal that is not ignored (fewer system calls in the
    # child than leaving it to ask), and a fork server forked from the caller resets the caller's
    # handlers; the dispositions a task sees must stay those an exec gives, with every launcher.
    import subprocess

    out = subprocess.run(
        [PY, "-c", _DISPOSITIONS, str(tmp_path), where, launcher], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    lines = dict(line.split(" ", 1) for line in out.stdout.splitlines())
    assert set(lines) == {"t", "c"}, out.stdout  # without and with a cwd (Popen for exec)
    for key, text in lines.items():
        fields = text.split()
        ignored = int(fields[fields.index("SigIgn:") + 1], 16)
        caught = int(fields[fields.index("SigCgt:") + 1], 16)
        bit = {sig: 1 << (sig - 1) for sig in signal.Signals}
        assert ignored & bit[signal.SIGHUP] and ignored & bit[signal.SIGUSR2], (key, text)
        for sig in (signal.SIGINT, signal.SIGUSR1, signal.SIGTERM):
            assert not ignored & bit[sig], (key, sig, text)
        if launcher == "exec":  # the shell itself sets neither
            assert not ignored & (bit[signal.SIGPIPE] | bit[signal.SIGXFSZ]), (key, text)
        assert not caught & bit[signal.SIGUSR1], (key, text)  # the caller's handler is gone


_NOFILE = """
import asyncio, os, resource, sys, threading
from async_executor import AsyncExecutor, WarmStart
home, where, launcher, soft, extra = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))   # as a shell's `ulimit -Sn`
state = os.path.join(home, "journal.sqlite") if where == "supervisor" else None
warm = None
if launcher != "exec":
    warm = WarmStart(inline_code=True, preload=("json",), fork_from_caller=launcher == "forked")
if warm is None:
    show = ["sh", "-c", "ulimit -Sn; sleep ${AE_SLEEP:-0}"]
else:  # a Python task, forked by the fork server
    show = [sys.executable, "-c", "import resource, os, time; print(resource.getrlimit(resource.RLIMIT_NOFILE)[0]); "
            "time.sleep(float(os.environ.get('AE_SLEEP') or 0))"]
# "extra" tasks run at once beside the two checked ones: with a descriptor each in the
# process that spawns, later logs are opened above the tasks' limit
sleepy = {"AE_SLEEP": "1.5"} if extra else None
kw = dict(parallelism=2 + extra, log_dir=os.path.join(home, "logs"), state_path=state, warm_start=warm)
keys = [f"x{i}" for i in range(extra)] + ["t", "c"]  # and "z" at the end
if where == "async":
    async def main():
        async with AsyncExecutor(**kw) as ex:
            handles = [await ex.submit(f"x{i}", show, env=sleepy) for i in range(extra)]
            if extra:
                await asyncio.sleep(0.5)
            handles += [await ex.submit("t", show), await ex.submit("c", show, cwd="/")]
            for handle in handles:
                await handle.wait()
            await ex.run("z", show)  # once the others are gone
            print("threads", threading.active_count(), ex.statistics().warm_launched)
        return ex
    ex = asyncio.run(main())
else:
    ex = AsyncExecutor(**kw)
    ex.start()
    for i in range(extra):
        ex.queue_command(f"x{i}", show, env=sleepy)
    ex.heartbeat()
    if extra:
        import time; time.sleep(0.5)
    ex.queue_command("t", show)
    ex.queue_command("c", show, cwd="/")
    done = {}
    while len(done) < len(keys):
        ex.heartbeat()
        done.update(ex.get_event_buffer())
    ex.queue_command("z", show)  # once the others are gone
    while "z" not in done:
        ex.heartbeat()
        done.update(ex.get_event_buffer())
    print("threads", threading.active_count(), ex.statistics().warm_launched)
    ex.end()
print("executor", resource.getrlimit(resource.RLIMIT_NOFILE)[0], hard)
for key in keys + ["z"]:
    print(key, "".join(ex.get_task_log(key)[1]).strip())
"""


@pytest.mark.parametrize("launcher", ["exec", "warm", "forked"])
@pytest.mark.parametrize("where", ["local", "async", "supervisor"])
@pytest.mark.parametrize("extra", [0, 70], ids=["few", "many"])
def test_a_task_gets_the_open_file_limit_from_before_the_executor_raised_it(
    tmp_path: Path, where: str, launcher: str, extra: int
) -> None:
    # The executor raises its own soft RLIMIT_NOFILE (a pidfd per task in flight); a task gets
    # the one its caller had, as under xargs or GNU parallel (and Go's os/exec), not a million.
    # With "many", the spawning process holds more descriptors than that limit, so the log of
    # a checked task is opened above it (glibc refuses such a dup2 action while it is lowered).
    import resource
    import subprocess

    soft = 64
    if resource.getrlimit(resource.RLIMIT_NOFILE)[1] < 4 * soft + 2 * extra:
        pytest.skip("the hard open-file limit is too low to tell the two apart")
    out = subprocess.run(
        [PY, "-c", _NOFILE, str(tmp_path), where, launcher, str(soft), str(extra)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    lines = dict(line.split(" ", 1) for line in out.stdout.splitlines())
    raised, hard = lines.pop("executor").split()
    assert int(raised) == int(hard) > soft  # the executor's own stays raised
    threads, warm_launched = lines.pop("threads").split()
    assert int(warm_launched) == (0 if launcher == "exec" else 3 + extra), out.stdout
    assert len(lines) == 3 + extra
    # Where another thread runs (the sync façade's loop thread beside the caller's), an exec'd
    # task gets the lower limit only while descriptors leave room below it (see TaskNofile):
    # with "many", not for the two started beside 70 others, again for "z" after them.
    short = where == "local" and launcher == "exec" and extra > 0
    if where == "async":
        assert threads == "1", out.stdout
    for key, text in lines.items():
        if short and key.startswith("x"):  # lowered until descriptors ran short
            assert text in (hard, str(soft)), (key, out.stdout)
        else:
            assert text == (hard if short and key in ("t", "c") else str(soft)), (key, out.stdout)


_HOLD = """
import resource, threading
from async_executor import _limits
NOFILE = resource.RLIMIT_NOFILE
hard = resource.getrlimit(NOFILE)[1]
resource.setrlimit(NOFILE, (256, hard))
_limits.set_task_nofile(256)            # as the supervisor is told at start
_limits.raise_nofile_limit()
soft = lambda: resource.getrlimit(NOFILE)[0]
n = _limits.TaskNofile()
assert soft() == hard and n.limits == (256, hard), (soft(), n.limits)
assert n.lower() == (True, None) and soft() == 256       # held: nothing to restore
assert n.lower() == (True, None) and soft() == 256       # ... and no system call next time
stop = threading.Event()
t = threading.Thread(target=stop.wait, daemon=True)
t.start()                                                 # another thread: no holding
in_force, previous = n.lower()
assert in_force and previous == (hard, hard) and soft() == 256, (in_force, previous)
n.restore(previous)
assert soft() == hard
stop.set(); t.join()
assert n.lower() == (True, None) and soft() == 256
n.release()
assert soft() == hard
_limits._helper = False                                   # in-process: never held
in_force, previous = n.lower()
assert in_force and previous is not None and soft() == 256
n.restore(previous)
extra = [open("/dev/null") for _ in range(240)]           # no room left below 256
_limits._helper = True
n._counted_at = -10.0                                     # recount now
in_force, previous = n.lower()                            # one thread: per spawn, not held
assert in_force and previous is not None and n._held is None, (in_force, previous)
n.restore(previous)
print("ok")
"""


def test_the_tasks_limit_is_held_between_spawns_only_in_a_helper_with_room(tmp_path: Path) -> None:
    import resource
    import subprocess

    if resource.getrlimit(resource.RLIMIT_NOFILE)[1] < 1024:
        pytest.skip("the hard open-file limit is too low to tell the two apart")
    out = subprocess.run([PY, "-c", _HOLD], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stdout == "ok\n", out.stderr


_STRAY_HIGH = """
import asyncio, os, resource, sys
from async_executor import AsyncExecutor
home = sys.argv[1]
hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
r, w = os.pipe()
os.dup2(w, 100, inheritable=True)       # inherited above the tasks' limit
resource.setrlimit(resource.RLIMIT_NOFILE, (64, hard))
print("hard", hard)
show = ["sh", "-c", "ulimit -Sn; [ -e /proc/$$/fd/100 ] && echo leaked; true"]
async def main():
    async with AsyncExecutor(parallelism=2, log_dir=os.path.join(home, "logs"), state_path=None) as ex:
        for key, cwd in (("t", None), ("c", "/")):
            info = await ex.run(key, show, cwd=cwd)
            print(key, info.state.value, "".join(ex.get_task_log(key)[1]).replace(chr(10), " ").strip())
asyncio.run(main())
"""


def test_a_stray_descriptor_above_the_tasks_limit_neither_fails_nor_reaches_a_task(tmp_path: Path) -> None:
    # Without POSIX_SPAWN_CLOSEFROM the exec launcher closes inherited descriptors one by one,
    # and glibc refuses such an action for a descriptor above the limit in force: the limit
    # must then stay raised for that spawn rather than the task fail to start.
    import subprocess

    out = subprocess.run([PY, "-c", _STRAY_HIGH, str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    lines = dict(line.split(" ", 1) for line in out.stdout.splitlines())
    expected = {"t": "64" if hasattr(os, "POSIX_SPAWN_CLOSEFROM") else lines["hard"], "c": "64"}
    for key in ("t", "c"):
        state, limit = lines[key].split()  # no "leaked"
        assert state == "success", out.stdout
        assert limit == expected[key], out.stdout


_FDS = """
import asyncio, os, sys, time
from async_executor import AsyncExecutor, WarmStart
home, where, launcher = sys.argv[1:4]
r, w = os.pipe()
os.set_inheritable(w, True)             # as a descriptor left inheritable by whoever started us
needle = f"pipe:[{os.fstat(w).st_ino}]"
state = os.path.join(home, "journal.sqlite") if where == "supervisor" else None
warm = None
if launcher != "exec":
    warm = WarmStart(inline_code=True, preload=("json",), fork_from_caller=launcher == "forked")
# a Python task: exec'd without warm start, else forked by the fork server
show = [sys.executable, "-c", "import os, time; d = '/proc/%d/fd' % os.getpid(); "
        "print(*(f + ' ' + os.readlink(d + '/' + f) for f in os.listdir(d) if os.path.exists(d + '/' + f)))"
        "; time.sleep(float(os.environ.get('AE_SLEEP') or 0))"]

def holders():
    # every process but this one that holds the write end: helpers and tasks alike
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        if int(pid) == os.getpid():
            continue
        try:
            links = [os.readlink(f"/proc/{pid}/fd/{fd}") for fd in os.listdir(f"/proc/{pid}/fd")]
        except OSError:
            continue
        if needle in links:
            found.append(int(pid))
    return found

kw = dict(parallelism=4, log_dir=os.path.join(home, "logs"), state_path=state, warm_start=warm)
slow = {"AE_SLEEP": "30"}
if where == "async":
    async def main():
        async with AsyncExecutor(**kw) as ex:
            handles = [await ex.submit("t", show), await ex.submit("c", show, cwd="/")]
            for handle in handles:
                await handle.wait()
            sleeper = await ex.submit("s", show, env=slow)
            while sleeper.pid is None:
                await asyncio.sleep(0.05)
            print("holders", holders())
            sleeper.cancel()
        return ex
    ex = asyncio.run(main())
else:
    ex = AsyncExecutor(**kw)
    ex.start()
    ex.queue_command("t", show)
    ex.queue_command("c", show, cwd="/")
    done = {}
    while len(done) < 2:
        ex.heartbeat()
        done.update(ex.get_event_buffer())
    ex.queue_command("s", show, env=slow)
    while not ex.running or ex.statistics().running < 1:
        ex.heartbeat()
        time.sleep(0.05)
    time.sleep(0.2)
    print("holders", holders())
    ex.terminate()
print("needle", needle)
for key in ("t", "c"):
    print(key, "".join(ex.get_task_log(key)[1]).replace(chr(10), " "))
"""


@pytest.mark.parametrize("launcher", ["exec", "warm", "forked"])
@pytest.mark.parametrize("where", ["local", "async", "supervisor"])
def test_a_task_and_the_helpers_get_no_inherited_descriptor(
    tmp_path: Path, where: str, launcher: str
) -> None:
    # Popen(close_fds=True) semantics for every launcher: a descriptor the executor's process
    # leaves inheritable reaches no task, and no helper process (supervisor, fork server)
    # holds it: a pipe's reader would otherwise wait for EOF as long as they live.
    import subprocess

    out = subprocess.run(
        [PY, "-c", _FDS, str(tmp_path), where, launcher], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    lines = dict(line.split(" ", 1) for line in out.stdout.splitlines())
    assert lines["holders"] == "[]", out.stdout
    assert lines["needle"].startswith("pipe:["), out.stdout
    for key in ("t", "c"):
        fds = lines[key].split()
        targets = dict(zip(fds[::2], fds[1::2], strict=True))
        assert set(targets) >= {"0", "1", "2"} and lines["needle"] not in fds, (key, out.stdout)
        extra = {fd: target for fd, target in targets.items() if int(fd) > 2}
        # the listing's own directory; a fork server forked from the caller keeps the caller's
        # descriptor numbers taken, on /dev/null (see serve_forked)
        allowed = ("/proc/", "/dev/null") if launcher == "forked" else ("/proc/",)
        assert all(target.startswith(allowed) for target in extra.values()), (key, out.stdout)


def test_ignored_signals_without_proc(monkeypatch: pytest.MonkeyPatch) -> None:
    from async_executor import _spawn

    def no_proc(*args: object, **kwargs: object) -> None:
        raise OSError("no /proc here")

    before = signal.signal(signal.SIGUSR2, signal.SIG_IGN)
    try:
        with_proc = _spawn.ignored_signals()
        monkeypatch.setattr(_spawn, "open", no_proc, raising=False)
        assert _spawn.ignored_signals() == with_proc  # Python's view agrees with the kernel's
        assert {signal.SIGUSR2, signal.SIGPIPE} <= with_proc  # Python itself ignores SIGPIPE
        sigdef = _spawn.default_signals()
    finally:
        signal.signal(signal.SIGUSR2, before)
    assert signal.SIGUSR2 not in sigdef and signal.SIGPIPE in sigdef and signal.SIGTERM in sigdef
    assert signal.SIGKILL not in sigdef and signal.SIGSTOP not in sigdef


def test_stdout_and_stderr_go_to_one_log_file(executor: AsyncExecutor) -> None:
    executor.queue_command("both", ["sh", "-c", "echo out; echo err >&2; echo out2"])
    info = drain(executor)["both"][0][1]
    assert info.log_path is not None
    assert Path(info.log_path).read_text() == "out\nerr\nout2\n"
    assert stat.S_IMODE(os.stat(info.log_path).st_mode) == 0o600


def test_log_size_cap_keeps_the_head(tmp_path: Path) -> None:
    ex = AsyncExecutor(parallelism=2, log_dir=tmp_path, log_max_bytes=4096)
    ex.start()
    try:
        # ~1 MB of output, well past the cap; the parent never holds it in memory
        ex.queue_command(
            "big", [PY, "-c", "import sys\nfor i in range(20000): print(f'line {i:05d} ' + 'x'*40)"]
        )
        events = drain(ex)
    finally:
        ex.end()
    data = Path(events["big"][0][1].log_path or "").read_bytes()
    assert len(data) <= 4096
    assert data.startswith(b"line 00000 ")
    assert data.endswith(b"[async-executor: output truncated at the log size cap]\n")


def test_env_merges_over_the_parent_environment(
    executor: AsyncExecutor, monkeypatch: pytest.MonkeyPatch
) -> None:
    executor.queue_command("env", ["sh", "-c", 'echo "$AE_TEST_VAR:$HOME"'], env={"AE_TEST_VAR": "set"})
    executor.execute_async(
        "cfg", ["sh", "-c", 'echo "$AE_TEST_VAR"'], executor_config={"env": {"AE_TEST_VAR": "x"}}
    )
    drain(executor)
    assert log_of(executor, "env") == f"set:{os.environ['HOME']}\n"
    assert log_of(executor, "cfg") == "x\n"


def test_env_path_decides_where_the_program_is_found(executor: AsyncExecutor, tmp_path: Path) -> None:
    bindir = tmp_path / "bin"
    bindir.mkdir()
    tool = bindir / "ae-only-here"
    tool.write_text("#!/bin/sh\necho found me\n")
    tool.chmod(0o755)
    executor.queue_command("found", ["ae-only-here"], env={"PATH": f"{bindir}:/usr/bin:/bin"})
    executor.queue_command("missing", ["ae-only-here"])
    events = drain(executor)
    assert events["found"][0][0] == TaskState.SUCCESS
    assert log_of(executor, "found") == "found me\n"
    assert events["missing"][0][1].reason is FailureReason.SPAWN_FAILED


def test_cwd(executor: AsyncExecutor, tmp_path: Path) -> None:
    executor.queue_command("cwd", ["pwd"], cwd=tmp_path)
    executor.execute_async("cfg", ["pwd"], executor_config={"cwd": str(tmp_path)})
    drain(executor)
    assert log_of(executor, "cwd") == f"{tmp_path}\n"
    assert log_of(executor, "cfg") == f"{tmp_path}\n"


def test_commands_that_cannot_start_fail_without_harming_others(
    executor: AsyncExecutor, tmp_path: Path
) -> None:
    not_exec = tmp_path / "not-executable"
    not_exec.write_text("#!/bin/sh\ntrue\n")
    executor.queue_command("missing", ["/no/such/program"])
    executor.queue_command("missing-on-path", ["no-such-program-ae"])
    executor.queue_command("not-exec", [str(not_exec)])
    executor.queue_command("missing-cwd", ["true"], cwd=tmp_path / "nope")
    executor.queue_command("fine", ["true"])
    events = drain(executor)
    assert events["fine"][0][0] == TaskState.SUCCESS
    expected = {
        "missing": "No such file or directory",
        "missing-on-path": "No such file or directory",
        "not-exec": "Permission denied",
        "missing-cwd": "No such file or directory",
    }
    for key, why in expected.items():
        assert len(events[key]) == 1
        state, info = events[key][0]
        assert state == TaskState.FAILED
        assert info.reason is FailureReason.SPAWN_FAILED
        assert info.detail is not None and why in info.detail, info.detail
        assert info.pid is None
    assert executor.statistics().spawn_failures == 4


def test_a_launcher_bug_fails_only_that_task(tmp_path: Path) -> None:
    class Flaky(ExecLauncher):
        def launch(
            self, argv: tuple[str, ...], env: Mapping[str, str] | None, cwd: str | None, out_fd: int
        ) -> Child:
            if argv[-1] == "boom":
                raise RuntimeError("launcher bug")
            return super().launch(argv, env, cwd, out_fd)

    ex = AsyncExecutor(parallelism=2, log_dir=tmp_path, launcher=Flaky(), state_path=None)
    ex.start()
    try:
        ex.queue_command("boom", ["echo", "boom"])
        ex.queue_command("ok", ["echo", "ok"])
        events = drain(ex)
    finally:
        ex.end()
    assert events["ok"][0][0] == TaskState.SUCCESS
    assert events["boom"][0][1].reason is FailureReason.SPAWN_FAILED
    assert "launcher bug" in (events["boom"][0][1].detail or "")


def test_unwritable_log_dir_fails_the_task_clearly(tmp_path: Path) -> None:
    logs = tmp_path / "logs"
    ex = AsyncExecutor(parallelism=2, log_dir=logs)
    ex.start()
    try:
        logs.chmod(0o500)
        if os.access(logs, os.W_OK):  # root ignores permissions: use a missing directory instead
            logs.chmod(0o700)
            logs.rename(tmp_path / "moved")
        ex.queue_command("x", ["true"])
        info = drain(ex)["x"][0][1]
    finally:
        ex.end()
        if logs.exists():
            logs.chmod(0o700)
    assert info.reason is FailureReason.SPAWN_FAILED
    assert "could not open log file" in (info.detail or "")


def test_exit_codes_and_signals(executor: AsyncExecutor) -> None:
    executor.queue_command("rc7", ["sh", "-c", "exit 7"])
    executor.queue_command("term", ["sh", "-c", "kill -TERM $$"])
    events = drain(executor)
    assert events["rc7"][0][1].returncode == 7
    assert events["term"][0][1].signal == 15 and events["term"][0][1].returncode is None


def test_start_fails_clearly_when_log_dir_cannot_be_made(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    ex = AsyncExecutor(log_dir=blocker / "logs")
    with pytest.raises(OSError):
        ex.start()


@pytest.fixture
def full_log_dir(tmp_path: Path) -> Iterator[Path]:
    """A 64 KiB tmpfs, filled up: task output cannot be written there."""
    import subprocess

    mount = tmp_path / "full"
    mount.mkdir()
    if subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mount)], capture_output=True
    ).returncode:
        pytest.skip("mounting a small tmpfs needs root (CAP_SYS_ADMIN) here")
    try:
        with open(mount / "filler", "wb") as handle:
            try:
                handle.write(b"\0" * (1 << 20))
            except OSError:
                pass
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_full_log_disk_fails_that_task_clearly_and_others_run_on(full_log_dir: Path, tmp_path: Path) -> None:
    ex = AsyncExecutor(parallelism=2, log_dir=full_log_dir, state_path=tmp_path / "state" / "journal.sqlite")
    ex.start()
    try:
        ex.queue_command("chatty", [PY, "-c", "print('x' * 100000)"])
        ex.queue_command("quiet", ["true"])
        events = drain(ex)
    finally:
        ex.end()
    assert events["quiet"][0][0] == TaskState.SUCCESS
    state, info = events["chatty"][0]
    assert state == TaskState.FAILED
    assert "log is full" in (info.detail or "")


def test_ticks_between_is_the_tick_of_the_first_reading() -> None:
    from async_executor._spawn import _TICK_NS, same_start, ticks_between

    tick = _TICK_NS
    assert ticks_between(5 * tick, 5 * tick + tick - 1) == 5
    # a boundary between them: the process started in tick 5 or 6; the record says 5
    assert ticks_between(5 * tick + tick - 1, 6 * tick) == 5
    assert same_start(5, 5) and same_start(5, 6)
    assert not same_start(5, 4) and not same_start(5, 7) and not same_start(5, None)
    assert ticks_between(5 * tick + tick - 1, 7 * tick) is None  # two boundaries: unknown
    assert ticks_between(None, 6 * tick) is None
    assert ticks_between(5 * tick, None) is None


def test_the_launcher_knows_a_child_start_time_to_the_tick(tmp_path: Path) -> None:
    """A child's start time (with its pid, its identity across executor restarts) is taken
    from the boot clock around the spawn, never from /proc (which waits for the child's exec):
    /proc must agree with it, to within the one tick ``same_start`` allows."""
    from async_executor._spawn import proc_start_ticks, same_start

    launcher = ExecLauncher()
    out = os.open(tmp_path / "out", os.O_WRONLY | os.O_CREAT, 0o600)
    known = 0
    try:
        for _ in range(200):
            child = launcher.launch(("true",), None, None, out)  # a zombie keeps its /proc entry
            try:
                if child.start_ticks is not None:
                    known += 1
                    assert same_start(child.start_ticks, proc_start_ticks(child.pid))
            finally:
                os.waitpid(child.pid, 0)
    finally:
        os.close(out)
    assert known >= 190  # a spawn takes far less than a tick (10 ms) here: all but rare ones


def test_more_children_end_at_once_than_one_wake_up_returns() -> None:
    """The backend watches every pidfd through one epoll set: 1,200 children killed in one go
    are more than one ``epoll.poll`` returns (1,023), and each still reports exactly once."""
    import asyncio

    from async_executor._limits import raise_nofile_limit
    from async_executor._spawn import HAVE_PIDFD, LocalBackend

    if not HAVE_PIDFD:  # pragma: no cover - Linux >= 5.3 has pidfds
        pytest.skip("no pidfd here")
    count = 1200
    if raise_nofile_limit() < count + 200:
        pytest.skip("descriptor limit too low")
    exits: dict[int, list[tuple[int | None, int | None]]] = {}

    class Events:
        def __init__(self, done: asyncio.Future[None]) -> None:
            self.done, self.pids = done, {}

        def spawned(self, token: int, pid: int, proc_start: int | None = None, warm: bool = False) -> None:
            self.pids[token] = pid

        def spawn_failed(self, token: int, exc: OSError, detail: str) -> None:
            raise AssertionError(detail)

        def exited(self, token: int, rc: int | None, sig: int | None, *_: object) -> None:
            exits.setdefault(token, []).append((rc, sig))
            if len(exits) == count and not self.done.done():
                self.done.set_result(None)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        events = Events(loop.create_future())
        backend = LocalBackend()
        backend.open(loop, events)
        try:
            for token in range(count):
                backend.spawn(token, ("sleep", "600"), None, None, None)
            assert len(events.pids) == count
            for token in range(count):
                backend.kill(token)
            # no await until every one has ended: the loop then finds them all ready at once
            from async_executor._spawn import _exited_unreaped

            unended = list(events.pids.values())
            for _ in range(6000):
                unended = [pid for pid in unended if not _exited_unreaped(pid)]
                if not unended:
                    break
                time.sleep(0.01)
            assert not unended
            await asyncio.wait_for(events.done, 60)
            await asyncio.sleep(0.05)  # a second report would come in here
        finally:
            backend.close()

    asyncio.run(main())
    assert sorted(exits) == list(range(count))
    assert all(reports == [(None, signal.SIGKILL)] for reports in exits.values())
