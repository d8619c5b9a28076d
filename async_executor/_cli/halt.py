"""``--halt`` policies with GNU parallel's meanings.

``never`` (default); ``soon,fail=N`` / ``now,fail=N`` (stop once N tasks failed);
``fail=N%`` (N percent of all tasks); ``success=N[%]``; ``done=N[%]`` (finished either way).
``soon`` starts nothing more and waits for the running tasks; ``now`` also terminates them.
GNU parallel's short forms are accepted: ``0`` = never, ``1`` = soon,fail=1,
``2`` = now,fail=1, ``-1`` = soon,success=1, ``-2`` = now,success=1, ``N%`` = soon,fail=N%.
"""

from __future__ import annotations

import math
import re

import attrs

_SHORT = {"0": "never", "1": "soon,fail=1", "2": "now,fail=1", "-1": "soon,success=1", "-2": "now,success=1"}
_LONG = re.compile(r"^(soon|now),(fail|success|done)=(\d+)(%?)$")


@attrs.frozen(slots=True)
class HaltPolicy:
    when: str  # "never" | "soon" | "now"
    what: str = "fail"  # "fail" | "success" | "done"
    count: int = 0
    percent: bool = False

    @property
    def never(self) -> bool:
        return self.when == "never"

    def threshold(self, total: int) -> int:
        """How many tasks (of ``total``) must fail/succeed/finish to halt (at least 1)."""
        if self.percent:
            return max(1, math.ceil(total * self.count / 100))
        return max(1, self.count)

    def triggered(self, *, failed: int, succeeded: int, total: int) -> bool:
        if self.never:
            return False
        seen = {"fail": failed, "success": succeeded, "done": failed + succeeded}[self.what]
        return seen >= self.threshold(total)

    def __str__(self) -> str:
        if self.never:
            return "never"
        return f"{self.when},{self.what}={self.count}{'%' if self.percent else ''}"


NEVER = HaltPolicy("never")


def parse_halt(text: str) -> HaltPolicy:
    """Parse a ``--halt`` value; ``ValueError`` with a readable message when it is wrong."""
    spec = _SHORT.get(text.strip(), text.strip())
    if re.fullmatch(r"\d+%", spec):
        spec = f"soon,fail={spec}"
    if spec == "never":
        return NEVER
    match = _LONG.match(spec)
    if match is None:
        raise ValueError(
            f"{text!r} is not a halt policy: use never, soon|now,fail=N, fail=N%, success=N[%] "
            "or done=N[%] (e.g. soon,fail=3 or now,fail=10%)"
        )
    when, what, count, pct = match.groups()
    number = int(count)
    if number <= 0 or (pct and number > 100):
        raise ValueError(f"{text!r}: the count must be 1 or more (a percentage at most 100%)")
    return HaltPolicy(when, what, number, bool(pct))
