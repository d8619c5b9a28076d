"""The CLI's pure parts: job-file parsing, halt policies, joblog lines, resume selection, capture."""

from __future__ import annotations

import os
import shlex
from pathlib import Path

import pytest

from async_executor import FailureReason, TaskInfo, TaskState
from async_executor._cli import capture
from async_executor._cli.halt import NEVER, HaltPolicy, parse_halt
from async_executor._cli.joblog import HEADER, exit_value, joblog_line
from async_executor._cli.jobs import JobFileError, parse_jobs


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
def test_plain_lines_split_exactly_like_shlex(text: str) -> None:
    (job,) = parse_jobs([text])
    assert job.argv == tuple(shlex.split(text, comments=True))


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


# --------------------------------------------------------------------------- output capture

needs_memfd = pytest.mark.skipif(not capture.AVAILABLE, reason="no memfd_create on this platform")


@needs_memfd
def test_capture_creates_a_log_file_only_for_output(tmp_path: Path) -> None:
    cap = capture.Capture(str(tmp_path / "logs"))
    silent = cap.open("run:1:aa", 1)
    talker = cap.open("run:2:bb", 1)
    os.write(talker, b"hello\n")
    assert cap.finish("run:1:aa", 1) == (None, None)
    path, problem = cap.finish("run:2:bb", 1)
    assert problem is None and path is not None
    assert Path(path).read_bytes() == b"hello\n"
    assert [p.name for p in (tmp_path / "logs").iterdir()] == [Path(path).name]
    assert cap.finish("run:2:bb", 1) == (None, None)  # once
    for fd in (silent, talker):  # the capture closed its descriptors
        with pytest.raises(OSError):
            os.fstat(fd)


@needs_memfd
def test_capture_caps_the_log_keeping_its_head(tmp_path: Path) -> None:
    cap = capture.Capture(str(tmp_path), max_bytes=200)
    fd = cap.open("k", 1)
    os.write(fd, b"x" * 1000)
    path, _ = cap.finish("k", 1)
    assert path is not None
    data = Path(path).read_bytes()
    assert len(data) == 200
    assert data.startswith(b"xxx") and data.endswith(b"truncated at the log size cap]\n")


@needs_memfd
def test_capture_moves_large_output_of_a_running_task_out_of_memory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(capture, "SPILL_BYTES", 4096)
    cap = capture.Capture(str(tmp_path))
    fd = cap.open("k", 1)
    child = os.dup(fd)  # what the task holds (its offset goes on growing)
    first = os.urandom(64 * 1024)
    os.write(child, first)
    cap._sweep()
    logs = list(tmp_path.iterdir())
    assert len(logs) == 1 and logs[0].read_bytes() == first
    assert os.fstat(fd).st_blocks * 512 < len(first)  # punched out of the memfd
    os.write(child, b"tail\n")
    path, problem = cap.finish("k", 1)
    os.close(child)
    assert problem is None and path == str(logs[0])
    assert Path(path).read_bytes() == first + b"tail\n"


@needs_memfd
def test_capture_writes_the_output_of_a_long_running_task_as_it_comes(tmp_path: Path) -> None:
    cap = capture.Capture(str(tmp_path))
    fd = cap.open("k", 1)
    cap._sweep()  # the task is running at the first sweep
    os.write(fd, b"early\n")
    cap._sweep()  # ... and still at the next: its new output goes to its log
    logs = list(tmp_path.iterdir())
    assert len(logs) == 1 and logs[0].read_bytes() == b"early\n"
    quick = cap.open("q", 1)
    os.write(quick, b"x")
    cap._sweep()  # a task seen for the first time keeps small output in memory
    assert len(list(tmp_path.iterdir())) == 1
    assert cap.finish("k", 1)[0] == str(logs[0])
    assert cap.finish("q", 1)[0] is not None
