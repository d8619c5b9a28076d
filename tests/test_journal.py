"""The journal's storage layer: round trips, group commit, schema versions, bad files, retention,
secrets, and two executors sharing one file."""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, closing, contextmanager
from pathlib import Path
from typing import Any, NamedTuple

import pytest

from async_executor import FailureReason, TaskInfo, TaskSpec, TaskState
from async_executor._journal import (
    APPLICATION_ID,
    REDACTED,
    Journal,
    JournalError,
    JournalRow,
    redact,
    same_process,
)
from async_executor._logs import log_path, remove_logs
from async_executor._spawn import proc_start_ticks

pytestmark = pytest.mark.anyio


class TaskInstanceKey(NamedTuple):
    """Shaped like Airflow's."""

    dag_id: str
    task_id: str
    run_id: str
    try_number: int
    map_index: int = -1


TI = TaskInstanceKey("dag", "task", "manual__2024-06-01T00:00:00", 1)
NESTED = ("batch", (1, ("deep", -2)), ())


def spec(key: Any, *argv: str, try_number: int = 1, **kw: Any) -> TaskSpec:
    return TaskSpec(key=key, argv=argv or ("sh", "-c", f"echo {key!r}"), try_number=try_number, **kw)


def info(key: Any, state: TaskState = TaskState.SUCCESS, try_number: int = 1, **kw: Any) -> TaskInfo:
    kw.setdefault("returncode", 0 if state is TaskState.SUCCESS else 1)
    kw.setdefault("ended_at", time.time())
    return TaskInfo(key=key, state=state, try_number=try_number, **kw)


def start(
    j: Journal, ex: str, key: Any, try_number: int = 1, pid: int = 4242, log: str | None = None
) -> None:
    j.started(
        ex,
        key,
        try_number,
        pid=pid,
        pgid=pid,
        proc_start=777,
        log_path=log or f"/logs/{pid}.log",
        started_at=time.time(),
    )


@asynccontextmanager
async def opened(path: Path | str, **kw: Any) -> AsyncIterator[Journal]:
    journal = Journal(path, **kw)
    await journal.open()
    try:
        yield journal
    finally:
        await journal.close()


async def open_fails(path: Path | str, **kw: Any) -> JournalError:
    journal = Journal(path, **kw)
    with pytest.raises(JournalError) as caught:
        await journal.open()
    await journal.close()
    return caught.value


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "state" / "journal.db"


# ------------------------------------------------------------------------------ round trips


@pytest.mark.parametrize("same_batch", [False, True], ids=["separate-commits", "one-batch"])
async def test_round_trip_of_all_three_transitions(db: Path, same_batch: bool) -> None:
    async with opened(db) as j:
        t0 = time.time()
        keys = [TI, NESTED, "plain", 7, TI._replace(map_index=3)]
        for n, key in enumerate(keys):
            j.accepted("ex1", spec(key, priority=n, timeout=30.0, cwd="/tmp"), run="r1", accepted_at=t0 + n)
        if not same_batch:
            await j.flush()
            queued = await j.row(TI)
            assert queued is not None
            assert queued.state == "queued"
            assert queued.pid is None
            assert queued.started_at is None
        for n, key in enumerate(keys):
            start(j, "ex1", key, pid=1000 + n)
        if not same_batch:
            running = await j.row(NESTED)
            assert running is not None
            assert running.state == "running"
            assert (running.pid, running.pgid, running.proc_start) == (1001, 1001, 777)
        j.finished("ex1", info(TI, returncode=0, pid=1000, ended_at=t0 + 10))
        j.finished(
            "ex1",
            info(
                NESTED,
                TaskState.FAILED,
                returncode=None,
                signal=9,
                reason=FailureReason.TIMED_OUT,
                detail="ran longer than 30s",
                ended_at=t0 + 11,
            ),
        )
        stats = j.statistics()
        assert stats["commits"] == (2 if not same_batch else 0)

        row = await j.row(TI)
        assert isinstance(row, JournalRow)
        assert row.key == tuple(TI)
        assert row.key_json == '["dag","task","manual__2024-06-01T00:00:00",1,-1]'
        assert row.executor_id == "ex1"
        assert row.try_number == 1
        assert row.run == "r1"
        assert row.argv == ("sh", "-c", f"echo {TI!r}")
        assert row.options == {"timeout": 30.0, "cwd": "/tmp"}
        assert row.priority == 0
        assert row.state == "success"
        assert (row.pid, row.pgid, row.proc_start, row.log_path) == (1000, 1000, 777, "/logs/1000.log")
        assert row.accepted_at == t0
        assert row.started_at is not None
        assert row.ended_at == t0 + 10
        assert (row.returncode, row.signal, row.reason, row.detail) == (0, None, None, None)
        assert row.finished

        nested = await j.row(NESTED)
        assert nested is not None
        assert nested.key == NESTED
        assert isinstance(nested.key[1][1], tuple)
        assert nested.state == "failed"
        assert (nested.returncode, nested.signal) == (None, 9)
        assert (nested.reason, nested.detail) == ("timed_out", "ran longer than 30s")

        assert (await j.row("plain")).state == "running"  # type: ignore[union-attr]
        assert (await j.row(7)).key == 7  # type: ignore[union-attr]
        assert await j.row("missing") is None
        assert await j.row(TI, try_number=2) is None

        unfinished = await j.unfinished()
        assert [r.key for r in unfinished] == ["plain", 7, tuple(TI._replace(map_index=3))]
        if same_batch:
            # five tasks, three transitions each at most, merged into one INSERT per row
            assert j.statistics()["rows_written"] == 5
            assert j.statistics()["commits"] == 1


