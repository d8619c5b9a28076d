"""Journal benchmark: database size after N finished tasks, and the raw cost of recording a task.

    python benchmarks/bench_journal.py [--quick] [--tasks N] [--repeats R] [--loop asyncio|uvloop]
                                       [--out benchmarks/results/NAME.json]

Every task is recorded the way the engine records it: ``accepted()`` (key ``("run", i)``, argv
``["sh", "-c", "echo task i"]``, a run id), ``started()`` (pid, pgid, process start time, log path)
and ``finished()`` (a ``TaskInfo`` with return code and times). No subprocess runs: this measures
the journal alone.

* **size**: the database file after N (default 100,000) finished tasks with retention off (the
  WAL is checkpointed into it at ``close()``), bytes per task, how long ``open()`` takes on it,
  and retention at that size (every outcome marked delivered): a ``prune()`` with nothing due
  (what runs at open and every 1,000 outcomes) and one that deletes 1,000 rows.
* **writer throughput**, in tasks/s and transitions/s, from the first write call until ``flush()``
  returns (so it includes every commit):

  - ``merged``: each task's three transitions land in the same batch (short tasks: the writer
    merges them into one ``INSERT``);
  - ``spread``: each transition lands in a different commit (long tasks: one ``INSERT`` and two
    ``UPDATE`` s per task), pipelined like a busy engine (accept chunk s, start chunk s-1, finish
    chunk s-2, then commit);
  - ``raw-sqlite``: the same final rows inserted with plain ``sqlite3`` ``executemany`` in
    transactions of the same size, synchronously, no asyncio: the floor the writer is measured
    against.

  ``call us`` is the caller's cost: the time spent inside ``accepted()`` + ``started()`` +
  ``finished()`` per task (what the engine's loop pays on its hot path).

Medians of the repeats, min-max beside them. Nothing is asserted. Results go to
``benchmarks/results/journal.json`` (``journal-quick.json`` with ``--quick``).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sqlite3
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

from _harness import Stopwatch, environment, format_table, heading, write_json

from async_executor import TaskInfo, TaskSpec, TaskState
from async_executor._journal import Journal
from async_executor._spawn import proc_start_ticks

RESULTS_DIR = Path(__file__).resolve().parent / "results"
LOG_DIR = "/root/.local/state/async-executor/logs/run-2024-06-01T12-00-00"
RUN = "run-2024-06-01T12-00-00"


def _spec(i: int) -> TaskSpec:
    return TaskSpec(key=("run", i), argv=("sh", "-c", f"echo task {i}"), try_number=1)


def _info(i: int, started: float, key: Any) -> TaskInfo:
    fail = i % 50 == 0
    return TaskInfo(
        key=key,
        state=TaskState.FAILED if fail else TaskState.SUCCESS,
        returncode=1 if fail else 0,
        pid=100_000 + i % 30_000,
        started_at=started,
        ended_at=started + 0.004,
        log_path=f"{LOG_DIR}/run_{i}.1.log",
        reason=None,
        detail=None,
        try_number=1,
    )


class _Driver:
    """Records tasks into a journal from pre-built specs and infos; times the write calls
    themselves (the caller's cost)."""

    def __init__(self, journal: Journal, executor_id: str, tasks: int) -> None:
        self.journal = journal
        self.executor_id = executor_id
        self.calls = 0.0
        self.proc_start = proc_start_ticks(os.getpid())
        now = time.time()
        self.specs = [_spec(i) for i in range(tasks)]
        # the engine's TaskInfo carries the spec's own key object, as here
        self.infos = [_info(i, now, spec.key) for i, spec in enumerate(self.specs)]
        self.logs = [f"{LOG_DIR}/run_{i}.1.log" for i in range(tasks)]

    def accept(self, lo: int, hi: int) -> None:
        journal, eid, now = self.journal, self.executor_id, time.time()
        with Stopwatch() as sw:
            for spec in self.specs[lo:hi]:
                journal.accepted(eid, spec, run=RUN, accepted_at=now)
        self.calls += sw.elapsed

    def start(self, lo: int, hi: int) -> None:
        journal, eid, now, ps, specs, logs = (
            self.journal,
            self.executor_id,
            time.time(),
            self.proc_start,
            self.specs,
            self.logs,
        )
        with Stopwatch() as sw:
            for i in range(lo, hi):
                pid = 100_000 + i % 30_000
                journal.started(
                    eid, specs[i].key, 1, pid=pid, pgid=pid, proc_start=ps, log_path=logs[i], started_at=now
                )
        self.calls += sw.elapsed

    def finish(self, lo: int, hi: int) -> None:
        journal, eid = self.journal, self.executor_id
        with Stopwatch() as sw:
            for info in self.infos[lo:hi]:
                journal.finished(eid, info)
        self.calls += sw.elapsed


async def _merged(driver: _Driver, tasks: int, chunk: int) -> None:
    for lo in range(0, tasks, chunk):
        hi = min(lo + chunk, tasks)
        driver.accept(lo, hi)
        driver.start(lo, hi)
        driver.finish(lo, hi)
        await asyncio.sleep(0)  # let the writer run, as an engine's loop would
    await driver.journal.flush()


async def _spread(driver: _Driver, tasks: int, chunk: int) -> None:
    steps = (tasks + chunk - 1) // chunk
    for step in range(steps + 2):
        if step < steps:
            driver.accept(step * chunk, min((step + 1) * chunk, tasks))
        if 0 <= step - 1 < steps:
            driver.start((step - 1) * chunk, min(step * chunk, tasks))
        if 0 <= step - 2 < steps:
            driver.finish((step - 2) * chunk, min((step - 1) * chunk, tasks))
        await driver.journal.flush()  # one commit per step: no row's transitions share a batch
    await driver.journal.flush()


async def _measure_writer(
    path: str, tasks: int, mode: str, *, keep: bool
) -> tuple[dict[str, Any], dict[str, Any]]:
    journal = Journal(path, keep_seconds=None, keep_tasks=None)
    await journal.open()
    driver = _Driver(journal, uuid.uuid4().hex, tasks)
    await journal.register_executor(
        driver.executor_id, pid=os.getpid(), proc_start=driver.proc_start, supervisor_socket=None
    )
    run = _merged if mode == "merged" else _spread
    try:
        cpu0, loop0 = time.process_time(), time.thread_time()
        with Stopwatch() as sw:
            await run(driver, tasks, 200)
        cpu, loop_cpu = time.process_time() - cpu0, time.thread_time() - loop0
        stats = journal.statistics()
    finally:
        await journal.close()
    result = {
        "wall": sw.elapsed,
        "tasks_per_s": tasks / sw.elapsed,
        "transitions_per_s": 3 * tasks / sw.elapsed,
        "call_us_per_task": driver.calls / tasks * 1e6,
        "cpu_us_per_task": cpu / tasks * 1e6,
        # the event loop's thread only (the caller's calls + the writer's Python side), without
        # SQLite's own work in aiosqlite's thread
        "loop_cpu_us_per_task": loop_cpu / tasks * 1e6,
        "commits": stats["commits"],
        "rows_written": stats["rows_written"],
        "commit_ms_mean": stats["commit_seconds_mean"] * 1000,
        "commit_ms_max": stats["commit_seconds_max"] * 1000,
    }
    if not keep:
        _remove(path)
    return result, stats


def _raw_rows(tasks: int, executor_id: str) -> list[tuple[Any, ...]]:
    now = time.time()
    rows = []
    for i in range(tasks):
        info = _info(i, now, ("run", i))
        pid = 100_000 + i % 30_000
        rows.append(
            (
                executor_id,
                f'["run",{i}]',
                1,
                RUN,
                f'["sh","-c","echo task {i}"]',
                "{}",
                1,
                str(info.state),
                pid,
                pid,
                12345,
                info.log_path,
                now,
                info.started_at,
                info.ended_at,
                info.returncode,
                None,
                None,
                None,
            )
        )
    return rows


async def _measure_raw(path: str, tasks: int) -> dict[str, Any]:
    journal = Journal(path, keep_seconds=None, keep_tasks=None)  # only to create the schema
    await journal.open()
    await journal.close()
    rows = _raw_rows(tasks, uuid.uuid4().hex)
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA journal_mode = WAL")
    db.execute("PRAGMA synchronous = NORMAL")
    sql = (
        "INSERT INTO tasks (executor_id, key_json, try_number, run, argv, options, priority, state, pid, "
        "pgid, proc_start, log_path, accepted_at, started_at, ended_at, returncode, signal, reason, "
        "detail) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
    )
    cpu0 = time.process_time()
    with Stopwatch() as sw:
        for lo in range(0, tasks, 600):
            db.execute("BEGIN IMMEDIATE")
            db.executemany(sql, rows[lo : lo + 600])
            db.execute("COMMIT")
    cpu = time.process_time() - cpu0
    db.close()
    _remove(path)
    return {
        "wall": sw.elapsed,
        "tasks_per_s": tasks / sw.elapsed,
        "transitions_per_s": 3 * tasks / sw.elapsed,
        "cpu_us_per_task": cpu / tasks * 1e6,
    }


async def _measure_size(path: str, tasks: int) -> dict[str, Any]:
    result, _ = await _measure_writer(path, tasks, "merged", keep=True)
    size = os.path.getsize(path)
    wal = path + "-wal"
    wal_size = os.path.getsize(wal) if os.path.exists(wal) else 0
    db = sqlite3.connect(path)
    with db:  # every outcome delivered, as a running executor leaves them: all prunable
        db.execute("UPDATE tasks SET reported = 1")
    db.close()
    reopen = Journal(path, keep_seconds=None, keep_tasks=None)
    with Stopwatch() as sw_open:
        await reopen.open()
    with Stopwatch() as sw_latest:
        latest = await reopen.latest(run=RUN)
    with Stopwatch() as sw_unfinished:
        await reopen.unfinished()
    reopen.keep_tasks = tasks  # retention at the cap: what runs every 1,000 outcomes
    with Stopwatch() as sw_prune_none:
        await reopen.prune()
    reopen.keep_tasks = tasks - 1000
    with Stopwatch() as sw_prune_1000:
        pruned = await reopen.prune()
    assert pruned == 1000, pruned
    await reopen.close()
    db = sqlite3.connect(path)
    with Stopwatch() as sw_check:
        check = db.execute("PRAGMA quick_check").fetchone()[0]
    page_size = db.execute("PRAGMA page_size").fetchone()[0]
    pages = db.execute("PRAGMA page_count").fetchone()[0]
    db.close()
    _remove(path)
    return {
        "tasks": tasks,
        "rows": len(latest),
        "db_bytes": size,
        "wal_bytes_after_close": wal_size,
        "bytes_per_task": (size + wal_size) / tasks,
        "page_size": page_size,
        "pages": pages,
        "open_s": sw_open.elapsed,
        "latest_run_s": sw_latest.elapsed,
        "unfinished_s": sw_unfinished.elapsed,
        "prune_nothing_due_s": sw_prune_none.elapsed,
        "prune_1000_s": sw_prune_1000.elapsed,
        "quick_check_s": sw_check.elapsed,
        "quick_check": check,
        "record_tasks_per_s": result["tasks_per_s"],
    }


SIZE_HEADERS = [
    "tasks",
    "db MB",
    "bytes/task",
    "open() ms",
    "latest(run) ms",
    "quick_check ms",
    "prune ms (none due)",
    "prune 1,000 ms",
]


def _remove(path: str) -> None:
    for suffix in ("", "-wal", "-shm"):
        try:
            os.remove(path + suffix)
        except FileNotFoundError:
            pass


def _run(loop: str, coro: Callable[[], Coroutine[Any, Any, Any]]) -> Any:
    if loop == "uvloop":
        import uvloop

        return uvloop.run(coro())
    return asyncio.run(coro())


def _summary(values: list[float]) -> tuple[float, float, float]:
    return statistics.median(values), min(values), max(values)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    ap.add_argument("--quick", action="store_true", help="1 repeat, 20,000 tasks")
    ap.add_argument("--tasks", type=int, help="tasks per measurement (default 100,000; quick 20,000)")
    ap.add_argument("--repeats", type=int, help="repeats of each throughput mode (default 3; quick 1)")
    ap.add_argument("--loop", choices=("asyncio", "uvloop"), default="asyncio")
    ap.add_argument("--tmpdir", help="where the databases go (default: the system temporary directory)")
    ap.add_argument("--out", help="results JSON (default benchmarks/results/journal[-quick].json)")
    args = ap.parse_args(argv)
    tasks = args.tasks or (20_000 if args.quick else 100_000)
    repeats = args.repeats or (1 if args.quick else 3)
    env = environment()
    env["sqlite"] = sqlite3.sqlite_version
    env["loop"] = args.loop
    print(
        f"journal benchmark: {tasks:,} tasks, {repeats} repeat(s), loop {args.loop}, "
        f"SQLite {sqlite3.sqlite_version}, Python {env['python']}, {env['cpus']} CPUs"
    )

    with tempfile.TemporaryDirectory(prefix="bench-journal-", dir=args.tmpdir) as tmp:
        heading(f"size after {tasks:,} finished tasks (retention off)")
        size = _run(args.loop, lambda: _measure_size(os.path.join(tmp, "size.db"), tasks))
        print(
            format_table(
                SIZE_HEADERS,
                [
                    [
                        f"{tasks:,}",
                        f"{size['db_bytes'] / 1e6:.1f}",
                        f"{size['bytes_per_task']:.0f}",
                        f"{size['open_s'] * 1000:.1f}",
                        f"{size['latest_run_s'] * 1000:.0f}",
                        f"{size['quick_check_s'] * 1000:.0f}",
                        f"{size['prune_nothing_due_s'] * 1000:.1f}",
                        f"{size['prune_1000_s'] * 1000:.1f}",
                    ]
                ],
                right=set(SIZE_HEADERS),
            )
        )

        heading("writer throughput (median of repeats, min-max)")
        modes = ("merged", "spread", "raw-sqlite")
        runs: dict[str, list[dict[str, Any]]] = {m: [] for m in modes}
        for repeat in range(repeats):
            for mode in modes:  # interleaved, so drift spreads over all modes
                path = os.path.join(tmp, f"{mode}-{repeat}.db")
                if mode == "raw-sqlite":
                    result = _run(args.loop, lambda p=path: _measure_raw(p, tasks))
                else:
                    result, _ = _run(
                        args.loop, lambda p=path, m=mode: _measure_writer(p, tasks, m, keep=False)
                    )
                runs[mode].append(result)
        rows = []
        medians: dict[str, dict[str, float]] = {}
        for mode in modes:
            rates = [r["tasks_per_s"] for r in runs[mode]]
            med, lo, hi = _summary(rates)
            walls = [r["wall"] for r in runs[mode]]
            medians[mode] = {"tasks_per_s": med, "wall": statistics.median(walls)}
            calls = [r["call_us_per_task"] for r in runs[mode] if "call_us_per_task" in r]
            cpus = [r["cpu_us_per_task"] for r in runs[mode]]
            medians[mode]["cpu_us_per_task"] = statistics.median(cpus)
            loop_cpus = [r["loop_cpu_us_per_task"] for r in runs[mode] if "loop_cpu_us_per_task" in r]
            if loop_cpus:
                medians[mode]["loop_cpu_us_per_task"] = statistics.median(loop_cpus)
            commits = [r["commits"] for r in runs[mode] if "commits" in r]
            commit_ms = [r["commit_ms_mean"] for r in runs[mode] if "commit_ms_mean" in r]
            rows.append(
                [
                    mode,
                    f"{statistics.median(walls):.2f}",
                    f"{med:,.0f}",
                    f"{lo:,.0f}-{hi:,.0f}",
                    f"{3 * med:,.0f}",
                    f"{statistics.median(cpus):.1f}",
                    f"{statistics.median(loop_cpus):.1f}" if loop_cpus else "-",
                    f"{statistics.median(calls):.1f}" if calls else "-",
                    f"{statistics.median(commits):.0f}" if commits else "-",
                    f"{statistics.median(commit_ms):.2f}" if commit_ms else "-",
                ]
            )
        headers = [
            "mode",
            "wall s",
            "tasks/s",
            "min-max",
            "transitions/s",
            "cpu us/task",
            "loop-thread us",
            "call us",
            "commits",
            "commit ms",
        ]
        print(format_table(headers, rows, right=set(headers[1:])))
        raw = medians["raw-sqlite"]["tasks_per_s"]
        ratios = {f"{m} / raw-sqlite": medians[m]["tasks_per_s"] / raw for m in ("merged", "spread")}
        print()
        for name, value in ratios.items():
            print(f"{name} = {value:.2f}")
        spawn_rate = 2000.0  # DESIGN.md section 5: asyncio + pidfd at parallelism 64, ~2,000-2,200/s
        for mode in ("merged", "spread"):
            share = medians[mode]["cpu_us_per_task"] * spawn_rate / 1e6
            loop_share = medians[mode]["loop_cpu_us_per_task"] * spawn_rate / 1e6
            print(
                f"{mode}: at {spawn_rate:,.0f} tasks/s the journal would use {share:.1%} of one CPU in all, "
                f"{loop_share:.1%} of the event loop's thread (capacity "
                f"{medians[mode]['tasks_per_s'] / spawn_rate:.0f}x that rate)"
            )

    env["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
    out = write_json(
        args.out or RESULTS_DIR / ("journal-quick.json" if args.quick else "journal.json"),
        {
            "environment": env,
            "tasks": tasks,
            "repeats": repeats,
            "size": size,
            "writer": {m: runs[m] for m in modes},
            "medians": medians,
            "ratios": ratios,
        },
    )
    print(f"\nresults: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
