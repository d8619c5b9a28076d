"""The supervisor: a small process that owns task processes so exit statuses outlive the executor.

An executor with a journal does not spawn tasks itself. It starts one supervisor process
(its own session, so signals aimed at the executor's process group miss it), and asks it to
spawn, stop and kill tasks over a socketpair. The supervisor hosts a :class:`LocalBackend`
(posix_spawn + pidfd, exactly the in-process path) and relays its events back. It also
appends every exit, with the task's tag, to an exits file *before* reporting it: if the
executor is killed, the supervisor keeps reaping, keeps writing, and exits once its last
child has. A later executor reads the file (statuses of tasks that ended while no executor
was alive) and can connect to a supervisor that still runs (adoption), through an abstract
Unix socket that only accepts peers of the same user.

Messages are newline-delimited JSON objects (orjson), batched per loop iteration.
"""

from __future__ import annotations

import argparse
import asyncio
import errno
import logging
import os
import signal
import socket
import struct
import sys
import threading
from collections import deque
from collections.abc import Callable, Mapping
from typing import Any

import attrs
import orjson

from ._forkserver import WarmStart
from ._limits import raise_nofile_limit, set_task_nofile, task_nofile_args
from ._logs import precreate_log
from ._spawn import (
    LocalBackend,
    ProcessEvents,
    exec_helper,
    proc_start_ticks,
    reap_in_background,
    signal_group,
    spawn_helper,
    start_helper,
)

logger = logging.getLogger("async_executor.supervisor")

Message = dict[str, Any]
_READ_SIZE = 1 << 18
#: Most tasks the supervisor launches per loop iteration (exits are handled in between).
SPAWN_BATCH = 8
#: A channel writes out once this many messages are queued, without waiting for the loop.
FLUSH_EVERY = 16


