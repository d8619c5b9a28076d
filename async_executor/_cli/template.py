"""GNU parallel's command-line form: ``COMMAND... ::: ARG... :::: FILE...`` made into job lines.

``async-executor run gzip -9 {} ::: a.log b.log`` runs ``gzip -9 a.log`` and ``gzip -9 b.log``.
Each combination of the input sources fills the command's replacement strings and becomes one
job line, exactly as if it had been written in a job file: the words of the command are joined
with blanks, each value goes in shell-quoted (one word, whatever it holds), and the line is then
split by shell rules (or given to ``/bin/sh -c`` with ``--shell``). ``--dry-run`` prints these
lines, so its output is a job file of the same run.

Input sources, as in GNU parallel:

* ``::: A B C`` - the arguments themselves; ``:::: FILE...`` - each file is a source of its lines
  (``-``: standard input, read as it arrives when it is the only source and a pipe or terminal);
* several sources: every combination, the first source varying slowest; ``:::+`` / ``::::+``
  link a source to the one before it instead (the n-th values go together, as many as the
  shortest of them has);
* an empty source (``:::`` with no arguments, an empty file): no jobs.

Replacement strings: ``{}`` (the values, blank-separated), ``{.}`` (without the extension),
``{/}`` (basename), ``{//}`` (directory, as ``dirname``), ``{/.}`` (basename without extension),
``{N}`` and ``{N.}``, ``{N/}``, ``{N//}``, ``{N/.}`` (the value of source N, or with ``--colsep``
column N), ``{#}`` (the job's number), ``{%}`` (the job's slot: the lowest number from 1 to -j
that no running job holds, given when the job starts). A command with none of them gets the
values appended. With no command at all, each value is itself a job line.

``-I STR``, ``--er``, ``--bnr``, ``--dnr``, ``--bner``, ``--seqreplace``, ``--slotreplace``
change the replacement strings (:class:`Replacements`). ``--link`` pairs the n-th values of all
sources, ``--trim`` strips blanks from each value (or column: ``--colsep`` trims both ends by
default), ``-r`` drops blank values.

``-n N`` / ``-N N`` (one input source): each job takes up to N values instead of one; ``{}``
is all of them, ``{K}`` the K-th (nothing past the last), ``{.}`` and the like apply to each. With
``-N 0`` each value still makes a job, but none goes into it.
"""

from __future__ import annotations

import itertools
import random
import re
import shlex
from collections.abc import Callable, Iterator, Sequence

import attrs

from .jobs import SLOT_MARK, SLOT_TEXT, Job, JobParser, line_digest, shell_words, split_line

__all__ = [
    "DEFAULT_REPLACEMENTS",
    "SEPARATORS",
    "TRIMS",
    "CommandTemplate",
    "InputSource",
    "Replacements",
    "TemplateError",
    "TemplateParser",
    "check_max_args",
    "combinations",
    "drop_blank",
    "name_columns",
    "parse_command_line",
    "read_source_lines",
    "sources_from_groups",
    "tag_text",
    "take_headers",
    "template_jobs",
    "trimmer",
]

#: The words that start an input source; what follows (up to the next one) are its operands.
SEPARATORS = (":::", ":::+", "::::", "::::+")

_EXTENSION = re.compile(r"\.[^/.]*$")
#: ``-m`` / ``-X`` / ``--xargs``: the longest job line (one argument to ``sh -c`` with
#: ``--shell``, which Linux caps at 128 KiB), with room to spare.
MAX_LINE = 120_000


class TemplateError(ValueError):
    """A command line in GNU parallel's form that cannot be run (nothing is started)."""


def _dirname(value: str) -> str:
    """``dirname`` as GNU parallel's ``{//}`` gives it: ``a`` -> ``.``, ``/a`` -> ``/``."""
    stripped = value.rstrip("/")
    if not stripped:
        return "/" if value else "."
    head = stripped.rpartition("/")[0]
    if not head and "/" not in stripped:
        return "."
    return head.rstrip("/") or "/"


_TRANSFORMS: dict[str, Callable[[str], str]] = {
    "": lambda value: value,
    ".": lambda value: _EXTENSION.sub("", value),
    "/": lambda value: value.rpartition("/")[2],
    "//": _dirname,
    "/.": lambda value: _EXTENSION.sub("", value.rpartition("/")[2]),
}


