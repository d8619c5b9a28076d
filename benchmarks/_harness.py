"""Shared benchmark harness: timing, isolated runs, repeats, medians, ratios, tables and JSON.

Every number a benchmark prints is timed here (:class:`Stopwatch`, :func:`time_process`), so the
benchmark scripts hold no timing code of their own. A suite is a list of :class:`Case`\\ s; the
:class:`Suite` runs them round-robin (repeat 1 of every contender of a group, then repeat 2, ...)
so that drift on a shared, noisy machine spreads over all contenders instead of biasing one, and
reports medians with the spread beside them. Ratios are always between contenders measured in
the same run.

A measurement that needs a clean parent process (no heap, threads or descriptors left over from
earlier runs) runs in a child interpreter: :func:`run_isolated` starts ``python SCRIPT --child
SPEC``, the script hands control to :func:`child_main`, which calls the named function and prints
its result as one JSON line.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import json
import math
import os
import platform
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

RESULT_MARK = "@@BENCH-RESULT@@ "
"""Prefix of the one stdout line a child prints with its result."""

Measurement = dict[str, Any]
"""What a measured function returns: at least ``wall`` (seconds); ``ok``/``failed`` counts and
any extra numbers are kept in the JSON."""


# ------------------------------------------------------------------------ scratch directories

TRASH_ENV = "BENCH_TRASH_DIR"
"""Where :func:`scratch_dir` moves finished directories (set by :func:`deferred_cleanup`)."""


@contextlib.contextmanager
def deferred_cleanup(
    parent: str | None = None, eager: bool = False, patience_s: float = 45.0
) -> Iterator[list[str]]:
    """Delete every :func:`scratch_dir` of this run (children included) once, at the very end.

    Why: on this machine's ext4 (no journal), creating a file costs 100-250 µs instead of
    5-10 µs for up to ~30 s after thousands of files near it were deleted: the inode allocator
    steps over each recently freed inode (``recently_deleted`` in the kernel; seen with
    ``perf``).  A contender that creates one log file per task would otherwise pay for the
    clean-up of the contender timed before it, which no baseline (they create no files) does.
    Before anything is timed, :func:`settle_file_system` waits out deletions made just before
    the run (at most ``patience_s``).  Yields a list of notes for the report.  ``eager`` keeps
    the old behaviour (delete each directory as soon as its measurement ends).  Nested inside
    another (``nox -s bench`` runs several benchmarks), the outer one's trash is reused and
    emptied by the outer one.
    """
    notes: list[str] = []
    if eager:
        yield notes
        return
    outer = os.environ.get(TRASH_ENV)
    trash = outer if outer and os.path.isdir(outer) else tempfile.mkdtemp(prefix="bench-trash-", dir=parent)
    os.environ[TRASH_ENV] = trash
    try:
        notes.append(settle_file_system(trash, patience_s=patience_s))
        yield notes
    finally:
        if trash != outer:
            os.environ.pop(TRASH_ENV, None)
            shutil.rmtree(trash, ignore_errors=True)


def add_eager_cleanup_flag(parser: Any) -> None:
    """``--eager-cleanup`` on a benchmark's ``argparse`` parser (see :func:`deferred_cleanup`)."""
    parser.add_argument(
        "--eager-cleanup",
        action="store_true",
        help="delete each measurement's scratch directory right after it (default: all at the end;"
        " on ext4 without a journal, mass deletion slows file creation for tens of seconds after)",
    )


