"""Durability: journaling an executor's tasks, and recovering what dead executors left behind.

On start, an executor with a journal looks at the journal's unfinished rows written by
executors that are no longer alive (checked by pid *and* process start time) and sorts
each task into one of four outcomes:

* it ended: the supervisor's exits file has its real status. Either it ended while no
  executor ran, or before its executor died: an executor reports a plain exit as soon as its
  supervisor has recorded it, before its own journal commits (``Engine.deliver``), so such an
  outcome is marked ``redelivered`` (its caller may have seen it);
* it still runs under that executor's supervisor: *adoptable* (``try_adopt_task_instances``);
* it was accepted but never started: reported as failed with reason ``not_started``;
* it started but its process is gone with no status recorded: reported as failed.

Outcomes a dead executor recorded but whose caller never confirmed them (see
``AsyncExecutor.get_event_buffer``) are delivered again, marked ``redelivered``: delivery is
at-least-once, so a crash between the journal's commit and the caller's own bookkeeping
cannot lose an outcome.

Rows of executors that are still alive (two executors sharing one state file) are left
alone; their running keys are refused here, so no task runs twice. Rows of ``async-executor run``
processes (which share the default state file) are never touched: the CLI settles its own.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from typing import Any

import attrs
import orjson

from ._engine import Engine
from ._journal import Journal, JournalRow, failed_info, is_cli_executor, same_process
from ._records import FailureReason, TaskInfo, TaskSpec, TaskState
from ._supervisor import AttachedSupervisor, Message

logger = logging.getLogger("async_executor.durable")


class JournalRecorder:
    """Writes one executor's task transitions to the journal (never waits: group commit)."""

    def __init__(self, journal: Journal, executor_id: str) -> None:
        self.journal = journal
        self.executor_id = executor_id

    def accepted(self, spec: TaskSpec) -> None:
        self.journal.accepted(self.executor_id, spec, accepted_at=time.time())

    def started(
        self, spec: TaskSpec, pid: int, proc_start: int | None, log_path: str | None, started_at: float
    ) -> None:
        self.journal.started(
            self.executor_id,
            spec.key,
            spec.try_number,
            pid=pid,
            pgid=pid,
            proc_start=proc_start,
            log_path=log_path,
            started_at=started_at,
        )

    def finished(self, info: TaskInfo) -> None:
        self.journal.finished(self.executor_id, info)

    def reported(self, infos: list[TaskInfo]) -> None:
        self.journal.reported([(info.key, info.try_number) for info in infos])

    async def wait_durable(self) -> None:
        await self.journal.flush()


@attrs.define(slots=True)
class Adoptable:
    """A task an earlier executor started that still runs under its supervisor."""

    row: JournalRow
    child: Message
    supervisor: AttachedSupervisor


@attrs.define(slots=True)
class Recovery:
    #: Outcomes to journal, then report (tasks that ended while no executor ran, ...).
    events: list[TaskInfo] = attrs.Factory(list)
    #: Outcomes the journal holds as final whose caller never confirmed them: report again.
    repeats: list[TaskInfo] = attrs.Factory(list)
    adoptable: dict[Any, Adoptable] = attrs.Factory(dict)
    #: Keys running under another executor that is alive: refused here.
    foreign_live: set[Any] = attrs.Factory(set)
    supervisors: list[AttachedSupervisor] = attrs.Factory(list)


def _tag_of(row: JournalRow) -> tuple[str, int]:
    return (row.key_json, row.try_number)


def _tag_key(tag: Any) -> tuple[str, int] | None:
    if not isinstance(tag, list) or len(tag) != 2:
        return None
    return (orjson.dumps(tag[0]).decode(), int(tag[1]))


_Records = dict[tuple[str, int], Message]


def read_exits(path: str) -> tuple[_Records, _Records, _Records]:
    """``(spawns, exits, launches)`` a supervisor recorded, by task tag (``launches``: about to
    be launched, written before the spawn records of a batch). A torn last line is ignored."""
    spawns: _Records = {}
    exits: _Records = {}
    launches: _Records = {}
    kinds = {"spawn": spawns, "exit": exits, "launch": launches}
    try:
        with open(path, "rb") as handle:
            for line in handle:
                try:
                    record = orjson.loads(line)
                except orjson.JSONDecodeError:
                    continue
                tag = _tag_key(record.get("tag"))
                kind = kinds.get(record.get("ev"))
                if tag is not None and kind is not None:
                    kind[tag] = record
    except FileNotFoundError:
        pass
    return spawns, exits, launches


