"""The ``async-executor`` command line: run a file of commands, see runs, read a task's output.

Exit codes of ``async-executor run``:

* 0 - every line that ran succeeded (lines skipped by ``--resume``/``--retry-failed`` count as
  done; a ``--halt ...,success=N`` stop with no failure is also 0);
* 1 - one or more lines failed (after their retries); the summary and ``status`` say which;
* 2 - bad usage or bad input (unknown option, bad ``-j``, unreadable job file, unbalanced
  quotes): nothing was started (from a pipe, the lines before the bad one ran);
* 3 - a ``--halt`` policy on failures (``fail=`` / ``done=``) stopped the run;
* 128+N - stopped by signal N: 130 after Ctrl-C (SIGINT), 143 after SIGTERM;
* 255 - an internal error (e.g. the journal could not be opened).

``status`` and ``logs`` exit 0, or 1 when the run or task is not in the journal.
"""

from __future__ import annotations

import os
import random
import re
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Generic, NoReturn, TypeVar

import attrs
import click

from .halt import NEVER, HaltPolicy, parse_halt
from .jobs import Job, JobFileError, JobParser, parse_jobs
from .load import parse_load
from .pipe import BLOCK_SIZE as PIPE_BLOCK
from .pipe import BlockCutter, PipeJobs, parse_separator
from .template import (
    DEFAULT_REPLACEMENTS,
    MAX_LINE,
    TRIMS,
    Replacements,
    TemplateError,
    name_columns,
    parse_command_line,
    tag_text,
)
from .timeouts import Timeout, parse_timeout

__all__ = ["cli", "main"]

if TYPE_CHECKING:
    from .runlock import RunLock

    # click >= 8.2 types ParamType by the value it converts to
    _IntParam = click.ParamType[int]
    _AnyParam = click.ParamType[Any]
else:
    _IntParam = _AnyParam = click.ParamType

V = TypeVar("V")

_EXIT_CODES = """\b
Exit codes:
  0      every line that ran succeeded
  1      one or more lines failed
  2      bad usage or bad input, or the run is already running in
         another async-executor; nothing was started (from a pipe:
         the lines before the bad one ran, nothing from it on)
  3      stopped by a --halt policy on failures
  130    interrupted by Ctrl-C (128 + signal number; 143 for SIGTERM)
  255    internal error
"""


#: How many other names (``stdin-2`` ...) a default-named stdin run tries when its name is held.
MAX_RENAMES = 100


class _Busy(click.ClickException):
    """The run is held by another live ``async-executor run`` (see ``runlock.py``): exit code 2."""

    exit_code = 2


class JobsType(_IntParam):
    """``-j``: ``N``, ``N%`` of the CPUs, ``+N``/``-N`` CPUs more/less, or ``0`` (as many as limits allow)."""

    name = "N|N%|0"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int:
        if isinstance(value, int):
            return value
        text = str(value).strip()
        cpus = _cpus()
        try:
            if text.endswith("%"):
                pct = float(text[:-1])
                if pct <= 0:
                    raise ValueError
                return max(1, int(cpus * pct / 100))
            if text.startswith(("+", "-")):
                return max(1, cpus + int(text))
            number = int(text)
            if number < 0:
                raise ValueError
        except ValueError:
            self.fail(
                f"{value!r} is not a job count: use N (a number), N% of the {cpus} CPUs, +N/-N, "
                "or 0 for as many as the limits allow",
                param,
                ctx,
            )
        if number == 0:
            from .runner import max_parallelism

            return max_parallelism()
        return number


class SizeType(_IntParam):
    """``--memfree``: bytes, with GNU parallel's K/M/G/T (1024s) or k/m/g/t (1000s) suffixes."""

    name = "SIZE"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int:
        if isinstance(value, int):
            return value
        from .memory import parse_size, total_memory

        try:
            size = parse_size(str(value))
        except ValueError as exc:
            self.fail(str(exc), param, ctx)
        total = total_memory()
        if total is None:
            self.fail(
                "needs the kernel's memory figures (/proc/meminfo), which this system lacks", param, ctx
            )
        if size > total:
            self.fail(f"{value} is more than this machine's memory ({total / 2**30:.1f} GiB)", param, ctx)
        return size


class ParsedType(_AnyParam, Generic[V]):
    """An option value that ``parse`` makes from its text (``ValueError``: a usage error with
    its message); a value that is a ``kind`` already (a default) is kept."""

    def __init__(self, name: str, kind: type[V], parse: Callable[[str], V]) -> None:
        self.name = name
        self._kind = kind
        self._parse = parse

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> V:
        if isinstance(value, self._kind):
            return value
        try:
            return self._parse(str(value))
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


def _is_stream(fd: int) -> bool:
    """Whether ``fd`` is read as it fills (a pipe, FIFO, socket or terminal), not a regular file."""
    import stat

    try:
        return not stat.S_ISREG(os.fstat(fd).st_mode)
    except OSError:  # closed: reading it fails, with the message a read gives
        return False