async def test_tries_latest_and_runs(db: Path) -> None:
    async with opened(db) as j:
        now = time.time()
        for i in range(3):
            j.accepted("ex", spec(("b", i)), run="batch-1", accepted_at=now + i)
        j.finished("ex", info(("b", 0), TaskState.FAILED))
        j.accepted("ex", spec(("b", 0), try_number=2), run="batch-1", accepted_at=now + 5)
        j.finished("ex", info(("b", 0), try_number=2, ended_at=now + 9))
        start(j, "ex", ("b", 1))
        j.accepted("ex", spec("other"), run="batch-2", accepted_at=now + 6)
        j.accepted("ex", spec("no-run"), accepted_at=now + 7)

        latest = await j.latest(run="batch-1")
        assert sorted((r.key, r.try_number, r.state) for r in latest) == [
            (("b", 0), 2, "success"),
            (("b", 1), 1, "running"),
            (("b", 2), 1, "queued"),
        ]
        # the newest try of every key, oldest accepted first
        assert [r.key for r in await j.latest()] == [("b", 1), ("b", 2), ("b", 0), "other", "no-run"]
        assert await j.last_tries(run="batch-1") == {("b", 0): 2, ("b", 1): 1, ("b", 2): 1}
        assert await j.last_tries(run="batch-2") == {"other": 1}
        assert await j.last_tries(run="no-such-run") == {}
        assert (await j.row(("b", 0))).try_number == 2  # type: ignore[union-attr]
        assert (await j.row(("b", 0), 1)).state == "failed"  # type: ignore[union-attr]

        assert [r.run for r in await j.runs()] == ["batch-1", "batch-2"]  # oldest first
        runs = {r.run: r for r in await j.runs()}
        b1 = runs["batch-1"]
        assert (b1.tasks, b1.succeeded, b1.failed, b1.running, b1.queued) == (3, 1, 0, 1, 1)
        assert b1.first_accepted_at == now
        assert b1.last_ended_at == now + 9
        b2 = runs["batch-2"]
        assert (b2.tasks, b2.queued, b2.last_ended_at) == (1, 1, None)


async def test_reopen_after_close_sees_everything(db: Path) -> None:
    async with opened(db) as j:
        await j.register_executor(
            "ex1", pid=os.getpid(), proc_start=proc_start_ticks(os.getpid()), supervisor_socket="/run/s.sock"
        )
        for i in range(50):
            j.accepted("ex1", spec(("k", i)), run="r", accepted_at=time.time())
        for i in range(30):
            start(j, "ex1", ("k", i))
        for i in range(20):
            j.finished("ex1", info(("k", i)))
        # no flush: close() must write what is pending
    assert not db.with_name("journal.db-wal").exists()  # checkpointed and removed at close
    async with opened(db) as j2:
        rows = await j2.latest()
        assert len(rows) == 50
        states = [r.state for r in sorted(rows, key=lambda r: r.key)]
        assert states.count("success") == 20
        assert states.count("running") == 10
        assert states.count("queued") == 20
        (ex,) = await j2.executors()
        assert ex["executor_id"] == "ex1"
        assert ex["pid"] == os.getpid()
        assert ex["supervisor_socket"] == "/run/s.sock"
        assert same_process(ex["pid"], ex["proc_start"])


async def test_writes_before_open_are_kept(db: Path) -> None:
    j = Journal(db)
    j.accepted("ex", spec("early"), accepted_at=time.time())
    await j.open()
    try:
        assert (await j.row("early")).state == "queued"  # type: ignore[union-attr]
    finally:
        await j.close()


async def test_write_after_close_is_an_error(db: Path) -> None:
    async with opened(db) as j:
        pass
    with pytest.raises(JournalError, match="closed"):
        j.accepted("ex", spec("late"), accepted_at=time.time())
    with pytest.raises(JournalError, match="not open"):
        await j.unfinished()
    await j.close()  # twice is fine


async def test_writes_from_another_thread(db: Path) -> None:
    async with opened(db) as j:

        def writer() -> None:
            for i in range(100):
                j.accepted("ex", spec(("t", i)), accepted_at=time.time())

        thread = threading.Thread(target=writer)
        thread.start()
        while thread.is_alive():
            await asyncio.sleep(0.01)
        thread.join()
        await asyncio.sleep(0.05)  # the hand-overs run on the loop
        assert len(await j.unfinished()) == 100


async def test_finished_needs_a_terminal_state(db: Path) -> None:
    async with opened(db) as j:
        with pytest.raises(ValueError, match="terminal"):
            j.finished("ex", TaskInfo(key="k", state=TaskState.RUNNING))


# ------------------------------------------------------------------------------ group commit


async def test_writes_are_batched_into_few_commits(db: Path) -> None:
    async with opened(db, commit_interval=30.0, commit_rows=100) as j:
        # a burst: everything pending before the writer runs goes into one transaction
        for i in range(500):
            j.accepted("ex", spec(("burst", i)), accepted_at=time.time())
        assert j.statistics()["pending"] == 500
        assert j.statistics()["commits"] == 0
        await j.flush()
        stats = j.statistics()
        assert stats["commits"] == 1
        assert (stats["pending"], stats["committed"]) == (0, 500)

        # a trickle with the loop running between writes: a commit starts as soon as commit_rows
        # are pending (not after the 30 s interval), and what arrives meanwhile joins the next
        for i in range(1000):
            j.accepted("ex", spec(("trickle", i)), accepted_at=time.time())
            await asyncio.sleep(0)
        deadline = time.monotonic() + 5
        while j.statistics()["pending"] >= 100 and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        stats = j.statistics()
        assert stats["pending"] < 100
        assert 1 <= stats["commits"] - 1 <= 10
        await j.flush()
        assert len(await j.unfinished()) == 1500


