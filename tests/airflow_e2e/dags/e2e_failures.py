"""A failing task, a task over its execution_timeout, and a long task the driver marks failed."""

from __future__ import annotations

import datetime

from airflow.providers.standard.operators.bash import BashOperator
from airflow.sdk import DAG

with DAG(
    dag_id="e2e_failures",
    schedule=None,
    start_date=datetime.datetime(2024, 1, 1),
    catchup=False,
    default_args={"retries": 0},
    tags=["async_executor_e2e"],
):
    BashOperator(task_id="ok", bash_command="echo fine")
    BashOperator(task_id="fails", bash_command="echo about to fail; exit 3")
    BashOperator(
        task_id="times_out",
        bash_command="sleep 307  # e2e-marker-timeout",
        execution_timeout=datetime.timedelta(seconds=5),
    )
    BashOperator(task_id="killed", bash_command="sleep 311  # e2e-marker-killed")
