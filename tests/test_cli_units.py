"""The CLI's pure parts: job-file parsing, halt policies, joblog lines, resume selection."""

from __future__ import annotations

import asyncio
import os
import subprocess

import hypothesis.strategies as st
import pytest
from hypothesis import given, settings

from async_executor import FailureReason, TaskInfo, TaskState
from async_executor._cli.halt import NEVER, HaltPolicy, parse_halt
from async_executor._cli.joblog import HEADER, exit_value, joblog_line
from async_executor._cli.jobs import JobFileError, JobParser, parse_jobs, shell_words
from async_executor._cli.stream import LineSplitter, StreamReader
from async_executor._cli.timeouts import DynamicTimeouts, RunningMedian, Timeout, parse_timeout


def test_parse_skips_blanks_and_comments_and_splits_with_shell_rules() -> None:
    jobs = parse_jobs(["# header", "", "   ", "echo 'a b' c  # trailing", "  true  ", "\t# indented comment"])
    assert [(j.seq, j.line, j.argv) for j in jobs] == [(1, 4, ("echo", "a b", "c")), (2, 5, ("true",))]
    assert jobs[0].text == "echo 'a b' c  # trailing"


@pytest.mark.parametrize(
    "text",
    [
        "/bin/true",
        "echo a  b\tc --x=1 /tmp/a.b $HOME;|&*",
        "echo a#b",
        "echo 'a b'",
        'echo "a b"',
        "echo a\\ b",
        "echo a # comment",
        "echo a\u00a0b",
        "echo a\x0bb",
    ],
)
def test_plain_lines_split_exactly_like_the_general_splitter(text: str) -> None:
    """The fast path for plain lines gives what :func:`shell_words` gives."""
    (job,) = parse_jobs([text])
    assert job.argv == tuple(shell_words(text))


@settings(max_examples=150, deadline=None)
@given(st.text(alphabet="ab #'\"\\\t", max_size=14))
def test_lines_split_into_the_words_sh_gives(text: str) -> None:
    """Words, quotes, escapes and comments as sh itself splits them (a ``#`` starts a comment
    only at the start of a word: ``a#b`` is one word, shlex's ``comments=True`` cuts it)."""
    try:
        words = shell_words(text)
    except ValueError:
        return  # an unclosed quote or a trailing backslash: the line is refused
    script = f"set -- {text}\nfor w; do printf '%s\\0' \"$w\"; done"
    out = subprocess.run(["sh", "-c", script], capture_output=True, check=True).stdout
    assert words == out.decode().split("\0")[:-1]


def test_keys_are_line_number_and_text_hash() -> None:
    a = parse_jobs(["echo hi", "echo ho"])
    b = parse_jobs(["# new first line", "echo hi", "echo ho"])
    assert a[0].key("r") == f"r:1:{a[0].digest}"
    assert a[0].digest == b[0].digest and a[0].key("r") != b[0].key("r")
    assert a[0].digest != a[1].digest


def test_shell_mode_keeps_the_line_whole() -> None:
    (job,) = parse_jobs(["echo $HOME | tr a-z A-Z"], shell=True)
    assert job.argv == ("/bin/sh", "-c", "echo $HOME | tr a-z A-Z")


def test_unbalanced_quotes_name_the_line() -> None:
    with pytest.raises(JobFileError, match=r"jobs.txt, line 3: No closing quotation"):
        parse_jobs(["true", "", "echo 'oops"], source="jobs.txt")


@pytest.mark.parametrize(
    ("text", "policy"),
    [
        ("never", NEVER),
        ("0", NEVER),
        ("1", HaltPolicy("soon", "fail", 1)),
        ("2", HaltPolicy("now", "fail", 1)),
        ("-1", HaltPolicy("soon", "success", 1)),
        ("now,fail=3", HaltPolicy("now", "fail", 3)),
        ("soon,fail=10%", HaltPolicy("soon", "fail", 10, True)),
        ("25%", HaltPolicy("soon", "fail", 25, True)),
        ("now,success=2", HaltPolicy("now", "success", 2)),
        ("soon,done=50%", HaltPolicy("soon", "done", 50, True)),
    ],
)
def test_parse_halt(text: str, policy: HaltPolicy) -> None:
    assert parse_halt(text) == policy