class Channel:
    """Newline-delimited JSON messages over a non-blocking stream socket on an event loop."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        sock: socket.socket,
        on_message: Callable[[Message], None],
        on_close: Callable[[], None],
        received: bytes = b"",
    ) -> None:
        self._loop = loop
        self._sock = sock
        self._on_message = on_message
        self._on_close = on_close
        self._inbuf = b""
        self._out: list[bytes] = []
        self._pending = b""
        self._flush_scheduled = False
        self._writing = False
        self.closed = False
        sock.setblocking(False)
        loop.add_reader(sock.fileno(), self._readable)
        if received:  # bytes read before the channel existed (possibly ending mid-message)
            self._feed(received)

    def send(self, message: Message) -> None:
        """Queue ``message``; everything queued in one loop iteration goes out in one write."""
        if self.closed:
            return
        out = self._out
        out.append(orjson.dumps(message))
        if len(out) >= FLUSH_EVERY:
            self.flush()  # a long burst streams out instead of waiting for its end
        elif not self._flush_scheduled:
            self._flush_scheduled = True
            self._loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        self.flush()

    def flush(self) -> None:
        """Write out what is queued now (without blocking; the rest goes when writable)."""
        if self.closed:
            return
        if self._out:
            self._pending += b"\n".join(self._out) + b"\n"
            self._out.clear()
        self._write()

    def _write(self) -> None:
        while self._pending:
            try:
                sent = self._sock.send(self._pending)
            except BlockingIOError:
                if not self._writing:
                    self._writing = True
                    self._loop.add_writer(self._sock.fileno(), self._writable)
                return
            except OSError:
                self.close()
                return
            self._pending = self._pending[sent:]
        if self._writing:
            self._writing = False
            self._loop.remove_writer(self._sock.fileno())

    def _writable(self) -> None:
        self._write()

    def flush_blocking(self, timeout: float = 5.0) -> None:
        """Write everything queued now, waiting if the socket is full (used when closing)."""
        if self.closed:
            return
        if self._out:
            self._pending += b"\n".join(self._out) + b"\n"
            self._out.clear()
        if self._pending:
            self._sock.settimeout(timeout)
            try:
                self._sock.sendall(self._pending)
            except OSError:
                pass
            finally:
                self._pending = b""
                self._sock.setblocking(False)

    def _readable(self) -> None:
        try:
            data = self._sock.recv(_READ_SIZE)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self.close()
            return
        self._feed(data)

    def _feed(self, data: bytes) -> None:
        lines = (self._inbuf + data).split(b"\n")
        self._inbuf = lines.pop()
        for line in lines:
            if line:
                self._on_message(orjson.loads(line))

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self._loop.remove_reader(self._sock.fileno())
        if self._writing:
            self._loop.remove_writer(self._sock.fileno())
        self._sock.close()
        self._on_close()


def socket_name(executor_id: str) -> str:
    """The abstract-namespace socket a supervisor listens on for adopting executors."""
    return f"\0async-executor-{os.getuid()}-{executor_id}"


def peer_uid(sock: socket.socket) -> int:
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    return int(struct.unpack("3i", creds)[1])


# ---------------------------------------------------------------------------- the process


class Supervisor(ProcessEvents):
    """Runs in the supervisor process: spawns for its owner, records every exit."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        control: socket.socket,
        exits_path: str,
        listen_name: str,
        warm: WarmStart | None = None,
        forked: tuple[int, socket.socket] | None = None,
        lazy_logs: LazyLogs | None = None,
    ) -> None:
        self.loop = loop
        #: With lazy logs: each task's log path (from its spawn request), created when it writes.
        self._log_paths: dict[int, str] = {}
        self._lazy_logs = lazy_logs is not None
        memory_logs = None
        if lazy_logs is not None:
            from ._memlogs import MemoryLogs

            memory_logs = MemoryLogs(lazy_logs.max_bytes, self._log_paths.__getitem__)
        self.backend = LocalBackend(warm=warm, memory_logs=memory_logs)
        if forked is not None:  # a fork server forked from the executor's process
            self.backend.adopt_forkserver(*forked)
        self.backend.open(loop, self)
        self.children: dict[int, Message] = {}
        self.owner: Channel | None = Channel(loop, control, self._message, self._owner_lost)
        self.exits_fd = os.open(exits_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(listen_name)
        self.listener.listen(8)
        self.listener.setblocking(False)
        loop.add_reader(self.listener.fileno(), self._accept)
        self.done: asyncio.Future[None] = loop.create_future()
        self.closing = False
        #: Tasks spawned in this loop iteration whose spawn records are not written yet.
        self._unrecorded: list[Message] = []
        #: Spawn requests not launched yet (a few per loop iteration, so exits keep flowing).
        self._to_spawn: deque[Message] = deque()
        #: An adopting executor's connection, greeted once no launch is under way.
        self._greeting: socket.socket | None = None

    # messages from the owner
    def _message(self, message: Message) -> None:
        op = message["op"]
        if op == "spawn":
            task = message["id"]
            self.children[task] = {"id": task, "tag": message.get("tag")}
            if self._lazy_logs and message.get("log") is not None:
                self._log_paths[task] = message["log"]
            if not self._to_spawn:
                self.loop.call_soon(self._spawn_some)
            self._to_spawn.append(message)
        elif op == "stop":
            self.backend.stop(message["id"])
        elif op == "kill":
            self.backend.kill(message["id"])
        elif op == "forget":
            self._to_spawn = deque(m for m in self._to_spawn if m["id"] != message["id"])
            self.backend.abandon(message["id"])
            self.children.pop(message["id"], None)
            self._log_paths.pop(message["id"], None)
        elif op == "hello":
            self._send({"op": "ready", "pid": os.getpid()})
        elif op == "bye":
            self.closing = True
            self._maybe_exit()
        else:
            logger.error("supervisor: unknown message %r", message)

    def _spawn_some(self, limit: int = 0) -> None:
        """Launch up to ``limit`` (default ``SPAWN_BATCH``) queued tasks, report them, let the loop run.

        Launching a long batch in one go would hold back the exits (and so the refills) of
        tasks that end meanwhile; a few per iteration keeps both directions streaming.
        """
        queue = self._to_spawn
        batch = []
        for _ in range(min(limit or SPAWN_BATCH, len(queue))):
            message = queue.popleft()
            if message["id"] in self.children:  # else forgotten meanwhile
                batch.append(message)
        if batch:
            self._record_launches(batch)
        spawn = self.backend.spawn
        for m in batch:
            spawn(m["id"], tuple(m["argv"]), m.get("env"), m.get("cwd"), m.get("log"))
        self._record_spawns()
        if self.owner is not None:
            self.owner.flush()
        if queue and not limit:
            self.loop.call_soon(self._spawn_some)

    def _send(self, message: Message) -> None:
        if self.owner is not None:
            self.owner.send(message)

    def _owner_lost(self) -> None:
        self.owner = None
        if not self.closing:
            logger.warning("supervisor: executor went away with %d task(s) running", len(self.children))
        self._maybe_exit()

    def _accept(self) -> None:
        try:
            conn, _ = self.listener.accept()
        except BlockingIOError:
            return
        if peer_uid(conn) != os.getuid():
            conn.close()
            return
        if self._greeting is not None:  # an earlier newcomer still waiting: the latest one wins
            self._greeting.close()
        self._greeting = conn  # first: closing the old owner must not make an idle supervisor exit
        if self.owner is not None:
            self.owner.close()
        self.closing = False
        # Launch what is queued first: the newcomer must see every accepted task with its pid
        # (one without would look never started, and could be queued again).
        self._spawn_some(len(self._to_spawn))
        self._maybe_greet()

    def _maybe_greet(self) -> None:
        """Greet the newcomer with the children list once no launch is under way.

        Warm launches finish asynchronously (the fork server answers later): until they have,
        their children have no pid yet, and greeting then would show them as never started.
        """
        conn = self._greeting
        if conn is None or self._to_spawn or any("pid" not in child for child in self.children.values()):
            return
        self._greeting = None
        self._record_spawns()
        self.owner = Channel(self.loop, conn, self._message, self._owner_lost)
        self._send({"op": "children", "children": list(self.children.values())})

    # events from the backend
    def spawned(self, token: Any, pid: int, proc_start: int | None = None, warm: bool = False) -> None:
        child = self.children[token]
        child["pid"] = pid
        child["t0"] = _now()
        child["warm"] = warm
        if proc_start is not None:
            child["start"] = proc_start
        # Recorded once the whole batch of spawn requests is launched: reading /proc of a
        # child that is still exec'ing is slow, and one write covers the batch.
        self._unrecorded.append(child)  # recorded at the end of _spawn_some
        if warm:
            # A warm child waits for its "go" until this returns: record it now, so a task
            # never runs before its spawn record exists.
            self._record_spawns()
            self._maybe_greet()

    def _record_launches(self, batch: list[Message]) -> None:
        """Before a batch is launched, say so in the exits file (one write): if this process
        dies before the batch's spawn records are written, recovery then knows these tasks
        may have started, and does not report them as never started (they could run twice)."""
        records = [orjson.dumps({"ev": "launch", "id": m["id"], "tag": m.get("tag")}) for m in batch]
        try:
            _write_all(self.exits_fd, b"\n".join(records) + b"\n")
        except OSError as exc:
            logger.error("supervisor: could not record %d launch(es): %s", len(records), exc)

    def _record_spawns(self) -> None:
        """Write the spawn records of the tasks just started, then tell the owner."""
        children, self._unrecorded = self._unrecorded, []
        if not children:
            return
        records = []
        for child in children:
            if "start" not in child:
                child["start"] = proc_start_ticks(child["pid"])
            records.append(orjson.dumps({"ev": "spawn", **child}))
        # Durable before anyone hears of it: a started task is never unknown to recovery.
        try:
            _write_all(self.exits_fd, b"\n".join(records) + b"\n")
        except OSError as exc:
            logger.error("supervisor: could not record %d spawn(s): %s", len(records), exc)
        for child in children:
            self._send({"op": "started", **child})

    def spawn_failed(self, token: Any, exc: OSError, detail: str) -> None:
        self.children.pop(token, None)
        self._log_paths.pop(token, None)
        self._send({"op": "failed", "id": token, "errno": exc.errno, "detail": detail})
        self._maybe_greet()
        self._maybe_exit()

    def exited(
        self,
        token: Any,
        returncode: int | None,
        signum: int | None,
        detail: str | None = None,
        log_written: bool = True,
    ) -> None:
        """``log_written=False``: lazy logs, and the task wrote nothing (it has no log file);
        ``detail``: its output could not all be kept (lazy logs)."""
        self._record_spawns()  # its spawn record (and "started") always come first
        child = self.children.pop(token, {"id": token})
        log_path = self._log_paths.pop(token, None)
        record = {**child, "ev": "exit", "rc": returncode, "sig": signum, "t": _now()}
        if not log_written:
            record["w"] = 0
        elif log_path is not None:  # lazy logs: the journal has no path for it yet
            record["log"] = log_path
        if detail is not None:
            record["detail"] = detail
        if self.owner is not None:
            # Its executor is connected and may report the exit before its journal has it
            # (see Engine.deliver): a recovery delivers such an exit as a possible repeat.
            record["o"] = 1
        os.write(self.exits_fd, orjson.dumps(record) + b"\n")  # before telling anyone
        self._send({"op": "exit", **record})
        self._maybe_greet()
        self._maybe_exit()

    def _maybe_exit(self) -> None:
        if self._greeting is not None:
            return
        if not self.children and (self.owner is None or self.closing) and not self.done.done():
            self.done.set_result(None)


@attrs.frozen
class LazyLogs:
    """The supervisor's lazy-log setting: the cap of one task's log (``None``: no cap)."""

    max_bytes: int | None = None


def _exit_of(token: Any, message: Message) -> tuple[Any, int | None, int | None, str | None, bool]:
    """``ProcessEvents.exited`` arguments from an exit message (or record)."""
    return token, message.get("rc"), message.get("sig"), message.get("detail"), message.get("w", 1) != 0


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _now() -> float:
    import time

    return time.time()


async def _serve(
    control_fd: int,
    exits_path: str,
    listen_name: str,
    warm: WarmStart | None,
    forked: tuple[int, int] | None = None,
    lazy_logs: LazyLogs | None = None,
) -> None:
    loop = asyncio.get_running_loop()
    control = socket.socket(fileno=control_fd)
    server = (forked[0], socket.socket(fileno=forked[1])) if forked is not None else None
    supervisor = Supervisor(loop, control, exits_path, listen_name, warm, server, lazy_logs)
    await supervisor.done
    if supervisor.owner is not None:
        supervisor.owner.flush_blocking()
    supervisor.backend.close()


class _HelpFormatter(argparse.HelpFormatter):
    """A fixed width: by default argparse asks for the terminal's (this process has none),
    importing ``shutil``, and with it zlib, bz2 and lzma, into every supervisor."""

    def __init__(self, prog: str) -> None:
        super().__init__(prog, width=100)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="async_executor._supervisor", formatter_class=_HelpFormatter)
    parser.add_argument("--control-fd", type=int, required=True)
    parser.add_argument("--exits", required=True)
    parser.add_argument("--listen", required=True)
    parser.add_argument("--warm", default=None, help="WarmStart as JSON")
    parser.add_argument("--forkserver-fd", type=int, default=None, help="socket of a forked fork server")
    parser.add_argument("--forkserver-pid", type=int, default=None, help="... and its pid (our child)")
    parser.add_argument("--lazy-logs", action="store_true", help="a log file only for tasks that write")
    parser.add_argument("--log-max-bytes", type=int, default=None, help="cap of a lazy log")
    parser.add_argument("--task-nofile", type=int, default=None, help="the soft open-file limit of tasks")
    args = parser.parse_args(argv)
    start_helper(args.control_fd, args.forkserver_fd)
    lazy_logs = LazyLogs(args.log_max_bytes) if args.lazy_logs else None
    forked = None
    if args.forkserver_fd is not None and args.forkserver_pid is not None:
        forked = (args.forkserver_pid, args.forkserver_fd)
    warm = WarmStart.from_json(orjson.loads(args.warm)) if args.warm else None
    if args.task_nofile is not None:
        set_task_nofile(args.task_nofile)
    raise_nofile_limit()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s supervisor[%(process)d] %(message)s")
    try:
        import uvloop

        runner: Callable[..., Any] = uvloop.run
    except ImportError:
        runner = asyncio.run
    runner(_serve(args.control_fd, args.exits, "\0" + args.listen, warm, forked, lazy_logs))