def create_cost_us(directory: str, files: int = 200) -> float:
    """Microseconds per file to create ``files`` empty files in a new directory under ``directory``."""
    probe = tempfile.mkdtemp(prefix="probe-", dir=directory)
    started = time.perf_counter()
    for i in range(files):
        os.close(os.open(os.path.join(probe, str(i)), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    return (time.perf_counter() - started) / files * 1e6


def settle_file_system(directory: str, fast_us: float = 30.0, patience_s: float = 45.0) -> str:
    """Wait (at most ``patience_s``) until creating a file under ``directory`` is fast again.

    The probes are left in ``directory`` (deleting them would start the slow window again).
    Returns a note saying what was found.
    """
    started = time.monotonic()
    cost = create_cost_us(directory)
    while cost > fast_us and time.monotonic() - started < patience_s:
        time.sleep(3.0)
        cost = create_cost_us(directory)
    waited = time.monotonic() - started
    state = "settled" if cost <= fast_us else f"NOT settled after {patience_s:.0f} s"
    return f"file creation before timing: {cost:.0f} µs per file ({state}, waited {waited:.0f} s)"


@contextlib.contextmanager
def scratch_dir(prefix: str, parent: str | None = None) -> Iterator[str]:
    """A fresh temporary directory; afterwards moved to the run's trash, or deleted if none."""
    path = tempfile.mkdtemp(prefix=prefix, dir=parent)
    try:
        yield path
    finally:
        trash = os.environ.get(TRASH_ENV)
        try:
            if not trash:
                raise OSError("no trash directory")
            os.rename(path, os.path.join(trash, os.path.basename(path)))
        except OSError:  # no deferred clean-up in force, or another file system
            shutil.rmtree(path, ignore_errors=True)


# --------------------------------------------------------------------------------------- timing


class Stopwatch:
    """``with Stopwatch() as sw: ...`` then ``sw.elapsed`` (seconds, ``time.perf_counter``)."""

    __slots__ = ("_start", "elapsed")

    def __init__(self) -> None:
        self._start = 0.0
        self.elapsed = 0.0

    def __enter__(self) -> Stopwatch:
        self._start = time.perf_counter()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.elapsed = time.perf_counter() - self._start


class LatencyRecorder:
    """Collects per-call latencies in nanoseconds (``time.perf_counter_ns`` around each call)."""

    __slots__ = ("samples",)

    def __init__(self) -> None:
        self.samples: list[int] = []

    def call(self, fn: Callable[[], object]) -> None:
        t0 = time.perf_counter_ns()
        fn()
        self.samples.append(time.perf_counter_ns() - t0)

    def summary_us(self) -> dict[str, float]:
        """``{n, p50, p99, max}`` in microseconds (``n`` is a count)."""
        if not self.samples:
            return {"n": 0}
        us = [s / 1e3 for s in self.samples]
        return {
            "n": len(us),
            "p50": percentile(us, 50),
            "p99": percentile(us, 99),
            "max": max(us),
        }


def time_process(
    argv: Sequence[str],
    *,
    stdin: bytes | None = None,
    cwd: str | os.PathLike[str] | None = None,
    env: Mapping[str, str] | None = None,
    timeout: float | None = None,
) -> tuple[float, int]:
    """Run a whole process with its output discarded; return ``(wall seconds, returncode)``.

    The wait is a blocking ``waitpid``, so the wall ends when the process does. (``subprocess``'s
    own timeout polls with sleeps of up to 50 ms, which rounded every wall up to a 50 ms step.)
    On ``timeout`` the process is killed and ``subprocess.TimeoutExpired`` raised.
    """
    procs: list[subprocess.Popen[bytes]] = []
    expired = threading.Event()

    def _expire() -> None:
        expired.set()
        for proc in procs:
            proc.kill()

    timer = threading.Timer(timeout, _expire) if timeout is not None else None
    if timer is not None:
        timer.daemon = True
        timer.start()
    try:
        with Stopwatch() as sw:
            procs.append(
                subprocess.Popen(
                    list(argv),
                    stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                    cwd=cwd,
                    env=None if env is None else dict(env),
                )
            )
            if expired.is_set():  # the timer fired while the process was being started
                procs[0].kill()
            procs[0].communicate(stdin)
    finally:
        if timer is not None:
            timer.cancel()
    returncode = procs[0].returncode
    if expired.is_set() and returncode == -signal.SIGKILL:
        raise subprocess.TimeoutExpired(list(argv), timeout or 0.0)
    return sw.elapsed, returncode


def reaped_cpu() -> float:
    """User + system CPU seconds of every child process this process has reaped so far, with
    the descendants each of them reaped (``RUSAGE_CHILDREN``).

    The difference around one measured run is the CPU of its whole process tree: the tasks,
    the executor's threads and its supervisor, or ``xargs``. It is what bounds throughput on a
    machine whose cores the tasks keep busy, and it varies less from run to run than wall time
    on a shared machine. A process left to another parent (reparented) is not counted.
    """
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0-100) with linear interpolation between closest ranks."""
    if not values:
        raise ValueError("percentile of no values")
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100.0
    lo = math.floor(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


# ------------------------------------------------------------------------------ process helpers


def rss_kb(pid: int | None = None) -> int:
    """Resident set size (``VmRSS`` from ``/proc/PID/status``) in KiB; default this process.

    0 for a process that is gone (or a zombie)."""
    try:
        with open(f"/proc/{'self' if pid is None else pid}/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError):
        pass
    return 0


def raise_nofile(want: int | None = None) -> int:
    """Raise the soft ``RLIMIT_NOFILE`` toward ``want`` (default: the hard limit); return it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if want is None else want
    if hard != resource.RLIM_INFINITY:
        target = min(target, hard)
    if target > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        soft = target
    return soft


@dataclass(frozen=True)
class Proc:
    """One process from ``/proc/PID/stat``."""

    pid: int
    ppid: int
    pgrp: int
    comm: str


def proc_stat(pid: int) -> tuple[str, list[bytes]] | None:
    """``(command name, fields from field 3 on)`` of ``/proc/PID/stat``; ``None`` if it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return None
    # The command name may hold spaces and parentheses: it ends at the last ')'.
    close = stat.rfind(b")")
    return stat[stat.find(b"(") + 1 : close].decode(errors="replace"), stat[close + 2 :].split()


def descendants(root: int | None = None) -> list[Proc]:
    """Every live descendant of ``root`` (default: this process), found through ``/proc``.

    Tasks may be grandchildren (an executor can spawn them from a helper process of its own), so
    counting or cleaning up only direct children is not enough.
    """
    procs: dict[int, list[Proc]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        stat = proc_stat(int(entry.name))
        if stat is None:
            continue
        comm, fields = stat
        if fields[0] == b"Z":
            continue  # exited, not yet reaped
        proc = Proc(int(entry.name), int(fields[1]), int(fields[2]), comm)
        procs.setdefault(proc.ppid, []).append(proc)
    found: list[Proc] = []
    todo = [os.getpid() if root is None else root]
    while todo:
        for child in procs.get(todo.pop(), []):
            found.append(child)
            todo.append(child.pid)
    return found


def kill_descendants(root: int | None = None, sig: int = signal.SIGKILL) -> int:
    """Safety net after a measurement: signal every descendant of ``root`` (default: this process)
    and the process group of each that leads one. Nothing that is not ours is touched: a group is
    only signalled when one of our descendants is its leader. Returns how many were signalled."""
    n = 0
    for proc in descendants(root):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            if proc.pgrp == proc.pid:
                os.killpg(proc.pid, sig)
            else:
                os.kill(proc.pid, sig)
            n += 1
    return n


# ---------------------------------------------------------------------------- commands & ideals


def xargs_argv(parallelism: int, argv: Sequence[str], input_file: str | None = None) -> list[str]:
    """``xargs -P N`` running ``argv`` once per input line (``-I{}``: the line is not appended)."""
    cmd = ["xargs", "-P", str(parallelism), "-I{}"]
    if input_file is not None:
        cmd += ["-a", input_file]
    return cmd + list(argv)


def ideal_wall(tasks: int, parallelism: int, duration: float, spawn_rate: float) -> float:
    """The honest floor on this box: ``max(N / P * d, N / spawn_limit)`` (DESIGN.md section 5)."""
    return max(tasks / parallelism * duration, tasks / spawn_rate)


# --------------------------------------------------------------------------------- the suite


@dataclass(frozen=True)
class Case:
    """One thing to measure: a contender on a workload at a parallelism."""

    workload: str
    parallelism: int
    contender: str
    tasks: int
    params: Mapping[str, Any] = field(default_factory=dict)
    ideal: float | None = None
    timeout: float = 120.0


@dataclass
class Result:
    """All repeats of one :class:`Case`."""

    case: Case
    samples: list[Measurement] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    @property
    def walls(self) -> list[float]:
        return [float(s["wall"]) for s in self.samples]

    @property
    def median(self) -> float | None:
        return statistics.median(self.walls) if self.samples else None

    @property
    def best(self) -> float | None:
        """The fastest repeat: less sensitive to other load on a shared machine."""
        return min(self.walls) if self.samples else None

    @property
    def rate(self) -> float | None:
        med = self.median
        return self.case.tasks / med if med else None

    @property
    def cpu_per_task_ms(self) -> float | None:
        """Median CPU of the whole process tree per task, in ms (see :func:`reaped_cpu`)."""
        cpus = [float(s["tree_cpu_s"]) for s in self.samples if s.get("tree_cpu_s") is not None]
        return 1000 * statistics.median(cpus) / self.case.tasks if cpus and self.case.tasks else None

    @property
    def failed(self) -> int:
        return max((int(s.get("failed", 0)) for s in self.samples), default=0)

    def to_json(self) -> dict[str, Any]:
        c = self.case
        extras: dict[str, list[Any]] = {}
        for s in self.samples:
            for k, v in s.items():
                if k not in ("wall", "ok", "failed"):
                    extras.setdefault(k, []).append(v)
        return {
            "workload": c.workload,
            "parallelism": c.parallelism,
            "contender": c.contender,
            "tasks": c.tasks,
            "walls_s": [_round(w) for w in self.walls],
            "median_s": _round(self.median),
            "tasks_per_s": _round(self.rate),
            "ideal_s": _round(c.ideal),
            "failed": self.failed,
            "errors": self.errors,
            **({"extra": _round_tree(extras)} if extras else {}),
        }


Runner = Callable[[Case], Measurement]


class Suite:
    """Runs cases round-robin within each (workload, parallelism) group and keeps the results."""

    def __init__(self, runner: Runner, repeats: int, *, log: Callable[[str], None] | None = None):
        self.runner = runner
        self.repeats = repeats
        self.results: list[Result] = []
        self._log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))

    def run_group(self, cases: Sequence[Case]) -> list[Result]:
        results = [Result(c) for c in cases]
        for rep in range(self.repeats):
            # rotate the order each repeat so no contender always runs first (or right after another)
            for res in results[rep % len(results) :] + results[: rep % len(results)]:
                c = res.case
                if res.errors and not res.samples:
                    continue  # it failed before: do not waste the run's time on it again
                head = f"  {c.workload} P={c.parallelism} {c.contender} N={c.tasks}"
                load1 = os.getloadavg()[0]
                try:
                    sample = self.runner(c)
                except Exception as exc:  # a broken contender must not stop the run
                    res.errors.append(f"{type(exc).__name__}: {exc}"[:500])
                    self._log(f"{head} rep {rep + 1}/{self.repeats}: ERROR {res.errors[-1]}")
                    continue
                sample.setdefault("load1", round(load1, 2))  # how busy the box was (JSON only)
                res.samples.append(sample)
                fail = int(sample.get("failed", 0))
                note = f" ({fail} FAILED)" if fail else ""
                self._log(
                    f"{head} rep {rep + 1}/{self.repeats}: {sample['wall']:.3f} s"
                    f" = {c.tasks / sample['wall']:,.0f}/s{note}"
                )
        self.results.extend(results)
        return results

    def find(self, workload: str, parallelism: int, contender: str) -> Result | None:
        """The result of a contender that produced at least one sample, else ``None``."""
        for r in self.results:
            c = r.case
            if (c.workload, c.parallelism, c.contender) == (workload, parallelism, contender):
                return r if r.samples else None
        return None

    def ratio(
        self,
        label: str,
        workload: str,
        parallelism: int,
        num: str,
        den: str,
        *,
        kind: str = "speed",
        target: str | None = None,
    ) -> Ratio | None:
        """``kind="speed"``: den wall / num wall (> 1: num is faster); ``"wall"``: num / den."""
        a = self.find(workload, parallelism, num)
        b = self.find(workload, parallelism, den)
        if a is None or b is None or not a.median or not b.median:
            return None
        if kind == "speed":
            value, best = b.median / a.median, (b.best or 0) / (a.best or 1)
        else:
            value, best = a.median / b.median, (a.best or 0) / (b.best or 1)
        name = f"{label} par {parallelism} N={a.case.tasks} {kind} {num} / {den}"
        repeats = min(len(a.samples), len(b.samples))
        return Ratio(name, value, target, best=best if repeats > 1 else None)

    def table(self, labels: Mapping[str, str], baselines: Sequence[tuple[str, str]]) -> str:
        """Every result: absolute numbers, then speed against each ``(column, contender)``
        baseline of the same workload and parallelism (baseline wall / this wall)."""
        with_ideal = any(r.case.ideal for r in self.results)
        with_cpu = any(r.cpu_per_task_ms is not None for r in self.results)
        headers = ["workload", "P", "contender", "N", "wall med s", "min-max s", "tasks/s"]
        headers += ["CPU ms/task"] if with_cpu else []
        headers += ["ideal s", "x ideal"] if with_ideal else []
        headers += [*(col for col, _ in baselines), "fail"]
        rows: list[list[str]] = []
        for r in self.results:
            c, med, walls = r.case, r.median, r.walls
            row = [
                labels.get(c.workload, c.workload),
                str(c.parallelism),
                c.contender,
                str(c.tasks),
                fmt_s(med) if med is not None else "ERROR",
                f"{min(walls):.3f}-{max(walls):.3f}" if len(walls) > 1 else "",
                f"{r.rate:,.0f}" if r.rate else "-",
            ]
            if with_cpu:
                cpu = r.cpu_per_task_ms
                row.append(f"{cpu:.3f}" if cpu is not None else "-")
            if with_ideal:
                row += [fmt_s(c.ideal), fmt_ratio(med / c.ideal) if med and c.ideal else "-"]
            for _, contender in baselines:
                base = self.find(c.workload, c.parallelism, contender)
                speed = base.median / med if base and base.median and med else None
                row.append(fmt_ratio(speed))
            row.append(str(r.failed) if r.samples else "; ".join(r.errors)[:70])
            rows.append(row)
        left = {"workload", "contender", "fail"}
        return format_table(headers, rows, right={h for h in headers if h not in left})


# -------------------------------------------------------------------------- isolated children


def run_isolated(script: str | Path, fn: str, params: Mapping[str, Any], timeout: float) -> Measurement:
    """Run ``fn(**params)`` in a fresh interpreter via ``python SCRIPT --child SPEC``.

    The child runs in its own session; on timeout it, its group and every descendant it started
    (tasks run in sessions of their own) are killed: nothing else.
    """
    spec = json.dumps({"fn": fn, "params": dict(params)})
    cpu_before = reaped_cpu()
    proc = subprocess.Popen(
        [sys.executable, str(script), "--child", spec],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        kill_descendants(proc.pid)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise TimeoutError(f"{fn} took longer than {timeout:.0f} s (killed)") from None
    for line in reversed(out.decode(errors="replace").splitlines()):
        if line.startswith(RESULT_MARK):
            result: Measurement = json.loads(line[len(RESULT_MARK) :])
            # the measuring interpreter's start and set-up included: a few tens of ms
            result.setdefault("tree_cpu_s", reaped_cpu() - cpu_before)
            return result
    tail = err.decode(errors="replace").strip().splitlines()[-3:]
    raise RuntimeError(f"{fn} exited {proc.returncode} without a result: {' | '.join(tail)}")


def child_main(registry: Mapping[str, Callable[..., Measurement]], spec: str) -> int:
    """Entry point of a child started by :func:`run_isolated`.

    A ``ballast_mb`` parameter makes the child hold that much touched memory while it measures:
    an Airflow scheduler parent is hundreds of MB, which matters to spawn paths that fork.
    """
    req = json.loads(spec)
    params = dict(req["params"])
    ballast = bytearray(b"\x01") * (int(params.pop("ballast_mb", 0)) * 2**20)
    result = registry[req["fn"]](**params)
    if ballast:
        result["ballast_mb"] = len(ballast) >> 20
    print(RESULT_MARK + json.dumps(result), flush=True)
    return 0


# ------------------------------------------------------------------------ output: table, JSON


def format_table(headers: Sequence[str], rows: Sequence[Sequence[str]], right: Collection[str] = ()) -> str:
    """Plain aligned text table; columns whose header is in ``right`` are right-aligned."""
    widths = [len(h) for h in headers]
    for row in rows:
        widths = [max(w, len(cell)) for w, cell in zip(widths, row, strict=True)]

    def fmt(row: Sequence[str]) -> str:
        cells = [
            cell.rjust(w) if h in right else cell.ljust(w)
            for h, w, cell in zip(headers, widths, row, strict=True)
        ]
        return "  ".join(cells).rstrip()

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([fmt(headers), rule, *(fmt(r) for r in rows)])


def fmt_s(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds:.3f}"


def fmt_ratio(value: float | None) -> str:
    """Two decimals for ratios; fewer for large values (latencies in microseconds)."""
    if value is None:
        return "-"
    return f"{value:.0f}" if abs(value) >= 100 else f"{value:.1f}" if abs(value) >= 10 else f"{value:.2f}"


@dataclass(frozen=True)
class Ratio:
    """A ratio of two medians measured in the same run, with the issue's target beside it."""

    name: str
    value: float | None
    target: str | None = None
    note: str = ""
    #: the same ratio between the fastest repeats (when there were several)
    best: float | None = None

    def line(self) -> str:
        best = f"  (best-of-repeats {fmt_ratio(self.best)})" if self.best is not None else ""
        target = f"  (target {self.target})" if self.target else ""
        note = f"  [{self.note}]" if self.note else ""
        return f"{self.name} = {fmt_ratio(self.value)}{best}{target}{note}"

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "value": _round(self.value),
            "best": _round(self.best),
            "target": self.target,
        }


