"""Warm start benchmark: ``python -m MOD`` tasks launched cold (exec) vs warm (fork server).

    python benchmarks/bench_warm.py [--quick] [--tasks N] [--parallelism P] [--out FILE]

MOD is a small module written to a temporary directory. It imports Airflow's task SDK (the
modules an Airflow 3 task imports before its own code: ``execute_workload``, the task runner
and the supervisor) when Airflow is installed, or, without Airflow, a set of heavy standard
library packages (said in the notes). Its first statement after the imports prints one JSON
line: the wall clock at which task code starts, and its own memory from /proc.

Both contenders run the same N tasks through ``AsyncExecutor`` (no journal, so the fork
server is in this process and can be measured), one contender after the other, repeated:

* ``cold``: no warm start; every task execs a fresh interpreter;
* ``warm``: ``WarmStart(modules=(MOD,), preload=<the imports>)``; the fork server is started
  (and its imports paid) before the timed part, as a long-running executor would have it.

Printed: launches per second (N / wall), launch-to-first-line latency (task code start minus
the engine's launch time; median and p90), the fork server's memory, and each child's PSS
and private memory at start. Ratios warm / cold are from the same run. Target (issue 6): warm
launch >= 10x faster to "task code starts" than cold; printed, never asserted.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _harness import environment, format_table, heading, percentile, write_json

RESULTS_DIR = Path(__file__).resolve().parent / "results"
AIRFLOW_IMPORTS = (
    "airflow.sdk.execution_time.execute_workload",
    "airflow.sdk.execution_time.task_runner",
    "airflow.sdk.execution_time.supervisor",
)
STDLIB_IMPORTS = ("asyncio", "email.mime.multipart", "http.client", "decimal", "logging.handlers", "json")
MODULE = "warm_bench_task"
TASK_CODE = """\
import json, os, sys, time
{imports}
started = time.time()
mem = {{}}
with open("/proc/self/smaps_rollup") as handle:
    for line in handle:
        parts = line.split()
        if len(parts) == 3 and parts[2] == "kB":
            mem[parts[0].rstrip(":")] = int(parts[1])
print(json.dumps({{"t": started, "pss_kb": mem.get("Pss", 0),
                  "private_kb": mem.get("Private_Clean", 0) + mem.get("Private_Dirty", 0)}}), flush=True)
