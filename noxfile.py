"""Sessions: tests, lint, bench (performance), airflow (real Airflow end to end)."""

from __future__ import annotations

import os
import shutil
import tempfile

import nox
from nox.command import CommandFailed

nox.options.sessions = ["tests", "lint"]

#: Airflow releases the integration is checked against, each in its own virtualenv.
AIRFLOW_VERSIONS = ["3.3.2", "2.11.2"]
nox.options.default_venv_backend = "venv"

TEST_DEPS = ["pytest>=8", "pytest-timeout", "hypothesis>=6.100", "anyio>=4.4"]


def ensure_gnu_parallel(session: nox.Session) -> None:
    """GNU parallel, which the CLI is compared with (a test, and ``bench_cli.py``).

    Installed from Debian's packages when it is missing and this machine can (root with
    apt-get); otherwise the comparison test skips and says so.
    """
    if shutil.which("parallel"):
        return
    if not hasattr(os, "geteuid") or os.geteuid() != 0 or not shutil.which("apt-get"):
        session.log("GNU parallel is missing and cannot be installed here: its comparison test will skip")
        return
    env = {"DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "-q", "--no-install-recommends", "parallel"]
    for step in ([install], [["apt-get", "update", "-q"], install]):  # the package lists may be stale
        try:
            for command in step:
                session.run(*command, external=True, env=env, silent=True)
        except CommandFailed:
            continue
        if shutil.which("parallel"):
            return
    session.log("GNU parallel could not be installed from Debian's packages: its comparison test will skip")


@nox.session
def tests(session: nox.Session) -> None:
    """The test suite (real subprocesses), on asyncio with and without uvloop."""
    ensure_gnu_parallel(session)
    session.install("-e", ".", *TEST_DEPS)
    session.run("pytest", "--timeout=300", "-p", "no:cacheprovider", *session.posargs)


@nox.session
def lint(session: nox.Session) -> None:
    """ruff (lint + format check) and mypy --strict."""
    session.install("-e", ".", "ruff>=0.6", "mypy>=1.11", *TEST_DEPS)
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", "async_executor", "tests", "noxfile.py")
    session.run("mypy")


@nox.session
def bench(session: nox.Session) -> None:
    """Benchmarks: ratios against baselines measured in the same run (see benchmarks/README.md)."""
    ensure_gnu_parallel(session)
    session.install("-e", ".")
    # One trash for every benchmark's scratch directories, emptied once at the end: deleting
    # thousands of log files slows file creation for ~30 s after on ext4 without a journal
    # (see benchmarks/_harness.py, deferred_cleanup).
    trash = tempfile.mkdtemp(prefix="bench-trash-")
    env = {"BENCH_TRASH_DIR": trash}
    try:
        session.run("python", "benchmarks/bench_core.py", *session.posargs, env=env)
        session.run("python", "benchmarks/bench_cli.py", *session.posargs, env=env)
        session.run("python", "benchmarks/bench_journal.py", "--quick", env=env)
        # warm start: with Airflow's task SDK installed it measures real Airflow imports
        session.run("python", "benchmarks/bench_warm.py", *session.posargs, env=env)
    finally:
        shutil.rmtree(trash, ignore_errors=True)


@nox.session
@nox.parametrize("airflow_version", AIRFLOW_VERSIONS)
def airflow(session: nox.Session, airflow_version: str) -> None:
    """Real Airflow end to end: scheduler, api-server and dag-processor (3.x), or 2.11 tasks."""
    session.install(f"apache-airflow=={airflow_version}", "-e", ".[airflow]", "pytest", "pytest-timeout")
    if airflow_version.startswith("2."):
        session.run("python", "tests/airflow_e2e/check_airflow2.py", "--scheduler")
        return
    session.run("pytest", "-p", "no:cacheprovider", "--timeout=600", "tests/airflow_e2e/test_adapter_live.py")
    session.run(
        "python",
        "tests/airflow_e2e/run_e2e.py",
        "--executor",
        "async_executor.airflow.AsyncLocalExecutor",
        "--require-adoption",
    )