#: The value transforms, by the name of their replacement string's option: ``{}``, ``{.}``,
#: ``{/}``, ``{//}``, ``{/.}``.
_VALUE_KINDS = ("value", "noext", "base", "dir", "basenoext")
_KIND_TRANSFORM = dict(zip(_VALUE_KINDS, ("", ".", "/", "//", "/."), strict=True))
#: Trimming of input values (``--trim``): what to strip from each.
TRIMS: dict[str, Callable[[str], str] | None] = {
    "n": None,
    "l": str.lstrip,
    "r": str.rstrip,
    "lr": str.strip,
    "rl": str.strip,
}


def trimmer(trim: str | None, colsep: re.Pattern[str] | None) -> Callable[[str], str] | None:
    """``--trim``'s function (``None``: nothing to trim); by default, as in GNU parallel,
    ``lr`` with ``--colsep`` and ``n`` without. :class:`TemplateError` for an unknown ``trim``."""
    if trim is None:
        trim = "n" if colsep is None else "lr"
    if trim not in TRIMS:
        raise TemplateError(f"--trim {trim!r}: use one of {', '.join(TRIMS)}")
    return TRIMS[trim]


def drop_blank(sources: Sequence[InputSource]) -> list[InputSource]:
    """``-r`` (``--no-run-if-empty``): each source without its values that are empty or only
    white space, as GNU parallel skips them (a source streamed from standard input is left to
    :class:`TemplateParser`)."""
    return [
        attrs.evolve(source, values=tuple(value for value in source.values if value.strip()))
        if source.values is not None
        else source
        for source in sources
    ]


@attrs.frozen
class Replacements:
    """The replacement strings (GNU parallel's ``-I``, ``--er``, ``--bnr``, ``--dnr``,
    ``--bner``, ``--seqreplace`` and ``--slotreplace`` change them).

    A value string shaped ``{X}`` also has positional forms ``{NX}`` (``{1}``, ``{2.}``, ...),
    as in GNU parallel; one that is not (``-I ,,``) has none. The text of a string that has
    been replaced is left as it is (with ``-I ,,``, ``{}`` is just ``{}``).
    """

    value: str = "{}"
    noext: str = "{.}"
    base: str = "{/}"
    dir: str = "{//}"
    basenoext: str = "{/.}"
    seq: str = "{#}"
    slot: str = SLOT_TEXT
    #: Every replacement string, longest first (worked out in ``__attrs_post_init__``).
    pattern: re.Pattern[str] = attrs.field(init=False, eq=False, repr=False)
    #: The value strings alone, not positional (``-X`` repeats a word holding one).
    value_pattern: re.Pattern[str] = attrs.field(init=False, eq=False, repr=False)

    def __attrs_post_init__(self) -> None:
        strings = {name: getattr(self, name) for name in (*_VALUE_KINDS, "seq", "slot")}
        seen: dict[str, str] = {}
        for name, text in strings.items():
            if not text:
                raise TemplateError(f"a replacement string cannot be empty ({_OPTION_OF[name]})")
            if "\x00" in text:
                raise TemplateError(f"{text!r}: a replacement string cannot hold a NUL byte")
            if text in seen:
                both = f"{_OPTION_OF[seen[text]]} and {_OPTION_OF[name]}"
                raise TemplateError(f"{text!r} is the replacement string of both {both}")
            seen[text] = name
        # (regex, group name) pairs; a positional form is one character longer than its base
        choices: list[tuple[str, str, int]] = []
        for name, text in strings.items():
            choices.append((re.escape(text), name, len(text)))
            if name in _VALUE_KINDS and len(text) >= 2 and text[0] == "{" and text[-1] == "}":
                inner = re.escape(text[1:-1])
                choices.append((r"\{(?P<n_" + name + r">\d+)" + inner + r"\}", "p_" + name, len(text) + 1))
        choices.sort(key=lambda choice: -choice[2])  # longest first: {/.} before {/} and {.}
        pattern = "|".join(f"(?P<{group}>{regex})" for regex, group, _ in choices)
        longest = sorted(_VALUE_KINDS, key=lambda name: -len(strings[name]))
        values = "|".join(re.escape(strings[name]) for name in longest)
        object.__setattr__(self, "pattern", re.compile(pattern))  # frozen: set once, here
        object.__setattr__(self, "value_pattern", re.compile(values))

    def uses_slot(self, text: str) -> bool:
        """Whether ``text`` asks for the job's slot (``{%}``, or ``--slotreplace``'s string)."""
        return any(match.lastgroup == "slot" for match in self.pattern.finditer(text))

    def positions(self, text: str) -> Iterator[tuple[str, int]]:
        """Each positional string of ``text`` (``{2}``, ``{3/.}``, ...) with its number."""
        for match in self.pattern.finditer(text):
            group = match.lastgroup or ""
            if group.startswith("p_"):
                yield match.group(0), int(match.group("n_" + group[2:]))

    def substitute(
        self, text: str, values: Sequence[str], seq: int, slot: str, quote: Callable[[str], str]
    ) -> str:
        """``text`` with its replacement strings filled from ``values`` (each through ``quote``)."""

        def replace(match: re.Match[str]) -> str:
            group = match.lastgroup or ""
            if group == "seq":
                return str(seq)
            if group == "slot":
                return slot
            chosen: Sequence[str] = values
            if group.startswith("p_"):  # past the last column (--colsep) or value (-n): nothing
                number = int(match.group("n_" + group[2:]))
                group = group[2:]
                chosen = values[number - 1 : number] if number else ()
            transform = _TRANSFORMS[_KIND_TRANSFORM[group]]
            return " ".join(quote(transform(value)) for value in chosen)

        return self.pattern.sub(replace, text)


