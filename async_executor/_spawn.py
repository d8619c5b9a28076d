"""Where a task is spawned, watched and killed.

The fast path is ``os.posix_spawn`` (glibc: ``clone(CLONE_VM|CLONE_VFORK)``, so a large
parent is never copied) with ``setsid`` giving every task its own session and process
group, and ``os.pidfd_open`` telling the event loop when the child exits. Tasks with a
``cwd`` fall back to ``subprocess.Popen`` (vfork on 3.10+), because ``posix_spawn`` has no
chdir action in Python. Exec errors surface synchronously as ``OSError``. Where the
system allows it, ``_handoff.py`` makes each child start on the spawning thread's CPU, so
the vfork wait is short (the task's own policy, nice value and CPU mask stay as they were).

Two seams. A :class:`Launcher` starts one process (``ExecLauncher``); Python commands
that a :class:`~._forkserver.WarmStart` rule accepts are forked by a warm fork server
instead (``_forkserver.py``) and come back as ordinary children. A :class:`Backend` owns
processes for the engine: spawn, stop, kill, and report ``spawned`` / ``spawn_failed`` /
``exited`` events. ``LocalBackend`` does that in this process with a pidfd per child;
``_supervisor.SupervisorBackend`` does it in a small supervisor process that outlives the
executor, so exit statuses are never lost.
"""

from __future__ import annotations

import asyncio
import errno
import fcntl
import logging
import os
import select
import signal
import socket
import subprocess
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Protocol

import attrs

from ._handoff import CHILD_ATTRS, CpuHandoff
from ._limits import TaskNofile
from ._logs import open_log

if TYPE_CHECKING:
    from ._forkserver import ForkServer, WarmStart
    from ._memlogs import MemoryLogs

logger = logging.getLogger("async_executor.spawn")

HAVE_PIDFD = hasattr(os, "pidfd_open")

#: ``OSError`` numbers that mean "out of descriptors / processes / memory right now":
#: admission waits and retries instead of failing the task.
RESOURCE_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.EAGAIN, errno.ENOMEM})

#: Signals Python ignores that a task gets back at their defaults, as with
#: ``subprocess.Popen(restore_signals=True)``: ignored dispositions survive exec, and a
#: ``yes | head`` in a task would report broken pipes instead of ending quietly.
RESTORED_SIGNALS: tuple[int, ...] = tuple(
    int(getattr(signal, name)) for name in ("SIGPIPE", "SIGXFZ", "SIGXFSZ") if hasattr(signal, name)
)


def ignored_signals() -> frozenset[int]:
    """The signals this process ignores now (``SIG_IGN``).

    From the kernel's ``/proc/self/status``, which also sees dispositions set from C;
    elsewhere Python's view (which includes what was ignored when the interpreter started,
    as under ``nohup``).
    """
    mask = _proc_ignored_mask()
    if mask is not None:
        return frozenset(sig for sig in range(1, mask.bit_length() + 1) if mask >> (sig - 1) & 1)
    ignored = set()
    for sig in signal.valid_signals():
        try:
            if signal.getsignal(sig) is signal.SIG_IGN:
                ignored.add(int(sig))
        except (OSError, ValueError):
            continue
    return frozenset(ignored)


def _proc_ignored_mask() -> int | None:
    """The ``SigIgn`` mask of ``/proc/self/status``; ``None`` without one."""
    try:
        with open("/proc/self/status", "rb") as status:
            for line in status:
                if line.startswith(b"SigIgn:"):
                    return int(line.split()[1], 16)
    except (OSError, ValueError, IndexError):
        return None
    return None


def inherited_ignores() -> frozenset[int]:
    """The ignored signals a task inherits, as through an exec: all this process ignores now
    but :data:`RESTORED_SIGNALS`."""
    return ignored_signals() - frozenset(RESTORED_SIGNALS)


def default_signals() -> tuple[int, ...]:
    """``posix_spawn``'s ``setsigdef`` for a task: every signal but :func:`inherited_ignores`.

    The result is what the child would get anyway: exec resets caught signals to their
    defaults, and ignored ones (other than the restored three) stay ignored because they are
    left out. Naming them all is cheaper: for a signal not in ``setsigdef`` glibc's child
    first asks for its disposition and then may set it (two system calls), for one in it only
    sets it. Measured here: 120 ``rt_sigaction`` calls per spawn instead of 62, ~40 µs less CPU
    in each child. Computed when a launcher is made, so a signal ignored later in this process
    is not inherited by tasks; nothing of ours ignores one after start.
    """
    catchable = set(map(int, signal.valid_signals())) - {int(signal.SIGKILL), int(signal.SIGSTOP)}
    return tuple(sorted(catchable - inherited_ignores()))