def row_from_spawn(executor_id: str, record: Message) -> JournalRow:
    """A journal row for a task the supervisor started before the executor's row was committed."""
    key_data, try_number = record["tag"]
    return JournalRow(
        executor_id=executor_id,
        key=_tuplify(key_data),
        key_json=orjson.dumps(key_data).decode(),
        try_number=int(try_number),
        run=None,
        argv=("<unknown: not journaled before the crash>",),
        options={},
        priority=1,
        state="running",
        pid=record.get("pid"),
        pgid=record.get("pid"),
        proc_start=record.get("start"),
        log_path=None,
        accepted_at=record.get("t0", 0.0),
        started_at=record.get("t0"),
        ended_at=None,
        returncode=None,
        signal=None,
        reason=None,
        detail=None,
    )


def started_from_spawn(row: JournalRow, record: Message) -> JournalRow:
    """``row`` (still ``queued`` in the journal) as its supervisor's spawn record has it: running."""
    return attrs.evolve(
        row,
        state="running",
        pid=record.get("pid"),
        pgid=record.get("pid"),
        proc_start=record.get("start"),
        started_at=record.get("t0"),
    )


def _tuplify(value: Any) -> Any:
    return tuple(_tuplify(item) for item in value) if isinstance(value, list) else value


def info_from_exit(row: JournalRow, record: Message, detail: str, redelivered: bool = False) -> TaskInfo:
    """The outcome in a supervisor's exit record."""
    returncode, signum = record.get("rc"), record.get("sig")
    return TaskInfo(
        key=row.key,
        state=TaskState.SUCCESS if returncode == 0 else TaskState.FAILED,
        returncode=returncode,
        signal=signum,
        pid=record.get("pid", row.pid),
        started_at=row.started_at,
        ended_at=record.get("t"),
        # lazy logs: "w": 0 if the task wrote nothing, else its log in "log"
        log_path=record.get("log", row.log_path) if record.get("w", 1) != 0 else None,
        detail=detail,
        try_number=row.try_number,
        redelivered=redelivered,
    )


def redelivered_info(row: JournalRow) -> TaskInfo:
    """A finished row's outcome, as its executor reported it, marked as delivered again."""
    return TaskInfo(
        key=row.key,
        state=TaskState.SUCCESS if row.state == "success" else TaskState.FAILED,
        returncode=row.returncode,
        signal=row.signal,
        pid=row.pid,
        started_at=row.started_at,
        ended_at=row.ended_at,
        log_path=row.log_path,
        reason=FailureReason(row.reason) if row.reason is not None else None,
        detail=row.detail,
        try_number=row.try_number,
        redelivered=True,
    )


def spec_of(row: JournalRow) -> TaskSpec:
    timeout = row.options.get("timeout") if isinstance(row.options, dict) else None
    return TaskSpec(
        key=row.key,
        argv=tuple(row.argv),
        priority=row.priority,
        timeout=timeout if isinstance(timeout, (int, float)) else None,
        try_number=row.try_number,
    )