# ---------------------------------------------------------------------------- executor side


#: How long start() waits for a new supervisor to say it is ready.
READY_TIMEOUT = 30.0


class _SupervisorLink:
    """What both kinds of supervisor connection share: supervisor task ids <-> engine tokens."""

    def __init__(self) -> None:
        self._channel: Channel | None = None
        self._events: ProcessEvents | None = None
        self._tokens: dict[int, Any] = {}
        self._token_ids: dict[Any, int] = {}

    def bind(self, token: Any, task: int) -> None:
        self._tokens[task] = token
        self._token_ids[token] = task

    def stop(self, token: Any) -> None:
        self._send("stop", token)

    def kill(self, token: Any) -> None:
        self._send("kill", token)

    def abandon(self, token: Any) -> None:
        task = self._token_ids.get(token)
        if task is not None:
            self._forget(task)
            self._send_id("forget", task)

    def _send(self, op: str, token: Any) -> None:
        task = self._token_ids.get(token)
        if task is not None:
            self._send_id(op, task)

    def _send_id(self, op: str, task: int) -> None:
        if self._channel is not None:
            self._channel.send({"op": op, "id": task})

    def _forget(self, task: int) -> Any:
        token = self._tokens.pop(task, None)
        self._token_ids.pop(token, None)
        return token


