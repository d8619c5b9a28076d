"""At no instant more than ``parallelism`` task processes; resource shortages slow admission down."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest

from async_executor import AsyncExecutor, TaskState

from .conftest import PY, drain

# Each child increments a shared counter under an exclusive lock, records the highest value
# seen, stays a moment, then decrements: the children themselves measure how many run at once.
# Until the peak has reached the target (argv[3]), a child stays until it does (at most 10 s):
# on a loaded machine the children's interpreters start too far apart to overlap otherwise.
COUNTING_CHILD = """
import fcntl, os, sys, time
path = sys.argv[1]
def update(delta):
    with open(path, "r+") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        now, peak = map(int, f.read().split())
        now += delta
        peak = max(peak, now)
        f.seek(0); f.truncate(); f.write(f"{now} {peak}")
    return peak
peak = update(+1)
deadline = time.monotonic() + 10
while peak < int(sys.argv[3]) and time.monotonic() < deadline:
    time.sleep(0.01)
    peak = update(0)
time.sleep(float(sys.argv[2]))
update(-1)
"""


@pytest.mark.parametrize("parallelism", [1, 3, 8])
def test_children_never_see_more_than_parallelism(
    tmp_path: Path, parallelism: int, mode: dict[str, Any]
) -> None:
    counter = tmp_path / "counter"
    counter.write_text("0 0")
    target = str(parallelism)
    ex = AsyncExecutor(parallelism=parallelism, log_dir=tmp_path / "logs", **mode)
    ex.start()
    try:
        for i in range(4 * parallelism + 2):
            ex.queue_command(i, [PY, "-c", COUNTING_CHILD, str(counter), "0.05", target], priority=i % 4)
        # direct hand-offs bypass heartbeat's slot accounting; the engine still holds the line
        for i in range(parallelism + 2):
            ex.execute_async(("direct", i), [PY, "-c", COUNTING_CHILD, str(counter), "0.05", target])
        events = drain(ex)
    finally:
        ex.end()
    assert all(evs[0][0] == TaskState.SUCCESS for evs in events.values())
    now, peak = map(int, counter.read_text().split())
    assert now == 0
    assert peak == parallelism  # reached, never exceeded
    if "warm_start" in mode:
        assert ex.statistics().warm_launched == len(events)


def test_out_of_descriptors_waits_instead_of_failing(tmp_path: Path) -> None:
    """With the open-file limit nearly used up, every task still runs (admission waits)."""
    program = f"""
import os, resource, threading, time
from async_executor import AsyncExecutor, TaskState
resource.setrlimit(resource.RLIMIT_NOFILE, (256, 256))
ex = AsyncExecutor(parallelism=64, log_dir={str(tmp_path / "logs")!r}, state_path=None)
ex.start()
hog = []
try:
    while True:
        hog.append(os.open(os.devnull, os.O_RDONLY))
except OSError:
    pass
for fd in hog[-8:]:
    os.close(fd)          # only a few descriptors left for 64 wanted slots
del hog[-8:]
def release():
    time.sleep(1.0)
    for fd in hog:
        os.close(fd)
threading.Thread(target=release, daemon=True).start()
for i in range(200):
    ex.queue_command(i, ["sh", "-c", "sleep 0.01"])
states = {{}}
deadline = time.monotonic() + 60
while (ex.queued_tasks or ex.running) and time.monotonic() < deadline:
    ex.heartbeat()
    for key, (state, info) in ex.get_event_buffer().items():
        assert key not in states, key
        states[key] = (state, info.reason)
    time.sleep(0.002)
ex.end()
stats = ex.statistics()
failed = {{k: v for k, v in states.items() if v[0] != TaskState.SUCCESS}}
print(len(states), len(failed), stats.resource_waits)
assert len(states) == 200 and not failed, failed
assert stats.resource_waits > 0
"""
    result = subprocess.run([PY, "-c", program], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


def test_parallelism_is_capped_by_the_descriptor_limit(tmp_path: Path) -> None:
    program = f"""
import resource
from async_executor import AsyncExecutor
resource.setrlimit(resource.RLIMIT_NOFILE, (200, 200))
ex = AsyncExecutor(parallelism=5000, log_dir={str(tmp_path / "logs")!r})
ex.start()
cap = ex.statistics().effective_parallelism
ex.end()
print(cap)
assert 1 <= cap < 200, cap
"""
    result = subprocess.run([PY, "-c", program], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "exceeds what the open-file limit allows" in result.stderr
