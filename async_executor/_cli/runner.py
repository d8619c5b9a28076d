"""``async-executor run``: feed job lines to one ``AsyncExecutor`` (async API) and report them."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import gc
import heapq
import os
import shutil
import signal
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import attrs

from .. import _logs
from .._aio import shielded
from .._exceptions import ExecutorClosedError
from .._executor import AsyncExecutor, TaskHandle
from .._limits import RESERVED_FDS, open_fd_count, raise_nofile_limit
from .._memlogs import AVAILABLE as LAZY_LOGS
from .._records import FailureReason, TaskInfo, TaskSpec, TaskState
from .display import Counters, LiveDisplay, PlainDisplay, make_display
from .halt import NEVER, HaltPolicy
from .joblog import JobLog, exit_value
from .jobs import SLOT_MARK, SLOT_TEXT, Job, JobFileError, JobParser
from .linebuffer import POLL_INTERVAL, LineBuffer
from .load import current_load
from .memory import available_memory
from .orphans import RESCAN_INTERVAL, Leftovers, task_env
from .pipe import PipeJobs
from .state import JournalRow, State
from .stream import LineSplitter, StreamReader
from .template import DEFAULT_REPLACEMENTS, Replacements, tag_text
from .timeouts import DynamicTimeouts

# Exit codes (documented in ``async-executor run --help`` and the README).
EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_HALTED = 3
EXIT_ERROR = 255

#: Longest wait between two tries of a failing line.
MAX_BACKOFF = 60.0
#: Descriptors the CLI keeps for itself (journal, joblog, output files) on top of the engine's.
CLI_FDS = 32
#: Streamed input: stop reading when this many lines wait to start; read again below half.
BACKLOG = 10_000
#: ``--memfree`` / ``--load``: seconds between looks at the machine while a start waits.
RESOURCE_RECHECK = 0.5

_STDERR_WRAPPER = 'exec 2>"$0"; exec "$@"'
#: ``--pipe``: the task's standard input is its block's file (``$0``); the command is ``$@``.
_STDIN_WRAPPER = 'exec <"$0"; exec "$@"'


@attrs.frozen(kw_only=True)
class RunConfig:
    jobs: Sequence[Job]
    run: str
    parallelism: int
    timeout: float | None = None
    #: ``--timeout N%``: stop a try that runs longer than N% of the median success runtime.
    timeout_percent: float | None = None
    retries: int = 0
    backoff: float = 0.5
    #: ``--delay``: seconds between the starts of two tasks (retries included).
    delay: float = 0.0
    #: ``--memfree``: bytes of available memory a task needs to start (0: no check).
    memfree: int = 0
    #: ``--load``: a task starts only while fewer processes than this run or wait for a disk.
    max_load: float | None = None
    #: ``--nice``: the niceness tasks run at (through ``nice -n``), or ``None``.
    nice: int | None = None
    halt: HaltPolicy = NEVER
    joblog: str | None = None
    results: str | None = None
    keep_order: bool = False
    #: Put each job's values (or line) and a tab before each line of its output.
    tag: bool = False
    #: ``--tagstring``: the tag instead, with replacement strings (implies ``tag``).
    tagstring: str | None = None
    #: The replacement strings ``tagstring`` is filled with (``-I`` and the like change them).
    strings: Replacements = DEFAULT_REPLACEMENTS
    #: ``--line-buffer``: print each task's complete lines as it writes them (not whole at its end).
    line_buffer: bool = False
    #: ``--ungroup``: print each task's output as it writes it, half lines too.
    ungroup: bool = False
    #: Show the live display on stderr when stdout is not a terminal (GNU parallel's ``--bar``).
    bar: bool = False
    #: ``-t``: print each job's command on stderr as it starts.
    trace: bool = False
    quiet: bool = False
    #: "all", "resume" (skip what succeeded) or "retry-failed" (only what failed)
    mode: str = "all"
    state_path: str
    log_dir: str
    kill_grace: float = 5.0
    #: Read the job lines from this descriptor while the run goes on (``jobs`` is then empty),
    #: starting each line as it arrives; ``parser`` numbers and splits them.
    stream_fd: int | None = None
    parser: JobParser | PipeJobs | None = None


def max_parallelism() -> int:
    """``-j 0``: as many tasks as the descriptor and process limits allow."""
    budget = raise_nofile_limit() - open_fd_count() - RESERVED_FDS - CLI_FDS
    if LAZY_LOGS:
        budget //= 2  # a pidfd and a memory file per task
    try:
        import resource

        soft, _ = resource.getrlimit(resource.RLIMIT_NPROC)
        if soft != resource.RLIM_INFINITY:
            uid = os.getuid()
            mine = 0
            for entry in os.listdir("/proc"):
                if entry.isdigit():
                    with contextlib.suppress(OSError):
                        mine += os.stat(f"/proc/{entry}").st_uid == uid
            budget = min(budget, soft - mine - 16)
    except (ImportError, OSError):  # pragma: no cover - non-Linux
        pass
    return max(1, budget)


def select_jobs(
    jobs: Sequence[Job], latest: dict[str, JournalRow], run: str, mode: str
) -> tuple[list[Job], int]:
    """Which lines to run again: those not yet succeeded (resume) or those that failed.

    A line is found in the journal by its key (line number + hash). A line whose key is not
    there (the file was edited above it) is matched by its text hash to a journal entry of
    the same run that no current line claims, so moved lines are not run again.
    """
    keys = {job.key(run) for job in jobs}
    orphans: dict[str, list[JournalRow]] = {}
    for key, entry in latest.items():
        if key not in keys:
            orphans.setdefault(key.rsplit(":", 1)[-1], []).append(entry)
    todo: list[Job] = []
    skipped = 0
    for job in jobs:
        row: JournalRow | None = latest.get(job.key(run))
        if row is None and orphans.get(job.digest):
            row = orphans[job.digest].pop(0)
        if mode == "resume":
            run_it = row is None or row.state != "success"
        else:  # retry-failed: only lines that ran and did not succeed
            run_it = row is not None and row.state != "success"
        if run_it:
            todo.append(job)
        else:
            skipped += 1
    return todo, skipped


class Runner:
    def __init__(
        self,
        cfg: RunConfig,
        state: State,
        display: PlainDisplay | LiveDisplay,
        counters: Counters,
        leftovers: Leftovers | None = None,
    ):
        self.cfg = cfg
        self.state = state
        #: Tasks of killed CLI processes still running: their lines wait for them in ``_held``.
        self.leftovers = leftovers
        self._held: dict[str, Job] = {}
        self._rescan: asyncio.TimerHandle | None = None
        self.display = display
        self.counters = counters
        self.tries: dict[str, int] = {}
        self.failures: list[tuple[Job, TaskInfo]] = []
        self.stop_starting = False
        self.halted: HaltPolicy | None = None
        self.signals: list[int] = []
        self.ex: AsyncExecutor | None = None
        self.joblog: JobLog | None = None
        self._terminating: asyncio.Task[None] | None = None
        #: Tries submitted and not ended yet.
        self._in_flight = 0
        #: Tries made of each line, by seq.
        self._attempts: dict[int, int] = {}
        #: ``{%}``: how many slots were ever given, and those given back (a heap: lowest first).
        self._slots_made = 0
        self._free_slots: list[int] = []
        #: Lines waiting out their backoff before the next try (with their last failure), by seq.
        self._backoff: dict[int, tuple[Job, TaskInfo, asyncio.TimerHandle]] = {}
        #: Lines whose backoff is over, to try again as soon as there is room.
        self._due: collections.deque[tuple[Job, TaskInfo]] = collections.deque()
        self._wakeup: asyncio.Future[None] | None = None
        #: ``--delay``: the loop time before which no task starts.
        self._next_start = 0.0
        #: Wakes the loop when a start held back by ``--delay``, ``--memfree`` or ``--load`` may go.
        self._hold_timer: asyncio.TimerHandle | None = None
        #: ``--memfree`` / ``--load``: what starts wait for now ("memory", "load"; noted once).
        self._waiting_for: str | None = None
        self._error: BaseException | None = None
        self._order: dict[int, int] = {}
        self._ready: dict[int, tuple[str | None, str | None, bytes | None]] = {}
        self._next = 0
        #: ``--tag``: each running job's tag (``--tagstring`` may hold its slot), by seq.
        self._tags: dict[int, bytes] = {}
        self._tag_slotted = cfg.tagstring is not None and cfg.strings.uses_slot(cfg.tagstring)
        #: ``--line-buffer``: follows the running tasks' log files (polled by ``_poll_timer``).
        self._lines: LineBuffer | None = (
            LineBuffer(self.display.write, keep_order=cfg.keep_order, whole_lines=not cfg.ungroup)
            if cfg.line_buffer or cfg.ungroup
            else None
        )
        self._poll_timer: asyncio.TimerHandle | None = None
        #: ``--timeout N%``: the running tries, watched against the median success runtime.
        self._timeouts: DynamicTimeouts[TaskHandle] | None = (
            DynamicTimeouts(cfg.timeout_percent, _time_out) if cfg.timeout_percent is not None else None
        )
        #: Lines not tried yet, in input order.
        self._fresh: collections.deque[Job] = collections.deque()
        #: Streamed input: the reader (``counters.input_open``: more lines may still come).
        self._reader: StreamReader | None = None
        self._splitter = LineSplitter()
        #: ``--pipe``: the blocks' jobs (their files are removed as they end, the spool at the end).
        self._pipe = cfg.parser if isinstance(cfg.parser, PipeJobs) else None
        #: Streamed lines (or ``--pipe`` blocks) waiting for a slot before reading pauses.
        self._backlog = self._pipe.backlog if self._pipe is not None else BACKLOG
        #: Why the streamed input was rejected (a line that cannot be split, a read error).
        self.input_error: str | None = None

    # ------------------------------------------------------------------ the run

    async def go(self, todo: list[Job], last_tries: dict[str, int]) -> int:
        cfg = self.cfg
        self.tries = dict(last_tries)
        self._order = {job.seq: index for index, job in enumerate(todo)}
        self._fresh.extend(todo)
        if cfg.joblog:
            self.joblog = JobLog(cfg.joblog, append=cfg.mode != "all")
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            loop.add_signal_handler(signum, self._on_signal, signum)
        streaming = cfg.stream_fd is not None
        limit = cfg.parallelism if streaming else max(1, min(cfg.parallelism, len(todo) or 1))
        started = time.monotonic()
        try:
            async with AsyncExecutor(
                parallelism=limit,
                log_dir=cfg.log_dir,
                # log files only for tasks that write something (see _memlogs.py), unless
                # --line-buffer follows the files as the tasks write them
                lazy_logs=self._lines is None,
                kill_grace=cfg.kill_grace,
                **self.state.executor_options(),
            ) as ex:
                self.ex = ex
                if cfg.stream_fd is not None:
                    self._start_reading(cfg.stream_fd, loop)
                await self._drive(limit)
                if self._terminating is not None:
                    await self._terminating
        finally:
            for timer in (self._hold_timer, self._poll_timer):
                if timer is not None:
                    timer.cancel()
            if self._timeouts is not None:
                self._timeouts.close()
            for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
                loop.remove_signal_handler(signum)
            self._stop_reading()
            if self._pipe is not None:
                self._pipe.close()
            try:
                await shielded(self.state.flush())
            finally:
                self._flush_outputs(final=True)
                if self.joblog is not None:
                    self.joblog.close()
        code = self.exit_code()
        self.display.summary(self.failures, time.monotonic() - started, code)
        return code

    def exit_code(self) -> int:
        if self.signals:
            return 128 + self.signals[0]
        if self.input_error is not None:
            return EXIT_USAGE
        if self.halted is not None and self.halted.what != "success":
            return EXIT_HALTED
        return EXIT_FAILED if self.counters.failed else EXIT_OK

    # ------------------------------------------------------------------ the lines

    async def _drive(self, limit: int) -> None:
        """Keep ``limit`` tasks in flight: new lines in order, and retries once their backoff is over.

        One coroutine submits; each task's outcome is handled by a callback on its handle (no
        coroutine, task or semaphore per line; measured before lazy logs: no speed change on 2
        cores, where the CLI's own CPU was then mostly the kernel's, creating log files).
        """
        loop = asyncio.get_running_loop()
        fresh = self._fresh
        delay = self.cfg.delay
        held = bool(delay or self.cfg.memfree or self.cfg.max_load)
        while True:
            while self._in_flight < limit:
                if held and self._held_back(loop):
                    break
                if self._due and not self.stop_starting:
                    job = self._due.popleft()[0]
                elif fresh and not self.stop_starting:
                    job = fresh.popleft()
                    if self.leftovers is not None and self._hold(job):
                        continue
                    self.counters.running[job.seq] = job
                else:
                    break
                if not await self._attempt(job):
                    self.counters.running.pop(job.seq, None)
                elif delay:
                    self._next_start = loop.time() + delay
            if self._reader is not None and len(fresh) <= self._backlog // 2:
                self._reader.resume()
            if self._error is not None:
                raise self._error
            more = fresh or self._held or self.counters.input_open
            if not (self._in_flight or self._backoff or self._due or (more and not self.stop_starting)):
                return
            self._wakeup = loop.create_future()
            try:
                await self._wakeup
            finally:
                self._wakeup = None

    # ------------------------------------------------------------------ lines a killed CLI left running

    def _hold(self, job: Job) -> bool:
        """Keep ``job`` back while a task of its key that a killed CLI left still runs."""
        leftovers = self.leftovers
        assert leftovers is not None
        key = job.key(self.cfg.run)
        if not leftovers.holds(key):
            return False
        pids = ", ".join(str(pid) for pid in sorted(leftovers.running[key]))
        self.display.note(
            f"line {job.line} still runs from an async-executor that was killed (pid {pids}):"
            " it runs again when that has ended",
            always=True,
        )
        self._held[key] = job
        if self._rescan is None:
            self._rescan = asyncio.get_running_loop().call_later(RESCAN_INTERVAL, self._look_again)
        return True

    def _look_again(self) -> None:
        """Release the held lines whose earlier tasks have all exited; their rows become lost."""
        self._rescan = None
        leftovers = self.leftovers
        assert leftovers is not None
        try:
            leftovers.refresh()
            for info in leftovers.settled():
                self.state.finished(info)
            released = [key for key in self._held if not leftovers.holds(key)]
            for key in reversed(released):
                job = self._held.pop(key)
                self._fresh.appendleft(job)
            if self._held and not self.stop_starting:
                self._rescan = asyncio.get_running_loop().call_later(RESCAN_INTERVAL, self._look_again)
        except BaseException as exc:  # a bug: stop the run loudly
            self._error = exc
        finally:
            self._wake()

    def _drop_held(self) -> None:
        if self._rescan is not None:
            self._rescan.cancel()
            self._rescan = None
        self._held.clear()

    # ------------------------------------------------------------------ streamed input

    def _start_reading(self, fd: int, loop: asyncio.AbstractEventLoop) -> None:
        self.counters.input_open = True
        self._reader = StreamReader(fd, loop, self._on_input)
        self._reader.start()

    def _stop_reading(self) -> None:
        if self._reader is not None:
            self._reader.close()
        self.counters.input_open = False

    def _on_input(self, chunk: bytes, error: OSError | None) -> None:
        """A chunk of streamed input (``b""``: its end): start its lines (a callback on the loop)."""
        parser = self.cfg.parser
        assert parser is not None
        assert self._reader is not None
        try:
            for job in self._jobs_in(parser, chunk):
                self._order[job.seq] = job.seq - 1
                self._fresh.append(job)
                self.counters.total += 1
            if error is not None:
                reason = error.strerror or error
                raise JobFileError(f"cannot read {parser.source} after line {parser.lines}: {reason}")
        except JobFileError as exc:
            # Like an early end of input: the lines before it run, it and the lines after it do not.
            self.input_error = str(exc)
            self._stop_reading()
            self.display.note(f"{exc}; it and the lines after it are not run", always=True)
        except BaseException as exc:  # a bug: stop the run loudly
            self._error = exc
        else:
            if not chunk:
                self._stop_reading()
            elif len(self._fresh) >= self._backlog:
                self._reader.pause()
        finally:
            self._wake()

    def _jobs_in(self, parser: JobParser | PipeJobs, chunk: bytes) -> Iterator[Job]:
        """The jobs a chunk of streamed input completes: its lines', or ``--pipe``'s blocks'."""
        if isinstance(parser, PipeJobs):
            yield from parser.feed_chunk(chunk, final=not chunk)
            return
        for text in self._splitter.feed(chunk, final=not chunk):
            job = parser.feed(text)
            if job is not None:
                yield job

    def _held_back(self, loop: asyncio.AbstractEventLoop) -> bool:
        """``--delay`` / ``--memfree`` / ``--load``: whether the next start must wait (a
        timer then wakes the loop to try again)."""
        if self.stop_starting or not (self._due or self._fresh):
            return False
        wait = self._next_start - loop.time()
        if wait <= 0 and (self.cfg.memfree or self.cfg.max_load):
            short = self._machine_short()
            if short is not None:
                what, note = short
                if what != self._waiting_for:  # once per wait
                    self.display.note(note)
                wait = RESOURCE_RECHECK
            self._waiting_for = None if short is None else short[0]
        if wait <= 0:
            return False
        if self._hold_timer is None:
            self._hold_timer = loop.call_later(wait, self._hold_over)
        return True

    def _machine_short(self) -> tuple[str, str] | None:
        """What the machine lacks for a start now (``--memfree``, ``--load``): what, and a note."""
        cfg = self.cfg
        if cfg.memfree:
            available = available_memory()
            if available is not None and available < cfg.memfree:
                return "memory", (
                    f"waiting for memory: {available / 2**20:.0f} MiB available,"
                    f" --memfree asks for {cfg.memfree / 2**20:.0f} MiB"
                )
        if cfg.max_load:
            load = current_load()
            if load is not None and load >= cfg.max_load:
                return "load", (
                    f"waiting for the load to fall: {load} process(es) running or waiting for a disk,"
                    f" --load allows fewer than {cfg.max_load:g}"
                )
        return None

    def _hold_over(self) -> None:
        self._hold_timer = None
        self._wake()

    def _wake(self) -> None:
        if self._wakeup is not None and not self._wakeup.done():
            self._wakeup.set_result(None)

    async def _attempt(self, job: Job) -> bool:
        """Submit the next try of ``job``; ``False`` if it was not started."""
        ex = self.ex
        assert ex is not None
        key = job.key(self.cfg.run)
        last = self.tries.get(key, 0)
        if self.stop_starting and last == 0:
            return False
        argv: tuple[str, ...] = job.argv
        slot = None
        stderr_path: Path | None = None
        if job.slotted or self._tag_slotted:  # GNU parallel's {%}: the lowest slot no running job holds
            if self._free_slots:
                slot = heapq.heappop(self._free_slots)
            else:
                self._slots_made += 1
                slot = self._slots_made
            if job.slotted:
                argv = tuple(arg.replace(SLOT_MARK, str(slot)) for arg in argv)
        if self.cfg.trace:
            self.display.trace(job.text.replace(SLOT_TEXT, str(slot)) if job.slotted else job.text)
        if job.block is not None and job.stdin:
            argv = ("/bin/sh", "-c", _STDIN_WRAPPER, job.block, *argv)
        if self.cfg.results:
            stderr_path = self._results_dir(job) / "stderr"
            argv = ("/bin/sh", "-c", _STDERR_WRAPPER, str(stderr_path), *argv)
        if self.cfg.nice is not None:  # inherited by everything the task starts
            argv = ("nice", "-n", str(self.cfg.nice), *argv)
        try_number = last + 1  # the journal's count goes on
        try:
            handle = await ex.submit(
                key,
                list(argv),
                timeout=self.cfg.timeout,
                try_number=try_number,
                env=task_env(self.state.marker_path, self.state.executor_id, key, try_number),
            )
        except ExecutorClosedError:
            self._free_slot(slot)
            return False
        self.tries[key] = try_number
        if self.cfg.tag:
            self._tags[job.seq] = self._tag(job, slot)
        if self._timeouts is not None:
            self._timeouts.started(job.seq, handle)
        if self._lines is not None:
            paths = [(_logs.log_path(self.cfg.log_dir, key, try_number), False)]
            if self.cfg.results:
                paths.append((str(stderr_path), True))
            self._lines.started(self._order[job.seq], paths, self._tags.get(job.seq))
            self._follow()
        self.state.accepted(
            TaskSpec(key=key, argv=argv, timeout=self.cfg.timeout, try_number=try_number), self.cfg.run
        )
        pid = handle.pid
        if pid is not None:
            self.state.started(key, try_number, pid, None, time.time())
        self._in_flight += 1
        handle.add_done_callback(functools.partial(self._outcome, job, key, pid is None, slot))
        return True

    def _free_slot(self, slot: int | None) -> None:
        if slot is not None:
            heapq.heappush(self._free_slots, slot)

    def _outcome(self, job: Job, key: str, unrecorded_start: bool, slot: int | None, info: TaskInfo) -> None:
        """A try of ``job`` ended (a callback on the loop): record it, retry it or finish the line."""
        self._in_flight -= 1
        self._free_slot(slot)
        try:
            if self._lines is not None:
                self._lines.try_ended(self._order[job.seq])
                self.display.flush()
            if self._timeouts is not None:
                ran = info.ended_at - info.started_at if info.ended_at and info.started_at else None
                self._timeouts.ended(job.seq, ran if info.succeeded else None)
            if info.state is TaskState.SUCCESS and info.detail:  # e.g. its log's disk is full
                self.display.note(f"line {job.line}: {info.detail}", always=True)
            if unrecorded_start and info.pid is not None:
                self.state.started(
                    key, info.try_number, info.pid, info.log_path, info.started_at or time.time()
                )
            self.state.finished(info)
            attempt = self._attempts[job.seq] = self._attempts.get(job.seq, 0) + 1
            if info.succeeded or attempt > self.cfg.retries or self.stop_starting:
                self.counters.running.pop(job.seq, None)
                self._finished(job, info)
            else:
                self.counters.retried += 1
                self.display.failed(job, info, will_retry=True)
                delay = min(MAX_BACKOFF, self.cfg.backoff * 2 ** (attempt - 1))
                timer = asyncio.get_running_loop().call_later(delay, self._backoff_over, job.seq)
                self._backoff[job.seq] = (job, info, timer)
        except BaseException as exc:  # a bug: stop the run loudly, as an exception in a task would
            self._error = exc
        finally:
            self._wake()

    def _backoff_over(self, seq: int) -> None:
        job, info, _ = self._backoff.pop(seq)
        self._due.append((job, info))
        self._wake()

    def _give_up_retries(self) -> None:
        """Stopping: lines waiting to be tried again end with their last failure."""
        waiting = [(job, info) for job, info, _ in self._backoff.values()]
        for _, _, timer in self._backoff.values():
            timer.cancel()
        self._backoff.clear()
        waiting.extend(self._due)
        self._due.clear()
        try:
            for job, info in waiting:
                self.counters.running.pop(job.seq, None)
                self._finished(job, info)
        except BaseException as exc:
            self._error = exc
        finally:
            self._wake()

    def _results_dir(self, job: Job) -> Path:
        assert self.cfg.results is not None
        path = Path(self.cfg.results) / str(job.line)
        path.mkdir(parents=True, exist_ok=True)
        return path

    # ------------------------------------------------------------------ outcomes

    def _finished(self, job: Job, info: TaskInfo) -> None:
        c = self.counters
        if self._pipe is not None:  # no retry will read the block again
            self._pipe.remove(job)
        if info.succeeded:
            c.succeeded += 1
        else:
            c.failed += 1
            self.failures.append((job, info))
        stdout_path: str | None = info.log_path
        stderr_path: str | None = None
        out_size = _size(stdout_path)
        err_size = 0
        if self.cfg.results:
            folder = self._results_dir(job)
            stderr_path = str(folder / "stderr")
            err_size = _size(stderr_path)
            _keep(stdout_path, folder / "stdout")
            (folder / "exitval").write_text(f"{exit_value(info)}\n")
            stdout_path = str(folder / "stdout")
        received = out_size + err_size
        stdout_path = stdout_path if out_size else None
        stderr_path = stderr_path if err_size else None
        if self.joblog is not None:
            self.joblog.write(job.seq, job.text, info, received)
        if not info.succeeded:
            self.display.failed(job, info, will_retry=False)
        tag = self._tags.pop(job.seq, None)
        if self._lines is not None:
            self._lines.finished(self._order[job.seq])
            self.display.flush()
            self._follow()
        elif self.cfg.keep_order:
            self._ready[self._order[job.seq]] = (stdout_path, stderr_path, tag)
            self._flush_outputs()
        else:
            self.display.output(stdout_path, stderr_path, tag)
        self._check_halt()

    def _tag(self, job: Job, slot: int | None) -> bytes:
        """``--tag``: what goes before each line of ``job``'s output (``--tagstring`` filled in)."""
        cfg = self.cfg
        text = job.tag if cfg.tagstring is None else tag_text(cfg.tagstring, job, str(slot), cfg.strings)
        return text.encode("utf-8", "surrogateescape") + b"\t"

    def _follow(self) -> None:
        """``--line-buffer``: look at the followed tasks' output again soon, while there are any."""
        if self._lines is not None and self._poll_timer is None and self._lines.following:
            self._poll_timer = asyncio.get_running_loop().call_later(POLL_INTERVAL, self._poll)

    def _poll(self) -> None:
        self._poll_timer = None
        assert self._lines is not None
        try:
            self._lines.poll()
            self.display.flush()
            self._follow()
        except BaseException as exc:  # a bug: stop the run loudly
            self._error = exc
            self._wake()

    def _flush_outputs(self, final: bool = False) -> None:
        if self._lines is not None:
            if final:
                self._lines.close()
            return
        ready = self._ready
        while self._next in ready:
            self.display.output(*ready.pop(self._next))
            self._next += 1
        if final:
            for index in sorted(ready):
                self.display.output(*ready.pop(index))

    def _check_halt(self) -> None:
        policy = self.cfg.halt
        if self.halted is not None or policy.never:
            return
        c = self.counters
        if not policy.triggered(failed=c.failed, succeeded=c.succeeded, total=c.total):
            return
        self.halted = policy
        self._stop_starting()
        if policy.when == "now":
            self.display.stopping(f"--halt {policy}: terminating the running tasks")
            self._terminate()
        else:
            self.display.stopping(f"--halt {policy}: starting no more tasks, waiting for the running ones")

    # ------------------------------------------------------------------ stopping

    def stopping(self) -> bool:
        return self.stop_starting

    def _stop_starting(self) -> None:
        if not self.stop_starting:
            self.stop_starting = True
            asyncio.get_running_loop().call_soon(self._give_up_retries)
            self._drop_held()
        self._wake()

    def _terminate(self) -> None:
        if self._terminating is None and self.ex is not None:
            self._terminating = asyncio.ensure_future(self.ex.aterminate())

    def _on_signal(self, signum: int) -> None:
        self.signals.append(signum)
        first = len(self.signals) == 1 and signum == signal.SIGINT
        self._stop_starting()
        if first:
            self.display.stopping(
                "interrupted: starting no new tasks, waiting for the running ones"
                " (Ctrl-C again terminates them)"
            )
        else:
            self.display.stopping("terminating every running task")
            self._terminate()


