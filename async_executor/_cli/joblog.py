"""``--joblog FILE`` in GNU parallel's tab-separated format, one line per finished job."""

from __future__ import annotations

import errno
import os
from typing import IO

from .._records import FailureReason, TaskInfo

HEADER = "Seq\tHost\tStarttime\tJobRuntime\tSend\tReceive\tExitval\tSignal\tCommand\n"


def exit_value(info: TaskInfo) -> int:
    """GNU parallel's ``Exitval``: -1 for a timeout, 127/126 for a command that could not start."""
    if info.reason is FailureReason.TIMED_OUT:
        return -1
    if info.reason is FailureReason.SPAWN_FAILED:
        detail = info.detail or ""
        return 127 if os.strerror(errno.ENOENT) in detail else 126
    if info.returncode is not None:
        return info.returncode
    return 0 if info.signal else -1


def joblog_line(seq: int, command: str, info: TaskInfo, received: int) -> str:
    start = info.started_at if info.started_at is not None else (info.ended_at or 0.0)
    runtime = info.duration or 0.0
    return (
        f"{seq}\t:\t{start:.3f}\t{runtime:10.3f}\t0\t{received}\t{exit_value(info)}\t"
        f"{info.signal or 0}\t{command}\n"
    )


class JobLog:
    """Appends a line per job as it finishes (flushed, so ``tail -f`` works)."""

    def __init__(self, path: str, *, append: bool = False) -> None:
        self.path = path
        exists = append and os.path.exists(path) and os.path.getsize(path) > 0
        self._file: IO[str] = open(path, "a" if append else "w", encoding="utf-8")  # noqa: SIM115
        if not exists:
            self._file.write(HEADER)
            self._file.flush()

    def write(self, seq: int, command: str, info: TaskInfo, received: int) -> None:
        self._file.write(joblog_line(seq, command, info, received))
        self._file.flush()

    def close(self) -> None:
        self._file.close()
