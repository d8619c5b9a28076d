"""The private event-loop thread that drives the engine for synchronous callers.

Like aiosqlite's connection thread, it is a daemon thread owning one event loop. It is a
daemon (unlike anyio's blocking portal, whose worker thread the interpreter joins at exit)
so that a program that forgets ``end()`` still exits: the executor's ``atexit`` hook then
terminates the tasks instead of leaving them running unattended.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


def new_event_loop(kind: str) -> tuple[asyncio.AbstractEventLoop, str]:
    """A fresh loop of ``kind`` (``"auto"``, ``"asyncio"`` or ``"uvloop"``) and its name."""
    if kind in ("auto", "uvloop"):
        try:
            import uvloop
        except ImportError:
            if kind == "uvloop":
                raise ImportError(
                    'loop="uvloop" needs uvloop: pip install "async-local-executor[uvloop]"'
                ) from None
        else:
            return uvloop.new_event_loop(), "uvloop"
    return asyncio.new_event_loop(), "asyncio"


class LoopThread:
    """One event loop running forever in a daemon thread."""

    def __init__(self, kind: str) -> None:
        self._kind = kind
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self.loop_name = ""
        self.thread = threading.Thread(target=self._main, name="async-executor-loop", daemon=True)

    def start(self) -> asyncio.AbstractEventLoop:
        self.thread.start()
        self._ready.wait()
        if self._error is not None:
            raise self._error
        assert self.loop is not None
        return self.loop

    def _main(self) -> None:
        try:
            loop, self.loop_name = new_event_loop(self._kind)
        except BaseException as exc:  # reported to start()'s caller
            self._error = exc
            self._ready.set()
            return
        self.loop = loop
        asyncio.set_event_loop(loop)
        self._ready.set()
        try:
            loop.run_forever()
        finally:
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

    def call(self, func: Callable[..., T], *args: Any) -> T:
        """Run the plain function ``func(*args)`` on the loop and wait for its result."""

        async def runner() -> T:
            return func(*args)

        return self.run(runner)

    def run(self, func: Callable[..., Coroutine[Any, Any, T]], *args: Any) -> T:
        """Run the coroutine function ``func(*args)`` on the loop and wait for its result."""
        assert self.loop is not None
        return asyncio.run_coroutine_threadsafe(func(*args), self.loop).result()

    def stop(self) -> None:
        if self.loop is not None and self.thread.is_alive():
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join()
