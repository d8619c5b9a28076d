"""Provider metadata for Airflow's ``apache_airflow_provider`` entry point (imports nothing heavy).

The entry point (in ``pyproject.toml``)::

    [project.entry-points.apache_airflow_provider]
    provider_info = "async_executor._airflow.provider:get_provider_info"
"""

from __future__ import annotations

from typing import Any

EXECUTOR_PATH = "async_executor.airflow.AsyncLocalExecutor"


def get_provider_info() -> dict[str, Any]:
    from importlib.metadata import PackageNotFoundError, version

    try:
        dist_version = version("async-local-executor")
    except PackageNotFoundError:  # running from a source tree
        dist_version = "0.0.0"
    return {
        "package-name": "async-local-executor",
        "name": "Async local executor",
        "description": "A high-concurrency local executor built on asyncio subprocesses.",
        "versions": [dist_version],
        "executors": [EXECUTOR_PATH],
        "config": {
            "async_executor": {
                "description": "Settings of async_executor.airflow.AsyncLocalExecutor.",
                "options": {
                    "state_path": {
                        "description": "SQLite journal of task state, used to adopt running tasks "
                        "after a scheduler restart. Empty: {AIRFLOW_HOME}/async_executor/state.db "
                        "({AIRFLOW_HOME}/async_executor/teams/TEAM/state.db for a team's executor).",
                        "version_added": "0.1.0",
                        "type": "string",
                        "example": None,
                        "default": "",
                    },
                    "log_dir": {
                        "description": "Directory of each task process's captured stdout/stderr. Empty: "
                        "{AIRFLOW_HOME}/async_executor/logs (under teams/TEAM/ for a team's executor).",
                        "version_added": "0.1.0",
                        "type": "string",
                        "example": None,
                        "default": "",
                    },
                    "workload_dir": {
                        "description": "0700 directory of one-shot workload files (they hold a JWT "
                        "and are removed as soon as the task process has read them). Empty: "
                        "{AIRFLOW_HOME}/async_executor/workloads (under teams/TEAM/ for a team's executor).",
                        "version_added": "0.1.0",
                        "type": "string",
                        "example": None,
                        "default": "",
                    },
                    "kill_grace": {
                        "description": "Seconds between SIGTERM and SIGKILL when a task is stopped.",
                        "version_added": "0.1.0",
                        "type": "float",
                        "example": None,
                        "default": "5.0",
                    },
                    "drain_timeout": {
                        "description": "Seconds end() waits for running tasks before stopping them "
                        "(or, with a journal, leaving them for the next scheduler to adopt).",
                        "version_added": "0.1.0",
                        "type": "float",
                        "example": None,
                        "default": "10.0",
                    },
                    "warm_start": {
                        "description": "Fork task processes from a server that has Airflow's task path "
                        "imported, instead of starting a fresh interpreter for each.",
                        "version_added": "0.1.0",
                        "type": "boolean",
                        "example": None,
                        "default": "True",
                    },
                    "warm_preload": {
                        "description": "Extra modules (comma-separated) for the fork server to import.",
                        "version_added": "0.1.0",
                        "type": "string",
                        "example": "pandas,my_company.operators",
                        "default": "",
                    },
                    "warm_fork_scheduler": {
                        "description": "Start the fork server by forking the scheduler when the "
                        "executor starts (as LocalExecutor forks its workers), so that it shares the "
                        "scheduler's imported Airflow instead of importing its own copy in a fresh "
                        "interpreter. If it dies, a fresh one is started. Default: True on "
                        "Airflow 3, False on 2.x (its task processes use the metadata database).",
                        "version_added": "0.1.0",
                        "type": "boolean",
                        "example": "False",
                        "default": "",
                    },
                    "exit_wake": {
                        "description": "Airflow 3 with warm start: let the task supervisor notice its "
                        "task process's exit at once (works around a race that delays it by "
                        "[workers] min_heartbeat_interval).",
                        "version_added": "0.1.0",
                        "type": "boolean",
                        "example": None,
                        "default": "True",
                    },
                    "queue_ahead": {
                        "description": "Tasks held beyond [core] parallelism in the executor's own queue, "
                        "started the moment a slot frees, highest priority_weight first. Empty: any number "
                        "on Airflow 3 (as its LocalExecutor), as many as parallelism on 2.x; 0: none.",
                        "version_added": "0.1.0",
                        "type": "integer",
                        "example": "32",
                        "default": "",
                    },
                },
            }
        },
    }
