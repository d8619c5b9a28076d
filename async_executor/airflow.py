"""Apache Airflow integration: ``[core] executor = async_executor.airflow.AsyncLocalExecutor``.

Needs Airflow 2.11 or 3.x: ``pip install "async-local-executor[airflow]"``. Settings come from
the ``[async_executor]`` section of Airflow's config (``state_path``, ``log_dir``,
``workload_dir``, ``kill_grace``, ``drain_timeout``); see ``docs/airflow.md``.
"""

from __future__ import annotations

import importlib.util

INSTALL_HINT = 'pip install "async-local-executor[airflow]"'

if importlib.util.find_spec("airflow") is None:  # pragma: no cover - exercised without Airflow
    raise ImportError(
        f"async_executor.airflow needs Apache Airflow, which is not installed: {INSTALL_HINT}",
        name="airflow",
    )

try:
    from ._airflow._executor import AsyncLocalExecutor, Settings
except ImportError as exc:  # Airflow is there but too old / broken
    if (exc.name or "").startswith("airflow"):
        raise ImportError(
            f"async_executor.airflow could not import Apache Airflow ({exc}); it needs Airflow 2.11 or 3.x: "
            f"{INSTALL_HINT}",
            name=exc.name,
        ) from exc
    raise

__all__ = ["INSTALL_HINT", "AsyncLocalExecutor", "Settings"]
