"""``async-executor run --pipe``: standard input cut into blocks, one block per job.

The cutting itself (:class:`BlockCutter`) is tested with hypothesis against a reference that
sees the whole input at once; the CLI against GNU parallel where it is installed, and for what
GNU parallel does not show: spool files removed, retries reading the same block, reading that
pauses while blocks wait, blocks that start while the input is still open.
"""

from __future__ import annotations

import itertools
import os
import shutil
import subprocess
from pathlib import Path

import hypothesis.strategies as st
import pytest
from hypothesis import given

from async_executor._cli.jobs import JobFileError
from async_executor._cli.pipe import BACKLOG, BlockCutter, PipeJobs, parse_separator
from async_executor._cli.template import CommandTemplate
from tests.test_cli import _start, _wait_lines, ae, gnu_parallel, status_rows


def _blocks(data: bytes, chunks: list[int], **options: object) -> list[bytes]:
    """``data`` through a cutter in chunks of the given sizes (the rest in one last chunk)."""
    cutter = BlockCutter(**options)  # type: ignore[arg-type]
    blocks: list[bytes] = []
    at = 0
    for size in chunks:
        blocks += cutter.feed(data[at : at + size])
        at += size
    blocks += cutter.feed(data[at:], final=True)
    return blocks


def _records(data: bytes, separator: bytes, recend: bytes) -> list[bytes]:
    """The reference split: ``data`` cut after each ``recend`` of a ``separator`` occurrence."""
    if not separator:
        return [data[i : i + 1] for i in range(len(data))]
    records, start, at = [], 0, 0
    while (found := data.find(separator, at)) >= 0:
        split = found + len(recend)
        if split > start:
            records.append(data[start:split])
            start = split
        at = found + 1
    if start < len(data):
        records.append(data[start:])
    return records


_SEPARATORS = st.sampled_from(
    [(b"\n", b""), (b"A", b""), (b"", b">"), (b"A", b"B"), (b"AB", b""), (b"", b"")]
)


def _inputs(letters: bytes, longest: int) -> st.SearchStrategy[bytes]:
    """Inputs made of ``letters`` (separator bytes among them), up to ``longest`` bytes."""
    return st.binary(max_size=longest).map(lambda raw: bytes(letters[c % len(letters)] for c in raw))


@given(
    data=_inputs(b"\nAB>x", 200),
    chunks=st.lists(st.integers(0, 40), max_size=8),
    separators=_SEPARATORS,
    records=st.integers(1, 4),
)
def test_record_blocks_hold_n_whole_records_whatever_the_chunks(
    data: bytes, chunks: list[int], separators: tuple[bytes, bytes], records: int
) -> None:
    """``-N N``: every block but the last holds exactly N records of the reference split."""
    recend, recstart = separators
    blocks = _blocks(data, chunks, records=records, recend=recend, recstart=recstart)
    reference = _records(data, recend + recstart, recend)
    assert blocks == [b"".join(reference[i : i + records]) for i in range(0, len(reference), records)]


@given(
    data=_inputs(b"\nAB>xy", 300),
    chunks=st.lists(st.integers(0, 60), max_size=8),
    separators=_SEPARATORS,
    size=st.integers(1, 40),
)
def test_size_blocks_are_whole_records_within_the_size(
    data: bytes, chunks: list[int], separators: tuple[bytes, bytes], size: int
) -> None:
    """``--block SIZE``: the blocks are the input, in order, each whole records; a block is at
    most SIZE bytes unless it is a single record (or the input's end), and the same whatever
    the chunk boundaries."""
    recend, recstart = separators
    blocks = _blocks(data, chunks, size=size, recend=recend, recstart=recstart)
    assert b"".join(blocks) == data
    assert blocks == _blocks(data, [], size=size, recend=recend, recstart=recstart)
    assert all(blocks)
    records = _records(data, recend + recstart, recend)
    boundaries = {sum(map(len, records[:i])) for i in range(len(records) + 1)}
    at = 0
    for block in blocks:
        at += len(block)
        assert at in boundaries  # each block ends where a record ends
        if len(block) > size:  # too big: one record, which alone is bigger than the size
            assert block in records
    if recend + recstart:  # no block could have taken the next (complete) record as well
        for index, (block, following) in enumerate(itertools.pairwise(blocks)):
            split = _records(following, recend + recstart, recend)
            if len(split) == 1 and index + 2 == len(blocks):
                continue  # the input's unterminated tail: never joined to a block before it
            assert len(block) + len(split[0]) > size or len(block) > size


