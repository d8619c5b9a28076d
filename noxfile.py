"""Sessions: tests, lint, bench (performance), airflow (real Airflow end to end)."""

from __future__ import annotations

import nox

nox.options.sessions = ["tests", "lint"]
nox.options.default_venv_backend = "venv"

TEST_DEPS = ["pytest>=8", "pytest-timeout", "hypothesis>=6.100", "anyio>=4.4"]


@nox.session
def tests(session: nox.Session) -> None:
    """The test suite (real subprocesses), on asyncio with and without uvloop."""
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
    session.install("-e", ".")
    session.run("python", "benchmarks/bench_core.py", *session.posargs)
