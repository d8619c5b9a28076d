"""The same engine inside the caller's event loop: async with, submit, run, cancel."""

from __future__ import annotations

import asyncio
from pathlib import Path

import anyio
import pytest

from async_executor import (
    AsyncExecutor,
    DuplicateTaskError,
    ExecutorClosedError,
    FailureReason,
    InvalidTaskError,
    TaskHandle,
    TaskState,
)
from async_executor._aio import shielded

from .conftest import PY, drain, pid_alive

pytestmark = pytest.mark.anyio


async def test_run_and_submit(log_dir: Path) -> None:
    async with AsyncExecutor(parallelism=4, log_dir=log_dir) as ex:
        info = await ex.run(("job", 1), [PY, "-c", "print('hello')"], timeout=30)
        assert info.state == TaskState.SUCCESS and info.returncode == 0
        assert ex.get_task_log(("job", 1))[1] == ["hello\n"]
        handle = await ex.submit(("job", 2), ["true"])
        assert (await handle.wait()).succeeded
        assert handle.done() and handle.info is not None
        assert "success" in repr(handle)
        failed = await ex.run("bad", ["sh", "-c", "exit 4"])
        assert failed.state == "failed" and failed.returncode == 4
    # tasks submitted through the async API report through their handles, not the buffer
    assert ex.get_event_buffer() == {}


async def test_many_concurrent_tasks_and_parallelism(log_dir: Path) -> None:
    async with AsyncExecutor(parallelism=16, log_dir=log_dir) as ex:
        handles = [await ex.submit(i, ["sh", "-c", f"echo {i}"], priority=i % 3) for i in range(300)]
        assert ex.statistics().running <= 16
        infos = [await h.wait() for h in handles]
    assert [i.key for i in infos] == list(range(300))
    assert all(i.succeeded for i in infos)


async def test_done_callbacks_get_each_outcome(log_dir: Path) -> None:
    seen: list[tuple[object, int | None]] = []
    async with AsyncExecutor(parallelism=4, log_dir=log_dir, state_path=None) as ex:
        handles = [await ex.submit(i, ["sh", "-c", f"exit {i % 2}"]) for i in range(10)]
        for handle in handles:
            handle.add_done_callback(lambda info: seen.append((info.key, info.returncode)))
        for handle in handles:
            await handle.wait()
        handles[0].add_done_callback(lambda info: seen.append(("late", info.returncode)))  # done already
        await asyncio.sleep(0)
    assert sorted(seen[:-1], key=lambda s: str(s[0])) == [(i, i % 2) for i in range(10)]
    assert seen[-1] == ("late", 0)


async def test_handles_are_awaitable(log_dir: Path) -> None:
    async with AsyncExecutor(parallelism=4, log_dir=log_dir, state_path=None) as ex:
        handles = [await ex.submit(i, ["sh", "-c", f"exit {i}"]) for i in range(5)]
        infos = await asyncio.gather(*handles)
        assert [(i.key, i.returncode) for i in infos] == [(i, i) for i in range(5)]
        assert (await handles[2]).returncode == 2  # again: the outcome stays
        assert (await asyncio.wait_for(await ex.submit("w", ["true"]), 30)).succeeded
        ordered = [(await step).key for step in asyncio.as_completed(handles)]
        assert sorted(ordered) == list(range(5))


