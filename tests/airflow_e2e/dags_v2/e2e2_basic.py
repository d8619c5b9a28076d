"""Airflow 2.x DAG for the 2.11 check: a few echo tasks, one failing task downstream-independent."""

from __future__ import annotations

import datetime

from airflow import DAG
from airflow.operators.bash import BashOperator

with DAG(
    dag_id="e2e2_basic",
    schedule=None,
    start_date=datetime.datetime(2024, 1, 1),
    catchup=False,
    default_args={"retries": 0},
    tags=["async_executor_e2e"],
):
    for i in range(6):
        BashOperator(task_id=f"echo_{i}", bash_command=f"echo task {i}")
    BashOperator(task_id="fails", bash_command="echo about to fail; exit 3")
