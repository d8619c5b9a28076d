"""Job lines from a pipe or a terminal, handed to the event loop as they arrive.

``async-executor run -`` on a pipe starts each line when it is read, as GNU parallel does, so
``tail -f queue | async-executor run -`` works as a job queue. A daemon thread does blocking
reads of the descriptor: the descriptor stays blocking (an event loop's pipe transport would
make it non-blocking, which the other readers of a shared pipe or terminal would then see),
and it works the same for pipes, FIFOs and terminals. Each chunk goes to the loop whole; the
loop splits it into lines (or ``--pipe`` blocks). The thread reads the next chunk only once the
loop has taken the last one, so at most one chunk is in flight, and reading pauses while the
loop has many lines (or blocks) not yet started.
"""

from __future__ import annotations

import asyncio
import codecs
import os
import threading
from collections.abc import Callable, Iterator

#: Bytes per read.
CHUNK = 1 << 16

#: What :meth:`str.splitlines` ends a line at (so a streamed file numbers its lines as a read one does).
_BREAKS = frozenset("\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029")


class LineSplitter:
    """Bytes in, complete lines out: the same lines ``data.decode().splitlines()`` would give
    for the whole input, whatever the chunk boundaries (UTF-8 with surrogate escapes; a
    ``\\r`` at the end of a chunk waits for a possible ``\\n``)."""

    def __init__(self) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")("surrogateescape")
        self._pending = ""

    def feed(self, data: bytes, *, final: bool = False) -> Iterator[str]:
        text = self._pending + self._decoder.decode(data, final)
        self._pending = ""
        parts = text.splitlines(keepends=True)
        if parts and not final:
            last = parts[-1]
            if last[-1] not in _BREAKS or last[-1] == "\r":  # unfinished, or maybe half of \r\n
                self._pending = parts.pop()
        for part in parts:
            yield part.rstrip("".join(_BREAKS)) if part[-1:] in _BREAKS else part


class StreamReader:
    """Reads ``fd`` on a daemon thread; ``deliver(chunk, error)`` runs on ``loop`` for each chunk,
    then once with ``b""`` at end of input, or with the ``OSError`` that ended reading."""

    def __init__(
        self,
        fd: int,
        loop: asyncio.AbstractEventLoop,
        deliver: Callable[[bytes, OSError | None], None],
    ) -> None:
        self._fd = fd
        self._loop = loop
        self._deliver = deliver
        self._go = threading.Event()
        self._go.set()
        #: Set when the loop has taken the last chunk handed over (the next read may start).
        self._taken = threading.Event()
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._pump, name="async-executor-stdin", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def pause(self) -> None:
        """Read nothing more until :meth:`resume` (the chunk being read still arrives)."""
        self._go.clear()

    def resume(self) -> None:
        self._go.set()

    def close(self) -> None:
        """Deliver nothing more. A read in progress is abandoned (the thread is a daemon)."""
        self._closed.set()
        self._go.set()
        self._taken.set()

    def _pump(self) -> None:
        while True:
            self._go.wait()
            if self._closed.is_set():
                return
            error: OSError | None = None
            try:
                chunk = os.read(self._fd, CHUNK)
            except OSError as exc:
                chunk, error = b"", exc
            if self._closed.is_set():
                return
            self._taken.clear()
            try:
                self._loop.call_soon_threadsafe(self._handover, chunk, error)
            except RuntimeError:  # the loop is closed: the run is over
                return
            if not chunk:
                return
            self._taken.wait()

    def _handover(self, chunk: bytes, error: OSError | None) -> None:
        try:
            if not self._closed.is_set():
                self._deliver(chunk, error)
        finally:
            self._taken.set()  # after deliver, so a pause() it made holds the next read
