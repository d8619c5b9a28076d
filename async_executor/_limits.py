"""Process resource limits: descriptors bound how many tasks may be in flight."""

from __future__ import annotations

import logging
import os
import threading
import time

logger = logging.getLogger("async_executor.limits")

#: Descriptors kept free for the engine itself, the journal, logs opened while spawning, ...
RESERVED_FDS = 64
#: Descriptors one in-flight task holds in the parent (its pidfd).
FDS_PER_TASK = 1
#: How old a count of this process's open descriptors may be (see ``TaskNofile``).
RECOUNT_SECONDS = 1.0


#: The soft RLIMIT_NOFILE that tasks get: the one this process had before
#: :func:`raise_nofile_limit` first raised it, or (in a helper process) the executor's.
_task_soft: int | None = None


def raise_nofile_limit() -> int:
    """Raise the soft RLIMIT_NOFILE to the hard limit; return the soft limit now in force.

    The executor holds a descriptor per task in flight, so it needs the higher limit; its
    tasks do not, and get the limit from before (see :class:`TaskNofile`).
    """
    global _task_soft
    try:
        import resource
    except ImportError:  # pragma: no cover - non-POSIX
        return 1 << 16
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if _task_soft is None:
        _task_soft = soft
    target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError) as exc:
            logger.debug("could not raise RLIMIT_NOFILE to %s: %s", target, exc)
    return soft if soft != resource.RLIM_INFINITY else 1 << 20


#: Whether this is one of our helper processes (supervisor, fork server), where nothing but
#: our own code opens descriptors (see ``TaskNofile.lower``).
_helper = False


def set_task_nofile(soft: int) -> None:
    """In a helper process (supervisor, fork server): the soft limit its tasks get,
    as the executor that started it had it before raising it. Call before raising."""
    global _task_soft, _helper
    _task_soft = soft
    _helper = True


def task_nofile_soft() -> int | None:
    """The soft limit tasks get (``None`` where there are no resource limits)."""
    if _task_soft is not None:
        return _task_soft
    try:
        import resource
    except ImportError:  # pragma: no cover - non-POSIX
        return None
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]  # nothing raised it (yet)


def task_nofile_args() -> list[str]:
    """Command-line arguments that hand the tasks' soft limit to a helper process."""
    soft = task_nofile_soft()
    return [] if soft is None else [f"--task-nofile={soft}"]