@attrs.define(slots=True, eq=False)
class Child:
    """A launched task process: its pid (also its process-group id) and exit handle."""

    pid: int
    #: A pidfd that becomes readable when the process exits (``None`` until the backend opens
    #: one, or where the platform has none: then the backend polls).
    pidfd: int | None
    popen: subprocess.Popen[bytes] | None = None
    #: Its start time in clock ticks since boot, when the launcher could tell without
    #: reading ``/proc`` (see :func:`ticks_between`); ``None`` otherwise.
    start_ticks: int | None = None

    @property
    def pgid(self) -> int:
        return self.pid


class Launcher(Protocol):
    """Starts one task process in a new session with stdin on /dev/null."""

    def launch(
        self, argv: tuple[str, ...], env: Mapping[str, str] | None, cwd: str | None, out_fd: int
    ) -> Child:
        """Start ``argv``; stdout and stderr go to ``out_fd``. Raises ``OSError`` on failure."""
        ...

    def close(self) -> None: ...


class ExecLauncher:
    """Launch by exec: ``posix_spawn`` fast path, ``Popen`` for tasks that need a cwd."""

    def __init__(self, handoff: bool | None = None) -> None:
        self._handoff = CpuHandoff(handoff)
        self._base_env: dict[str, str] = dict(os.environ)
        self._base_path = self._base_env.get("PATH", os.defpath)
        self._devnull = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
        #: A low descriptor that stands in for a task's log while the tasks' lower open-file
        #: limit is in force: glibc refuses a dup2 action from a descriptor above the limit.
        self._low_slot = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
        #: Two low descriptors given up for the length of a ``Popen`` under that limit, so
        #: that its error pipe finds room below it.
        self._pipe_room = [os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC) for _ in range(2)]
        self._sigdef = default_signals()
        self._nofile = TaskNofile()
        #: What Popen's ``close_fds=True`` does: a task gets no descriptor beyond 0-2 that this
        #: process leaves inheritable. With ``POSIX_SPAWN_CLOSEFROM`` (Python 3.13, glibc 2.34)
        #: all of them; otherwise those inheritable when the launcher was made.
        closefrom = getattr(os, "POSIX_SPAWN_CLOSEFROM", None)
        self._close_actions: list[tuple[int, int]] = (
            [(closefrom, 3)]
            if closefrom is not None
            else [(os.POSIX_SPAWN_CLOSE, fd) for fd in inheritable_fds()]
        )
        #: The highest descriptor a file action of every spawn names: at or above the tasks'
        #: open-file limit, glibc would refuse the action while that limit is in force.
        closed = [fd for op, fd in self._close_actions if op == os.POSIX_SPAWN_CLOSE]
        self._top_action_fd = max(self._devnull, self._low_slot, *closed)

    def close(self) -> None:
        self._nofile.release()
        for fd in (self._devnull, self._low_slot, *self._pipe_room):
            if fd >= 0:
                os.close(fd)
        self._devnull = self._low_slot = -1
        self._pipe_room = []

    def environment(self, overrides: Mapping[str, str] | None) -> dict[str, str]:
        """The child's environment: ``overrides`` merged over the executor's own."""
        if not overrides:
            return self._base_env
        merged = dict(self._base_env)
        merged.update(overrides)
        return merged

    def launch(
        self, argv: tuple[str, ...], env: Mapping[str, str] | None, cwd: str | None, out_fd: int
    ) -> Child:
        environ = self.environment(env)
        if cwd is not None:
            return self._launch_popen(argv, environ, cwd, out_fd)
        program = argv[0]
        path = environ.get("PATH", os.defpath)
        actions: list[tuple[int, ...]] = [
            (os.POSIX_SPAWN_DUP2, self._devnull, 0),
            (os.POSIX_SPAWN_DUP2, out_fd, 1),
            (os.POSIX_SPAWN_DUP2, out_fd, 2),
            *self._close_actions,
        ]
        if "/" in program or path == self._base_path:
            spawn = os.posix_spawn if "/" in program else os.posix_spawnp
        else:
            # The task's own PATH decides, as it would for Popen(env=...). (Imported here:
            # shutil brings zlib, bz2 and lzma, which the supervisor process never needs.)
            import shutil

            resolved = shutil.which(program, path=path)
            if resolved is None:
                raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), program)
            program, spawn = resolved, os.posix_spawn
        raised = self._lower_nofile(actions, out_fd)  # limits to restore after the spawn
        pin = self._handoff.enter()  # see _handoff.py: the child starts on this CPU
        pid = None
        try:
            before = _boottime_ns()
            pid = spawn(
                program,
                argv,
                environ,
                file_actions=actions,
                setsid=True,
                setsigmask=(),  # nothing blocked, whatever the spawning thread blocks
                setsigdef=self._sigdef,
                **(CHILD_ATTRS if pin is not None else {}),  # back to SCHED_OTHER before its exec
            )
            after = _boottime_ns()
        finally:
            if pin is not None:
                self._handoff.leave(pin, pid)
            if raised is not None:
                self._nofile.restore(raised)
            if actions[1][1] == self._low_slot:  # let go of the task's log
                os.dup2(self._devnull, self._low_slot, inheritable=False)
        return Child(pid, None, start_ticks=ticks_between(before, after))

    def _lower_nofile(self, actions: list[tuple[int, ...]], out_fd: int) -> tuple[int, int] | None:
        """The tasks' open-file limit in force for one spawn (see ``TaskNofile``); the
        limits to restore after it, or ``None``. Points ``actions`` at a low stand-in for a
        log descriptor at or above that limit."""
        soft = self._nofile.soft
        if soft < 0:
            return None
        if self._top_action_fd >= soft:
            self._nofile.release()  # glibc would refuse an action on such a descriptor
            return None
        in_force, raised = self._nofile.lower()
        if in_force and out_fd >= soft:
            os.dup2(out_fd, self._low_slot, inheritable=False)
            actions[1] = (os.POSIX_SPAWN_DUP2, self._low_slot, 1)
            actions[2] = (os.POSIX_SPAWN_DUP2, self._low_slot, 2)
        return raised

    def _launch_popen(
        self, argv: tuple[str, ...], environ: dict[str, str], cwd: str, out_fd: int, lower: bool = True
    ) -> Child:
        in_force, raised = self._nofile.lower() if lower else (False, None)
        room = self._pipe_room if raised is not None else []
        for fd in room:
            os.close(fd)
        try:
            popen = subprocess.Popen(  # argv list, never a shell
                argv,
                stdin=self._devnull,
                stdout=out_fd,
                stderr=out_fd,
                cwd=cwd,
                env=environ,
                start_new_session=True,
                close_fds=True,
            )
        except OSError as exc:
            if not in_force or exc.errno != errno.EMFILE:
                raise
            # Popen's own pipe found no descriptor below the tasks' limit: this one task
            # keeps the raised limit rather than wait for descriptors that may never free up.
            if raised is not None:
                self._nofile.restore(raised)
                raised = None
            self._nofile.release()
            return self._launch_popen(argv, environ, cwd, out_fd, lower=False)
        finally:
            if raised is not None:
                self._nofile.restore(raised)
            if room:  # the lowest free numbers again: those just given up, in one thread
                self._pipe_room = [os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC) for _ in room]
        return Child(popen.pid, None, popen)


