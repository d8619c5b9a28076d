"""The CLI's durable state: the one place the CLI touches the journal (``_journal.Journal``).

The CLI records each task's transitions itself, from the async handles: ``accepted`` at
submit, ``started`` with the pid right after submit (or from the outcome when the task had to
wait for a slot), ``finished`` at the outcome. Its rows carry the run's name, which the
executor's own journaling does not record, so the executor runs without a journal of its own
(``state_path=None``: no supervisor process; on the façade, ``/bin/true`` at parallelism 64,
a supervisor changes throughput by a few percent either way). A killed CLI's running tasks are
therefore not watched by anyone: the next run finds them (``orphans.py``) and waits for them.
Open work: moving the CLI onto the executor's journal and supervisor, so that their exit
statuses outlive a killed CLI too.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from .. import _logs
from .._journal import CLI_EXECUTOR_PREFIX, Journal, JournalRow, RunSummary
from .._records import TaskInfo, TaskSpec
from .._spawn import proc_start_ticks
from .orphans import Leftovers, dead_instances

__all__ = ["JournalRow", "RunSummary", "State", "default_state_path", "make_log_dir"]


def default_state_path() -> str:
    return str(_logs.default_home() / "journal.sqlite")


class State:
    """What the CLI records and asks: one journal, one executor id per CLI process."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = os.fspath(path)
        #: The journal's path as the tasks' markers name it (see ``orphans.py``).
        self.marker_path = os.path.realpath(self.path)
        self.executor_id = f"{CLI_EXECUTOR_PREFIX}{os.getpid()}-{os.urandom(4).hex()}"
        self.journal = Journal(self.path)

    async def open(self) -> None:
        await self.journal.open()

    async def close(self) -> None:
        await self.journal.close()

    def executor_options(self) -> dict[str, Any]:
        """Extra ``AsyncExecutor`` options: the CLI records transitions itself, so no journal."""
        return {"state_path": None}

    # -------------------------------------------------------------- this instance

    async def register(self) -> None:
        """Record this CLI process in the journal (committed), so a later run can tell it died."""
        pid = os.getpid()
        await self.journal.register_executor(
            self.executor_id, pid=pid, proc_start=proc_start_ticks(pid), supervisor_socket=None
        )

    async def unregister(self) -> None:
        """This CLI ends cleanly: none of its tasks is left running."""
        await self.journal.forget_executor(self.executor_id)

    async def leftovers(self) -> Leftovers:
        """What killed CLI processes left in this journal (their unfinished rows, their tasks
        still running); rows whose tasks are gone are recorded as failed now."""
        dead = dead_instances(await self.journal.executors(), self.executor_id)
        rows = []
        if dead:
            rows = [row for row in await self.journal.unfinished() if row.executor_id in dead]
        left = Leftovers(self.marker_path, dead, rows)
        await self.settle(left)
        return left

    async def settle(self, left: Leftovers) -> None:
        """Record the leftovers whose tasks ended; forget dead instances with nothing left."""
        for info in left.settled():
            self.finished(info)
        for executor_id in left.gone():
            del left.dead[executor_id]
            await self.journal.forget_executor(executor_id)
        await self.journal.flush()

    # -------------------------------------------------------------- transitions

    def accepted(self, spec: TaskSpec, run: str) -> None:
        self.journal.accepted(self.executor_id, spec, run=run, accepted_at=time.time())

    def started(self, key: str, try_number: int, pid: int, log_path: str | None, started_at: float) -> None:
        self.journal.started(
            self.executor_id,
            key,
            try_number,
            pid=pid,
            pgid=pid,  # every task leads its own session and process group
            # The CLI never adopts tasks of an earlier process, so it skips reading /proc for the
            # start time (measured: 5% of a 2,000-task run); the executor's own journaling will
            # record it.
            proc_start=None,
            log_path=log_path,
            started_at=started_at,
        )

    def finished(self, info: TaskInfo) -> None:
        # Reported at once: the CLI shows and counts each outcome as it records it, so no
        # later reader delivers it again, and retention may prune the row.
        self.journal.finished(self.executor_id, info, reported=True)

    async def flush(self) -> None:
        await self.journal.flush()

    # -------------------------------------------------------------- questions

    async def latest(self, run: str) -> dict[str, JournalRow]:
        """The newest try of every key of ``run``, by key."""
        return {str(row.key): row for row in await self.journal.latest(run=run)}

    async def last_tries(self, run: str) -> dict[str, int]:
        """The newest try number of every key of ``run``, by key."""
        return {str(key): number for key, number in (await self.journal.last_tries(run=run)).items()}

    async def runs(self) -> list[RunSummary]:
        return await self.journal.runs()

    async def row(self, key: str, try_number: int | None = None) -> JournalRow | None:
        return await self.journal.row(key, try_number)


def make_log_dir(state_path: str) -> str:
    """Where the CLI's task logs go: ``logs/`` beside its journal."""
    return str(Path(state_path).parent / "logs")
