"""``--line-buffer`` and ``-u``: each task's output printed while it runs (GNU parallel's ``--lb``, ``-u``).

By default a task's output is printed whole when it ends (GNU parallel's ``--group``). With
``--line-buffer`` the tasks write to their log files as usual and the CLI follows those files:
every :data:`POLL_INTERVAL` seconds it prints the complete lines written since its last look,
so lines of different tasks interleave but a line is never cut. When a try ends, the rest of
its output is printed, an unfinished last line included (as GNU parallel does, without adding a
newline). With ``--keep-order`` only the first unfinished job in input order is followed; the
output of later jobs waits in their files until it is their turn. ``--ungroup`` prints what
is new at each look without waiting for the end of a line (a progress bar drawn with ``\r``
shows as it goes); lines of different tasks may then mix.

Reading files rather than pipes keeps the tasks' output in their logs (``async-executor
logs``), costs no descriptor per task, and a task never blocks on a slow reader of our stdout.
"""

from __future__ import annotations

import os
from collections.abc import Callable

from .. import _logs

#: Seconds between two looks at the running tasks' output.
POLL_INTERVAL = 0.05
#: Most bytes read from one file per look (a chatty task cannot starve the others).
READ_LIMIT = 1 << 20

#: ``write(data, to_stderr)``: where printed output goes.
Writer = Callable[[bytes, bool], None]


class _Source:
    """One output file of a try, and how much of it has been printed.

    The file stays open while its try runs: a look at an unchanged file is then one ``fstat``
    (with ``-j 1000``, 20,000 looks a second).
    """

    __slots__ = ("at_start", "fd", "offset", "partial", "path", "to_stderr")

    def __init__(self, path: str, to_stderr: bool) -> None:
        self.path = path
        self.to_stderr = to_stderr
        self.offset = 0
        #: Bytes read after the last newline: printed once the line is complete, or at the end.
        self.partial = b""
        #: Whether the next byte printed starts a line (``--tag`` goes before it).
        self.at_start = True
        self.fd = -1

    def read(self, limit: int | None) -> bytes:
        """New bytes of the file since the last read (at most ``limit``); ``b""`` if none."""
        fd = self.fd
        if fd < 0:
            try:
                fd = self.fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
            except OSError:  # not created yet (a task that has not started), or removed
                return b""
        if limit is not None:
            data, self.offset = _logs.read_at(fd, self.offset, limit)
            return data
        chunks: list[bytes] = []
        while True:
            data, self.offset = _logs.read_at(fd, self.offset, READ_LIMIT)
            if not data:
                return b"".join(chunks)
            chunks.append(data)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


class _Try:
    """One try's output files, and whether the try has ended."""

    __slots__ = ("ended", "sources")

    def __init__(self, paths: list[tuple[str, bool]]) -> None:
        self.sources = [_Source(path, to_stderr) for path, to_stderr in paths]
        self.ended = False


class _Job:
    """A job's tries not yet printed in full, and whether the job has finished."""

    __slots__ = ("done", "tag", "tries")

    def __init__(self, tag: bytes | None) -> None:
        self.tag = tag
        self.tries: list[_Try] = []
        self.done = False


def _tagged(data: bytes, tag: bytes | None, at_start: bool) -> bytes:
    """``data`` with ``tag`` before each line it starts (its first one only if ``at_start``)."""
    if tag is None or not data:
        return data
    lines = data.split(b"\n")
    last = lines.pop()
    out = b"\n".join(tag + line if at_start or i else line for i, line in enumerate(lines))
    if lines:
        out += b"\n"
    if last:
        out += tag + last if at_start or lines else last
    return out


class LineBuffer:
    """Follows the output files of running tries and prints their complete lines.

    A job is known by its position in input order (``order``), which ``keep_order`` follows.
    The caller calls :meth:`poll` every :data:`POLL_INTERVAL` seconds while :attr:`following`.
    """

    def __init__(self, write: Writer, *, keep_order: bool, whole_lines: bool = True) -> None:
        self._write = write
        self._keep_order = keep_order
        #: ``False`` (``--ungroup``): print a running try's output without waiting for line ends.
        self._whole_lines = whole_lines
        self._jobs: dict[int, _Job] = {}
        #: ``keep_order``: the position of the job whose output is printed now.
        self._next = 0

    @property
    def following(self) -> bool:
        """Whether the output of a running try is being followed."""
        return any(not attempt.ended for job in self._live() for attempt in job.tries)

    def started(self, order: int, paths: list[tuple[str, bool]], tag: bytes | None) -> None:
        """A try of job ``order`` began, writing to ``paths`` (``(path, to_stderr)`` each)."""
        job = self._jobs.get(order)
        if job is None:
            job = self._jobs[order] = _Job(tag)
        # A file an earlier try wrote and the new one writes again (``--results``' stderr,
        # one per line) now holds the new try's output only: not printed for both.
        reused = {path for path, _ in paths}
        for attempt in job.tries:
            kept = [source for source in attempt.sources if source.path not in reused or source.offset]
            for source in attempt.sources:
                if source not in kept:
                    source.close()
            attempt.sources = kept
        job.tries.append(_Try(paths))

    def try_ended(self, order: int) -> None:
        """A try of job ``order`` ended: print the rest of its output if the job is followed."""
        job = self._jobs.get(order)
        if job is None or not job.tries:
            return
        job.tries[-1].ended = True
        if not self._keep_order or order == self._next:
            self._drain(job)

    def finished(self, order: int) -> None:
        """Job ``order`` has no more tries."""
        job = self._jobs.get(order)
        if job is None:
            job = self._jobs[order] = _Job(None)
        job.done = True
        for attempt in job.tries:
            attempt.ended = True
        if not self._keep_order:
            self._drain(self._jobs.pop(order))
            return
        while (head := self._jobs.get(self._next)) is not None:  # the head's turn, then the next
            self._drain(head)
            if not head.done:
                return
            del self._jobs[self._next]
            self._next += 1

    def poll(self) -> None:
        """Print the complete lines the followed tries wrote since the last look."""
        for job in self._live():
            self._drain(job)

    def close(self) -> None:
        """The run is over: print everything not printed yet, in order."""
        for order in sorted(self._jobs):
            job = self._jobs.pop(order)
            for attempt in job.tries:
                attempt.ended = True
            self._drain(job)

    def _live(self) -> list[_Job]:
        if not self._keep_order:
            return list(self._jobs.values())
        job = self._jobs.get(self._next)
        return [job] if job is not None else []

    def _drain(self, job: _Job) -> None:
        """Print what ``job``'s tries wrote: all of an ended try (then forget it), the complete
        lines of a running one (a line longer than :data:`READ_LIMIT` goes out in pieces)."""
        while job.tries:
            attempt = job.tries[0]
            for source in attempt.sources:
                data = source.partial + source.read(None if attempt.ended else READ_LIMIT)
                source.partial = b""
                if not attempt.ended and self._whole_lines:
                    cut = data.rfind(b"\n") + 1
                    if cut or len(data) < READ_LIMIT:
                        data, source.partial = data[:cut], data[cut:]
                if data:
                    self._write(_tagged(data, job.tag, source.at_start), source.to_stderr)
                    source.at_start = data.endswith(b"\n")
            if not attempt.ended:
                return
            for source in attempt.sources:
                source.close()
            job.tries.pop(0)
