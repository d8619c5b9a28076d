"""The spawn CPU handoff (``_handoff.py``): faster spawns that a task can never notice.

The handoff pins the spawning thread and makes it real-time for the length of one
``posix_spawn``; these tests check that every task still starts with the caller's CPU mask,
scheduling policy and nice value, also under load (a task that asks at once, like ``nproc``,
must never see the pinned mask), and that every way out leaves the thread as it was.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from async_executor import _handoff
from async_executor._spawn import ExecLauncher

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux scheduling calls")

ROOT = Path(__file__).resolve().parent.parent


def _can_use_fifo() -> bool:
    try:
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(1))
    except OSError:
        return False
    os.sched_setscheduler(0, os.SCHED_OTHER, os.sched_param(0))
    return True


needs_handoff = pytest.mark.skipif(
    len(os.sched_getaffinity(0)) < 2 or not _can_use_fifo(),
    reason="the handoff needs two CPUs and permission to use SCHED_FIFO",
)

# A task that reports how it was started, in one write (lines of concurrent tasks must not mix).
_PROBE = (
    "import os; os.write(1, (f'{os.sched_getscheduler(0)} {os.getpriority(os.PRIO_PROCESS, 0)} '"
    " f'{sorted(os.sched_getaffinity(0))}' + chr(10)).encode())"
)

# Runs in its own interpreter: it renices its thread, which must not leak into the test run.
_DRIVER = textwrap.dedent(
    """
    import json, os, sys
    from async_executor._spawn import ExecLauncher

    n, out_path = int(sys.argv[1]), sys.argv[2]  # argv[3]: _PROBE
    os.setpriority(os.PRIO_PROCESS, 0, 3)  # this thread's nice value; tasks must inherit it
    mask = sorted(os.sched_getaffinity(0))
    launcher = ExecLauncher(handoff=True)
    out = os.open(out_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    probe = [sys.executable, "-c", sys.argv[3]]
    running = 0
    for i in range(n):
        argv = ("nproc",) if i % 50 else tuple(probe)
        launcher.launch(argv, None, None, out)
        running += 1
        if running >= 64:  # parallelism 64: the cores stay busy with children
            os.waitpid(-1, 0)
            running -= 1
    while running:
        os.waitpid(-1, 0)
        running -= 1
    print(json.dumps({
        "active": launcher._handoff.active,
        "mask": mask,
        "policy": os.sched_getscheduler(0),
        "nice": os.getpriority(os.PRIO_PROCESS, 0),
        "mask_after": sorted(os.sched_getaffinity(0)),
    }))
    """
)


@needs_handoff
@pytest.mark.skipif(shutil.which("nproc") is None, reason="needs coreutils' nproc")
def test_tasks_start_with_the_callers_mask_policy_and_nice_under_load(tmp_path: Path) -> None:
    out = tmp_path / "out.txt"
    done = subprocess.run(
        [sys.executable, "-c", _DRIVER, "1500", str(out), _PROBE],
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    parent = json.loads(done.stdout.strip().splitlines()[-1])
    assert parent["active"], "the handoff turned itself off"
    # the spawning thread is itself again
    assert parent["policy"] == os.SCHED_OTHER
    assert parent["nice"] == 3
    assert parent["mask_after"] == parent["mask"]

    lines = out.read_text().splitlines()
    assert len(lines) == 1500
    counts = [line for line in lines if not line.startswith(str(os.SCHED_OTHER) + " ")]
    probes = [line for line in lines if line.startswith(str(os.SCHED_OTHER) + " ")]
    # nproc counts the CPUs in its mask, first thing: a task that ran pinned would say 1
    assert counts == [str(len(parent["mask"]))] * len(counts)
    assert len(probes) == 30
    for line in probes:
        policy, nice, mask = line.split(" ", 2)
        assert (int(policy), int(nice), json.loads(mask)) == (os.SCHED_OTHER, 3, parent["mask"])


def _thread_state() -> tuple[int, frozenset[int]]:
    return os.sched_getscheduler(0), frozenset(os.sched_getaffinity(0))


@needs_handoff
def test_a_failed_spawn_leaves_the_thread_as_it_was(tmp_path: Path) -> None:
    before = _thread_state()
    launcher = ExecLauncher(handoff=True)
    with open(tmp_path / "log", "wb") as log, pytest.raises(FileNotFoundError):
        launcher.launch((str(tmp_path / "missing"),), None, None, log.fileno())
    assert _thread_state() == before
    assert launcher._handoff.active
    launcher.close()


@needs_handoff
def test_each_spawn_gives_the_thread_back(tmp_path: Path) -> None:
    before = _thread_state()
    launcher = ExecLauncher(handoff=True)
    with open(tmp_path / "log", "wb") as log:
        child = launcher.launch(("true",), None, None, log.fileno())
    assert _thread_state() == before
    assert os.waitpid(child.pid, 0)[1] == 0
    launcher.close()


def test_a_refused_real_time_policy_turns_the_handoff_off(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = os.sched_setscheduler

    def refuse_fifo(pid: int, policy: int, param: os.sched_param) -> None:
        if policy == os.SCHED_FIFO:
            raise PermissionError(1, "Operation not permitted")
        real(pid, policy, param)

    monkeypatch.setattr(os, "sched_setscheduler", refuse_fifo)
    before = _thread_state()
    launcher = ExecLauncher(handoff=True)
    with open(tmp_path / "log", "wb") as log:
        for _ in range(3):
            child = launcher.launch(("true",), None, None, log.fileno())
            assert os.waitpid(child.pid, 0)[1] == 0
    assert not launcher._handoff.active
    assert _thread_state() == before
    launcher.close()


def test_the_environment_switch_turns_it_off(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(_handoff.ENV_SWITCH, "0")
    assert not _handoff.CpuHandoff().active
    assert not _handoff.CpuHandoff(True).active
    monkeypatch.delenv(_handoff.ENV_SWITCH)
    assert not _handoff.CpuHandoff(False).active


@needs_handoff
def test_a_caller_that_is_not_plain_sched_other_spawns_plainly(tmp_path: Path) -> None:
    """A batch-scheduled caller's tasks inherit SCHED_BATCH, as without the handoff."""
    script = textwrap.dedent(
        """
        import os, sys
        from async_executor._spawn import ExecLauncher
        os.sched_setscheduler(0, os.SCHED_BATCH, os.sched_param(0))
        launcher = ExecLauncher(handoff=True)
        out = os.open(sys.argv[1], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        child = launcher.launch((sys.executable, "-c", "import os; print(os.sched_getscheduler(0))"), None, None, out)
        os.waitpid(child.pid, 0)
        print(os.sched_getscheduler(0))
        """
    )
    out = tmp_path / "out.txt"
    done = subprocess.run(
        [sys.executable, "-c", script, str(out)],
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert int(done.stdout.split()[-1]) == os.SCHED_BATCH
    assert int(out.read_text().strip()) == os.SCHED_BATCH