#: For messages: the option that sets each replacement string.
_OPTION_OF = {
    "value": "-I ({})",
    "noext": "--er ({.})",
    "base": "--bnr ({/})",
    "dir": "--dnr ({//})",
    "basenoext": "--bner ({/.})",
    "seq": "--seqreplace ({#})",
    "slot": "--slotreplace ({%})",
}
#: GNU parallel's own replacement strings.
DEFAULT_REPLACEMENTS = Replacements()


@attrs.frozen
class InputSource:
    """One input source: its values, or ``None`` for standard input read as the run goes."""

    #: For messages: ``:::`` or the file's name.
    name: str
    values: tuple[str, ...] | None
    #: ``:::+`` / ``::::+``: its values go with the previous source's, not across them.
    linked: bool = False


@attrs.frozen
class CommandTemplate:
    """The command part (the words before the first separator), checked and ready to fill."""

    words: tuple[str, ...]
    shell: bool = False
    #: How many input sources there are (``{N}`` must name one of them).
    sources: int = 1
    #: ``--colsep``: each value is split into columns at this pattern, and ``{N}`` is column N
    #: (of all the sources' columns in a row; a column a row lacks gives nothing, as in GNU parallel).
    colsep: re.Pattern[str] | None = None
    #: The command's words joined (worked out once, in ``__attrs_post_init__``).
    template: str = attrs.field(init=False, default="")
    #: Whether the values are appended: the command has no replacement string.
    appends: bool = attrs.field(init=False, default=False)
    #: Whether the command uses ``{%}``, the job slot (known only when the job starts).
    slotted: bool = attrs.field(init=False, default=False)
    #: ``-X``: a word holding ``{}`` (or ``{.}``, ...) is repeated for each of a job's values.
    context: bool = False
    #: The replacement strings (``-I`` and the like change them).
    strings: Replacements = DEFAULT_REPLACEMENTS
    #: ``--trim``: what is stripped from each value (each column with ``--colsep``), a key of
    #: :data:`TRIMS`; ``None``: GNU parallel's default (``lr`` with ``--colsep``, else ``n``).
    trim: str | None = None
    #: The trimming function (from ``trim``).
    _trimmer: Callable[[str], str] | None = attrs.field(init=False, default=None)

    def __attrs_post_init__(self) -> None:
        template = " ".join(self.words)
        object.__setattr__(self, "template", template)  # frozen: set once, here
        object.__setattr__(self, "appends", self.strings.pattern.search(template) is None)
        object.__setattr__(self, "slotted", self.strings.uses_slot(template))
        object.__setattr__(self, "_trimmer", trimmer(self.trim, self.colsep))
        for text, number in self.strings.positions(template):
            if number == 0:
                raise TemplateError(f"{text}: input sources and columns are numbered from 1")
            if self.colsep is None and number > self.sources:
                have = f"{self.sources} input source" + ("s" if self.sources != 1 else "")
                raise TemplateError(f"{text} names input source {number}, but there is {have}")
        if self.words:
            # The command's own quoting, checked once (the values go in quoted, and cannot break it).
            try:
                shell_words(self.fill(("x",) * self.sources, 1))
            except ValueError as exc:
                why = f"the command {template!r} cannot be split by shell rules: {exc}"
                raise TemplateError(why) from None

    def fill(self, values: Sequence[str], seq: int, slot: str = SLOT_TEXT) -> str:
        """The job line for one combination of values (job number ``seq``; ``{%}`` becomes ``slot``)."""
        if not self.words:
            return " ".join(values)  # no command: the values are the line
        if self.appends:
            return " ".join([self.template, *map(shlex.quote, values)])
        substitute = self.strings.substitute
        if self.context and len(values) > 1:
            return "".join(
                " ".join(substitute(part, (value,), seq, slot, shlex.quote) for value in values)
                if self.strings.value_pattern.search(part)
                else substitute(part, values, seq, slot, shlex.quote)
                for part in re.split(r"(\s+)", self.template)
            )
        return substitute(self.template, values, seq, slot, shlex.quote)

    def job(self, values: Sequence[str], seq: int, line: int, source: str) -> Job | None:
        """The job for one combination; ``None`` when a command-less line is blank or a comment.

        :class:`~.jobs.JobFileError` when a command-less value cannot be split, or a value
        holds a NUL byte (an argument cannot).
        """
        if self.colsep is not None:
            values = [column for value in values for column in self.colsep.split(value)]
        if self._trimmer is not None:
            values = [self._trimmer(value) for value in values]
        text = self.fill(values, seq)
        if not self.words:  # the value is a job line: blanks and comments are skipped, as in a file
            text = text.strip()
            if not text or text.startswith("#"):
                return None
        argv = split_line(text, shell=self.shell, where=f"{source}, input {line}")
        if argv is None:
            return None
        if self.slotted:  # the same line with the slot's mark where the text shows {%}
            marked = self.fill(values, seq, SLOT_MARK)
            argv = ("/bin/sh", "-c", marked) if self.shell else tuple(shell_words(marked))
        return Job(
            seq=seq,
            line=line,
            text=text,
            argv=argv,
            digest=line_digest(text),
            values=tuple(values) if self.words else (),
            slotted=self.slotted,
        )