class SupervisorBackend(_SupervisorLink):
    """The engine's backend when tasks must outlive the executor: a supervisor owns them."""

    name = "supervisor"
    #: The supervisor appends each exit to its exits file before reporting it.
    records_exits = True

    def __init__(
        self,
        state_dir: str,
        executor_id: str,
        warm: WarmStart | None = None,
        lazy_logs: LazyLogs | None = None,
    ) -> None:
        self.warm = warm
        #: Set: the supervisor captures output in memory files and creates a task's log file only
        #: if the task writes (see _memlogs.py); the exit then says whether it did.
        self.lazy_logs = lazy_logs
        self.state_dir = state_dir
        self.executor_id = executor_id
        self.exits_path = os.path.join(state_dir, f"exits-{executor_id}.jsonl")
        self._log_path = os.path.join(state_dir, f"supervisor-{executor_id}.log")
        super().__init__()
        self.supervisor_pid: int | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._ids = 0
        self._pids: dict[int, int] = {}
        self._ready: asyncio.Future[None] | None = None
        #: Our end of the control socket of a supervisor started by ``prefork()``.
        self._preforked: socket.socket | None = None

    def _args(self) -> list[str]:
        args = ["--exits", self.exits_path, "--listen", socket_name(self.executor_id)[1:]]
        args += task_nofile_args()
        if self.warm is not None:
            args += ["--warm", orjson.dumps(self.warm.to_json()).decode()]
        if self.lazy_logs is not None:
            args.append("--lazy-logs")
            if self.lazy_logs.max_bytes is not None:
                args += ["--log-max-bytes", str(self.lazy_logs.max_bytes)]
        return args

    def _open_log(self) -> int:
        os.makedirs(self.state_dir, mode=0o700, exist_ok=True)
        return os.open(self._log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)

    def prefork(self) -> None:
        """With warm start's ``fork_from_caller``: start the supervisor now, with a fork server.

        Called by the synchronous ``start()`` from the caller's thread, before the loop
        thread exists. The fork server must be the supervisor's child (tasks it forks are
        the supervisor's children) and yet a fork of this process (to share its imported
        modules): so this process forks a child, which forks the fork server and then
        execs the supervisor, keeping its pid and its child. If anything fails, the
        supervisor starts as usual in ``open()`` (the fork server then on the first launch).
        """
        from ._forkserver import clone_parent_supported, frozen_gc

        warm = self.warm
        if warm is None or not warm.fork_from_caller or self._preforked is not None:
            return
        if not clone_parent_supported():
            return
        log_fd = self._open_log()
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        server_end, supervisor_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        status_r, status_w = os.pipe2(os.O_CLOEXEC)
        env, args = dict(os.environ), self._args()
        try:
            with frozen_gc():
                pid = os.fork()
                if pid == 0:  # pragma: no cover - becomes the supervisor
                    os.close(status_r)
                    ours.close()
                    _become_supervisor(warm, args, env, theirs, server_end, supervisor_end, log_fd, status_w)
        except OSError as exc:
            for sock in (ours, theirs, server_end, supervisor_end):
                sock.close()
            os.close(status_r)
            logger.warning("could not fork the task supervisor (%s); starting it the usual way", exc)
            return
        finally:
            os.close(status_w)
            os.close(log_fd)
        for sock in (theirs, server_end, supervisor_end):
            sock.close()
        with os.fdopen(status_r, "rb") as status:
            failed = status.read()  # EOF at the exec: closed on exec
        if failed:
            code = struct.unpack("i", failed[:4])[0] if len(failed) >= 4 else errno.EIO
            reap_in_background(pid)
            ours.close()
            logger.warning(
                "the forked task supervisor could not exec %s (%s); starting it the usual way",
                sys.executable,
                os.strerror(code),
            )
            return
        self.supervisor_pid = pid
        self._preforked = ours
        logger.info(
            "task supervisor pid %d started with a fork server forked from this process (%d thread(s) here)",
            pid,
            threading.active_count(),
        )

    def drop_prefork(self) -> None:
        """Let go of a supervisor ``prefork()`` started if ``open()`` never took it."""
        ours, self._preforked = self._preforked, None
        if ours is not None:
            ours.close()  # with no task and no owner it exits, and its fork server with it
            if self.supervisor_pid is not None:
                reap_in_background(self.supervisor_pid)

    def open(self, loop: asyncio.AbstractEventLoop, events: ProcessEvents) -> None:
        self._loop, self._events = loop, events
        ours, self._preforked = self._preforked, None
        if ours is None:
            log_fd = self._open_log()
            ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                self.supervisor_pid = spawn_helper(
                    sys.executable, "_supervisor", self._args(), dict(os.environ), theirs.fileno(), log_fd
                )
            finally:
                theirs.close()
                os.close(log_fd)
        self._channel = Channel(loop, ours, self._message, self._lost)
        self._ready = loop.create_future()
        self._channel.send({"op": "hello"})

    async def wait_ready(self) -> None:
        """Wait for the supervisor's handshake: a clear error at start() if it cannot run."""
        assert self._ready is not None
        try:
            await asyncio.wait_for(asyncio.shield(self._ready), READY_TIMEOUT)
        except asyncio.TimeoutError:
            raise RuntimeError(
                f"the task supervisor did not start within {READY_TIMEOUT}s; see {self._log_path}"
            ) from None

    def spawn(
        self,
        token: Any,
        argv: tuple[str, ...],
        env: Mapping[str, str] | None,
        cwd: str | None,
        log_path: str | None,
        tag: Any = None,
    ) -> None:
        assert self._channel is not None
        self._ids += 1
        task = self._ids
        self.bind(token, task)
        if self._channel.closed:
            self._fail_spawn(task, "the task supervisor is not running")
            return
        if log_path is not None and self.lazy_logs is None:
            precreate_log(log_path)
        self._channel.send(
            {"op": "spawn", "id": task, "argv": argv, "env": env, "cwd": cwd, "log": log_path, "tag": tag}
        )

    def close(self) -> None:
        """Let the supervisor go: it exits once idle, or keeps detached tasks for adoption."""
        if self._tokens:
            logger.info(
                "leaving %d task(s) with the supervisor (pid %s) for a later executor",
                len(self._tokens),
                self.supervisor_pid,
            )
        self._tokens.clear()  # detached on purpose: closing the channel must not fail them
        self._token_ids.clear()
        if self._channel is not None and not self._channel.closed:
            self._channel.send({"op": "bye"})
            self._channel.flush_blocking()
            self._channel.close()
        if self.supervisor_pid is not None:
            reap_in_background(self.supervisor_pid)

    def _message(self, message: Message) -> None:
        assert self._events is not None
        op = message["op"]
        if op == "ready":
            if self._ready is not None and not self._ready.done():
                self._ready.set_result(None)
            return
        task = message.get("id")
        if not isinstance(task, int) or task not in self._tokens:
            return
        token = self._tokens[task]
        if op == "started":
            self._pids[task] = message["pid"]
            self._events.spawned(token, message["pid"], message.get("start"), bool(message.get("warm")))
        elif op == "failed":
            self._forget(task)
            code = message.get("errno") or errno.EIO
            self._events.spawn_failed(token, OSError(code, os.strerror(code)), message["detail"])
        elif op == "exit":
            self._forget(task)
            self._events.exited(*_exit_of(token, message))

    def _forget(self, task: int) -> Any:
        self._pids.pop(task, None)
        return super()._forget(task)

    def _fail_spawn(self, task: int, detail: str) -> None:
        assert self._events is not None
        token = self._tokens.get(task)
        self._forget(task)
        self._events.spawn_failed(token, OSError(errno.EIO, detail), detail)

    def _lost(self) -> None:
        """The supervisor died: its tasks are orphans now; kill them and fail them."""
        if self._ready is not None and not self._ready.done():
            self._ready.set_exception(
                RuntimeError(f"the task supervisor exited during start; see {self._log_path}")
            )
        if not self._tokens:
            return
        logger.error(
            "the task supervisor (pid %s) died; failing %d task(s)", self.supervisor_pid, len(self._tokens)
        )
        assert self._events is not None
        for task in list(self._tokens):
            pid = self._pids.get(task)
            token = self._tokens[task]
            self._forget(task)
            if pid is None:
                self._events.spawn_failed(
                    token,
                    OSError(errno.EIO, "supervisor died"),
                    "the task supervisor died before the task started",
                )
            else:
                signal_group(pid, signal.SIGKILL)
                self._events.exited(token, None, None, "the task supervisor died; the task was killed")


