"""The exceptions raised by async_executor, each with a stdlib base."""

from __future__ import annotations


class AsyncExecutorError(Exception):
    """Base class for every error this package raises on purpose."""


class InvalidTaskError(AsyncExecutorError, ValueError):
    """A task's key, command or options are not acceptable (raised at the call that made it)."""


class DuplicateTaskError(AsyncExecutorError, ValueError):
    """A task with the same key is already queued or running."""


class ExecutorClosedError(AsyncExecutorError, RuntimeError):
    """The executor was ended or terminated and takes no more work."""


class ExecutorNotStartedError(AsyncExecutorError, RuntimeError):
    """The executor must be started (``start()`` or ``async with``) first."""