async def test_commit_interval_bounds_latency(db: Path) -> None:
    async with opened(db, commit_interval=0.05, commit_rows=10_000) as j:
        for i in range(10):
            j.accepted("ex", spec(("slow", i)), accepted_at=time.time())
        assert j.statistics()["commits"] == 0
        deadline = time.monotonic() + 5
        while j.statistics()["pending"] and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        stats = j.statistics()
        assert (stats["pending"], stats["commits"]) == (0, 1)
        # readable by another connection: really committed, not just flushed to the thread
        with closing(sqlite3.connect(db)) as other, other:
            assert other.execute("SELECT count(*) FROM tasks").fetchone()[0] == 10


async def test_large_backlog_is_split_into_bounded_transactions(db: Path) -> None:
    class Small(Journal):
        MAX_BATCH = 100

    async with _opened_cls(Small, db) as j:
        for i in range(450):
            j.accepted("ex", spec(("big", i)), accepted_at=time.time())
        await j.flush()
        assert j.statistics()["commits"] == 5
        assert len(await j.unfinished()) == 450


@asynccontextmanager
async def _opened_cls(cls: type[Journal], path: Path, **kw: Any) -> AsyncIterator[Journal]:
    journal = cls(path, **kw)
    await journal.open()
    try:
        yield journal
    finally:
        await journal.close()


# ------------------------------------------------------------------------------ row rules


async def test_finished_is_final_and_first_status_wins(db: Path) -> None:
    async with opened(db) as j:
        j.accepted("ex", spec("k"), accepted_at=time.time())
        start(j, "ex", "k")
        await j.flush()
        j.finished("ex", info("k", TaskState.SUCCESS))
        await j.flush()
        j.finished("ex", info("k", TaskState.FAILED, returncode=3))
        start(j, "ex", "k", pid=99)
        await j.flush()
        row = await j.row("k")
        assert row is not None
        assert (row.state, row.returncode, row.pid) == ("success", 0, 4242)
        assert j.statistics()["missed_updates"] == 2
        # a new accepted() for the same key and try starts it afresh
        j.accepted("ex", spec("k"), accepted_at=time.time())
        assert (await j.row("k")).state == "queued"  # type: ignore[union-attr]


async def test_out_of_order_transitions_in_one_batch_apply_in_order(db: Path) -> None:
    async with opened(db) as j:
        j.accepted("ex", spec("k"), accepted_at=1.0)
        j.finished("ex", info("k", TaskState.FAILED, reason=FailureReason.REVOKED, ended_at=2.0))
        j.accepted("ex", spec("k"), accepted_at=3.0)  # re-queued in the same batch
        start(j, "ex", "k")
        j.finished("ex", info("k", ended_at=4.0))
        j.finished("ex", info("k", TaskState.FAILED, ended_at=5.0))  # a duplicate: ignored
        row = await j.row("k")
        assert row is not None
        assert (row.accepted_at, row.state, row.ended_at, row.reason) == (3.0, "success", 4.0, None)
        assert j.statistics()["commits"] == 1


async def test_two_executors_share_one_file(db: Path) -> None:
    async with opened(db) as a, opened(db) as b:
        await a.register_executor("A", pid=os.getpid(), proc_start=None, supervisor_socket=None)
        await b.register_executor("B", pid=os.getpid(), proc_start=None, supervisor_socket=None)
        for i in range(20):
            a.accepted("A", spec(("a", i)), accepted_at=time.time())
            b.accepted("B", spec(("b", i)), accepted_at=time.time())
            await asyncio.sleep(0)
        a.accepted("A", spec("shared"), accepted_at=time.time())
        start(a, "A", "shared", pid=111)
        await a.flush()
        # B accepting the same key and try while A runs it must not overwrite A's row
        b.accepted("B", spec("shared", "evil"), accepted_at=time.time())
        await b.flush()
        row = await a.row("shared")
        assert row is not None
        assert (row.executor_id, row.state, row.pid, row.argv[0]) == ("A", "running", 111, "sh")
        assert b.statistics()["conflicts"] == 1
        # each sees the other's rows; exclude_executor filters them
        assert len(await b.unfinished()) == 41
        assert {r.executor_id for r in await b.unfinished(exclude_executor="B")} == {"A"}
        assert len(await a.unfinished(exclude_executor="A")) == 20
        # an explicit finished() from B (e.g. after adopting the task) applies and takes the row over
        b.finished("B", info("shared", pid=111))
        await b.flush()
        row = await a.row("shared")
        assert row is not None
        assert (row.executor_id, row.state) == ("B", "success")
        # once finished, the key may be accepted again by anyone
        b.accepted("B", spec("shared"), accepted_at=time.time())
        assert (await a.row("shared")).executor_id == "B"  # type: ignore[union-attr]
        assert {e["executor_id"] for e in await a.executors()} == {"A", "B"}
        first = {e["executor_id"]: e for e in await a.executors()}["A"]
        await a.register_executor("A", pid=0, proc_start=None, supervisor_socket="gone")  # e.g. ended
        again = {e["executor_id"]: e for e in await b.executors()}["A"]
        assert (again["pid"], again["supervisor_socket"]) == (0, "gone")
        assert again["started_at"] == first["started_at"]
        assert not same_process(again["pid"], again["proc_start"])


# ------------------------------------------------------------------------------ schema


