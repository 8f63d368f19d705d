"""The Python TaskIQ side of stepq's interop tests (crates/aws/tests/taskiq_interop_localstack.rs).

A taskiq-aio-sqs ``SQSBroker`` (extended payloads in S3 on) with an ``S3Backend`` for results,
on the queue and bucket the Rust test made, and the tasks a stepq producer kicks. Settings
come from the environment:

- ``STEPQ_TEST_AWS_ENDPOINT``, ``AWS_DEFAULT_REGION``: the LocalStack.
- ``TASKIQ_QUEUE_NAME``: the SQS queue (a name: taskiq-aio-sqs looks its URL up).
- ``TASKIQ_BUCKET``: the bucket of extended payloads and results.
- ``TASKIQ_RESULTS_BASE``: the results' key prefix (stepq's ``<base_path>/results``).

Run as a worker with ``python -m taskiq worker tasks:broker --workers 1``.
"""

import os

from taskiq import Context, TaskiqDepends
from taskiq_aio_sqs import S3Backend, SQSBroker

ENDPOINT = os.environ["STEPQ_TEST_AWS_ENDPOINT"]
REGION = os.environ.get("AWS_DEFAULT_REGION", "us-east-1")
BUCKET = os.environ["TASKIQ_BUCKET"]

result_backend = S3Backend(
    bucket_name=BUCKET,
    base_path=os.environ["TASKIQ_RESULTS_BASE"],
    endpoint_url=ENDPOINT,
    region_name=REGION,
    aws_access_key_id="test",
    aws_secret_access_key="test",
)

broker = SQSBroker(
    os.environ["TASKIQ_QUEUE_NAME"],
    endpoint_url=ENDPOINT,
    region_name=REGION,
    aws_access_key_id="test",
    aws_secret_access_key="test",
    s3_extended_bucket_name=BUCKET,
    wait_time_seconds=int(os.environ.get("TASKIQ_WAIT_TIME_SECONDS", "1")),
    max_number_of_messages=int(os.environ.get("TASKIQ_MAX_MESSAGES", "1")),
).with_result_backend(result_backend)


@broker.task(task_name="py_add")
async def py_add(a: int, b: int) -> int:
    """Adds two numbers (kwargs from a stepq producer's struct)."""
    return a + b


@broker.task(task_name="py_fail")
async def py_fail(reason: str) -> None:
    """Raises ValueError(reason): stepq reads kind `builtins.ValueError`."""
    raise ValueError(reason)


@broker.task(task_name="py_echo")
async def py_echo(text: str, context: Context = TaskiqDepends()) -> dict:
    """What the task saw: its id, labels (parsed by their TaskIQ type codes), the text's size."""
    return {
        "task_id": context.message.task_id,
        "labels": {k: str(v) for k, v in context.message.labels.items()},
        "len": len(text),
        "head": text[:16],
    }


@broker.task(task_name="py_big")
async def py_big(size: int) -> str:
    """A return value of `size` characters (results have no SQS limit: they are S3 objects)."""
    return "y" * size


@broker.task(task_name="py_noop")
async def py_noop() -> None:
    """The peer benchmark's task."""
    return None
