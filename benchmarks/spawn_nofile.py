"""What giving tasks the caller's open-file limit costs the process that spawns them.

``ExecLauncher`` spawns ``N`` ``/bin/true`` one after another (no handoff) from a process
whose soft ``RLIMIT_NOFILE`` started at 1024 and was raised to the hard limit, as the
supervisor's is. ``plain``: tasks keep the raised limit (nothing lowered); ``per-spawn``:
the limit is lowered to 1024 for each spawn and restored, as in a process where other
threads run or descriptors are short; ``held``: it stays lowered between spawns, as in the
supervisor while its descriptors leave room (see ``_limits.TaskNofile``). Runs alternate;
the medians of the spawning process's CPU per spawn (``RUSAGE_SELF``) and of the children's
are printed. No effect where the soft limit already equals the hard one.

    python benchmarks/spawn_nofile.py [N] [ROUNDS]
"""

from __future__ import annotations

import os
import resource
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from async_executor import _limits
from async_executor._spawn import ExecLauncher


def run(count: int, task_soft: int | None, held: bool, log_fd: int) -> tuple[float, float]:
    """Microseconds of CPU per spawn: this process's, the children's."""
    _limits._task_soft = task_soft
    _limits._helper = held
    launcher = ExecLauncher(handoff=False)
    self0, kids0 = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    for _ in range(count):
        child = launcher.launch(("/bin/true",), None, None, log_fd)
        os.waitpid(child.pid, 0)
    self1, kids1 = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    launcher.close()

    def cpu(a: resource.struct_rusage, b: resource.struct_rusage) -> float:
        return (b.ru_utime + b.ru_stime - a.ru_utime - a.ru_stime) / count * 1e6

    return cpu(self0, self1), cpu(kids0, kids1)


def main() -> None:
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 2000
    rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 5
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    if hard != resource.RLIM_INFINITY and hard <= 1024:
        sys.exit(f"the hard open-file limit ({hard}) leaves nothing to raise")
    resource.setrlimit(resource.RLIMIT_NOFILE, (1024, hard))
    _limits.raise_nofile_limit()
    log_fd = os.open(os.devnull, os.O_WRONLY)
    modes = {"plain": (None, False), "per-spawn": (1024, False), "held": (1024, True)}
    results: dict[str, list[tuple[float, float]]] = {name: [] for name in modes}
    for _ in range(rounds):
        for name, (task_soft, held) in modes.items():
            results[name].append(run(count, task_soft, held, log_fd))
    for name, values in results.items():
        spawner = statistics.median(v[0] for v in values)
        children = statistics.median(v[1] for v in values)
        print(f"{name:9} spawner {spawner:6.1f} us/spawn, children {children:6.1f} ({rounds} x {count})")


if __name__ == "__main__":
    main()
