"""Each task's output in an anonymous memory file; its log file only when it wrote something.

Creating a file costs 80-270 µs of kernel CPU on ext4 here (inode allocation), more than the
rest of the CLI's work for a ``/bin/true`` line. So the CLI hands each task a ``memfd`` (a
tmpfs inode with no name: a few µs) as its stdout+stderr, and when the task ends it creates the
task's log file only if the task wrote anything, with the output copied in by the kernel
(``sendfile``). A task that wrote nothing has no log file (its journal row has no log path).

Every :data:`SPILL_INTERVAL` seconds, a running task's new output is appended to its log file
and punched out of the memfd when it holds more than :data:`SPILL_BYTES` (memory stays bounded)
or when the task was already running at the previous check: the log of a task that runs for
more than a second follows its output with at most a second of delay (``async-executor logs``
while it runs, or after the CLI was killed; a log the child wrote itself had no delay).
The log is capped at ``max_bytes`` like the engine's own logs (head kept, then a marker).
Output written after the task's main process exited (by a background child still holding the
descriptor) is not kept: the memfd is read once, at the end.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from typing import Any

from .. import _logs
from .._spawn import LocalBackend

logger = logging.getLogger("async_executor.cli.capture")

#: Seconds between checks of running tasks' captured sizes.
SPILL_INTERVAL = 0.5
#: A running task's captured output beyond this many bytes goes to its log file (and leaves memory).
SPILL_BYTES = 1 << 20
#: What the CLI's logs are capped at (``AsyncExecutor``'s default ``log_max_bytes``).
DEFAULT_MAX_BYTES = 64 * 1024 * 1024

_TRUNCATED = b"\n[async-executor: output truncated at the log size cap]\n"
_FALLOC_FL_KEEP_SIZE = 0x01
_FALLOC_FL_PUNCH_HOLE = 0x02

AVAILABLE = hasattr(os, "memfd_create") and hasattr(os, "sendfile")


class _Slot:
    """One task try's memfd and how much of it is in the log file already."""

    __slots__ = ("copied", "fd", "key", "log_fd", "old", "path", "truncated", "try_number", "written")

    def __init__(self, fd: int, key: Any, try_number: int) -> None:
        self.fd = fd
        self.key = key
        self.try_number = try_number
        #: The log file's path, named when there is something to write.
        self.path = ""
        #: Bytes of the memfd already appended to the log (and punched out of the memfd).
        self.copied = 0
        #: Bytes in the log file.
        self.written = 0
        self.log_fd = -1
        self.truncated = False
        #: Seen by an earlier sweep: the task has run for a while.
        self.old = False