V1_SCHEMA = """
CREATE TABLE meta (name TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID;
CREATE TABLE tasks (
    key_json TEXT NOT NULL, try_number INTEGER NOT NULL, executor_id TEXT NOT NULL,
    argv TEXT NOT NULL, options TEXT NOT NULL, priority INTEGER NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('queued', 'running', 'success', 'failed')),
    pid INTEGER, pgid INTEGER, proc_start INTEGER, log_path TEXT,
    accepted_at REAL NOT NULL, started_at REAL, ended_at REAL,
    returncode INTEGER, signal INTEGER, reason TEXT, detail TEXT,
    PRIMARY KEY (key_json, try_number)
) WITHOUT ROWID;
CREATE INDEX tasks_unfinished ON tasks (state) WHERE state IN ('queued', 'running');
CREATE INDEX tasks_ended ON tasks (ended_at) WHERE state IN ('success', 'failed');
INSERT INTO tasks VALUES ('["old",1]', 1, 'ex-v1', '["true"]', '{}', 1, 'running', 50, 50, 123,
    '/l/old.log', 1.0, 2.0, NULL, NULL, NULL, NULL, NULL);
INSERT INTO tasks VALUES ('["old",2]', 1, 'ex-v1', '["false"]', '{}', 1, 'failed', 51, 51, 124,
    NULL, 1.0, 2.0, 3.0, 1, NULL, NULL, NULL);
"""


async def test_migrates_a_version_1_database(db: Path) -> None:
    db.parent.mkdir(parents=True)
    with closing(sqlite3.connect(db)) as con, con:
        con.executescript(V1_SCHEMA)
        con.execute("PRAGMA user_version = 1")
        con.execute(f"PRAGMA application_id = {APPLICATION_ID}")
    con.close()
    async with opened(db) as j:
        old = await j.row(("old", 1))
        assert old is not None
        assert (old.executor_id, old.state, old.pid, old.proc_start, old.run) == (
            "ex-v1",
            "running",
            50,
            123,
            None,
        )
        assert [r.key for r in await j.unfinished()] == [("old", 1)]
        assert await j.unreported() == []  # outcomes from before version 3 count as delivered
        j.accepted("ex-v2", spec("new"), run="r2", accepted_at=time.time())
        await j.register_executor("ex-v2", pid=1, proc_start=None, supervisor_socket=None)
        assert (await j.row("new")).run == "r2"  # type: ignore[union-attr]
        assert [r.run for r in await j.runs()] == ["r2"]
    with closing(sqlite3.connect(db)) as con, con:
        assert con.execute("PRAGMA user_version").fetchone()[0] == Journal.SCHEMA_VERSION == 5
        names = {r[0] for r in con.execute("SELECT name FROM sqlite_master")}
        assert {"tasks", "executors", "tasks_run", "tasks_unreported", "tasks_prunable", "meta"} <= names
        assert "tasks_ended" not in names
        # the old finished row (pruned at open by age, if not): taken as reported
        assert con.execute("SELECT count(*) FROM tasks WHERE reported = 0").fetchone()[0] == 0
    con.close()


async def test_version_4_marks_the_clis_old_unreported_rows_reported(db: Path) -> None:
    """CLIs before version 4 left their outcomes unreported: never pruned, and delivered again
    by an executor on the same file. The migration marks them reported; other rows keep theirs."""
    async with opened(db) as j:
        for executor_id, key in (("cli-123-abcd", "jobs:1:aa"), ("ex-1", "mine")):
            j.accepted(executor_id, spec(key), run="jobs", accepted_at=time.time())
            j.finished(executor_id, info(key))
        j.finished("cli-123-abcd", info("jobs:2:bb"), reported=True)
        await j.flush()
    with closing(sqlite3.connect(db)) as con, con:
        con.execute("UPDATE tasks SET reported = 0")
        con.execute("PRAGMA user_version = 3")
    con.close()
    async with opened(db) as j:
        assert [r.key for r in await j.unreported()] == ["mine"]
        assert (await j.row("jobs:1:aa")).reported  # type: ignore[union-attr]


async def test_finished_reported_writes_the_row_reported(db: Path) -> None:
    async with opened(db) as j:
        j.accepted("cli-1-x", spec("merged"), accepted_at=time.time())
        j.finished("cli-1-x", info("merged"), reported=True)  # merged into the insert
        j.accepted("cli-1-x", spec("updated"), accepted_at=time.time())
        await j.flush()
        j.finished("cli-1-x", info("updated"), reported=True)  # an update of the queued row
        j.accepted("cli-1-x", spec("plain"), accepted_at=time.time())
        j.finished("cli-1-x", info("plain"))
        await j.flush()
        assert [r.key for r in await j.unreported()] == ["plain"]
        assert (await j.row("updated")).state == "success"  # type: ignore[union-attr]


@pytest.mark.parametrize("kind", ["empty-file", "empty-database"])
async def test_version_0_files_get_the_schema(db: Path, kind: str) -> None:
    db.parent.mkdir(parents=True)
    if kind == "empty-file":
        db.write_bytes(b"")
    else:
        con = sqlite3.connect(db)
        con.execute("PRAGMA user_version")
        con.execute("VACUUM")
        con.close()
    async with opened(db) as j:
        j.accepted("ex", spec("k"), accepted_at=time.time())
        assert len(await j.unfinished()) == 1
    con = sqlite3.connect(db)
    assert con.execute("PRAGMA user_version").fetchone()[0] == Journal.SCHEMA_VERSION
    assert con.execute("PRAGMA application_id").fetchone()[0] == APPLICATION_ID
    assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    con.close()


