"""Per-task log files: naming, the size cap, and reading them back."""

from __future__ import annotations

import logging
import os
import re
from typing import TYPE_CHECKING

import orjson

from ._validation import plain_key

if TYPE_CHECKING:
    from pathlib import Path

logger = logging.getLogger("async_executor.logs")

_UNSAFE = re.compile(r"[^A-Za-z0-9._=-]+")
_TRUNCATED = b"\n[async-executor: output truncated at the log size cap]\n"
_OPEN_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_APPEND | os.O_CLOEXEC


def default_home() -> Path:
    """``$ASYNC_EXECUTOR_HOME``, else ``$XDG_STATE_HOME/async-executor`` (``~/.local/state``)."""
    from pathlib import Path  # here: the supervisor process, which imports this module, never needs it

    home = os.environ.get("ASYNC_EXECUTOR_HOME")
    if home:
        return Path(home)
    state = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    return Path(state) / "async-executor"


def key_slug(key: object) -> str:
    """A file-name-safe, collision-free name for a task key (readable prefix + hash)."""
    digest = _digest(orjson.dumps(plain_key(key)))
    parts = key if isinstance(key, tuple) else (key,)
    readable = _UNSAFE.sub("_", "__".join(str(p) for p in parts)).strip("._")[:80]
    return f"{readable}.{digest}" if readable else digest


def _digest(key_json: bytes) -> str:
    import hashlib  # here: the supervisor, which imports this module, never needs OpenSSL

    return hashlib.blake2b(key_json, digest_size=6).hexdigest()


def is_log_of(path: str, key_json: str, try_number: int) -> bool:
    """Whether ``path`` has the name ``log_path`` gives the key (as its JSON) and try: the
    only files retention removes."""
    tail = f"{_digest(key_json.encode())}.{try_number}.log"
    name = os.path.basename(path)
    return name == tail or name.endswith(f".{tail}")


#: A log modified this long after its task ended belongs to a newer task of the same key and
#: try (a reused key), so retention leaves it.
_REUSED_AFTER = 1.0


def remove_logs(logs: list[tuple[str, float | None]]) -> int:
    """Remove pruned tasks' log files (``(path, ended_at)`` each, named as ``is_log_of``
    checked); a file written after its task ended, or missing, or of a row without an end time
    (nothing to compare with), is left. Returns the count."""
    removed = 0
    for path, ended_at in logs:
        try:
            if ended_at is None or os.stat(path).st_mtime > ended_at + _REUSED_AFTER:
                continue
            os.unlink(path)
            removed += 1
        except FileNotFoundError:
            continue
        except OSError as exc:
            logger.warning("cannot remove the log of a pruned task %s: %s", path, exc.strerror or exc)
    return removed


def log_path(log_dir: str, key: object, try_number: int) -> str:
    return os.path.join(log_dir, f"{key_slug(key)}.{try_number}.log")


def open_log(path: str) -> int:
    """Open (truncate) a task's log for the child to write to directly."""
    return os.open(path, _OPEN_FLAGS, 0o600)


def precreate_log(path: str) -> None:
    """Create (truncate) a task's log ahead of its spawn, best effort.

    Creating a file costs ~100x more than opening an existing empty one (ext4 here), so the
    executor creates the log while the supervisor is busy spawning, and the supervisor's own
    ``open_log`` (which reports any error) only reopens it. Errors are left to that open.
    """
    try:
        os.close(os.open(path, _OPEN_FLAGS, 0o600))
    except OSError:
        pass


def enforce_cap(path: str, cap: int) -> bool:
    """Cut a log back to ``cap`` bytes (keeping the head, ending in a marker).

    The child writes to the file directly (``O_APPEND``), so the cap is applied by the
    engine's periodic sweep and once more at exit: a log can overshoot by what the task
    writes between two sweeps. Returns ``True`` if the file was cut.
    """
    try:
        size = os.stat(path).st_size
    except FileNotFoundError:
        return False
    if size <= cap:
        return False
    keep = max(0, cap - len(_TRUNCATED))
    try:
        with open(path, "r+b") as handle:
            handle.truncate(keep)
            handle.seek(keep)
            handle.write(_TRUNCATED[: cap - keep] if cap < len(_TRUNCATED) else _TRUNCATED)
    except OSError as exc:
        logger.warning("could not cap log %s: %s", path, exc)
        return False
    return True


def disk_full(path: str) -> bool:
    """Is the file system holding ``path`` out of space (for unprivileged writers)?"""
    try:
        stats = os.statvfs(os.path.dirname(path) or ".")
    except OSError:
        return False
    return stats.f_bavail == 0


#: Most bytes :func:`read_new` returns at once.
READ_CHUNK = 1 << 20


def read_new(path: str, offset: int) -> tuple[bytes, int]:
    """What a (growing) log holds past ``offset``, up to :data:`READ_CHUNK` bytes, and the new
    offset: for following a running task's output (:func:`read_at`). A missing log (not
    created yet) gives nothing."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return b"", offset
    try:
        return read_at(fd, offset, READ_CHUNK)
    finally:
        os.close(fd)


def read_at(fd: int, offset: int, size: int) -> tuple[bytes, int]:
    """Up to ``size`` bytes of an open log past ``offset``, and the new offset. A log cut back
    to its size cap (shorter than ``offset``) is followed from its new end."""
    try:
        offset = min(offset, os.fstat(fd).st_size)
        data = os.pread(fd, size, offset)
    except OSError:
        return b"", offset
    return data, offset + len(data)


def read_log(path: str, limit: int | None = None) -> tuple[list[str], list[str]]:
    """``(messages, log_lines)`` in the shape Airflow's ``get_task_log`` returns."""
    try:
        with open(path, "rb") as handle:
            data = handle.read() if limit is None else handle.read(limit)
    except FileNotFoundError:
        return [f"No captured output at {path}"], []
    except OSError as exc:
        return [f"Could not read captured output at {path}: {exc}"], []
    return [f"Captured output of the task process at {path}"], [data.decode("utf-8", "replace")]