def _start_error(argv: tuple[str, ...], cwd: str | None, exc: OSError) -> str:
    where = f" in {cwd!r}" if cwd else ""
    return f"could not start {argv[0]!r}{where}: {exc.strerror or exc}"


def spawn_helper(
    python: str,
    module: str,
    args: list[str],
    env: Mapping[str, str],
    control: int,
    output: int | None,
    path_index: int = 0,
) -> int:
    """Start one of our helper processes (``async_executor.<module>.main()``) in its own session.

    It gets ``control`` as descriptor 3, stdin on /dev/null and stdout (and stderr when
    ``output`` is given) on ``output`` (else /dev/null, stderr inherited). The package's
    directory goes at ``sys.path[path_index]``, so a source checkout works uninstalled.
    Raises ``OSError`` when it cannot be started.
    """
    devnull = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
    try:
        actions = [(os.POSIX_SPAWN_DUP2, devnull, 0), (os.POSIX_SPAWN_DUP2, output or devnull, 1)]
        if output is not None:
            actions.append((os.POSIX_SPAWN_DUP2, output, 2))
        actions.append((os.POSIX_SPAWN_DUP2, control, 3))
        # its own session: Ctrl-C at a terminal and signals to our group must not reach it
        return os.posix_spawn(
            python, helper_argv(python, module, args, path_index), env, file_actions=actions, setsid=True
        )
    finally:
        os.close(devnull)