async def test_newer_schema_is_an_error_naming_both_versions(db: Path) -> None:
    async with opened(db):
        pass
    con = sqlite3.connect(db)
    con.execute("PRAGMA user_version = 99")
    con.close()
    error = await open_fails(db)
    assert "99" in str(error)
    assert f"version {Journal.SCHEMA_VERSION}" in str(error)
    assert "newer" in str(error)


async def test_database_of_another_application_is_refused(db: Path) -> None:
    db.parent.mkdir(parents=True)
    con = sqlite3.connect(db)
    con.execute("CREATE TABLE accounts (id INTEGER)")
    con.commit()
    con.close()
    assert "not an async_executor journal" in str(await open_fails(db))
    con = sqlite3.connect(db)
    con.execute("PRAGMA application_id = 12345")
    con.close()
    assert "another application" in str(await open_fails(db))


# ------------------------------------------------------------------------------ bad files


async def test_random_bytes_are_a_clear_error(db: Path) -> None:
    db.parent.mkdir(parents=True)
    db.write_bytes(os.urandom(64 * 1024))
    error = await open_fails(db)
    assert "corrupt or not a SQLite database" in str(error)
    assert str(db) in str(error)


async def _fill_and_close(db: Path) -> None:
    async with opened(db) as j:
        for i in range(3000):
            j.accepted("ex", spec(("k", i), "x" * 50), accepted_at=time.time())
    assert db.stat().st_size > 20 * 4096


def _wreck_pages(db: Path) -> None:
    with open(db, "r+b") as handle:  # keep page 1 (header, schema), wreck a run of b-tree pages
        handle.seek(5 * 4096)
        handle.write(b"\xa5" * (8 * 4096))


def _crash_while_open(db: Path) -> None:
    """A process that writes to the journal and dies without closing it: its WAL stays."""
    code = (
        "import os, sqlite3, sys; con = sqlite3.connect(sys.argv[1], isolation_level=None); "
        "con.execute(\"INSERT OR REPLACE INTO meta (name, value) VALUES ('crash', '1')\"); os._exit(0)"
    )
    subprocess.run([sys.executable, "-c", code, str(db)], check=True)
    assert Path(f"{db}-wal").exists()


async def test_damaged_pages_are_found_at_open_after_a_crash(db: Path) -> None:
    await _fill_and_close(db)
    _crash_while_open(db)
    _wreck_pages(db)
    error = await open_fails(db)
    assert "corrupt" in str(error)


