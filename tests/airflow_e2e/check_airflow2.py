#!/usr/bin/env python
"""Airflow 2.11 check: real TaskInstances through ``AsyncLocalExecutor.execute_async``.

Run from inside a virtualenv with ``apache-airflow==2.11.x`` and this package installed::

    python tests/airflow_e2e/check_airflow2.py

What it does, for real (no mocks): a temporary AIRFLOW_HOME with SQLite, ``airflow db migrate``,
then ``airflow dags test --use-executor`` with ``[core] executor =
async_executor.airflow.AsyncLocalExecutor``: Airflow 2.11 queues each TaskInstance's
``airflow tasks run ... --local`` command on the executor, which runs it as a subprocess.
Optionally (``--scheduler``) the same DAG is also run by a real 2.11 scheduler.

Airflow 2.11 refuses SQLite with any executor that is not single-threaded; the check sets
``_AIRFLOW__SKIP_DATABASE_EXECUTOR_COMPATIBILITY_CHECK=1`` (Airflow's own test flag) to allow it.
Use PostgreSQL or MySQL in production with Airflow 2.

Exits non-zero if any check fails. Every process it starts is stopped by pid.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
DAG_ID = "e2e2_basic"
EXPECTED = {**{f"echo_{i}": "success" for i in range(6)}, "fails": "failed"}
EXECUTOR = "async_executor.airflow.AsyncLocalExecutor"


def log(msg: str) -> None:
    print(f"[af2 {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def airflow_argv() -> list[str]:
    script = Path(sys.executable).parent / "airflow"
    return [str(script)] if script.exists() else [sys.executable, "-m", "airflow"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def make_env(home: Path, executor: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW")}
    env.update(
        {
            "AIRFLOW_HOME": str(home),
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home / 'airflow.db'}",
            "AIRFLOW__CORE__DAGS_FOLDER": str(home / "dags"),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "False",
            "AIRFLOW__CORE__EXECUTOR": executor,
            "AIRFLOW__CORE__PARALLELISM": "8",
            "AIRFLOW__LOGGING__BASE_LOG_FOLDER": str(home / "logs"),
            "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(free_port()),
            "AIRFLOW__SCHEDULER__ENABLE_HEALTH_CHECK": "False",
            "AIRFLOW__ASYNC_EXECUTOR__LOG_DIR": str(home / "async_executor" / "logs"),
            "AIRFLOW__ASYNC_EXECUTOR__STATE_PATH": str(home / "async_executor" / "state.db"),
            "AIRFLOW__ASYNC_EXECUTOR__DRAIN_TIMEOUT": "30",
            # Airflow 2.x refuses SQLite for executors that are not single-threaded; this is
            # Airflow's own switch (used by its test-suite) to allow it.
            "_AIRFLOW__SKIP_DATABASE_EXECUTOR_COMPATIBILITY_CHECK": "1",
            "PYTHONDONTWRITEBYTECODE": "1",
        }
    )
    return env


def run(env: dict[str, str], *args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    proc = subprocess.Popen(
        [*airflow_argv(), *args],
        env=env,
        cwd=env["AIRFLOW_HOME"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        out, _ = proc.communicate(timeout=timeout)
    except BaseException:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        raise
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, None)


def db_query(home: Path, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    """Read Airflow's SQLite metadata DB directly (``dags test`` does not register the DAG for the CLI)."""
    con = sqlite3.connect(f"file:{home / 'airflow.db'}?mode=ro", uri=True, timeout=30)
    try:
        return con.execute(sql, params).fetchall()
    finally:
        con.close()


def runs_of(home: Path) -> list[dict[str, Any]]:
    rows = db_query(home, "SELECT run_id, state FROM dag_run WHERE dag_id = ? ORDER BY id", DAG_ID)
    return [{"run_id": r, "state": st} for r, st in rows]


