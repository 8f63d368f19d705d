"""TaskIQ's broker alone, the peer of stepq's broker-alone benchmark (`cargo xtask bench
--localstack --peer taskiq`): kicks N no-op tasks (`py_noop` of
crates/aws/tests/taskiq/tasks.py, run by one `taskiq worker`) and waits for every result in
order with `wait_result` (taskiq-aio-sqs's S3Backend: HEAD until ready, then GET).

Usage: bench.py N serial|inflight. `serial` kicks one task after the other (each `kiq`
awaited, as a loop of kicks does); `inflight` starts every kick at once (`asyncio.gather`).
Prints `{"tasks": N, "wall_s": seconds from the first kick to the last result}`.
"""

import asyncio
import json
import sys
import time

from tasks import broker, py_noop


async def main(n: int, mode: str) -> None:
    await broker.startup()
    try:
        started = time.monotonic()
        if mode == "inflight":
            tasks = await asyncio.gather(*(py_noop.kiq() for _ in range(n)))
        else:
            tasks = [await py_noop.kiq() for _ in range(n)]
        for task in tasks:
            result = await task.wait_result(check_interval=0.2, timeout=600)
            if result.is_err:
                raise SystemExit(f"task {task.task_id} failed: {result.error!r}")
        wall = time.monotonic() - started
        print(json.dumps({"tasks": n, "wall_s": wall}))
    finally:
        await broker.shutdown()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]), sys.argv[2]))