async def test_a_cleanly_closed_journal_is_not_checked_again(
    db: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """No WAL beside the file: the last close checkpointed and synced it, so the integrity check
    (~80 ms on 100,000 tasks) is skipped; damage done to it afterwards is a clear
    error at the first read that meets it."""
    await _fill_and_close(db)
    assert not Path(f"{db}-wal").exists()  # SQLite removes it when the last connection closes
    with caplog.at_level(logging.DEBUG, logger="async_executor.journal"):
        async with opened(db):
            pass
    assert "closed cleanly; no integrity check" in caplog.text
    _wreck_pages(db)
    async with opened(db) as j:
        with pytest.raises(JournalError, match="corrupt"):
            await j.latest()


async def test_locked_database_fails_fast(db: Path) -> None:
    async with opened(db):
        pass
    holder = sqlite3.connect(db, isolation_level=None)
    try:
        holder.execute("BEGIN EXCLUSIVE")
        t0 = time.monotonic()
        error = await open_fails(db)
        elapsed = time.monotonic() - t0
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert "locked" in str(error)
    assert elapsed < 3.0
    async with opened(db):  # and fine once the lock is gone
        pass


async def test_locked_rollback_mode_database_fails_fast(db: Path) -> None:
    async with opened(db):
        pass
    holder = sqlite3.connect(db, isolation_level=None)
    holder.execute("PRAGMA journal_mode = DELETE")  # there, EXCLUSIVE also shuts readers out
    try:
        holder.execute("BEGIN EXCLUSIVE")
        t0 = time.monotonic()
        error = await open_fails(db)
        elapsed = time.monotonic() - t0
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert "locked" in str(error)
    assert elapsed < 3.0


async def test_lock_taken_while_open_keeps_rows_and_retries(db: Path) -> None:
    async with opened(db) as j:
        j.accepted("ex", spec("before"), accepted_at=time.time())
        await j.flush()
        holder = sqlite3.connect(db, isolation_level=None)
        try:
            holder.execute("BEGIN EXCLUSIVE")
            j.accepted("ex", spec("during"), accepted_at=time.time())
            with pytest.raises(JournalError, match="locked"):
                await j.flush()
            assert j.statistics()["pending"] == 1
            assert j.statistics()["write_errors"] >= 1
        finally:
            holder.execute("ROLLBACK")
            holder.close()
        await j.flush()
        assert (await j.row("during")).state == "queued"  # type: ignore[union-attr]


async def test_path_through_a_regular_file_is_an_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    error = await open_fails(blocker / "journal.db")
    assert "cannot create the journal directory" in str(error)


async def test_path_that_is_a_directory_is_an_error(tmp_path: Path) -> None:
    error = await open_fails(tmp_path)
    assert "is a directory" in str(error)


@contextmanager
def immutable(path: Path) -> Iterator[None]:
    """``chattr +i``: even root cannot write it (skips where chattr does not work)."""
    if shutil.which("chattr") is None:
        pytest.skip("chattr is not installed")
    done = subprocess.run(["chattr", "+i", str(path)], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        pytest.skip(f"chattr +i does not work here: {done.stderr.strip()}")
    try:
        yield
    finally:
        subprocess.run(["chattr", "-i", str(path)], check=True)


async def test_read_only_file_is_an_error(db: Path) -> None:
    async with opened(db) as j:
        j.accepted("ex", spec("k"), accepted_at=time.time())
    with immutable(db):
        error = await open_fails(db)
    assert "read-only" in str(error)


async def test_read_only_directory_is_an_error(db: Path) -> None:
    async with opened(db):
        pass
    with immutable(db.parent):
        existing = await open_fails(db)  # the -wal / -shm files cannot be created beside it
        new = await open_fails(db.parent / "new.db")
    assert "cannot be opened or created" in str(existing)
    assert "cannot be opened or created" in str(new)


# ------------------------------------------------------------------------------ retention


async def test_prune_keeps_unfinished_rows(db: Path) -> None:
    async with opened(db, keep_seconds=None, keep_tasks=5) as j:
        now = time.time()
        for i in range(20):
            j.accepted("ex", spec(("done", i)), accepted_at=now - 1000)
            j.finished("ex", info(("done", i), ended_at=now - 1000 + i))
        j.reported([(("done", i), 1) for i in range(20)])
        j.accepted("ex", spec("waiting"), accepted_at=now - 10**6)
        j.accepted("ex", spec("busy"), accepted_at=now - 10**6)
        j.accepted("ex", spec("undelivered"), accepted_at=now - 10**6)
        j.finished("ex", info("undelivered", ended_at=now - 10**6))  # never confirmed: kept
        start(j, "ex", "busy")
        assert await j.prune() == 15
        keys = {r.key for r in await j.latest()}
        assert keys == {"waiting", "busy", "undelivered"} | {("done", i) for i in range(15, 20)}
        assert await j.prune() == 0
        assert j.statistics()["pruned"] == 15


async def test_prune_by_age(db: Path) -> None:
    async with opened(db, keep_seconds=3600, keep_tasks=None) as j:
        now = time.time()
        for i in range(10):
            j.accepted("ex", spec(("t", i)), accepted_at=now - 7200)
            j.finished("ex", info(("t", i), ended_at=now - 7200 if i < 6 else now))
        j.reported([(("t", i), 1) for i in range(10)])
        j.accepted("ex", spec("old-but-queued"), accepted_at=now - 10**7)
        assert await j.prune() == 6
        assert len(await j.latest()) == 5


async def test_prune_removes_the_log_files_of_the_rows_it_deletes(db: Path, tmp_path: Path) -> None:
    """Logs would otherwise pile up forever beside a journal that keeps 100,000 rows. Only a
    file named for the pruned row's key and try goes, and not one written after that task ended
    (a newer task of a reused key and try)."""
    logs = tmp_path / "logs"
    logs.mkdir()
    now = time.time()
    async with opened(db, keep_seconds=3600, keep_tasks=None) as j:
        paths = {}
        for name, ended in (("old", now - 7200), ("old-reused", now - 7200), ("new", now)):
            paths[name] = log_path(str(logs), name, 1)
            Path(paths[name]).write_text(name)
            os.utime(paths[name], (ended - 5, ended - 5))
            j.accepted("ex", spec(name), accepted_at=ended - 10)
            start(j, "ex", name, log=paths[name])
            j.finished("ex", info(name, ended_at=ended), reported=True)
        os.utime(paths["old-reused"])  # written now: a newer task's log at the same path
        foreign = logs / "notes.txt"  # a row pointing at a file we did not name
        foreign.write_text("keep me")
        j.accepted("ex", spec("odd"), accepted_at=now - 7300)
        start(j, "ex", "odd", log=str(foreign))
        j.finished("ex", info("odd", ended_at=now - 7200), reported=True)
        assert await j.prune() == 3
        assert j.statistics()["logs_removed"] == 1
    assert not os.path.exists(paths["old"])
    assert Path(paths["old-reused"]).read_text() == "old-reused"
    assert Path(paths["new"]).read_text() == "new"
    assert foreign.read_text() == "keep me"


def test_a_pruned_row_without_an_end_time_keeps_its_log(tmp_path: Path) -> None:
    """Rows from version 1 may lack ``ended_at``: nothing shows the file is that task's."""
    kept, gone = tmp_path / "a.log", tmp_path / "b.log"
    for path in (kept, gone):
        path.write_text("x")
        os.utime(path, (1000.0, 1000.0))
    assert remove_logs([(str(kept), None), (str(gone), 1000.0), (str(tmp_path / "missing.log"), 1.0)]) == 1
    assert kept.exists() and not gone.exists()


async def test_prune_runs_by_itself(db: Path) -> None:
    class Eager(Journal):
        PRUNE_EVERY = 50

    async with _opened_cls(Eager, db, keep_seconds=None, keep_tasks=10) as j:
        for i in range(200):
            j.accepted("ex", spec(("t", i)), accepted_at=time.time())
            j.finished("ex", info(("t", i)))
            j.reported([(("t", i), 1)])
            if i % 20 == 0:
                await j.flush()
        await j.flush()
        deadline = time.monotonic() + 5
        while j.statistics()["pruned"] < 150 and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        assert j.statistics()["pruned"] >= 150
        assert len(await j.latest()) <= 60


async def test_retention_reads_no_row_of_the_history_it_keeps(db: Path) -> None:
    """Retention runs at open and every 1,000 outcomes, on a file that keeps up to 100,000
    rows. Each of its statements must reach the kept history through a covering index: a row
    lookup per finished row cost 95 ms per count on 90,000 rows (three counts in a 2,000-task
    CLI run); a full scan of the table, 40 ms. Checked on SQLite's query plans, not on time."""
    statements: list[str] = []
    async with opened(db, keep_seconds=3600, keep_tasks=3) as j:
        now = time.time()
        for i in range(10):
            j.accepted("ex", spec(("t", i)), accepted_at=now - 7200)
            j.finished("ex", info(("t", i), ended_at=now - 7200 + i * 1000), reported=True)
        await j.register_executor("ex", pid=1, proc_start=None, supervisor_socket=None)
        await j.flush()
        assert j._db is not None
        await j._db.set_trace_callback(statements.append)
        assert await j.prune() == 7
        await j._db.set_trace_callback(None)
    reads = [s for s in statements if s.lstrip().upper().startswith(("SELECT", "DELETE"))]
    assert any("tasks" in s for s in reads)
    live = ("tasks_unfinished", "tasks_unreported")  # partial indexes of rows still in play
    con = sqlite3.connect(db)
    for statement in reads:
        for *_, detail in con.execute(f"EXPLAIN QUERY PLAN {statement}"):
            scan = detail.startswith("SCAN tasks") and not any(name in detail for name in live)
            over_history = scan or "tasks_prunable" in detail
            assert not over_history or "COVERING INDEX" in detail, (statement, detail)
    con.close()


# ------------------------------------------------------------------------------ secrets


def test_redact() -> None:
    argv, env = redact(
        ["cmd", "--password", "hunter2", "tail"],
        {"API_TOKEN": "t", "my_secret_thing": "s", "aws_access_key_id": "k", "DB_URL": "u", "HOME": "/root"},
        [2, -1],
        ["DB_URL"],
    )
    assert argv == ("cmd", "--password", REDACTED, REDACTED)
    assert env == {
        "API_TOKEN": REDACTED,
        "my_secret_thing": REDACTED,
        "aws_access_key_id": REDACTED,
        "DB_URL": REDACTED,
        "HOME": "/root",
    }
    assert redact(("a",), None, None, None) == (("a",), None)
    with pytest.raises(ValueError, match="out of range"):
        redact(("a",), None, [1], None)
    with pytest.raises(ValueError, match="int"):
        redact(("a",), None, ["0"], None)  # type: ignore[list-item]


async def test_secrets_never_reach_the_file(db: Path) -> None:
    secrets = [
        b"hunter2-argv-secret",
        b"postgres://u:pw-in-url@h/db",
        b"tok-abcdef-123456",
        b"jwt.eyJhbGciOi",
    ]
    async with opened(db) as j:
        j.accepted(
            "ex",
            spec(
                "k",
                "airflow",
                "--password",
                secrets[0].decode(),
                env={
                    "DB_URL": secrets[1].decode(),
                    "GITHUB_TOKEN": secrets[2].decode(),
                    "AIRFLOW_JWT": secrets[3].decode(),
                    "PLAIN": "visible-value",
                },
            ),
            accepted_at=time.time(),
            secret_argv=[2],
            secret_env=["DB_URL"],
        )
        start(j, "ex", "k")
        await j.flush()
        row = await j.row("k")
        assert row is not None
        assert row.argv == ("airflow", "--password", REDACTED)
        assert row.options["env"] == {
            "DB_URL": REDACTED,
            "GITHUB_TOKEN": REDACTED,
            "AIRFLOW_JWT": REDACTED,
            "PLAIN": "visible-value",
        }
        wal = db.with_name(db.name + "-wal")
        raw = db.read_bytes() + (wal.read_bytes() if wal.exists() else b"")
        assert b"visible-value" in raw  # the check can see values at all
        for secret in secrets:
            assert secret not in raw
    raw = db.read_bytes()
    for secret in secrets:
        assert secret not in raw


# ------------------------------------------------------------------------------ helpers


def test_proc_start_identifies_a_process() -> None:
    mine = proc_start_ticks(os.getpid())
    assert isinstance(mine, int)
    assert mine > 0
    assert same_process(os.getpid(), mine)
    assert not same_process(os.getpid(), mine + 1)  # same pid, another start time: pid reused
    assert not same_process(os.getpid(), mine - 2)
    assert same_process(os.getpid(), mine - 1)  # a record one tick early (see ticks_between)
    assert not same_process(os.getpid(), None)
    child = subprocess.Popen(["true"])
    child.wait()
    assert proc_start_ticks(child.pid) is None
    assert not same_process(child.pid, mine)


async def test_repr_and_statistics(db: Path) -> None:
    j = Journal(db)
    assert "new" in repr(j)
    await j.open()
    j.accepted("ex", spec("k"), accepted_at=time.time())
    assert "pending 1" in repr(j)
    await j.close()
    assert "closed" in repr(j)
    stats = j.statistics()
    assert stats["committed"] == stats["appended"] == 1


def test_bad_settings_are_refused(db: Path) -> None:
    with pytest.raises(ValueError, match="commit_rows"):
        Journal(db, commit_rows=0)
    with pytest.raises(ValueError, match="commit_interval"):
        Journal(db, commit_interval=0)
    with pytest.raises(ValueError, match="keep_tasks"):
        Journal(db, keep_tasks=-1)
    assert not db.parent.exists()  # __init__ touches nothing


async def test_writer_survives_an_internal_error(db: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    async with opened(db) as j:
        original = Journal._write_segments
        calls = 0

        async def flaky(self: Journal, *args: Any) -> int:
            nonlocal calls
            calls += 1
            if calls == 1:
                raise RuntimeError("boom")
            return await original(self, *args)

        monkeypatch.setattr(Journal, "_write_segments", flaky)
        j.accepted("ex", spec("k"), accepted_at=time.time())
        with pytest.raises(JournalError, match="boom"):
            await j.flush()
        await j.flush()  # retried: nothing lost
        assert (await j.row("k")).state == "queued"  # type: ignore[union-attr]


async def test_a_commit_that_fails_midway_leaves_nothing_behind(
    db: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A statement that fails after others of its transaction succeeded rolls all of them
    back, and the transitions are kept for the next commit."""
    async with opened(db, commit_interval=60) as j:
        j.accepted("ex", spec("a"), accepted_at=time.time())
        start(j, "ex", "a")
        await j.flush()
        original = j._db.executemany  # type: ignore[union-attr]

        def failing(sql: str, params: Any) -> Any:
            if sql.startswith("UPDATE"):
                raise sqlite3.OperationalError("disk I/O error")
            return original(sql, params)

        monkeypatch.setattr(j._db, "executemany", failing)
        j.accepted("ex", spec("b"), accepted_at=time.time())  # an INSERT, then ...
        j.finished("ex", info("a"))  # ... an UPDATE, which fails
        with pytest.raises(JournalError, match="disk I/O error"):
            await j.flush()
        with closing(sqlite3.connect(db)) as other:  # the INSERT did not stay
            assert other.execute("SELECT key_json, state FROM tasks").fetchall() == [('"a"', "running")]
        monkeypatch.undo()
        await j.flush()  # kept, and written by the next commit
        assert (await j.row("a")).state == "success"  # type: ignore[union-attr]
        assert (await j.row("b")).state == "queued"  # type: ignore[union-attr]


async def test_outcomes_stay_unreported_until_confirmed(db: Path) -> None:
    async with opened(db) as j:
        for key in ("a", "b", "c"):
            j.accepted("ex1", spec(key), accepted_at=time.time())
        start(j, "ex1", "a")
        j.finished("ex1", info("a"))
        j.accepted("ex1", spec("b"), accepted_at=time.time())
        j.finished("ex1", info("b", TaskState.FAILED, returncode=3))
        await j.flush()
        assert sorted(r.key for r in await j.unreported()) == ["a", "b"]  # "c" is not finished
        assert [r.key for r in await j.unreported(exclude_executor="ex1")] == []
        j.reported([("a", 1), ("c", 1), ("nope", 7)])  # unfinished / unknown tags are ignored
        rows = await j.unreported()
        assert [(r.key, r.returncode, r.reported) for r in rows] == [("b", 3, False)]
        assert (await j.row("c")).state == "queued"  # type: ignore[union-attr]
        # another executor takes the outcome over; its owner changes, only while unreported
        assert await j.claim("ex2", rows) == 1
        assert await j.claim("ex3", rows) == 0
        assert [r.executor_id for r in await j.unreported()] == ["ex2"]


async def test_a_report_in_the_batch_of_its_finish_rides_on_that_write(
    db: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A confirmation that lands with its finish is written by the finish itself (one statement
    less per task), with the same result as a separate update."""
    statements: list[str] = []
    async with opened(db, commit_interval=60) as j:
        original = j._db.executemany  # type: ignore[union-attr]

        def counting(sql: str, params: Any) -> Any:
            statements.append(sql.split()[0] + (" reported" if "SET reported = 1" in sql else ""))
            return original(sql, params)

        monkeypatch.setattr(j._db, "executemany", counting)
        for key in ("upd", "upd2"):
            j.accepted("ex", spec(key), accepted_at=time.time())
            start(j, "ex", key)
        await j.flush()
        statements.clear()
        j.finished("ex", info("upd"))  # an update of the running row ...
        j.finished("ex", info("upd2", TaskState.FAILED, returncode=5))
        j.accepted("ex", spec("ins"), accepted_at=time.time())  # ... and a whole new row
        j.finished("ex", info("ins"))
        j.reported([("upd", 1), ("ins", 1)])  # "upd2" is not confirmed yet
        await j.flush()
        assert "UPDATE reported" not in statements and len(statements) == 2  # one INSERT, one UPDATE
        assert [(r.key, r.returncode) for r in await j.unreported()] == [("upd2", 5)]
        assert (await j.row("upd")).reported and (await j.row("ins")).reported  # type: ignore[union-attr]


async def test_a_merged_report_of_a_finish_that_found_its_row_finished_still_lands(db: Path) -> None:
    """If the finish misses (another executor finished the row first, unreported), its merged
    report is written on its own, as it was before reports rode on finishes."""
    async with opened(db, commit_interval=60) as j:
        j.accepted("ex1", spec("k"), accepted_at=time.time())
        start(j, "ex1", "k")
        j.finished("ex2", info("k", TaskState.FAILED, returncode=7))  # e.g. a recovery, first
        await j.flush()
        j.finished("ex1", info("k"))  # misses: the first terminal status wins
        j.reported([("k", 1)])
        await j.flush()
        row = await j.row("k")
        assert row is not None and row.returncode == 7 and row.reported
        assert j.statistics()["missed_updates"] == 1


async def test_a_report_lands_after_its_finish_in_one_batch(db: Path) -> None:
    # finished, reported, accepted again and finished again, all in one commit: the report
    # applies to the first outcome only, so the second one is still owed to its caller
    async with opened(db, commit_interval=60) as j:
        j.accepted("ex", spec("k"), accepted_at=time.time())
        j.finished("ex", info("k"))
        j.reported([("k", 1)])
        j.accepted("ex", spec("k"), accepted_at=time.time())
        j.finished("ex", info("k", TaskState.FAILED, returncode=9))
        await j.flush()
        assert [(r.key, r.returncode) for r in await j.unreported()] == [("k", 9)]
        j.reported([("k", 1)])
        assert await j.unreported() == []
