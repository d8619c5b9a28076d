"""Tasks long enough to outlive a scheduler restart (adoption scenario)."""

from __future__ import annotations

import datetime

from airflow.providers.standard.operators.bash import BashOperator
from airflow.sdk import DAG

with DAG(
    dag_id="e2e_adopt",
    schedule=None,
    start_date=datetime.datetime(2024, 1, 1),
    catchup=False,
    default_args={"retries": 2, "retry_delay": datetime.timedelta(seconds=1)},
    tags=["async_executor_e2e"],
):
    for i in range(4):
        BashOperator(
            task_id=f"long_{i}",
            bash_command='echo "try ${AIRFLOW_CTX_TRY_NUMBER:-?}"; sleep 40  # e2e-marker-adopt',
        )
