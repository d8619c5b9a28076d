"""Apache Airflow adapter internals (import ``async_executor.airflow`` instead)."""
