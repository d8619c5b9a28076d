"""What the user sees: task output groups, a live progress display or plain lines, a summary."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterable, Iterator
from typing import IO, TYPE_CHECKING, Any

import attrs

from .._records import TaskInfo

if TYPE_CHECKING:
    from rich.console import Console, RenderableType
    from rich.live import Live

    from .jobs import Job

PROG = "async-executor"
CHUNK = 1 << 16


@attrs.define
class Counters:
    total: int = 0
    succeeded: int = 0
    failed: int = 0
    skipped: int = 0
    retried: int = 0
    started_at: float = attrs.field(factory=time.monotonic)
    #: Jobs with a task in flight (or waiting to retry), by seq.
    running: dict[int, Job] = attrs.field(factory=dict)
    stopping: str | None = None
    #: Lines are still being read (streamed input): ``total`` will grow.
    input_open: bool = False

    @property
    def finished(self) -> int:
        return self.succeeded + self.failed

    @property
    def queued(self) -> int:
        return max(0, self.total - self.finished - len(self.running))

    def rate(self) -> float:
        elapsed = time.monotonic() - self.started_at
        return self.finished / elapsed if elapsed > 0 else 0.0

    def eta(self) -> float | None:
        if self.input_open:  # the total is not known yet
            return None
        rate = self.rate()
        left = self.total - self.finished
        return left / rate if rate > 0 and left > 0 else None


def describe(info: TaskInfo) -> str:
    """``exit 3`` / ``killed by signal 9`` / ``timed out after 2s`` / ``could not start ...``."""
    if info.reason is not None:
        return info.detail or str(info.reason)
    if info.signal:
        return f"killed by signal {info.signal}"
    return f"exit {info.returncode}"


def _fmt_seconds(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = int(seconds + 0.5)
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}"


def _chunks(path: str | None) -> Iterator[bytes]:
    if not path:
        return
    try:
        with open(path, "rb") as handle:
            while chunk := handle.read(CHUNK):
                yield chunk
    except OSError:
        return


def _tagged(chunks: Iterable[bytes], tag: bytes | None) -> Iterator[bytes]:
    """``chunks`` with ``tag`` before each line (a last line without a newline too), as
    GNU parallel's ``--tag`` does; unchanged when ``tag`` is ``None``."""
    if tag is None:
        yield from chunks
        return
    at_start = True
    for chunk in chunks:
        lines = chunk.split(b"\n")
        # each piece after a newline starts a line; an empty last piece is not a line yet
        out = [tag + lines[0] if at_start else lines[0]]
        out.extend(tag + line for line in lines[1:-1])
        if len(lines) > 1:
            out.append(tag + lines[-1] if lines[-1] else b"")
        at_start = chunk.endswith(b"\n")
        yield b"\n".join(out)