def _cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # pragma: no cover - non-Linux
        return os.cpu_count() or 1


def _state_option(func: Any) -> Any:
    return click.option(
        "--state",
        "state_path",
        type=click.Path(dir_okay=False, path_type=str),
        default=None,
        help="The journal (SQLite) file. Default: $ASYNC_EXECUTOR_HOME/journal.sqlite "
        "(~/.local/state/async-executor/journal.sqlite).",
    )(func)


def _state_path(given: str | None) -> str:
    from .state import default_state_path

    return given if given is not None else str(default_state_path())


def _parse_block(text: str) -> int:
    """``--block``: a size in bytes (see :func:`~.memory.parse_size`), 1 byte to 2 GiB."""
    from .memory import parse_size

    size = parse_size(text)
    if not 1 <= size <= 2**31:
        raise ValueError(f"{text!r}: a block must be 1 byte to 2 GiB")
    return size


#: Where the replacement-string options (``-I`` ...) leave what they were given, in ``ctx.meta``.
_REPLACED = "async_executor.replacements"
#: GNU parallel's options that change a replacement string: (Replacements field, names, default).
_REPLACEMENT_OPTIONS = (
    ("value", ("-I",), "{}"),
    ("noext", ("--extensionreplace", "--er"), "{.}"),
    ("base", ("--basenamereplace", "--bnr"), "{/}"),
    ("dir", ("--dirnamereplace", "--dnr"), "{//}"),
    ("basenoext", ("--basenameextensionreplace", "--bner"), "{/.}"),
    ("seq", ("--seqreplace",), "{#}"),
    ("slot", ("--slotreplace",), "{%}"),
)


def _replacement_options(func: Any) -> Any:
    """``-I STR``, ``--er STR``, ...: each replaces one of GNU parallel's replacement strings.
    They are gathered in ``ctx.meta[_REPLACED]`` (field -> string) rather than seven more
    parameters of ``run``; :class:`~.template.Replacements` checks them."""

    def keeper(field: str) -> Callable[[click.Context, click.Parameter, str | None], None]:
        def keep(ctx: click.Context, param: click.Parameter, value: str | None) -> None:
            if value is not None:
                ctx.meta.setdefault(_REPLACED, {})[field] = value

        return keep

    for field, names, default in reversed(_REPLACEMENT_OPTIONS):
        func = click.option(
            *names,
            metavar="STR",
            default=None,
            expose_value=False,
            callback=keeper(field),
            help=f"Use STR instead of {default}" + (" ({1x} with -I {x})." if field == "value" else "."),
        )(func)
    return func


def _replacement_names(replaced: dict[str, str]) -> str:
    """The options (``-I``, ``--er``, ...) that set the strings in ``replaced``, for a message."""
    return "/".join(names[0] for field, names, _ in _REPLACEMENT_OPTIONS if field in replaced)


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(
    package_name="async-local-executor", prog_name="async-executor", message="%(prog)s %(version)s"
)
def cli() -> None:
    """Run many commands at once on this machine, with a durable journal of every task.

    \b
      async-executor run -j 32 jobs.txt      run each line of jobs.txt
      async-executor run gzip {} ::: *.log   GNU parallel's form: gzip each file
      async-executor run --resume jobs.txt   run what has not succeeded yet
      async-executor status [RUN]            runs, or one run's tasks
      async-executor logs RUN:LINE:HASH      a task's captured output
    """