def test_the_header_line_goes_before_every_block() -> None:
    assert _blocks(b"id\n1\n2\n3\n", [2, 1], records=2, header=True) == [b"id\n1\n2\n", b"id\n3\n"]
    assert _blocks(b"id\n", [], header=True) == []  # a header alone: no job (as GNU parallel)
    assert _blocks(b"id", [1], header=True) == []


def test_separators_take_c_escapes_and_bad_sizes_are_refused() -> None:
    assert parse_separator("\\n") == b"\n" and parse_separator("\\t>") == b"\t>"
    assert parse_separator("") == b"" and parse_separator("é") == "é".encode()
    with pytest.raises(ValueError, match="at least 1 byte"):
        BlockCutter(size=0)
    with pytest.raises(ValueError, match="at least 1"):
        BlockCutter(records=0)


def test_pipe_jobs_write_each_block_and_remove_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", None)  # TMPDIR is read again
    jobs = PipeJobs(CommandTemplate(("wc", "-l")), BlockCutter(records=2))
    made = list(jobs.feed_chunk(b"a\nb\nc\n", final=True))
    assert [job.line for job in made] == [1, 2] and all(job.stdin for job in made)
    assert [Path(job.block or "").read_bytes() for job in made] == [b"a\nb\n", b"c\n"]
    assert made[0].argv == ("wc", "-l") and made[0].tag == ""
    other = list(
        PipeJobs(CommandTemplate(("wc", "-l")), BlockCutter(records=2)).feed_chunk(b"x\n", final=True)
    )
    assert other[0].text == made[0].text and other[0].digest != made[0].digest  # the hash covers the block
    jobs.remove(made[0])
    assert not os.path.exists(made[0].block or "")
    spool = jobs.spool
    assert spool is not None and Path(spool).parent == tmp_path and (os.stat(spool).st_mode & 0o777) == 0o700
    jobs.close()
    assert not os.path.exists(spool)
    cat = PipeJobs(CommandTemplate(("cat",)), BlockCutter(), cat=True)
    (job,) = cat.feed_chunk(b"z\n", final=True)
    assert job.argv == ("cat", job.block) and not job.stdin  # {} appended: the file's name
    cat.close()


def test_a_spool_that_cannot_be_written_is_an_input_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    jobs = PipeJobs(CommandTemplate(("cat",)), BlockCutter())
    jobs.spool = str(tmp_path / "gone")  # no such directory
    with pytest.raises(JobFileError, match="cannot write block 1 to"):
        list(jobs.feed_chunk(b"a\n", final=True))


# --------------------------------------------------------------------------- the CLI


def _spools(tmp_path: Path) -> list[str]:
    return [name for name in os.listdir(tmp_path / "tmp") if name.startswith("async-executor-pipe-")]


def _pipe_env(tmp_path: Path) -> dict[str, str]:
    (tmp_path / "tmp").mkdir(exist_ok=True)
    return {"TMPDIR": str(tmp_path / "tmp")}


def test_pipe_gives_each_block_to_one_job_and_removes_the_spool(tmp_path: Path) -> None:
    data = "".join(f"{n}\n" for n in range(1, 3001))
    result = ae(
        tmp_path,
        "run",
        "-q",
        "-k",
        "--pipe",
        "--block",
        "2k",
        "wc",
        "-l",
        stdin=data,
        env=_pipe_env(tmp_path),
    )
    assert result.returncode == 0, result.stderr
    counts = [int(line) for line in result.stdout.split()]
    assert sum(counts) == 3000 and len(counts) > 5
    assert _spools(tmp_path) == []
    rows = status_rows(tmp_path, "wc")
    assert sorted(rows) == list(range(1, len(counts) + 1))  # keys: RUN:BLOCK:HASH
    again = ae(tmp_path, "run", "-q", "-k", "--pipe", "-N", "1000", "--cat", "wc", "-l", stdin=data)
    assert again.returncode == 0, again.stderr
    assert [line.split()[0] for line in again.stdout.splitlines()] == ["1000", "1000", "1000"]


