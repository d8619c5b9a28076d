"""CLI benchmark: ``async-executor run -j 64`` against GNU parallel and xargs, whole-process wall time.

    python benchmarks/bench_cli.py [--quick] [--out benchmarks/results/NAME.json]

One job file of N ``/bin/true`` lines (default 2,000), run by:

* ``async-executor run -j J FILE`` (each line split with shell rules, run without a shell), with
  its journal and state in a fresh temporary directory per run (``ASYNC_EXECUTOR_HOME``);
* ``parallel --will-cite -j J -a FILE`` (GNU parallel, each line a command);
* ``xargs -P J -I{} -a FILE /bin/true`` (one ``/bin/true`` per line of the same file);

and, in GNU parallel's command-line form, ``/bin/true {}`` over a file of N arguments
(``... run -j J /bin/true {} :::: ARGS`` and ``parallel -j J /bin/true {} :::: ARGS``), against
``xargs -P J -I{} -a ARGS /bin/true {}``: the workload ``/bin/true N``. Its commands have an
argument, and coreutils' ``true`` given one sets up the locale (to answer ``--help``): ~0.2 ms
more per task here, so its rows compare with each other, not with the job file's.

``--pipe`` (workload ``pipe``): M MiB of numbered lines (default 32) on standard input, cut into
1 MiB blocks, each counted by ``wc -l`` (``... run -j J --pipe wc -l`` against ``parallel -j J
--pipe wc -l``); N in its rows is the number of blocks. Untimed first: each must count every line
of a smaller input.

Before timing, each batch runner gets an untimed 50-line job file of ``touch`` commands (in the
command-line form: ``touch {}`` over 50 paths) and must create all 50 files (so a runner that
silently does nothing cannot win). A contender whose
command is not on PATH, or that fails that check, is skipped with a note (GNU parallel on Debian:
``apt-get install -y parallel``). Targets (issue 4): ``async-executor`` >= 3x GNU parallel and
>= 0.9x ``xargs -P 64``; printed as information, never asserted.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from _harness import (
    Case,
    Measurement,
    Ratio,
    Stopwatch,
    Suite,
    add_eager_cleanup_flag,
    deferred_cleanup,
    environment,
    heading,
    reaped_cpu,
    scratch_dir,
    time_process,
    write_json,
    xargs_argv,
)

RESULTS_DIR = Path(__file__).resolve().parent / "results"
WORKLOAD = "true-lines"
#: GNU parallel's command-line form: ``/bin/true {}`` over N arguments.
FORM = "true-args"
#: ``--pipe wc -l`` over M MiB of lines.
PIPE = "pipe"
LABELS = {WORKLOAD: "/bin/true lines", FORM: "/bin/true N", PIPE: "--pipe wc -l"}
BASELINES = (("vs parallel", "gnu-parallel"), ("vs xargs", "xargs"))


def _own_program(word: str) -> str:
    """``python`` and ``async-executor`` as installed for this interpreter, not a PATH lookup.

    On PATH they may be version-manager shims (pyenv's are bash scripts that cost ~50-75 ms
    per start here), which would be timed as the CLI's own start-up. Other words are kept.
    """
    if word == "python":
        return sys.executable
    if word == "async-executor":
        installed = Path(sys.executable).parent / word
        if os.access(installed, os.X_OK):
            return str(installed)
    return word


def _ae_argv(ae_cmd: str, jobs: int) -> list[str] | None:
    """``async-executor run`` argv without the job file, quiet when the CLI offers it;
    ``None`` when it is not installed."""
    base = [_own_program(word) for word in shlex.split(ae_cmd)]
    if not base or shutil.which(base[0]) is None:
        return None
    help_text = subprocess.run([*base, "run", "--help"], capture_output=True, text=True, check=False).stdout
    quiet = ["--quiet"] if "--quiet" in help_text else []
    return [*base, "run", "-j", str(jobs), *quiet]


def _runs_every_line(
    argv_prefix: Sequence[str], work: Path, lines: int = 50, form: bool = False
) -> str | None:
    """Untimed check that a batch runner really runs each line of a job file (``form``: ``touch
    {}`` over a file of paths, GNU parallel's command-line form): ``None`` if so."""
    marks = work / "marks"
    marks.mkdir()
    job_file = work / "verify.txt"
    if form:
        job_file.write_text("".join(f"{marks}/{i}\n" for i in range(lines)))
        argv = [*argv_prefix, "touch", "{}", "::::", str(job_file)]
    else:
        job_file.write_text("".join(f"touch {marks}/{i}\n" for i in range(lines)))
        argv = [*argv_prefix, str(job_file)]
    proc = subprocess.run(
        argv,
        cwd=work,
        env=_private_env(work),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    ran = len(list(marks.iterdir()))
    if ran == lines and proc.returncode == 0:
        return None
    tail = " | ".join((proc.stdout + proc.stderr).strip().splitlines()[-3:])
    return f"ran {ran} of {lines} lines, exit code {proc.returncode}: {tail[:300]}"


def _pipes_every_line(argv: Sequence[str], lines: int = 20_000) -> str | None:
    """Untimed check that ``argv`` (a ``--pipe wc -l`` command) counts every line of its
    input across its blocks: ``None`` if so."""
    data = "".join(f"{n}\n" for n in range(lines)).encode()
    with tempfile.TemporaryDirectory(prefix="bench-cli-verify-") as work:
        proc = subprocess.run(
            [*argv[:-2], "--block", "16k", *argv[-2:]],
            cwd=work,
            env=_private_env(work),
            input=data,
            capture_output=True,
            timeout=60,
            check=False,
        )
    counts = proc.stdout.split()
    total = sum(int(n) for n in counts if n.isdigit())
    if proc.returncode == 0 and total == lines and len(counts) > 1:
        return None
    return f"counted {total} of {lines} lines in {len(counts)} blocks, exit code {proc.returncode}"


def _private_env(work: str | Path) -> dict[str, str]:
    """The environment with the CLI's journal and any other state under ``work``."""
    env = dict(os.environ)
    for var in ("ASYNC_EXECUTOR_HOME", "XDG_STATE_HOME", "XDG_DATA_HOME", "XDG_CACHE_HOME"):
        env[var] = str(work)
    # Time the CLI as installed (pip compiles bytecode): a source tree on PYTHONPATH with
    # PYTHONDONTWRITEBYTECODE set would recompile every module on every run (~30 ms here).
    # The untimed check run writes the bytecode.
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    return env


def _measure(argv: Sequence[str], tasks: int, timeout: float, stdin: bytes | None = None) -> Measurement:
    """One whole-process run in a fresh working and state directory."""
    with scratch_dir("bench-cli-") as work:
        cpu_before = reaped_cpu()
        wall, rc = time_process(argv, stdin=stdin, cwd=work, env=_private_env(work), timeout=timeout)
        cpu = reaped_cpu() - cpu_before
    return {
        "wall": wall,
        "ok": tasks if rc == 0 else 0,
        "failed": 0 if rc == 0 else tasks,
        "rc": rc,
        "tree_cpu_s": cpu,
    }


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    ap.add_argument("--quick", action="store_true", help="1 repeat, 500 lines")
    ap.add_argument("--out", help="results JSON (default benchmarks/results/cli[-quick].json)")
    ap.add_argument("--repeats", type=int, help="repeats per contender (default 3, quick 1)")
    ap.add_argument("--tasks", type=int, help="lines in the job file (default 2000, quick 500)")
    ap.add_argument("-j", "--jobs", type=int, default=64, help="parallelism (default 64)")
    ap.add_argument("--pipe-mib", type=int, help="MiB of input for the --pipe workload (default 32, quick 8)")
    ap.add_argument(
        "--ae-cmd",
        default="async-executor",
        help="how to start the CLI under test (default: the async-executor installed next to this "
        "Python, else the one on PATH)",
    )
    ap.add_argument(
        "--base-cmd",
        help="also time this other build of the CLI in the same run, as contender async-executor-base"
        " (e.g. 'env PYTHONPATH=/tmp/base python -m async_executor'), for before/after ratios",
    )
    add_eager_cleanup_flag(ap)
    args = ap.parse_args(argv)
    tasks = args.tasks or (500 if args.quick else 2000)
    repeats = args.repeats or (1 if args.quick else 3)
    env = environment()
    notes: list[str] = []
    print(
        f"bench_cli: python {env['python']}, {env['cpus']} cpus, load {env['loadavg_start']},"
        f" {tasks} lines, -j {args.jobs}, repeats {repeats}{' (quick)' if args.quick else ''}",
        flush=True,
    )

    true = shutil.which("true") or "/bin/true"
    with tempfile.TemporaryDirectory(prefix="bench-cli-jobs-") as jobs_dir:
        job_file = str(Path(jobs_dir) / "jobs.txt")
        Path(job_file).write_text(f"{true}\n" * tasks)
        #: (workload, contender, argv)
        contenders: list[tuple[str, str, list[str]]] = []
        runners = {
            "async-executor": (_ae_argv(args.ae_cmd, args.jobs), f"{args.ae_cmd!r} is not on PATH"),
            **(
                {
                    "async-executor-base": (
                        _ae_argv(args.base_cmd, args.jobs),
                        f"{args.base_cmd!r} is not on PATH",
                    )
                }
                if args.base_cmd
                else {}
            ),
            "gnu-parallel": (
                ["parallel", "--will-cite", "-j", str(args.jobs), "-a"] if shutil.which("parallel") else None,
                "`parallel` is not on PATH (apt-get install -y parallel)",
            ),
        }
        args_file = str(Path(jobs_dir) / "args.txt")
        Path(args_file).write_text("".join(f"{i}\n" for i in range(tasks)))
        for name, (prefix, why_not) in runners.items():
            if prefix is None:
                notes.append(f"skipped {name}: {why_not}")
                continue
            with tempfile.TemporaryDirectory(prefix="bench-cli-verify-") as work:
                problem = _runs_every_line(prefix, Path(work))
            if problem:
                notes.append(f"skipped {name}: it did not run a test job file properly ({problem})")
                continue
            contenders.append((WORKLOAD, name, [*prefix, job_file]))
        # GNU parallel's command-line form, for the CLI (not its base build) and GNU parallel
        for name, (prefix, _) in runners.items():
            if name == "async-executor-base" or (WORKLOAD, name) not in {c[:2] for c in contenders}:
                continue
            assert prefix is not None
            prefix = prefix[:-1] if prefix[-1] == "-a" else prefix
            with tempfile.TemporaryDirectory(prefix="bench-cli-verify-") as work:
                problem = _runs_every_line(prefix, Path(work), form=True)
            if problem:
                notes.append(
                    f"skipped {name} (command-line form): it did not run a test properly ({problem})"
                )
                continue
            contenders.append((FORM, name, [*prefix, true, "{}", "::::", args_file]))
        # --pipe: the same input cut into 1 MiB blocks, each counted by wc -l
        pipe_mib = args.pipe_mib or (8 if args.quick else 32)
        line_count = 0
        pipe_lines: list[bytes] = []
        while sum(map(len, pipe_lines)) < pipe_mib << 20:
            chunk = "".join(f"{line_count + i:09d} some text to count\n" for i in range(10_000)).encode()
            pipe_lines.append(chunk)
            line_count += 10_000
        pipe_input = b"".join(pipe_lines)
        pipe_blocks = -(-len(pipe_input) // (1 << 20))
        for name, (prefix, _) in runners.items():
            if name == "async-executor-base" or prefix is None:
                continue
            prefix = prefix[:-1] if prefix[-1] == "-a" else prefix
            pipe_argv = [*prefix, "--pipe", "wc", "-l"]
            problem = _pipes_every_line(pipe_argv)
            if problem:
                notes.append(f"skipped {name} (--pipe): {problem}")
                continue
            contenders.append((PIPE, name, pipe_argv))
        contenders.append((WORKLOAD, "xargs", xargs_argv(args.jobs, [true], input_file=job_file)))
        contenders.append((FORM, "xargs", xargs_argv(args.jobs, [true, "{}"], input_file=args_file)))
        commands = {(workload, name): argv for workload, name, argv in contenders}
        timeout = 60.0 + tasks / 50.0
        stdins = {PIPE: pipe_input}
        sizes = {PIPE: pipe_blocks}
        suite = Suite(
            lambda c: _measure(commands[c.workload, c.contender], c.tasks, c.timeout, stdins.get(c.workload)),
            repeats,
        )
        if args.eager_cleanup:
            notes.append("--eager-cleanup: each run's directory was deleted right after it")
        with Stopwatch() as total, deferred_cleanup(eager=args.eager_cleanup) as fs_notes:
            notes.extend(fs_notes)
            suite.run_group(
                [
                    Case(workload, args.jobs, name, sizes.get(workload, tasks), timeout=timeout)
                    for workload, name, _ in contenders
                ]
            )

    heading("CLI: whole-process wall time (median of repeats)")
    print("vs X: speed relative to contender X (X wall / this wall; > 1 is faster)\n")
    print(suite.table(LABELS, BASELINES))
    found = [
        suite.ratio("/bin/true", WORKLOAD, args.jobs, "async-executor", "gnu-parallel", target=">= 3.0"),
        suite.ratio("/bin/true", WORKLOAD, args.jobs, "async-executor", "xargs", target=">= 0.9"),
        suite.ratio("/bin/true N", FORM, args.jobs, "async-executor", "gnu-parallel"),
        suite.ratio("/bin/true N", FORM, args.jobs, "async-executor", "xargs"),
        suite.ratio("--pipe wc -l", PIPE, args.jobs, "async-executor", "gnu-parallel"),
        suite.ratio("/bin/true", WORKLOAD, args.jobs, "gnu-parallel", "xargs"),
        suite.ratio("/bin/true", WORKLOAD, args.jobs, "async-executor-base", "xargs"),
        suite.ratio("/bin/true", WORKLOAD, args.jobs, "async-executor", "async-executor-base"),
    ]
    ratios: list[Ratio] = [r for r in found if r is not None]
    heading("Ratios against the issue's targets (information, not assertions)")
    for ratio in ratios:
        print(ratio.line())
    if not ratios:
        print("(none: a contender is missing)")
    for r in suite.results:
        if r.failed:
            notes.append(f"{r.case.contender} exited non-zero: its runs are not comparable")
    if notes:
        heading("Notes")
        for note in notes:
            print(f"- {note}")

    env["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
    path = write_json(
        args.out or RESULTS_DIR / ("cli-quick.json" if args.quick else "cli.json"),
        {
            "bench": "cli",
            "schema": 1,
            "quick": bool(args.quick),
            "env": env,
            "config": {
                "tasks": tasks,
                "jobs": args.jobs,
                "repeats": repeats,
                "pipe_bytes": len(pipe_input),
                "pipe_lines": line_count,
            },
            "commands": {
                (name if workload == WORKLOAD else f"{name} ({LABELS[workload]})"): [
                    {job_file: "JOBS.txt", args_file: "ARGS.txt"}.get(a, a) for a in argv
                ]
                for workload, name, argv in contenders
            },
            "results": [r.to_json() for r in suite.results],
            "ratios": [r.to_json() for r in ratios],
            "notes": notes,
        },
    )
    print(f"\nwrote {path} (total {total.elapsed:.0f} s)")
    return 0


if __name__ == "__main__":
    with contextlib.suppress(BrokenPipeError):
        sys.exit(main())
