"""Airflow adapter pieces that need no Airflow: the missing-extra error, provider info, workload files.

The adapter itself is exercised against real Airflow by ``tests/airflow_e2e`` (``nox -s airflow``).
"""

from __future__ import annotations

import functools
import os
import stat
import subprocess
import sys
import textwrap
import types
from pathlib import Path

import pytest

from async_executor._airflow._workload_files import WorkloadFiles
from async_executor._airflow.provider import EXECUTOR_PATH, get_provider_info

REPO = Path(__file__).resolve().parents[1]


def run_python(code: str) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
    }
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, env=env, timeout=60
    )


def test_import_without_airflow_names_the_extra() -> None:
    # sys.modules["airflow"] = None makes Airflow unimportable whether or not it is installed
    proc = run_python(
        """
        import sys
        sys.modules["airflow"] = None
        try:
            import async_executor.airflow
        except ImportError as exc:
            print("IMPORT-ERROR:", exc)
        else:
            print("imported")
        """
    )
    assert proc.returncode == 0, proc.stderr
    assert "IMPORT-ERROR:" in proc.stdout
    assert 'pip install "async-local-executor[airflow]"' in proc.stdout


def test_core_import_does_not_pull_in_airflow() -> None:
    proc = run_python(
        """
        import sys
        import async_executor, async_executor._airflow.provider, async_executor._airflow._workload_files
        print(any(m == "airflow" or m.startswith("airflow.") for m in sys.modules))
        """
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "False"


def test_provider_info_lists_the_executor_and_its_config() -> None:
    info = get_provider_info()
    assert info["package-name"] == "async-local-executor"
    assert info["executors"] == [EXECUTOR_PATH]
    options = info["config"]["async_executor"]["options"]
    assert {"state_path", "log_dir", "kill_grace", "drain_timeout", "workload_dir"} <= set(options)


def test_workload_file_is_private(tmp_path: Path) -> None:
    files = WorkloadFiles(tmp_path / "wl")
    files.open()
    try:
        assert stat.S_IMODE(os.stat(tmp_path / "wl").st_mode) == 0o700
        path = files.write('{"token": "secret"}')
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
        assert Path(path).read_text() == '{"token": "secret"}'
    finally:
        files.close()
    assert not os.path.exists(path)


def test_existing_directory_is_tightened(tmp_path: Path) -> None:
    directory = tmp_path / "wl"
    directory.mkdir(mode=0o755)
    os.chmod(directory, 0o755)
    files = WorkloadFiles(directory)
    files.open()
    files.close()
    assert stat.S_IMODE(os.stat(directory).st_mode) == 0o700


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="inotify is Linux-only")
def test_file_is_removed_once_a_reader_has_read_it(tmp_path: Path) -> None:
    files = WorkloadFiles(tmp_path / "wl")
    files.open()
    try:
        assert files.watching
        path = files.write("payload")
        other = files.write("other")
        assert files.poll() == 0  # our own write is not a read
        assert os.path.exists(path)
        # a separate process reads it, like execute_workload --json-path does
        subprocess.run([sys.executable, "-c", f"open({path!r}).read()"], check=True, timeout=60)
        assert files.poll() == 1
        assert not os.path.exists(path)
        assert os.path.exists(other)  # untouched until read or discarded
        assert files.live == 1
    finally:
        files.close()
    assert not os.path.exists(other)


def test_discard_is_idempotent(tmp_path: Path) -> None:
    files = WorkloadFiles(tmp_path / "wl")
    files.open()
    path = files.write(b"x")
    files.discard(path)
    files.discard(path)
    files.discard(None)
    assert not os.path.exists(path)
    assert files.live == 0
    files.close()


def test_open_sweeps_stale_files(tmp_path: Path) -> None:
    directory = tmp_path / "wl"
    directory.mkdir(mode=0o700)
    (directory / "stale.json").write_text("old token")
    (directory / "keep.txt").write_text("not ours")
    files = WorkloadFiles(directory)
    files.open()
    files.close()
    assert not (directory / "stale.json").exists()
    assert (directory / "keep.txt").exists()


def test_directory_must_be_a_directory(tmp_path: Path) -> None:
    target = tmp_path / "file"
    target.write_text("")
    with pytest.raises((RuntimeError, FileExistsError, NotADirectoryError)):
        WorkloadFiles(target).open()


# --------------------------------------------------------------------- the fork server's warm-up


class _Supervisor:
    """Stands in for Airflow's task supervisor: what the exit-wake wrapper reads, and a record."""

    def __init__(self, pid: int, registered: bool = False) -> None:
        import selectors
        import socket

        self.pid = pid
        self._exit_code: int | None = None
        self.selector = selectors.DefaultSelector()
        self.calls: list[float] = []
        self._pair = socket.socketpair()
        if registered:
            self.selector.register(self._pair[0], selectors.EVENT_READ)

    def _service_subprocess(self, max_wait_time: float) -> None:
        self.calls.append(max_wait_time)

    def close(self) -> None:
        self.selector.close()
        for s in self._pair:
            s.close()


def _wrapped_call(sup: _Supervisor, max_wait_time: float) -> None:
    from async_executor._airflow._warmup import wake_on_exit

    wake_on_exit(_Supervisor._service_subprocess)(sup, max_wait_time)


