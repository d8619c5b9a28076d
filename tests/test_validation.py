"""Bad input: a clear exception at the call that made it, and no harm to other tasks."""

from __future__ import annotations

from pathlib import Path
from typing import Any, NamedTuple

import pytest

from async_executor import (
    AsyncExecutor,
    DuplicateTaskError,
    ExecutorClosedError,
    ExecutorNotStartedError,
    InvalidTaskError,
    TaskState,
)

from .conftest import drain


class Key(NamedTuple):
    dag_id: str
    task_id: str
    run_id: str
    try_number: int
    map_index: int


@pytest.mark.parametrize("parallelism", [0, -1, 1.5, "8", None, True])
def test_parallelism_must_be_positive_int(parallelism: Any) -> None:
    with pytest.raises(ValueError, match="parallelism must be a positive int"):
        AsyncExecutor(parallelism=parallelism)


@pytest.mark.parametrize(
    ("command", "message"),
    [
        ([], "command is empty"),
        ((), "command is empty"),
        ("echo hi", "must be an argv list, not a str"),
        (b"echo hi", "must be an argv list, not a bytes"),
        (["echo", 3], "command item 1 is int"),
        (["echo", None], "command item 1 is NoneType"),
        ([b"echo"], "command item 0 is bytes"),
        (["", "x"], "empty string"),
        (["echo", "a\x00b"], "NUL byte"),
        ({"echo": 1}, "must be a list"),
        (42, "must be a list"),
    ],
)
def test_bad_commands(log_dir: Path, command: Any, message: str) -> None:
    ex = AsyncExecutor(log_dir=log_dir)
    with pytest.raises(InvalidTaskError, match=message):
        ex.queue_command("k", command)
    assert not ex.queued_tasks


@pytest.mark.parametrize(
    ("key", "message"),
    [
        ([1, 2], "unhashable"),
        ({"a": 1}, "unhashable"),
        (("a", [1]), "unhashable"),
        (1.5, "cannot be serialised"),
        (None, "cannot be serialised"),
        (True, "cannot be serialised"),
        (("a", object()), "cannot be serialised"),
        (frozenset({1}), "cannot be serialised"),
    ],
)
def test_bad_keys(log_dir: Path, key: Any, message: str) -> None:
    ex = AsyncExecutor(log_dir=log_dir)
    with pytest.raises(InvalidTaskError, match=message):
        ex.queue_command(key, ["true"])


@pytest.mark.parametrize("key", ["a", 7, ("a", 1), ("a", ("b", 2)), Key("d", "t", "r", 1, -1)])
def test_good_keys(log_dir: Path, key: Any) -> None:
    ex = AsyncExecutor(log_dir=log_dir)
    assert ex.queue_command(key, ["true"]) is True
    assert ex.has_task(key)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"timeout": -1}, "positive number"),
        ({"timeout": 0}, "positive number"),
        ({"timeout": "10"}, "positive number"),
        ({"timeout": float("nan")}, "positive number"),
        ({"timeout": True}, "positive number"),
        ({"env": ["A=1"]}, "env must be a mapping"),
        ({"env": {"A": 1}}, "must be a str"),
        ({"env": {"A=B": "1"}}, "not a valid variable name"),
        ({"cwd": 3}, "cwd must be a non-empty path"),
        ({"cwd": ""}, "cwd must be a non-empty path"),
        ({"shell": "yes"}, "shell must be True or False"),
        ({"timeot": 3}, "unknown task option"),
        ({"retries": 3}, "unknown task option"),
    ],
)
def test_bad_options(log_dir: Path, options: dict[str, Any], message: str) -> None:
    ex = AsyncExecutor(log_dir=log_dir)
    with pytest.raises(InvalidTaskError, match=message):
        ex.queue_command("k", ["true"], **options)


def test_bad_priority_and_queue(log_dir: Path) -> None:
    ex = AsyncExecutor(log_dir=log_dir)
    with pytest.raises(InvalidTaskError, match="priority must be an int"):
        ex.queue_command("k", ["true"], priority="high")
    with pytest.raises(InvalidTaskError, match="queue must be a str"):
        ex.queue_command("k", ["true"], queue=5)


@pytest.mark.parametrize(
    "kwargs",
    [{"log_max_bytes": 0}, {"kill_grace": 0}, {"kill_grace": -1}, {"loop": "trio"}],
)
def test_bad_constructor_arguments(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        AsyncExecutor(**kwargs)


def test_shell_string_needs_explicit_opt_in(executor: AsyncExecutor) -> None:
    executor.queue_command("sh", "echo $((20 + 22))", shell=True)
    executor.queue_command("list", ["echo", "a b", "$HOME"], shell=True)
    events = drain(executor)
    assert events["sh"][0][0] == TaskState.SUCCESS
    assert executor.get_task_log("sh")[1] == ["42\n"]
    # a list with shell=True is quoted, so the shell does not split or expand it
    assert executor.get_task_log("list")[1] == ["a b $HOME\n"]


def test_bad_input_does_not_harm_other_tasks(executor: AsyncExecutor) -> None:
    executor.queue_command("good-1", ["true"])
    for bad in ([], "oops", ["x", 1]):
        with pytest.raises(InvalidTaskError):
            executor.queue_command("bad", bad)
    with pytest.raises(InvalidTaskError):
        executor.execute_async("bad", ["true"], executor_config={"nope": 1})
    executor.queue_command("good-2", ["true"])
    events = drain(executor)
    assert set(events) == {"good-1", "good-2"}
    assert all(evs[0][0] == TaskState.SUCCESS for evs in events.values())


def test_duplicate_keys_are_refused_and_never_run_twice(executor: AsyncExecutor, tmp_path: Path) -> None:
    marker = tmp_path / "runs"
    command = ["sh", "-c", f"echo run >> {marker}; sleep 0.3"]
    assert executor.queue_command("dup", command) is True
    assert executor.queue_command("dup", command) is False  # queued: refused, logged
    executor.heartbeat()
    assert executor.queue_command("dup", command) is False  # running: refused
    with pytest.raises(DuplicateTaskError):
        executor.execute_async("dup", command)
    events = drain(executor)
    assert len(events["dup"]) == 1
    assert marker.read_text() == "run\n"
    # once reported, the key may run again (a new try)
    assert executor.queue_command("dup", command) is True
    assert drain(executor)["dup"][0][1].try_number == 2


def test_calls_before_start_and_after_end(log_dir: Path) -> None:
    ex = AsyncExecutor(log_dir=log_dir)
    with pytest.raises(ExecutorNotStartedError):
        ex.heartbeat()
    with pytest.raises(ExecutorNotStartedError):
        ex.execute_async("k", ["true"])
    ex.start()
    with pytest.raises(RuntimeError, match="start"):
        ex.start()
    ex.end()
    with pytest.raises(ExecutorClosedError):
        ex.queue_command("k", ["true"])
    with pytest.raises(ExecutorClosedError):
        ex.heartbeat()
    ex.end()  # idempotent
    ex.terminate()


def test_executor_config_must_be_mapping(executor: AsyncExecutor) -> None:
    with pytest.raises(TypeError, match="executor_config must be a mapping"):
        executor.execute_async("k", ["true"], executor_config=["timeout", 3])  # type: ignore[arg-type]