async def recover(
    journal: Journal, executor_id: str, state_dir: str, on_late_exit: Callable[[JournalRow, Message], None]
) -> Recovery:
    """Sort the unfinished work of dead executors (see the module docstring).

    ``on_late_exit`` receives adoptable tasks that exit before anyone adopts them.
    """
    recovery = Recovery()
    # The CLI's processes share the file (same default path) and sort out their own leftovers
    # (see _cli/orphans.py): their rows and registrations are not ours to deliver or settle.
    registered = await journal.executors()
    executors = {e["executor_id"]: e for e in registered if not is_cli_executor(e["executor_id"])}
    by_executor: dict[str, list[JournalRow]] = {}
    for row in await journal.unfinished(exclude_executor=executor_id):
        if not is_cli_executor(row.executor_id):
            by_executor.setdefault(row.executor_id, []).append(row)
    unreported: dict[str, list[JournalRow]] = {}
    for row in await journal.unreported(exclude_executor=executor_id):
        if not is_cli_executor(row.executor_id):
            unreported.setdefault(row.executor_id, []).append(row)
            by_executor.setdefault(row.executor_id, [])
    # Executors that died with tasks the journal never heard of (spawned within the last
    # commit interval) still left a spawn record in their exits file.
    for old_id in executors:
        if old_id != executor_id and old_id not in by_executor:
            by_executor[old_id] = []
    for old_id, rows in by_executor.items():
        old = executors.get(old_id)
        if old is not None and same_process(old.get("pid"), old.get("proc_start")):
            logger.info(
                "executor %s (pid %s) shares this journal and is alive: leaving its %d task(s)",
                old_id,
                old.get("pid"),
                len(rows),
            )
            recovery.foreign_live.update(row.key for row in rows)
            continue
        if unreported.get(old_id):
            # Outcomes it recorded but its caller never confirmed: deliver them again. Claimed
            # first, so an executor starting later does not deliver them a third time.
            await journal.claim(executor_id, unreported[old_id])
            recovery.repeats.extend(redelivered_info(row) for row in unreported[old_id])
        exits_path = os.path.join(state_dir, f"exits-{old_id}.jsonl")
        # Start-up only: a stat and a small file read on the loop are acceptable here.
        if not rows and not os.path.exists(exits_path):  # noqa: ASYNC240
            continue
        rows_by_tag: dict[tuple[str, int], JournalRow] = {}

        def late_exit(message: Message, rows_by_tag: dict[tuple[str, int], JournalRow] = rows_by_tag) -> None:
            tag = _tag_key(message.get("tag"))
            row = rows_by_tag.get(tag) if tag is not None else None
            if row is not None:
                on_late_exit(row, message)

        supervisor = AttachedSupervisor(old_id, late_exit)
        connected = supervisor.connect()
        children = {_tag_key(c.get("tag")): c for c in supervisor.children.values()} if connected else {}
        # Read the exits file only now, after the supervisor's greeting: a task that ends after
        # the read is then still in ``children`` (and its exit comes over the connection), and
        # one that ended before the greeting is in the file. Read before connecting, a task
        # ending in between would be in neither: its real status lost, reported as failed or
        # as never started although it ran.
        spawns, exits, launches = read_exits(exits_path)
        for row in rows:
            tag = _tag_of(row)
            # Started by the supervisor, but the executor died before its journal heard of it.
            rows_by_tag[tag] = (
                started_from_spawn(row, spawns[tag]) if row.state == "queued" and tag in spawns else row
            )
        for tag in spawns.keys() - rows_by_tag.keys():
            if await journal.row(_tuplify(spawns[tag]["tag"][0]), tag[1]) is None:
                rows_by_tag[tag] = row_from_spawn(old_id, spawns[tag])
        pending_adoption = False
        for tag, row in rows_by_tag.items():
            origin = f"recovered from executor {old_id}"
            if tag in exits:
                if exits[tag].get("o"):
                    # Its supervisor was reporting to the executor, which may have reported this
                    # plain exit before its journal had it (Engine.deliver): a possible repeat.
                    detail = f"ended before its executor died, which may have reported it ({origin})"
                    recovery.events.append(info_from_exit(row, exits[tag], detail, redelivered=True))
                else:
                    detail = f"ended while no executor ran ({origin})"
                    recovery.events.append(info_from_exit(row, exits[tag], detail))
            elif tag in children and children[tag].get("pid"):
                recovery.adoptable[row.key] = Adoptable(row, children[tag], supervisor)
                pending_adoption = True
            elif row.state == "running" and same_process(row.pid, row.proc_start):
                # Its supervisor is gone too; the process runs on, but its exit status will
                # be lost. Leave it alone and say so (it is not started twice here).
                logger.error(
                    "task %r (pid %s) of executor %s still runs but its supervisor is gone; "
                    "it cannot be adopted",
                    row.key,
                    row.pid,
                    old_id,
                )
                recovery.foreign_live.add(row.key)
            elif row.state == "running":
                recovery.events.append(
                    failed_info(row, None, f"its process is gone and no exit status was recorded ({origin})")
                )
            elif tag in launches and not connected:
                # Its supervisor died between "about to launch" and the spawn record: it may
                # have run. Not "never started", which would invite running it again.
                recovery.events.append(
                    failed_info(
                        row,
                        None,
                        f"its supervisor died while launching it: it may have run, and no exit status "
                        f"was recorded ({origin})",
                    )
                )
            else:
                recovery.events.append(
                    failed_info(
                        row,
                        FailureReason.NOT_STARTED,
                        f"accepted but never started ({origin}); queue it again",
                    )
                )
        if pending_adoption:
            recovery.supervisors.append(supervisor)
        elif connected:
            supervisor.close_socket()
        if not pending_adoption:
            try:
                os.unlink(exits_path)
            except FileNotFoundError:
                pass
    return recovery


def adopt(engine: Engine, adoptable: Adoptable) -> None:
    """Hand a recovered running task to the engine, watched through its old supervisor."""
    row, child = adoptable.row, adoptable.child
    spec = spec_of(row)
    started_at = row.started_at or time.time()
    remaining = spec.timeout - (time.time() - started_at) if spec.timeout is not None else None
    run = engine.adopt(spec, int(child["pid"]), started_at, row.log_path, adoptable.supervisor, remaining)
    adoptable.supervisor.bind(run, int(child["id"]))


__all__ = ["Adoptable", "JournalRecorder", "Recovery", "adopt", "recover"]
