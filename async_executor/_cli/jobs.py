"""Job files: one command per line, split with shell rules, each with a stable key."""

from __future__ import annotations

import hashlib
import re
import shlex
from collections.abc import Iterable

import attrs

#: Hex digits of the line hash in a job's key.
HASH_CHARS = 8

#: What GNU parallel's ``{%}`` (the job slot) is in a job's ``argv`` until the job starts: it
#: holds NUL, which no argument (so no value or command word) can, so it cannot be mistaken.
SLOT_MARK = "\x00slot\x00"
#: GNU parallel's job slot replacement string, as a job's text shows it.
SLOT_TEXT = "{%}"

#: Words of anything but quotes, backslashes, ``#`` and whitespace, separated by blanks: a line
#: that :func:`shlex.split` would only cut at its blanks (checked, ~20x faster than shlex).
_PLAIN = re.compile(r"[^'\"\\#\s]+(?:[ \t]+[^'\"\\#\s]+)*")
#: One piece of a word: an escaped character, a quoted string, or any other non-blank character.
_UNIT = r"""\\.|'[^']*'|"(?:[^"\\]|\\.)*"|[^\s'"\\]"""
#: The words of a line up to where a comment starts: a ``#`` that begins a word, as in sh (a
#: ``#`` inside a word, as in ``a#b`` or a URL's ``/#top``, is part of it).
_WORDS = re.compile(rf"""\s*(?:(?!\#)(?:{_UNIT})+(?:\s+|$))*""", re.DOTALL)


class JobFileError(ValueError):
    """A job file that cannot be run (nothing is started when this is raised)."""


@attrs.frozen(slots=True)
class Job:
    """One runnable line of a job file."""

    #: 1-based position among the runnable lines (GNU parallel's ``Seq``).
    seq: int
    #: 1-based line number in the file.
    line: int
    #: The line as written (without the newline and surrounding blanks).
    text: str
    #: What runs: the shlex-split line, or ``("/bin/sh", "-c", text)`` with ``--shell``.
    argv: tuple[str, ...]
    #: Short hash of ``text``.
    digest: str
    #: The input values it was made from (GNU parallel's form; empty for a job-file line).
    values: tuple[str, ...] = ()
    #: ``argv`` holds :data:`SLOT_MARK` (``{%}``), to be replaced by the job's slot at its start.
    slotted: bool = False
    #: ``--pipe``: the file holding the job's block of input (removed when the job is done).
    block: str | None = None
    #: ``--pipe``: the block's file is the job's standard input (not, as with ``--cat``, ``{}``).
    stdin: bool = False

    @property
    def tag(self) -> str:
        """What ``--tag`` puts before each output line: the values, or else the line (as GNU
        parallel; a ``--pipe`` block's job has no values, and an empty tag)."""
        return " ".join(self.values) if self.values or self.block is not None else self.text

    def key(self, run: str) -> str:
        """The task key, stable for this line of this run: ``RUN:LINE:HASH``."""
        return f"{run}:{self.line}:{self.digest}"


def line_digest(text: str) -> str:
    return hashlib.blake2b(text.encode("utf-8", "surrogateescape"), digest_size=HASH_CHARS // 2).hexdigest()


class JobParser:
    """Turns job-file lines into :class:`Job` records one at a time, numbering lines and jobs.

    Blank lines and lines whose first non-blank character is ``#`` are skipped. Each other
    line is split into words by sh's rules (:func:`shell_words`; a ``#`` that begins a word
    starts a comment) and runs without a shell, unless ``shell`` is true: then the line is
    passed whole to ``/bin/sh -c`` (after a syntax check of its quotes).
    """

    def __init__(self, *, shell: bool = False, source: str = "<jobs>") -> None:
        self.shell = shell
        self.source = source
        #: Lines seen so far (the last one's 1-based number).
        self.lines = 0
        #: Jobs made so far (the last one's ``seq``).
        self.jobs = 0

    def feed(self, raw: str) -> Job | None:
        """The job on the next line, ``None`` for a blank or comment line; :class:`JobFileError`
        (naming the line) when it cannot be split."""
        self.lines += 1
        number = self.lines
        text = raw.rstrip("\r\n").strip()
        if not text or text.startswith("#"):
            return None
        argv = split_line(text, shell=self.shell, where=f"{self.source}, line {number}")
        if argv is None:
            return None  # only a trailing comment after blanks
        self.jobs += 1
        return Job(seq=self.jobs, line=number, text=text, argv=argv, digest=line_digest(text))


def split_line(text: str, *, shell: bool, where: str) -> tuple[str, ...] | None:
    """What a job line runs: its words by shell rules (``None`` if it is only a comment), or
    ``/bin/sh -c LINE`` with ``shell``. :class:`JobFileError` (starting with ``where``) when it
    cannot be split or holds a NUL byte."""
    if "\x00" in text:
        raise JobFileError(f"{where}: the line contains a NUL byte")
    if _PLAIN.fullmatch(text):
        argv = text.split()
    else:
        try:
            argv = shell_words(text)
        except ValueError as exc:
            raise JobFileError(f"{where}: {exc} in: {text}") from None
    if not argv:
        return None
    return ("/bin/sh", "-c", text) if shell else tuple(argv)


def shell_words(text: str) -> list[str]:
    """``text``'s words by sh's rules: :func:`shlex.split` (POSIX), but with a comment starting
    only at a ``#`` that begins a word, as in sh (``shlex`` would cut ``a#b`` to ``a``).
    ``ValueError`` for an unclosed quote or a trailing backslash."""
    if "#" in text:
        end = _WORDS.match(text).end()  # type: ignore[union-attr]  # it matches the empty string
        if text.startswith("#", end):
            text = text[:end]
    return shlex.split(text)


def parse_jobs(lines: Iterable[str], *, shell: bool = False, source: str = "<jobs>") -> list[Job]:
    """Parse a whole job file (see :class:`JobParser`); raise :class:`JobFileError` naming the
    first bad line."""
    parser = JobParser(shell=shell, source=source)
    return [job for job in map(parser.feed, lines) if job is not None]
