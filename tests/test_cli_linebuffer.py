"""``--line-buffer``: following task output files and printing whole lines (``LineBuffer``)."""

from __future__ import annotations

import os
from pathlib import Path

import hypothesis.strategies as st
import pytest
from hypothesis import given, settings

from async_executor._cli import linebuffer
from async_executor._cli.linebuffer import LineBuffer


class Out:
    """The writer: every write, as it came."""

    def __init__(self) -> None:
        self.writes: list[tuple[bytes, bool]] = []

    def __call__(self, data: bytes, to_stderr: bool) -> None:
        self.writes.append((data, to_stderr))

    def text(self, to_stderr: bool = False) -> bytes:
        return b"".join(data for data, err in self.writes if err == to_stderr)

    def take(self) -> bytes:
        data = self.text()
        self.writes.clear()
        return data


def _append(path: Path, data: bytes) -> None:
    with path.open("ab") as handle:
        handle.write(data)


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_complete_lines_while_running_and_the_rest_when_the_try_ends(tmp_path: Path) -> None:
    fds = _open_fds()
    out, log = Out(), tmp_path / "a.log"
    lines = LineBuffer(out, keep_order=False)
    lines.started(0, [(str(log), False)], None)  # the file does not exist yet: nothing to print
    assert lines.following
    lines.poll()
    assert out.take() == b""
    _append(log, b"started\npart")
    lines.poll()
    assert out.take() == b"started\n"  # never half a line
    _append(log, b"ial\nend")
    lines.poll()
    assert out.take() == b"partial\n"
    lines.try_ended(0)
    assert out.take() == b"end"  # an unfinished last line as it is, as GNU parallel prints it
    lines.finished(0)
    assert not lines.following
    lines.close()
    assert out.take() == b""
    assert _open_fds() == fds  # the file was open while its try ran, and closed at its end


def test_files_of_jobs_waiting_their_turn_are_not_held_open(tmp_path: Path) -> None:
    fds = _open_fds()
    lines = LineBuffer(Out(), keep_order=True)
    for order in range(5):
        log = tmp_path / f"{order}.log"
        log.write_bytes(b"x\n")
        lines.started(order, [(str(log), False)], None)
    lines.poll()
    assert _open_fds() == fds + 1  # only the followed one
    lines.close()
    assert _open_fds() == fds


def test_ungrouped_output_goes_out_as_it_comes(tmp_path: Path) -> None:
    out, log = Out(), tmp_path / "a.log"
    lines = LineBuffer(out, keep_order=False, whole_lines=False)
    lines.started(0, [(str(log), False)], b"T\t")
    _append(log, b"50%\r")
    lines.poll()
    assert out.take() == b"T\t50%\r"  # no newline needed
    _append(log, b"100%\ndone")
    lines.poll()
    lines.try_ended(0)
    assert out.take() == b"100%\nT\tdone"  # the tag only where a line starts


def test_lines_of_different_tasks_interleave_whole(tmp_path: Path) -> None:
    out = Out()
    a, b = tmp_path / "a.log", tmp_path / "b.log"
    lines = LineBuffer(out, keep_order=False)
    lines.started(0, [(str(a), False)], b"A\t")
    lines.started(1, [(str(b), False)], b"B\t")
    _append(a, b"a1\na")
    _append(b, b"b1\n")
    lines.poll()
    assert out.take() == b"A\ta1\nB\tb1\n"
    _append(a, b"2\n")
    lines.try_ended(1)  # b ended with nothing more
    lines.finished(1)
    lines.poll()
    assert out.take() == b"A\ta2\n"  # the line's tag once, though it was read in two pieces