# Options end at the first argument, as in GNU parallel: `run gzip -9 {} ::: a` gives -9 to gzip.
@cli.command(epilog=_EXIT_CODES, context_settings={"allow_interspersed_args": False})
@click.argument("args", nargs=-1, metavar="JOBFILE | COMMAND... ::: ARG...")
@click.option(
    "-j",
    "--jobs",
    "-P",
    "--max-procs",
    "parallelism",
    type=JobsType(),
    default="100%",
    show_default=True,
    help="Tasks at once: N, N% of the CPUs, or 0 for as many as descriptor and process limits allow.",
)
@click.option(
    "--timeout",
    type=ParsedType("SECONDS|N%", Timeout, parse_timeout),
    default=None,
    help="Kill a task's whole process group after this many seconds; or N%: after N% of the"
    " median runtime of the tasks that succeeded so far (no limit before one has).",
)
@click.option(
    "--retries",
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    help="Run a failing line up to N more times.",
)
@click.option(
    "--backoff",
    type=click.FloatRange(min=0),
    default=0.5,
    show_default=True,
    metavar="SECONDS",
    help="Wait before the first retry; doubled for each further retry (at most 60 s).",
)
@click.option(
    "--delay",
    type=click.FloatRange(min=0),
    default=0.0,
    metavar="SECONDS",
    help="Start tasks at least this far apart (GNU parallel's --delay; the first at once).",
)
@click.option(
    "--memfree",
    type=SizeType(),
    default=None,
    help="Start a task only while at least SIZE of memory is available (MemAvailable; K/M/G"
    " are 1024s, k/m/g 1000s). Running tasks are never killed for it.",
)
@click.option(
    "--load",
    "max_load",
    type=ParsedType("N|N%", float, lambda text: parse_load(text, _cpus())),
    default=None,
    help="Start a task only while fewer than N processes run or wait for a disk (N% of the"
    " CPUs, +N/-N as for -j; GNU parallel's --load: this instant's count, not the average).",
)
@click.option(
    "--nice",
    type=click.IntRange(min=-20, max=19),
    default=None,
    metavar="N",
    help="Run each task at niceness N (through nice -n N, as GNU parallel's --nice; below 0"
    " needs the privilege to raise priority).",
)
@click.option(
    "--halt",
    type=ParsedType("now|soon,fail=N|N%|success=N", HaltPolicy, parse_halt),
    default="never",
    metavar="POLICY",
    show_default=True,
    help="Stop early, like GNU parallel: soon|now,fail=N|N%, success=N|N%, done=N|N%.",
)
@click.option(
    "--shell", is_flag=True, help="Run each line with /bin/sh -c instead of splitting it with shell rules."
)
@click.option(
    "--dry-run",
    is_flag=True,
    help="Print each job line that would run (a job file, unless --tag), and run nothing.",
)
@click.option(
    "--joblog",
    type=click.Path(dir_okay=False, writable=True, path_type=str),
    default=None,
    help="Also write GNU parallel's joblog (tab-separated) to this file.",
)
@click.option(
    "--results",
    type=click.Path(file_okay=False, path_type=str),
    default=None,
    metavar="DIR",
    help="Keep each line's output as DIR/LINE/stdout, DIR/LINE/stderr and DIR/LINE/exitval.",
)
@click.option(
    "--shuf",
    is_flag=True,
    help="Run the jobs in a random order (all input is read first); in GNU parallel's form"
    " {#} numbers them in that order.",
)
@click.option(
    "-k", "--keep-order", is_flag=True, help="Print outputs in input order (default: as tasks finish)."
)
@click.option(
    "--line-buffer",
    "--lb",
    "line_buffer",
    is_flag=True,
    help="Print each task's output line by line as it is written (lines of different tasks"
    " may mix, never half lines), not whole when the task ends.",
)
@click.option(
    "-u",
    "--ungroup",
    is_flag=True,
    help="Print each task's output as it is written, half lines too (output of different tasks"
    " may mix mid-line).",
)
@click.option(
    "--tag",
    is_flag=True,
    help="Put each job's arguments (or its line) and a tab before each line of its output.",
)
@click.option(
    "--tagstring",
    metavar="STR",
    default=None,
    help="Tag each output line with STR and a tab instead (implies --tag); STR's replacement"
    " strings are filled in as they are, not quoted.",
)
@click.option(
    "--header",
    metavar=":",
    default=None,
    help="--header : : each input source's first value names it, for {name} (with --colsep,"
    " its first line names its columns); all input is read first.",
)
@click.option(
    "--colsep",
    metavar="REGEXP",
    default=None,
    help="Split each argument into columns at REGEXP (Python syntax): {N} is then column N.",
)
@click.option(
    "-n",
    "--max-args",
    "-N",
    "--max-replace-args",
    "max_args",
    type=click.IntRange(min=0),
    default=None,
    metavar="N",
    help="Up to N arguments per job (one input source): {} is all of them, {K} the K-th;"
    " 0: a job per argument, without it. -N is the same here (as in GNU parallel).",
)
@click.option(
    "--link",
    "--xapply",
    "link",
    is_flag=True,
    help="Take the n-th value of every input source together (a shorter source starts over)"
    " instead of every combination.",
)
@click.option(
    "--trim",
    type=click.Choice(list(TRIMS)),
    default=None,
    help="Strip white space from each value's left (l), right (r) or both ends (lr, rl); n: none."
    "  [default: lr with --colsep, else n]",
)
@click.option(
    "-r",
    "--no-run-if-empty",
    "skip_blank",
    is_flag=True,
    help="Skip input values that are empty or only white space (blank job-file lines are always skipped).",
)
@_replacement_options
@click.option(
    "-m",
    "pack",
    flag_value="m",
    default=None,
    help="As many arguments per job as the command line takes, spread evenly over the -j job"
    " slots (one input source); {} is all of them.",
)
@click.option(
    "-X",
    "pack",
    flag_value="X",
    help="As -m, and a word holding {} (pic{}.jpg) is repeated for each argument.",
)
@click.option(
    "--xargs",
    "pack",
    flag_value="xargs",
    help="As many arguments per job as the command line takes (not spread over the slots).",
)
@click.option(
    "--pipe",
    "--spreadstdin",
    "pipe",
    is_flag=True,
    help="Cut standard input into blocks of whole records (lines), each block the standard input"
    " of one run of COMMAND (GNU parallel's --pipe; -N N: N records per block).",
)
@click.option(
    "--block",
    "--block-size",
    "block",
    type=ParsedType("SIZE", int, _parse_block),
    default=None,
    help="--pipe: about this many bytes per block (K/M/G are 1024s, k/m/g 1000s).  [default: 1M]",
)
@click.option(
    "--recend",
    metavar="STR",
    default=None,
    help="--pipe: what ends a record (C escapes understood).  [default: \\n]",
)
@click.option(
    "--recstart",
    metavar="STR",
    default=None,
    help="--pipe: what starts a record (with --recend: a block ends between the two).",
)
@click.option(
    "--cat",
    "pipe_cat",
    is_flag=True,
    help="--pipe, with each block in a file named by {} instead of on standard input.",
)
@click.option(
    "-s",
    "--max-chars",
    "max_chars",
    type=click.IntRange(min=1),
    default=None,
    metavar="N",
    help=f"With -m, -X or --xargs: the longest job line, in characters.  [default: {MAX_LINE:,}]",
)
@click.option(
    "-0",
    "--null",
    is_flag=True,
    help="Input items (:::: FILE, -a FILE) end with NUL, not a newline, as `find -print0` writes"
    " them (stdin is then read whole before the run).",
)
@click.option(
    "-d",
    "--delimiter",
    metavar="DELIM",
    default=None,
    help="Input items (:::: FILE, -a FILE) end with DELIM instead (C escapes such as \\t, \\0,"
    " \\x1e are understood; stdin is then read whole before the run).",
)
@click.option(
    "-a",
    "--arg-file",
    "arg_files",
    multiple=True,
    metavar="FILE",
    help="An input source of FILE's lines, as :::: FILE (repeatable; - for stdin): the "
    "arguments are then the command.",
)
@click.option(
    "-t",
    "trace",
    is_flag=True,
    help="Print each job's command on stderr as it starts (retries too), as GNU parallel's -t.",
)
@click.option(
    "-q", "--quiet", is_flag=True, help="No progress display, notes or summary: only the tasks' output."
)
@click.option(
    "--bar",
    "--eta",
    "--progress",
    "bar",
    is_flag=True,
    help="Show the progress display (done, running, rate, ETA) on stderr when stdout is not a"
    " terminal (run --bar ... > out); --eta and --progress are GNU parallel's names for it.",
)
@click.option(
    "--resume",
    "--resume-failed",
    "resume",
    is_flag=True,
    help="Skip lines that already succeeded in this run's journal: the failed ones and those"
    " not run yet run (GNU parallel's --resume-failed; its --resume would skip failures too).",
)
@click.option("--retry-failed", is_flag=True, help="Run only the lines that failed in this run's journal.")
@click.option(
    "--run",
    "run_name",
    default=None,
    metavar="NAME",
    help="The run's name in the journal (default: the job file's name without extension; 'stdin' for -).",
)
@click.option(
    "--kill-grace",
    type=click.FloatRange(min=0, min_open=True),
    default=5.0,
    show_default=True,
    metavar="SECONDS",
    help="Between SIGTERM and SIGKILL when a task is stopped.",
)
@click.option(
    "--will-cite",
    is_flag=True,
    hidden=True,
    help="Accepted, and ignored, so that GNU parallel command lines run as they are.",
)
@_state_option
def run(
    args: tuple[str, ...],
    parallelism: int,
    timeout: Timeout | None,
    retries: int,
    backoff: float,
    delay: float,
    memfree: int | None,
    max_load: float | None,
    nice: int | None,
    halt: HaltPolicy,
    shell: bool,
    dry_run: bool,
    joblog: str | None,
    results: str | None,
    shuf: bool,
    keep_order: bool,
    line_buffer: bool,
    ungroup: bool,
    tag: bool,
    tagstring: str | None,
    header: str | None,
    colsep: str | None,
    max_args: int | None,
    link: bool,
    trim: str | None,
    skip_blank: bool,
    pack: str | None,
    pipe: bool,
    block: int | None,
    recend: str | None,
    recstart: str | None,
    pipe_cat: bool,
    max_chars: int | None,
    null: bool,
    delimiter: str | None,
    arg_files: tuple[str, ...],
    quiet: bool,
    trace: bool,
    bar: bool,
    resume: bool,
    retry_failed: bool,
    run_name: str | None,
    kill_grace: float,
    will_cite: bool,
    state_path: str | None,
) -> None:
    """Run each line of JOBFILE (or - for stdin) as a command, -j at a time; or, in GNU
    parallel's form, COMMAND once for each argument after ::: (or line of each FILE after ::::).

    \b
      async-executor run -j 32 jobs.txt
      async-executor run -j 8 gzip -9 {} ::: *.log
      find . -name '*.csv' | async-executor run python load.py {} :::: -
      async-executor run convert {} {.}.png ::: *.jpg
      async-executor run echo {1}-{2} ::: a b ::: 1 2        (a-1 a-2 b-1 b-2)

    Lines are split with shell rules and run without a shell (unless --shell); blank lines
    and # comments (a # that starts a word) are skipped. Each line's key in the journal is
    RUN:LINE:HASH (its line number and a hash of its text), so --resume and --retry-failed
    find it again after the file is edited. Output of each task is printed whole when it finishes (with
    --line-buffer, line by line as it is written; with -u, as it is written).

    In GNU parallel's form each combination of the input sources (the first varying slowest;
    :::+ and ::::+ pair a source's values with the one's before) fills the command's replacement
    strings, each value as one word: {} {.} {/} {//} {/.}, {N} (source N) and {N.} {N/} {N//}
    {N/.}, {#} (the job's number), {%} (its slot, 1 to -j); -I STR and the like change them
    (-I @ mv @ @.bak). A command without them gets the values appended; with no command each
    value is a line. The result is a job line, run as
    above (--dry-run prints them), its LINE being the job's number; the run is named after the
    program. Options go before COMMAND. With -n N (one input source) each job takes up to N
    arguments; its LINE is still the job's number.

    With --pipe, standard input is cut into blocks of whole lines (about --block bytes, or -N
    lines), each block the standard input of one run of COMMAND:
    cat big.log | async-executor run --pipe grep ERROR.

    From a pipe or a terminal, each line starts as soon as it is read, like GNU parallel
    (`tail -f queue | async-executor run -` is a job queue), unless --resume, --retry-failed
    or a --halt percentage need the whole input first. A line that cannot be split then ends
    the input: the lines before it run, it and the lines after it do not, and the exit code is 2.
    """
    if resume and retry_failed:
        raise click.UsageError("--resume and --retry-failed cannot be used together")
    replaced: dict[str, str] = click.get_current_context().meta.get(_REPLACED, {})
    try:
        strings = Replacements(**replaced) if replaced else DEFAULT_REPLACEMENTS
    except TemplateError as exc:
        raise click.UsageError(str(exc)) from None
    halt = halt if halt is not None else NEVER
    # A pipe or terminal is read as the run goes, each line starting when it arrives (GNU
    # parallel's way), unless the whole input is needed first: to match lines against the
    # journal (--resume, --retry-failed), to take a percentage of all lines (--halt N%), or
    # to print them all (--dry-run).
    if header is not None and header != ":":
        raise click.BadParameter(
            f"{header!r}: only --header : (each source's first value or line) is supported",
            param_hint="--header",
        )
    whole = resume or retry_failed or bool(halt.percent) or dry_run or shuf or header is not None
    form = parse_command_line(args)
    pipe = pipe or pipe_cat
    if not pipe:
        for given, name in ((block, "--block"), (recend, "--recend"), (recstart, "--recstart")):
            if given is not None:
                raise click.UsageError(f"{name} applies to --pipe, which was not given")
    if arg_files:  # -a FILE: an input source before any ::: / :::: ones
        command, groups = form if form is not None else (list(args), [])
        form = (command, [("::::", list(arg_files)), *groups])
    if pipe:
        if form is not None:
            raise click.UsageError(
                "--pipe cuts standard input into blocks: give COMMAND alone, with no :::, :::: or -a"
                " (to read a file: < FILE)"
            )
        for given, name in (
            (not args, "no command (--pipe needs one)"),
            (colsep is not None, "--colsep"),
            (link, "--link"),
            (trim is not None, "--trim"),
            (skip_blank, "-r/--no-run-if-empty"),
            (pack is not None, _pack_option(pack or "")),
            (max_chars is not None, "-s/--max-chars"),
            (null or delimiter is not None, "-0/-d (use --recend)"),
            (shuf, "--shuf"),
            (resume or retry_failed, "--resume/--retry-failed"),
            (bool(halt.percent), "a --halt percentage"),
        ):
            if given:
                raise click.UsageError(f"--pipe: {name} cannot be used with it")
        try:
            cutter = BlockCutter(
                size=block if block is not None else PIPE_BLOCK,
                records=max_args,
                recend=parse_separator(recend if recend is not None else ("" if recstart else "\\n")),
                recstart=parse_separator(recstart or ""),
                header=header is not None,
            )
        except ValueError as exc:
            raise click.UsageError(f"--pipe: {exc}") from None
        plan = _pipe_plan(list(args), shell, strings, cutter, pipe_cat, dry_run)
    elif form is None:
        if not args:
            raise click.UsageError("missing JOBFILE, or a command with ::: ARG ... or -a FILE")
        if len(args) != 1:
            raise click.UsageError(
                f"expected one JOBFILE, or a command in GNU parallel's form (COMMAND ... ::: ARG ...), "
                f"got {len(args)} arguments and no ::: or :::: (options go before JOBFILE)"
            )
        for given, name in (
            (bool(replaced) and tagstring is None, _replacement_names(replaced)),
            (link, "--link"),
            (trim is not None, "--trim"),
            (max_chars is not None, "-s/--max-chars"),
            (colsep is not None, "--colsep"),
            (header is not None, "--header"),
            (null, "-0/--null"),
            (delimiter is not None, "-d/--delimiter"),
            (max_args is not None, "-n/-N"),
            (pack is not None, _pack_option(pack or "")),
        ):
            if given:
                raise click.UsageError(f"{name} needs a command (COMMAND ... :::: FILE, or -a FILE)")
        plan = _jobfile_plan(args[0], shell, whole)
        if shuf:  # each line keeps its number (and key)
            random.shuffle(plan.jobs)
    else:
        # -n groups values: standard input is then read whole (a job waits for its N values)
        if pack is not None and max_args is not None:
            raise click.UsageError(f"-n/-N and {_pack_option(pack)} cannot be used together")
        if max_chars is not None and pack is None:
            raise click.UsageError("-s/--max-chars applies to -m, -X and --xargs, and none was given")
        ends = _item_delimiter(delimiter, null)
        options = _FormOptions(
            shell=shell,
            colsep=_column_separator(colsep),
            delimiter=ends,
            max_args=max_args,
            shuffle=shuf,
            header=header is not None,
            pack=(pack, parallelism) if pack is not None else None,
            max_chars=max_chars if max_chars is not None else MAX_LINE,
            strings=strings,
            trim=trim,
            skip_blank=skip_blank,
            link=link,
        )
        whole = whole or ends is not None or max_args is not None or pack is not None or link
        plan = _template_plan(*form, whole, options)
        if tagstring is not None:
            tagstring = name_columns(tagstring, plan.headers)
    tag = tag or tagstring is not None
    if dry_run:
        for job in plan.jobs:  # tagged as GNU parallel tags them
            label = job.tag if tagstring is None else tag_text(tagstring, job, strings=strings)
            click.echo(f"{label}\t{job.text}" if tag else job.text)
        sys.exit(0)
    if nice is not None and not _on_path("nice"):
        raise click.UsageError("--nice runs each task through nice(1), which is not on PATH")
    name = run_name if run_name is not None else plan.name
    if not name or ":" in name:
        raise click.BadParameter(
            f"{name!r}: a run name must be non-empty and contain no ':'", param_hint="--run"
        )
    from .runner import RunConfig, run_batch
    from .state import make_log_dir

    state = _state_path(state_path)
    # A default-named run from stdin or a command line that needs no earlier rows takes the next
    # free name, so two pipelines (`tail -f queue | async-executor run -` twice) run side by side,
    # as with parallel.
    renames = run_name is None and plan.renames and not resume and not retry_failed
    lock, name = _lock_run(state, name, renames)
    cfg = RunConfig(
        jobs=plan.jobs,
        run=name,
        parallelism=parallelism,
        timeout=timeout.seconds if timeout is not None else None,
        timeout_percent=timeout.percent if timeout is not None else None,
        retries=retries,
        backoff=backoff,
        delay=delay,
        memfree=memfree or 0,
        max_load=max_load,
        nice=nice,
        halt=halt,
        joblog=joblog,
        results=results,
        keep_order=keep_order,
        line_buffer=line_buffer,
        ungroup=ungroup,
        tag=tag,
        tagstring=tagstring,
        strings=strings,
        quiet=quiet,
        bar=bar,
        trace=trace,
        mode="resume" if resume else "retry-failed" if retry_failed else "all",
        state_path=state,
        log_dir=make_log_dir(state),
        kill_grace=kill_grace,
        stream_fd=0 if plan.parser is not None else None,
        parser=plan.parser,
    )
    try:
        code = _run_async(run_batch, cfg)
    finally:
        lock.release()
    sys.exit(code)