#: Modules a helper process must never load. The supervisor speaks no TLS, but ``asyncio``
#: (and uvloop) import ``ssl``, which maps OpenSSL into every supervisor. With ``ssl`` blocked,
#: uvloop does not import and the supervisor runs on asyncio's loop, as fast here.
HELPER_BLOCKED_MODULES: dict[str, tuple[str, ...]] = {"_supervisor": ("ssl", "_ssl")}


def helper_argv(python: str, module: str, args: list[str], path_index: int = 0) -> list[str]:
    """The command line of a helper process (control descriptor 3)."""
    package_root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    blocked = HELPER_BLOCKED_MODULES.get(module, ())
    boot = (
        f"import sys; sys.modules.update(dict.fromkeys({blocked!r})); "
        f"sys.path.insert({path_index}, {package_root!r}); "
        f"from async_executor.{module} import main; main()"
    )
    return [python, "-c", boot, "--control-fd", "3", *args]


def exec_helper(
    python: str, module: str, args: list[str], env: Mapping[str, str], fds: list[int], output: int
) -> None:  # pragma: no cover - runs in a forked child; returns only if the exec failed
    """Become a helper process, in a forked child: ``fds`` as descriptors 3, 4, ...

    What :func:`spawn_helper` does, for a child that had to fork first (see
    ``SupervisorBackend.prefork``): stdin on /dev/null, stdout and stderr on ``output``,
    every other descriptor closed, then exec. Raises ``OSError`` if the exec fails.
    """
    wanted = [os.open(os.devnull, os.O_RDONLY), output, output, *fds]
    # move everything above the targets first, so no dup2 overwrites a source still needed
    high = [fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 64 + len(wanted)) for fd in wanted]
    for target, fd in enumerate(high):
        os.dup2(fd, target)  # inheritable
    os.closerange(len(wanted), _max_fd())
    os.execve(python, helper_argv(python, module, args), env)  # noqa: S606 - argv, no shell


def _max_fd() -> int:
    import resource

    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    return soft if 0 < soft < 1 << 20 else 1 << 16


def close_fds_except(keep: frozenset[int]) -> None:
    """Close every descriptor from 3 up, except those in ``keep``."""
    low = 3
    for fd in sorted(fd for fd in keep if fd >= low):
        os.closerange(low, fd)
        low = fd + 1
    os.closerange(low, _max_fd())


def start_helper(*control_fds: int | None) -> None:
    """First thing in a helper process (supervisor, fork server): keep only its own descriptors.

    ``posix_spawn`` passes on whatever the executor's process has that is inheritable (a
    pipe of the program that started it, descriptors its own parent left it): held by a
    helper that outlives the executor, a pipe would never reach EOF for its reader, and
    every task would inherit it again. The control descriptors stay, no longer inheritable.
    """
    keep = frozenset(fd for fd in control_fds if fd is not None)
    close_fds_except(keep)
    for fd in keep:
        os.set_inheritable(fd, False)


def inheritable_fds() -> tuple[int, ...]:
    """This process's descriptors from 3 up that an exec would pass on (no ``FD_CLOEXEC``)."""
    try:
        names = os.listdir("/proc/self/fd")
    except OSError:
        return ()
    found = []
    for name in names:
        fd = int(name)
        if fd <= 2:
            continue
        try:
            if os.get_inheritable(fd):
                found.append(fd)
        except OSError:  # the listing's own descriptor, closed by now
            continue
    return tuple(sorted(found))


def reap_in_background(pid: int) -> None:
    """Collect a helper process's exit status (it exits soon) without blocking the loop."""
    import threading

    def wait() -> None:
        try:
            os.waitpid(pid, 0)
        except ChildProcessError:
            pass

    threading.Thread(target=wait, name=f"async-executor-reaper-{pid}", daemon=True).start()


def _pidfd(pid: int) -> int | None:
    if not HAVE_PIDFD:
        return None
    try:
        return os.pidfd_open(pid)
    except OSError as exc:
        # ENOSYS on old kernels, or EMFILE right after the spawn: the child exists, so it
        # must not be lost; the backend polls for it instead.
        logger.debug("no pidfd for pid %d (%s); polling for its exit", pid, exc)
        return None


def signal_group(pgid: int, signum: int) -> bool:
    """Send ``signum`` to a whole process group; ``False`` if the group is already gone."""
    try:
        os.killpg(pgid, signum)
    except ProcessLookupError:
        return False
    except PermissionError:
        logger.warning("not permitted to signal process group %d with %s", pgid, signum)
        return False
    return True