def test_keep_order_follows_the_first_unfinished_job_only(tmp_path: Path) -> None:
    out = Out()
    logs = [tmp_path / f"{n}.log" for n in range(3)]
    lines = LineBuffer(out, keep_order=True)
    for order, log in enumerate(logs):
        lines.started(order, [(str(log), False)], None)
        _append(log, f"x{order}\n".encode())
    lines.poll()
    assert out.take() == b"x0\n"  # jobs 1 and 2 wait in their files
    _append(logs[2], b"y2\n")
    lines.try_ended(2)
    lines.finished(2)  # done before its turn: nothing printed yet
    assert out.take() == b""
    _append(logs[0], b"y0\n")
    lines.try_ended(0)
    lines.finished(0)  # the head is done: then job 1 catches up and is followed
    assert out.take() == b"y0\nx1\n"
    assert lines.following
    _append(logs[1], b"y1\n")
    lines.poll()
    assert out.take() == b"y1\n"
    lines.try_ended(1)
    lines.finished(1)  # and job 2, finished already, comes whole
    assert out.take() == b"x2\ny2\n"
    assert not lines.following


def test_every_try_is_printed_in_order(tmp_path: Path) -> None:
    out = Out()
    first, second = tmp_path / "t1.log", tmp_path / "t2.log"
    lines = LineBuffer(out, keep_order=True)
    lines.started(1, [(str(tmp_path / "other.log"), False)], None)  # waits behind job 0
    lines.started(0, [(str(first), False)], None)
    _append(first, b"try 1 failed")
    lines.try_ended(0)
    lines.started(0, [(str(second), False)], None)  # a retry
    _append(second, b"\ntry 2\n")
    lines.poll()
    assert out.take() == b"try 1 failed\ntry 2\n"


def test_a_file_every_try_rewrites_is_printed_once_for_a_job_waiting_its_turn(tmp_path: Path) -> None:
    """``--results``' stderr file is one per line, rewritten by each try: a job that waits its
    turn under ``-k`` prints what its last try left there, once."""
    out = Out()
    err = tmp_path / "stderr"
    lines = LineBuffer(out, keep_order=True)
    lines.started(0, [(str(tmp_path / "head.log"), False)], None)
    for attempt in (1, 2):
        lines.started(1, [(str(tmp_path / f"t{attempt}.log"), False), (str(err), True)], None)
        err.write_bytes(f"err {attempt}\n".encode())  # truncated and written again by each try
        lines.try_ended(1)
    lines.finished(1)
    lines.try_ended(0)
    lines.finished(0)
    assert out.text(to_stderr=True) == b"err 2\n"


def test_stderr_of_results_goes_to_stderr(tmp_path: Path) -> None:
    out = Out()
    log, err = tmp_path / "a.log", tmp_path / "stderr"
    lines = LineBuffer(out, keep_order=False)
    lines.started(0, [(str(log), False), (str(err), True)], b"t\t")
    _append(log, b"out\n")
    _append(err, b"err\n")
    lines.poll()
    assert out.text() == b"t\tout\n" and out.text(to_stderr=True) == b"t\terr\n"


def test_close_prints_what_is_left_in_order(tmp_path: Path) -> None:
    out = Out()
    lines = LineBuffer(out, keep_order=True)
    for order in (2, 1):  # job 0 never started (the run was stopped)
        log = tmp_path / f"{order}.log"
        _append(log, f"left {order}".encode())
        lines.started(order, [(str(log), False)], None)
    lines.poll()
    assert out.take() == b""
    lines.close()
    assert out.take() == b"left 1left 2"


def test_a_log_cut_back_to_its_cap_is_followed_from_its_new_end(tmp_path: Path) -> None:
    out, log = Out(), tmp_path / "a.log"
    lines = LineBuffer(out, keep_order=False)
    lines.started(0, [(str(log), False)], None)
    _append(log, b"0123456789\n")
    lines.poll()
    log.write_bytes(b"0123\n[c]\n")  # shorter than what was printed: only what comes after
    lines.poll()
    _append(log, b"more\n")
    lines.try_ended(0)
    assert out.take() == b"0123456789\nmore\n"