class PlainDisplay:
    """Output groups on stdout as raw bytes; notes and the summary as plain lines on stderr."""

    live = False

    def __init__(self, counters: Counters, *, quiet: bool) -> None:
        self.counters = counters
        self.quiet = quiet
        self.out: IO[bytes] = sys.stdout.buffer
        self.err: IO[str] = sys.stderr

    def __enter__(self) -> PlainDisplay:
        return self

    def __exit__(self, *exc: object) -> None:
        self.flush()

    def flush(self) -> None:
        try:
            self.out.flush()
        except BrokenPipeError:
            self._stdout_gone()

    def _stdout_gone(self) -> None:
        """The reader of our stdout went away (``| head``): keep running, drop the output."""
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
        self.out = open(os.devnull, "wb")  # noqa: SIM115 - lives as long as the display

    def output(
        self, stdout_path: str | None, stderr_path: str | None = None, tag: bytes | None = None
    ) -> None:
        """Copy one task's captured output, whole, in one go (``tag`` before each line)."""
        for chunk in _tagged(_chunks(stdout_path), tag):
            self.write(chunk, False)
        if stderr_path:
            for chunk in _tagged(_chunks(stderr_path), tag):
                self.write(chunk, True)
            self.err.flush()

    def write(self, data: bytes, to_stderr: bool) -> None:
        """Task output as raw bytes: to stdout, or (a ``--results`` stderr) to stderr."""
        if not to_stderr:
            try:
                self.out.write(data)
            except BrokenPipeError:
                self._stdout_gone()
            return
        self.flush()
        self.err.buffer.write(data) if hasattr(self.err, "buffer") else self.err.write(data.decode())

    def note(self, message: str, *, always: bool = False) -> None:
        if self.quiet and not always:
            return
        self.flush()
        print(f"{PROG}: {message}", file=self.err, flush=True)

    def trace(self, command: str) -> None:
        """``-t``: a job's command on stderr as it starts (``-q`` does not hide it)."""
        self.flush()
        print(command, file=self.err, flush=True)

    def failed(self, job: Job, info: TaskInfo, *, will_retry: bool) -> None:
        again = " (will retry)" if will_retry else ""
        self.note(f"line {job.line} failed ({describe(info)}){again}: {job.text}")

    def stopping(self, message: str) -> None:
        running = sorted(self.counters.running.values(), key=lambda j: j.seq)
        shown = ", ".join(f"line {j.line}" for j in running[:10]) + (" ..." if len(running) > 10 else "")
        self.note(f"{message}; {len(running)} still running{': ' + shown if running else ''}", always=True)

    def summary(self, failures: list[tuple[Job, TaskInfo]], elapsed: float, exit_code: int) -> None:
        c = self.counters
        skipped = f", {c.skipped} skipped (already done)" if c.skipped else ""
        not_run = c.total - c.finished
        unstarted = f", {not_run} not run" if not_run > 0 else ""
        self.note(
            f"{c.finished} tasks in {elapsed:.2f}s: {c.succeeded} succeeded, {c.failed} failed"
            f"{unstarted}{skipped}; exit code {exit_code}"
        )


class _Progress:
    """The live part of the screen, re-rendered from the counters at every refresh."""

    def __init__(self, counters: Counters, run: str) -> None:
        self.counters = counters
        self.run = run

    def __rich__(self) -> RenderableType:
        from rich.console import Group
        from rich.progress_bar import ProgressBar
        from rich.text import Text

        c = self.counters
        line = Text()
        line.append(f"{self.run}  ", style="bold")
        line.append(f"done {c.succeeded}", style="green")
        line.append("  ")
        line.append(f"failed {c.failed}", style="red" if c.failed else "")
        line.append(f"  running {len(c.running)}  queued {c.queued}", style="")
        line.append(f"  {c.rate():.1f}/s  ETA {_fmt_seconds(c.eta())}")
        if c.input_open:
            line.append("  reading input", style="dim")
        if c.skipped:
            line.append(f"  skipped {c.skipped}", style="dim")
        parts: list[RenderableType] = [
            line,
            ProgressBar(total=max(1, c.total), completed=c.finished, width=40),
        ]
        if c.stopping:
            parts.append(Text(c.stopping, style="yellow"))
            running = sorted(c.running.values(), key=lambda j: j.seq)
            for job in running[:8]:
                parts.append(Text(f"  still running: line {job.line}: {job.text}"[:160], style="yellow"))
            if len(running) > 8:
                parts.append(Text(f"  ... and {len(running) - 8} more", style="yellow"))
        return Group(*parts)