def _time_out(handle: TaskHandle, detail: str) -> None:
    """``--timeout N%``: stop a try that ran too long; it fails as timed out."""
    handle._stop_as(FailureReason.TIMED_OUT, detail)


def _size(path: str | None) -> int:
    if not path:
        return 0
    try:
        return os.stat(path).st_size
    except OSError:
        return 0


def _keep(source: str | None, target: Path) -> None:
    """Put a task's stdout log at ``target`` (a hard link when possible)."""
    if not source:
        target.write_bytes(b"")
        return
    with contextlib.suppress(FileNotFoundError):
        target.unlink()
    try:
        os.link(source, target)
    except OSError:
        try:
            shutil.copyfile(source, target)
        except OSError:
            target.write_bytes(b"")


async def run_batch(cfg: RunConfig) -> int:
    # Everything imported so far lives as long as the process: keep it out of the collector's
    # scans of the oldest generation.
    gc.freeze()
    state = State(cfg.state_path)
    await state.open()
    try:
        await state.register()
        leftovers = await state.leftovers()
        if cfg.mode == "all":  # every line runs: only the try numbers to continue from are needed
            todo, skipped = list(cfg.jobs), 0
            last_tries = await state.last_tries(cfg.run)
        else:
            latest = await state.latest(cfg.run)
            todo, skipped = select_jobs(cfg.jobs, latest, cfg.run, cfg.mode)
            last_tries = {key: row.try_number for key, row in latest.items()}
        counters = Counters(total=len(todo), skipped=skipped)
        display = make_display(counters, quiet=cfg.quiet, run=cfg.run, bar=cfg.bar)
        runner = Runner(cfg, state, display, counters, leftovers if leftovers.running else None)
        with display:
            code = await runner.go(todo, last_tries)
        if leftovers.dead:
            leftovers.refresh()
            await shielded(state.settle(leftovers))
        await shielded(state.unregister())  # every task of this run has ended
        return code
    finally:
        await shielded(state.close())