class Capture:
    """The memfds of the tasks in flight, by ``(key, try_number)``."""

    def __init__(self, log_dir: str, max_bytes: int | None = DEFAULT_MAX_BYTES) -> None:
        self.log_dir = log_dir
        self.max_bytes = max_bytes
        self._slots: dict[tuple[Any, int], _Slot] = {}
        self._made_dir = False
        self._timer: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._punch: Any = None

    # ------------------------------------------------------------------ tasks

    def open(self, key: Any, try_number: int) -> int:
        """A new memfd for a task's output (the caller dup2s it into the child). Raises ``OSError``."""
        fd = os.memfd_create("async-executor-task", os.MFD_CLOEXEC)
        old = self._slots.pop((key, try_number), None)
        if old is not None:  # a launch retried after running out of descriptors or processes
            self._close(old)
        self._slots[(key, try_number)] = _Slot(fd, key, try_number)
        if self._timer is None and self._loop is not None:
            self._timer = self._loop.call_later(SPILL_INTERVAL, self._sweep)
        return fd

    def finish(self, key: Any, try_number: int) -> tuple[str | None, str | None]:
        """The task ended: ``(log path, error)``. The path is ``None`` when it wrote nothing.

        ``error`` says why its output could not all be kept (e.g. the disk is full).
        """
        slot = self._slots.pop((key, try_number), None)
        if slot is None:
            return None, None
        problem = None
        try:
            self._copy(slot)
        except OSError as exc:
            problem = f"could not write {slot.path or 'its log'}: {exc.strerror or exc}"
        finally:
            self._close(slot)
        return (slot.path if slot.written else None), problem

    def attach(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop

    def close(self) -> None:
        """Forget every task still held (their output is dropped)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        slots, self._slots = self._slots, {}
        for slot in slots.values():
            self._close(slot)

    # ------------------------------------------------------------------ copying

    def _copy(self, slot: _Slot, punch: bool = False) -> None:
        """Append what the memfd holds beyond ``slot.copied`` to the log file (created now)."""
        end = os.fstat(slot.fd).st_size
        if end <= slot.copied:
            return
        start, count = slot.copied, end - slot.copied
        if not slot.truncated:
            cap = self.max_bytes
            over = cap is not None and slot.written + count > cap
            keep = max(0, cap - len(_TRUNCATED) - slot.written) if cap is not None and over else count
            if slot.log_fd < 0:
                slot.path = _logs.log_path(self.log_dir, slot.key, slot.try_number)
                if not self._made_dir:
                    os.makedirs(self.log_dir, mode=0o700, exist_ok=True)
                    self._made_dir = True
                slot.log_fd = _logs.open_log(slot.path)
            _send(slot.log_fd, slot.fd, start, keep)
            slot.written += keep
            if cap is not None and over:
                marker = _TRUNCATED[: max(0, cap - slot.written)]
                os.write(slot.log_fd, marker)
                slot.written += len(marker)
                slot.truncated = True
        slot.copied = end
        if punch:
            self._punch_hole(slot.fd, start, count)

    def _punch_hole(self, fd: int, offset: int, length: int) -> None:
        """Free ``[offset, offset + length)`` of a memfd (the file keeps its size)."""
        if self._punch is None:
            try:
                import ctypes

                libc = ctypes.CDLL(None, use_errno=True)
                fallocate = libc.fallocate
                fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_long, ctypes.c_long]
                fallocate.restype = ctypes.c_int
                self._punch = fallocate
            except (OSError, AttributeError):  # pragma: no cover - no fallocate in libc
                self._punch = False
        if self._punch:
            self._punch(fd, _FALLOC_FL_PUNCH_HOLE | _FALLOC_FL_KEEP_SIZE, offset, length)

    def _sweep(self) -> None:
        self._timer = None
        for slot in list(self._slots.values()):
            try:
                new = os.fstat(slot.fd).st_size - slot.copied
                if new > SPILL_BYTES or (new > 0 and slot.old):
                    self._copy(slot, punch=True)
                slot.old = True
            except OSError as exc:
                logger.warning("could not move captured output of %r to its log: %s", slot.key, exc)
        if self._slots and self._loop is not None:
            self._timer = self._loop.call_later(SPILL_INTERVAL, self._sweep)

    @staticmethod
    def _close(slot: _Slot) -> None:
        for fd in (slot.fd, slot.log_fd):
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)
        slot.fd = slot.log_fd = -1


def _send(out_fd: int, in_fd: int, offset: int, count: int) -> None:
    """Copy ``count`` bytes of ``in_fd`` from ``offset`` to the end of ``out_fd``, in the kernel."""
    while count > 0:
        try:
            sent = os.sendfile(out_fd, in_fd, offset, count)
        except OSError as exc:
            if exc.errno not in (22, 38):  # EINVAL / ENOSYS: copy through user space
                raise
            data = os.pread(in_fd, min(count, 1 << 20), offset)
            sent = os.write(out_fd, data) if data else 0
        if sent <= 0:
            return  # the memfd is shorter than it was (cannot happen: nobody truncates it)
        offset += sent
        count -= sent


class CaptureBackend(LocalBackend):
    """``LocalBackend`` whose tasks write to :class:`Capture`'s memfds instead of log files.

    The executor runs with ``capture=False`` (no log path): the backend then leaves the output
    descriptor open after the spawn, and it stays :class:`Capture`'s to read and close.
    """

    def __init__(self, capture: Capture) -> None:
        super().__init__()
        self.capture = capture

    def open(self, loop: asyncio.AbstractEventLoop, events: Any) -> None:
        super().open(loop, events)
        self.capture.attach(loop)

    def close(self) -> None:
        super().close()
        self.capture.close()

    def _open_output(self, token: Any, log_path: str | None) -> int | None:
        spec = token.spec
        try:
            return self.capture.open(spec.key, spec.try_number)
        except OSError as exc:
            assert self._events is not None
            self._events.spawn_failed(token, exc, f"could not capture the output: {exc.strerror or exc}")
            return None
