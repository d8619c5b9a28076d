"""Warm start: a fork server that launches Python task commands in milliseconds.

A cold ``python -m MOD`` pays for the interpreter and every import before the task does
anything (an Airflow task: ~1.6 s of CPU and ~110 MB here). The fork server is a Python
process, started lazily, that imports the configured modules once, calls ``gc.freeze()``
and then, per launch request, forks a child that runs the command's entry point with
``python -m`` (or ``-c``) semantics: ``sys.argv``, ``sys.path[0]``, environment and cwd
as a fresh interpreter would have them, its own session, stdin on /dev/null and stdout +
stderr on the task's log file.

The child is forked with ``clone(CLONE_PARENT)``: its parent is the fork server's parent,
the process that owns the tasks (the executor, or its supervisor). To the engine a warm
task is therefore an ordinary child: pidfd, ``waitpid``, process-group signals, timeouts,
``terminate()`` and adoption work exactly as for an exec'd one, and a fork server that dies
takes no task with it. A child first waits for a "go" byte on a pipe that only the owner
can write, sent once the owner has registered its pid (and the supervisor has journaled
it): if the request is lost half-way, the child exits without running anything, so no
task ever runs unwatched or twice.

Which commands go warm is explicit (:class:`WarmStart`); everything else is exec'd. The
server talks only over a socketpair with its parent, and forks only while single-threaded.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import gc
import importlib
import logging
import os
import platform
import re
import signal
import socket
import struct
import sys
import time
from collections.abc import Iterator, Mapping
from typing import Any

import attrs
import orjson

from ._limits import TaskNofile, raise_nofile_limit, set_task_nofile, task_nofile_args
from ._spawn import close_fds_except, inherited_ignores, reap_in_background, spawn_helper, start_helper

logger = logging.getLogger("async_executor.forkserver")

_MAX_MESSAGE = 1 << 20
#: How long a started fork server may take to import its modules before it is given up.
DEFAULT_START_TIMEOUT = 120.0
#: How long one launch request may wait for its reply before the server is presumed hung.
REPLY_TIMEOUT = 60.0
#: Consecutive failed starts after which warm start is switched off for this owner.
MAX_START_FAILURES = 3
_STATUS = struct.Struct("i")

# ---------------------------------------------------------------------------- configuration

_MODULE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*(\.\*)?$")


def _names(value: Any) -> tuple[str, ...]:
    if isinstance(value, str):
        value = (value,)
    names = tuple(value)
    for name in names:
        if not isinstance(name, str) or not _MODULE.match(name):
            raise ValueError(f"not a module name (or 'package.*'): {name!r}")
    return names


def _prefixes(value: Any) -> tuple[str, ...]:
    prefixes = (value,) if isinstance(value, str) else tuple(value)
    if not all(isinstance(prefix, str) and prefix for prefix in prefixes):
        raise ValueError(f"match_env takes non-empty variable-name prefixes, not {value!r}")
    return prefixes


def _variables(value: Any) -> frozenset[str]:
    names = frozenset((value,) if isinstance(value, str) else value)
    if not all(isinstance(name, str) and name and "=" not in name for name in names):
        raise ValueError(f"runtime_env takes environment variable names, not {value!r}")
    return names


def _preload(value: Any) -> tuple[str, ...] | None:
    if value is None:
        return None
    names = _names(value)
    if any(name.endswith(".*") for name in names):
        raise ValueError("preload takes module names, not 'package.*' patterns")
    return names


@attrs.frozen(kw_only=True)
class WarmStart:
    """Which Python commands start warm from a fork server, and what it pre-imports.

    A command goes warm when ``argv[0]`` is ``python`` (the interpreter the fork server
    runs, named by path or found on ``PATH``) and ``argv[1]`` is ``-m`` with a module in
    ``modules`` (``"pkg.*"`` allows a package's submodules), or ``-c`` when ``inline_code``
    is true; and when the task's environment overrides leave every variable that starts
    with one of ``match_env`` as the fork server has it (those shape the interpreter or the
    pre-imported modules at import time, so a task that changes them is exec'd cold), except
    the variables named in ``runtime_env``.
    """

    #: Modules whose ``python -m MOD ...`` commands may start warm.
    modules: tuple[str, ...] = attrs.field(default=(), converter=_names)
    #: Modules the fork server imports before it forks; default: ``modules`` minus patterns.
    preload: tuple[str, ...] | None = attrs.field(default=None, converter=_preload)
    #: Also start ``python -c CODE ...`` commands warm.
    inline_code: bool = False
    #: The interpreter: the fork server runs it, and commands must name it.
    python: str = attrs.field(factory=lambda: sys.executable)
    #: Environment variable prefixes a warm task must not change.
    match_env: tuple[str, ...] = attrs.field(default=("PYTHON",), converter=_prefixes)
    #: Variables a warm task may change although ``match_env`` covers them: read only when
    #: used, after the fork (the fork server sets a task's environment in ``os.environ``).
    runtime_env: frozenset[str] = attrs.field(default=frozenset(), converter=_variables)
    #: Seconds the fork server may take to import ``preload`` (then tasks are exec'd cold).
    start_timeout: float = DEFAULT_START_TIMEOUT
    #: Start the fork server by forking the process that calls ``AsyncExecutor.start()``
    #: (before its loop thread starts) instead of a fresh interpreter: it shares that
    #: process's already-imported modules copy-on-write, and only imports what ``preload``
    #: adds. Its children inherit the caller's modules and state, not a fresh interpreter's
    #: (as Airflow's LocalExecutor workers do). A server that dies is restarted fresh.
    fork_from_caller: bool = False

    @property
    def imports(self) -> tuple[str, ...]:
        """What the fork server imports before it forks."""
        if self.preload is not None:
            return self.preload
        return tuple(name for name in self.modules if not name.endswith(".*"))

    def allows_module(self, module: str) -> bool:
        for name in self.modules:
            if name.endswith(".*"):
                if module.startswith(name[:-1]):
                    return True
            elif module == name:
                return True
        return False

    def accepts(
        self, argv: tuple[str, ...], env: Mapping[str, str] | None, base_env: Mapping[str, str]
    ) -> bool:
        """Does this command start warm? (See the class docstring for the rule.)"""
        if len(argv) < 3 or not same_python(argv[0], self.python, base_env):
            return False
        if argv[1] == "-m":
            if not self.allows_module(argv[2]):
                return False
        elif argv[1] != "-c" or not self.inline_code:
            return False
        if env:
            for name, value in env.items():
                if (
                    name.startswith(self.match_env)
                    and base_env.get(name) != value
                    and name not in self.runtime_env
                ):
                    return False
        return True

    def to_json(self) -> dict[str, Any]:
        return {
            "modules": list(self.modules),
            "preload": None if self.preload is None else list(self.preload),
            "inline_code": self.inline_code,
            "python": self.python,
            "match_env": list(self.match_env),
            "runtime_env": sorted(self.runtime_env),
            "start_timeout": self.start_timeout,
            "fork_from_caller": self.fork_from_caller,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> WarmStart:
        return cls(**data)


def same_python(program: str, python: str, env: Mapping[str, str]) -> bool:
    """Is ``program`` the interpreter ``python``, by path or by name on ``PATH``?

    Symlinks are not followed: a virtualenv's ``python`` links to the base interpreter but
    is another environment. ``python``, ``python3`` and ``python3.X`` next to each other
    are the same one.
    """
    if "/" not in program:
        import shutil

        found = shutil.which(program, path=env.get("PATH", os.defpath))
        if found is None:
            return False
        program = found
    program, python = os.path.abspath(program), os.path.abspath(python)
    if program == python:
        return True
    if os.path.dirname(program) != os.path.dirname(python):
        return False
    names = {"python", f"python{sys.version_info[0]}", f"python{sys.version_info[0]}.{sys.version_info[1]}"}
    return os.path.basename(program) in names and os.path.basename(python) in names


# ---------------------------------------------------------------------------- clone(CLONE_PARENT)

_CLONE_PARENT = 0x00008000
_SYS_CLONE = {"x86_64": 56, "aarch64": 220, "arm64": 220}


def clone_parent_supported() -> bool:
    """Can this platform fork a sibling (Linux on x86-64 or arm64)?"""
    return sys.platform == "linux" and platform.machine() in _SYS_CLONE


def _clone_parent() -> int:
    """Fork a child whose parent is our parent; returns 0 in the child, like ``os.fork()``.

    ``os.fork()`` cannot do this, so the ``clone`` system call is made directly, with
    Python's own before/after-fork steps around it (import lock, threading state,
    ``os.register_at_fork`` hooks such as ``random``'s reseed). Only ever called while the
    process has a single thread. The arguments after the flags are all zero on every
    architecture listed in ``_SYS_CLONE``, so their order does not matter.
    """
    import ctypes

    libc = ctypes.PyDLL(None, use_errno=True)  # PyDLL: keep the GIL across the call
    libc.syscall.restype = ctypes.c_long
    api = ctypes.pythonapi
    api.PyOS_BeforeFork()
    pid = int(
        libc.syscall(
            ctypes.c_long(_SYS_CLONE[platform.machine()]),
            ctypes.c_ulong(_CLONE_PARENT | signal.SIGCHLD),
            ctypes.c_long(0),
            ctypes.c_long(0),
            ctypes.c_long(0),
            ctypes.c_long(0),
        )
    )
    if pid == 0:
        api.PyOS_AfterFork_Child()
        return 0
    code = ctypes.get_errno()
    api.PyOS_AfterFork_Parent()
    if pid < 0:
        raise OSError(code, os.strerror(code))
    return pid


# ---------------------------------------------------------------------------- the server process


class _Server:
    """Runs in the fork server: imports, freezes, then forks one child per request."""

    def __init__(
        self, sock: socket.socket, imports: tuple[str, ...], placeholders: frozenset[int] = frozenset()
    ) -> None:
        self.sock = sock
        self.imports = imports
        #: Descriptors kept open on /dev/null in the children (see :func:`serve_forked`).
        self.placeholders = placeholders
        self.base_env = dict(os.environ)
        self.base_path = list(sys.path)
        self.signals = {
            sig: signal.getsignal(sig)
            for sig in signal.valid_signals()
            if sig not in (signal.SIGKILL, signal.SIGSTOP)
        }
        #: The soft open-file limit of tasks: the executor's from before it raised its own.
        self.nofile = TaskNofile()
        self.nofile.limits  # noqa: B018 - resolved once here, not in every child

    def serve(self) -> None:
        import runpy  # noqa: F401 - every "-m" launch needs it: import it once, not per child

        failed: dict[str, str] = {}
        started = time.perf_counter()
        for name in self.imports:
            try:
                importlib.import_module(name)
            except BaseException as exc:  # a broken module must not stop the server
                failed[name] = f"{type(exc).__name__}: {exc}"
        gc.collect()
        gc.freeze()
        _release_free_memory()
        self._send(
            {
                "op": "ready",
                "pid": os.getpid(),
                "failed": failed,
                "import_s": round(time.perf_counter() - started, 3),
                "threads": _thread_count(),
            }
        )
        while True:
            try:
                data, fds, _flags, _ = socket.recv_fds(self.sock, _MAX_MESSAGE, 4)
            except InterruptedError:
                continue
            except OSError:
                return
            if not data:
                for fd in fds:
                    os.close(fd)
                return  # the owner went away: so do we
            request = orjson.loads(data)
            try:
                self._launch(request, fds)
            finally:
                for fd in fds:
                    os.close(fd)

    def _send(self, message: dict[str, Any]) -> None:
        self.sock.sendall(orjson.dumps(message))

    def _launch(self, request: dict[str, Any], fds: list[int]) -> None:
        task = request["id"]
        if len(fds) != 2:
            self._send({"op": "launched", "id": task, "error": "expected a log and a go descriptor"})
            return
        threads = _thread_count()
        if threads != 1:
            self._send(
                {
                    "op": "launched",
                    "id": task,
                    "error": f"the fork server has {threads} threads (a preloaded module started them); "
                    "it only forks single-threaded",
                }
            )
            return
        status_r, status_w = os.pipe()
        for stream in (sys.stdout, sys.stderr):
            if stream is not None:
                stream.flush()
        gc.freeze()
        try:
            pid = _clone_parent()
        except OSError as exc:
            os.close(status_r)
            os.close(status_w)
            self._send({"op": "launched", "id": task, "errno": exc.errno, "error": str(exc)})
            return
        if pid == 0:  # pragma: no cover - runs in the child, which never returns
            os.close(status_r)
            self._child(request, fds[0], fds[1], status_w)
        os.close(status_w)
        status = b""
        while len(status) < _STATUS.size:
            chunk = os.read(status_r, _STATUS.size - len(status))
            if not chunk:
                break
            status += chunk
        os.close(status_r)
        code = _STATUS.unpack(status)[0] if len(status) == _STATUS.size else errno.EIO
        self._send({"op": "launched", "id": task, "pid": pid, "errno": code})

    def _child(
        self, request: dict[str, Any], out_fd: int, go_fd: int, status_w: int
    ) -> None:  # pragma: no cover
        """In the forked child: set up like a fresh interpreter, wait for "go", run, exit."""
        try:
            self.sock.close()  # the owner must see EOF when the server dies, not when we do
            os.setsid()
            cwd = request.get("cwd")
            if cwd is not None:
                os.chdir(cwd)
            null = os.open(os.devnull, os.O_RDONLY)
            os.dup2(null, 0)
            os.close(null)
            os.dup2(out_fd, 1)
            os.dup2(out_fd, 2)
        except OSError as exc:
            os.write(status_w, _STATUS.pack(exc.errno or errno.EIO))
            os._exit(127)
        os.write(status_w, _STATUS.pack(0))
        os.close(status_w)
        try:
            go = os.read(go_fd, 1)
        except OSError:
            go = b""
        if go != b"1":  # the owner never registered this pid: do not run unwatched
            os._exit(126)
        close_fds_except(self.placeholders)
        self.nofile.apply()  # after closing: that goes up to the (raised) limit in force
        _set_title(request["argv"])
        for sig, handler in self.signals.items():
            try:
                if signal.getsignal(sig) is not handler and handler is not None:
                    signal.signal(sig, handler)
            except (OSError, ValueError, TypeError):
                continue
        signal.pthread_sigmask(signal.SIG_SETMASK, ())
        os.environ.clear()
        os.environ.update(self.base_env)
        os.environ.update(request.get("env") or {})
        _finish(_run_main(request["argv"], self.base_path))


def _set_title(argv: list[str]) -> None:  # pragma: no cover - in the child
    """Show the task's own command in ``ps`` (a forked child still has the server's)."""
    try:
        import setproctitle

        setproctitle.setproctitle(" ".join(argv))
    except ImportError:  # at least the short name (prctl PR_SET_NAME, 15 bytes)
        try:
            with open("/proc/self/comm", "w") as handle:
                handle.write(os.path.basename(argv[2] if argv[1] == "-m" else argv[0])[:15])
        except OSError:
            return


def _release_free_memory() -> None:
    """Give the heap's free pages back to the system (glibc ``malloc_trim``), once, idle.

    Importing leaves freed memory behind in the allocator; in a server that then only
    forks, those pages would stay resident (and be inherited by every child) for nothing.
    """
    try:
        import ctypes

        ctypes.CDLL(None).malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        return


def _thread_count() -> int:
    try:
        return len(os.listdir("/proc/self/task"))
    except OSError:
        import threading

        return threading.active_count()


def _run_main(argv: list[str], base_path: list[str]) -> int:  # pragma: no cover - in the child
    """Run ``python -m MOD args`` or ``python -c CODE args`` in this process; the exit code."""
    import runpy

    try:
        if argv[1] == "-m":
            sys.argv = ["-m", *argv[3:]]
            sys.path[:] = [os.getcwd(), *base_path[1:]]
            _forget_main_module(argv[2])
            runpy._run_module_as_main(argv[2], alter_argv=True)  # type: ignore[attr-defined]
        else:
            import builtins
            import types

            sys.argv = ["-c", *argv[3:]]
            sys.path[:] = ["", *base_path[1:]]
            main = types.ModuleType("__main__")
            main.__dict__["__builtins__"] = builtins
            sys.modules["__main__"] = main
            # what python -c does with its argument:
            exec(compile(argv[2], "<string>", "exec"), main.__dict__)  # noqa: S102
    except SystemExit as exc:
        return _exit_code(exc.code)
    except KeyboardInterrupt:
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        _flush()
        os.kill(os.getpid(), signal.SIGINT)
        return 130
    except BaseException as exc:
        # Leave this function's frame out, as a fresh interpreter's traceback would.
        trimmed = exc.__traceback__.tb_next if exc.__traceback__ else None
        sys.excepthook(type(exc), exc.with_traceback(trimmed), trimmed)
        return 1
    return 0


def _forget_main_module(name: str) -> None:  # pragma: no cover - in the child
    """Drop a preloaded copy of the module ``-m`` is about to run as ``__main__``.

    A fresh ``python -m MOD`` has not imported MOD; runpy warns ("found in sys.modules ... prior
    to execution") when it has been, as it is when the fork server preloaded it.  Packages stay
    (their ``__main__`` submodule is what runs).
    """
    module = sys.modules.get(name)
    if module is not None and hasattr(module, "__path__"):
        name += ".__main__"
        module = sys.modules.get(name)
    if module is not None and not hasattr(module, "__path__"):
        del sys.modules[name]


def _exit_code(code: object) -> int:
    if code is None:
        return 0
    if isinstance(code, int):
        return code & 0xFF
    print(code, file=sys.stderr)
    return 1


def _flush() -> None:
    for stream in (sys.stdout, sys.stderr):
        try:
            if stream is not None:
                stream.flush()
        except Exception:  # noqa: S112 - a closed or broken stream cannot stop the exit
            continue


def _finish(code: int) -> None:  # pragma: no cover - in the child
    """Exit the way an interpreter does: join threads, run atexit, flush, leave."""
    import atexit
    import threading

    try:
        threading._shutdown()  # type: ignore[attr-defined]
    except Exception:
        logger.debug("threading shutdown failed", exc_info=True)
    atexit._run_exitfuncs()
    _flush()
    os._exit(code)


def main(argv: list[str] | None = None) -> None:
    import argparse

    parser = argparse.ArgumentParser(prog="async_executor._forkserver")
    parser.add_argument("--control-fd", type=int, required=True)
    parser.add_argument("--imports", default="")
    parser.add_argument("--task-nofile", type=int, default=None)
    args = parser.parse_args(argv)
    start_helper(args.control_fd)
    if args.task_nofile is not None:
        set_task_nofile(args.task_nofile)
    raise_nofile_limit()  # as a forked server has it (see serve_forked)
    sock = socket.socket(fileno=args.control_fd)
    imports = tuple(name for name in args.imports.split(",") if name)
    _Server(sock, imports).serve()


def fork_server(imports: tuple[str, ...], stderr_fd: int | None = None) -> tuple[int, socket.socket]:
    """Fork a fork server from this process (``fork_from_caller``); its pid and our socket end.

    The server shares this process's imported modules copy-on-write and imports only what
    ``imports`` adds. Call it while this thread is the only one that matters (before the
    executor's loop thread starts): the server keeps only this thread. Like Airflow's
    LocalExecutor, the collector is frozen around the fork so that the parent's next
    collections do not touch (and so copy) the pages the two processes share.
    ``stderr_fd`` becomes the server's stderr (default: ours). Raises ``OSError``.
    """
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    with frozen_gc():
        try:
            pid = os.fork()
        except OSError:
            ours.close()
            theirs.close()
            raise
        if pid == 0:  # pragma: no cover - the server, which never returns
            ours.close()
            serve_forked(theirs, imports, stderr_fd)
    theirs.close()
    return pid, ours


@contextlib.contextmanager
def frozen_gc() -> Iterator[None]:
    """``gc.freeze()`` for the duration (undone only if nothing was frozen before)."""
    frozen_before = gc.get_freeze_count()
    gc.freeze()
    try:
        yield
    finally:
        if not frozen_before:
            gc.unfreeze()


def serve_forked(
    sock: socket.socket, imports: tuple[str, ...], stderr_fd: int | None
) -> None:  # pragma: no cover - runs in the forked server, never returns
    """Turn a fork of the owner's process into a fork server, serve, and ``_exit``.

    What the owner's process had that a fresh server would not is undone: its descriptors
    (pipes, sockets, files: they stay open on /dev/null, so no stale object can reach a
    descriptor the server or a task opens later, and nothing of the owner's is held
    open), its signal handlers and mask, its ``sys.std*`` replacements and its ``atexit``
    handlers (the owner's, not the task's; ``logging.shutdown`` is kept). The server never
    returns into the caller's stack.
    """
    code = 1
    try:
        try:
            os.setsid()  # like an exec'd helper: signals aimed at the owner's group miss it
        except OSError:
            pass
        placeholders = _detach_descriptors(sock.fileno(), stderr_fd)
        _reset_signals()
        for name in ("stdin", "stdout", "stderr"):
            original = getattr(sys, f"__{name}__", None)
            if original is not None:
                setattr(sys, name, original)
        import atexit

        atexit._clear()
        atexit.register(logging.shutdown)
        raise_nofile_limit()  # as the supervisor (which spawns cold tasks) has it
        _set_server_title(sock.fileno())
        _Server(sock, imports, placeholders).serve()
        code = 0
    except ConnectionError:  # the owner went away first
        code = 0
    except BaseException:
        import traceback

        traceback.print_exc()
    finally:
        _flush()
        os._exit(code)


def _detach_descriptors(keep: int, stderr_fd: int | None) -> frozenset[int]:  # pragma: no cover
    """0 and 1 on /dev/null, 2 on ``stderr_fd``; every other inherited one on /dev/null."""
    null = os.open(os.devnull, os.O_RDWR)
    os.dup2(null, 0)
    os.dup2(null, 1)
    if stderr_fd is not None:
        os.dup2(stderr_fd, 2)
    placeholders = set()
    for fd in [int(name) for name in os.listdir("/proc/self/fd")]:
        if fd <= 2 or fd in (keep, null, stderr_fd):
            continue
        try:
            os.dup2(null, fd, inheritable=False)
        except OSError:  # the listing's own descriptor, closed meanwhile
            continue
        placeholders.add(fd)
    if stderr_fd is not None and stderr_fd > 2:
        os.dup2(null, stderr_fd, inheritable=False)
        placeholders.add(stderr_fd)
    os.close(null)
    return frozenset(placeholders)


def _reset_signals() -> None:  # pragma: no cover - in the forked server
    """Signal handlers as a fresh interpreter has them (the owner may have installed its own).

    A signal the owner ignores stays ignored, as it would through the exec of a task (a
    ``nohup``'s SIGHUP, a background shell job's SIGINT), except the three the exec
    launcher restores (Python then ignores SIGPIPE and SIGXFSZ itself).
    """
    fresh: dict[int, Any] = {
        signal.SIGINT: signal.default_int_handler,
        signal.SIGPIPE: signal.SIG_IGN,
        signal.SIGXFSZ: signal.SIG_IGN,
    }
    inherited = inherited_ignores()
    for sig in signal.valid_signals():
        if sig in (signal.SIGKILL, signal.SIGSTOP) or sig in inherited:
            continue
        try:
            signal.signal(sig, fresh.get(sig, signal.SIG_DFL))
        except (OSError, ValueError, RuntimeError):
            continue
    try:
        signal.set_wakeup_fd(-1)
    except ValueError:
        pass
    signal.pthread_sigmask(signal.SIG_SETMASK, ())


def _set_server_title(fd: int) -> None:  # pragma: no cover - in the forked server
    """Name the forked server in ``ps`` (it would show the owner's command line)."""
    title = f"python -m async_executor._forkserver --control-fd {fd} --forked-from {os.getppid()}"
    try:
        import setproctitle

        setproctitle.setproctitle(title)
    except ImportError:
        try:
            with open("/proc/self/comm", "w") as handle:
                handle.write("forkserver")
        except OSError:
            return


# ---------------------------------------------------------------------------- owner side


class ForkServerUnavailable(Exception):
    """The fork server cannot take this launch: exec it cold instead."""


class ForkServer:
    """The owner's handle on its fork server: start lazily, launch, restart when it dies."""

    def __init__(self, config: WarmStart, base_env: Mapping[str, str]) -> None:
        self.config = config
        self.base_env = dict(base_env)
        self.pid: int | None = None
        self.starts = 0
        self.launches = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._sock: socket.socket | None = None
        self._ready: asyncio.Future[None] | None = None
        self._replies: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._ids = 0
        self._failures = 0
        self._closed = False
        self.disabled_reason: str | None = None
        if not clone_parent_supported():
            self.disabled_reason = (
                f"warm start needs Linux on x86-64 or arm64, not {sys.platform}/{platform.machine()}"
            )

    def __repr__(self) -> str:
        state = "disabled" if self.disabled_reason else ("running" if self._sock else "stopped")
        return f"<ForkServer {state} pid={self.pid} starts={self.starts} launches={self.launches}>"

    def accepts(self, argv: tuple[str, ...], env: Mapping[str, str] | None) -> bool:
        return self.disabled_reason is None and self.config.accepts(argv, env, self.base_env)

    async def launch(
        self, argv: tuple[str, ...], env: Mapping[str, str] | None, cwd: str | None, out_fd: int
    ) -> tuple[int, int]:
        """Fork a child for ``argv``; return its pid and the write end of its "go" pipe.

        The child waits for a byte on that pipe: write ``b"1"`` once it is registered, or
        close the pipe unwritten to make it exit without running. Raises ``OSError`` when
        the task cannot start (e.g. a missing cwd: the child exited already and has been
        reaped), :class:`ForkServerUnavailable` when warm start cannot serve it (the caller
        execs it cold). A server that died is restarted once. Each attempt has a go pipe of
        its own: a server that dies between its fork and its answer leaves a child nobody
        knows the pid of, and that child must see its pipe closed (and exit), not wait on
        the pipe of the next attempt's child and take its "go" (it would run unwatched).
        """
        for attempt in (1, 2):
            await self._ensure_started()
            go_r, go_w = os.pipe2(os.O_CLOEXEC)
            try:
                reply = await self._request(
                    {"op": "launch", "argv": argv, "env": env, "cwd": cwd}, [out_fd, go_r]
                )
            except BaseException as exc:
                os.close(go_w)
                if isinstance(exc, _ServerGone):
                    if attempt == 2:
                        raise ForkServerUnavailable("the fork server died twice during a launch") from None
                    continue
                raise
            finally:
                os.close(go_r)
            try:
                if "error" in reply and "pid" not in reply:
                    raise ForkServerUnavailable(reply["error"])
                pid = int(reply["pid"])
                code = int(reply.get("errno") or 0)
                if code:
                    _reap_now(pid)
                    raise OSError(code, os.strerror(code))
            except BaseException:
                os.close(go_w)
                raise
            self.launches += 1
            return pid, go_w
        raise AssertionError("unreachable")  # pragma: no cover

    async def _ensure_started(self) -> None:
        if self._closed:
            raise ForkServerUnavailable("the executor is closing")
        if self.disabled_reason is not None:
            raise ForkServerUnavailable(self.disabled_reason)
        if self._ready is None:
            self._start()
        assert self._ready is not None
        ready = self._ready
        try:
            await asyncio.wait_for(asyncio.shield(ready), self.config.start_timeout)
        except asyncio.TimeoutError:
            if self._ready is ready:
                self._kill(f"it did not finish importing within {self.config.start_timeout:g}s")
            raise ForkServerUnavailable("the fork server did not start in time") from None
        except _ServerGone:
            raise ForkServerUnavailable("the fork server exited while starting") from None

    def _start(self) -> None:
        self._loop = asyncio.get_running_loop()
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            # sys.path[0] stays '' (the cwd), as `python -c` has it for the tasks it forks
            self.pid = spawn_helper(
                self.config.python,
                "_forkserver",
                ["--imports", ",".join(self.config.imports), *task_nofile_args()],
                self.base_env,
                theirs.fileno(),
                None,
                path_index=1,
            )
        except OSError as exc:
            ours.close()
            self._ready = self._loop.create_future()
            self._ready.set_exception(_ServerGone())
            self._ready.exception()
            self._ready = None
            self._count_failed_start(f"could not start {self.config.python!r}: {exc}")
            raise ForkServerUnavailable(str(exc)) from None
        finally:
            theirs.close()
        self.starts += 1
        logger.info(
            "fork server pid %d starting (preloading %s)",
            self.pid,
            ", ".join(self.config.imports) or "nothing",
        )
        ours.setblocking(False)
        self._sock = ours
        self._ready = self._loop.create_future()
        self._loop.add_reader(ours.fileno(), self._readable)

    def adopt(self, loop: asyncio.AbstractEventLoop, pid: int, sock: socket.socket) -> None:
        """Take a server forked from the owner's process (:func:`fork_server`) as this one.

        It is this process's child and talks over ``sock``; it says "ready" once it has
        imported what the owner's process had not. If it dies, the next launch starts an
        exec'd one, as usual.
        """
        self._loop = loop
        self.pid = pid
        self.starts += 1
        logger.info(
            "fork server pid %d forked from the executor's process, starting (adds what it lacks of %s)",
            pid,
            ", ".join(self.config.imports) or "nothing",
        )
        sock.setblocking(False)
        self._sock = sock
        self._ready = loop.create_future()
        loop.add_reader(sock.fileno(), self._readable)

    def _count_failed_start(self, why: str) -> None:
        self._failures += 1
        if self._failures >= MAX_START_FAILURES:
            self.disabled_reason = f"the fork server failed to start {self._failures} times (last: {why})"
            logger.error("warm start switched off: %s; Python tasks are exec'd cold", self.disabled_reason)
        else:
            logger.warning("the fork server failed to start (%s); retrying on the next launch", why)

    async def _request(self, message: dict[str, Any], fds: list[int]) -> dict[str, Any]:
        assert self._loop is not None
        if self._sock is None:  # it said "ready" and died before our launch could be sent
            raise _ServerGone()
        self._ids += 1
        task = self._ids
        future: asyncio.Future[dict[str, Any]] = self._loop.create_future()
        self._replies[task] = future
        data = orjson.dumps({**message, "id": task})
        try:
            await self._send(data, fds)
            return await asyncio.wait_for(future, REPLY_TIMEOUT)
        except asyncio.TimeoutError:
            logger.error(
                "the fork server (pid %s) did not answer in %ss; restarting it", self.pid, REPLY_TIMEOUT
            )
            self._kill("it did not answer")
            raise _ServerGone() from None
        finally:
            self._replies.pop(task, None)

    async def _send(self, data: bytes, fds: list[int]) -> None:
        assert self._loop is not None
        while True:
            sock = self._sock
            if sock is None:
                raise _ServerGone()
            try:
                socket.send_fds(sock, [data], fds)
                return
            except BlockingIOError:
                waiter = self._loop.create_future()
                self._loop.add_writer(sock.fileno(), waiter.set_result, None)
                try:
                    await waiter
                finally:
                    if self._sock is sock:
                        self._loop.remove_writer(sock.fileno())
            except OSError:
                self._drop("its socket failed")
                raise _ServerGone() from None

    def _readable(self) -> None:
        sock = self._sock
        if sock is None:
            return
        while True:
            try:
                data = sock.recv(_MAX_MESSAGE)
            except BlockingIOError:
                return
            except OSError:
                data = b""
            if not data:
                self._drop("it exited")
                return
            message = orjson.loads(data)
            if message.get("op") == "ready":
                self._ready_message(message)
            else:
                future = self._replies.get(message.get("id", -1))
                if future is not None and not future.done():
                    future.set_result(message)

    def _ready_message(self, message: dict[str, Any]) -> None:
        self._failures = 0
        for name, error in message.get("failed", {}).items():
            logger.warning(
                "fork server could not preload %s (%s); tasks will import it themselves", name, error
            )
        if message.get("threads", 1) != 1:
            logger.warning(
                "fork server has %s threads after preloading; it will not fork (tasks run cold)",
                message["threads"],
            )
        logger.info(
            "fork server pid %s ready (imports took %ss)", message.get("pid"), message.get("import_s")
        )
        if self._ready is not None and not self._ready.done():
            self._ready.set_result(None)

    def _drop(self, why: str) -> None:
        """Forget the current server process; pending requests fail; the next launch restarts it."""
        starting = self._ready is not None and not self._ready.done()
        sock, self._sock = self._sock, None
        if sock is not None:
            assert self._loop is not None
            self._loop.remove_reader(sock.fileno())
            self._loop.remove_writer(sock.fileno())
            sock.close()
            if not self._closed:
                logger.warning(
                    "fork server pid %s went away (%s); the next warm launch restarts it", self.pid, why
                )
        if self._ready is not None and not self._ready.done():
            self._ready.set_exception(_ServerGone())
            self._ready.exception()  # retrieved: nobody may be waiting
        self._ready = None
        for future in self._replies.values():
            if not future.done():
                future.set_exception(_ServerGone())
        if self.pid is not None:
            reap_in_background(self.pid)
            self.pid = None
        if starting and not self._closed:
            self._count_failed_start(why)

    def _kill(self, why: str) -> None:
        if self.pid is not None:
            try:
                os.kill(self.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self._drop(why)

    def memory(self) -> dict[str, int] | None:
        """The server's memory from ``/proc`` (``pss_kb``, ``private_kb``, ``rss_kb``)."""
        return process_memory(self.pid) if self.pid is not None else None

    def close(self) -> None:
        """Let the server go: it exits on EOF. Tasks it forked are not affected."""
        self._closed = True
        self._drop("closed")


class _ServerGone(Exception):
    """The fork server process went away (internal: a launch retries once)."""


def _reap_now(pid: int) -> None:
    """Reap a child that failed its setup and is exiting now."""
    try:
        os.waitpid(pid, 0)
    except ChildProcessError:
        pass


def process_memory(pid: int) -> dict[str, int] | None:
    """``Pss``, private and ``Rss`` kilobytes of a process (``/proc/PID/smaps_rollup``)."""
    try:
        with open(f"/proc/{pid}/smaps_rollup") as handle:
            text = handle.read()
    except OSError:
        return None
    fields: dict[str, int] = {}
    for line in text.splitlines():
        name, _, rest = line.partition(":")
        parts = rest.split()
        if parts and parts[0].isdigit():
            fields[name] = int(parts[0])
    return {
        "pss_kb": fields.get("Pss", 0),
        "private_kb": fields.get("Private_Clean", 0) + fields.get("Private_Dirty", 0),
        "rss_kb": fields.get("Rss", 0),
    }


if __name__ == "__main__":  # pragma: no cover
    main()