def test_wait_for_exit_sees_the_exit_without_reaping() -> None:
    from async_executor._airflow._warmup import wait_for_exit

    child = subprocess.Popen(["sleep", "0.2"])
    assert wait_for_exit(child.pid, 30.0)
    # still ours to reap, with its real status
    assert os.waitpid(child.pid, 0)[1] == 0
    child.returncode = 0


def test_wait_for_exit_returns_false_at_the_deadline() -> None:
    from async_executor._airflow._warmup import wait_for_exit

    child = subprocess.Popen(["sleep", "30"])
    try:
        assert not wait_for_exit(child.pid, 0.05)
    finally:
        child.kill()
        child.wait()


def test_exit_wake_waits_for_the_exit_when_nothing_is_left_to_read() -> None:
    child = subprocess.Popen(["sleep", "0.2"])
    sup = _Supervisor(child.pid)
    try:
        _wrapped_call(sup, 30.0)
        # the exit was seen (not the 30 s deadline): Airflow's step runs without waiting again
        assert sup.calls == [0]
        assert child.poll() == 0  # and the process is still there to be reaped by Airflow's code
    finally:
        sup.close()


def test_exit_wake_leaves_the_step_alone_otherwise() -> None:
    child = subprocess.Popen(["sleep", "30"])
    try:
        with_sockets = _Supervisor(child.pid, registered=True)
        _wrapped_call(with_sockets, 7.5)  # sockets to read: Airflow's select waits on them
        assert with_sockets.calls == [7.5]
        with_sockets.close()
        exited = _Supervisor(child.pid)
        exited._exit_code = 0  # exit already seen
        _wrapped_call(exited, 7.5)
        assert exited.calls == [7.5]
        exited.close()
        alive = _Supervisor(child.pid)
        _wrapped_call(alive, 0.05)  # still running at the deadline: same wait as before
        assert alive.calls == [0.05]
        alive.close()
    finally:
        child.kill()
        child.wait()


def test_exit_wake_wraps_once() -> None:
    from async_executor._airflow._warmup import wake_on_exit

    once = wake_on_exit(_Supervisor._service_subprocess)
    assert wake_on_exit(once) is once


def _fake_sdk_log(monkeypatch: pytest.MonkeyPatch) -> tuple[types.ModuleType, list[dict[str, object]]]:
    """Stand-ins for ``airflow``, ``airflow.sdk`` and ``airflow.sdk.log`` with a cached set-up."""
    made: list[dict[str, object]] = []

    @functools.cache
    def configure_logging(**kwargs: object) -> None:
        made.append(kwargs)

    log = types.ModuleType("airflow.sdk.log")
    log.configure_logging = configure_logging  # type: ignore[attr-defined]
    sdk = types.ModuleType("airflow.sdk")
    sdk.log = log  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "airflow", types.ModuleType("airflow"))
    monkeypatch.setitem(sys.modules, "airflow.sdk", sdk)
    monkeypatch.setitem(sys.modules, "airflow.sdk.log", log)
    return log, made


@pytest.mark.parametrize(("task_level", "set_ups"), [(None, 1), ("DEBUG", 2)])
def test_preconfigured_task_logging_is_reused_unless_the_logging_environment_differs(
    monkeypatch: pytest.MonkeyPatch, task_level: str | None, set_ups: int
) -> None:
    from async_executor._airflow._warmup import preconfigure_task_logging

    monkeypatch.delenv("AIRFLOW__LOGGING__LOGGING_LEVEL", raising=False)
    log, made = _fake_sdk_log(monkeypatch)
    assert preconfigure_task_logging()
    assert made == [{"output": sys.stdout.buffer, "json_output": True}]  # once, before the fork
    if task_level is not None:  # a task's own environment changes the [logging] options
        monkeypatch.setenv("AIRFLOW__LOGGING__LOGGING_LEVEL", task_level)
    log.configure_logging(output=sys.stdout.buffer, json_output=True)  # execute_workload's call
    assert len(made) == set_ups
    assert not preconfigure_task_logging()  # wraps once


def test_preconfigure_task_logging_needs_the_cached_set_up(monkeypatch: pytest.MonkeyPatch) -> None:
    from async_executor._airflow._warmup import preconfigure_task_logging

    log, made = _fake_sdk_log(monkeypatch)
    log.configure_logging = lambda **kwargs: made.append(kwargs)  # type: ignore[attr-defined]
    assert not preconfigure_task_logging()  # not cached: a call here would not be reused
    assert made == []


def test_dispose_inherited_orm_disposes_as_execute_workload_does(monkeypatch: pytest.MonkeyPatch) -> None:
    from async_executor._airflow._warmup import dispose_inherited_orm

    calls: list[dict[str, object]] = []
    settings = types.ModuleType("airflow.settings")
    settings.dispose_orm = lambda **kwargs: calls.append(kwargs)  # type: ignore[attr-defined]
    airflow = types.ModuleType("airflow")
    airflow.settings = settings  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "airflow", airflow)
    monkeypatch.setitem(sys.modules, "airflow.settings", settings)
    assert dispose_inherited_orm()
    assert calls == [{"do_log": False}]
    del settings.dispose_orm  # type: ignore[attr-defined]
    assert not dispose_inherited_orm()
