"""40 independent BashOperator tasks: the fan-out used to compare executors' wall time."""

from __future__ import annotations

import datetime

from airflow.providers.standard.operators.bash import BashOperator
from airflow.sdk import DAG

with DAG(
    dag_id="e2e_fanout",
    schedule=None,
    start_date=datetime.datetime(2024, 1, 1),
    catchup=False,
    max_active_tasks=1024,
    tags=["async_executor_e2e"],
):
    for i in range(40):
        BashOperator(task_id=f"echo_{i:02d}", bash_command=f"echo task {i}")
