"""``async-executor status`` and ``async-executor logs``: read the journal back."""

from __future__ import annotations

import shlex
import sys
import time
from collections.abc import Sequence
from typing import BinaryIO

import anyio

from .. import _logs
from .._journal import same_process
from .state import JournalRow, State, make_log_dir

_CHUNK = 1 << 16
#: ``logs --follow``: seconds between two looks at the task's log and row.
FOLLOW_INTERVAL = 0.25


def _when(ts: float | None) -> str:
    return "-" if ts is None else time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts))


def _secs(start: float | None, end: float | None) -> str:
    return "-" if start is None or end is None else f"{end - start:.3f}"


def _outcome(row: JournalRow) -> str:
    if row.state in ("queued", "running"):
        return ""
    if row.reason:
        return f"{row.reason}: {row.detail}" if row.detail else str(row.reason)
    if row.signal:
        return f"signal {row.signal}"
    if row.returncode is None:  # no exit status was recorded (e.g. its CLI was killed)
        return row.detail or "exit status unknown"
    return f"exit {row.returncode}"


def _print_table(title: str, columns: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    """A rich table on a terminal; tab-separated lines (with a header) otherwise."""
    if sys.stdout.isatty():
        from rich.console import Console
        from rich.table import Table

        table = Table(title=title)
        for column in columns:
            table.add_column(column, overflow="fold")
        for row in rows:
            table.add_row(*row)
        Console().print(table)
        return
    print("\t".join(columns))
    for row in rows:
        print("\t".join(cell.replace("\t", " ").replace("\n", " ") for cell in row))


async def _open(path: str) -> State | None:
    if not await anyio.Path(path).exists():
        print(f"async-executor: no journal at {path} (nothing has run yet?)", file=sys.stderr)
        return None
    state = State(path)
    await state.open()
    return state


async def show_status(path: str, run: str | None) -> int:
    state = await _open(path)
    if state is None:
        return 1
    try:
        if run is None:
            runs = await state.runs()
            run_rows = [
                (
                    str(r.run),
                    str(r.tasks),
                    str(r.succeeded),
                    str(r.failed),
                    str(r.running),
                    str(r.queued),
                    _when(r.first_accepted_at),
                    _secs(r.first_accepted_at, r.last_ended_at),
                )
                for r in runs
            ]
            cols = ("run", "tasks", "succeeded", "failed", "running", "queued", "started", "seconds")
            _print_table(f"runs in {path}", cols, run_rows)
            return 0
        latest = await state.latest(run)
        if not latest:
            print(f"async-executor: no run named {run!r} in {path}", file=sys.stderr)
            return 1

        def order(row: JournalRow) -> tuple[int, str]:
            parts = str(row.key).rsplit(":", 2)
            return (int(parts[1]) if len(parts) == 3 and parts[1].isdigit() else 0, str(row.key))

        rows = [
            (
                str(row.key),
                row.state,
                str(row.try_number),
                _outcome(row),
                _secs(row.started_at, row.ended_at),
                shlex.join(row.argv or ()),
            )
            for row in sorted(latest.values(), key=order)
        ]
        counts: dict[str, int] = {}
        for row in latest.values():
            counts[row.state] = counts.get(row.state, 0) + 1
        title = f"run {run}: " + ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
        _print_table(title, ("key", "state", "try", "outcome", "seconds", "command"), rows)
        return 0
    finally:
        await state.close()


async def show_logs(
    path: str, key: str, run: str | None, try_number: int | None, follow: bool = False
) -> int:
    state = await _open(path)
    if state is None:
        return 1
    try:
        row = await _find(state, key, run, try_number)
        if row is not None and follow:
            return await _follow(state, row, make_log_dir(path))
    finally:
        await state.close()
    if row is None:
        where = f" in run {run!r}" if run else ""
        print(f"async-executor: no task {key!r}{where} in {path}", file=sys.stderr)
        return 1
    log_path = row.log_path
    if not log_path and row.pid is not None:
        # The CLI creates a task's log file only once the task wrote something (lazy logs, see _memlogs.py):
        # still running, it may have one already; ended without one, it wrote nothing.
        log_path = _logs.log_path(make_log_dir(path), row.key, row.try_number)
        if not await anyio.Path(log_path).exists():
            return 0
    if not log_path:
        print(f"async-executor: task {row.key} try {row.try_number} has no captured output", file=sys.stderr)
        return 1
    try:
        async with await anyio.open_file(log_path, "rb") as handle:
            out = sys.stdout.buffer
            while chunk := await handle.read(_CHUNK):
                out.write(chunk)
            out.flush()
    except FileNotFoundError:
        print(f"async-executor: the log {log_path} is gone", file=sys.stderr)
        return 1
    return 0


async def _follow(state: State, row: JournalRow, log_dir: str) -> int:
    """``logs --follow``: print the try's output as it is written, until the try has ended (its
    row is finished, or the process that ran it is gone), as ``tail -f`` would, then the rest.

    The CLI's lazy logs reach the file every 0.5 s while a task runs (see ``_memlogs``), so the
    output follows the task with up to a second of delay.
    """
    out = sys.stdout.buffer
    offset = 0
    while True:
        ended = row.finished or not await _owner_alive(state, row)
        # The log's name: recorded, or (the CLI's lazy logs, named once the task writes) the
        # CLI's own for this key and try.
        path = row.log_path or _logs.log_path(log_dir, row.key, row.try_number)
        offset = _print_from(path, offset, out)
        if ended:
            return 0
        await anyio.sleep(FOLLOW_INTERVAL)
        row = await state.row(str(row.key), row.try_number) or row


async def _owner_alive(state: State, row: JournalRow) -> bool:
    """Whether the process that runs ``row``'s task (a CLI or an executor) is still alive."""
    for entry in await state.journal.executors():
        if entry["executor_id"] == row.executor_id:
            return same_process(entry["pid"], entry["proc_start"])
    return False


def _print_from(path: str, offset: int, out: BinaryIO) -> int:
    """Copy what ``path`` holds past ``offset`` to ``out``; the new offset."""
    while True:
        data, offset = _logs.read_new(path, offset)
        if not data:
            break
        out.write(data)
    out.flush()
    return offset


async def _find(state: State, key: str, run: str | None, try_number: int | None) -> JournalRow | None:
    row = await state.row(key, try_number)
    if row is not None or run is None:
        return row
    # LINE or LINE:HASH within --run
    for candidate in (await state.latest(run)).values():
        parts = str(candidate.key).split(":")
        if parts[-2:] == key.split(":")[-2:] or (":" not in key and parts[-2:-1] == [key]):
            return await state.row(candidate.key, try_number)
    return None