@attrs.frozen
class _Plan:
    """What ``run`` was given to run: the jobs read already, or the parser of streamed input."""

    jobs: list[Job]
    #: Reads standard input as the run goes (``jobs`` is then empty).
    parser: JobParser | PipeJobs | None
    #: The run's default name.
    name: str
    #: Whether a default-named run takes the next free name when its name is held.
    renames: bool
    #: ``--header :``: each name's source or column number.
    headers: dict[str, int] = attrs.Factory(dict)


def _read_input(name: str, what: str = "") -> bytes:
    """The bytes of file ``name`` (``-``: standard input); a usage error if it cannot be read."""
    try:
        return sys.stdin.buffer.read() if name == "-" else Path(name).read_bytes()
    except OSError as exc:
        where = "<stdin>" if name == "-" else name
        raise click.UsageError(f"cannot read {what}{where}: {exc.strerror or exc}") from None


def _jobfile_plan(jobfile: str, shell: bool, whole: bool) -> _Plan:
    source = "<stdin>" if jobfile == "-" else jobfile
    name = "stdin" if jobfile == "-" else Path(jobfile).stem or "jobs"
    if jobfile == "-" and not whole and _is_stream(0):
        return _Plan([], JobParser(shell=shell, source=source), name, renames=True)
    if jobfile != "-" and not os.path.exists(jobfile) and "/" not in jobfile and _on_path(jobfile):
        raise click.UsageError(
            f"cannot read {jobfile}: no such job file; to run the program {jobfile} once per line of"
            f" stdin, as `parallel {jobfile}` does: async-executor run {jobfile} :::: -"
        )
    text = _read_input(jobfile).decode("utf-8", "surrogateescape")
    try:
        jobs = parse_jobs(text.splitlines(), shell=shell, source=source)
    except JobFileError as exc:
        raise click.UsageError(f"{exc}; nothing was started") from None
    return _Plan(jobs, None, name, renames=jobfile == "-")


