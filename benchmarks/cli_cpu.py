"""Where the CLI's time goes: its own CPU against its children's, per build, alternating runs.

    python benchmarks/cli_cpu.py [--lines 2000] [--runs 4] [-j 64] CHECKOUT [CHECKOUT ...]

Each run starts a fresh interpreter with ``PYTHONPATH=CHECKOUT`` that runs
``async-executor run -j J --quiet`` on N ``/bin/true`` lines in-process and reports, from
``getrusage``: wall time, the CLI process's own CPU (all its threads) and its children's CPU.
Builds alternate run by run, so load drifts hit them alike. Medians are printed.

On a machine whose cores the children nearly saturate, wall time follows total CPU: this
shows how much of it is the CLI's own.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from _harness import deferred_cleanup, scratch_dir

# Runs inside the measured interpreter: the CLI's main in-process, then getrusage as JSON.
_PROBE = """
import json, resource, sys, time
from async_executor._cli import main
started = time.perf_counter()
try:  # embedded: ends with SystemExit (the console script ends with os._exit)
    main(["run", "-j", sys.argv[1], "--quiet", sys.argv[2]])
except SystemExit as exc:
    code = exc.code
wall = time.perf_counter() - started
me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
print(json.dumps({"wall": wall, "user": me.ru_utime, "sys": me.ru_stime,
                  "children": kids.ru_utime + kids.ru_stime, "code": code}), file=sys.stderr)
"""


def measure(checkout: str, jobs: Path, parallelism: int) -> dict[str, float]:
    with scratch_dir("cli-cpu-") as home:
        env = dict(os.environ, PYTHONPATH=checkout, ASYNC_EXECUTOR_HOME=home)
        env.pop("PYTHONDONTWRITEBYTECODE", None)  # as installed: imports read bytecode
        proc = subprocess.run(
            [sys.executable, "-c", _PROBE, str(parallelism), str(jobs)],
            env=env,
            capture_output=True,
            text=True,
            check=False,
        )
    lines = proc.stderr.strip().splitlines()
    if not lines or not lines[-1].startswith("{"):
        raise SystemExit(
            f"{checkout}: the probe reported nothing (exit {proc.returncode}): {proc.stderr[-2000:]}"
        )
    result: dict[str, float] = json.loads(lines[-1])
    if result["code"] not in (0, None):
        raise SystemExit(f"{checkout}: the CLI exited {result['code']}: {proc.stderr[-2000:]}")
    return result


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    ap.add_argument("checkouts", nargs="+", help="source trees to import async_executor from")
    ap.add_argument("--lines", type=int, default=2000)
    ap.add_argument("--runs", type=int, default=4)
    ap.add_argument("-j", "--jobs", type=int, default=64)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="cli-cpu-jobs-") as tmp:
        jobs = Path(tmp) / "jobs.txt"
        jobs.write_text("true\n" * args.lines)
        runs: dict[str, list[dict[str, float]]] = {c: [] for c in args.checkouts}
        with deferred_cleanup() as fs_notes:  # see its docstring: deleting logs slows later creates
            print(*fs_notes, sep="\n")
            for _ in range(args.runs):
                for checkout in args.checkouts:
                    runs[checkout].append(measure(checkout, jobs, args.jobs))
    print(f"{args.lines} /bin/true lines, -j {args.jobs}, medians of {args.runs} (seconds)")
    print(f"{'checkout':40s} {'wall':>6s} {'user':>6s} {'sys':>6s} {'children':>9s}")
    for checkout, results in runs.items():
        med = {k: statistics.median(r[k] for r in results) for k in ("wall", "user", "sys", "children")}
        cells = " ".join(f"{med[k]:6.3f}" for k in ("wall", "user", "sys"))
        print(f"{checkout[-40:]:40s} {cells} {med['children']:9.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