async def test_as_completed_yields_each_outcome_as_its_task_ends(log_dir: Path, tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    async with AsyncExecutor(parallelism=4, log_dir=log_dir, state_path=None) as ex:
        early = await ex.submit("early", ["true"])
        await early.wait()
        late = await ex.submit("late", ["sh", "-c", f"while [ ! -e {gate} ]; do sleep 0.01; done; exit 3"])
        quick = await ex.submit("quick", ["sh", "-c", "exit 1"])
        seen = []
        async for info in ex.as_completed([late, quick, early, quick]):
            seen.append((info.key, info.returncode))
            if info.key == "quick":
                assert not late.done()  # yielded while "late" still runs: streamed, not collected
                gate.touch()
    assert seen == [("early", 0), ("quick", 1), ("late", 3)]  # ended first; a repeat once


async def test_as_completed_timeout_leaves_the_tasks_running(log_dir: Path) -> None:
    async with AsyncExecutor(parallelism=2, log_dir=log_dir, state_path=None, kill_grace=0.5) as ex:
        done = await ex.submit("done", ["true"])
        slow = await ex.submit("slow", ["sleep", "30"])
        await done.wait()
        seen = []
        with pytest.raises(TimeoutError, match="1 task"):
            async for info in ex.as_completed([done, slow], timeout=0.3):
                seen.append(info.key)
        assert seen == ["done"]
        assert not slow.done() and slow.pid is not None and pid_alive(slow.pid)
        async for info in ex.as_completed([slow, done]):
            assert info.key == "done"
            break  # leaving early: the task goes on
        assert not slow.done()
        assert slow.cancel()
        assert (await slow).reason is FailureReason.TERMINATED
        assert [info.key async for info in ex.as_completed([])] == []


async def test_as_completed_refuses_bad_arguments_at_the_call(log_dir: Path) -> None:
    async with AsyncExecutor(parallelism=2, log_dir=log_dir, state_path=None) as other:
        foreign = await other.submit("f", ["true"])
        async with AsyncExecutor(parallelism=2, log_dir=log_dir, state_path=None) as ex:
            mine = await ex.submit("m", ["true"])
            with pytest.raises(TypeError, match="TaskHandle"):
                ex.as_completed([mine, "m"])  # type: ignore[list-item]
            with pytest.raises(ValueError, match="another executor"):
                ex.as_completed([mine, foreign])
            for bad in (0, -1, "1", True):
                with pytest.raises(InvalidTaskError, match="timeout"):
                    ex.as_completed([mine], timeout=bad)  # type: ignore[arg-type]
            assert [info.key async for info in ex.as_completed([mine], timeout=float("inf"))] == ["m"]


async def test_duplicate_submit_is_refused(log_dir: Path) -> None:
    async with AsyncExecutor(parallelism=2, log_dir=log_dir) as ex:
        handle = await ex.submit("same", ["sleep", "0.2"])
        with pytest.raises(DuplicateTaskError):
            await ex.submit("same", ["true"])
        await handle.wait()
        assert (await ex.run("same", ["true"])).try_number == 2


async def test_timeout_in_async_api(log_dir: Path) -> None:
    async with AsyncExecutor(parallelism=2, log_dir=log_dir, kill_grace=0.5) as ex:
        info = await ex.run("slow", ["sleep", "30"], timeout=0.2)
    assert info.reason is FailureReason.TIMED_OUT


async def test_cancel_a_handle(log_dir: Path) -> None:
    async with AsyncExecutor(parallelism=1, log_dir=log_dir, kill_grace=0.5) as ex:
        running = await ex.submit("running", ["sleep", "30"])
        pending = await ex.submit("pending", ["sleep", "30"])
        await anyio.sleep(0.1)
        pid = running.pid
        assert pid is not None
        assert pending.cancel() is True
        assert running.cancel() is True
        assert (await pending.wait()).reason is FailureReason.REVOKED
        assert (await running.wait()).reason is FailureReason.TERMINATED
        assert running.cancel() is False
    assert not pid_alive(pid)


async def test_cancelling_run_stops_its_task_and_frees_its_key(log_dir: Path, tmp_path: Path) -> None:
    pidfile = tmp_path / "pid"
    async with AsyncExecutor(parallelism=2, log_dir=log_dir, kill_grace=0.5) as ex:
        with anyio.move_on_after(1) as scope:
            await ex.run("slow", ["sh", "-c", f"echo $$ > {pidfile}; exec sleep 30"])
        assert scope.cancelled_caught
        pid = int(pidfile.read_text())
        with anyio.fail_after(10):
            while pid_alive(pid):
                await anyio.sleep(0.05)
            while True:  # the key is free again once the stopped task has its outcome
                try:
                    info = await ex.run("slow", ["true"])
                    break
                except DuplicateTaskError:
                    await anyio.sleep(0.05)
        assert info.succeeded


async def test_exception_in_body_terminates_tasks(log_dir: Path) -> None:
    handles = []
    with pytest.raises(ZeroDivisionError):
        async with AsyncExecutor(parallelism=2, log_dir=log_dir, kill_grace=0.5) as ex:
            handles.append(await ex.submit("a", ["sleep", "30"]))
            handles.append(await ex.submit("b", ["sleep", "30"]))
            handles.append(await ex.submit("c", ["sleep", "30"]))
            await anyio.sleep(0.1)
            1 / 0  # noqa: B018
    infos = [h.info for h in handles]
    assert all(i is not None and i.reason is FailureReason.TERMINATED for i in infos)
    with pytest.raises(ExecutorClosedError):
        ex.queue_command("late", ["true"])


async def _running(handle: TaskHandle) -> int:
    """The pid once the task's process runs (polled: startup on a loaded machine is slow)."""
    with anyio.fail_after(30):
        while handle.pid is None:
            await anyio.sleep(0.01)
    return handle.pid


async def test_cancellation_terminates_and_is_reraised(log_dir: Path) -> None:
    pids: list[int] = []
    with anyio.CancelScope() as scope:  # the deadline is set once the task runs
        async with AsyncExecutor(parallelism=2, log_dir=log_dir, kill_grace=0.5) as ex:
            handle = await ex.submit("a", ["sleep", "30"])
            pids.append(await _running(handle))
            scope.deadline = anyio.current_time() + 0.1
            await handle.wait()
    assert scope.cancelled_caught
    assert handle.info is not None and handle.info.reason is FailureReason.TERMINATED
    assert not pid_alive(pids[0])


async def test_try_number_continues_a_count_kept_elsewhere(log_dir: Path) -> None:
    async with AsyncExecutor(parallelism=2, log_dir=log_dir) as ex:
        assert (await ex.run("k", ["true"], try_number=5)).try_number == 5
        assert (await ex.run("k", ["true"])).try_number == 6  # the default follows the highest
        assert (await ex.run("k", ["true"], try_number=2)).try_number == 2
        assert (await ex.run("k", ["true"])).try_number == 7
        for bad in (0, -1, True, "3", 2.0):
            with pytest.raises(InvalidTaskError, match="try_number"):
                await ex.submit("bad", ["true"], try_number=bad)
        assert not ex.has_task("bad")


async def test_shielded_work_finishes_before_the_cancellation_goes_on() -> None:
    finished: list[str] = []
    after: list[str] = []

    async def work() -> str:
        await asyncio.sleep(0.3)
        finished.append("work")
        return "result"

    with anyio.move_on_after(0.05) as scope:
        await shielded(work())
        after.append("not reached: the cancellation is raised once the work is done")
    assert scope.cancelled_caught
    assert finished == ["work"] and after == []
    assert await shielded(work()) == "result"  # no cancellation: the work's result

    async def broken() -> None:
        raise ValueError("from the work")

    with pytest.raises(ValueError, match="from the work"):
        await shielded(broken())


async def test_aterminate_under_cancellation_still_closes_the_executor(log_dir: Path) -> None:
    ex = AsyncExecutor(parallelism=2, log_dir=log_dir, kill_grace=0.2)
    with anyio.CancelScope() as scope:
        async with ex:
            handle = await ex.submit("a", ["sh", "-c", "trap '' TERM; sleep 30"])
            await _running(handle)
            scope.deadline = anyio.current_time() + 0.1
            await anyio.sleep(30)
    assert scope.cancelled_caught
    info = handle.info
    assert info is not None and info.reason is FailureReason.TERMINATED
    with pytest.raises(ExecutorClosedError):
        await ex.submit("late", ["true"])


async def test_airflow_style_calls_inside_the_loop(log_dir: Path) -> None:
    async with AsyncExecutor(parallelism=2, log_dir=log_dir) as ex:
        ex.queue_command("q", ["true"])
        ex.execute_async("e", ["true"])
        while ex.queued_tasks or ex.running:
            ex.heartbeat()
            await anyio.sleep(0.01)
        assert set(ex.get_event_buffer()) == {"q", "e"}
        with pytest.raises(RuntimeError, match=r"await executor\.aterminate"):
            ex.terminate()
        with pytest.raises(RuntimeError, match=r"await executor\.aend"):
            ex.end()


async def test_aend_runs_queued_and_aterminate_is_idempotent(log_dir: Path) -> None:
    ex = AsyncExecutor(parallelism=2, log_dir=log_dir)
    async with ex:
        ex.queue_command("queued", ["true"])
        await ex.aend()
        await ex.aend()
        await ex.aterminate()
    assert ex.get_event_buffer()["queued"][0] == TaskState.SUCCESS


async def test_submit_needs_async_mode(log_dir: Path) -> None:
    ex = AsyncExecutor(log_dir=log_dir)
    ex.start()
    try:
        with pytest.raises(RuntimeError, match="submit"):
            await ex.submit("x", ["true"])
        with pytest.raises(RuntimeError, match="async with"):
            ex.as_completed([])
    finally:
        ex.end()


def test_async_with_outside_a_loop_is_an_error(log_dir: Path) -> None:
    async def enter() -> None:
        async with AsyncExecutor(log_dir=log_dir):
            pass

    coro = enter()
    with pytest.raises(RuntimeError):
        coro.send(None)
    coro.close()


def test_sync_facade_and_async_api_share_one_engine(log_dir: Path) -> None:
    """The same command gives the same outcome through both drivers."""

    async def via_async() -> tuple[int | None, list[str]]:
        async with AsyncExecutor(log_dir=log_dir / "a") as ex:
            info = await ex.run("k", ["sh", "-c", "echo same; exit 5"])
            return info.returncode, ex.get_task_log("k")[1]

    ex = AsyncExecutor(log_dir=log_dir / "s")
    ex.start()
    ex.queue_command("k", ["sh", "-c", "echo same; exit 5"])
    sync_info = drain(ex)["k"][0][1]
    ex.end()
    assert asyncio.run(via_async()) == (sync_info.returncode, ex.get_task_log("k")[1]) == (5, ["same\n"])


_GATED_OUTPUT = (
    "echo first; i=0; while [ ! -e {go} ]; do i=$((i+1)); [ $i -gt 3000 ] && exit 9; sleep 0.02; done;"
    " echo second"
)


@pytest.mark.parametrize(
    "options",
    [{}, {"state_path": None}, {"state_path": None, "lazy_logs": True}, {"lazy_logs": True}],
    ids=["journal", "in-process", "in-process-lazy", "journal-lazy"],
)
async def test_output_follows_a_running_task_to_its_end(tmp_path: Path, options: dict[str, object]) -> None:
    """``handle.output()``: what the task wrote so far while it still runs (it waits for the
    test to have seen its first line), then the rest, and the iteration ends with the task."""
    go = tmp_path / "go"
    async with AsyncExecutor(parallelism=2, log_dir=tmp_path / "logs", **options) as ex:  # type: ignore[arg-type]
        handle = await ex.submit("gated", ["sh", "-c", _GATED_OUTPUT.format(go=go)])
        seen = b""
        async for chunk in handle.output(poll_interval=0.01):
            seen += chunk
            if b"first" in seen and not go.exists():
                assert not handle.done()  # followed while it runs
                go.touch()
        assert seen == b"first\nsecond\n"
        assert (await handle).succeeded
        # ended already: the whole output at once; a silent task's (lazy: no log file) nothing
        assert b"".join([chunk async for chunk in handle.output()]) == b"first\nsecond\n"
        silent = await ex.submit("silent", ["true"])
        assert [chunk async for chunk in silent.output()] == []


async def test_output_needs_captured_output_and_a_positive_interval(tmp_path: Path) -> None:
    async with AsyncExecutor(parallelism=1, capture=False, state_path=None) as ex:
        handle = await ex.submit("x", ["true"])
        with pytest.raises(ValueError, match="not captured"):
            await handle.output().__anext__()
    async with AsyncExecutor(parallelism=1, log_dir=tmp_path, state_path=None) as ex:
        handle = await ex.submit("y", ["true"])
        with pytest.raises(ValueError, match="poll_interval"):
            await handle.output(poll_interval=0).__anext__()


def test_read_new_follows_a_growing_log(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """What ``output()`` and ``logs -f`` read with: past an offset, a chunk at a time; a log cut
    back to its cap from its new end; a missing one gives nothing."""
    from async_executor import _logs

    log = tmp_path / "a.log"
    assert _logs.read_new(str(log), 0) == (b"", 0)
    log.write_bytes(b"0123456789")
    monkeypatch.setattr(_logs, "READ_CHUNK", 4)
    assert _logs.read_new(str(log), 0) == (b"0123", 4)
    assert _logs.read_new(str(log), 4) == (b"4567", 8)
    log.write_bytes(b"01234")  # cut back below the offset: nothing more until it grows again
    assert _logs.read_new(str(log), 8) == (b"", 5)
    with log.open("ab") as handle:
        handle.write(b"xy")
    assert _logs.read_new(str(log), 5) == (b"xy", 7)