@pytest.mark.parametrize(
    "text", ["later,fail=1", "now,fail", "now,fail=0", "soon,fail=101%", "now,boom=1", "x"]
)
def test_bad_halt(text: str) -> None:
    with pytest.raises(ValueError, match=r"halt|count"):
        parse_halt(text)


def test_halt_thresholds() -> None:
    pct = parse_halt("soon,fail=30%")
    assert pct.threshold(10) == 3
    assert not pct.triggered(failed=2, succeeded=8, total=10)
    assert pct.triggered(failed=3, succeeded=0, total=10)
    assert parse_halt("now,success=2").triggered(failed=5, succeeded=2, total=10)
    assert parse_halt("soon,done=3").triggered(failed=1, succeeded=2, total=10)


def test_joblog_format_matches_gnu_parallel() -> None:
    assert HEADER == "Seq\tHost\tStarttime\tJobRuntime\tSend\tReceive\tExitval\tSignal\tCommand\n"
    info = TaskInfo(
        key="k", state=TaskState.FAILED, returncode=3, started_at=1700000000.1234, ended_at=1700000001.5
    )
    assert joblog_line(7, "sh -c 'exit 3'", info, 12) == (
        "7\t:\t1700000000.123\t     1.377\t0\t12\t3\t0\tsh -c 'exit 3'\n"
    )
    timed_out = TaskInfo(key="k", state=TaskState.FAILED, signal=15, reason=FailureReason.TIMED_OUT)
    assert exit_value(timed_out) == -1
    missing = TaskInfo(
        key="k",
        state=TaskState.FAILED,
        reason=FailureReason.SPAWN_FAILED,
        detail="could not start 'nope': No such file or directory",
    )
    assert exit_value(missing) == 127


# --------------------------------------------------------------------------- input from a pipe

_LINE_TEXT = st.lists(
    st.sampled_from(["echo", " ", "a", "é", "€", "\n", "\r", "\r\n", "\x0c", "\u2028", "#", "'"]),
    max_size=40,
).map("".join)


@given(
    data=st.one_of(_LINE_TEXT.map(lambda t: t.encode()), st.binary(max_size=60)),
    cuts=st.lists(st.integers(min_value=0, max_value=80), max_size=6),
)
@settings(max_examples=300, deadline=None)
def test_streamed_lines_are_the_lines_of_the_whole_input(data: bytes, cuts: list[int]) -> None:
    """Whatever the chunk boundaries (mid-character, between ``\\r`` and ``\\n``), a streamed
    input gives the lines reading it whole gives, so its line numbers and keys are the same."""
    splitter = LineSplitter()
    got: list[str] = []
    start = 0
    for cut in sorted(cuts):
        got.extend(splitter.feed(data[start:cut]))
        start = max(start, cut)
    got.extend(splitter.feed(data[start:]))
    got.extend(splitter.feed(b"", final=True))
    assert got == data.decode("utf-8", "surrogateescape").splitlines()


def test_job_parser_numbers_lines_and_jobs_as_parse_jobs_does() -> None:
    lines = ["# head", "echo a", "", "echo 'b c'", "  # x", "true"]
    parser = JobParser(source="<stdin>")
    fed = [job for job in map(parser.feed, lines) if job is not None]
    assert fed == parse_jobs(lines)
    assert [(job.seq, job.line) for job in fed] == [(1, 2), (2, 4), (3, 6)]
    assert (parser.lines, parser.jobs) == (6, 3)
    with pytest.raises(JobFileError, match=r"<stdin>, line 7: No closing quotation"):
        parser.feed("echo 'oops")


@pytest.mark.anyio
async def test_stream_reader_pauses_resumes_and_ends() -> None:
    loop = asyncio.get_running_loop()
    got: asyncio.Queue[tuple[bytes, OSError | None]] = asyncio.Queue()
    reader_fd, writer_fd = os.pipe()
    reader = StreamReader(reader_fd, loop, lambda chunk, error: got.put_nowait((chunk, error)))
    try:
        reader.start()
        os.write(writer_fd, b"echo 1\n")
        assert await asyncio.wait_for(got.get(), 30) == (b"echo 1\n", None)
        reader.pause()
        os.write(writer_fd, b"echo 2\n")  # a read already under way may still take this one
        await asyncio.sleep(0.3)
        early = b"" if got.empty() else got.get_nowait()[0]
        assert early in (b"", b"echo 2\n")
        os.write(writer_fd, b"echo 3\n")
        await asyncio.sleep(0.3)
        assert got.empty()  # paused: nothing more is read
        reader.resume()
        rest = b""
        while early + rest != b"echo 2\necho 3\n":
            chunk, error = await asyncio.wait_for(got.get(), 30)
            assert chunk and error is None
            rest += chunk
        os.close(writer_fd)
        writer_fd = -1
        assert await asyncio.wait_for(got.get(), 30) == (b"", None)  # the end of the input
    finally:
        reader.close()
        if writer_fd >= 0:
            os.close(writer_fd)
        os.close(reader_fd)