def test_a_retry_reads_the_same_block(tmp_path: Path) -> None:
    script = "read first; test -e tried-$first || { touch tried-$first; exit 1; }; echo $first; wc -l"
    result = ae(
        tmp_path,
        "run",
        "-q",
        "-k",
        "--pipe",
        "-N",
        "2",
        "--retries",
        "1",
        "--backoff",
        "0",
        "--shell",
        script,
        stdin="a\nb\nc\nd\n",
        env=_pipe_env(tmp_path),
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["a", "1", "c", "1"]  # the block's first line, then the rest
    assert _spools(tmp_path) == []


def test_reading_pauses_while_blocks_wait(tmp_path: Path) -> None:
    """The spool holds the running jobs' blocks and a few read ahead, not the whole input."""
    data = "x" * 99 + "\n"  # 100-byte lines, 1 KB blocks: a 64 KiB read makes ~64 blocks
    script = 'ls "$(dirname "$1")" | wc -l >> counts; sleep 0.02'
    result = ae(
        tmp_path,
        "run",
        "-q",
        "-j",
        "2",
        "--pipe",
        "--block",
        "20k",
        "--cat",
        "sh",
        "-c",
        f"'{script}'",
        "sh",
        stdin=data * 3000,
        env=_pipe_env(tmp_path),
    )
    assert result.returncode == 0, result.stderr
    counts = [int(n) for n in (tmp_path / "counts").read_text().split()]
    assert len(counts) == 15  # 300,000 bytes in 20 KB blocks
    assert max(counts) <= 2 + BACKLOG + 4, counts  # running + waiting + what one read completes


def test_blocks_start_while_the_input_is_still_open(tmp_path: Path) -> None:
    proc = _start(
        tmp_path, "run", "-j", "2", "--pipe", "-N", "1", "--shell", "cat >> ran", stdin=subprocess.PIPE
    )
    assert proc.stdin is not None
    proc.stdin.write("first\n")
    proc.stdin.flush()
    assert _wait_lines(tmp_path / "ran", 1, proc) == ["first"]  # the pipe is still open
    _out, err = proc.communicate("second\n", timeout=60)
    assert proc.returncode == 0, err
    assert (tmp_path / "ran").read_text().split() == ["first", "second"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--pipe", "cat", ":::", "a"], "give COMMAND alone"),
        (["--pipe", "-a", "x", "cat"], "give COMMAND alone"),
        (["--pipe"], "no command"),
        (["--pipe", "--colsep", ",", "cat"], "--colsep cannot be used"),
        (["--pipe", "--resume", "cat"], "--resume/--retry-failed cannot be used"),
        (["--pipe", "-0", "cat"], "use --recend"),
        (["--block", "1M", "cat", ":::", "a"], "--block applies to --pipe"),
        (["--recend", "x", "cat", ":::", "a"], "--recend applies to --pipe"),
        (["--pipe", "--block", "0", "cat"], "a block must be 1 byte to 2 GiB"),
        (["--pipe", "--block", "lots", "cat"], "is not a size"),
    ],
)
def test_bad_pipe_uses_exit_2(tmp_path: Path, args: list[str], message: str) -> None:
    result = ae(tmp_path, "run", *args, stdin="a\n")
    assert result.returncode == 2 and message in result.stderr, result.stderr


def test_same_blocks_and_outputs_as_gnu_parallel(tmp_path: Path) -> None:
    if shutil.which("parallel") is None:
        pytest.skip("GNU parallel is not installed (apt-get install -y parallel): comparison not run")
    show = "printf '[{#}'; tr '\\n' ' '; echo ']'"
    lines = "".join(f"{n}\n" for n in range(1, 13))
    cases = [
        (["--block", "6", show], lines),
        (["-N", "5", show], lines),
        (["--block", "3", show], "1\n2\n3\n4\n5\n"),
        (["-N", "2", "--header", ":", show], "h1\na\nb\nc\n"),
        (["--recend", "A", "-N", "2", "printf '['; cat; echo ']'"], "xAyAzA"),
        (["--recstart", ">", "-N", "2", show], ">a\n1\n>b\n2\n>c\n3\n"),
        (["--recend", "\\t", "-N", "1", "printf '['; cat; echo ']'"], "a\tb\t"),
        (["--recend", "", "--block", "4", "printf '['; cat; echo ']'"], "1234567890"),
        (["-N", "1", "--tag", "cat"], "a\nb\n"),
        (["-N", "1", "--dry-run", "wc", "-l"], "a\nb\n"),
        (["-N", "1", "--cat", "--dry-run", "wc", "-l", "{}"], "a\nb\n"),
        (["-N", "1", "--cat", "wc -l < {}"], "a\nb\nc\n"),
        (["cat"], ""),
    ]
    for options, stdin in cases:
        gnu = gnu_parallel(tmp_path, "-k", "--pipe", *options, stdin=stdin)
        ours = ae(tmp_path, "run", "-q", "-k", "--pipe", "--shell", *options, stdin=stdin)
        assert ours.stdout == gnu.stdout, (options, ours.stderr)
        assert ours.returncode == gnu.returncode == 0, (options, ours.stderr, gnu.stderr)