def reap(child: Child) -> tuple[int | None, int | None] | None:
    """Collect an exited child's status as ``(returncode, signal)``; ``None`` if still running."""
    try:
        pid, status = os.waitpid(child.pid, os.WNOHANG)
    except ChildProcessError:
        # Already reaped elsewhere (e.g. by a stray waitpid(-1)): the status is lost.
        logger.warning("exit status of pid %d was collected by someone else", child.pid)
        _close_pidfd(child)
        return (None, None)
    if pid == 0:
        return None
    _close_pidfd(child)
    if os.WIFSIGNALED(status):
        result: tuple[int | None, int | None] = (None, os.WTERMSIG(status))
    else:
        result = (os.waitstatus_to_exitcode(status), None)
    if child.popen is not None:
        # Tell Popen the child is reaped, so it never waits for it again.
        child.popen.returncode = result[0] if result[0] is not None else -(result[1] or 0)
    return result


def _close_pidfd(child: Child) -> None:
    if child.pidfd is not None:
        os.close(child.pidfd)
        child.pidfd = None


_CLOCK_BOOTTIME = getattr(time, "CLOCK_BOOTTIME", None)
_TICK_NS = 10**9 // os.sysconf("SC_CLK_TCK") if 10**9 % os.sysconf("SC_CLK_TCK") == 0 else 0


def _boottime_ns() -> int | None:
    return time.clock_gettime_ns(_CLOCK_BOOTTIME) if _CLOCK_BOOTTIME is not None and _TICK_NS else None


def ticks_between(before: int | None, after: int | None) -> int | None:
    """A process's start time in clock ticks, from the boot clock read just before and just
    after the system call that created it: the tick of ``before``. ``None`` when the two
    readings are more than one tick boundary apart.

    The kernel stamps a new process with the boot clock (``/proc/PID/stat`` field 22 is that
    stamp in whole ticks), so the process started in the tick of ``before`` or, if a tick
    boundary lies between the two readings, possibly in the next one; :func:`same_start`
    accepts both. That spares reading ``/proc`` of a child that is still exec'ing, which
    waits for the exec: 0.5 ms at the median right after a handed-off spawn here, and 5 ms
    on average under load, with the spawning loop blocked all the while.
    """
    if before is None or after is None:
        return None
    tick = before // _TICK_NS
    return tick if after // _TICK_NS - tick <= 1 else None


def same_start(recorded: int, actual: int | None) -> bool:
    """Whether a process that started in tick ``actual`` is the one recorded with start
    ``recorded`` (see :func:`ticks_between`: the record may be one tick early). A pid is
    never reused within a tick or two: that would take a full cycle of the pid space."""
    return actual is not None and 0 <= actual - recorded <= 1


def proc_start_ticks(pid: int) -> int | None:
    """The process's start time in clock ticks since boot (``/proc/PID/stat`` field 22).

    Together with the pid it identifies a process: a reused pid has another start time.
    """
    try:  # os.open/os.read: three system calls, where open() makes eight
        fd = os.open(f"/proc/{pid}/stat", os.O_RDONLY | os.O_CLOEXEC)
        try:
            data = os.read(fd, 4096)
        finally:
            os.close(fd)
    except OSError:
        return None
    # The command name (field 2) may hold spaces and ")": split after its last ")".
    fields = data[data.rfind(b")") + 2 :].split()
    try:
        return int(fields[19])  # field 22 overall; fields[0] is field 3
    except (IndexError, ValueError):
        return None


class ProcessEvents(Protocol):
    """What a backend reports to the engine (always on the engine's loop)."""

    def spawned(self, token: Any, pid: int, proc_start: int | None = None, warm: bool = False) -> None: ...

    def spawn_failed(self, token: Any, exc: OSError, detail: str) -> None: ...

    def exited(
        self,
        token: Any,
        returncode: int | None,
        signum: int | None,
        detail: str | None = None,
        log_written: bool = True,
    ) -> None:
        """The task's process exited; ``log_written=False``: it has no log file (lazy logs)."""
        ...


