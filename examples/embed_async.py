"""Embed the executor in an asyncio program: the same engine, in your loop, no thread.

python examples/embed_async.py
"""

from __future__ import annotations

import asyncio
import sys

from async_executor import AsyncExecutor


async def main() -> None:
    async with AsyncExecutor(parallelism=8) as executor:
        info = await executor.run(
            ("job", 1), [sys.executable, "-c", "print('hello from a task')"], timeout=30
        )
        print("job 1:", info.state, "exit", info.returncode, "log", info.log_path)
        handles = [await executor.submit(("sleep", i), ["sleep", "0.2"]) for i in range(16)]
        results = await asyncio.gather(*(h.wait() for h in handles))
        print("16 sleeps:", sum(r.succeeded for r in results), "succeeded")
        slow = await executor.run("too-slow", ["sleep", "10"], timeout=0.5)
        print("too-slow:", slow.state, slow.reason, slow.detail)


if __name__ == "__main__":
    asyncio.run(main())
