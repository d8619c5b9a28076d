"""Where a task is spawned, watched and killed.

The fast path is ``os.posix_spawn`` (glibc: ``clone(CLONE_VM|CLONE_VFORK)``, so a large
parent is never copied) with ``setsid`` giving every task its own session and process
group, and ``os.pidfd_open`` telling the event loop when the child exits. Tasks with a
``cwd`` fall back to ``subprocess.Popen`` (vfork on 3.10+), because ``posix_spawn`` has no
chdir action in Python. Exec errors surface synchronously as ``OSError``.

The launcher is a seam: anything with ``launch()`` returning a :class:`Child` can replace
:class:`ExecLauncher` (a warm fork server is the planned second one).
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
import signal
import subprocess
from collections.abc import Mapping
from typing import Protocol

import attrs

logger = logging.getLogger("async_executor.spawn")

HAVE_PIDFD = hasattr(os, "pidfd_open")

#: ``OSError`` numbers that mean "out of descriptors / processes / memory right now":
#: admission waits and retries instead of failing the task.
RESOURCE_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.EAGAIN, errno.ENOMEM})


@attrs.define(slots=True, eq=False)
class Child:
    """A launched task process: its pid (also its process-group id) and exit handle."""

    pid: int
    #: A pidfd that becomes readable when the process exits (``None`` without pidfd support).
    pidfd: int | None
    popen: subprocess.Popen[bytes] | None = None

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

    def __init__(self) -> None:
        self._base_env: dict[str, str] = dict(os.environ)
        self._base_path = self._base_env.get("PATH", os.defpath)
        self._devnull = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)

    def close(self) -> None:
        if self._devnull >= 0:
            os.close(self._devnull)
            self._devnull = -1

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
        actions = [
            (os.POSIX_SPAWN_DUP2, self._devnull, 0),
            (os.POSIX_SPAWN_DUP2, out_fd, 1),
            (os.POSIX_SPAWN_DUP2, out_fd, 2),
        ]
        if "/" in program or path == self._base_path:
            spawn = os.posix_spawn if "/" in program else os.posix_spawnp
            pid = spawn(program, argv, environ, file_actions=actions, setsid=True)
        else:
            # The task's own PATH decides, as it would for Popen(env=...).
            resolved = shutil.which(program, path=path)
            if resolved is None:
                raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), program)
            pid = os.posix_spawn(resolved, argv, environ, file_actions=actions, setsid=True)
        return Child(pid, _pidfd(pid))

    def _launch_popen(self, argv: tuple[str, ...], environ: dict[str, str], cwd: str, out_fd: int) -> Child:
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
        return Child(popen.pid, _pidfd(popen.pid), popen)


def _pidfd(pid: int) -> int | None:
    if not HAVE_PIDFD:
        return None
    try:
        return os.pidfd_open(pid)
    except OSError as exc:  # ENOSYS on old kernels; EMFILE is handled by the caller's budget
        if exc.errno == errno.ENOSYS:
            return None
        raise


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


def reap(child: Child, *, block: bool = False) -> tuple[int | None, int | None] | None:
    """Collect an exited child's status as ``(returncode, signal)``; ``None`` if still running."""
    try:
        pid, status = os.waitpid(child.pid, 0 if block else os.WNOHANG)
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


def signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"