"""


def module_imports() -> tuple[tuple[str, ...], str]:
    if importlib.util.find_spec("airflow") is not None:
        try:
            if importlib.util.find_spec("airflow.sdk.execution_time.execute_workload") is not None:
                return AIRFLOW_IMPORTS, "airflow task SDK"
        except ModuleNotFoundError:
            pass
    return STDLIB_IMPORTS, "standard library (Airflow 3 not installed)"


def run_batch(
    workdir: Path, tasks: int, parallelism: int, warm: Any, imports: tuple[str, ...]
) -> dict[str, Any]:
    from async_executor import AsyncExecutor, TaskState

    log_dir = workdir / f"logs-{'warm' if warm else 'cold'}-{time.monotonic_ns()}"
    ex = AsyncExecutor(
        parallelism=parallelism, log_dir=log_dir, state_path=None, warm_start=warm, loop="asyncio"
    )
    ex.start()
    server_mem = None
    try:
        if warm is not None:  # start the fork server before timing, as a running executor has it
            ex.queue_command("prewarm", [sys.executable, "-m", MODULE], cwd=str(workdir))
            _drain(ex)
        started = time.perf_counter()
        for i in range(tasks):
            ex.queue_command(i, [sys.executable, "-m", MODULE], cwd=str(workdir))
        events = _drain(ex)
        wall = time.perf_counter() - started
        forkserver = getattr(ex._engine.backend, "forkserver", None)
        if forkserver is not None:
            server_mem = forkserver.memory()
        warm_launched = ex.statistics().warm_launched
    finally:
        ex.end()
    latencies, pss, private = [], [], []
    failed = 0
    for key, (state, info) in events.items():
        if key == "prewarm":
            continue
        if state is not TaskState.SUCCESS or info.log_path is None:
            failed += 1
            continue
        first = json.loads(Path(info.log_path).read_text().splitlines()[0])
        latencies.append(first["t"] - (info.started_at or first["t"]))
        pss.append(first["pss_kb"])
        private.append(first["private_kb"])
    return {
        "wall_s": wall,
        "rate": tasks / wall,
        "latency_median_s": statistics.median(latencies) if latencies else None,
        "latency_p90_s": percentile(latencies, 90) if latencies else None,
        "child_pss_kb": statistics.median(pss) if pss else None,
        "child_private_kb": statistics.median(private) if private else None,
        "server": server_mem,
        "failed": failed,
        "warm_launched": warm_launched,
    }


def _drain(ex: Any) -> dict[Any, Any]:
    events: dict[Any, Any] = {}
    while ex.queued_tasks or ex.running:
        ex.heartbeat()
        events.update(ex.get_event_buffer())
        time.sleep(0.005)
    ex.sync()
    events.update(ex.get_event_buffer())
    return events


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="fewer tasks, one repeat")
    ap.add_argument("--tasks", type=int, default=None, help="tasks per batch (default 40; --quick 12)")
    ap.add_argument("--parallelism", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=None)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    tasks = args.tasks or (12 if args.quick else 40)
    repeats = args.repeats or (1 if args.quick else 3)

    from async_executor import WarmStart

    imports, what = module_imports()
    heading(f"warm start: {tasks} x python -m {MODULE} ({what}), parallelism {args.parallelism}")
    results: dict[str, list[dict[str, Any]]] = {"cold": [], "warm": []}
    with tempfile.TemporaryDirectory(prefix="bench-warm-") as tmp:
        workdir = Path(tmp)
        (workdir / f"{MODULE}.py").write_text(
            TASK_CODE.format(imports="\n".join(f"import {m}" for m in imports))
        )
        warm = WarmStart(modules=(MODULE,), preload=imports)
        for repeat in range(repeats):
            for name, config in (("cold", None), ("warm", warm)):
                os.chdir(workdir)  # the fork server finds MODULE on its sys.path[0]
                result = run_batch(workdir, tasks, args.parallelism, config, imports)
                results[name].append(result)
                print(
                    f"  repeat {repeat + 1} {name:4}: {result['rate']:7.1f} launches/s, "
                    f"first line after {result['latency_median_s'] * 1000:8.1f} ms (median), "
                    f"failed {result['failed']}, warm {result['warm_launched']}",
                    flush=True,
                )

    def med(name: str, field: str) -> float:
        return statistics.median(r[field] for r in results[name] if r[field] is not None)

    rows = []
    for name in ("cold", "warm"):
        rows.append(
            [
                name,
                f"{med(name, 'rate'):.1f}",
                f"{med(name, 'latency_median_s') * 1000:.1f}",
                f"{med(name, 'latency_p90_s') * 1000:.1f}",
                f"{med(name, 'child_pss_kb') / 1024:.1f}",
                f"{med(name, 'child_private_kb') / 1024:.1f}",
            ]
        )
    print(
        format_table(
            [
                "launcher",
                "launches/s",
                "first line ms (median)",
                "p90 ms",
                "child PSS MB",
                "child private MB",
            ],
            rows,
            right={"launches/s", "first line ms (median)", "p90 ms", "child PSS MB", "child private MB"},
        )
    )
    server = next((r["server"] for r in results["warm"] if r["server"]), None)
    if server:
        print(
            f"fork server: PSS {server['pss_kb'] / 1024:.1f} MB, "
            f"private {server['private_kb'] / 1024:.1f} MB, RSS {server['rss_kb'] / 1024:.1f} MB"
        )
    speedup = med("cold", "latency_median_s") / med("warm", "latency_median_s")
    rate = med("warm", "rate") / med("cold", "rate")
    ratios = [
        {"name": "time to task code start, cold / warm (median)", "value": speedup, "target": ">= 10"},
        {"name": "launches per second, warm / cold", "value": rate, "target": None},
    ]
    for ratio in ratios:
        target = f"   (target {ratio['target']})" if ratio["target"] else ""
        print(f"  {ratio['name']}: {ratio['value']:.1f}x{target}")
    out = args.out or RESULTS_DIR / ("warm-quick.json" if args.quick else "warm.json")
    payload = {
        "bench": "warm",
        "config": {
            "tasks": tasks,
            "parallelism": args.parallelism,
            "repeats": repeats,
            "imports": list(imports),
        },
        "env": environment(),
        "notes": [f"task module imports: {what}"],
        "quick": args.quick,
        "results": results,
        "fork_server_memory": server,
        "ratios": ratios,
    }
    print(f"wrote {write_json(out, payload)}")
    failed = sum(r["failed"] for rs in results.values() for r in rs)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
