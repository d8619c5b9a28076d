"""Workload JSON files for Airflow 3 task processes (no Airflow import here).

An Airflow 3 workload carries a JWT. It must never be on a command line (``ps`` shows argv to
every local user), in our logs or in the journal. So each workload is written to its own
``0600`` file in a ``0700`` directory, the task process gets only the path
(``execute_workload --json-path FILE``), and the file is removed as soon as the process has
read it: an inotify watch reports ``IN_CLOSE_NOWRITE`` when the reader closes the file, and
``poll()`` (called from the executor's non-blocking ``sync()``) unlinks it. Where inotify is
not available the file is removed when the task ends; ``discard()`` always runs then too.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import logging
import os
import stat
import struct
import sys
import uuid
from pathlib import Path

logger = logging.getLogger("async_executor.airflow")

_IN_CLOSE_NOWRITE = 0x00000010
_IN_Q_OVERFLOW = 0x00004000
_IN_IGNORED = 0x00008000
_EVENT = struct.Struct("iIII")
SUFFIX = ".json"


class WorkloadFiles:
    """A private directory of one-shot workload files."""

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.directory = Path(directory)
        self._live: set[str] = set()
        self._inotify_fd = -1

    # ------------------------------------------------------------------ lifecycle

    def open(self) -> None:
        """Create (or tighten) the directory, remove stale files, start the inotify watch."""
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        info = os.lstat(self.directory)
        if not stat.S_ISDIR(info.st_mode):
            raise RuntimeError(f"workload directory {self.directory} is not a directory")
        if info.st_uid != os.geteuid():
            raise RuntimeError(f"workload directory {self.directory} is owned by uid {info.st_uid}, not us")
        if stat.S_IMODE(info.st_mode) != 0o700:
            os.chmod(self.directory, 0o700)
        stale = self.sweep()
        if stale:
            logger.warning("removed %d stale workload file(s) from %s", stale, self.directory)
        self._inotify_fd = _inotify_watch(self.directory)

    def close(self) -> None:
        """Remove every file still here and stop watching."""
        for name in list(self._live):
            self._unlink(name)
        if self._inotify_fd >= 0:
            with contextlib.suppress(OSError):
                os.close(self._inotify_fd)
            self._inotify_fd = -1

    def sweep(self) -> int:
        """Remove every workload file in the directory (left over by a crashed scheduler)."""
        removed = 0
        for entry in os.scandir(self.directory):
            if entry.name.endswith(SUFFIX) and entry.is_file(follow_symlinks=False):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(entry.path)
                    removed += 1
        return removed

    @property
    def watching(self) -> bool:
        return self._inotify_fd >= 0

    @property
    def live(self) -> int:
        return len(self._live)

    # ------------------------------------------------------------------ files

    def write(self, data: str | bytes) -> str:
        """Write one workload to a new ``0600`` file; return its path."""
        name = uuid.uuid4().hex + SUFFIX
        path = os.path.join(self.directory, name)
        payload = data.encode() if isinstance(data, str) else data
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
        try:
            view = memoryview(payload)
            while view:
                view = view[os.write(fd, view) :]
        except BaseException:
            os.close(fd)
            with contextlib.suppress(OSError):
                os.unlink(path)
            raise
        os.close(fd)
        self._live.add(name)
        return path

    def discard(self, path: str | None) -> None:
        """Remove one file (idempotent): called when its task ends, whatever happened."""
        if path:
            self._unlink(os.path.basename(path))

    def poll(self) -> int:
        """Remove the files a reader has closed since the last call; never blocks."""
        if self._inotify_fd < 0:
            return 0
        removed = 0
        while True:
            try:
                data = os.read(self._inotify_fd, 64 * 1024)
            except BlockingIOError:
                return removed
            except OSError as exc:  # pragma: no cover - the fd is ours; be safe anyway
                logger.warning("inotify read failed (%s); workload files are removed at task end", exc)
                self._stop_watch()
                return removed
            if not data:  # pragma: no cover
                return removed
            offset = 0
            while offset + _EVENT.size <= len(data):
                _wd, mask, _cookie, length = _EVENT.unpack_from(data, offset)
                raw = data[offset + _EVENT.size : offset + _EVENT.size + length]
                offset += _EVENT.size + length
                if mask & (_IN_Q_OVERFLOW | _IN_IGNORED):
                    if mask & _IN_IGNORED:
                        self._stop_watch()
                    continue
                name = raw.split(b"\0", 1)[0].decode(errors="replace")
                if mask & _IN_CLOSE_NOWRITE and name in self._live:
                    self._unlink(name)
                    removed += 1

    # ------------------------------------------------------------------ internals

    def _unlink(self, name: str) -> None:
        self._live.discard(name)
        try:
            os.unlink(os.path.join(self.directory, name))
        except FileNotFoundError:
            pass
        except OSError as exc:
            logger.warning("could not remove workload file %s: %s", name, exc)

    def _stop_watch(self) -> None:
        if self._inotify_fd >= 0:
            with contextlib.suppress(OSError):
                os.close(self._inotify_fd)
        self._inotify_fd = -1


def _inotify_watch(directory: Path) -> int:
    """A non-blocking inotify fd watching ``directory`` for close-after-read, or -1."""
    if not sys.platform.startswith("linux"):
        return -1
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        init1 = libc.inotify_init1
        add_watch = libc.inotify_add_watch
    except (OSError, AttributeError):  # pragma: no cover - not glibc/musl
        return -1
    init1.argtypes, init1.restype = [ctypes.c_int], ctypes.c_int
    add_watch.argtypes, add_watch.restype = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32], ctypes.c_int
    fd = int(init1(os.O_NONBLOCK | os.O_CLOEXEC))
    if fd < 0:
        logger.warning(
            "inotify_init1 failed (%s); workload files are removed at task end",
            os.strerror(ctypes.get_errno() or errno.EINVAL),
        )
        return -1
    if int(add_watch(fd, os.fsencode(directory), _IN_CLOSE_NOWRITE)) < 0:
        err = ctypes.get_errno()
        os.close(fd)
        logger.warning(
            "inotify_add_watch failed (%s); workload files are removed at task end",
            os.strerror(err or errno.EINVAL),
        )
        return -1
    return fd