def _become_supervisor(
    warm: WarmStart,
    args: list[str],
    env: Mapping[str, str],
    control: socket.socket,
    server_end: socket.socket,
    supervisor_end: socket.socket,
    log_fd: int,
    status_w: int,
) -> None:  # pragma: no cover - in the child forked by prefork(); never returns
    """Fork the fork server, then exec the supervisor with it as a child (see ``prefork``)."""
    try:
        os.setsid()  # its own session, as spawn_helper gives it
        try:
            server_pid = os.fork()
        except OSError:
            server_pid = -1  # no forked server: the supervisor starts one when needed
        if server_pid == 0:
            supervisor_end.close()
            control.close()
            os.close(status_w)
            from ._forkserver import serve_forked

            serve_forked(server_end, warm.imports, log_fd)
        fds = [control.fileno()]
        if server_pid > 0:
            fds.append(supervisor_end.fileno())
            args = [*args, "--forkserver-fd", "4", "--forkserver-pid", str(server_pid)]
        exec_helper(sys.executable, "_supervisor", args, env, fds, log_fd)
    except BaseException as exc:
        code = exc.errno if isinstance(exc, OSError) and exc.errno else errno.EIO
        try:
            os.write(status_w, struct.pack("i", code))
        finally:
            os._exit(127)
    os._exit(127)


