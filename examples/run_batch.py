"""Run a batch of real commands through AsyncExecutor's sync façade, like a scheduler would.

python examples/run_batch.py [N] [PARALLELISM]
"""

from __future__ import annotations

import sys
import tempfile
import time

from async_executor import AsyncExecutor, TaskState


def main() -> int:
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 300
    parallelism = int(sys.argv[2]) if len(sys.argv) > 2 else 32
    with tempfile.TemporaryDirectory(prefix="async-executor-example-") as logs:
        executor = AsyncExecutor(parallelism=parallelism, log_dir=logs)
        executor.start()
        started = time.perf_counter()
        for i in range(count):
            command = ["sh", "-c", f"echo task {i}; sleep 0.0{i % 5}"]
            if i % 50 == 49:
                command = ["sh", "-c", f"echo task {i} fails >&2; exit 3"]
            executor.queue_command(("example", i), command, priority=i % 3)
        done = failed = 0
        while executor.queued_tasks or executor.running:
            executor.heartbeat()
            for key, (state, info) in executor.get_event_buffer().items():
                done += 1
                if state is TaskState.FAILED:
                    failed += 1
                    print(
                        f"{key} failed with exit code {info.returncode}: "
                        f"{executor.get_task_log(key)[1][0].strip()}"
                    )
            time.sleep(0.001)
        executor.end()
        elapsed = time.perf_counter() - started
    print(f"{done} tasks ({failed} failed on purpose) in {elapsed:.2f}s at parallelism {parallelism}")
    return 0 if done == count else 1


if __name__ == "__main__":
    sys.exit(main())
