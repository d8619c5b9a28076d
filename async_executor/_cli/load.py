"""``--load``: start a task only while the machine's load is below a limit (GNU parallel's).

GNU parallel's load is not the kernel's 1-minute average but the number of processes running
or waiting for a disk *right now*, so that one run starts at most one task past the limit:
here ``procs_running + procs_blocked`` from ``/proc/stat``, less this process (which is
running while it reads). The limit is written as ``-j`` is: ``N``, ``N%`` of the CPUs, or
``+N`` / ``-N`` CPUs more or less. The CLI's own tasks count, as in GNU parallel.
"""

from __future__ import annotations

__all__ = ["PROC_STAT", "current_load", "parse_load"]

PROC_STAT = "/proc/stat"


def parse_load(text: str, cpus: int) -> float:
    """The load limit ``text`` gives on a machine of ``cpus`` CPUs; ``ValueError`` if none."""
    text = text.strip()
    try:
        if text.endswith("%"):
            limit = cpus * float(text[:-1]) / 100
        elif text.startswith(("+", "-")):
            limit = cpus + float(text)
        else:
            limit = float(text)
    except ValueError:
        raise ValueError(f"{text!r} is not a load: use N, N% of the {cpus} CPUs, or +N/-N") from None
    if not limit > 0 or limit == float("inf"):
        raise ValueError(f"{text!r} gives a load limit of {limit:g}: it must be above 0")
    return limit


def current_load() -> int | None:
    """Processes running or waiting for a disk now, this one not counted; ``None`` where the
    kernel does not say (no ``/proc/stat``)."""
    running = blocked = None
    try:
        with open(PROC_STAT, "rb") as f:
            for line in f:
                if line.startswith(b"procs_running "):
                    running = int(line.split()[1])
                elif line.startswith(b"procs_blocked "):
                    blocked = int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    if running is None or blocked is None:
        return None
    return max(0, running - 1) + blocked
