"""The benchmark harness's scratch directories: deleted once, at the end, never between runs."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import _harness


@pytest.fixture(autouse=True)
def _no_outer_trash(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(_harness.TRASH_ENV, raising=False)


def test_scratch_dirs_outlive_their_measurement_until_the_run_ends(tmp_path: Path) -> None:
    with _harness.deferred_cleanup(str(tmp_path), patience_s=0) as notes:
        trash = os.environ[_harness.TRASH_ENV]
        with _harness.scratch_dir("case-", str(tmp_path)) as work:
            Path(work, "task.log").write_text("output")
        assert not os.path.exists(work)  # moved out of the way...
        kept = Path(trash, os.path.basename(work), "task.log")
        assert kept.read_text() == "output"  # ...but not deleted yet
        assert notes and notes[0].startswith("file creation before timing:")
    assert not os.path.exists(trash)
    assert _harness.TRASH_ENV not in os.environ


def test_an_outer_trash_is_reused_and_left_to_its_owner(tmp_path: Path) -> None:
    with _harness.deferred_cleanup(str(tmp_path), patience_s=0):
        outer = os.environ[_harness.TRASH_ENV]
        with _harness.deferred_cleanup(str(tmp_path), patience_s=0):
            assert os.environ[_harness.TRASH_ENV] == outer
            with _harness.scratch_dir("case-", str(tmp_path)) as work:
                pass
        assert os.path.isdir(os.path.join(outer, os.path.basename(work)))
    assert not os.path.exists(outer)


def test_without_deferred_cleanup_a_scratch_dir_is_deleted_at_once(tmp_path: Path) -> None:
    with _harness.deferred_cleanup(str(tmp_path), eager=True) as notes:
        assert _harness.TRASH_ENV not in os.environ
        with _harness.scratch_dir("case-", str(tmp_path)) as work:
            Path(work, "f").write_text("x")
        assert not os.path.exists(work)
    assert notes == []


def test_settling_gives_up_after_its_patience(tmp_path: Path) -> None:
    note = _harness.settle_file_system(str(tmp_path), fast_us=0.0, patience_s=0.0)
    assert "NOT settled" in note


def test_time_process_reports_the_exit_status_and_feeds_stdin() -> None:
    wall, rc = _harness.time_process(
        ["sh", "-c", 'read line; test "$line" = hello && exit 3'], stdin=b"hello\n"
    )
    assert rc == 3
    assert wall > 0


def test_time_process_kills_a_process_that_outlives_its_timeout(tmp_path: Path) -> None:
    mark = tmp_path / "finished"
    with pytest.raises(subprocess.TimeoutExpired):
        _harness.time_process(["sh", "-c", f"sleep 0.3; touch {mark}"], timeout=0.05)
    time.sleep(0.6)
    assert not mark.exists()  # the shell was killed, not waited for


def test_cli_cpu_reports_the_cli_s_own_cpu_and_its_children_s() -> None:
    """The in-process probe of ``benchmarks/cli_cpu.py`` runs the CLI and gets to report."""
    root = Path(__file__).resolve().parents[1]
    proc = subprocess.run(
        [
            sys.executable,
            str(root / "benchmarks" / "cli_cpu.py"),
            "--lines",
            "5",
            "--runs",
            "1",
            "-j",
            "2",
            str(root),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    row = proc.stdout.strip().splitlines()[-1].split()
    assert row[0].endswith(root.name) and len(row) == 5, proc.stdout
    assert all(float(cell) >= 0 for cell in row[1:]) and float(row[1]) > 0, proc.stdout


def test_bench_cli_times_the_cli_installed_for_its_python_not_a_shim_on_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import bench_cli

    # A shim first on PATH (as pyenv's are) must not be what gets timed.
    shim = tmp_path / "async-executor"
    shim.write_text("#!/bin/sh\nexit 99\n")
    shim.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ.get('PATH', '')}")
    installed = Path(sys.executable).parent / "async-executor"
    expected = str(installed) if os.access(installed, os.X_OK) else "async-executor"
    assert bench_cli._own_program("async-executor") == expected
    assert bench_cli._own_program("python") == sys.executable
    assert bench_cli._own_program("env") == "env"
    if expected != "async-executor":
        argv = bench_cli._ae_argv("async-executor", 8)
        assert argv is not None and argv[0] == expected and argv[1:4] == ["run", "-j", "8"]


def test_the_facade_contender_reports_the_cpu_of_the_executor_and_its_supervisor(tmp_path: Path) -> None:
    import bench_core

    sample = bench_core.c_facade(20, 4, ["true"], 0.001, "asyncio", str(tmp_path), journal=True)
    assert (sample["ok"], sample["failed"]) == (20, 0)
    assert sample["cpu_s"] >= 0
    assert sample["supervisor_cpu_s"] > 0  # its start alone (imports) takes tens of ms
    assert bench_core._process_cpu(os.getpid()) is not None
    assert bench_core._process_cpu(None) is None


_BURNER = """
import subprocess, sys
sys.path.insert(0, {bench!r})
import _harness

def burn() -> dict:
    # a grandchild that spends ~0.3 s of CPU: its CPU must count in the measured tree
    code = "import time\\nend = time.process_time() + 0.3\\nwhile time.process_time() < end: pass"
    subprocess.run([sys.executable, "-c", code], check=True)
    return {{"wall": 1.0, "ok": 1, "failed": 0}}

if __name__ == "__main__":
    sys.exit(_harness.child_main({{"burn": burn}}, sys.argv[2]))
"""


def test_run_isolated_reports_the_cpu_of_the_whole_process_tree(tmp_path: Path) -> None:
    script = tmp_path / "burner.py"
    script.write_text(_BURNER.format(bench=str(Path(_harness.__file__).parent)))
    sample = _harness.run_isolated(script, "burn", {}, timeout=60)
    assert sample["tree_cpu_s"] >= 0.3  # the grandchild's, plus two interpreters' start
    result = _harness.Result(
        _harness.Case("w", 1, "c", tasks=4), samples=[sample, {**sample, "tree_cpu_s": 1.0}]
    )
    assert result.cpu_per_task_ms == pytest.approx(1000 * (sample["tree_cpu_s"] + 1.0) / 2 / 4)
    suite = _harness.Suite(lambda case: sample, repeats=1, log=lambda msg: None)
    suite.results.append(result)
    header = suite.table({}, []).splitlines()[0]
    assert "CPU ms/task" in header