def tag_text(
    tagstring: str, job: Job, slot: str = SLOT_TEXT, strings: Replacements = DEFAULT_REPLACEMENTS
) -> str:
    """``--tagstring``: ``tagstring`` filled for ``job`` as GNU parallel fills it: the values go
    in as they are (a tag is text, not a command), ``{}`` of a job-file line is the line, and a
    source or column a job lacks gives nothing."""
    values = job.values if job.values or job.block is not None else (job.text,)
    return strings.substitute(tagstring, values, job.seq, slot, str)


def parse_command_line(args: Sequence[str]) -> tuple[list[str], list[tuple[str, list[str]]]] | None:
    """Split ``run``'s arguments into the command words and ``(separator, operands)`` groups;
    ``None`` when there is no separator (the arguments are not in GNU parallel's form)."""
    command: list[str] = []
    groups: list[tuple[str, list[str]]] = []
    for arg in args:
        if arg in SEPARATORS:
            groups.append((arg, []))
        elif groups:
            groups[-1][1].append(arg)
        else:
            command.append(arg)
    return (command, groups) if groups else None


def read_source_lines(data: bytes, *, delimiter: str | None = None) -> tuple[str, ...]:
    """A file's lines as values (blank lines included), split as a job file's are
    (:meth:`str.splitlines`, as the streamed reader does too); with a ``delimiter`` (``-d``;
    ``-0`` is NUL), the items it ends instead (``find -print0``: names may hold newlines),
    everything else kept, newlines included, as GNU parallel keeps it."""
    text = data.decode("utf-8", "surrogateescape")
    if delimiter is None:
        return tuple(text.splitlines())
    items = text.split(delimiter)
    if items and items[-1] == "":
        items.pop()  # the delimiter that ends the last item starts no new one
    return tuple(items)


