"""Hypothesis drives random interleavings of the Airflow-style calls.

Invariants checked after every step and at teardown: each accepted task gets exactly one
terminal event (never zero, never two), a duplicate key is refused, and no more than
``parallelism`` task processes run at once.
"""

from __future__ import annotations

import tempfile
import time
from typing import Any

import hypothesis.strategies as st
from hypothesis import HealthCheck, settings
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from async_executor import AsyncExecutor, ExecutorClosedError, TaskState

KEYS = st.sampled_from([("k", i) for i in range(6)])
COMMANDS = st.sampled_from(
    [
        (["true"], {}),
        (["false"], {}),
        (["sleep", "0.05"], {}),
        (["/no/such/binary"], {}),
        (["sleep", "5"], {"timeout": 0.1}),
        (["sh", "-c", "sleep 0.02 & wait"], {}),
    ]
)


class ExecutorMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.parallelism = 3
        self.logs = tempfile.TemporaryDirectory()
        self.ex = AsyncExecutor(
            parallelism=self.parallelism, log_dir=self.logs.name, kill_grace=0.2, loop="asyncio"
        )
        self.ex.start()
        self.outstanding: dict[Any, int] = {}
        self.closed = False

    def _collect(self) -> None:
        for key, (state, info) in self.ex.get_event_buffer().items():
            assert state in (TaskState.SUCCESS, TaskState.FAILED), (key, state)
            assert self.outstanding.get(key) == 1, f"event for {key!r} that is not outstanding: {info}"
            self.outstanding[key] = 0

    @rule(key=KEYS, command=COMMANDS, priority=st.integers(0, 3))
    def queue(self, key: Any, command: tuple[list[str], dict[str, Any]], priority: int) -> None:
        argv, options = command
        if self.closed:
            try:
                self.ex.queue_command(key, argv, priority=priority, **options)
            except ExecutorClosedError:
                return
            raise AssertionError("queue_command accepted work after the executor closed")
        accepted = self.ex.queue_command(key, argv, priority=priority, **options)
        assert accepted == (self.outstanding.get(key, 0) == 0)
        if accepted:
            self.outstanding[key] = 1

    @precondition(lambda self: not self.closed)
    @rule(key=KEYS, command=COMMANDS)
    def execute_async(self, key: Any, command: tuple[list[str], dict[str, Any]]) -> None:
        argv, options = command
        if self.outstanding.get(key, 0):
            try:
                self.ex.execute_async(key, argv, executor_config=options)
            except ValueError:
                return
            raise AssertionError("execute_async accepted a duplicate key")
        self.ex.execute_async(key, argv, executor_config=options)
        self.outstanding[key] = 1

    @precondition(lambda self: not self.closed)
    @rule()
    def heartbeat(self) -> None:
        self.ex.heartbeat()
        self._collect()

    @rule()
    def sync(self) -> None:
        self.ex.sync()
        self._collect()

    @precondition(lambda self: not self.closed)
    @rule(key=KEYS)
    def revoke(self, key: Any) -> None:
        self.ex.revoke_task(key)
        self._collect()

    @precondition(lambda self: not self.closed)
    @rule()
    def terminate(self) -> None:
        self.ex.terminate()
        self.closed = True
        self._collect()

    @precondition(lambda self: not self.closed)
    @rule(timeout=st.sampled_from([None, 0.05, 0.3]))
    def end(self, timeout: float | None) -> None:
        self.ex.end(timeout=timeout)
        self.closed = True
        self._collect()

    @rule(seconds=st.sampled_from([0.005, 0.03, 0.12]))
    def let_time_pass(self, seconds: float) -> None:
        """Let tasks finish, time out or sit in the results queue before the next call."""
        time.sleep(seconds)

    @invariant()
    def parallelism_bound(self) -> None:
        assert self.ex.statistics().running <= self.parallelism

    def teardown(self) -> None:
        try:
            self.ex.terminate()
            self._collect()
            missing = [key for key, count in self.outstanding.items() if count]
            assert not missing, f"accepted tasks without a terminal event: {missing}"
            assert not self.ex.running and not self.ex.queued_tasks
        finally:
            self.logs.cleanup()


ExecutorMachine.TestCase.settings = settings(
    max_examples=40,
    stateful_step_count=25,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestExecutorMachine = ExecutorMachine.TestCase
