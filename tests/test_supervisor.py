"""The supervisor process's own rules, driven in this process with a fake launcher."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from async_executor._supervisor import Supervisor


class SlowBackend:
    """Stands in for warm launches: a spawn is under way until the test says it is done."""

    def __init__(self) -> None:
        self.launching: list[Any] = []

    def spawn(
        self,
        token: Any,
        argv: tuple[str, ...],
        env: Mapping[str, str] | None,
        cwd: str | None,
        log_path: str | None,
    ) -> None:
        self.launching.append(token)

    def close(self) -> None:
        pass


async def _greeting_waits_for_launches(tmp_path: Path) -> None:
    loop = asyncio.get_running_loop()
    ours, theirs = socket.socketpair()
    name = f"async-executor-test-{uuid.uuid4().hex}"
    exits = tmp_path / "exits.jsonl"
    supervisor = Supervisor(loop, theirs, str(exits), "\0" + name)
    supervisor.backend.close()
    backend = SlowBackend()
    supervisor.backend = backend  # type: ignore[assignment]
    request = {"op": "spawn", "id": 1, "argv": ["true"], "tag": [["k", 1], 1]}
    ours.sendall(json.dumps(request).encode() + b"\n")
    while not backend.launching:
        await asyncio.sleep(0.01)
    ours.close()  # the executor dies with the launch under way

    newcomer = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    newcomer.setblocking(False)
    await loop.sock_connect(newcomer, "\0" + name)
    try:
        await asyncio.wait_for(loop.sock_recv(newcomer, 1 << 16), 0.3)
    except asyncio.TimeoutError:
        pass  # no greeting while task 1 has no pid
    else:
        raise AssertionError("greeted while a launch was under way")

    supervisor.spawned(1, os.getpid(), warm=True)  # the fork server answers
    data = b""
    while b"\n" not in data:
        data += await asyncio.wait_for(loop.sock_recv(newcomer, 1 << 16), 5)
    greeting = json.loads(data.split(b"\n")[0])
    assert greeting["op"] == "children"
    assert [(child["id"], child["pid"]) for child in greeting["children"]] == [(1, os.getpid())]
    records = [json.loads(line) for line in exits.read_text().splitlines()]
    # the launch intent before the launch, the spawn record before the greeting
    assert [(r["ev"], r.get("pid")) for r in records] == [("launch", None), ("spawn", os.getpid())]
    newcomer.close()
    supervisor.exited(1, 0, None)
    await asyncio.wait_for(supervisor.done, 5)
    supervisor.listener.close()
    os.close(supervisor.exits_fd)


def test_an_adopting_executor_is_greeted_only_once_launches_under_way_have_a_pid(tmp_path: Path) -> None:
    """A warm launch still waiting for the fork server must not be shown without its pid.

    Without a pid, the adopting executor takes the task for never started (reports it so, and
    its caller may queue it again) while the fork server goes on to start it.
    """
    asyncio.run(_greeting_waits_for_launches(tmp_path))


async def _exit_records_say_whether_an_executor_heard(tmp_path: Path) -> None:
    loop = asyncio.get_running_loop()
    ours, theirs = socket.socketpair()
    exits = tmp_path / "exits.jsonl"
    supervisor = Supervisor(loop, theirs, str(exits), f"\0async-executor-test-{uuid.uuid4().hex}")
    supervisor.backend.close()
    backend = SlowBackend()
    supervisor.backend = backend  # type: ignore[assignment]
    for task in (1, 2):
        request = {"op": "spawn", "id": task, "argv": ["true"], "tag": [["k", task], 1]}
        ours.sendall(json.dumps(request).encode() + b"\n")
    while len(backend.launching) < 2:
        await asyncio.sleep(0.01)
    supervisor.spawned(1, os.getpid())
    supervisor.spawned(2, os.getpid())
    supervisor.exited(1, 0, None)  # reported to the connected executor
    ours.close()
    while supervisor.owner is not None:
        await asyncio.sleep(0.01)
    supervisor.exited(2, 3, None)  # nobody to report it to
    await asyncio.wait_for(supervisor.done, 5)
    supervisor.listener.close()
    os.close(supervisor.exits_fd)
    records = [json.loads(line) for line in exits.read_text().splitlines()]
    ends = {tuple(r["tag"][0]): r for r in records if r["ev"] == "exit"}
    assert (ends[("k", 1)]["rc"], ends[("k", 1)].get("o")) == (0, 1)
    assert (ends[("k", 2)]["rc"], ends[("k", 2)].get("o")) == (3, None)


def test_an_exit_record_says_whether_the_executor_was_connected(tmp_path: Path) -> None:
    """An exit reported to a live executor may reach its caller before the executor's journal
    has it (Engine.deliver): its record says so, and recovery delivers it as a possible repeat."""
    asyncio.run(_exit_records_say_whether_an_executor_heard(tmp_path))