@given(
    st.lists(st.sampled_from([b"\n", b"a", b"\r", b"xy\xff"]), max_size=40).map(b"".join),
    st.lists(st.integers(min_value=1, max_value=12), max_size=12),
)
def test_tag_goes_before_every_line_wherever_the_chunks_end(data: bytes, cuts: list[int]) -> None:
    from async_executor._cli.display import _tagged

    chunks, rest = [], data
    for cut in cuts:
        if rest:
            chunks.append(rest[:cut])
            rest = rest[cut:]
    if rest:
        chunks.append(rest)
    pieces = data.split(b"\n")
    lines = [piece + b"\n" for piece in pieces[:-1]] + ([pieces[-1]] if pieces[-1] else [])
    assert b"".join(_tagged(chunks, b"T\t")) == b"".join(b"T\t" + line for line in lines)
    assert b"".join(_tagged(chunks, None)) == data


# --------------------------------------------------------------------------- --timeout N%


def test_timeouts_parse_seconds_or_a_percentage() -> None:
    assert parse_timeout("2.5") == Timeout(seconds=2.5)
    assert parse_timeout("200%") == Timeout(percent=200.0)
    assert parse_timeout("12.5%") == Timeout(percent=12.5)
    for bad in ("", "x", "%", "-1", "0", "inf", "nan", "-5%", "0%", "5%%"):
        with pytest.raises(ValueError):
            parse_timeout(bad)


@given(st.lists(st.floats(min_value=0, max_value=1e6), min_size=1, max_size=60))
def test_running_median_is_the_lower_median(values: list[float]) -> None:
    median = RunningMedian()
    for count, value in enumerate(values, start=1):
        median.add(value)
        assert len(median) == count
        assert median.median == sorted(values[:count])[(count - 1) // 2]


@pytest.mark.anyio
async def test_dynamic_timeouts_stop_the_tries_past_the_limit_oldest_first() -> None:
    stopped: list[tuple[str, str]] = []
    timeouts: DynamicTimeouts[str] = DynamicTimeouts(300, lambda name, detail: stopped.append((name, detail)))
    for token, name in enumerate(("first", "second", "quick")):
        timeouts.started(token, name)
    await asyncio.sleep(0.05)
    assert timeouts.limit is None and stopped == []  # no success yet: no limit
    timeouts.ended(2, 0.01)  # a success of 10 ms: the limit is 30 ms, both others are past it
    assert timeouts.limit == pytest.approx(0.03)
    await asyncio.sleep(0.01)
    assert [name for name, _ in stopped] == ["first", "second"]
    assert "300% of the median runtime of 1 success(es), 0.01s" in stopped[0][1]
    timeouts.started(3, "failing")
    timeouts.ended(3, None)  # a failure does not count, and is watched no more
    timeouts.ended(0, None)  # the stopped ones end later: nothing happens twice
    await asyncio.sleep(0.1)
    assert len(stopped) == 2 and timeouts.limit == pytest.approx(0.03)
    timeouts.close()


def test_the_cli_parses_its_options_without_an_event_loop_or_the_journal() -> None:
    """Importing the CLI and parsing ``run``'s options (``--timeout N%``, ``--load``, ...)
    imports neither asyncio nor aiosqlite: the CLI's start-up is part of every run's wall."""
    import subprocess
    import sys

    code = (
        "import sys, async_executor._cli as cli\n"
        "args = ['--timeout', '200%', '--load', '2', '--memfree', '1k', '-j', '2', 'echo', ':::', 'a']\n"
        "cli.run.make_context('run', args)\n"
        "print(sorted(m for m in ('asyncio', 'aiosqlite') if m in sys.modules))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.splitlines()[-1] == "[]", result.stdout[-500:]
