"""Small asyncio helpers shared by the executor and the CLI.

They replace two uses of anyio on the CLI's start-up path: importing anyio's asyncio backend
costs ~20 ms of a ~140 ms ``async-executor run`` here, and the executor runs on asyncio only.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Awaitable, Coroutine
from typing import Any, TypeVar

from ._loopthread import new_event_loop

T = TypeVar("T")


async def shielded(awaitable: Awaitable[T]) -> T:
    """Await ``awaitable`` to its end even if the calling task is cancelled meanwhile.

    Clean-up (ending the executor, flushing the journal) must finish whatever happens around
    it; a cancellation that arrives meanwhile is raised once it has (what
    ``anyio.CancelScope(shield=True)`` does for the awaited work).
    """
    task = asyncio.ensure_future(awaitable)
    cancelled = False
    while True:
        try:
            result = await asyncio.shield(task)
        except asyncio.CancelledError:
            if task.done():  # the work itself was cancelled (or ended just now): nothing to wait for
                raise
            cancelled = True
            continue
        if cancelled:
            raise asyncio.CancelledError
        return result


def run(main: Coroutine[Any, Any, T], loop: str = "auto") -> T:
    """Run ``main`` to completion on a new event loop of kind ``loop`` (like ``asyncio.run``)."""
    if sys.version_info >= (3, 11):
        with asyncio.Runner(loop_factory=lambda: new_event_loop(loop)[0]) as runner:
            return runner.run(main)
    fresh, _ = new_event_loop(loop)  # pragma: no cover - Python 3.10
    asyncio.set_event_loop(fresh)
    try:
        return fresh.run_until_complete(main)
    finally:
        try:
            _cancel_all(fresh)
            fresh.run_until_complete(fresh.shutdown_asyncgens())
            fresh.run_until_complete(fresh.shutdown_default_executor())
        finally:
            asyncio.set_event_loop(None)
            fresh.close()


def _cancel_all(loop: asyncio.AbstractEventLoop) -> None:  # pragma: no cover - Python 3.10
    """What ``asyncio.run`` does with tasks still pending when the main coroutine returns."""
    pending = asyncio.all_tasks(loop)
    for task in pending:
        task.cancel()
    if pending:
        loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
