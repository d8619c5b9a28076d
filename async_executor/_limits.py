"""Process resource limits: descriptors bound how many tasks may be in flight."""

from __future__ import annotations

import logging
import os

logger = logging.getLogger("async_executor.limits")

#: Descriptors kept free for the engine itself, the journal, logs opened while spawning, ...
RESERVED_FDS = 64
#: Descriptors one in-flight task holds in the parent (its pidfd).
FDS_PER_TASK = 1


def raise_nofile_limit() -> int:
    """Raise the soft RLIMIT_NOFILE to the hard limit; return the soft limit now in force."""
    try:
        import resource
    except ImportError:  # pragma: no cover - non-POSIX
        return 1 << 16
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError) as exc:
            logger.debug("could not raise RLIMIT_NOFILE to %s: %s", target, exc)
    return soft if soft != resource.RLIM_INFINITY else 1 << 20


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
