"""Sessions: tests, compat (other Pythons), lint, bench (performance), airflow (end to end)."""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import sys
import tempfile

import nox
from nox.command import CommandFailed

nox.options.sessions = ["tests", "compat", "lint"]

#: Airflow releases the integration is checked against, each in its own virtualenv.
AIRFLOW_VERSIONS = ["3.3.2", "2.11.2"]
nox.options.default_venv_backend = "venv"

TEST_DEPS = ["pytest>=8", "pytest-timeout", "hypothesis>=6.100", "anyio>=4.4"]
HERE = os.path.dirname(os.path.abspath(__file__))
#: The Python versions the package supports (pyproject.toml's classifiers).
SUPPORTED_PYTHONS = ("3.10", "3.11", "3.12", "3.13")


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


def _runs(python: str, version: str) -> bool:
    """Whether ``python`` starts and is ``version`` (a pyenv shim of a version not selected fails)."""
    try:
        out = subprocess.run(
            [python, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
            capture_output=True,
            text=True,
            timeout=30,
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return out.returncode == 0 and out.stdout.strip() == version


def other_pythons() -> dict[str, str]:
    """``version -> interpreter`` for each supported version but nox's own that this machine has,
    on PATH (``python3.X``) or installed by pyenv."""
    own = f"{sys.version_info[0]}.{sys.version_info[1]}"
    pyenv_root = os.environ.get("PYENV_ROOT") or os.path.expanduser("~/.pyenv")
    found = {}
    for version in SUPPORTED_PYTHONS:
        if version == own:
            continue
        candidates = [shutil.which(f"python{version}")]
        candidates += sorted(
            glob.glob(os.path.join(pyenv_root, "versions", f"{version}.*", "bin", f"python{version}"))
        )
        for candidate in candidates:
            if candidate and _runs(candidate, version):
                found[version] = candidate
                break
    return found


@nox.session(venv_backend="none")
def compat(session: nox.Session) -> None:
    """The test suite on every other supported Python this machine has (``tests`` runs nox's own).

    Each gets a virtualenv of its own under ``.nox/compat-X.Y``. With none found it says so and
    passes: a fresh machine with one Python is still fully tested by ``tests``.
    """
    pythons = other_pythons()
    if not pythons:
        session.log(f"no other supported Python ({', '.join(SUPPORTED_PYTHONS)}) found on PATH or in pyenv")
        return
    ensure_gnu_parallel(session)
    for version, python in pythons.items():
        venv = os.path.join(HERE, ".nox", f"compat-{version}")
        bin_dir = os.path.join(venv, "bin")
        if not os.path.exists(os.path.join(bin_dir, "python")):
            session.run(python, "-m", "venv", venv, external=True)
        session.log(f"Python {version}: {python}")
        env = {"PATH": bin_dir + os.pathsep + os.environ.get("PATH", ""), "VIRTUAL_ENV": venv}
        session.run(
            os.path.join(bin_dir, "python"),
            "-m",
            "pip",
            "install",
            "--quiet",
            "-e",
            ".",
            *TEST_DEPS,
            external=True,
            env=env,
        )
        session.run(
            os.path.join(bin_dir, "python"),
            "-m",
            "pytest",
            "--timeout=300",
            "-p",
            "no:cacheprovider",
            *session.posargs,
            external=True,
            env=env,
        )


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