def _on_path(program: str) -> bool:
    """Whether ``program`` is a command on PATH (shutil imported here: it brings zlib, bz2 and
    lzma, ~5 ms of start-up)."""
    import shutil

    return shutil.which(program) is not None


def _column_separator(pattern: str | None) -> re.Pattern[str] | None:
    if pattern is None:
        return None
    try:
        return re.compile(pattern)
    except re.error as exc:
        raise click.BadParameter(
            f"{pattern!r} is not a regular expression: {exc}", param_hint="--colsep"
        ) from None


def _pack_option(pack: str) -> str:
    """The option's name for ``pack`` ("m", "X" or "xargs")."""
    return "--xargs" if pack == "xargs" else f"-{pack}"


def _item_delimiter(delimiter: str | None, null: bool) -> str | None:
    """What ends an input item: ``-d DELIM`` (C escapes decoded), NUL with ``-0``, or ``None``
    for lines."""
    if delimiter is None:
        return "\x00" if null else None
    if null:
        raise click.UsageError("-0 and -d cannot be used together (-0 is -d '\\0')")
    decoded = delimiter
    if "\\" in delimiter:
        import codecs

        try:
            decoded = codecs.decode(delimiter, "unicode_escape")
        except UnicodeError as exc:
            why = getattr(exc, "reason", exc)
            raise click.BadParameter(f"{delimiter!r}: {why}", param_hint="-d/--delimiter") from None
    if not decoded:
        raise click.BadParameter("the delimiter cannot be empty", param_hint="-d/--delimiter")
    return decoded