class AttachedSupervisor(_SupervisorLink):
    """A connection to the supervisor of an earlier (dead) executor, for adoption.

    It owns tasks that executor started: the engine adopts them one by one (``bind``);
    the exits of tasks nobody adopted (yet) go to ``on_unadopted_exit``.
    """

    name = "attached-supervisor"
    #: Its exits go to the dead executor's exits file: an adopted task's outcome is reported
    #: once this executor's journal has it.
    records_exits = False

    def __init__(self, executor_id: str, on_unadopted_exit: Callable[[Message], None]) -> None:
        super().__init__()
        self.executor_id = executor_id
        #: The tasks it still runs, by supervisor task id: ``{"id", "tag", "pid", "start"}``.
        self.children: dict[int, Message] = {}
        self._on_unadopted_exit = on_unadopted_exit
        self._sock: socket.socket | None = None
        self._early = b""

    def connect(self, timeout: float = READY_TIMEOUT) -> bool:
        """Connect and read the list of running tasks; ``False`` if the supervisor is gone.

        Blocking, with a timeout: it runs once, while the executor starts.
        """
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(timeout)
        try:
            sock.connect(socket_name(self.executor_id))
            if peer_uid(sock) != os.getuid():
                raise ConnectionRefusedError("the supervisor belongs to another user")
            buffer = b""
            while b"\n" not in buffer:
                chunk = sock.recv(_READ_SIZE)
                if not chunk:
                    raise ConnectionResetError("the supervisor closed the connection")
                buffer += chunk
        except OSError as exc:
            logger.info("the supervisor of executor %s is not reachable: %s", self.executor_id, exc)
            sock.close()
            return False
        first, _, self._early = buffer.partition(b"\n")
        self.children = {child["id"]: child for child in orjson.loads(first).get("children", [])}
        self._sock = sock
        return True

    def open(self, loop: asyncio.AbstractEventLoop, events: ProcessEvents) -> None:
        assert self._sock is not None
        self._events = events
        early, self._early = self._early, b""  # what arrived right behind the greeting
        self._channel = Channel(loop, self._sock, self._message, self._lost, received=early)

    async def wait_ready(self) -> None:
        """Connected in ``connect()``: nothing to wait for."""

    def close_socket(self) -> None:
        """Drop a connection that was never opened on a loop (nothing to adopt)."""
        if self._sock is not None and self._channel is None:
            self._sock.close()
            self._sock = None

    def spawn(
        self,
        token: Any,
        argv: tuple[str, ...],
        env: Mapping[str, str] | None,
        cwd: str | None,
        log_path: str | None,
        tag: Any = None,
    ) -> None:
        raise RuntimeError("an adopted supervisor does not start new tasks")

    def close(self) -> None:
        """Let go of the supervisor: it keeps running what is left, for a later executor."""
        if self._channel is not None and not self._channel.closed:
            self._channel.flush_blocking()
            self._channel.close()

    def _message(self, message: Message) -> None:
        if message.get("op") != "exit":
            return
        task = message.get("id")
        if not isinstance(task, int):
            return
        self.children.pop(task, None)
        token = self._forget(task)
        if token is None:
            self._on_unadopted_exit(message)
            return
        assert self._events is not None
        self._events.exited(*_exit_of(token, message))

    def _lost(self) -> None:
        if not self._tokens:
            return
        logger.error(
            "the adopted supervisor of executor %s died; failing %d task(s)",
            self.executor_id,
            len(self._tokens),
        )
        assert self._events is not None
        for task in list(self._tokens):
            token = self._forget(task)
            self._events.exited(token, None, None, "the task supervisor died; exit status unknown")


if __name__ == "__main__":
    main()