def test_a_line_longer_than_one_read_goes_out_in_pieces(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(linebuffer, "READ_LIMIT", 8)
    out, log = Out(), tmp_path / "a.log"
    lines = LineBuffer(out, keep_order=False)
    lines.started(0, [(str(log), False)], b"T")
    _append(log, b"x" * 20 + b"\nshort")
    for _ in range(4):
        lines.poll()
    lines.try_ended(0)
    assert out.take() == b"T" + b"x" * 20 + b"\nTshort"  # memory stays bounded; one tag per line


@settings(max_examples=200, deadline=None)
@given(
    pieces=st.lists(st.binary(max_size=12).map(lambda b: b.replace(b"\r", b"\n")), max_size=12),
    polls=st.lists(st.booleans(), max_size=12),
    tag=st.sampled_from([None, b"tag\t"]),
)
def test_whatever_the_timing_output_is_whole_lines_then_the_rest(
    tmp_path_factory: pytest.TempPathFactory, pieces: list[bytes], polls: list[bool], tag: bytes | None
) -> None:
    """Written in any pieces and looked at any time: each write while the try runs is whole
    lines, and all writes together are the file with the tag before each line."""
    log = tmp_path_factory.mktemp("lb") / "a.log"
    log.write_bytes(b"")
    out = Out()
    lines = LineBuffer(out, keep_order=False)
    lines.started(0, [(str(log), False)], tag)
    for index, piece in enumerate(pieces):
        _append(log, piece)
        if index < len(polls) and polls[index]:
            lines.poll()
    running = list(out.writes)
    lines.try_ended(0)
    data = b"".join(pieces)
    assert all(chunk.endswith(b"\n") for chunk, _ in running)
    expected = data
    if tag is not None and data:
        parts = data.split(b"\n")
        expected = b"\n".join(tag + part for part in parts[:-1]) + (b"\n" if len(parts) > 1 else b"")
        expected += tag + parts[-1] if parts[-1] else b""
    assert out.text() == expected


@settings(max_examples=150, deadline=None)
@given(data=st.data())
def test_keep_order_prints_every_job_whole_and_in_order_whatever_the_interleaving(
    tmp_path_factory: pytest.TempPathFactory, data: st.DataObject
) -> None:
    """Jobs with one or two tries, their writes, ends and our polls interleaved at random:
    with ``keep_order`` the output is every job's output, try by try, in input order."""
    folder = tmp_path_factory.mktemp("ko")
    jobs = data.draw(st.integers(1, 4), label="jobs")
    chunk = st.binary(max_size=6).map(lambda b: b.replace(b"\r", b"\n"))
    # each job's own steps, in its order: ("write", try, bytes) ... ("end", try) ..., ("done",)
    steps: list[list[tuple[object, ...]]] = []
    for _ in range(jobs):
        mine: list[tuple[object, ...]] = []
        for attempt in range(data.draw(st.integers(1, 2), label="tries")):
            mine.append(("start", attempt))
            for piece in data.draw(st.lists(chunk, max_size=3), label="writes"):
                mine.append(("write", attempt, piece))
            mine.append(("end", attempt))
        mine.append(("done",))
        steps.append(mine)
    expected_order = b"".join(b"".join(step[2] for step in mine if step[0] == "write") for mine in steps)
    out = Out()
    lines = LineBuffer(out, keep_order=True)
    while any(steps):
        job = data.draw(st.sampled_from([j for j, mine in enumerate(steps) if mine]), label="next")
        step = steps[job].pop(0)
        log = folder / f"{job}-{step[1]}.log" if len(step) > 1 else None
        if step[0] == "start":
            assert log is not None
            log.write_bytes(b"")
            lines.started(job, [(str(log), False)], None)
        elif step[0] == "write":
            assert log is not None
            _append(log, step[2])
        elif step[0] == "end":
            lines.try_ended(job)
        else:
            lines.finished(job)
        if data.draw(st.booleans(), label="poll"):
            lines.poll()
    assert out.text() == expected_order  # every job finished: all printed, nothing followed
    assert not lines.following
    lines.close()
    assert out.text() == expected_order