@attrs.frozen
class _FormOptions:
    """How ``run`` reads GNU parallel's form (see ``template.py``): its input options."""

    shell: bool
    colsep: re.Pattern[str] | None = None
    #: ``-d`` / ``-0``: what ends an input item (``None``: lines).
    delimiter: str | None = None
    #: ``-n`` / ``-N``.
    max_args: int | None = None
    #: ``--shuf``.
    shuffle: bool = False
    #: ``--header :``.
    header: bool = False
    #: ``-m`` / ``-X`` / ``--xargs`` ("m", "X" or "xargs") and the job slots (``-j``).
    pack: tuple[str, int] | None = None
    #: ``-s``: the longest packed job line.
    max_chars: int = MAX_LINE
    #: ``-I``, ``--er``, ...
    strings: Replacements = DEFAULT_REPLACEMENTS
    trim: str | None = None
    #: ``-r``: skip blank values.
    skip_blank: bool = False
    #: ``--link``.
    link: bool = False


def _template_plan(
    command: list[str], groups: list[tuple[str, list[str]]], whole: bool, options: _FormOptions
) -> _Plan:
    """GNU parallel's form (see ``template.py``), all input read unless ``whole`` is false and
    standard input is the only source, a pipe or terminal."""
    from .template import (
        CommandTemplate,
        TemplateParser,
        check_max_args,
        drop_blank,
        read_source_lines,
        sources_from_groups,
        take_headers,
        template_jobs,
    )

    # Standard input as the only source, from a pipe or terminal: read as the run goes.
    streams = not whole and groups == [("::::", ["-"])] and _is_stream(0)
    colsep, pack = options.colsep, options.pack

    def read_file(name: str) -> tuple[str, ...] | None:
        if streams:
            return None
        return read_source_lines(_read_input(name, "input file "), delimiter=options.delimiter)

    headers: dict[str, int] = {}
    try:
        sources = sources_from_groups(groups, read_file)
        if options.header:  # each source's first value (or line) names it; {name} is then {N}
            sources, headers = take_headers(sources, colsep, options.trim)
            command = [name_columns(word, headers) for word in command]
        if options.skip_blank:
            sources = drop_blank(sources)
        if options.max_args is not None:
            check_max_args(sources, colsep)
        if pack is not None:
            check_max_args(sources, colsep, _pack_option(pack[0]))
        # with -n N, {K} names the K-th value of a job (up to N) rather than a source
        names = max(options.max_args, 1) if options.max_args is not None else len(sources)
        template = CommandTemplate(
            tuple(command),
            shell=options.shell,
            sources=names,
            colsep=colsep,
            context=pack is not None and pack[0] == "X",
            strings=options.strings,
            trim=options.trim,
        )
    except TemplateError as exc:
        raise click.UsageError(str(exc)) from None
    name = _command_run_name(command)
    if streams:
        return _Plan([], TemplateParser(template, skip_blank=options.skip_blank), name, renames=True)
    try:
        # -m / -X spread the values over the job slots; --xargs fills each job line
        most = None if pack is None else (pack[1] if pack[0] != "xargs" else 0)
        jobs = template_jobs(
            template,
            sources,
            "<input>",
            options.max_args,
            shuffle=options.shuffle,
            pack=most,
            max_chars=options.max_chars,
            link=options.link,
        )
    except JobFileError as exc:
        raise click.UsageError(f"{exc}; nothing was started") from None
    return _Plan(jobs, None, name, renames=True, headers=headers)


