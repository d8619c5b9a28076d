"""One ``async-executor run`` at a time per run: a lock file per (journal, run name).

Two CLI processes running the same run at once would both start its lines: the same keys, the
same try numbers, and, with ``--resume``, the same lines picked twice. So each ``run`` holds an
exclusive ``flock`` on ``locks/JOURNAL.RUN.lock`` beside its journal for as long as it lives; a
second one on the same run stops at once with a clear error (exit code 2, nothing started). The
kernel releases the lock when its process exits, however it exits (SIGKILL included), so a killed
run never blocks the next one; the tasks a killed run left running are waited for separately
(see ``orphans.py``). Different run names (``--run NAME``) on one journal run side by side.
"""

from __future__ import annotations

import fcntl
import os

from .._logs import key_slug

__all__ = ["RunBusyError", "RunLock"]


class RunBusyError(Exception):
    """Another live ``async-executor run`` holds the run."""

    def __init__(self, run: str, holder: int | None, journal: str) -> None:
        who = f"another async-executor (pid {holder})" if holder else "another async-executor"
        #: What holds it: "run 'X' is already being run by ... on journal ...".
        self.held = f"run {run!r} is already being run by {who} on journal {journal}"
        super().__init__(
            f"{self.held}; nothing was started. Wait for it to end, or give this run another name"
            " with --run NAME"
        )
        self.run = run
        self.holder = holder


class RunLock:
    """The exclusive lock on one run of one journal, held from :meth:`acquire` to :meth:`release`."""

    def __init__(self, state_path: str, run: str) -> None:
        journal = os.path.realpath(state_path)
        self.journal = journal
        self.run = run
        self.path = os.path.join(
            os.path.dirname(journal), "locks", f"{os.path.basename(journal)}.{key_slug(run)}.lock"
        )
        self._fd: int | None = None

    def acquire(self) -> None:
        """Take the lock, or raise :class:`RunBusyError` naming the process that holds it."""
        os.makedirs(os.path.dirname(self.path), mode=0o700, exist_ok=True)
        # O_CLOEXEC: tasks must not inherit it (a task outliving a killed run would keep it held)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_pid(fd)
            os.close(fd)
            raise RunBusyError(self.run, holder, self.journal) from None
        except BaseException:
            os.close(fd)
            raise
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd

    def release(self) -> None:
        """Give the lock up (the file stays, empty of meaning, for the next run)."""
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)

    def __repr__(self) -> str:
        return f"<RunLock {self.run!r} {'held' if self._fd is not None else 'free'} {self.path}>"


def _read_pid(fd: int) -> int | None:
    """The holder's pid as it wrote it (``None`` if it has not written it yet)."""
    try:
        text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None
