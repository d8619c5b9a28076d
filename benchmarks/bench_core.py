"""Core benchmark: AsyncExecutor against the spawn baselines, measured side by side in one run.

    python benchmarks/bench_core.py [--quick] [--out benchmarks/results/NAME.json]

Workloads: N x ``/bin/true`` (spawn-bound) and N x ``sleep 0.1`` (parallelism-bound) at
parallelism 1, 8, 64, 512, 1000. Contenders (each sample runs in a fresh interpreter):

* ``facade-tight`` / ``facade-idle1ms``: the sync façade driven like a scheduler (queue every
  task, then ``heartbeat()`` + drain ``get_event_buffer()`` in a loop; the second variant sleeps
  1 ms when a heartbeat produced no event); ``facade-idle1ms/no-journal`` without the journal,
  ``facade-idle1ms/lazy-logs`` without it and with ``lazy_logs=True`` (a log file only for a task
  that writes), ``facade-idle1ms/journal-lazy-logs`` with both (the supervisor holds the memory
  files), ``facade-idle1ms/supervisor-only`` with the supervisor but no journal;
* ``async-with/asyncio`` / ``async-with/uvloop``: ``async with``, ``submit``, ``wait``;
* ``subprocess.run``: a sequential loop (``/bin/true`` only, inherently parallelism 1);
* ``bare-asyncio``: ``asyncio.create_subprocess_exec`` workers with the best child watcher
  (pidfd), output to /dev/null, new session: the *software limit* the targets refer to;
* ``raw-spawn/asyncio`` / ``raw-spawn/uvloop``: ``os.posix_spawn(setsid=True)`` + ``pidfd_open``
  + ``loop.add_reader``: the physical-ish limit for Python;
* ``xargs``: ``xargs -P N`` over the same command, whole-process wall time.

Then, with ~5,000 long ``sleep`` tasks in flight: ``sync()`` / ``heartbeat()`` latency and parent
RSS growth per in-flight task (and the same RSS figure for the bare baselines).

Ratios are printed next to the issue's targets as information; nothing here asserts.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import importlib.util
import os
import shutil
import statistics
import subprocess
import sys
import time
import warnings
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, TypeVar

from _harness import (
    Case,
    LatencyRecorder,
    Measurement,
    Ratio,
    Stopwatch,
    Suite,
    add_eager_cleanup_flag,
    child_main,
    deferred_cleanup,
    descendants,
    environment,
    format_table,
    heading,
    ideal_wall,
    kill_descendants,
    percentile,
    proc_stat,
    raise_nofile,
    rss_kb,
    run_isolated,
    scratch_dir,
    time_process,
    write_json,
    xargs_argv,
)

SCRIPT = Path(__file__).resolve()
RESULTS_DIR = SCRIPT.parent / "results"
T = TypeVar("T")

#: Spawn limit when this run measured none: C posix_spawn loop, par 8 (DESIGN.md section 5).
DESIGN_SPAWN_LIMIT = 2400.0
TERMINAL = ("success", "failed")
LABELS = {"true": "/bin/true", "sleep": "sleep 0.1"}

# ===================================================================== contenders (child side)


def _run_on(loop: str, main: Callable[[], Awaitable[T]]) -> T:
    """Run ``main()`` on a fresh asyncio or uvloop event loop."""

    async def wrapper() -> T:
        return await main()

    if loop == "uvloop":
        import uvloop

        return uvloop.run(wrapper())
    return asyncio.run(wrapper())


def _use_pidfd_watcher() -> None:
    """Python 3.11: make asyncio use pidfd for child exits (3.12+ already does by default)."""
    if sys.version_info < (3, 12):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            asyncio.set_child_watcher(asyncio.PidfdChildWatcher())


def _key(i: int) -> tuple[str, int]:
    return ("bench", i)


@contextlib.contextmanager
def _executor_home(tmpdir: str | None, journal: bool) -> Iterator[dict[str, Any]]:
    """A private home for one executor (logs, journal, supervisor socket): never the user's.

    Yields the constructor keywords: the task log directory, and ``state_path=None`` when the run
    is without a journal (the default is a journal under ``$ASYNC_EXECUTOR_HOME``).
    """
    with scratch_dir("bench-home-", tmpdir) as home:
        os.environ["ASYNC_EXECUTOR_HOME"] = home
        kwargs: dict[str, Any] = {"log_dir": os.path.join(home, "logs")}
        if not journal:
            kwargs["state_path"] = None
        try:
            yield kwargs
        finally:
            kill_descendants()  # safety net: whatever this executor left behind, and only that


def c_facade(
    tasks: int,
    parallelism: int,
    argv: list[str],
    idle_sleep: float,
    loop: str,
    tmpdir: str | None,
    journal: bool,
    supervisor_only: bool = False,
    lazy_logs: bool = False,
) -> Measurement:
    """Sync façade driven like a scheduler: queue all, then heartbeat + drain until done.

    ``supervisor_only``: no journal, but tasks still spawned by a supervisor process (what the
    supervisor alone costs; set up through the engine's backend seam, not a public option).
    ``lazy_logs``: a log file only for a task that writes (``lazy_logs=True``).
    """
    raise_nofile()
    from async_executor import AsyncExecutor

    with _executor_home(tmpdir, journal) as kwargs:
        ex = AsyncExecutor(parallelism=parallelism, loop=loop, lazy_logs=lazy_logs, **kwargs)
        if supervisor_only:
            from async_executor._supervisor import SupervisorBackend

            ex._engine.backend = SupervisorBackend(os.environ["ASYNC_EXECUTOR_HOME"], ex.executor_id)
        with Stopwatch() as setup:
            ex.start()
        ok = failed = heartbeats = idle = 0
        cpu = os.times()
        with Stopwatch() as sw:
            for i in range(tasks):
                ex.queue_command(_key(i), argv)
            while ok + failed < tasks:
                ex.heartbeat()
                heartbeats += 1
                events = ex.get_event_buffer()
                for state, _info in events.values():
                    if state == "success":
                        ok += 1
                    elif state == "failed":
                        failed += 1
                if not events:
                    idle += 1
                    if idle_sleep:
                        time.sleep(idle_sleep)
        cpu_end = os.times()
        supervisor_cpu = _process_cpu(getattr(ex._engine.backend, "supervisor_pid", None))
        stats = ex.statistics()
        with Stopwatch() as teardown:
            ex.end()
    return {
        "wall": sw.elapsed,
        "ok": ok,
        "failed": failed,
        "heartbeats": heartbeats,
        "idle_heartbeats": idle,
        "start_s": setup.elapsed,
        "end_s": teardown.elapsed,
        "engine_loop": str(getattr(stats, "loop", loop)),
        # CPU of the executor's process (all its threads) while the tasks ran, and of its
        # supervisor over its life so far (its start included): the costs ratios hide
        "cpu_s": round(cpu_end.user + cpu_end.system - cpu.user - cpu.system, 3),
        **({"supervisor_cpu_s": supervisor_cpu} if supervisor_cpu is not None else {}),
        **_counters(stats),
    }


def _process_cpu(pid: int | None) -> float | None:
    """User + system CPU seconds of a live process (``/proc/PID/stat``), ``None`` if unknown."""
    stat = None if pid is None else proc_stat(pid)
    if stat is None:
        return None
    fields = stat[1]  # utime and stime are fields 14 and 15
    return round((int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK"), 3)


def _cpu_notes(suite: Suite) -> list[str]:
    """Median CPU per 1,000 tasks of each façade contender (executor process, supervisor)."""
    notes = []
    for r in suite.results:
        c = r.case
        cpus = [float(s["cpu_s"]) for s in r.samples if "cpu_s" in s]
        if not cpus:
            continue
        per = 1000 / c.tasks
        line = f"{c.contender} {LABELS[c.workload]} P={c.parallelism}: CPU per 1,000 tasks, executor process "
        line += f"{statistics.median(cpus) * per:.3f} s"
        sups = [float(s["supervisor_cpu_s"]) for s in r.samples if "supervisor_cpu_s" in s]
        if sups:
            line += f", supervisor {statistics.median(sups) * per:.3f} s (its start included)"
        notes.append(line)
    return notes


def _counters(stats: object) -> dict[str, int]:
    """Engine counters that tell a measurement was disturbed (descriptor waits, spawn failures)."""
    names = ("effective_parallelism", "resource_waits", "spawn_failures")
    return {n: int(getattr(stats, n)) for n in names if isinstance(getattr(stats, n, None), int)}


def c_async_with(tasks: int, parallelism: int, argv: list[str], loop: str, tmpdir: str | None) -> Measurement:
    """``async with AsyncExecutor`` in the caller's loop: submit every task, then wait for all."""
    raise_nofile()
    from async_executor import AsyncExecutor

    async def main() -> Measurement:
        with _executor_home(tmpdir, journal=True) as kwargs:
            async with AsyncExecutor(parallelism=parallelism, **kwargs) as ex:
                with Stopwatch() as sw:
                    handles = [await ex.submit(_key(i), argv) for i in range(tasks)]
                    infos = await asyncio.gather(*(h.wait() for h in handles))
        ok = sum(1 for info in infos if info.state == "success")
        return {"wall": sw.elapsed, "ok": ok, "failed": tasks - ok}

    return _run_on(loop, main)


def c_subprocess_run(tasks: int, argv: list[str]) -> Measurement:
    """Sequential ``subprocess.run`` loop (what a naive executor does)."""
    failed = 0
    with Stopwatch() as sw:
        for _ in range(tasks):
            rc = subprocess.run(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,
                check=False,
            ).returncode
            failed += rc != 0
    return {"wall": sw.elapsed, "ok": tasks - failed, "failed": failed}


def c_bare_asyncio(tasks: int, parallelism: int, argv: list[str]) -> Measurement:
    """The software limit: ``create_subprocess_exec`` workers, pidfd child watcher."""
    raise_nofile()
    _use_pidfd_watcher()
    todo = iter(range(tasks))
    failed = 0

    async def worker() -> None:
        nonlocal failed
        for _ in todo:  # the iterator is shared: P workers pull from one queue
            proc = await asyncio.create_subprocess_exec(
                *argv,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,
            )
            failed += await proc.wait() != 0

    async def main() -> float:
        with Stopwatch() as sw:
            await asyncio.gather(*(worker() for _ in range(min(parallelism, tasks))))
        return sw.elapsed

    wall = _run_on("asyncio", main)
    return {"wall": wall, "ok": tasks - failed, "failed": failed}


class _RawSpawner:
    """``os.posix_spawn(setsid=True)`` + ``os.pidfd_open`` + ``loop.add_reader``: no Popen."""

    def __init__(self, argv: Sequence[str]) -> None:
        exe = shutil.which(argv[0])
        if exe is None:
            raise FileNotFoundError(argv[0])
        self.exe = exe
        self.argv = list(argv)
        self.devnull = os.open(os.devnull, os.O_RDWR)
        self.actions = [(os.POSIX_SPAWN_DUP2, self.devnull, fd) for fd in (0, 1, 2)]
        self.in_flight = 0
        self.ok = 0
        self.failed = 0
        self.pids: list[int] = []

    def spawn(self, loop: asyncio.AbstractEventLoop, on_exit: Callable[[], None]) -> None:
        pid = os.posix_spawn(self.exe, self.argv, os.environ, file_actions=self.actions, setsid=True)
        pidfd = os.pidfd_open(pid)
        self.in_flight += 1
        self.pids.append(pid)
        loop.add_reader(pidfd, self._reap, loop, pidfd, pid, on_exit)

    def _reap(
        self, loop: asyncio.AbstractEventLoop, pidfd: int, pid: int, on_exit: Callable[[], None]
    ) -> None:
        loop.remove_reader(pidfd)
        os.close(pidfd)
        _, status = os.waitpid(pid, 0)
        self.in_flight -= 1
        if os.waitstatus_to_exitcode(status) == 0:
            self.ok += 1
        else:
            self.failed += 1
        on_exit()


def c_raw_spawn(tasks: int, parallelism: int, argv: list[str], loop: str) -> Measurement:
    """The physical-ish limit for Python on this box."""
    raise_nofile()
    sp = _RawSpawner(argv)

    async def main() -> float:
        ev_loop = asyncio.get_running_loop()
        done = ev_loop.create_future()
        launched = 0

        def refill() -> None:
            nonlocal launched
            while sp.in_flight < parallelism and launched < tasks:
                launched += 1
                sp.spawn(ev_loop, refill)
            if sp.ok + sp.failed == tasks and not done.done():
                done.set_result(None)

        with Stopwatch() as sw:
            refill()
            await done
        return sw.elapsed

    wall = _run_on(loop, main)
    return {"wall": wall, "ok": sp.ok, "failed": sp.failed}


def c_xargs(tasks: int, parallelism: int, argv: list[str]) -> Measurement:
    """``xargs -P N`` over the same command: whole-process wall time."""
    lines = "".join(f"{i}\n" for i in range(tasks)).encode()
    wall, rc = time_process(xargs_argv(parallelism, argv), stdin=lines)
    # xargs exits 123 if any invocation failed
    return {"wall": wall, "ok": tasks if rc == 0 else 0, "failed": 0 if rc == 0 else tasks}


# ----------------------------------------------------------------------- in-flight measurements


def c_inflight_facade(
    tasks: int,
    argv: list[str],
    loop: str,
    tmpdir: str | None,
    journal: bool,
    steady_samples: int,
    ramp_timeout: float,
) -> Measurement:
    """``tasks`` long sleeps in flight through the façade: sync()/heartbeat() latency, RSS/task.

    The executor process's own RSS growth is the target's number; helper processes the executor
    starts (a supervisor that owns the tasks) are measured beside it.
    """
    raise_nofile()
    from async_executor import AsyncExecutor

    task_comm = os.path.basename(argv[0])[:15]

    def census() -> tuple[int, int]:
        """(tasks in flight, RSS KiB of our other descendants: helper processes)."""
        procs = descendants()
        n = sum(1 for p in procs if p.comm == task_comm)
        return n, sum(rss_kb(p.pid) for p in procs if p.comm != task_comm)

    with _executor_home(tmpdir, journal) as kwargs:
        ex = AsyncExecutor(parallelism=tasks, loop=loop, **kwargs)
        ex.start()
        time.sleep(0.2)  # let the engine thread settle before the baseline reading
        rss0, (_, helpers0) = rss_kb(), census()
        ramp_sync, ramp_hb, steady = LatencyRecorder(), LatencyRecorder(), LatencyRecorder()
        early_exits = 0
        for i in range(tasks):
            ex.queue_command(_key(i), argv)
        deadline = time.monotonic() + ramp_timeout
        next_check = 0.0
        in_flight = 0
        with Stopwatch() as ramp:
            while time.monotonic() < deadline:
                ramp_hb.call(ex.heartbeat)
                ramp_sync.call(ex.sync)
                early_exits += sum(1 for st, _ in ex.get_event_buffer().values() if st in TERMINAL)
                if time.monotonic() >= next_check:
                    in_flight, _ = census()
                    if in_flight >= tasks:
                        break
                    next_check = time.monotonic() + 0.25
                time.sleep(0.001)
        rss_peak = rss_kb()
        for _ in range(steady_samples):
            steady.call(ex.sync)
            time.sleep(0.0005)
        rss_peak = max(rss_peak, rss_kb())
        in_flight_end, helpers_peak = census()
        counters = _counters(ex.statistics())
        with Stopwatch() as term:
            ex.terminate()
    return {
        "wall": ramp.elapsed,
        "in_flight": in_flight,
        "in_flight_after_steady": in_flight_end,
        "early_exits": early_exits,
        "rss_before_kb": rss0,
        "rss_peak_kb": rss_peak,
        "kb_per_task": (rss_peak - rss0) / max(in_flight, 1),
        "helpers_rss_before_kb": helpers0,
        "helpers_rss_peak_kb": helpers_peak,
        "helpers_kb_per_task": (helpers_peak - helpers0) / max(in_flight, 1),
        "sync_ramp_us": ramp_sync.summary_us(),
        "heartbeat_ramp_us": ramp_hb.summary_us(),
        "sync_steady_us": steady.summary_us(),
        "terminate_s": term.elapsed,
        **counters,
    }


def c_inflight_bare(tasks: int, argv: list[str], kind: str) -> Measurement:
    """Parent RSS per in-flight task for the baselines (``kind``: ``bare`` or ``raw``)."""
    raise_nofile()
    if kind == "bare":
        _use_pidfd_watcher()

    async def main() -> Measurement:
        ev_loop = asyncio.get_running_loop()
        all_spawned, all_reaped = asyncio.Event(), asyncio.Event()
        spawned = 0
        sp = _RawSpawner(argv)
        waiters: list[asyncio.Task[None]] = []

        def on_exit() -> None:
            if sp.in_flight == 0:
                all_reaped.set()

        async def one() -> None:
            nonlocal spawned
            proc = await asyncio.create_subprocess_exec(
                *argv,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,
            )
            spawned += 1
            if spawned == tasks:
                all_spawned.set()
            await proc.wait()

        rss0 = rss_kb()
        with Stopwatch() as ramp:
            if kind == "raw":
                for _ in range(tasks):
                    sp.spawn(ev_loop, on_exit)
            else:
                waiters = [asyncio.create_task(one()) for _ in range(tasks)]
                await all_spawned.wait()
        await asyncio.sleep(0.2)
        rss_peak = rss_kb()
        in_flight = len(descendants())
        kill_descendants()
        if kind == "raw":
            await all_reaped.wait()
        else:
            await asyncio.gather(*waiters)
        return {
            "wall": ramp.elapsed,
            "in_flight": in_flight,
            "rss_before_kb": rss0,
            "rss_peak_kb": rss_peak,
            "kb_per_task": (rss_peak - rss0) / max(in_flight, 1),
        }

    try:
        return _run_on("asyncio", main)
    finally:
        kill_descendants()


REGISTRY: dict[str, Callable[..., Measurement]] = {
    "facade": c_facade,
    "async_with": c_async_with,
    "subprocess_run": c_subprocess_run,
    "bare_asyncio": c_bare_asyncio,
    "raw_spawn": c_raw_spawn,
    "xargs": c_xargs,
    "inflight_facade": c_inflight_facade,
    "inflight_bare": c_inflight_bare,
}

# ========================================================================= the run (parent side)


@dataclass(frozen=True)
class Config:
    true_tasks: int
    sleep_tasks: int
    sleep_s: float
    repeats: int
    #: sleep workload: scale N down so that N / P * d stays under this many seconds
    sleep_cap_s: float
    inflight_tasks: int
    inflight_samples: int
    parallelisms: tuple[int, ...]
    ballast_mb: int

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> Config:
        quick = args.quick
        return cls(
            true_tasks=args.true_tasks or (500 if quick else 2000),
            sleep_tasks=args.sleep_tasks or (1000 if quick else 5000),
            sleep_s=0.1,
            repeats=args.repeats or (1 if quick else 3),
            sleep_cap_s=1.0 if quick else 3.0,
            inflight_tasks=args.inflight_tasks or (1000 if quick else 5000),
            inflight_samples=500 if quick else 2000,
            parallelisms=tuple(int(p) for p in args.parallelism.split(",")),
            ballast_mb=args.ballast_mb,
        )


def _which(cmd: str) -> str:
    path = shutil.which(cmd)
    if path is None:
        raise SystemExit(f"{cmd!r} not found on PATH")
    return path


def _core_digest() -> dict[str, str]:
    """Which ``async_executor`` the numbers belong to (the tree may be uncommitted)."""
    spec = importlib.util.find_spec("async_executor")
    if spec is None or not spec.submodule_search_locations:
        return {}
    root = Path(next(iter(spec.submodule_search_locations)))
    digest = hashlib.sha256()
    for f in sorted(root.rglob("*.py")):
        digest.update(f.relative_to(root).as_posix().encode() + b"\0" + f.read_bytes())
    return {"path": str(root), "sha256": digest.hexdigest()[:16]}


def _core_status() -> str | None:
    """``None`` when ``from async_executor import AsyncExecutor`` works, else why not."""
    try:
        from async_executor import AsyncExecutor  # noqa: F401
    except Exception as exc:  # any failure: skip the core contenders
        return f"{type(exc).__name__}: {exc}"
    return None


def _contenders(
    workload: str, parallelism: int, core: bool, uvloop: bool, loop: str, tmpdir: str | None
) -> list[tuple[str, dict[str, Any]]]:
    """(name, child params) for every contender that applies."""
    out: list[tuple[str, dict[str, Any]]] = []
    if core:
        for name, idle, journal, supervisor_only, lazy in (
            ("facade-tight", 0.0, True, False, False),
            ("facade-idle1ms", 0.001, True, False, False),
            ("facade-idle1ms/supervisor-only", 0.001, False, True, False),
            ("facade-idle1ms/no-journal", 0.001, False, False, False),
            ("facade-idle1ms/lazy-logs", 0.001, False, False, True),
            ("facade-idle1ms/journal-lazy-logs", 0.001, True, False, True),
        ):
            params = {"idle_sleep": idle, "loop": loop, "tmpdir": tmpdir, "journal": journal}
            if supervisor_only:
                params["supervisor_only"] = True
            if lazy:
                params["lazy_logs"] = True
            out.append((name, {"fn": "facade", **params}))
        for lp in ("asyncio", "uvloop") if uvloop else ("asyncio",):
            out.append((f"async-with/{lp}", {"fn": "async_with", "loop": lp, "tmpdir": tmpdir}))
    if workload == "true" and parallelism == 1:
        out.append(("subprocess.run", {"fn": "subprocess_run"}))
    out.append(("bare-asyncio", {"fn": "bare_asyncio"}))
    for lp in ("asyncio", "uvloop") if uvloop else ("asyncio",):
        out.append((f"raw-spawn/{lp}", {"fn": "raw_spawn", "loop": lp}))
    out.append(("xargs", {"fn": "xargs"}))
    return out


def _runner(case: Case) -> Measurement:
    params = dict(case.params)
    fn = params.pop("fn")
    if fn != "subprocess_run":
        params["parallelism"] = case.parallelism
    return run_isolated(SCRIPT, fn, {"tasks": case.tasks, **params}, case.timeout)


def _spawn_limit(suite: Suite, parallelisms: Sequence[int]) -> tuple[float, str]:
    """The best median ``/bin/true`` rate a raw spawn loop (Python or xargs) reached in this run."""
    best: tuple[float, str] | None = None
    for p in parallelisms:
        for name in ("raw-spawn/asyncio", "raw-spawn/uvloop", "xargs"):
            r = suite.find("true", p, name)
            if r is not None and r.rate is not None and (best is None or r.rate > best[0]):
                best = (r.rate, f"{name} /bin/true P={p}, this run")
    return best or (DESIGN_SPAWN_LIMIT, "C posix_spawn loop, DESIGN.md section 5")


BASELINES = (("vs bare", "bare-asyncio"), ("vs raw", "raw-spawn/asyncio"), ("vs xargs", "xargs"))


NO_JOURNAL = "facade-idle1ms/no-journal"
FACADES = (
    "facade-tight",
    "facade-idle1ms",
    "facade-idle1ms/supervisor-only",
    "facade-idle1ms/no-journal",
    "facade-idle1ms/lazy-logs",
    "facade-idle1ms/journal-lazy-logs",
)


def _ratios(suite: Suite, labels: dict[str, str]) -> list[Ratio]:
    """The issue's targets (and a few informative ratios), from medians of this run."""
    t, s = labels["true"], labels["sleep"]
    found = [
        *(
            r
            for fac in FACADES
            for r in (
                suite.ratio(t, "true", 64, fac, "bare-asyncio", target=">= 0.90"),
                suite.ratio(t, "true", 64, fac, "xargs", target=">= 1.0"),
            )
        ),
        # durability cost: wall with journal + supervisor (and with the supervisor alone) over none
        suite.ratio(t, "true", 64, "facade-idle1ms", NO_JOURNAL, kind="wall", target="<= 1.15"),
        suite.ratio(t, "true", 64, "facade-idle1ms/supervisor-only", NO_JOURNAL, kind="wall"),
        suite.ratio(t, "true", 64, "async-with/asyncio", "bare-asyncio"),
        suite.ratio(t, "true", 64, "async-with/uvloop", "bare-asyncio"),
        suite.ratio(t, "true", 64, "bare-asyncio", "raw-spawn/asyncio"),
        suite.ratio(t, "true", 64, "raw-spawn/uvloop", "raw-spawn/asyncio"),
        *(
            suite.ratio(s, "sleep", 1000, fac, "bare-asyncio", kind="wall", target="<= 1.25")
            for fac in FACADES
        ),
        suite.ratio(s, "sleep", 1000, "async-with/asyncio", "bare-asyncio", kind="wall"),
        suite.ratio(s, "sleep", 1000, "async-with/uvloop", "bare-asyncio", kind="wall"),
    ]
    return [r for r in found if r is not None]


def _inflight(cfg: Config, core: bool, loop: str, tmpdir: str | None) -> list[dict[str, Any]]:
    """Run the in-flight measurements (each in a fresh interpreter), ``repeats`` times each."""
    sleep_argv = [_which("sleep"), "3600"]
    jobs: list[tuple[str, str, dict[str, Any]]] = []
    if core:
        for name, journal in (("facade", True), ("facade/no-journal", False)):
            params = {"loop": loop, "tmpdir": tmpdir, "journal": journal, "ramp_timeout": 60.0}
            jobs.append((name, "inflight_facade", {**params, "steady_samples": cfg.inflight_samples}))
    jobs.append(("bare-asyncio", "inflight_bare", {"kind": "bare"}))
    jobs.append(("raw-spawn/asyncio", "inflight_bare", {"kind": "raw"}))
    rows: list[dict[str, Any]] = []
    for name, fn, params in jobs:
        samples: list[Measurement] = []
        errors: list[str] = []
        for rep in range(cfg.repeats):
            try:
                m = run_isolated(
                    SCRIPT, fn, {"tasks": cfg.inflight_tasks, "argv": sleep_argv, **params}, 180.0
                )
            except Exception as exc:  # report it, keep going
                errors.append(f"{type(exc).__name__}: {exc}"[:300])
                print(f"  in-flight {name} rep {rep + 1}: ERROR {errors[-1]}", file=sys.stderr)
                break
            samples.append(m)
            print(
                f"  in-flight {name} rep {rep + 1}/{cfg.repeats}: {m['in_flight']} in flight,"
                f" {m['kb_per_task']:.1f} KB/task",
                file=sys.stderr,
                flush=True,
            )
        rows.append(
            {
                "contender": name,
                "tasks": cfg.inflight_tasks,
                "samples": samples,
                "errors": errors,
                "median": _median_tree(samples),
            }
        )
    return rows


def _median_tree(samples: Sequence[Measurement]) -> dict[str, Any]:
    """Per-key median of numeric fields (nested one level for latency summaries)."""
    if not samples:
        return {}
    out: dict[str, Any] = {}
    for k, v in samples[0].items():
        if isinstance(v, dict):
            out[k] = {
                kk: percentile([float(s[k][kk]) for s in samples], 50)
                for kk in v
                if all(kk in s[k] for s in samples)
            }
        elif isinstance(v, (int, float)):
            out[k] = percentile([float(s[k]) for s in samples], 50)
    return out


def _inflight_table(rows: Sequence[dict[str, Any]]) -> str:
    headers = [
        "contender",
        "in flight",
        "ramp s",
        "RSS before MB",
        "RSS peak MB",
        "KB/task",
        "helpers MB",
        "helpers KB/task",
        "sync ramp p50/p99 us",
        "heartbeat ramp p50/p99 us",
        "sync steady p50/p99/max us",
    ]
    table: list[list[str]] = []
    for row in rows:
        m = row["median"]
        if not m:
            err = "; ".join(row["errors"])[:100]
            table.append([row["contender"], "ERROR", err] + [""] * (len(headers) - 3))
            continue

        def lat(key: str, fields: Sequence[str] = ("p50", "p99"), m: dict[str, Any] = m) -> str:
            d = m.get(key)
            return "/".join(f"{d[f]:.0f}" for f in fields) if d else "-"

        def num(key: str, scale: float = 1.0, m: dict[str, Any] = m) -> str:
            return f"{m[key] / scale:.1f}" if key in m else "-"

        table.append(
            [
                row["contender"],
                f"{m['in_flight']:.0f}",
                f"{m['wall']:.2f}",
                num("rss_before_kb", 1024),
                num("rss_peak_kb", 1024),
                num("kb_per_task"),
                num("helpers_rss_peak_kb", 1024),
                num("helpers_kb_per_task"),
                lat("sync_ramp_us"),
                lat("heartbeat_ramp_us"),
                lat("sync_steady_us", ("p50", "p99", "max")),
            ]
        )
    return format_table(headers, table, right=set(headers[1:]))


def _inflight_ratios(rows: Sequence[dict[str, Any]]) -> list[Ratio]:
    out: list[Ratio] = []
    for row in rows:
        m, name = row["median"], row["contender"]
        if not m or not name.startswith("facade"):
            continue
        n = f"{m['in_flight']:.0f}"
        out += [
            Ratio(f"{name}: sync() p99 us, {n} in flight, steady", m["sync_steady_us"].get("p99"), "< 500"),
            Ratio(
                f"{name}: sync() p99 us, {n} in flight, while spawning",
                m["sync_ramp_us"].get("p99"),
                note="informative: the engine is busy spawning",
            ),
            Ratio(f"{name}: parent RSS growth KB per in-flight task", m["kb_per_task"], "<= 20"),
            Ratio(
                f"{name}: helper processes' RSS growth KB per in-flight task",
                m.get("helpers_kb_per_task"),
                note="informative: the executor's own helper processes (supervisor)",
            ),
        ]
    return out


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    ap.add_argument("--quick", action="store_true", help="1 repeat, smaller counts")
    ap.add_argument("--out", help="results JSON (default benchmarks/results/core[-quick].json)")
    ap.add_argument("--repeats", type=int, help="repeats per case (default 3, quick 1)")
    ap.add_argument("--parallelism", default="1,8,64,512,1000", help="comma-separated list")
    ap.add_argument("--workloads", default="true,sleep", help="comma-separated: true,sleep")
    ap.add_argument("--only", help="comma-separated substrings: run only matching contenders")
    ap.add_argument("--true-tasks", type=int, help="N for /bin/true (default 2000, quick 500)")
    ap.add_argument("--sleep-tasks", type=int, help="N for sleep 0.1 (default 5000, quick 1000)")
    ap.add_argument("--inflight-tasks", type=int, help="in-flight count (default 5000, quick 1000)")
    ap.add_argument("--no-inflight", action="store_true", help="skip sync()/RSS measurements")
    ap.add_argument("--loop", default="auto", help="façade engine loop: auto|asyncio|uvloop")
    ap.add_argument("--tmpdir", help="where the executor's per-task logs go (default: $TMPDIR)")
    ap.add_argument(
        "--ballast-mb",
        type=int,
        default=0,
        help="make every measuring process hold this much memory (a large scheduler parent)",
    )
    add_eager_cleanup_flag(ap)
    ap.add_argument("--child", help=argparse.SUPPRESS)
    return ap.parse_args(argv)


def _run_workloads(args: argparse.Namespace, cfg: Config, core: bool, notes: list[str]) -> Suite:
    has_uvloop = importlib.util.find_spec("uvloop") is not None
    if not has_uvloop:
        notes.append("uvloop not installed: uvloop contenders skipped")
    only = [s for s in (args.only or "").split(",") if s]
    ballast = {"ballast_mb": cfg.ballast_mb} if cfg.ballast_mb else {}
    if ballast:
        notes.append(f"every measuring process held {cfg.ballast_mb} MB of touched memory")
    suite = Suite(_runner, cfg.repeats)
    for wl in [w for w in args.workloads.split(",") if w]:
        dur = cfg.sleep_s if wl == "sleep" else 0.0
        cmd = [_which("sleep"), f"{dur:g}"] if wl == "sleep" else [_which("true")]
        n_full = cfg.sleep_tasks if wl == "sleep" else cfg.true_tasks
        spawn_rate, _ = _spawn_limit(suite, cfg.parallelisms)
        for p in cfg.parallelisms:
            n = min(n_full, max(p, int(cfg.sleep_cap_s * p / dur))) if dur else n_full
            if n < n_full:
                notes.append(
                    f"{LABELS[wl]} at P={p}: N scaled {n_full} -> {n}"
                    f" (N/P*d would be {n_full / p * dur:.0f} s)"
                )
            ideal = ideal_wall(n, p, dur, spawn_rate) if dur else None
            timeout = 60.0 + 20.0 * max(n / p * dur, n / 500.0)
            suite.run_group(
                [
                    Case(wl, p, name, n, {**params, **ballast, "argv": cmd}, ideal, timeout)
                    for name, params in _contenders(wl, p, core, has_uvloop, args.loop, args.tmpdir)
                    if not only or any(s in name for s in only)
                ]
            )
    # the /bin/true ideals need the spawn limit this very run measured: fill them in now
    spawn_rate, _ = _spawn_limit(suite, cfg.parallelisms)
    for r in suite.results:
        if r.case.workload == "true":
            c = r.case
            r.case = replace(c, ideal=ideal_wall(c.tasks, c.parallelism, 0.0, spawn_rate))
    engine_loops = {
        str(sample["engine_loop"]) for r in suite.results for sample in r.samples if "engine_loop" in sample
    }
    if engine_loops:
        notes.append(f"façade engine loop (--loop {args.loop}): {', '.join(sorted(engine_loops))}")
    notes.extend(_cpu_notes(suite))
    return suite


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse_args(argv)
    if args.child:
        return child_main(REGISTRY, args.child)

    cfg = Config.from_args(args)
    env = environment()
    notes: list[str] = []
    core_problem = _core_status()
    env["async_executor"] = _core_digest()
    if core_problem:
        notes.append(
            f"AsyncExecutor not importable ({core_problem}): core contenders skipped"
            " (pip install . or set PYTHONPATH to the repository root)"
        )
    print(
        f"bench_core: python {env['python']}, {env['cpus']} cpus, load {env['loadavg_start']},"
        f" repeats {cfg.repeats}{' (quick)' if args.quick else ''}",
        flush=True,
    )
    for note in notes:
        print(f"note: {note}", flush=True)

    if args.eager_cleanup:
        notes.append("--eager-cleanup: each executor home was deleted right after its measurement")
    with Stopwatch() as total, deferred_cleanup(args.tmpdir, eager=args.eager_cleanup) as fs_notes:
        notes.extend(fs_notes)
        suite = _run_workloads(args, cfg, core_problem is None, notes)
        inflight = [] if args.no_inflight else _inflight(cfg, core_problem is None, args.loop, args.tmpdir)
    spawn_rate, spawn_src = _spawn_limit(suite, cfg.parallelisms)

    heading("Spawn-bound and sleep-bound workloads (wall = median of repeats)")
    print(f"spawn limit: {spawn_rate:,.0f} tasks/s ({spawn_src}); ideal = max(N/P*d, N/spawn limit)")
    print("vs X: speed relative to contender X at the same workload and P (X wall / this wall)\n")
    print(suite.table(LABELS, BASELINES))
    ratios = _ratios(suite, LABELS)
    if inflight:
        heading(f"{cfg.inflight_tasks} long sleeps in flight (medians of {cfg.repeats})")
        print(_inflight_table(inflight))
        ratios += _inflight_ratios(inflight)
    heading("Ratios against the issue's targets (information, not assertions)")
    for ratio in ratios:
        print(ratio.line())
    if notes:
        heading("Notes")
        for note in notes:
            print(f"- {note}")

    env["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
    env["total_s"] = round(total.elapsed, 1)
    path = write_json(
        args.out or RESULTS_DIR / ("core-quick.json" if args.quick else "core.json"),
        {
            "bench": "core",
            "schema": 1,
            "quick": bool(args.quick),
            "env": env,
            "config": asdict(cfg),
            "spawn_limit": {"tasks_per_s": spawn_rate, "source": spawn_src},
            "results": [r.to_json() for r in suite.results],
            "inflight": [{k: v for k, v in row.items() if k != "samples"} for row in inflight],
            "ratios": [r.to_json() for r in ratios],
            "notes": notes,
        },
    )
    print(f"\nwrote {path} (total {total.elapsed:.0f} s)")
    return 0


if __name__ == "__main__":
    with contextlib.suppress(BrokenPipeError):
        sys.exit(main())
