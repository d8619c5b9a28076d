"""``async-executor`` driven as a real program: ``python -m async_executor`` in a subprocess.

No assertion here depends on how fast the machine is: where a test needs one task to end before
another, the slower one waits for a file or sleeps long enough, and only outcomes are checked.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from .conftest import group_members, pid_alive

CLI = [sys.executable, "-m", "async_executor"]
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b\][^\x07]*\x07")


#: The checkout under test: the CLI subprocesses must import it, not another installed copy.
SOURCE_ROOT = str(Path(__file__).resolve().parent.parent)


def _env(tmp_path: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [SOURCE_ROOT, env.get("PYTHONPATH")]))
    env["ASYNC_EXECUTOR_HOME"] = str(tmp_path / "home")
    env.pop("XDG_STATE_HOME", None)
    return env


def ae(
    tmp_path: Path,
    *args: str,
    stdin: str | None = None,
    timeout: float = 120,
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLI, *args],
        cwd=tmp_path,
        env={**_env(tmp_path), **(env or {})},
        input=stdin,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def gnu_parallel(tmp_path: Path, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    """GNU parallel run as :func:`ae` runs ours (the other side of a comparison)."""
    return subprocess.run(
        ["parallel", "--will-cite", *args],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        input=stdin,
        check=False,
    )


def jobfile(tmp_path: Path, lines: Sequence[str], name: str = "jobs.txt") -> Path:
    path = tmp_path / name
    path.write_text("".join(f"{line}\n" for line in lines))
    return path


def status_rows(tmp_path: Path, run: str) -> dict[int, dict[str, str]]:
    """``status RUN`` (tab-separated when not a terminal), by line number."""
    result = ae(tmp_path, "status", run)
    assert result.returncode == 0, result.stderr
    header, *rows = result.stdout.splitlines()
    columns = header.split("\t")
    out = {}
    for row in rows:
        fields = dict(zip(columns, row.split("\t"), strict=False))
        out[int(fields["key"].split(":")[1])] = fields
    return out


def joblog_rows(path: Path) -> list[dict[str, str]]:
    header, *rows = path.read_text().splitlines()
    columns = header.split("\t")
    return [dict(zip(columns, row.split("\t", len(columns) - 1), strict=False)) for row in rows]


# --------------------------------------------------------------------------- bad input: exit 2


def test_missing_job_file(tmp_path: Path) -> None:
    result = ae(tmp_path, "run", "nope.txt")
    assert result.returncode == 2
    assert "cannot read nope.txt" in result.stderr


def test_unreadable_job_file(tmp_path: Path) -> None:
    (tmp_path / "adir").mkdir()
    result = ae(tmp_path, "run", "adir")
    assert result.returncode == 2
    assert "cannot read adir" in result.stderr


def test_unbalanced_quotes_name_the_line_and_start_nothing(tmp_path: Path) -> None:
    path = jobfile(tmp_path, ["touch started", "# fine", "echo 'unbalanced", "touch also-started"])
    result = ae(tmp_path, "run", str(path))
    assert result.returncode == 2
    assert "line 3" in result.stderr and "No closing quotation" in result.stderr
    assert "nothing was started" in result.stderr
    assert not (tmp_path / "started").exists() and not (tmp_path / "also-started").exists()
    assert not (tmp_path / "home" / "journal.sqlite").exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["-j", "abc"], "'abc' is not a job count"),
        (["-j", "-"], "is not a job count"),
        (["--bogus-flag"], "--bogus-flag"),
        (["--halt", "later,fail=1"], "is not a halt policy"),
        (["--timeout", "-1"], "--timeout"),
        (["--timeout", "abc"], "not a number of seconds or a percentage"),
        (["--timeout", "0%"], "a percentage must be above 0"),
        (["-d", ","], "-d/--delimiter needs a command"),
        (["--load", "x"], "is not a load"),
        (["--retries", "x"], "--retries"),
        (["--resume", "--retry-failed"], "cannot be used together"),
        (["--run", "a:b"], "contain no ':'"),
    ],
)
def test_bad_usage_exits_2(tmp_path: Path, args: list[str], message: str) -> None:
    path = jobfile(tmp_path, ["touch started"])
    result = ae(tmp_path, "run", *args, str(path))
    assert result.returncode == 2, result.stderr
    assert message in result.stderr
    assert not (tmp_path / "started").exists()


def test_unknown_command_exits_2(tmp_path: Path) -> None:
    result = ae(tmp_path, "frobnicate")
    assert result.returncode == 2
    assert "No such command" in result.stderr


def test_help_documents_exit_codes(tmp_path: Path) -> None:
    result = ae(tmp_path, "run", "--help")
    assert result.returncode == 0
    for line in (
        "0      every line that ran succeeded",
        "1      one or more lines failed",
        "2      bad usage",
    ):
        assert line in result.stdout


# --------------------------------------------------------------------------- running lines


def test_runs_lines_without_a_shell_and_reports_exit_codes(tmp_path: Path) -> None:
    path = jobfile(tmp_path, ["# comment", "", "echo 'a  b' $HOME", "printf '%s-%s\\n' x y", "true"])
    result = ae(tmp_path, "run", "-j", "2", str(path))
    assert result.returncode == 0, result.stderr
    assert sorted(result.stdout.splitlines()) == ["a  b $HOME", "x-y"]
    rows = status_rows(tmp_path, "jobs")
    assert sorted(rows) == [3, 4, 5]
    assert {r["state"] for r in rows.values()} == {"success"}


def test_one_failure_exits_1_and_is_reported(tmp_path: Path) -> None:
    path = jobfile(tmp_path, ["true", "sh -c 'exit 4'", "does-not-exist-anywhere"])
    result = ae(tmp_path, "run", str(path))
    assert result.returncode == 1
    assert "line 2 failed (exit 4)" in result.stderr
    assert "line 3 failed (could not start 'does-not-exist-anywhere'" in result.stderr
    rows = status_rows(tmp_path, "jobs")
    assert rows[2]["outcome"] == "exit 4" and rows[2]["state"] == "failed"
    assert rows[3]["outcome"].startswith("spawn_failed")


def test_shell_flag(tmp_path: Path) -> None:
    path = jobfile(tmp_path, ["echo $((6 * 7)) | tr 4 X"])
    plain = ae(tmp_path, "run", "--run", "plain", str(path))
    assert plain.stdout == "$((6 * 7)) | tr 4 X\n"
    shell = ae(tmp_path, "run", "--shell", "--run", "shell", str(path))
    assert shell.returncode == 0
    assert shell.stdout == "X2\n"


def test_stdin_job_file(tmp_path: Path) -> None:
    result = ae(tmp_path, "run", "-", stdin="echo one\necho two\n")
    assert result.returncode == 0
    assert sorted(result.stdout.split()) == ["one", "two"]
    assert sorted(status_rows(tmp_path, "stdin")) == [1, 2]


@pytest.mark.parametrize("jobs", ["50%", "0", "+1", "3"])
def test_job_counts(tmp_path: Path, jobs: str) -> None:
    path = jobfile(tmp_path, [f"echo {i}" for i in range(20)])
    result = ae(tmp_path, "run", "-j", jobs, str(path))
    assert result.returncode == 0, result.stderr
    assert sorted(result.stdout.split(), key=int) == [str(i) for i in range(20)]


def test_quiet_prints_only_task_output(tmp_path: Path) -> None:
    path = jobfile(tmp_path, ["echo hi", "false"])
    result = ae(tmp_path, "run", "--quiet", str(path))
    assert result.returncode == 1
    assert result.stdout == "hi\n"
    assert result.stderr == ""


def test_keep_order(tmp_path: Path) -> None:
    lines = ["sh -c 'sleep 0.6; echo first'", "sh -c 'sleep 0.3; echo second'", "echo third"]
    path = jobfile(tmp_path, lines)
    result = ae(tmp_path, "run", "-j", "3", "--keep-order", str(path))
    assert result.returncode == 0
    assert result.stdout == "first\nsecond\nthird\n"


def test_grouped_output_is_never_interleaved(tmp_path: Path) -> None:
    # Each task writes its lines in pieces with pauses; all run at once.
    script = 'for i in 1 2 3 4 5; do printf "T%s-" {n}; sleep 0.01; printf "%s\\n" $i; done'
    path = jobfile(tmp_path, [f"sh -c '{script.format(n=n)}'" for n in range(16)])
    result = ae(tmp_path, "run", "-j", "16", str(path))
    assert result.returncode == 0
    lines = result.stdout.splitlines()
    assert len(lines) == 16 * 5
    for start in range(0, len(lines), 5):
        group = lines[start : start + 5]
        task = group[0].split("-")[0]
        assert group == [f"{task}-{i}" for i in range(1, 6)]


def test_every_output_reaches_a_pipe_before_the_process_exits(tmp_path: Path) -> None:
    # The CLI ends without the interpreter's teardown (os._exit): its buffered output must
    # still all be written, well past a pipe's capacity, and the exit code kept.
    lines = [f"sh -c 'printf \"%0900d\\n\" {i}; exit {1 if i == 7 else 0}'" for i in range(300)]
    result = ae(tmp_path, "run", "-j", "8", "--keep-order", "--quiet", str(jobfile(tmp_path, lines)))
    assert result.returncode == 1
    assert result.stdout.splitlines() == [f"{i:0900d}" for i in range(300)]


def test_a_reader_that_goes_away_does_not_stop_the_run(tmp_path: Path) -> None:
    lines = [f"sh -c 'printf \"%0900d\\n\" {i}'" for i in range(300)]
    path = jobfile(tmp_path, lines)
    proc = subprocess.Popen(
        [*CLI, "run", "-j", "8", "--quiet", str(path)],
        cwd=tmp_path,
        env=_env(tmp_path),
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    assert proc.stdout is not None
    proc.stdout.read(1000)
    proc.stdout.close()  # like `| head -c 1000`: the run goes on, the rest of the output is dropped
    assert proc.wait(timeout=120) == 0
    rows = status_rows(tmp_path, "jobs")
    assert len(rows) == 300 and {row["state"] for row in rows.values()} == {"success"}


def test_logs_and_status(tmp_path: Path) -> None:
    path = jobfile(tmp_path, ["echo out-1", "sh -c 'echo err-2 >&2; exit 2'"])
    assert ae(tmp_path, "run", str(path)).returncode == 1
    runs = ae(tmp_path, "status")
    assert runs.returncode == 0
    header, row = runs.stdout.splitlines()
    assert header.split("\t")[:4] == ["run", "tasks", "succeeded", "failed"]
    assert row.split("\t")[:4] == ["jobs", "2", "1", "1"]
    key = status_rows(tmp_path, "jobs")[1]["key"]
    assert ae(tmp_path, "logs", key).stdout == "out-1\n"
    assert ae(tmp_path, "logs", "--run", "jobs", "2").stdout == "err-2\n"
    assert ae(tmp_path, "logs", "jobs:9:00000000").returncode == 1
    assert ae(tmp_path, "status", "no-such-run").returncode == 1


def test_silent_tasks_get_no_log_file_and_big_outputs_are_whole(tmp_path: Path) -> None:
    # 3 MB, written slowly enough that part of it leaves memory while the task runs
    big = "sh -c 'head -c 1500000 /dev/zero | tr \\\\0 a; sleep 0.7; head -c 1500000 /dev/zero | tr \\\\0 b'"
    path = jobfile(tmp_path, ["true", big])
    result = ae(tmp_path, "run", "--quiet", str(path))
    assert result.returncode == 0, result.stderr
    assert result.stdout == "a" * 1_500_000 + "b" * 1_500_000
    logs = list((tmp_path / "home" / "logs").iterdir())
    assert len(logs) == 1 and logs[0].stat().st_size == 3_000_000
    silent = ae(tmp_path, "logs", "--run", "jobs", "1")
    assert (silent.returncode, silent.stdout, silent.stderr) == (0, "", "")
    assert len(ae(tmp_path, "logs", "--run", "jobs", "2").stdout) == 3_000_000


def test_logs_go_with_the_rows_retention_prunes(tmp_path: Path) -> None:
    """A week after a run (the journal's retention), its rows and its log files go together;
    the newer run's logs stay."""
    assert ae(tmp_path, "run", "--quiet", str(jobfile(tmp_path, ["echo old"], "old.txt"))).returncode == 0
    logs = tmp_path / "home" / "logs"
    (old_log,) = logs.iterdir()
    week_ago = time.time() - 8 * 86400
    con = sqlite3.connect(tmp_path / "home" / "journal.sqlite")
    with con:
        con.execute("UPDATE tasks SET accepted_at = ?, started_at = ?, ended_at = ?", (week_ago,) * 3)
    con.close()
    os.utime(old_log, (week_ago, week_ago))
    assert ae(tmp_path, "run", "--quiet", str(jobfile(tmp_path, ["echo new"], "new.txt"))).returncode == 0
    assert [path.read_text() for path in logs.iterdir()] == ["new\n"]
    assert "old" not in ae(tmp_path, "status").stdout


def test_logs_of_a_running_task(tmp_path: Path) -> None:
    path = jobfile(tmp_path, ["sh -c 'echo early; sleep 30'"])
    proc = subprocess.Popen(
        [*CLI, "run", "--quiet", str(path)], cwd=tmp_path, env=_env(tmp_path), stdout=subprocess.PIPE
    )
    try:
        seen = ""
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and seen != "early\n":
            time.sleep(0.2)
            seen = ae(tmp_path, "logs", "--run", "jobs", "1").stdout
        assert seen == "early\n"
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=30)