def states(home: Path, run_id: str) -> dict[str, str]:
    rows = db_query(
        home, "SELECT task_id, state FROM task_instance WHERE dag_id = ? AND run_id = ?", DAG_ID, run_id
    )
    return dict(rows)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--executor", default=EXECUTOR)
    ap.add_argument("--scheduler", action="store_true", help="also run the DAG under a real 2.11 scheduler")
    ap.add_argument("--keep", action="store_true")
    args = ap.parse_args(argv)

    def on_term(signum: int, frame: object) -> None:  # run the finally (stop what we started)
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, on_term)

    failures: list[str] = []

    def check(name: str, ok: bool, detail: str = "") -> None:
        log(f"{'PASS' if ok else 'FAIL'}: {name}" + (f" -- {detail}" if detail else ""))
        if not ok:
            failures.append(name)

    root = Path(tempfile.mkdtemp(prefix="af2-check-"))
    home = root / "home"
    home.mkdir()
    shutil.copytree(HERE / "dags_v2", home / "dags", ignore=shutil.ignore_patterns("__pycache__"))
    env = make_env(home, args.executor)
    scheduler: subprocess.Popen[bytes] | None = None
    try:
        version = subprocess.run(
            [sys.executable, "-c", "import airflow; print(airflow.__version__)"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        log(f"airflow {version}, executor {args.executor}, home {home}")
        check("airflow is 2.x", version.startswith("2."), version)
        t0 = time.monotonic()
        migrate = run(env, "db", "migrate")
        detail = migrate.stdout[-2000:] if migrate.returncode else ""
        check("airflow db migrate", migrate.returncode == 0, detail)
        log(f"db migrate took {time.monotonic() - t0:.1f}s")

        # --- airflow dags test --use-executor ------------------------------------------------
        t0 = time.monotonic()
        test = run(env, "dags", "test", DAG_ID, "--use-executor", timeout=900)
        wall = time.monotonic() - t0
        log(f"dags test --use-executor exited {test.returncode} after {wall:.1f}s")
        check(
            "executor loaded by Airflow 2.11",
            "AsyncLocalExecutor" in test.stdout or "async_executor" in test.stdout,
            test.stdout[-3000:],
        )
        runs = runs_of(home)
        check("one dag run recorded", len(runs) == 1, str(runs))
        if runs:
            run_id = runs[0]["run_id"]
            got = states(home, run_id)
            check("dags test --use-executor: task states", got == EXPECTED, f"got {got}")
            check("dags test --use-executor: run failed (one task fails)", runs[0]["state"] == "failed")
        captured = sorted((home / "async_executor" / "logs").glob("*.log"))
        check("each TaskInstance ran through our executor (captured logs)", len(captured) == len(EXPECTED))
        check(
            "our capture holds the `airflow tasks run` output",
            any("echo_0" in p.name and p.stat().st_size > 0 for p in captured),
            str([p.name for p in captured][:3]),
        )

        # --- optional: a real 2.11 scheduler -------------------------------------------------
        if args.scheduler:
            reser = run(env, "dags", "reserialize", timeout=300)
            check(
                "dags reserialize (register the DAG for the scheduler)",
                reser.returncode == 0,
                reser.stdout[-1500:],
            )
            logf = open(home / "scheduler.log", "wb")  # noqa: SIM115
            scheduler = subprocess.Popen(
                [*airflow_argv(), "scheduler"],
                env=env,
                cwd=home,
                stdout=logf,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
            logf.close()
            log(f"started scheduler pid={scheduler.pid}")
            trig = run(env, "dags", "trigger", DAG_ID, "-r", "sched_run", timeout=120)
            check("dags trigger", trig.returncode == 0, trig.stdout[-1500:])
            t0 = time.monotonic()
            state = None
            while time.monotonic() - t0 < 600 and scheduler.poll() is None:
                found = [r for r in runs_of(home) if r["run_id"] == "sched_run"]
                state = found[0]["state"] if found else None
                if state in ("success", "failed"):
                    break
                time.sleep(2)
            log(f"scheduler run finished as {state} after {time.monotonic() - t0:.1f}s")
            got = states(home, "sched_run")
            check("2.11 scheduler: task states", got == EXPECTED, f"got {got}")
            # the executor's own events: running (with the pid) and terminal, for every task
            pattern = re.compile(
                r"Received executor event with state (\w+) for task instance .*task_id='(\w+)'"
            )
            t0 = time.monotonic()
            seen: dict[str, set[str]] = {}
            while time.monotonic() - t0 < 120:
                seen = {}
                for st, task in pattern.findall((home / "scheduler.log").read_text(errors="replace")):
                    seen.setdefault(task, set()).add(st)
                if all(seen.get(t, set()) & {"success", "failed"} for t in EXPECTED):
                    break
                time.sleep(1)
            terminal = {t: sorted(seen.get(t, set())) for t in EXPECTED}
            # A task that starts and ends between two scheduler syncs (warm tasks can) reports
            # only its terminal event: the façade's terminal event replaces the running one.
            check(
                "2.11 scheduler received a terminal executor event for every task, running events too",
                all(set(v) & {"success", "failed"} for v in terminal.values())
                and any("running" in v for v in terminal.values()),
                str(terminal),
            )
            supervisor_logs = "".join(
                q.read_text(errors="replace") for q in (home / "async_executor").glob("supervisor-*.log")
            )
            check(
                "2.11 scheduler: tasks were forked warm (`python -m airflow` from the fork server)",
                "fork server pid" in supervisor_logs
                and " ready " in supervisor_logs
                and "could not preload" not in supervisor_logs,
                supervisor_logs[-1500:],
            )
            # `airflow tasks run --local` exits 0 when the task fails (the task records its own
            # state), so the executor's terminal event for `fails` is "success", as with
            # LocalExecutor; the TI state checked above is what counts.
    finally:
        if scheduler is not None and scheduler.poll() is None:
            os.kill(scheduler.pid, signal.SIGTERM)
            try:
                t0 = time.monotonic()
                scheduler.wait(90)
                log(f"scheduler exited {time.monotonic() - t0:.1f}s after SIGTERM")
            except subprocess.TimeoutExpired:
                check("scheduler exits on SIGTERM", False)
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(scheduler.pid, signal.SIGKILL)
                scheduler.wait()
        if scheduler is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(scheduler.pid, signal.SIGTERM)
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
        else:
            log(f"kept {root}")

    print("RESULT:", "FAILED " + ", ".join(failures) if failures else "OK", flush=True)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
