"""The relay under an application that is not the order pipeline (``echo_app``):
real NATS, real Redis, a real Celery worker process, the relay in this process.

One message of each kind goes through: shouted by the worker, answered without a
worker, delivered twice (one outcome), and poison (dead-lettered with a reason).
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import nats
import pytest
import redis.asyncio
from echo_app import EchoApplication, celery_app, done_subject, echo_names
from nats.js import JetStreamContext

from relay.config import Limits, Names
from relay.runner import Relay
from relay.topology import ensure_topology

pytestmark = pytest.mark.integration

HERE = Path(__file__).parent


@pytest.fixture
def prefix() -> str:
    return uuid.uuid4().hex[:10]


@pytest.fixture
def echo_worker(redis_url: str, prefix: str, tmp_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")]),
        "ECHO_REDIS_URL": redis_url,
        "ECHO_PREFIX": prefix,
    }
    log = (tmp_path / "worker.log").open("wb")
    worker = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "echo_app",
            "worker",
            "--pool",
            "solo",
            "--loglevel",
            "WARNING",
        ],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=HERE,
    )
    yield worker
    worker.kill()
    worker.wait()
    log.close()


async def read_all(
    js: JetStreamContext, stream: str, subject: str, count: int
) -> list[nats.aio.msg.Msg]:
    sub = await js.pull_subscribe(subject, stream=stream)
    got: list[nats.aio.msg.Msg] = []
    while len(got) < count:
        got += await sub.fetch(count - len(got), timeout=20)
    await sub.unsubscribe()
    return got


def test_a_second_application_runs_on_the_relay_unchanged(
    nats_url: str, redis_url: str, prefix: str, echo_worker: subprocess.Popen[bytes]
) -> None:
    names = echo_names(prefix)
    limits = Limits(max_deliveries=3, ack_wait_s=10, stall_timeout_s=30)

    async def scenario() -> tuple[list[dict[str, str]], list[dict[str, str]], int]:
        nc = await nats.connect(nats_url)
        client = redis.asyncio.Redis.from_url(redis_url, decode_responses=True)
        js = nc.jetstream()
        await ensure_topology(js, names, limits)
        relay = Relay(EchoApplication(celery_app(redis_url), names), names, limits, nc, client)
        running = asyncio.create_task(relay.run())
        try:
            for msg_id, body in (
                ("m1", {"id": "a", "text": "hello"}),
                ("m2", {"id": "b", "text": ""}),
                ("m3", {"id": "a", "text": "hello"}),  # the same input again
                ("m4", None),
            ):
                data = json.dumps(body).encode() if body else b"\xff not json"
                await js.publish(names.input_subject, data, headers={"Nats-Msg-Id": msg_id})
            outcomes = await read_all(js, names.stream, done_subject(names), 2)
            letters = await read_all(js, names.dlq_stream, names.dlq_subject, 1)
            # Every input acknowledged: nothing left for the consumer.
            while (await js.consumer_info(names.stream, names.consumer)).num_ack_pending:
                await asyncio.sleep(0.1)
            # Four inputs and two outcomes: "a" delivered twice was published once.
            stored = (await js.stream_info(names.stream)).state.messages
        finally:
            relay.stop()
            await running
            await nc.drain()
            await client.aclose()
        return (
            [json.loads(m.data) for m in outcomes],
            [dict(m.headers or {}) for m in letters],
            stored,
        )

    outcomes, letters, stored = asyncio.run(asyncio.wait_for(scenario(), 60))

    assert sorted(outcomes, key=str) == sorted(
        [{"id": "a", "shouted": "HELLO"}, {"error": "empty"}], key=str
    )
    [letter] = letters
    assert letter["Echo-Reason"] == "not JSON"
    assert letter["Echo-Subject"] == names.input_subject
    assert letter["Echo-Deliveries"] == "1"
    assert stored == 6
    assert echo_worker.poll() is None


def test_the_echo_names_are_its_own(prefix: str) -> None:
    names: Names = echo_names(prefix)
    assert not any(s.startswith(("ORDER", "DLQ.")) for s in (*names.subjects, *names.dlq_subjects))


def test_new_inputs_go_to_celery_together_and_each_ends_on_its_own(
    nats_url: str, redis_url: str, prefix: str, echo_worker: subprocess.Popen[bytes]
) -> None:
    """Group commit: inputs fetched together are sent as one canvas (``workflow_batch``);
    each still gets its own outcome, once. The linger is long here so that the test
    does not depend on how fast this machine answers the ledger's ``begin``."""
    names = echo_names(prefix)
    limits = Limits(ack_wait_s=10, workflow_batch_max=16, workflow_batch_linger_s=0.2)
    texts = {f"job-{n}": f"hello {n}" for n in range(10)}

    async def scenario() -> tuple[list[dict[str, str]], float | None, float | None]:
        nc = await nats.connect(nats_url)
        client = redis.asyncio.Redis.from_url(redis_url, decode_responses=True)
        js = nc.jetstream()
        await ensure_topology(js, names, limits)
        for key, text in texts.items():  # all stored before the relay's first fetch
            body = json.dumps({"id": key, "text": text}).encode()
            await js.publish(names.input_subject, body, headers={"Nats-Msg-Id": key})
        relay = Relay(EchoApplication(celery_app(redis_url), names), names, limits, nc, client)
        running = asyncio.create_task(relay.run())
        try:
            outcomes = await read_all(js, names.stream, done_subject(names), len(texts))
            while (await js.consumer_info(names.stream, names.consumer)).num_ack_pending:
                await asyncio.sleep(0.1)
        finally:
            relay.stop()
            await running
            await nc.drain()
            await client.aclose()
        registry = relay.metrics.registry
        batches = registry.get_sample_value("echo_workflow_batch_size_count")
        members = registry.get_sample_value("echo_workflow_batch_size_sum")
        return [json.loads(m.data) for m in outcomes], batches, members

    outcomes, batches, members = asyncio.run(asyncio.wait_for(scenario(), 60))

    assert sorted(outcomes, key=str) == sorted(
        [{"id": key, "shouted": text.upper()} for key, text in texts.items()], key=str
    )
    assert members == len(texts)
    assert batches is not None and batches < len(texts), batches
    assert echo_worker.poll() is None
