"""``--memfree``: sizes as GNU parallel writes them, and the memory the kernel says is available.

``--memfree SIZE`` starts a task only while ``MemAvailable`` (``/proc/meminfo``: what can be
given to new work without swapping) is at least SIZE. GNU parallel also kills its youngest job
when less than half of SIZE is left; here a running task is never killed for memory.
"""

from __future__ import annotations

import re

__all__ = ["MEMINFO", "available_memory", "parse_size", "total_memory"]

MEMINFO = "/proc/meminfo"

#: GNU parallel's size suffixes: upper case binary, lower case decimal.
_UNITS = {"": 1, "b": 1, "B": 1}
for _power, _letter in enumerate("kmgtp", start=1):
    _UNITS[_letter] = 1000**_power
    _UNITS[_letter.upper()] = 1024**_power
_SIZE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([kmgtpKMGTPbB]?)\s*")


def parse_size(text: str) -> int:
    """Bytes in ``text``: a number with an optional K/M/G/T/P (1024s) or k/m/g/t/p (1000s)."""
    match = _SIZE.fullmatch(text)
    if match is None:
        raise ValueError(
            f"{text!r} is not a size: a number of bytes, or with K, M, G, T (1024s) or k, m, g, t"
        )
    return int(float(match.group(1)) * _UNITS[match.group(2)])


def _meminfo(field: str) -> int | None:
    """A ``/proc/meminfo`` field in bytes; ``None`` where there is no such file or field."""
    try:
        with open(MEMINFO, "rb") as f:
            for line in f:
                if line.startswith(field.encode() + b":"):
                    return int(line.split()[1]) * 1024  # reported in kB
    except (OSError, ValueError, IndexError):
        return None
    return None


def available_memory() -> int | None:
    """``MemAvailable`` in bytes (``None`` if the kernel does not say)."""
    return _meminfo("MemAvailable")


def total_memory() -> int | None:
    """``MemTotal`` in bytes (``None`` if the kernel does not say)."""
    return _meminfo("MemTotal")