class TaskNofile:
    """Gives each task the soft open-file limit its executor's process started with.

    Like Go's ``os/exec`` since 1.19: the executor raises its own limit (it holds a pidfd
    per task in flight), but a task that inherited it could find a soft limit of a million,
    where programs that ``select()`` or close every descriptor up to the limit suffer, and
    where xargs or GNU parallel would have given it the shell's ``ulimit -Sn``.
    ``posix_spawn`` has no resource-limit action, so :meth:`lower` puts the task's limit in
    force in the spawning process for the length of one spawn. Where another thread runs
    (the CLI's journal thread, the caller's thread beside the sync façade's loop), that
    thread would get ``EMFILE`` if it opened a descriptor while every number below the lower
    limit is taken; so there the limit is lowered only while the process's open descriptors
    (counted at most every second, plus two for each spawn since) leave a quarter of it free.
    A single-threaded spawner (the supervisor process) lowers it always; the supervisor,
    where only our code opens descriptors, keeps it lowered between spawns while that room
    is there, so that a spawn costs no system call for it. A forked child calls
    :meth:`apply` instead.
    """

    __slots__ = ("_counted", "_counted_at", "_held", "_limits", "_resolved", "_spawns")

    def __init__(self) -> None:
        self._limits: tuple[int, int] | None = None
        self._resolved = False
        #: Descriptors open at the last count, when that was, and spawns since.
        self._counted = 0
        self._counted_at = -RECOUNT_SECONDS
        self._spawns = 0
        #: The raised limits while the lower one is kept in force between spawns.
        self._held: tuple[int, int] | None = None

    @property
    def limits(self) -> tuple[int, int] | None:
        """``(soft, hard)`` for tasks where the soft limit differs from this process's, else
        ``None``. Read at the first spawn, when the executor has raised its own limit."""
        if not self._resolved:
            self._resolved = True
            want = task_nofile_soft()
            if want is not None:
                import resource

                soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
                infinity = resource.RLIM_INFINITY
                if want != infinity and (soft == infinity or want < soft):
                    self._limits = (want, hard)
        return self._limits

    @property
    def soft(self) -> int:
        """The tasks' soft limit while :meth:`lower` is in force (-1 when it never is)."""
        limits = self.limits
        return limits[0] if limits is not None else -1

    def lower(self) -> tuple[bool, tuple[int, int] | None]:
        """Put the tasks' limit in force for a spawn where nobody else can be hurt by it.

        Returns whether it is in force, and the limits to :meth:`restore` after the spawn
        (``None``: nothing to restore, because nothing changed or the lower limit is held).
        """
        limits = self.limits
        if limits is None:
            return False, None
        if threading.active_count() == 1:
            room = self._room_below(limits[0])
            if room and _helper:
                if self._held is None:
                    previous = _set_nofile(limits)
                    if previous is None:
                        return False, None
                    self._held = previous
                return True, None
            self.release()
        else:
            self.release()
            if not self._room_below(limits[0]):
                return False, None
        previous = _set_nofile(limits)
        return previous is not None, previous

    def release(self) -> None:
        """The raised limit again, if the lower one is held."""
        if self._held is not None:
            held, self._held = self._held, None
            self.restore(held)

    def _room_below(self, soft: int) -> bool:
        """Whether the descriptors open here leave a quarter of ``soft`` free, at the most
        they can be now: the last count (at most a second old, or just made) plus two for
        each spawn since (its log, its pidfd)."""
        headroom = max(16, soft // 4)
        now = time.monotonic()
        bound = self._counted + 2 * self._spawns
        if now - self._counted_at >= RECOUNT_SECONDS or (
            bound + headroom >= soft and now - self._counted_at >= RECOUNT_SECONDS / 10
        ):
            try:
                self._counted = len(os.listdir("/proc/self/fd"))
            except OSError:  # no count: assume no room
                self._counted = soft
            self._counted_at, self._spawns = now, 0
            bound = self._counted
        self._spawns += 1
        return bound + headroom < soft

    @staticmethod
    def restore(previous: tuple[int, int]) -> None:
        import resource

        resource.setrlimit(resource.RLIMIT_NOFILE, previous)

    def apply(self) -> None:  # pragma: no cover - in a forked child
        """In a forked task: the tasks' soft limit, for good."""
        limits = self.limits
        if limits is None:
            return
        import resource

        _set_nofile((limits[0], resource.getrlimit(resource.RLIMIT_NOFILE)[1]))


def _set_nofile(limits: tuple[int, int]) -> tuple[int, int] | None:
    """Set RLIMIT_NOFILE; the limits before, or ``None`` if it could not be set."""
    import resource

    try:
        return resource.prlimit(0, resource.RLIMIT_NOFILE, limits)
    except (OSError, ValueError):  # e.g. the hard limit was lowered since
        return None


def open_fd_count() -> int:
    try:
        return len(os.listdir("/proc/self/fd"))
    except OSError:
        return RESERVED_FDS


def task_capacity(parallelism: int) -> int:
    """How many tasks may run at once given ``parallelism`` and the descriptors left."""
    budget = (raise_nofile_limit() - open_fd_count() - RESERVED_FDS) // FDS_PER_TASK
    if budget < parallelism:
        logger.warning(
            "parallelism %d exceeds what the open-file limit allows; running at most %d at once",
            parallelism,
            max(1, budget),
        )
    return max(1, min(parallelism, budget))