def environment() -> dict[str, Any]:
    """What the numbers were measured on."""
    env: dict[str, Any] = {
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "loadavg_start": [round(x, 2) for x in os.getloadavg()],
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "nofile": list(resource.getrlimit(resource.RLIMIT_NOFILE)),
    }
    with contextlib.suppress(importlib.metadata.PackageNotFoundError):
        env["uvloop"] = importlib.metadata.version("uvloop")
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        # read-only: which commit the numbers belong to
        env["commit"] = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
            cwd=Path(__file__).resolve().parent,
        ).stdout.strip()
    return env


def write_json(path: str | Path, payload: Mapping[str, Any]) -> Path:
    """Write a small, diff-friendly JSON file: sorted keys, rounded floats, one list item per line."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    data = _round_tree(payload)
    parts = []
    for key in sorted(data):
        value = data[key]
        if isinstance(value, list) and value:
            items = ",\n".join(f"  {json.dumps(v, sort_keys=True)}" for v in value)
            text = f"[\n{items}\n ]"
        else:
            text = json.dumps(value, sort_keys=True)
        parts.append(f" {json.dumps(key)}: {text}")
    out.write_text("{\n" + ",\n".join(parts) + "\n}\n")
    return out


def _round(x: float | None, digits: int = 4) -> float | None:
    if x is None or x == 0 or not math.isfinite(x):
        return x
    return round(x, max(0, digits - 1 - math.floor(math.log10(abs(x)))))


def _round_tree(obj: Any) -> Any:
    if isinstance(obj, float):
        return _round(obj)
    if isinstance(obj, Mapping):
        return {k: _round_tree(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_round_tree(v) for v in obj]
    return obj


def heading(title: str) -> None:
    """Print a section heading to stdout."""
    print(f"\n== {title} ==", flush=True)