def _pipe_plan(
    command: list[str], shell: bool, strings: Replacements, cutter: BlockCutter, cat: bool, dry_run: bool
) -> _Plan:
    """``--pipe``: the blocks of standard input as jobs of ``command``, made as it is read
    (with ``dry_run``: all of it read now, and no block written)."""
    from .template import CommandTemplate

    try:
        template = CommandTemplate(tuple(command), shell=shell, strings=strings)
    except TemplateError as exc:
        raise click.UsageError(str(exc)) from None
    parser = PipeJobs(template, cutter, cat=cat, dry_run=dry_run)
    name = _command_run_name(command)
    if dry_run:
        return _Plan(list(parser.feed_chunk(_read_input("-"), final=True)), None, name, renames=True)
    return _Plan([], parser, name, renames=True)


def _command_run_name(command: Sequence[str]) -> str:
    """A command line's default run name: its program's name (``commands`` without one)."""
    words = command[0].split() if command else []
    program = Path(words[0]).name if words else ""
    program = program.replace(":", "_")
    return program if program and "{" not in program else "commands"


def _lock_run(state: str, name: str, renames: bool) -> tuple[RunLock, str]:
    """Hold run ``name`` of the journal (see ``runlock.py``); if another process holds it, exit 2,
    or with ``renames`` take the first free ``NAME-2``, ``NAME-3``, ... instead."""
    from .runlock import RunBusyError, RunLock

    first: RunBusyError | None = None
    for n in range(1, MAX_RENAMES + 1 if renames else 2):
        candidate = name if n == 1 else f"{name}-{n}"
        lock = RunLock(state, candidate)
        try:
            lock.acquire()
        except RunBusyError as exc:
            first = first or exc
            continue
        except OSError as exc:
            raise click.ClickException(
                f"cannot lock run {candidate!r} ({lock.path}): {exc.strerror or exc}"
            ) from None
        if first is not None:
            click.echo(f"async-executor: {first.held}; this run is named {candidate!r}", err=True)
        return lock, candidate
    assert first is not None
    raise _Busy(str(first))