def sources_from_groups(
    groups: Sequence[tuple[str, Sequence[str]]], read_file: Callable[[str], tuple[str, ...] | None]
) -> list[InputSource]:
    """The input sources of the separator groups, files read through ``read_file`` (which
    returns ``None`` for standard input left to be streamed). :class:`TemplateError` for a
    ``::::`` with no file, a link with nothing before it, or standard input named twice."""
    sources: list[InputSource] = []
    stdin_seen = False
    for separator, operands in groups:
        linked = separator.endswith("+")
        if linked and not sources:
            raise TemplateError(f"{separator} links to the input source before it, and there is none")
        if separator.startswith("::::"):
            if not operands:
                raise TemplateError(f"{separator} needs at least one file (- for standard input)")
            for index, name in enumerate(operands):
                if name == "-":
                    if stdin_seen:
                        raise TemplateError("standard input (-) can be an input source only once")
                    stdin_seen = True
                sources.append(InputSource(name, read_file(name), linked and index == 0))
        else:
            sources.append(InputSource(separator, tuple(operands), linked))
    return sources


def take_headers(
    sources: Sequence[InputSource], colsep: re.Pattern[str] | None, trim: str | None = None
) -> tuple[list[InputSource], dict[str, int]]:
    """``--header :``: each source's first value names it (with ``--colsep``, its first line
    names its columns, trimmed as the values are: ``trim``); the sources without it, and each
    name's number for ``{N}`` (columns count on across the sources, as ``{N}`` does with
    ``--colsep``)."""
    strip = trimmer(trim, colsep)
    rest: list[InputSource] = []
    names: dict[str, int] = {}
    number = 0
    for source in sources:
        assert source.values is not None
        if not source.values:
            raise TemplateError(f"--header: input source {source.name} is empty, so it has no header")
        header, *values = source.values
        for column in colsep.split(header) if colsep is not None else [header]:
            name = strip(column) if strip is not None else column
            number += 1
            names.setdefault(name, number)
        rest.append(attrs.evolve(source, values=tuple(values)))
    return rest, names


def name_columns(text: str, names: dict[str, int]) -> str:
    """``text`` with ``{name}`` (and ``{name.}``, ``{name/}``, ...) of a ``--header`` name
    written as its number (``{2}``, ``{2.}``, ...)."""
    if not names:
        return text
    choices = "|".join(re.escape(name) for name in sorted(names, key=len, reverse=True))
    pattern = re.compile(r"\{(" + choices + r")(/\.|//|/|\.)?\}")
    return pattern.sub(lambda m: "{" + str(names[m.group(1)]) + (m.group(2) or "") + "}", text)


def combinations(sources: Sequence[InputSource], *, link: bool = False) -> Iterator[tuple[str, ...]]:
    """Every combination of the sources' values (all read already), in GNU parallel's order.

    ``link`` (``--link``): instead, the n-th values of all the sources go together, as many
    jobs as the longest source has values; a shorter source starts again from its first
    value, as in GNU parallel (unlike ``:::+``, which stops at the shortest).
    """
    if link:
        columns = [source.values or () for source in sources]
        longest = max((len(values) for values in columns), default=0)
        if not all(columns):  # an empty source: no combination at all
            return
        for index in range(longest):
            yield tuple(values[index % len(values)] for values in columns)
        return
    blocks: list[list[tuple[str, ...]]] = []
    for source in sources:
        assert source.values is not None
        if source.linked and blocks:
            blocks[-1].append(source.values)
        else:
            blocks.append([source.values])
    rows: list[list[tuple[str, ...]]] = []
    for block in blocks:
        # linked sources: the n-th values together, as many as the shortest has (GNU parallel's
        # :::+; an empty source gives no combination at all)
        rows.append(list(zip(*block, strict=False)))
    for combination in itertools.product(*rows):
        yield tuple(value for part in combination for value in part)


