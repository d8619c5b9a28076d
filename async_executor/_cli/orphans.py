"""Tasks that an earlier ``async-executor run`` left running when it was killed.

Each task leads its own session, so when the CLI dies (SIGKILL, a crash, the machine's OOM
killer) its running tasks run on, and nobody records how they end. A later run must not start
such a line again while it still runs (two copies of one task at once), and must not leave its
journal row "running" forever.

Every task the CLI starts carries marker variables in its environment (inherited by its own
children): the journal's path, the CLI instance's id, the task's key and try. A later run
finds those processes in ``/proc``, also when the journal never heard of them (started within
the last commit interval before the kill). A line whose marked processes still run waits until
they have all exited; its row is then recorded as failed (the exit status is lost) and the line
runs again if the run asks for it. Only instances registered in the journal and no longer alive
(pid and process start time) count as dead.
"""

from __future__ import annotations

import os
from collections.abc import Iterable

from .._journal import JournalRow, failed_info, is_cli_executor, same_process
from .._records import TaskInfo

#: The marker variables every CLI task gets.
STATE_VAR = "ASYNC_EXECUTOR_STATE"
ID_VAR = "ASYNC_EXECUTOR_ID"
KEY_VAR = "ASYNC_EXECUTOR_KEY"
TRY_VAR = "ASYNC_EXECUTOR_TRY"

#: Seconds between two looks for the marked processes of lines that wait for them.
RESCAN_INTERVAL = 0.5


def task_env(state_path: str, executor_id: str, key: str, try_number: int) -> dict[str, str]:
    """The marker variables of one task (merged over the CLI's own environment)."""
    return {STATE_VAR: state_path, ID_VAR: executor_id, KEY_VAR: key, TRY_VAR: str(try_number)}


def scan(state_path: str) -> dict[str, dict[str, set[int]]]:
    """Live processes that carry a task marker of the journal at ``state_path``:
    ``{executor_id: {key: pids}}``. Processes of other users (unreadable) are not seen."""
    needle = f"\0{STATE_VAR}={state_path}\0".encode("utf-8", "surrogateescape")
    found: dict[str, dict[str, set[int]]] = {}
    try:
        entries = os.listdir("/proc")
    except OSError:  # pragma: no cover - no procfs
        return found
    for entry in entries:
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as handle:
                data = b"\0" + handle.read() + b"\0"  # a zombie's is empty
        except OSError:
            continue
        if needle not in data:
            continue
        env = dict(item.split(b"=", 1) for item in data.split(b"\0") if b"=" in item)
        executor_id = env.get(ID_VAR.encode(), b"").decode("utf-8", "surrogateescape")
        key = env.get(KEY_VAR.encode(), b"").decode("utf-8", "surrogateescape")
        if executor_id and key:
            found.setdefault(executor_id, {}).setdefault(key, set()).add(int(entry))
    return found


def dead_instances(executors: Iterable[dict[str, object]], me: str) -> dict[str, int | None]:
    """Registered CLI instances, other than ``me``, that are no longer alive: ``{id: pid}``."""
    dead: dict[str, int | None] = {}
    for entry in executors:
        executor_id = str(entry["executor_id"])
        if executor_id == me or not is_cli_executor(executor_id):
            continue
        pid, proc_start = entry.get("pid"), entry.get("proc_start")
        pid = pid if isinstance(pid, int) else None
        if not same_process(pid, proc_start if isinstance(proc_start, int) else None):
            dead[executor_id] = pid
    return dead


def lost_info(row: JournalRow, pid: int | None) -> TaskInfo:
    """The outcome recorded for a task whose CLI died while it ran."""
    who = f"async-executor (pid {pid})" if pid else "async-executor"
    return failed_info(row, None, f"its {who} was killed while it ran: no exit status was recorded")


class Leftovers:
    """What dead CLI instances left in one journal: unfinished rows and still-running tasks."""

    def __init__(self, state_path: str, dead: dict[str, int | None], rows: Iterable[JournalRow]) -> None:
        self.state_path = state_path
        #: Dead instances' ids, with their pids.
        self.dead = dead
        #: Their unfinished rows not yet recorded as lost, by key.
        self.rows: dict[str, JournalRow] = {str(row.key): row for row in rows}
        #: Keys whose marked processes still run, with those pids.
        self.running: dict[str, set[int]] = {}
        self.refresh()

    def refresh(self) -> None:
        """Look again for the dead instances' marked processes."""
        self.running = {}
        self._busy: set[str] = set()
        if self.dead:
            for executor_id, keys in scan(self.state_path).items():
                if executor_id in self.dead:
                    self._busy.add(executor_id)
                    for key, pids in keys.items():
                        self.running.setdefault(key, set()).update(pids)

    def holds(self, key: str) -> bool:
        """Whether a task of ``key`` left by a dead instance still runs."""
        return key in self.running

    def settled(self) -> list[TaskInfo]:
        """Outcomes to record for unfinished rows whose processes are all gone (each once)."""
        done = [row for key, row in self.rows.items() if key not in self.running]
        for row in done:
            del self.rows[str(row.key)]
        return [lost_info(row, self.dead.get(row.executor_id)) for row in done]

    def gone(self) -> list[str]:
        """Dead instances that left nothing behind: no unfinished row, no running process."""
        busy = self._busy | {row.executor_id for row in self.rows.values()}
        return [executor_id for executor_id in self.dead if executor_id not in busy]
