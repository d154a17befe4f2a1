"""A pickled task message on the broker cannot run code: the worker accepts JSON only.

Anyone who can write to the pipeline's Redis can put a message on a queue. A
pickle can make its reader run any function while it is being deserialized;
the one here would set a Redis key. It is published, as Celery's protocol-2
message of a pipeline task, straight onto the ``orders`` queue of a real
``orders-worker``. The worker must refuse to deserialize it (Celery's
``ContentDisallowed``), drop it, never run the task, and the key must never
appear, while the very same bytes unpickled here do set their key.
"""

from __future__ import annotations

import pickle
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pipeline_stack as e2e
import pytest
import redis
from kombu import Connection, Exchange, Queue

from dev.servers import NatsServer, RedisServer
from orders import names

pytestmark = pytest.mark.e2e

REFUSAL_TIMEOUT_S = 30.0
# After the refusal, how long the key is watched for (a late run would set it).
QUIET_S = 3.0


class SetsAKey:
    """Unpickling this runs ``eval`` on code that writes ``key`` to Redis."""

    def __init__(self, redis_url: str, key: str) -> None:
        self.code = f"__import__('redis').Redis.from_url({redis_url!r}).set({key!r}, 'code ran')"

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return eval, (self.code,)


def _celery_message(task_id: str, argument: object) -> tuple[tuple, dict[str, object]]:
    """Body and headers of a Celery protocol-2 message for ``orders.settle_order``."""
    headers: dict[str, object] = {
        "lang": "py",
        "task": names.TASK_SETTLE,
        "id": task_id,
        "root_id": task_id,
        "parent_id": None,
        "group": None,
        "retries": 0,
        "eta": None,
        "expires": None,
        "timelimit": [None, None],
        "argsrepr": "(...)",
        "kwargsrepr": "{}",
        "origin": "attacker@nowhere",
    }
    embed = {"callbacks": None, "errbacks": None, "chain": None, "chord": None}
    return ((argument,), {}, embed), headers


@pytest.fixture
def worker(tmp_path: Path) -> Iterator[tuple[Any, str]]:
    """A real worker on a Redis of its own (the bridge is not needed)."""
    with NatsServer() as nats_server, RedisServer() as redis_server:
        stack = e2e.Stack(nats_server.url, redis_server.url, tmp_path)
        stack.start_worker()
        try:
            yield stack, redis_server.url
        finally:
            stack.stop_worker()


def test_a_pickled_task_is_refused_without_running(worker: tuple[Any, str]) -> None:
    stack, redis_url = worker
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    key = f"pwned-{uuid.uuid4().hex[:12]}"
    control_key = f"control-{uuid.uuid4().hex[:12]}"
    task_id = f"attack-{uuid.uuid4().hex[:12]}"

    # The payload is live: unpickled, the same construction does set its key.
    pickle.loads(pickle.dumps(SetsAKey(redis_url, control_key)))
    assert client.get(control_key) == "code ran"

    body, headers = _celery_message(task_id, SetsAKey(redis_url, key))
    exchange = Exchange(names.QUEUE_ORDERS, type="direct")
    queue = Queue(names.QUEUE_ORDERS, exchange, routing_key=names.QUEUE_ORDERS)
    with Connection(redis_url) as connection:
        connection.Producer().publish(
            body,
            exchange=exchange,
            routing_key=names.QUEUE_ORDERS,
            declare=[queue],
            serializer="pickle",
            headers=headers,
        )

    log = stack.worker_log()

    def refused() -> bool:
        return "ContentDisallowed" in log.read_text(errors="replace")

    e2e.wait_for(refused, REFUSAL_TIMEOUT_S, "the worker to refuse the pickled message")
    time.sleep(QUIET_S)

    text = log.read_text(errors="replace")
    assert client.get(key) is None, "the pickled payload ran inside the worker"
    assert "Refusing to deserialize untrusted content of type pickle" in text, text[-3000:]
    assert f"{task_id}] received" not in text and f"{task_id}] succeeded" not in text
    # Dropped, not left to come back: neither queued nor held unacked (kombu's
    # Redis transport would restore an unacked message), and the worker alive.
    assert client.llen(names.QUEUE_ORDERS) == 0
    assert client.hlen("unacked") == 0
    assert stack.worker is not None and stack.worker.poll() is None
    client.close()
