"""Input checks: every bad key, command or option is refused at the call that made it."""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from typing import Any

from ._exceptions import InvalidTaskError
from ._records import TaskSpec

#: Per-task options accepted by ``queue_command`` / ``submit`` and in ``executor_config``.
TASK_OPTIONS = frozenset({"timeout", "env", "cwd", "shell"})

_SHELL = "/bin/sh"


def check_key(key: object) -> None:
    """Accept ``str``, ``int`` and (named) tuples of them; anything else is an error.

    Keys are written to the journal and used in log file names, so they must round-trip
    through JSON exactly: no floats, bools, ``None`` or arbitrary objects.
    """
    kind = type(key)
    if kind is str or kind is int:
        return
    if isinstance(key, tuple):
        for item in key:
            check_key(item)
        return
    if isinstance(key, (str, int)) and not isinstance(key, bool):
        return  # str / int subclasses (e.g. enums) serialise as their value
    try:
        hash(key)
    except TypeError:
        raise InvalidTaskError(f"task key {key!r} is unhashable; use str, int or tuples of them") from None
    raise InvalidTaskError(
        f"task key {key!r} of type {kind.__name__} cannot be serialised; "
        "use str, int or (named) tuples of them"
    )


def plain_key(key: Any) -> Any:
    """The key as plain JSON data: (named) tuples become lists, str/int subclasses their value."""
    if type(key) is str or type(key) is int:
        return key
    if isinstance(key, tuple):
        return [plain_key(item) for item in key]
    if isinstance(key, str):
        return str(key)
    return int(key)


def check_command(command: object, *, shell: bool = False) -> tuple[str, ...]:
    """Return the argv for ``command``; a ``str`` is only accepted with ``shell=True``."""
    if isinstance(command, (str, bytes)):
        if not shell:
            raise InvalidTaskError(
                f"command must be an argv list, not a {type(command).__name__} "
                f"({command!r:.60}); pass shell=True to run a string through {_SHELL}"
            )
        text = command if isinstance(command, str) else os.fsdecode(command)
        if not text.strip():
            raise InvalidTaskError("command is empty")
        _check_text(text, "command")
        return (_SHELL, "-c", text)
    if not isinstance(command, (list, tuple)):
        raise InvalidTaskError(f"command must be a list of str or os.PathLike, not {type(command).__name__}")
    if not command:
        raise InvalidTaskError("command is empty")
    argv: list[str] = []
    for index, item in enumerate(command):
        if isinstance(item, str):
            text = item
        elif isinstance(item, os.PathLike):
            path = os.fspath(item)
            text = path if isinstance(path, str) else os.fsdecode(path)
        else:
            raise InvalidTaskError(
                f"command item {index} is {type(item).__name__} ({item!r:.60}); "
                "every item must be str or os.PathLike"
            )
        _check_text(text, f"command item {index}")
        argv.append(text)
    if not argv[0]:
        raise InvalidTaskError("command item 0 (the program) is an empty string")
    if shell:
        import shlex

        return (_SHELL, "-c", shlex.join(argv))
    return tuple(argv)


def _check_text(text: str, what: str) -> None:
    if "\x00" in text:
        raise InvalidTaskError(f"{what} contains a NUL byte")


def check_timeout(timeout: object) -> float | None:
    if timeout is None:
        return None
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)):
        raise InvalidTaskError(f"timeout must be a positive number of seconds or None, not {timeout!r}")
    value = float(timeout)
    if math.isnan(value) or value <= 0:
        raise InvalidTaskError(f"timeout must be a positive number of seconds, not {timeout!r}")
    return None if math.isinf(value) else value


def check_env(env: object) -> Mapping[str, str] | None:
    if env is None:
        return None
    if not isinstance(env, Mapping):
        raise InvalidTaskError(f"env must be a mapping of str to str, not {type(env).__name__}")
    for name, value in env.items():
        if not isinstance(name, str) or not name or "=" in name or "\x00" in name:
            raise InvalidTaskError(f"env name {name!r} is not a valid variable name")
        if not isinstance(value, str) or "\x00" in value:
            raise InvalidTaskError(f"env value for {name!r} must be a str without NUL, not {value!r:.60}")
    return dict(env)


def check_cwd(cwd: object) -> str | None:
    if cwd is None:
        return None
    if isinstance(cwd, os.PathLike):
        cwd = os.fspath(cwd)
    if isinstance(cwd, bytes):
        cwd = os.fsdecode(cwd)
    if not isinstance(cwd, str) or not cwd or "\x00" in cwd:
        raise InvalidTaskError(f"cwd must be a non-empty path, not {cwd!r}")
    return cwd


def check_priority(priority: object) -> int:
    if isinstance(priority, bool) or not isinstance(priority, int):
        raise InvalidTaskError(f"priority must be an int, not {priority!r}")
    return priority


def check_try_number(try_number: object) -> int:
    if isinstance(try_number, bool) or not isinstance(try_number, int) or try_number < 1:
        raise InvalidTaskError(f"try_number must be an int >= 1, not {try_number!r}")
    return try_number


def check_parallelism(parallelism: object) -> int:
    if isinstance(parallelism, bool) or not isinstance(parallelism, int) or parallelism <= 0:
        raise ValueError(f"parallelism must be a positive int, not {parallelism!r}")
    return parallelism


def build_spec(
    key: object,
    command: object,
    *,
    priority: object = 1,
    queue: object = None,
    options: Mapping[str, Any] | None = None,
    try_number: int = 1,
) -> TaskSpec:
    """Validate everything about one task and return its spec (raises ``InvalidTaskError``)."""
    check_key(key)
    options = options or {}
    unknown = set(options) - TASK_OPTIONS
    if unknown:
        raise InvalidTaskError(
            f"unknown task option(s) {', '.join(sorted(map(repr, unknown)))}; "
            f"accepted: {', '.join(sorted(TASK_OPTIONS))}"
        )
    shell = options.get("shell", False)
    if not isinstance(shell, bool):
        raise InvalidTaskError(f"shell must be True or False, not {shell!r}")
    if queue is not None and not isinstance(queue, str):
        raise InvalidTaskError(f"queue must be a str or None, not {queue!r}")
    return TaskSpec(
        key=key,
        argv=check_command(command, shell=shell),
        priority=check_priority(priority),
        queue=queue,
        timeout=check_timeout(options.get("timeout")),
        env=check_env(options.get("env")),
        cwd=check_cwd(options.get("cwd")),
        try_number=try_number,
    )
