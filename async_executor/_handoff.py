"""Hand the spawning thread's CPU to a new task process while it execs.

``posix_spawn`` is a vfork: the calling thread sleeps until the child has exec'd. The
kernel places a new process on the least loaded CPU, which on a machine busy with short
tasks is usually *another* CPU, behind a running task; the caller then sleeps until that
task ends or its time slice runs out. Measured here (2 cores, 2,000 ``/bin/true`` at
parallelism 64): a median wait of 220-590 µs per spawn that way, ~50 µs when the child
lands on the caller's own CPU. The caller's serial path sets the pace of a spawn loop, so
those waits are most of the gap to ``xargs``.

The handoff makes the child start on the caller's CPU without changing what the task
gets. For the one ``posix_spawn`` call the calling thread is pinned to the CPU it runs on
and switched to ``SCHED_FIFO`` (priority 1). The child inherits both: it starts on that CPU
and runs as soon as the caller sleeps. Before its exec it switches itself back to
``SCHED_OTHER`` (a ``posix_spawn`` attribute; its nice value is kept). Its exec wakes the
caller, a real-time thread, which preempts it before it runs one instruction of the new
program. The caller then moves it off its CPU, gives it the caller's own CPU mask, and drops
back to ``SCHED_OTHER`` and to that mask. So a task starts with exactly the policy, nice
value and CPU mask it would have had otherwise, and never runs its own code while pinned.

It needs Linux, permission to use ``SCHED_FIFO`` (``CAP_SYS_NICE``, as root has outside
containers that drop it, or ``RLIMIT_RTPRIO`` >= 1), at least two CPUs in the caller's mask
and a caller running plain ``SCHED_OTHER``. Otherwise, or with the environment variable
``ASYNC_EXECUTOR_SPAWN_HANDOFF=0``, spawns are plain ``posix_spawn`` calls.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable
from typing import Any

__all__ = ["CHILD_ATTRS", "CpuHandoff", "Pin"]

logger = logging.getLogger("async_executor.spawn")

#: Environment variable that turns the handoff off when set to ``0``.
ENV_SWITCH = "ASYNC_EXECUTOR_SPAWN_HANDOFF"

#: ``posix_spawn`` keywords for a handed-off child: back to SCHED_OTHER before its exec
#: (``sched_setscheduler`` keeps the nice value).
_HAVE_SCHED = hasattr(os, "sched_setscheduler")
CHILD_ATTRS: dict[str, Any] = {"scheduler": (os.SCHED_OTHER, os.sched_param(0))} if _HAVE_SCHED else {}

#: What :meth:`CpuHandoff.enter` changed: the CPU the thread was pinned to, and its mask before.
Pin = tuple[int, frozenset[int]]


def _supported() -> bool:
    return (
        sys.platform.startswith("linux")
        and _HAVE_SCHED
        and hasattr(os, "SCHED_FIFO")
        and hasattr(os, "sched_setaffinity")
        and os.environ.get(ENV_SWITCH, "1") != "0"
    )


def _load_getcpu() -> Callable[[], int] | None:
    """glibc's ``sched_getcpu`` (a vDSO call, ~1 µs through ctypes); ``None`` without one."""
    try:
        import ctypes

        function = ctypes.CDLL(None, use_errno=True).sched_getcpu
    except (ImportError, OSError, AttributeError):
        return None
    function.restype = ctypes.c_int
    function.argtypes = []
    return function


class CpuHandoff:
    """Brackets ``posix_spawn`` calls of one launcher: :meth:`enter` before, :meth:`leave` after.

    Turns itself off for good (and says so at debug level) the first time the system
    refuses ``SCHED_FIFO``. Never raises: every failure means a plain spawn.
    """

    def __init__(self, enabled: bool | None = None) -> None:
        self._on = _supported() if enabled is None else (enabled and _supported())
        self._getcpu: Callable[[], int] | None = None

    @property
    def active(self) -> bool:
        """Whether spawns are still handed off (false once the system refused)."""
        return self._on

    def _off(self, why: str) -> None:
        self._on = False
        logger.debug("spawn CPU handoff off: %s", why)

    def enter(self) -> Pin | None:
        """Pin the calling thread to its CPU at ``SCHED_FIFO``; ``None`` when not handing off."""
        if not self._on:
            return None
        getcpu = self._getcpu
        if getcpu is None:
            getcpu = self._getcpu = _load_getcpu()
            if getcpu is None:
                self._off("no sched_getcpu")
                return None
        try:
            if os.sched_getscheduler(0) != os.SCHED_OTHER:
                return None  # a batch, idle or real-time caller: its children inherit that as is
            mask = frozenset(os.sched_getaffinity(0))
            cpu = getcpu()
            if len(mask) < 2 or cpu not in mask:
                return None
            os.sched_setaffinity(0, (cpu,))
        except OSError as exc:
            logger.debug("spawn CPU handoff skipped: %s", exc)
            return None
        try:
            os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(1))
        except OSError as exc:
            self._restore_thread(mask)
            self._off(f"SCHED_FIFO refused ({exc.strerror or exc})")
            return None
        return cpu, mask

    def leave(self, pin: Pin, pid: int | None) -> None:
        """After the spawn (``pid``, or ``None`` if it failed): free the child, then the thread.

        Still real-time here, so the child, which this thread preempted on its exec, cannot
        run before its mask is the thread's old one.
        """
        cpu, mask = pin
        if pid is not None:
            try:
                os.sched_setaffinity(pid, mask - {cpu})  # off this CPU at once (it is queued here)
                os.sched_setaffinity(pid, mask)
            except ProcessLookupError:
                pass  # already gone
            except OSError as exc:
                self._widen(pid, exc, f"task pid {pid}")
        try:
            os.sched_setscheduler(0, os.SCHED_OTHER, os.sched_param(0))
        except OSError as exc:  # lowering one's own policy is always allowed; be loud if not
            logger.error("could not leave SCHED_FIFO after a spawn: %s", exc)
            self._on = False
        self._restore_thread(mask)

    def _restore_thread(self, mask: frozenset[int]) -> None:
        try:
            os.sched_setaffinity(0, mask)
        except OSError as exc:
            self._widen(0, exc, "the spawning thread")

    def _widen(self, pid: int, exc: OSError, what: str) -> None:
        """A mask could not be set (the cpuset changed?): give every CPU the system allows, stop."""
        try:
            os.sched_setaffinity(pid, range(os.cpu_count() or 1))
        except ProcessLookupError:
            return
        except OSError:
            logger.warning("%s may stay pinned to one CPU: %s", what, exc)
        self._off(f"could not set the CPU mask of {what} ({exc.strerror or exc})")
