"""A deadline alert with a SyncCallback: the scheduler sends it to the executor as an ExecuteCallback."""

from __future__ import annotations

import datetime
import os
import pathlib

from airflow.providers.standard.operators.bash import BashOperator
from airflow.sdk import DAG, DeadlineAlert, DeadlineReference, SyncCallback

MARKER = os.path.join(os.environ.get("AIRFLOW_HOME", "/tmp"), "callback-marker")


def on_deadline(marker: str, **kwargs: object) -> None:
    pathlib.Path(marker).write_text(f"deadline callback ran in pid {os.getpid()}\n")


with DAG(
    dag_id="e2e_callback",
    schedule=None,
    start_date=datetime.datetime(2024, 1, 1),
    catchup=False,
    deadline=DeadlineAlert(
        reference=DeadlineReference.DAGRUN_QUEUED_AT,
        interval=datetime.timedelta(seconds=1),
        callback=SyncCallback("e2e_callback.on_deadline", kwargs={"marker": MARKER}),
    ),
    tags=["async_executor_e2e"],
):
    BashOperator(task_id="slow", bash_command="sleep 20")
