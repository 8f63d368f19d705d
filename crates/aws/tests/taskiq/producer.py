"""Kicks the Rust tasks of stepq's interop test from Python and prints what came back.

Uses the broker and result backend of ``tasks.py`` (same environment). Prints one JSON
document: for each case, the task id Python generated and what ``wait_result`` returned
(``is_err``, the return value, or the exception's type name, module and message).
"""

import asyncio
import json
import sys

from taskiq.kicker import AsyncKicker

from tasks import broker

TIMEOUT = 60


def rust(task_name, **labels):
    """A kicker for a task only the Rust worker defines."""
    return AsyncKicker(task_name, broker, {}).with_labels(**labels)


def outcome(task, result):
    out = {"task_id": task.task_id, "is_err": result.is_err}
    if result.is_err:
        err = result.error
        out["error_type"] = type(err).__name__
        out["error_module"] = type(err).__module__
        out["error_message"] = str(err)
    else:
        out["return_value"] = result.return_value
    return out


async def main() -> None:
    await broker.startup()
    try:
        add = await rust("rs_add").kiq(a=2, b=40)
        fail = await rust("rs_fail").kiq(reason="no luck")
        # Over SQS's 1 MiB limit: taskiq-aio-sqs puts the body in S3 and sends a pointer.
        # Labels of TaskIQ's types str and int (type codes 3 and 2; stepq reads both as text).
        echo = await rust("rs_echo", team="data", attempt=2).kiq(text="x" * 1_200_000)
        unknown = await rust("rs_missing").kiq()
        cases = {"add": add, "fail": fail, "echo": echo, "unknown": unknown}
        out = {}
        for name, task in cases.items():
            result = await task.wait_result(timeout=TIMEOUT, check_interval=0.1)
            out[name] = outcome(task, result)
        json.dump(out, sys.stdout)
        sys.stdout.write("\n")
    finally:
        await broker.shutdown()


if __name__ == "__main__":
    asyncio.run(main())
