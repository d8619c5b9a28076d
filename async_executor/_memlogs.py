"""Lazy logs: each task's output in an anonymous memory file, its log file only if it wrote.

Creating a file costs 80-270 µs of kernel CPU on ext4 here (inode allocation; more for tens of
seconds after mass deletions), more than the rest of the executor's work for a ``/bin/true``
task. With ``AsyncExecutor(lazy_logs=True)`` each task gets a ``memfd`` (a tmpfs inode with no
name: a few µs) as its stdout+stderr; when the task ends its log file is created only if the task
wrote anything, with the output copied in by the kernel (``sendfile``). A task that wrote nothing
has no log file (its outcome's ``log_path`` is ``None``).

Every :data:`SPILL_INTERVAL` seconds, a running task's new output is appended to its log file
and punched out of the memfd when it holds more than :data:`SPILL_BYTES` (memory stays bounded)
or when the task was already running at the previous check: the log of a task that runs for
more than a second follows its output with at most a second of delay.
The log is capped at ``max_bytes`` like the engine's own logs (head kept, then a marker).
Output written after the task's main process exited (by a background child still holding the
descriptor) is not kept: the memfd is read once, at the end.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Callable
from typing import Any

from . import _logs

logger = logging.getLogger("async_executor.memlogs")

#: Seconds between checks of running tasks' captured sizes.
SPILL_INTERVAL = 0.5
#: A running task's captured output beyond this many bytes goes to its log file (and leaves memory).
SPILL_BYTES = 1 << 20

_TRUNCATED = b"\n[async-executor: output truncated at the log size cap]\n"
_FALLOC_FL_KEEP_SIZE = 0x01
_FALLOC_FL_PUNCH_HOLE = 0x02

#: Whether this platform has what lazy logs need (Linux: ``memfd_create`` and ``sendfile``).
AVAILABLE = hasattr(os, "memfd_create") and hasattr(os, "sendfile")


class _Slot:
    """One task's memfd and how much of it is in the log file already."""

    __slots__ = ("copied", "fd", "log_fd", "old", "path", "token", "truncated", "written")

    def __init__(self, fd: int, token: Any) -> None:
        self.fd = fd
        self.token = token
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


class MemoryLogs:
    """The memfds of the tasks in flight, by the backend's token for each task.

    ``name_log(token)`` gives a task's log file path; it is called only for a task that wrote
    something (naming a log costs a few µs of hashing, a sizeable part of a ``/bin/true`` task).
    """

    def __init__(self, max_bytes: int | None, name_log: Callable[[Any], str] | None = None) -> None:
        self.max_bytes = max_bytes
        self.name_log = name_log
        self._slots: dict[Any, _Slot] = {}
        self._made_dirs: set[str] = set()
        self._timer: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._punch: Any = None

    def __repr__(self) -> str:
        return f"<MemoryLogs holding {len(self._slots)} tasks' output>"

    # ------------------------------------------------------------------ tasks

    def attach(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop

    def open(self, token: Any) -> int:
        """A new memfd for a task's output (the caller dup2s it into the child).

        Nothing is done at the task's log path until the task writes (then the file is created
        or truncated). A file an earlier executor left there for the same key and try is not
        removed for a task that writes nothing: removing a file that is not there costs ~14 µs
        per task here, more than the rest of this. Raises ``OSError``.
        """
        fd = os.memfd_create("async-executor-task", os.MFD_CLOEXEC)
        old = self._slots.pop(token, None)
        if old is not None:  # a launch retried after running out of descriptors or processes
            self._close(old)
        self._slots[token] = _Slot(fd, token)
        if self._timer is None and self._loop is not None:
            self._timer = self._loop.call_later(SPILL_INTERVAL, self._sweep)
        return fd

    def finish(self, token: Any) -> tuple[bool, str | None]:
        """The task ended: ``(whether it has a log file, why its output was not all kept)``."""
        slot = self._slots.pop(token, None)
        if slot is None:
            return False, None
        problem = None
        try:
            self._copy(slot)
        except OSError as exc:
            problem = (
                f"its output could not all be written to {slot.path or 'its log'}: {exc.strerror or exc}"
            )
        finally:
            self._close(slot)
        return slot.written > 0, problem

    def discard(self, token: Any) -> None:
        """Forget a task that never started or is abandoned (its output is dropped)."""
        slot = self._slots.pop(token, None)
        if slot is not None:
            self._close(slot)

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
                assert self.name_log is not None
                slot.path = self.name_log(slot.token)
                directory = os.path.dirname(slot.path)
                if directory not in self._made_dirs:
                    os.makedirs(directory, mode=0o700, exist_ok=True)
                    self._made_dirs.add(directory)
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
                logger.warning("could not move captured output to %s: %s", slot.path or "its log", exc)
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
