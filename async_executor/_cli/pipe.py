"""GNU parallel's ``--pipe``: standard input cut into blocks of whole records, one block per job.

``cat big.log | async-executor run --pipe grep ERROR`` runs ``grep ERROR`` once per block of
about 1 MiB of the input, each block on its standard input, ``-j`` at a time, as ``parallel
--pipe`` does. A block ends at a record's end: by default a newline (``--recend``), or between
``--recend`` and ``--recstart`` when both are given. With ``-N N``, each block holds N records
instead, whatever their size. With ``--header :`` the input's first line goes before every block.

Blocks are written to files in a private spool directory (``$TMPDIR``, mode 0700) as they are
read, and each job's standard input is its block's file (``--cat``: the file's name is ``{}``
instead, for commands that want a file). A block's file is removed once its job has its final
outcome (after any retries), and the directory when the run ends. Reading stops while
:data:`BACKLOG` blocks wait for a slot, so the spool holds about ``-j`` + 2 blocks.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shlex
from collections.abc import Iterator

import attrs

from .jobs import Job, JobFileError, line_digest
from .template import CommandTemplate

__all__ = ["BACKLOG", "BLOCK_SIZE", "DRY_RUN_FILE", "BlockCutter", "PipeJobs", "parse_separator"]

#: ``--block``'s default, as GNU parallel's: 1 MiB.
BLOCK_SIZE = 1 << 20
#: Blocks read ahead of the running jobs before reading pauses.
BACKLOG = 2
#: What ``{}`` shows for a ``--cat`` block's file in ``--dry-run`` (as GNU parallel shows it).
DRY_RUN_FILE = "$PARALLEL_TMP"


def parse_separator(text: str) -> bytes:
    """``--recend`` / ``--recstart``: C escapes (``\\n``, ``\\t``, ``\\x1e``, ``\\0``) decoded, as
    GNU parallel decodes them. ``ValueError`` for a bad escape."""
    if "\\" in text:
        import codecs

        try:
            text = codecs.decode(text, "unicode_escape")
        except UnicodeError as exc:
            raise ValueError(f"{text!r}: {getattr(exc, 'reason', exc)}") from None
    return text.encode("utf-8", "surrogateescape")


class BlockCutter:
    """Bytes in (in chunks of any size), blocks of whole records out.

    The blocks are the same whatever the chunk boundaries. Size mode (``records`` is
    ``None``): a block ends at the last record end within its first ``size`` bytes, as in GNU
    parallel; a record longer than ``size`` makes a block of its own (GNU parallel grows
    ``--block`` instead, with a warning). Record mode: ``records`` records per block. An empty
    separator (``--recend ''`` without ``--recstart``) makes every byte a record. The last
    block holds what is left at the end of input, if anything.

    Positions are offsets in one buffer, which is compacted once per :meth:`feed` (not once
    per block: ``-N 1`` on short lines makes thousands of blocks per chunk).
    """

    def __init__(
        self,
        *,
        size: int = BLOCK_SIZE,
        records: int | None = None,
        recend: bytes = b"\n",
        recstart: bytes = b"",
        header: bool = False,
    ) -> None:
        if size < 1:
            raise ValueError("the block size must be at least 1 byte")
        if records is not None and records < 1:
            raise ValueError("the number of records per block must be at least 1")
        self.size = size
        self.records = records
        self._recend = recend
        self._separator = recend + recstart
        self._buffer = bytearray()
        #: ``--header :``: the input's first line, put before every block (``None``: not read yet).
        self.header: bytes | None = None if header else b""
        #: Where the block being cut starts.
        self._start = 0
        #: Record mode: the block's last split found so far, and how many splits that is.
        self._scanned = 0
        self._splits = 0
        #: No separator starts before this (a failed search; data since is only appended).
        self._search_from = 0

    def feed(self, data: bytes, *, final: bool = False) -> Iterator[bytes]:
        """The blocks completed by ``data`` (with ``final``: also the rest of the input)."""
        buffer = self._buffer
        buffer += data
        if self.header is None:
            end = buffer.find(b"\n")
            if end < 0 and not final:
                return
            end = len(buffer) if end < 0 else end + 1
            self.header = bytes(buffer[:end])
            del buffer[:end]
        try:
            while self._start < len(buffer):
                cut = self._cut(final)
                if cut is None:
                    return
                block = bytes(buffer[self._start : cut])
                self._start = self._scanned = cut
                self._splits = 0
                yield self.header + block
        finally:
            if self._start:  # compact: drop the blocks given out
                del buffer[: self._start]
                self._scanned -= self._start
                self._search_from = max(0, self._search_from - self._start)
                self._start = 0

    def _next_split(self, after: int) -> int | None:
        """The first split (the end of a record) after position ``after``; ``None`` for now."""
        buffer, separator = self._buffer, self._separator
        if not separator:
            return after + 1 if after < len(buffer) else None
        # a separator that starts before `after` may still split after it (its recend part)
        begin = max(after - len(self._recend) + 1, self._start, self._search_from)
        found = buffer.find(separator, begin)
        if found < 0:
            self._search_from = max(begin, len(buffer) - len(separator) + 1)
            return None
        return found + len(self._recend)

    def _cut(self, final: bool) -> int | None:
        """Where the next block ends (a buffer position), or ``None`` to wait for more input."""
        buffer, start = self._buffer, self._start
        if self.records is not None:
            while self._splits < self.records:
                split = self._next_split(self._scanned)
                if split is None:
                    return len(buffer) if final else None
                self._splits += 1
                self._scanned = split
            return self._scanned
        if len(buffer) - start < self.size:
            return len(buffer) if final else None
        if not self._separator:
            return start + self.size
        # the last split within the block's first `size` bytes; else the first one after them
        limit = start + self.size - len(self._recend) + len(self._separator)
        last = buffer.rfind(self._separator, start, limit)
        if last >= 0 and last + len(self._recend) > start:
            return last + len(self._recend)
        split = self._next_split(start)
        if split is None:
            return len(buffer) if final else None
        return split


class PipeJobs:
    """``--pipe`` input as jobs: each block of ``cutter`` is written to a file of a spool
    directory (made at the first block) and becomes a job of ``template``. The job's LINE is the
    block's number, and its key's hash covers the block's bytes as well as the command.

    ``cat``: the file's name fills ``{}`` (appended without it); otherwise ``{}`` is empty and
    the file is the job's standard input (:attr:`Job.block`). ``dry_run``: no file is written,
    and ``{}`` shows :data:`DRY_RUN_FILE`.
    """

    backlog = BACKLOG

    def __init__(
        self,
        template: CommandTemplate,
        cutter: BlockCutter,
        *,
        cat: bool = False,
        dry_run: bool = False,
        source: str = "<stdin>",
    ) -> None:
        self.template = template
        self.cutter = cutter
        self.cat = cat
        self.dry_run = dry_run
        self.source = source
        #: The spool directory (``None`` until the first block is written).
        self.spool: str | None = None
        #: Blocks made so far (the last one's number).
        self.jobs = 0
        self.lines = 0

    def feed_chunk(self, data: bytes, *, final: bool = False) -> Iterator[Job]:
        """The jobs of the blocks ``data`` completes; :class:`~.jobs.JobFileError` if a block
        cannot be written to the spool."""
        for block in self.cutter.feed(data, final=final):
            self.jobs += 1
            self.lines = self.jobs
            yield self._job(block, self.jobs)

    def _job(self, block: bytes, number: int) -> Job:
        path = DRY_RUN_FILE if self.dry_run else self._write(block, number)
        values = (path,) if self.cat else ()
        job = self.template.job(values, number, number, self.source)
        assert job is not None  # a command is required with --pipe
        text = job.text
        if self.dry_run and self.cat:  # {} unquoted, as GNU parallel prints it
            text = text.replace(shlex.quote(DRY_RUN_FILE), DRY_RUN_FILE)
        # the key's hash covers the block too: the same command on other input is another task
        digest = line_digest(text + "\x00" + hashlib.blake2b(block, digest_size=16).hexdigest())
        kept = None if self.dry_run else path
        return attrs.evolve(job, text=text, digest=digest, block=kept, stdin=not self.cat)

    def _write(self, block: bytes, number: int) -> str:
        try:
            if self.spool is None:
                import tempfile

                self.spool = tempfile.mkdtemp(prefix="async-executor-pipe-")
            path = os.path.join(self.spool, str(number))
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
            try:
                view = memoryview(block)
                while view:
                    view = view[os.write(fd, view) :]
            finally:
                os.close(fd)
        except OSError as exc:
            where = self.spool or "a spool directory"
            raise JobFileError(f"cannot write block {number} to {where}: {exc.strerror or exc}") from None
        return path

    def remove(self, job: Job) -> None:
        """Remove ``job``'s block file (its job has its final outcome)."""
        if job.block is not None:
            with contextlib.suppress(OSError):  # gone already: the spool goes at the end anyway
                os.unlink(job.block)

    def close(self) -> None:
        """Remove the spool directory and what is left in it."""
        if self.spool is not None:
            import shutil

            shutil.rmtree(self.spool, ignore_errors=True)
            self.spool = None