class Backend(Protocol):
    """Owns task processes for the engine; tokens are the engine's opaque per-task objects."""

    name: str
    #: Whether an exit is on disk (a supervisor's exits file, which recovery reads) before the
    #: backend reports it: then, with a journal, the engine need not wait for its commit.
    records_exits: bool

    def open(self, loop: asyncio.AbstractEventLoop, events: ProcessEvents) -> None: ...

    async def wait_ready(self) -> None:
        """Return once the backend can spawn; raise a clear error if it never will."""
        ...

    def spawn(
        self,
        token: Any,
        argv: tuple[str, ...],
        env: Mapping[str, str] | None,
        cwd: str | None,
        log_path: str | None,
        tag: Any = None,
    ) -> None:
        """Start a task; report ``spawned`` or ``spawn_failed`` (now or later), then ``exited``.

        ``tag`` is opaque JSON data naming the task in durable exit records.
        """
        ...

    def stop(self, token: Any) -> None:
        """SIGTERM the task's process group; once its leader exits, SIGKILL what is left."""
        ...

    def kill(self, token: Any) -> None:
        """SIGKILL the task's process group now."""
        ...

    def abandon(self, token: Any) -> None:
        """Stop watching a task whose process will not die."""
        ...

    def close(self) -> None: ...


#: Seconds between polls for children we could not get a pidfd for.
POLL_INTERVAL = 0.02