class LiveDisplay:
    """A rich live display on the terminal; task output is printed above it.

    ``on_stderr`` (``--bar`` with stdout not a terminal): the display, notes and summary go to
    stderr, and the tasks' output to stdout as raw bytes, as with :class:`PlainDisplay`.
    """

    live = True

    def __init__(self, counters: Counters, *, run: str, on_stderr: bool = False) -> None:
        from rich.console import Console
        from rich.live import Live

        self.counters = counters
        self.console: Console = Console(highlight=False, stderr=on_stderr)
        #: The tasks' output, when it does not go through the display's console.
        self._raw = PlainDisplay(counters, quiet=True) if on_stderr else None
        self._live: Live = Live(
            _Progress(counters, run),
            console=self.console,
            refresh_per_second=8,
            transient=False,
            redirect_stdout=False,
            redirect_stderr=False,
        )

    def __enter__(self) -> LiveDisplay:
        self._live.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._live.is_started:
            self._live.refresh()
            self._live.stop()

    def flush(self) -> None:
        if self._raw is not None:
            self._raw.flush()

    def output(
        self, stdout_path: str | None, stderr_path: str | None = None, tag: bytes | None = None
    ) -> None:
        for path, to_stderr in ((stdout_path, False), (stderr_path, True)):
            data = b"".join(_tagged(_chunks(path), tag))
            if data:
                self.write(data, to_stderr)

    def write(self, data: bytes, to_stderr: bool) -> None:
        """Task output: above the display, or raw to stdout when the display is on stderr."""
        if self._raw is not None and not to_stderr:
            self._raw.write(data, False)
            self._raw.flush()
        else:
            self.console.out(data.decode("utf-8", "replace"), end="", highlight=False)

    def note(self, message: str, *, always: bool = False) -> None:
        from rich.text import Text

        self.console.print(Text(message, style="dim"))

    def trace(self, command: str) -> None:
        from rich.text import Text

        self.console.print(Text(command))

    def failed(self, job: Job, info: TaskInfo, *, will_retry: bool) -> None:
        from rich.text import Text

        again = " (will retry)" if will_retry else ""
        self.console.print(Text(f"line {job.line} failed ({describe(info)}){again}: {job.text}", style="red"))

    def stopping(self, message: str) -> None:
        self.counters.stopping = message
        self._live.refresh()

    def summary(self, failures: list[tuple[Job, TaskInfo]], elapsed: float, exit_code: int) -> None:
        from rich.table import Table

        c = self.counters
        self._live.refresh()
        table = Table()
        table.add_column("outcome")
        table.add_column("tasks", justify="right")
        table.add_row("succeeded", str(c.succeeded), style="green")
        table.add_row("failed", str(c.failed), style="red" if c.failed else None)
        if c.total - c.finished > 0:
            table.add_row("not run", str(c.total - c.finished), style="yellow")
        if c.skipped:
            table.add_row("skipped (already done)", str(c.skipped), style="dim")
        if c.retried:
            table.add_row("retries", str(c.retried))
        self._live.stop()
        self.console.print(f"{c.total} tasks in {elapsed:.2f}s ({c.rate():.1f}/s), exit code {exit_code}")
        self.console.print(table)
        if failures:
            failed = Table(title="failed tasks")
            for column in ("line", "key", "outcome", "command"):
                failed.add_column(column)
            for job, info in sorted(failures, key=lambda f: f[0].seq)[:20]:
                failed.add_row(str(job.line), str(info.key), describe(info), job.text)
            if len(failures) > 20:
                failed.caption = f"... and {len(failures) - 20} more (async-executor status RUN)"
            self.console.print(failed)


def make_display(
    counters: Counters, *, quiet: bool, run: str, bar: bool = False
) -> PlainDisplay | LiveDisplay:
    """The live display when stdout is a terminal; with ``bar`` (``--bar``), on stderr when
    stdout is not one (GNU parallel's ``--bar``: ``run --bar ... > out``); else plain lines."""
    if quiet:
        return PlainDisplay(counters, quiet=True)
    if sys.stdout.isatty() and os.environ.get("TERM") != "dumb":
        return LiveDisplay(counters, run=run)
    if bar:
        return LiveDisplay(counters, run=run, on_stderr=True)
    return PlainDisplay(counters, quiet=quiet)


def stdout_console() -> Any:
    from rich.console import Console

    return Console(highlight=False)