@cli.command()
@click.argument("run_name", metavar="[RUN]", required=False)
@_state_option
def status(run_name: str | None, state_path: str | None) -> None:
    """Show the runs in the journal, or the tasks of RUN with their states and durations."""
    from .report import show_status

    sys.exit(_run_async(show_status, _state_path(state_path), run_name))


@cli.command()
@click.argument("key")
@click.option(
    "--run", "run_name", default=None, metavar="NAME", help="Look KEY up as LINE or LINE:HASH in this run."
)
@click.option(
    "--try", "try_number", type=click.IntRange(min=1), default=None, help="Which try (default: the last)."
)
@click.option(
    "-f",
    "--follow",
    is_flag=True,
    help="Keep printing the output as the task writes it, until the task ends (as tail -f).",
)
@_state_option
def logs(
    key: str, run_name: str | None, try_number: int | None, follow: bool, state_path: str | None
) -> None:
    """Print the captured output of task KEY (RUN:LINE:HASH, or LINE with --run)."""
    from .report import show_logs

    sys.exit(_run_async(show_logs, _state_path(state_path), key, run_name, try_number, follow))


def _run_async(func: Any, *args: Any) -> int:
    from .. import _aio
    from .._journal import JournalError

    # uvloop when installed; ASYNC_EXECUTOR_LOOP=asyncio for the standard loop
    kind = "asyncio" if os.environ.get("ASYNC_EXECUTOR_LOOP") == "asyncio" else "auto"
    try:
        result: int = _aio.run(func(*args), kind)
    except KeyboardInterrupt:  # before the run installed its own handler
        click.echo("async-executor: interrupted", err=True)
        return 130
    except (OSError, JournalError) as exc:
        click.echo(f"async-executor: error: {exc}", err=True)
        return 255
    except Exception:
        import traceback

        traceback.print_exc()
        click.echo("async-executor: internal error (a bug: please report the traceback above)", err=True)
        return 255
    return result


def main(argv: Sequence[str] | None = None) -> None:
    """The ``async-executor`` console script (``argv``: run in this process, for embedding)."""
    if argv is not None:  # embedded: click ends with SystemExit, as usual
        cli.main(args=list(argv), prog_name="async-executor")
    try:
        cli.main(prog_name="async-executor")
    except SystemExit as done:
        _exit_now(done.code)


def _exit_now(code: Any) -> NoReturn:
    """End the process without the interpreter's teardown (~5 ms of a one-line run here).

    Every command has closed what it opened (journal, executor, files) before it exits; only
    the standard streams may still hold output.
    """
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe (``| head``) or a closed stream
            pass
    if code is None:
        code = 0
    elif not isinstance(code, int):  # sys.exit("message"): print it, exit 1, as Python does
        try:
            print(code, file=sys.stderr, flush=True)
        except (OSError, ValueError):
            pass
        code = 1
    os._exit(code)