def test_logs_follow_a_running_task_until_it_ends(tmp_path: Path) -> None:
    """``logs -f``: what the task wrote so far, then what it writes later, and an exit of its
    own once the task has ended (``tail -f`` that knows when to stop)."""
    wait = "i=0; while [ ! -e release ]; do i=$((i+1)); [ $i -gt 2000 ] && exit 9; sleep 0.03; done"
    path = jobfile(tmp_path, [f"sh -c 'echo early; {wait}; echo late'"])
    run = subprocess.Popen(
        [*CLI, "run", "--quiet", str(path)], cwd=tmp_path, env=_env(tmp_path), stdout=subprocess.PIPE
    )
    follow = None
    try:
        deadline = time.monotonic() + 30
        while ae(tmp_path, "logs", "--run", "jobs", "1").stdout != "early\n":
            assert time.monotonic() < deadline and run.poll() is None
            time.sleep(0.1)
        follow = subprocess.Popen(
            [*CLI, "logs", "-f", "--run", "jobs", "1"],
            cwd=tmp_path,
            env=_env(tmp_path),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        assert _read_until(follow, "early", stream="stdout") == "early\n"
        assert follow.poll() is None  # the task still runs: still following
        (tmp_path / "release").touch()
        rest, err = follow.communicate(timeout=60)
        assert follow.returncode == 0, err
        assert rest == b"late\n"
        run.communicate(timeout=60)
        assert run.returncode == 0
    finally:
        for proc in (run, follow):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.communicate()


def test_results_dir_keeps_stdout_and_stderr(tmp_path: Path) -> None:
    path = jobfile(tmp_path, ["sh -c 'echo to-out; echo to-err >&2; exit 5'", "echo plain"])
    result = ae(tmp_path, "run", "--results", "res", str(path))
    assert result.returncode == 1
    assert (tmp_path / "res" / "1" / "stdout").read_text() == "to-out\n"
    assert (tmp_path / "res" / "1" / "stderr").read_text() == "to-err\n"
    assert (tmp_path / "res" / "1" / "exitval").read_text() == "5\n"
    assert (tmp_path / "res" / "2" / "stdout").read_text() == "plain\n"
    assert "to-err" in result.stderr and "to-out" in result.stdout


def test_jobs_get_the_shells_open_file_limit(tmp_path: Path) -> None:
    # As under xargs or GNU parallel: the CLI raises its own soft limit (a descriptor per
    # running job), its jobs see the ulimit -Sn of the shell that started it.
    import resource

    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    if hard != resource.RLIM_INFINITY and hard < 1024:
        pytest.skip("the hard open-file limit is too low to tell the two apart")
    path = jobfile(tmp_path, ["sh -c 'ulimit -Sn'"] * 4 + ["sh -c 'ulimit -Hn'"])

    result = subprocess.run(
        ["sh", "-c", 'ulimit -Sn 256 && exec "$@"', "sh", *CLI, "run", "-j4", "--results=res", str(path)],
        cwd=tmp_path,
        env=_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    outputs = [(tmp_path / "res" / str(n) / "stdout").read_text().strip() for n in range(1, 6)]
    assert outputs == ["256"] * 4 + [str(hard) if hard != resource.RLIM_INFINITY else "unlimited"], outputs


# --------------------------------------------------------------------------- timeouts, retries


def test_timeout_kills_the_whole_process_group(tmp_path: Path) -> None:
    path = jobfile(tmp_path, ["sh -c 'sleep 60 & echo $! > kid; echo $$ > leader; wait'", "true"])
    result = ae(tmp_path, "run", "--timeout", "0.5", "--kill-grace", "1", "--joblog", "log.tsv", str(path))
    assert result.returncode == 1
    assert "timed out after 0.5s" in result.stderr
    kid = int((tmp_path / "kid").read_text())
    leader = int((tmp_path / "leader").read_text())
    assert not pid_alive(kid)
    assert group_members(leader) == []
    rows = {r["Command"]: r for r in joblog_rows(tmp_path / "log.tsv")}
    timed_out = rows["sh -c 'sleep 60 & echo $! > kid; echo $$ > leader; wait'"]
    assert (timed_out["Exitval"], timed_out["Signal"]) == ("-1", "15")
    assert rows["true"]["Exitval"] == "0"
    assert status_rows(tmp_path, "jobs")[1]["outcome"].startswith("timed_out")


def test_timeout_percent_of_the_median_success_runtime(tmp_path: Path) -> None:
    """``--timeout 200%``: no limit until a task has succeeded; then tasks running longer than
    twice the median success runtime are stopped, one that started before the median was
    known included, as GNU parallel does."""
    straggler = "sh -c 'echo $$ > leader; sleep 60'"
    path = jobfile(tmp_path, [straggler, "sleep 0.3", "sleep 0.1"])
    result = ae(tmp_path, "run", "-j", "2", "--timeout", "200%", "--kill-grace", "1", str(path))
    assert result.returncode == 1, result.stderr
    assert "(200% of the median runtime of " in result.stderr
    rows = status_rows(tmp_path, "jobs")
    assert rows[1]["state"] == "failed" and rows[1]["outcome"].startswith("timed_out")
    assert (rows[2]["state"], rows[3]["state"]) == ("success", "success")
    assert group_members(int((tmp_path / "leader").read_text())) == []


def test_timeout_percent_times_out_each_try_of_a_retried_line(tmp_path: Path) -> None:
    """``--timeout 300% --retries 1``: a try stopped for running too long is retried, and the
    retry is held to the limit too; ``--lb`` shows each try's output as it comes."""
    straggler = "sh -c 'echo try; sleep 60'"
    path = jobfile(tmp_path, ["sleep 0.2", straggler])
    result = ae(
        tmp_path, "run", "-j", "1", "--lb", "--timeout", "300%", "--retries", "1", "--backoff", "0",
        "--kill-grace", "1", str(path),
    )  # fmt: skip
    assert result.returncode == 1, result.stderr
    assert result.stdout == "try\ntry\n"  # both tries ran, and each was printed
    assert result.stderr.count("timed out after") == 2  # the retry note, then the failure
    row = status_rows(tmp_path, "jobs")[2]
    assert (row["state"], row["try"]) == ("failed", "2") and row["outcome"].startswith("timed_out")


def test_retries_rerun_a_failing_line_with_backoff(tmp_path: Path) -> None:
    flaky = "sh -c 'date +%s.%N >> flaky.times; test -e flaky.ok && echo recovered || { touch flaky.ok; exit 1; }'"
    always = "sh -c 'date +%s.%N >> always.times; exit 9'"
    path = jobfile(tmp_path, [flaky, always])
    result = ae(tmp_path, "run", "--retries", "2", "--backoff", "0.2", str(path))
    assert result.returncode == 1
    assert "recovered" in result.stdout
    assert len((tmp_path / "flaky.times").read_text().split()) == 2
    times = [float(t) for t in (tmp_path / "always.times").read_text().split()]
    assert len(times) == 3
    # exponential backoff: at least 0.2 s, then at least 0.4 s between tries (lower bounds only)
    assert times[1] - times[0] >= 0.2 and times[2] - times[1] >= 0.4
    rows = status_rows(tmp_path, "jobs")
    assert (rows[1]["state"], rows[1]["try"]) == ("success", "2")
    assert (rows[2]["state"], rows[2]["try"]) == ("failed", "3")


# --------------------------------------------------------------------------- halt policies


def _ran(tmp_path: Path) -> list[str]:
    ran = tmp_path / "ran"
    return ran.read_text().split() if ran.exists() else []


def test_halt_now_fail_terminates_running_tasks(tmp_path: Path) -> None:
    lines = [
        "sh -c 'echo $$ > slow.pid; echo slow >> ran; sleep 60'",
        "sh -c 'while [ ! -e slow.pid ]; do sleep 0.01; done; echo fail >> ran; exit 1'",
        *[f"sh -c 'echo later{i} >> ran'" for i in range(5)],
    ]
    path = jobfile(tmp_path, lines)
    result = ae(tmp_path, "run", "-j", "2", "--halt", "now,fail=1", "--kill-grace", "1", str(path))
    assert result.returncode == 3
    assert sorted(_ran(tmp_path)) == ["fail", "slow"]
    assert group_members(int((tmp_path / "slow.pid").read_text())) == []
    rows = status_rows(tmp_path, "jobs")
    assert rows[1]["outcome"].startswith("terminated")
    assert sorted(rows) == [1, 2]  # later lines were never started


def test_halt_soon_fail_waits_for_running_tasks(tmp_path: Path) -> None:
    lines = [
        "sh -c 'while [ ! -e failed ]; do sleep 0.01; done; sleep 0.2; echo slow >> ran'",
        "sh -c 'touch failed; exit 1'",
        *[f"sh -c 'echo later{i} >> ran'" for i in range(5)],
    ]
    path = jobfile(tmp_path, lines)
    result = ae(tmp_path, "run", "-j", "2", "--halt", "soon,fail=1", str(path))
    assert result.returncode == 3
    assert _ran(tmp_path) == ["slow"]  # the running task finished; nothing new started
    assert "starting no more tasks" in result.stderr


def test_halt_fail_percent(tmp_path: Path) -> None:
    lines = [f"sh -c 'echo {i} >> ran; exit {1 if i < 3 else 0}'" for i in range(10)]
    path = jobfile(tmp_path, lines)
    result = ae(tmp_path, "run", "-j", "1", "--halt", "soon,fail=30%", str(path))
    assert result.returncode == 3
    assert _ran(tmp_path) == ["0", "1", "2"]


def test_halt_fail_count(tmp_path: Path) -> None:
    lines = [f"sh -c 'echo {i} >> ran; exit {i % 2}'" for i in range(10)]
    path = jobfile(tmp_path, lines)
    result = ae(tmp_path, "run", "-j", "1", "--halt", "soon,fail=2", str(path))
    assert result.returncode == 3
    assert _ran(tmp_path) == ["0", "1", "2", "3"]


def test_halt_success(tmp_path: Path) -> None:
    lines = [f"sh -c 'echo {i} >> ran'" for i in range(6)]
    path = jobfile(tmp_path, lines)
    result = ae(tmp_path, "run", "-j", "1", "--halt", "soon,success=2", str(path))
    assert result.returncode == 0
    assert _ran(tmp_path) == ["0", "1"]


# --------------------------------------------------------------------------- resume, retry-failed


def test_resume_skips_succeeded_lines_after_the_file_was_edited(tmp_path: Path) -> None:
    lines = [f"sh -c 'echo {c} >> ran; test {c} != c || test -e c.ok'" for c in "abcde"]
    path = jobfile(tmp_path, lines)
    first = ae(tmp_path, "run", str(path))
    assert first.returncode == 1
    assert sorted(_ran(tmp_path)) == list("abcde")
    (tmp_path / "ran").unlink()
    (tmp_path / "c.ok").touch()
    # edit: a new line at the top moves every line down by one
    jobfile(tmp_path, ["# added later", "sh -c 'echo new >> ran'", *lines])
    second = ae(tmp_path, "run", "--resume", str(path))
    assert second.returncode == 0, second.stderr
    assert sorted(_ran(tmp_path)) == ["c", "new"]
    assert "5 skipped" in second.stderr or "4 skipped" in second.stderr
    (tmp_path / "ran").unlink()
    third = ae(tmp_path, "run", "--resume-failed", str(path))  # GNU parallel's name for it
    assert third.returncode == 0
    assert _ran(tmp_path) == []


def test_retry_failed_reruns_only_failures(tmp_path: Path) -> None:
    lines = [f"sh -c 'echo {c} >> ran; test {c} != b -a {c} != d || test -e ok'" for c in "abcde"]
    path = jobfile(tmp_path, lines)
    assert ae(tmp_path, "run", str(path)).returncode == 1
    (tmp_path / "ran").unlink()
    jobfile(tmp_path, [*lines, "sh -c 'echo new >> ran'"])  # a new line is not a failure
    still = ae(tmp_path, "run", "--retry-failed", str(path))
    assert still.returncode == 1
    assert sorted(_ran(tmp_path)) == ["b", "d"]
    (tmp_path / "ran").unlink()
    (tmp_path / "ok").touch()
    fixed = ae(tmp_path, "run", "--retry-failed", str(path))
    assert fixed.returncode == 0
    assert sorted(_ran(tmp_path)) == ["b", "d"]
    rows = status_rows(tmp_path, "jobs")
    assert (rows[2]["state"], rows[2]["try"]) == ("success", "3")


# --------------------------------------------------------------------------- Ctrl-C


def _wait_lines(path: Path, count: int, proc: subprocess.Popen[str], timeout: float = 30) -> list[str]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists():
            lines = path.read_text().split()
            if len(lines) >= count:
                return lines
        if proc.poll() is not None:
            raise AssertionError(f"the CLI exited early: {proc.communicate()}")
        time.sleep(0.02)
    raise AssertionError(f"{path} did not reach {count} lines")


def _start(tmp_path: Path, *args: str, stdin: int | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [*CLI, *args],
        cwd=tmp_path,
        env=_env(tmp_path),
        stdin=stdin,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_one_ctrl_c_stops_starting_and_waits_then_resume_continues(tmp_path: Path) -> None:
    line = "sh -c 'echo $$ >> pids; while [ ! -e release ]; do sleep 0.01; done; echo {n} >> done'"
    path = jobfile(tmp_path, [line.format(n=n) for n in range(6)])
    proc = _start(tmp_path, "run", "-j", "2", str(path))
    _wait_lines(tmp_path / "pids", 2, proc)
    proc.send_signal(signal.SIGINT)
    time.sleep(0.3)  # let the CLI take the signal before the tasks may finish
    (tmp_path / "release").touch()
    _out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "interrupted: starting no new tasks" in err
    assert len((tmp_path / "pids").read_text().split()) == 2  # nothing new started
    assert len((tmp_path / "done").read_text().split()) == 2  # the running ones finished
    rows = status_rows(tmp_path, "jobs")
    assert len(rows) == 2 and {r["state"] for r in rows.values()} == {"success"}
    resumed = ae(tmp_path, "run", "--resume", str(path))
    assert resumed.returncode == 0, resumed.stderr
    assert sorted((tmp_path / "done").read_text().split()) == [str(n) for n in range(6)]


def test_two_ctrl_c_terminate_every_process_group(tmp_path: Path) -> None:
    line = (
        "sh -c 'echo $$ >> pids; test -e fast || {{ sleep 60 & echo $! >> kids; wait; }}; echo {n} >> done'"
    )
    path = jobfile(tmp_path, [line.format(n=n) for n in range(4)])
    proc = _start(tmp_path, "run", "-j", "2", "--kill-grace", "1", str(path))
    _wait_lines(tmp_path / "kids", 2, proc)
    proc.send_signal(signal.SIGINT)
    time.sleep(0.3)
    proc.send_signal(signal.SIGINT)
    _out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "terminating every running task" in err
    for pid in (tmp_path / "pids").read_text().split():
        assert group_members(int(pid)) == []
    for kid in (tmp_path / "kids").read_text().split():
        assert not pid_alive(int(kid))
    rows = status_rows(tmp_path, "jobs")
    assert len(rows) == 2
    assert {r["state"] for r in rows.values()} == {"failed"}  # consistent: none left running
    assert all(r["outcome"].startswith("terminated") for r in rows.values())
    (tmp_path / "fast").touch()
    resumed = ae(tmp_path, "run", "--resume", str(path))
    assert resumed.returncode == 0, resumed.stderr
    assert sorted((tmp_path / "done").read_text().split()) == ["0", "1", "2", "3"]


# --------------------------------------------------------------------------- a killed CLI


def _read_until(
    proc: subprocess.Popen[Any], text: str, count: int = 1, timeout: float = 60, stream: str = "stderr"
) -> str:
    """Read the CLI's stderr (or stdout; unbuffered) until ``text`` appeared ``count`` times."""
    import select

    pipe = proc.stdout if stream == "stdout" else proc.stderr
    assert pipe is not None
    fd, seen = pipe.fileno(), b""
    deadline = time.monotonic() + timeout
    while seen.decode(errors="replace").count(text) < count:
        if time.monotonic() > deadline or not select.select([fd], [], [], deadline - time.monotonic())[0]:
            raise AssertionError(f"{text!r} did not appear {count}x in: {seen!r}")
        chunk = os.read(fd, 65536)
        if not chunk:
            raise AssertionError(f"the CLI exited before {text!r} appeared {count}x: {seen!r}")
        seen += chunk
    return seen.decode(errors="replace")


def _journal_rows(tmp_path: Path, sql: str) -> list[tuple[object, ...]]:
    import sqlite3

    with contextlib.closing(sqlite3.connect(tmp_path / "home" / "journal.sqlite")) as db:
        return list(db.execute(sql))


def _read(path: Path) -> str:
    return path.read_text() if path.exists() else ""


def _wait_journaled(tmp_path: Path, run: str, count: int, timeout: float = 60) -> None:
    """Wait until the journal holds ``count`` running rows of ``run`` (commits are grouped)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        rows = _journal_rows(
            tmp_path, f"SELECT count(*) FROM tasks WHERE run = '{run}' AND state = 'running'"
        )
        if rows[0][0] >= count:
            return
        time.sleep(0.05)
    raise AssertionError(f"the journal did not get {count} running rows of {run}")


_GATED = "sh -c 'echo $$ >> pids; while [ ! -e release ]; do sleep 0.02; done; echo {n} >> done'"


def _killed_while_running(tmp_path: Path, lines: int, running: int = 2) -> Path:
    """A gated job file of ``lines`` lines whose CLI (``-j running``) was SIGKILLed while
    ``running`` of its tasks ran (and were journaled): they run on, unwatched."""
    path = jobfile(tmp_path, [_GATED.format(n=n) for n in range(lines)])
    first = _start(tmp_path, "run", "-j", str(running), str(path))
    _wait_lines(tmp_path / "pids", running, first)
    _wait_journaled(tmp_path, "jobs", running)
    first.kill()
    first.communicate(timeout=60)
    return path


def test_tasks_of_a_killed_cli_are_waited_for_never_run_twice(tmp_path: Path) -> None:
    path = _killed_while_running(tmp_path, 3)
    assert {r["state"] for r in status_rows(tmp_path, "jobs").values()} == {"running"}
    with _start(tmp_path, "run", "--resume", "-j", "3", str(path)) as resumed:
        note = _read_until(resumed, "still runs from an async-executor that was killed", count=2)
        assert "line 1 still runs" in note and "line 2 still runs" in note
        # line 3 never started before: it runs now, lines 1 and 2 wait for their earlier tasks
        assert len(_wait_lines(tmp_path / "pids", 3, resumed)) == 3
        (tmp_path / "release").touch()
        assert resumed.wait(timeout=60) == 0
    assert sorted((tmp_path / "done").read_text().split()) == ["0", "0", "1", "1", "2"]
    assert len((tmp_path / "pids").read_text().split()) == 5  # 2 killed CLI's + 3, none twice at once
    rows = status_rows(tmp_path, "jobs")
    assert [(rows[n]["state"], rows[n]["try"]) for n in (1, 2, 3)] == [
        ("success", "2"),
        ("success", "2"),
        ("success", "1"),
    ]
    lost = _journal_rows(tmp_path, "SELECT state, detail FROM tasks WHERE try_number = 1 AND pid IS NOT NULL")
    assert sorted(state for state, _ in lost) == ["failed", "failed", "success"]
    assert sum("was killed while it ran" in str(detail) for _, detail in lost) == 2
    assert _journal_rows(tmp_path, "SELECT count(*) FROM executors") == [(0,)]  # all accounted for


def test_logs_follow_stops_when_the_cli_running_the_task_was_killed(tmp_path: Path) -> None:
    """``logs -f`` of a task whose CLI was SIGKILLed: its row stays ``running`` (no one will
    record the end), so following stops at once instead of waiting forever."""
    _killed_while_running(tmp_path, 1, running=1)
    try:
        follow = ae(tmp_path, "logs", "-f", "--run", "jobs", "1", timeout=60)
        assert follow.returncode == 0, follow.stderr
        assert {r["state"] for r in status_rows(tmp_path, "jobs").values()} == {"running"}
    finally:
        (tmp_path / "release").touch()  # the orphan ends


def test_rows_a_killed_cli_left_running_are_closed_by_the_next_run(tmp_path: Path) -> None:
    path = _killed_while_running(tmp_path, 2)
    (tmp_path / "release").touch()
    deadline = time.monotonic() + 60
    while len(_read(tmp_path / "done").split()) < 2:  # the orphans end; nobody records it
        assert time.monotonic() < deadline, "the killed CLI's tasks did not end"
        time.sleep(0.02)
    other = ae(tmp_path, "run", "--run", "other", str(jobfile(tmp_path, ["true"], "other.txt")))
    assert other.returncode == 0, other.stderr  # any run on the journal closes the rows
    rows = status_rows(tmp_path, "jobs")
    assert {r["state"] for r in rows.values()} == {"failed"}
    assert all("was killed while it ran" in r["outcome"] for r in rows.values())
    resumed = ae(tmp_path, "run", "--resume", str(path))
    assert resumed.returncode == 0, resumed.stderr
    assert sorted((tmp_path / "done").read_text().split()) == ["0", "0", "1", "1"]


def test_a_task_the_journal_never_heard_of_is_found_by_its_marker(tmp_path: Path) -> None:
    """A task started just before its CLI was killed may have no journal row: the marker
    variables in its environment still identify it."""
    from async_executor._cli.jobs import parse_jobs

    path = jobfile(tmp_path, [_GATED.format(n=n) for n in range(2)])
    setup = ae(tmp_path, "run", "--run", "setup", str(jobfile(tmp_path, ["true"], "setup.txt")))
    assert setup.returncode == 0, setup.stderr  # the journal exists
    journal = os.path.realpath(tmp_path / "home" / "journal.sqlite")
    gone = subprocess.Popen(["true"])
    gone.wait()  # its pid: a CLI process that is no longer alive
    dead_id = f"cli-{gone.pid}-deadbeef"
    import sqlite3

    with contextlib.closing(sqlite3.connect(journal)) as db, db:
        db.execute(
            "INSERT INTO executors (executor_id, pid, proc_start, host, started_at) VALUES (?, ?, 1, 'h', 0)",
            (dead_id, gone.pid),
        )
    key = parse_jobs(path.read_text().splitlines())[0].key("jobs")
    env = {
        **os.environ,
        "ASYNC_EXECUTOR_STATE": journal,
        "ASYNC_EXECUTOR_ID": dead_id,
        "ASYNC_EXECUTOR_KEY": key,
        "ASYNC_EXECUTOR_TRY": "1",
    }
    orphan = subprocess.Popen(["sh", "-c", _GATED.format(n="orphan")[7:-1]], cwd=tmp_path, env=env)
    try:
        _wait_lines(tmp_path / "pids", 1, orphan)
        with _start(tmp_path, "run", "-j", "2", str(path)) as run:
            _read_until(run, "line 1 still runs from an async-executor that was killed")
            assert len(_wait_lines(tmp_path / "pids", 2, run)) == 2  # line 2 runs, line 1 waits
            (tmp_path / "release").touch()
            assert run.wait(timeout=60) == 0
    finally:
        orphan.kill()
        orphan.wait()
    assert sorted((tmp_path / "done").read_text().split()) == ["0", "1", "orphan"]
    assert _journal_rows(tmp_path, "SELECT count(*) FROM executors") == [(0,)]


# --------------------------------------------------------------------------- input from a pipe


def _feed(proc: subprocess.Popen[str], *lines: str) -> None:
    assert proc.stdin is not None
    proc.stdin.write("".join(f"{line}\n" for line in lines))
    proc.stdin.flush()


def test_lines_from_a_pipe_start_as_they_arrive(tmp_path: Path) -> None:
    """Like GNU parallel: a line read from a pipe runs before the input ends (a job queue)."""
    proc = _start(tmp_path, "run", "-j", "4", "-", stdin=subprocess.PIPE)
    _feed(proc, "# a queue", "sh -c 'echo first >> ran'")
    assert _wait_lines(tmp_path / "ran", 1, proc) == ["first"]  # the pipe is still open
    _feed(proc, "", "sh -c 'echo second >> ran'", "echo done")
    out, err = proc.communicate(timeout=60)  # closes the pipe: the end of the input
    assert proc.returncode == 0, err
    assert out == "done\n"
    assert (tmp_path / "ran").read_text().split() == ["first", "second"]
    assert sorted(status_rows(tmp_path, "stdin")) == [2, 4, 5]  # keys keep the input's line numbers


def test_a_bad_line_in_a_pipe_ends_the_input_there(tmp_path: Path) -> None:
    """Lines before it run (even if not started yet), it and the lines after it do not; exit 2."""
    lines = ["sh -c 'echo 1 >> ran; sleep 0.2'"] * 3 + ["echo 'unbalanced", "sh -c 'echo after >> ran'"]
    result = ae(tmp_path, "run", "-j", "1", "-", stdin="".join(f"{line}\n" for line in lines))
    assert result.returncode == 2, result.stderr
    assert "<stdin>, line 4: No closing quotation" in result.stderr
    assert "it and the lines after it are not run" in result.stderr
    assert (tmp_path / "ran").read_text().split() == ["1", "1", "1"]
    assert sorted(status_rows(tmp_path, "stdin")) == [1, 2, 3]


def test_ctrl_c_does_not_wait_for_more_input(tmp_path: Path) -> None:
    with _start(tmp_path, "run", "-j", "2", "-", stdin=subprocess.PIPE) as proc:
        _feed(proc, "sh -c 'echo $$ >> pids; sleep 0.5; echo ok >> done'")
        _wait_lines(tmp_path / "pids", 1, proc)
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=60) == 130  # while our end of the pipe is still open
        assert proc.stderr is not None
        err = proc.stderr.read()
    assert "interrupted: starting no new tasks" in err
    assert (tmp_path / "done").read_text().split() == ["ok"]  # the running task finished


def test_keep_order_with_a_pipe(tmp_path: Path) -> None:
    proc = _start(tmp_path, "run", "-k", "-j", "3", "--shell", "-", stdin=subprocess.PIPE)
    _feed(proc, "sleep 0.5; echo one", "echo two")
    _feed(proc, "echo three")
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert out == "one\ntwo\nthree\n"


def test_resume_reads_the_whole_pipe_first(tmp_path: Path) -> None:
    """--resume needs every line to match the journal, so a pipe is read to its end first."""
    first = ae(tmp_path, "run", "-", stdin="echo a\nfalse\n")
    assert first.returncode == 1
    again = ae(tmp_path, "run", "--resume", "-", stdin="echo a\ntrue\necho 'bad\n")
    assert again.returncode == 2
    assert "nothing was started" in again.stderr
    resumed = ae(tmp_path, "run", "--resume", "-", stdin="echo a\ntrue\n")
    assert resumed.returncode == 0, resumed.stderr
    assert resumed.stdout == ""  # "echo a" already succeeded: only line 2 ran


def _terminal_output(pid: int, fd: int, timeout: float = 120) -> tuple[int, str]:
    """Everything the CLI at ``pid`` wrote on its pseudo-terminal ``fd`` (escapes removed), and
    its exit code."""
    chunks = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            data = os.read(fd, 65536)
        except OSError:  # EIO: the terminal's other side is closed
            break
        if not data:
            break
        chunks.append(data)
    _, status = os.waitpid(pid, 0)
    os.close(fd)
    return os.waitstatus_to_exitcode(status), ANSI.sub("", b"".join(chunks).decode("utf-8", "replace"))


def test_live_display_while_reading_a_pipe(tmp_path: Path) -> None:
    import pty

    pid, fd = pty.fork()
    if pid == 0:  # child: the CLI with its stdout on a terminal and its stdin on a pipe
        os.chdir(tmp_path)
        reader, writer = os.pipe()
        if os.fork() == 0:
            os.close(reader)
            os.write(writer, b"echo one\n")
            time.sleep(1.0)
            os.write(writer, b"echo two\n")
            os._exit(0)
        os.close(writer)
        os.dup2(reader, 0)
        os.execve(CLI[0], [*CLI, "run", "-j", "2", "-"], {**_env(tmp_path), "TERM": "xterm-256color"})
    code, screen = _terminal_output(pid, fd)
    assert code == 0, screen
    assert "reading input" in screen  # while the pipe was open
    assert "done 2" in screen and "one" in screen and "two" in screen


# --------------------------------------------------------------------------- the terminal display


def test_live_progress_on_a_terminal(tmp_path: Path) -> None:
    import fcntl
    import pty
    import struct
    import termios

    lines = [f"sh -c 'sleep 0.0{i % 5 + 1}; echo task-{i}'" for i in range(40)] + ["false", "sh -c 'exit 2'"]
    path = jobfile(tmp_path, lines)
    pid, fd = pty.fork()
    if pid == 0:  # child: become the CLI on the terminal
        os.chdir(tmp_path)
        os.execve(CLI[0], [*CLI, "run", "-j", "4", str(path)], {**_env(tmp_path), "TERM": "xterm-256color"})
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 140, 0, 0))
    code, screen = _terminal_output(pid, fd)
    assert code == 1, screen
    assert "done 40" in screen and "failed 2" in screen  # the live counters at the end
    assert re.search(r"running \d+\s+queued \d+", screen)
    assert "ETA" in screen and "/s" in screen
    assert "task-39" in screen  # task output printed above the live display
    assert "succeeded" in screen and "failed tasks" in screen  # the summary tables


# --------------------------------------------------------------------------- GNU parallel


def test_same_outcomes_as_gnu_parallel(tmp_path: Path) -> None:
    if shutil.which("parallel") is None:
        pytest.skip("GNU parallel is not installed (apt-get install -y parallel): comparison not run")
    lines = [
        "true",
        "false",
        "sh -c 'exit 3'",
        "echo hello world",
        "printf 'abc'",
        "sh -c 'kill -9 $$'",
        "sleep 30",
        "sh -c 'echo to-stdout; exit 101'",
    ]
    path = jobfile(tmp_path, lines)
    gnu = subprocess.run(
        ["parallel", "--will-cite", "-j", "4", "--timeout", "1", "--joblog", "gnu.tsv", "-a", str(path)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    ours = ae(
        tmp_path, "run", "-j", "4", "--timeout", "1", "--kill-grace", "1", "--joblog", "ours.tsv", str(path)
    )
    assert gnu.returncode == 5  # GNU parallel: the number of failed jobs
    assert ours.returncode == 1
    assert (tmp_path / "gnu.tsv").read_text().splitlines()[0] == (
        tmp_path / "ours.tsv"
    ).read_text().splitlines()[0]
    gnu_rows = {r["Command"]: r for r in joblog_rows(tmp_path / "gnu.tsv")}
    our_rows = {r["Command"]: r for r in joblog_rows(tmp_path / "ours.tsv")}
    assert set(gnu_rows) == set(our_rows) == set(lines)
    for command in lines:
        g, o = gnu_rows[command], our_rows[command]
        assert (o["Seq"], o["Host"], o["Send"], o["Exitval"], o["Signal"]) == (
            g["Seq"],
            g["Host"],
            g["Send"],
            g["Exitval"],
            g["Signal"],
        ), command
        assert re.fullmatch(r"\d+\.\d{3}", o["Starttime"]) and re.fullmatch(r" *\d+\.\d{3}", o["JobRuntime"])
        assert len(o["JobRuntime"]) == len(g["JobRuntime"])  # same %10.3f padding
    # Receive: GNU parallel counts stdout bytes; ours counts the captured output (stdout+stderr)
    assert our_rows["echo hello world"]["Receive"] == gnu_rows["echo hello world"]["Receive"] == "12"
    assert our_rows["printf 'abc'"]["Receive"] == "3"


def test_a_closed_stdout_does_not_stop_the_run(tmp_path: Path) -> None:
    path = jobfile(tmp_path, [f"sh -c 'echo line-{i}; echo {i} >> ran'" for i in range(50)])
    command = " ".join([*CLI, "run", "-j", "4", str(path)]) + " | head -n 1"
    result = subprocess.run(
        ["sh", "-c", command], cwd=tmp_path, env=_env(tmp_path), capture_output=True, text=True, timeout=120
    )
    assert result.stdout.startswith("line-")
    assert "Traceback" not in result.stderr
    assert len(_ran(tmp_path)) == 50
    assert {r["state"] for r in status_rows(tmp_path, "jobs").values()} == {"success"}


# --------------------------------------------------------------------------- the CLI and AsyncExecutor on one journal


def _executor_events(tmp_path: Path) -> dict[object, object]:
    """What an ``AsyncExecutor`` on the CLI's journal (the default path for both) delivers at start."""
    from async_executor import AsyncExecutor

    ex = AsyncExecutor(parallelism=2, state_path=tmp_path / "home" / "journal.sqlite")
    ex.start()
    try:
        ex.sync()
        return dict(ex.get_event_buffer())
    finally:
        ex.end()


def test_an_executor_on_the_clis_journal_delivers_none_of_its_outcomes(tmp_path: Path) -> None:
    result = ae(tmp_path, "run", str(jobfile(tmp_path, ["true", "false"])))
    assert result.returncode == 1, result.stderr
    # the CLI handled each outcome as it recorded it: reported, so prunable and never redelivered
    assert _journal_rows(tmp_path, "SELECT state, reported FROM tasks ORDER BY state") == [
        ("failed", 1),
        ("success", 1),
    ]
    assert _executor_events(tmp_path) == {}


def test_an_executor_leaves_a_killed_clis_tasks_to_the_next_cli(tmp_path: Path) -> None:
    path = _killed_while_running(tmp_path, 2)
    assert _executor_events(tmp_path) == {}  # neither delivered as lost nor settled
    assert {r["state"] for r in status_rows(tmp_path, "jobs").values()} == {"running"}
    with _start(tmp_path, "run", "--resume", "-j", "2", str(path)) as resumed:
        _read_until(resumed, "still runs from an async-executor that was killed", count=2)
        (tmp_path / "release").touch()
        assert resumed.wait(timeout=60) == 0
    assert sorted((tmp_path / "done").read_text().split()) == ["0", "0", "1", "1"]


# --------------------------------------------------------------------------- one process per run


def test_a_run_already_running_elsewhere_is_refused_other_runs_are_not(tmp_path: Path) -> None:
    path = jobfile(tmp_path, [_GATED.format(n=n) for n in range(3)])
    with _start(tmp_path, "run", "-j", "2", str(path)) as first:
        _wait_lines(tmp_path / "pids", 2, first)
        for args in (("--resume",), ("--retry-failed",), ()):
            second = ae(tmp_path, "run", "--timeout", "20", *args, str(path))  # ends, were it not refused
            assert second.returncode == 2, second.stderr
            assert "run 'jobs' is already being run" in second.stderr
            assert f"pid {first.pid}" in second.stderr and "--run NAME" in second.stderr
        assert len(_read(tmp_path / "pids").split()) == 2  # the refused runs started nothing
        other = ae(tmp_path, "run", "--run", "other", str(jobfile(tmp_path, ["true"], "other.txt")))
        assert other.returncode == 0, other.stderr  # another run of the same journal goes ahead
        (tmp_path / "release").touch()
        assert first.wait(timeout=60) == 0
    assert ae(tmp_path, "run", "--resume", str(path)).returncode == 0  # free again once it ended
    assert sorted(_read(tmp_path / "done").split()) == ["0", "1", "2"]


def test_a_killed_run_does_not_hold_its_lock(tmp_path: Path) -> None:
    path = jobfile(tmp_path, ["sh -c 'echo $$ >> pids; exec sleep 60'"])
    first = _start(tmp_path, "run", str(path))
    (pid,) = _wait_lines(tmp_path / "pids", 1, first)
    first.kill()
    first.communicate(timeout=60)
    os.killpg(int(pid), signal.SIGKILL)  # its task too, so the next run need not wait for it
    resumed = ae(tmp_path, "run", str(jobfile(tmp_path, ["true"])))  # the same run name: jobs
    assert resumed.returncode == 0, resumed.stderr


def test_a_second_default_stdin_run_takes_the_next_free_name(tmp_path: Path) -> None:
    """Two pipelines into ``run -`` at once (a job queue each) both run, as with GNU parallel."""
    with _start(tmp_path, "run", "-", stdin=subprocess.PIPE) as first:
        assert first.stdin is not None
        first.stdin.write(_GATED.format(n=0) + "\n")
        first.stdin.flush()
        _wait_lines(tmp_path / "pids", 1, first)
        second = ae(tmp_path, "run", "-", stdin="true\n")
        assert second.returncode == 0, second.stderr
        assert "run 'stdin' is already being run" in second.stderr and "named 'stdin-2'" in second.stderr
        resumed = ae(tmp_path, "run", "--resume", "-", stdin="true\n")  # needs 'stdin' itself: refused
        assert resumed.returncode == 2 and "already being run" in resumed.stderr
        first.stdin.close()
        (tmp_path / "release").touch()
        assert first.wait(timeout=60) == 0
    assert set(status_rows(tmp_path, "stdin-2")) == {1}


# --------------------------------------------------------------------------- GNU parallel's form


def test_command_with_arguments_runs_once_per_combination(tmp_path: Path) -> None:
    result = ae(
        tmp_path,
        "run",
        "-k",
        "-j",
        "4",
        "printf",
        "'%s:%s\\n'",  # the command's words make one job line: quoted as in a job file
        "{1/.}",
        "{2}",
        ":::",
        "a/x.txt",
        "b/y z.gz",
        ":::",
        "1",
        "2",
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == "x:1\nx:2\ny z:1\ny z:2\n"
    rows = status_rows(tmp_path, "printf")  # the run is named after the program
    assert sorted(rows) == [1, 2, 3, 4] and {r["state"] for r in rows.values()} == {"success"}


def test_options_after_the_command_are_the_commands(tmp_path: Path) -> None:
    """As in GNU parallel, ``run`` takes options only before the command: ``-n`` is echo's."""
    result = ae(tmp_path, "run", "-k", "echo", "-n", "{}", ":::", "a", "-q")
    assert result.returncode == 0, result.stderr
    assert result.stdout == "a-q"


def test_options_after_a_job_file_are_refused(tmp_path: Path) -> None:
    path = jobfile(tmp_path, ["echo hi"])
    result = ae(tmp_path, "run", str(path), "--resume")
    assert result.returncode == 2
    assert "options go before JOBFILE" in result.stderr
    assert not (tmp_path / "home").exists()  # nothing was started: no journal either


def test_arguments_from_a_pipe_start_as_they_arrive(tmp_path: Path) -> None:
    proc = _start(
        tmp_path, "run", "-j", "4", "sh", "-c", "'echo $1 >> ran'", "sh", "::::", "-", stdin=subprocess.PIPE
    )
    _feed(proc, "first")
    assert _wait_lines(tmp_path / "ran", 1, proc) == ["first"]  # the pipe is still open
    _feed(proc, "second")
    _out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert (tmp_path / "ran").read_text().split() == ["first", "second"]
    assert sorted(status_rows(tmp_path, "sh")) == [1, 2]


def test_arguments_from_files_and_stdin_read_whole(tmp_path: Path) -> None:
    (tmp_path / "names").write_text("x\ny\n")
    result = ae(tmp_path, "run", "-k", "echo", ":::", "1", "2", "::::", "names", "-", stdin="s\n")
    assert result.returncode == 0, result.stderr
    assert result.stdout == "1 x s\n1 y s\n2 x s\n2 y s\n"


def test_dry_run_prints_a_job_file_and_runs_nothing(tmp_path: Path) -> None:
    result = ae(tmp_path, "run", "--dry-run", "touch", "{}.done", ":::", "a", "b c")
    assert result.returncode == 0, result.stderr
    assert result.stdout == "touch a.done\ntouch 'b c'.done\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # no journal, no files touched
    (tmp_path / "jobs.txt").write_text(result.stdout)
    assert ae(tmp_path, "run", "--quiet", "jobs.txt").returncode == 0
    assert (tmp_path / "a.done").exists() and (tmp_path / "b c.done").exists()
    assert ae(tmp_path, "run", "--dry-run", "jobs.txt").stdout == result.stdout  # a job file too


def test_resume_a_command_line_run(tmp_path: Path) -> None:
    args = ("sh", "-c", "'echo $1 >> ran; test -e $1.ok'", "sh")
    (tmp_path / "a.ok").touch()
    first = ae(tmp_path, "run", *args, ":::", "a", "b")
    assert first.returncode == 1
    (tmp_path / "ran").unlink()
    (tmp_path / "b.ok").touch()
    second = ae(tmp_path, "run", "--resume", *args, ":::", "a", "b")
    assert second.returncode == 0, second.stderr
    assert _ran(tmp_path) == ["b"]
    assert "1 skipped" in second.stderr


def test_bad_command_lines_exit_2_and_start_nothing(tmp_path: Path) -> None:
    for args, message in [
        (("echo", "{2}", ":::", "a"), "{2} names input source 2, but there is 1 input source"),
        (("echo", ":::+", "a"), ":::+ links to the input source before it"),
        (("echo", "::::", "missing"), "cannot read input file missing"),
        (("echo", "a", "b"), "expected one JOBFILE"),
        (("-n", "2", "echo", ":::", "a", ":::", "b"), "-n/-N takes one input source, not 2"),
        (("-n", "2", "--colsep", ",", "echo", ":::", "a"), "-n/-N and --colsep cannot be used together"),
        (("-n", "2", "jobs.txt"), "-n/-N needs a command"),
        (("-n", "-1", "echo", ":::", "a"), "-1 is not in the range x>=0"),
        (("-n", "2", "echo", "{3}", ":::", "a"), "{3} names input source 3, but there is"),
        (("-0", "-d", ",", "echo", ":::", "a"), "-0 and -d cannot be used together"),
        (("--header", "x", "echo", ":::", "a"), "only --header : (each source's first value"),
        (("-m", "-n", "2", "echo", ":::", "a"), "-n/-N and -m cannot be used together"),
        (("-X", "echo", ":::", "a", ":::", "b"), "-X takes one input source, not 2"),
        (("--xargs", "jobs.txt"), "--xargs needs a command"),
        (("--header", ":", "jobs.txt"), "--header needs a command"),
        (("--header", ":", "echo", ":::"), "input source ::: is empty, so it has no header"),
        (("-d", "", "echo", ":::", "a"), "the delimiter cannot be empty"),
        (("-d", "\\x", "echo", ":::", "a"), "truncated \\xXX escape"),
    ]:
        result = ae(tmp_path, "run", *args)
        assert result.returncode == 2, (args, result.stderr)
        assert message in result.stderr, (args, result.stderr)
    assert not (tmp_path / "home").exists()


def test_same_lines_and_outputs_as_gnu_parallel(tmp_path: Path) -> None:
    if shutil.which("parallel") is None:
        pytest.skip("GNU parallel is not installed (apt-get install -y parallel): comparison not run")
    (tmp_path / "list").write_text("p/q.r\n\nlast one\n")
    (tmp_path / "table").write_text("a b\tc.d\nx\ty/z\n")
    (tmp_path / "csv").write_text("a,b c,d\n")  # the last item keeps its newline (-d)
    (tmp_path / "tabs").write_text("x\ty z\t")
    (tmp_path / "people").write_text("name,age\nann,3\nbob,4\n")
    cases = [
        ["--tag", "printf", "'%s\\n\\n%s'", ":::", "a b", "c", ":::", "1"],
        ["-a", "list", "-a", "-", "echo", "{2}{1}"],
        ["--colsep", "\\t", "echo", "{2/.}:{1}", "::::", "table"],
        ["--colsep", "\\t", "echo", "{3}x", "{2}", "::::", "table"],  # no third column: nothing
        ["echo", "{}", "{.}", "{/}", "{//}", "{/.}", "{#}", ":::", "a/b.c", "/x", "sp ace.d/f", "it's"],
        ["echo", ":::", "A", "B", "C", ":::+", "1", "2", ":::", "x", "y"],
        ["echo", "{2}-{1/}", "::::", "list", ":::", "1", "2"],
        ["printf", "'<%s>\\n'", ":::", "$(id)", "a;b", "#c", "*"],
        [":::", "echo one", "sh -c 'exit 3'", "echo 'two  words'"],
        ["-n", "2", "echo", ":::", "a", "b c", "d"],
        ["-N", "2", "--tag", "echo", "{2}-{1}", "{#}", "::::", "list"],
        ["-n", "3", "echo", "{/.}", "{3}", ":::", "a/b.c", "d.e", "f", "g/h"],
        ["-N0", "echo", "hi", "{#}", ":::", "a", "b"],
        ["-n", "2", "-a", "-", "echo"],
        ["--lb", "--tag", "printf", "'%s\\n%s'", ":::", "a", "b c"],  # unfinished last lines
        ["--tagstring", "{}-{#}-{.}/{/}", "echo", ":::", "a b.c", "it's", "d/e"],
        ["--tagstring", "T{1}/{2}{3}", "--tag", "echo", ":::", "a", "b", ":::", "1"],
        ["--colsep", ",", "--tagstring", "<{2}>", "echo", "{1}", ":::", "a,b", "c"],
        ["--will-cite", "-P", "2", "--max-procs", "3", "echo", ":::", "a", "b"],
        ["-d", ",", "echo", "x{}", "::::", "csv"],
        ["-d", "\\t", "-a", "tabs", "echo", "{#}"],
        ["--header", ":", "echo", "{foo}-{bar}", ":::", "foo", "a", "b", ":::", "bar", "1", "2"],
        ["--header", ":", "--colsep", ",", "echo", "{name}", "is", "{age}", "::::", "people"],
        ["--header", ":", "--tagstring", "<{foo.}>", "echo", "{1}", ":::", "foo", "a.x"],
        ["-j", "2", "-m", "echo", ":::", "1", "2", "3", "4", "5"],
        ["-j", "3", "-X", "echo", "pic{}.jpg", ":::", *"1234567"],
        ["-j", "2", "-X", "echo", "pre{}post", "{.}", "{#}", ":::", "a.x", "b c", "d"],
        ["-j", "2", "-m", "echo", "{}", "x{}", "::::", "list"],
        ["--xargs", "-j", "4", "echo", ":::", "1", "2", "3"],
        ["--lb", "sh", "-c", "'echo x{}; sleep 0.{}; echo y{}'", ":::", "3", "1", "2"],
        ["-I", ",,", "echo", ",,", "{}", "{.}", "{1/}", ":::", "d/a.b"],  # {} is just text now
        ["-I", "{x}", "echo", "{x}", "{1x}", "{1}", ":::", "d/a.b"],
        [
            *("--er", "@@", "--bnr", "BB", "--dnr", "DD", "--bner", "BE", "--seqreplace", "SQ"),
            *("echo", "{}", "@@", "BB", "DD", "BE", "SQ", "{.}", "{#}", ":::", "d/a.b"),
        ],
        ["-I", ",", "--tagstring", ",-{}", "echo", "hi", ":::", "a"],
        ["--link", "echo", ":::", "a", "b", ":::", "1", "2", "3"],  # the shorter source wraps
        ["--xapply", "echo", ":::", "a", "b", "c", ":::+", "1", "2", ":::", "x"],
        ["--trim", "lr", "echo", "[{}]", ":::", " a ", "b "],
        ["--trim", "r", "echo", "[{}]", ":::", " a ", "b "],
        ["--colsep", ",", "echo", "[{1}][{2}]", ":::", " a , b "],  # --colsep trims (lr)
        ["--colsep", ",", "--trim", "l", "echo", "[{1}][{2}]", ":::", " a , b "],
        ["-r", "echo", "[{1}{2}]", ":::", "a", "", ":::", "", "x"],
        ["--no-run-if-empty", "echo", "{}", "::::", "list"],
        ["-s", "20", "--xargs", "echo", ":::", "aaaa", "bbbb", "cccc", "dddd", "eeee", "ffff"],
        ["-j", "1", "--max-chars", "12", "-m", "echo", ":::", "aa", "bb", "cc", "dd"],
        ["echo", "a#b", "{}", "#c", ":::", "x"],  # a # inside a word is no comment
    ]
    for case in cases:
        stdin = "s1\ns2\n"
        gnu_lines = gnu_parallel(tmp_path, "-k", "--dry-run", *case, stdin=stdin).stdout
        gnu = gnu_parallel(tmp_path, "-k", *case, stdin=stdin)
        ours_lines = ae(tmp_path, "run", "--dry-run", *case, stdin=stdin).stdout
        ours = ae(tmp_path, "run", "-k", "--quiet", *case, stdin=stdin)
        assert ours_lines == gnu_lines, case
        assert ours.stdout == gnu.stdout, case
        assert (ours.returncode == 0) == (gnu.returncode == 0), (case, ours.stderr, gnu.stderr)


def test_arg_files_make_the_arguments_a_command(tmp_path: Path) -> None:
    (tmp_path / "names").write_text("a\nb\n")
    result = ae(tmp_path, "run", "-k", "-a", "names", "echo", "got", ":::", "1", "2")
    assert result.returncode == 0, result.stderr
    assert result.stdout == "got a 1\ngot a 2\ngot b 1\ngot b 2\n"
    lines = ae(tmp_path, "run", "--dry-run", "-a", "-", stdin="echo x\n# note\ntrue\n")
    assert lines.stdout == "echo x\ntrue\n"  # no command: each line is a job line
    missing = ae(tmp_path, "run", "-q")
    assert missing.returncode == 2 and "missing JOBFILE" in missing.stderr


def test_tag_puts_the_arguments_before_each_output_line(tmp_path: Path) -> None:
    result = ae(
        tmp_path,
        "run",
        "-k",
        "--tag",
        "--shell",
        "printf 'one\\n\\nthree'; echo err {} >&2",
        ":::",
        "a b",
        "c",
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == "a b\tone\na b\t\na b\tthreeerr a b\nc\tone\nc\t\nc\tthreeerr c\n"
    path = jobfile(tmp_path, ["echo x"])
    assert ae(tmp_path, "run", "--tag", str(path)).stdout == "echo x\tx\n"  # a job line tags with itself


def _gated_output(tmp_path: Path, options: list[str], first: str) -> tuple[str, str]:
    """Run two tasks (``a``, ``b``) that each print ``first`` and then wait for the test to
    touch ``release-a`` / ``release-b``: what our stdout showed while they waited (read until
    ``first`` came twice), and what came after. Without live output the first read times out."""
    script = (
        f"printf '{first}'; i=0; while [ ! -e release-{{}} ]; do i=$((i+1));"
        " [ $i -gt 3000 ] && exit 9; sleep 0.02; done; printf 'done {}'"
    )
    proc = subprocess.Popen(
        [*CLI, "run", "-q", *options, "--shell", script, ":::", "a", "b"],
        cwd=tmp_path,
        env=_env(tmp_path),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        seen = _read_until(proc, first.replace("\\n", "").split("{}")[0], count=2, stream="stdout")
        (tmp_path / "release-a").touch()
        (tmp_path / "release-b").touch()
        rest, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err
    return seen, rest.decode()


def test_line_buffer_prints_each_line_while_the_task_runs(tmp_path: Path) -> None:
    """``--lb``: a line reaches our stdout while its task still runs."""
    seen, rest = _gated_output(tmp_path, ["--lb", "--tag"], "started {}\\n")
    assert sorted(seen.splitlines()) == ["a\tstarted a", "b\tstarted b"]
    assert rest in ("a\tdone ab\tdone b", "b\tdone ba\tdone a")  # last lines unfinished


def test_ungroup_prints_half_lines_while_the_task_runs(tmp_path: Path) -> None:
    """``-u``: output without a newline (a prompt, a progress bar) shows while its task runs."""
    seen, rest = _gated_output(tmp_path, ["-u"], "working {}...")
    assert seen in ("working a...working b...", "working b...working a...")
    assert rest in ("done adone b", "done bdone a")


def test_tagstring_with_the_slot_of_each_job(tmp_path: Path) -> None:
    """``--tagstring {%}``: each output line tagged with its job's slot, taken as it starts."""
    script = "mkdir held-{%} && echo {} && sleep 0.1 && rmdir held-{%}"
    result = ae(tmp_path, "run", "-q", "-j", "2", "--tagstring", "s{%}", "--shell", script, ":::", *"abcdef")
    assert result.returncode == 0, result.stderr
    lines = sorted(result.stdout.splitlines())
    assert sorted(line.split("\t")[1] for line in lines) == list("abcdef")
    assert {line.split("\t")[0] for line in lines} == {"s1", "s2"}
    job_file = jobfile(tmp_path, ["echo x", "echo y"])  # a job-file line's {} is the line
    tagged = ae(tmp_path, "run", "-q", "-k", "--tagstring", "{#}:{}", str(job_file))
    assert tagged.stdout == "1:echo x\tx\n2:echo y\ty\n"


def test_changed_replacement_strings_fill_commands_tags_and_slots(tmp_path: Path) -> None:
    """``-I``, ``--slotreplace`` (GNU parallel's): the new strings are filled in the command,
    the tag and the slot when the job starts; the old ones are text."""
    result = ae(
        tmp_path,
        *("run", "-q", "-k", "-j", "1", "-I", "@", "--slotreplace", "SL", "--tagstring", "SL@"),
        *("echo", "SL", "{%}", "@", "{}", ":::", "a", "b"),
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == "1a\t1 {%} a {}\n1b\t1 {%} b {}\n"
    job_file = jobfile(tmp_path, ["echo x"])  # a job file: only --tagstring has strings to fill
    tagged = ae(tmp_path, "run", "-q", "-I", "@", "--tagstring", "<@>", str(job_file))
    assert tagged.returncode == 0 and tagged.stdout == "<echo x>\tx\n", tagged.stderr
    for args, message in [
        (["-I", "@", str(job_file)], "-I needs a command"),
        (["-I", "@", "--er", "@", "echo", ":::", "a"], "'@' is the replacement string of both -I"),
        (["-I", "", "echo", ":::", "a"], "cannot be empty"),
        (["-s", "10", "echo", ":::", "a"], "-s/--max-chars applies to -m, -X and --xargs"),
        (["--link", str(job_file)], "--link needs a command"),
    ]:
        refused = ae(tmp_path, "run", *args)
        assert refused.returncode == 2 and message in refused.stderr, (args, refused.stderr)


def test_running_jobs_hold_distinct_slots_from_1_to_j(tmp_path: Path) -> None:
    """``{%}``: each job's slot is free while it runs (``mkdir`` fails on a slot in use), at most -j."""
    script = "mkdir held-{%} && echo {%} >> seen && sleep 0.2 && rmdir held-{%} && test {%} -le 3"
    result = ae(tmp_path, "run", "-j", "3", "--shell", script, ":::", *map(str, range(12)))
    assert result.returncode == 0, result.stderr
    seen = (tmp_path / "seen").read_text().split()
    assert len(seen) == 12 and set(seen) == {"1", "2", "3"}
    rows = status_rows(tmp_path, "mkdir")  # named after the first word's program
    assert len(rows) == 12 and {r["state"] for r in rows.values()} == {"success"}


def test_null_separated_names_from_find(tmp_path: Path) -> None:
    """``find -print0 | run -0 CMD {} :::: -``: a name with a newline stays one argument."""
    names = tmp_path / "in"
    names.mkdir()
    for name in ("plain", "with space", "new\nline"):
        (names / name).write_text("x")
    listing = subprocess.run(
        ["find", "in", "-type", "f", "-print0"], cwd=tmp_path, capture_output=True, check=True
    )
    proc = subprocess.run(
        [*CLI, "run", "-0", "--quiet", "mv", "{}", "{}.done", "::::", "-"],
        cwd=tmp_path,
        env=_env(tmp_path),
        input=listing.stdout,
        capture_output=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in names.iterdir()) == ["new\nline.done", "plain.done", "with space.done"]


def test_a_program_given_as_job_file_gets_a_hint(tmp_path: Path) -> None:
    result = ae(tmp_path, "run", "gzip", stdin="a\n")
    assert result.returncode == 2
    assert "async-executor run gzip :::: -" in result.stderr


@pytest.mark.parametrize("option", ["--bar", "--eta", "--progress", None])
def test_bar_shows_progress_on_stderr_when_stdout_is_redirected(tmp_path: Path, option: str | None) -> None:
    """GNU parallel's ``--bar`` (or ``--eta``, ``--progress``): ``run --bar ... > out`` keeps the
    output clean, the display on the terminal."""
    bar = option is not None
    import pty

    leader, follower = pty.openpty()
    with open(tmp_path / "out", "wb") as out:
        proc = subprocess.Popen(
            [
                *CLI,
                "run",
                "-k",
                "-j",
                "4",
                *([option] if option else []),
                "echo",
                "task-{}",
                ":::",
                *map(str, range(20)),
            ],
            cwd=tmp_path,
            env={**_env(tmp_path), "TERM": "xterm-256color"},
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=follower,
        )
    os.close(follower)
    chunks = []
    while True:
        try:
            data = os.read(leader, 65536)
        except OSError:  # EIO: the CLI closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    os.close(leader)
    assert proc.wait(timeout=60) == 0
    screen = ANSI.sub("", b"".join(chunks).decode("utf-8", "replace"))
    assert (tmp_path / "out").read_text() == "".join(f"task-{i}\n" for i in range(20))  # only the output
    assert ("done 20" in screen and "ETA" in screen) is bar, screen  # the live display, on stderr
    assert "20 tasks in" in screen  # the summary, either way


def test_delay_spaces_the_starts_of_tasks_and_retries(tmp_path: Path) -> None:
    """``--delay``: each start at least that long after the one before (GNU parallel's), the
    first at once; a retry is a start too."""
    path = jobfile(tmp_path, ["true", "true", "sh -c 'test -e again || { touch again; exit 1; }'", "true"])
    result = ae(
        tmp_path,
        "run",
        "-j",
        "4",
        "--delay",
        "0.3",
        "--retries",
        "1",
        "--backoff",
        "0",
        "--joblog",
        "log.tsv",
        str(path),
    )
    assert result.returncode == 0, result.stderr
    starts = sorted(float(row["Starttime"]) for row in joblog_rows(tmp_path / "log.tsv"))
    assert len(starts) == 4  # a row per line (its last try)
    gaps = [later - earlier for earlier, later in itertools.pairwise(starts)]
    assert min(gaps) >= 0.3 - 0.02, gaps  # a lower bound (what --delay promises), not a speed
    # five starts in all (the failed first try has no row): four delays from the first to the last
    assert starts[-1] - starts[0] >= 4 * (0.3 - 0.02), starts
    for bad in ("-1", "soon"):
        refused = ae(tmp_path, "run", "--delay", bad, str(path))
        assert refused.returncode == 2 and "--delay" in refused.stderr


def test_memfree_holds_back_starts_while_memory_is_short(tmp_path: Path) -> None:
    """``--memfree``: no task starts while less than SIZE is available; Ctrl-C still stops the wait."""
    from async_executor._cli.memory import total_memory

    total = total_memory()
    if total is None:
        pytest.skip("no /proc/meminfo")
    command = ("sh", "-c", "'echo ran >> ran'", ":::", "a")
    # all of the machine's memory: accepted (not more than there is), never available
    waiting = subprocess.Popen(
        [*CLI, "run", "--memfree", str(total), *command],
        cwd=tmp_path,
        env=_env(tmp_path),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert waiting.stderr is not None
        first = waiting.stderr.readline()  # the note comes before any start could
        assert "waiting for memory" in first, first
        waiting.send_signal(signal.SIGINT)
        assert waiting.wait(timeout=60) == 130
    finally:
        if waiting.poll() is None:
            waiting.kill()
            waiting.wait()
        if waiting.stderr is not None:
            waiting.stderr.close()
    assert not (tmp_path / "ran").exists()
    enough = ae(tmp_path, "run", "--memfree", "1k", *command)
    assert enough.returncode == 0, enough.stderr
    assert _ran(tmp_path) == ["ran"]


def test_memfree_sizes_and_bad_ones() -> None:
    from async_executor._cli.memory import parse_size

    assert parse_size("10") == 10
    assert parse_size("1k") == 1000 and parse_size("1K") == 1024
    assert parse_size("2.5M") == int(2.5 * 2**20) and parse_size("3g") == 3 * 10**9
    for bad in ("", "K", "-1", "1X", "1 GiB"):
        with pytest.raises(ValueError, match="is not a size"):
            parse_size(bad)


def test_memfree_refuses_more_than_the_machine_has(tmp_path: Path) -> None:
    result = ae(tmp_path, "run", "--memfree", "1P", "echo", ":::", "a")
    assert result.returncode == 2 and "more than this machine's memory" in result.stderr


def test_load_holds_back_starts_while_the_machine_is_busy(tmp_path: Path) -> None:
    """``--load N``: no task starts while N or more processes are runnable (here busy loops,
    more than the limit), and the task starts once they are gone."""
    if not os.path.exists("/proc/stat"):
        pytest.skip("no /proc/stat")
    limit = max(1, len(os.sched_getaffinity(0)))
    hogs = [
        subprocess.Popen(["sh", "-c", "i=0; while [ $i -lt 3000000 ]; do i=$((i+1)); done"])
        for _ in range(limit + 3)
    ]
    waiting = None
    try:
        waiting = subprocess.Popen(
            [*CLI, "run", "--load", str(limit), "sh", "-c", "'echo ran >> ran'", ":::", "a"],
            cwd=tmp_path,
            env=_env(tmp_path),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        assert "waiting for the load to fall" in _read_until(waiting, "waiting for the load")
        assert not (tmp_path / "ran").exists()
    finally:
        for hog in hogs:
            hog.kill()
            hog.wait()
    _, err = waiting.communicate(timeout=60)
    assert waiting.returncode == 0, err
    assert _ran(tmp_path) == ["ran"]


def test_load_limits_and_bad_ones() -> None:
    from async_executor._cli.load import current_load, parse_load

    assert parse_load("3", 4) == 3 and parse_load("50%", 4) == 2 and parse_load("+2", 4) == 6
    assert parse_load("-1", 4) == 3 and parse_load("0.5", 4) == 0.5
    for bad in ("", "x", "0", "-4", "0%", "inf"):
        with pytest.raises(ValueError):
            parse_load(bad, 4)
    load = current_load()
    assert load is None or load >= 0


def test_nice_runs_tasks_and_their_children_at_that_niceness(tmp_path: Path) -> None:
    """``--nice N``: the task, and what it starts, run N steps nicer than the CLI."""
    expected = min(19, os.nice(0) + 7)
    script = ": {}; awk '{print $19}' /proc/self/stat; sh -c \"awk '{print \\$19}' /proc/self/stat\""
    result = ae(tmp_path, "run", "-q", "--nice", "7", "--shell", script, ":::", "a")
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == [str(expected), str(expected)]
    plain = ae(tmp_path, "run", "-q", "--shell", ": {}; awk '{print $19}' /proc/self/stat", ":::", "a")
    assert plain.stdout.split() == [str(os.nice(0))]
    assert ae(tmp_path, "run", "--nice", "20", "true", ":::", "a").returncode == 2


def test_shuf_runs_every_job_once_in_a_random_order(tmp_path: Path) -> None:
    """``--shuf``: all jobs, each once, not in input order (60! orders: the input order is
    a 1 in 10^81 chance); in GNU parallel's form {#} numbers them in the order they run."""
    values = [f"v{i}" for i in range(60)]
    result = ae(tmp_path, "run", "-q", "-j", "1", "--shuf", "echo", "{#}", "{}", ":::", *values)
    assert result.returncode == 0, result.stderr
    rows = [line.split() for line in result.stdout.splitlines()]
    assert [number for number, _ in rows] == [str(n) for n in range(1, 61)]
    ran = [value for _, value in rows]
    assert sorted(ran) == sorted(values) and ran != values
    path = jobfile(tmp_path, [f"echo {i}" for i in range(60)])
    lines = ae(tmp_path, "run", "-q", "-j", "1", "--shuf", str(path))
    assert lines.returncode == 0, lines.stderr
    order = lines.stdout.split()
    assert sorted(order, key=int) == [str(i) for i in range(60)] and order != sorted(order, key=int)
    assert sorted(status_rows(tmp_path, "jobs")) == list(range(1, 61))  # each line keeps its number


def test_t_prints_each_job_as_it_starts(tmp_path: Path) -> None:
    """``-t`` (GNU parallel's): each job's command on stderr as it starts, its slot filled in,
    each retry again; ``-q`` does not hide it, and stdout keeps only the output."""
    result = ae(tmp_path, "run", "-q", "-t", "-k", "-j", "2", "echo", "{%}", "{}", ":::", "a", "b", "c")
    assert result.returncode == 0, result.stderr
    traced = result.stderr.splitlines()
    assert [line.split()[2] for line in traced] == ["a", "b", "c"]
    assert all(line.split()[:2] in (["echo", "1"], ["echo", "2"]) for line in traced)
    assert [line.split()[1] for line in result.stdout.splitlines()] == ["a", "b", "c"]
    path = jobfile(tmp_path, ["sh -c 'exit 3'"])
    retried = ae(tmp_path, "run", "-q", "-t", "--retries", "1", "--backoff", "0", str(path))
    assert retried.returncode == 1
    assert retried.stderr.splitlines() == ["sh -c 'exit 3'", "sh -c 'exit 3'"]
