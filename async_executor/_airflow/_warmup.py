"""What the fork server does once for Airflow 3 tasks, so that each forked task need not.

Imported last by the fork server (Airflow 3 with warm start), after the task SDK.

* **The API client's TLS context.**  Each task's supervisor builds an httpx client whose
  ``ssl.SSLContext`` loads the CA bundle (profiled: ~0.2 s of CPU per task).  Airflow caches
  it per process, which LocalExecutor's long-lived workers enjoy and fresh forks do not;
  building it here puts it in every fork's cache.

* **The task supervisor's logging set-up.**  ``execute_workload`` first calls the task SDK's
  ``configure_logging(output=sys.stdout.buffer, json_output=True)``: a ``logging.dictConfig``
  that walks every logger of the process, one cache clear over all loggers per logger
  (profiled: the largest piece of a warm task supervisor's own CPU).  The function is cached
  per process on its arguments, so calling it here, with the same arguments, makes each
  fork's call a cache hit: the fork inherits the finished set-up, writing to the same
  ``sys.stdout`` object, whose descriptor 1 is by then the task's log file.  A task whose
  environment changes the ``[logging]`` options (or the config file) configures itself.

* **The database pool it inherited.**  ``execute_workload`` disposes of the ORM engine and
  sessions its process has (a fork server forked from the scheduler has the scheduler's,
  their descriptors already on /dev/null), so each fork did it again; done here, each finds
  nothing to dispose of.

* **Exit wake** (``[async_executor] exit_wake``, on by default).  Airflow's task supervisor
  (``airflow.sdk.execution_time.supervisor``) loops on ``selector.select(timeout)`` over the
  task process's sockets and looks for the process's exit after each wake-up.  The task
  process closes those sockets on its way out, a moment before the kernel makes it waitable.
  When the supervisor reads the last EOF inside that moment (measured on these machines: in
  50-70% of exits of a small forked process; 51 of 80 warm Airflow tasks, 10 of 80 under
  LocalExecutor), its next ``select`` has nothing registered and sleeps
  ``[workers] min_heartbeat_interval`` (5 s by default) before it looks again: the task is
  done, its state already sent, but its slot stays taken.  This module wraps
  ``ActivitySubprocess._service_subprocess``: when no socket is left to watch and the exit
  has not been seen yet, it waits for the exit on a pidfd, bounded by the same
  ``max_wait_time``, then hands over to Airflow's code, which reaps the process and reads its
  status as before.
"""

from __future__ import annotations

import functools
import logging
import os
import select
import sys
from collections.abc import Callable
from typing import Any

__all__ = [
    "dispose_inherited_orm",
    "install_exit_wake",
    "prebuild_client_tls",
    "preconfigure_task_logging",
    "wait_for_exit",
    "wake_on_exit",
]

logger = logging.getLogger("async_executor.airflow")

_MARK = "_async_executor_exit_wake"
_LOGGING_MARK = "_async_executor_preconfigured"


def wait_for_exit(pid: int, timeout: float) -> bool:
    """Block until process ``pid`` (a child of ours) has exited, at most ``timeout`` seconds.

    Does not reap it.  False when it is still running at the deadline, or when the platform has
    no pidfd (the caller then waits the way it would have anyway).
    """
    try:
        fd = os.pidfd_open(pid)
    except (AttributeError, OSError):
        return False
    try:
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        return bool(poller.poll(max(0.0, timeout) * 1000.0))
    finally:
        os.close(fd)


def wake_on_exit(original: Callable[..., Any]) -> Callable[..., Any]:
    """Wrap a task supervisor's ``_service_subprocess`` so that it returns when the task exits."""
    if getattr(original, _MARK, False):
        return original

    @functools.wraps(original)
    def _service_subprocess(self: Any, max_wait_time: float, *args: Any, **kwargs: Any) -> Any:
        watched = self.selector.get_map()
        nothing_to_read = watched is not None and not watched
        # Nothing left to read and no exit seen: the only thing to wait for is the exit itself.
        if (
            nothing_to_read
            and getattr(self, "_exit_code", 0) is None
            and wait_for_exit(self.pid, max_wait_time)
        ):
            max_wait_time = 0
        return original(self, max_wait_time, *args, **kwargs)

    setattr(_service_subprocess, _MARK, True)
    return _service_subprocess


def install_exit_wake() -> bool:
    """Wrap Airflow's task supervisor (once); False when this Airflow has no such step."""
    try:
        from airflow.sdk.execution_time.supervisor import ActivitySubprocess
    except ImportError:
        return False
    original = getattr(ActivitySubprocess, "_service_subprocess", None)
    if original is None or not callable(original):
        logger.warning("exit_wake: this Airflow's task supervisor has no _service_subprocess; not installed")
        return False
    ActivitySubprocess._service_subprocess = wake_on_exit(original)
    return True


def prebuild_client_tls() -> bool:
    """Fill the task SDK client's TLS-context cache the way each task would; False if absent."""
    try:
        from airflow.sdk.api import client
    except ImportError:
        return False
    build = getattr(getattr(client, "Client", None), "_get_ssl_context_cached", None)
    if build is None:
        return False
    build(getattr(client, "API_SSL_CA_FILE_PATH", None), getattr(client, "API_SSL_CERT_PATH", None))
    return True


def dispose_inherited_orm() -> bool:
    """Dispose of the ORM engine and sessions as each task's supervisor would; False if none."""
    try:
        from airflow import settings
    except ImportError:
        return False
    dispose = getattr(settings, "dispose_orm", None)
    if dispose is None:
        return False
    dispose(do_log=False)
    return True


def _logging_env() -> dict[str, str]:
    """The environment the task SDK's logging set-up depends on."""
    return {
        name: value
        for name, value in os.environ.items()
        if name.startswith(("AIRFLOW__LOGGING__", "AIRFLOW_CONFIG", "AIRFLOW_HOME"))
        or name in ("NO_COLOR", "FORCE_COLOR")
    }


def preconfigure_task_logging() -> bool:
    """Do a task supervisor's logging set-up once, here; False when this Airflow differs.

    Replaces ``airflow.sdk.log.configure_logging`` with a wrapper that drops the cached
    set-up when the calling process's logging environment is not the one it was made with.
    """
    try:
        from airflow.sdk import log as sdk_log
    except ImportError:
        return False
    configure = getattr(sdk_log, "configure_logging", None)
    if configure is None or getattr(configure, _LOGGING_MARK, False) or not hasattr(configure, "cache_clear"):
        return False
    made_with = _logging_env()
    # execute_workload's call, keyword for keyword: the cache key depends on their order
    configure(output=sys.stdout.buffer, json_output=True)

    @functools.wraps(configure)
    def configure_logging(*args: Any, **kwargs: Any) -> Any:
        if _logging_env() != made_with:
            configure.cache_clear()
        return configure(*args, **kwargs)

    configure_logging.cache_info = configure.cache_info  # type: ignore[attr-defined]
    configure_logging.cache_clear = configure.cache_clear  # type: ignore[attr-defined]
    setattr(configure_logging, _LOGGING_MARK, True)
    sdk_log.configure_logging = configure_logging
    return True


def _exit_wake_enabled() -> bool:
    try:
        from airflow.configuration import conf
    except ImportError:
        return False
    return bool(conf.getboolean("async_executor", "exit_wake", fallback=True))


prebuild_client_tls()
dispose_inherited_orm()
if _exit_wake_enabled():
    install_exit_wake()
# last: from here on the fork server's own stdlib logging goes where a task's would
preconfigure_task_logging()