class LocalBackend:
    """Task processes as children of this process, each watched through a pidfd.

    The pidfds sit in one epoll set of this backend's own, which the event loop watches as a
    single reader: registering a pidfd there is one C call, where a ``loop.add_reader`` per child
    cost asyncio's loop (the supervisor's) ~30 µs of CPU per task in selector bookkeeping and
    callback handles (measured here; no difference on uvloop).
    """

    name = "local"
    records_exits = False

    def __init__(
        self,
        launcher: Launcher | None = None,
        warm: WarmStart | None = None,
        memory_logs: MemoryLogs | None = None,
    ) -> None:
        self._launcher = launcher
        self._warm_config = warm
        #: Lazy logs: tasks write to memory files, log files only for tasks that wrote.
        self._memlogs = memory_logs
        #: The fork server for warm Python launches (started by its first launch).
        self.forkserver: ForkServer | None = None
        self._warm_tasks: set[asyncio.Task[None]] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._events: ProcessEvents | None = None
        self._children: dict[Any, Child] = {}
        self._stopping: set[Any] = set()
        self._polled: list[Any] = []
        self._poll_handle: asyncio.TimerHandle | None = None
        self._devnull_w = -1
        #: A fork server forked from this process before the loop started: (pid, socket).
        self._forked: tuple[int, socket.socket] | None = None
        #: The children's pidfds (level-triggered), and whose each one is.
        self._pidfds: select.epoll | None = None
        self._by_pidfd: dict[int, Any] = {}

    def prefork(self) -> None:
        """With ``fork_from_caller``, fork the fork server now, from the calling thread.

        Called by the synchronous ``start()`` before the loop thread exists. If the fork
        fails, the server starts the usual way (exec'd) on the first warm launch.
        """
        config = self._warm_config
        if config is None or not config.fork_from_caller or self._forked is not None:
            return
        from ._forkserver import clone_parent_supported, fork_server

        if not clone_parent_supported():
            return
        try:
            self._forked = fork_server(config.imports)
        except OSError as exc:
            logger.warning("could not fork the fork server (%s); it starts on the first warm launch", exc)

    def drop_prefork(self) -> None:
        """Let go of a fork server ``prefork()`` started if ``open()`` never took it."""
        forked, self._forked = self._forked, None
        if forked is not None:
            forked[1].close()  # it exits on EOF
            reap_in_background(forked[0])

    def adopt_forkserver(self, pid: int, sock: socket.socket) -> None:
        """Use this fork server (our child, forked from our owner's process) once open."""
        self._forked = (pid, sock)

    def open(self, loop: asyncio.AbstractEventLoop, events: ProcessEvents) -> None:
        self._loop, self._events = loop, events
        if self._memlogs is not None:
            self._memlogs.attach(loop)
        if self._launcher is None:
            self._launcher = ExecLauncher()
        forked, self._forked = self._forked, None
        if self._warm_config is not None:
            from ._forkserver import ForkServer

            base_env = getattr(self._launcher, "environment", lambda _: dict(os.environ))(None)
            self.forkserver = ForkServer(self._warm_config, base_env)
            if forked is not None and self.forkserver.disabled_reason is None:
                self.forkserver.adopt(loop, *forked)
                forked = None
        if forked is not None:  # not usable here: let it go (it exits on EOF)
            forked[1].close()
            reap_in_background(forked[0])
        self._devnull_w = os.open(os.devnull, os.O_WRONLY | os.O_CLOEXEC)
        if HAVE_PIDFD and hasattr(select, "epoll"):
            self._pidfds = select.epoll()
            loop.add_reader(self._pidfds.fileno(), self._pidfds_ready)

    async def wait_ready(self) -> None:
        """Ready as soon as it is open: it spawns in this process."""

    def close(self) -> None:
        if self._poll_handle is not None:
            self._poll_handle.cancel()
        if self._pidfds is not None:
            if self._loop is not None:
                self._loop.remove_reader(self._pidfds.fileno())
            self._pidfds.close()
            self._pidfds = None
        for task in self._warm_tasks:
            task.cancel()
        if self.forkserver is not None:
            self.forkserver.close()
        if self._launcher is not None:
            self._launcher.close()
        if self._memlogs is not None:
            self._memlogs.close()
        if self._devnull_w >= 0:
            os.close(self._devnull_w)
            self._devnull_w = -1

    def spawn(
        self,
        token: Any,
        argv: tuple[str, ...],
        env: Mapping[str, str] | None,
        cwd: str | None,
        log_path: str | None,
        tag: Any = None,
    ) -> None:
        assert self._events is not None
        if self.forkserver is not None and self.forkserver.accepts(argv, env):
            assert self._loop is not None
            task = self._loop.create_task(self._spawn_warm(token, argv, env, cwd, log_path))
            self._warm_tasks.add(task)
            task.add_done_callback(self._warm_tasks.discard)
            return
        out_fd = self._open_output(token, log_path)
        if out_fd is None:
            return
        self._spawn_cold(token, argv, env, cwd, log_path, out_fd)

    def _open_output(self, token: Any, log_path: str | None) -> int | None:
        """The descriptor for the task's stdout+stderr; ``None`` (and the task failed) if none.

        :meth:`_release_output` closes it after the spawn (a memory file of lazy logs stays open
        until the task ends). With lazy logs ``log_path`` is ``None``: every task is captured.
        """
        try:
            if self._memlogs is not None:
                return self._memlogs.open(token)
            if log_path is None:
                return self._devnull_w
            return open_log(log_path)
        except OSError as exc:
            assert self._events is not None
            what = "capture the output" if log_path is None else f"open log file {log_path}"
            self._events.spawn_failed(token, exc, f"could not {what}: {exc.strerror or exc}")
            return None

    def _release_output(self, token: Any, log_path: str | None, out_fd: int, started: bool) -> None:
        """The spawn is over: close a log file's descriptor (the child has its own copy); a memory
        file stays with :class:`MemoryLogs` if the task started, and is dropped if not."""
        if self._memlogs is not None:
            if not started:
                self._memlogs.discard(token)
        elif log_path is not None:
            os.close(out_fd)  # not the shared /dev/null

    def _spawn_cold(
        self,
        token: Any,
        argv: tuple[str, ...],
        env: Mapping[str, str] | None,
        cwd: str | None,
        log_path: str | None,
        out_fd: int,
    ) -> None:
        assert self._launcher is not None
        assert self._events is not None
        try:
            child = self._launcher.launch(argv, env, cwd, out_fd)
        except BaseException as exc:
            self._release_output(token, log_path, out_fd, started=False)
            if not isinstance(exc, OSError):
                raise
            self._events.spawn_failed(token, exc, _start_error(argv, cwd, exc))
            return
        self._release_output(token, log_path, out_fd, started=True)
        child.pidfd = _pidfd(child.pid)  # after the log's descriptor is released
        self._children[token] = child
        self._watch(token, child)
        self._events.spawned(token, child.pid, child.start_ticks)

    async def _spawn_warm(
        self,
        token: Any,
        argv: tuple[str, ...],
        env: Mapping[str, str] | None,
        cwd: str | None,
        log_path: str | None,
    ) -> None:
        """Fork the task from the warm server; exec it cold if the server cannot serve it.

        The child waits on a "go" pipe until it is registered here and ``spawned`` has been
        reported (and, under a supervisor, journaled): closing the pipe unwritten makes it
        exit without running, so a launch lost half-way never runs unwatched.
        """
        from ._forkserver import ForkServerUnavailable

        assert self._events is not None
        assert self.forkserver is not None
        out_fd = self._open_output(token, log_path)
        if out_fd is None:
            return
        try:
            pid, go_w = await self.forkserver.launch(argv, env, cwd, out_fd)
        except ForkServerUnavailable as exc:
            logger.info("warm launch of %r not possible (%s); exec'ing it", argv[2], exc)
            self._spawn_cold(token, argv, env, cwd, log_path, out_fd)  # closes out_fd
            return
        except asyncio.CancelledError:  # the backend is closing
            self._release_output(token, log_path, out_fd, started=False)
            raise
        except Exception as exc:
            self._release_output(token, log_path, out_fd, started=False)
            if not isinstance(exc, OSError):  # a bug: still, the task gets its one outcome
                logger.exception("warm launch of %r failed", argv)
                exc = OSError(errno.EIO, f"warm launch failed: {exc!r}")
            self._events.spawn_failed(token, exc, _start_error(argv, cwd, exc))
            return
        self._release_output(token, log_path, out_fd, started=True)
        child = Child(pid, _pidfd(pid))
        self._children[token] = child
        self._watch(token, child)
        try:
            self._events.spawned(token, pid, None, True)
        finally:
            try:
                os.write(go_w, b"1")
            except OSError:  # the child is gone already (e.g. stopped meanwhile): it is reaped
                pass
            os.close(go_w)

    def _watch(self, token: Any, child: Child) -> None:
        assert self._loop is not None
        if child.pidfd is not None and self._pidfds is not None:
            self._pidfds.register(child.pidfd, select.EPOLLIN)
            self._by_pidfd[child.pidfd] = token
        else:
            self._polled.append(token)
            if self._poll_handle is None:
                self._poll_handle = self._loop.call_later(POLL_INTERVAL, self._poll)

    def stop(self, token: Any) -> None:
        child = self._children.get(token)
        if child is not None:
            self._stopping.add(token)
            signal_group(child.pgid, signal.SIGTERM)

    def kill(self, token: Any) -> None:
        child = self._children.get(token)
        if child is not None:
            signal_group(child.pgid, signal.SIGKILL)

    def abandon(self, token: Any) -> None:
        child = self._children.pop(token, None)
        self._stopping.discard(token)
        if self._memlogs is not None:
            self._memlogs.discard(token)
        if child is not None and child.pidfd is not None:
            self._unwatch(child.pidfd)
            _close_pidfd(child)

    def _unwatch(self, pidfd: int) -> None:
        if pidfd in self._by_pidfd:  # (a token may be any value, None included)
            del self._by_pidfd[pidfd]
            if self._pidfds is not None:
                self._pidfds.unregister(pidfd)

    def _pidfds_ready(self) -> None:
        """Some children have exited: handle each (a batch per wake-up; the rest come next)."""
        if self._pidfds is None:
            return
        by_pidfd = self._by_pidfd
        for pidfd, _ in self._pidfds.poll(0):
            if pidfd in by_pidfd:  # else: unwatched by an exit handled just before
                self._exited(by_pidfd[pidfd])

    def _exited(self, token: Any) -> None:
        """The task's main process has exited (a zombie until reaped here)."""
        child = self._children.get(token)
        if child is None:
            return
        if token in self._stopping:
            # Being stopped: kill what is left of the group while the zombie leader still
            # pins the process-group id (so it cannot have been reused).
            signal_group(child.pgid, signal.SIGKILL)
        if child.pidfd is not None:
            self._unwatch(child.pidfd)  # before reap() closes it
        status = reap(child)
        if status is None:  # spurious wake-up; keep watching (a polled child: _poll does)
            if child.pidfd is not None:
                self._watch(token, child)
            return
        del self._children[token]
        self._stopping.discard(token)
        assert self._events is not None
        written, problem = (True, None) if self._memlogs is None else self._memlogs.finish(token)
        self._events.exited(token, *status, problem, written)

    def _poll(self) -> None:
        """Fallback for children without a pidfd."""
        self._poll_handle = None
        polled, self._polled = self._polled, []
        for token in polled:
            child = self._children.get(token)
            if child is None:
                continue
            if _exited_unreaped(child.pid):
                self._exited(token)
            if token in self._children:
                self._polled.append(token)
        if self._polled and self._loop is not None:
            self._poll_handle = self._loop.call_later(POLL_INTERVAL, self._poll)


def _exited_unreaped(pid: int) -> bool:
    """Has ``pid`` exited? Leaves it unreaped where the platform allows (Linux waitid)."""
    waitid = getattr(os, "waitid", None)
    if waitid is None:  # pragma: no cover - non-Linux: reap() with WNOHANG decides
        return True
    try:
        return waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
    except ChildProcessError:
        return True