def template_jobs(
    template: CommandTemplate,
    sources: Sequence[InputSource],
    source: str,
    max_args: int | None = None,
    *,
    shuffle: bool = False,
    pack: int | None = None,
    max_chars: int = MAX_LINE,
    link: bool = False,
) -> list[Job]:
    """All the jobs of a template over sources that are all read (raises as :meth:`CommandTemplate.job`).

    ``max_args`` (``-n``/``-N``, one source only): up to that many values per job, in order;
    0: one job per value, without it. ``shuffle`` (``--shuf``): the combinations in a random
    order, numbered (``{#}``) in that order, as GNU parallel does. ``pack`` (``-m``, ``-X``,
    ``--xargs``, one source): as many values per job as fit in a line, and at most
    ``pack`` (the values spread evenly over the job slots; 0: no such bound); ``max_chars``
    (``-s``) is the longest such job line. ``link`` (``--link``): see :func:`combinations`.
    """
    rows: Iterator[tuple[str, ...]] = combinations(sources, link=link)
    if max_args is not None:
        rows = _grouped(rows, max_args)
    elif pack is not None:
        rows = _packed(rows, pack, template, max_chars)
    if shuffle:
        shuffled = list(rows)
        random.shuffle(shuffled)
        rows = iter(shuffled)
    jobs: list[Job] = []
    for number, values in enumerate(rows, start=1):
        job = template.job(values, len(jobs) + 1, number, source)
        if job is not None:
            jobs.append(job)
    return jobs


def check_max_args(
    sources: Sequence[InputSource], colsep: re.Pattern[str] | None, option: str = "-n/-N"
) -> None:
    """:class:`TemplateError` unless ``option`` (``-n``/``-N``, ``-m``, ...), which puts
    several values in a job, can apply: one input source, no ``--colsep``."""
    if len(sources) != 1:
        raise TemplateError(f"{option} takes one input source, not {len(sources)}")
    if colsep is not None:
        raise TemplateError(f"{option} and --colsep cannot be used together")


def _packed(
    rows: Iterator[tuple[str, ...]], most: int, template: CommandTemplate, max_chars: int = MAX_LINE
) -> Iterator[tuple[str, ...]]:
    """The values of one-value rows, as many to a job as fit in ``max_chars`` characters, and at
    most ``most`` (0: no such bound). A value alone longer than that still gets a job of its own.

    A job line's length is counted exactly, value by value: one more value adds what the line
    with it twice has over the line with it once (its quoted, transformed copies, or with
    ``-X`` its repeated words, and their separators).
    """
    values = [row[0] for row in rows]
    per_job = -(-len(values) // most) if most else len(values)  # ceil: spread over the slots
    group: list[str] = []
    length = 0
    for value in values:
        once = len(template.fill((value,), 1))
        more = len(template.fill((value, value), 1)) - once
        if group and (len(group) >= per_job or length + more > max_chars):
            yield tuple(group)
            group = []
        length = length + more if group else once
        group.append(value)
    if group:
        yield tuple(group)


def _grouped(rows: Iterator[tuple[str, ...]], size: int) -> Iterator[tuple[str, ...]]:
    """The values of one-value rows, ``size`` to a job (``0``: each row, with no value)."""
    if size == 0:
        for _ in rows:
            yield ()
        return
    values = (row[0] for row in rows)
    while chunk := tuple(itertools.islice(values, size)):
        yield chunk


class TemplateParser(JobParser):
    """Streamed standard input as the only source: each line read is one value, one job."""

    def __init__(
        self, template: CommandTemplate, *, source: str = "<stdin>", skip_blank: bool = False
    ) -> None:
        super().__init__(shell=template.shell, source=source)
        self.template = template
        #: ``-r``: a line that is empty or only white space makes no job.
        self.skip_blank = skip_blank

    def feed(self, raw: str) -> Job | None:
        self.lines += 1
        if self.skip_blank and not raw.strip():
            return None
        job = self.template.job((raw,), self.jobs + 1, self.lines, self.source)
        if job is not None:
            self.jobs += 1
        return job
