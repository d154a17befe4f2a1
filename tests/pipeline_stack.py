"""The whole pipeline as separate processes: ``orders-bridge`` and ``orders-worker``
against real NATS and Redis servers, driven from outside like a producer and an
operator would.

:class:`Stack` starts and stops the two processes (:mod:`dev.stack`);
:class:`Pipeline` is what a test talks to: publish, read outcome events and dead
letters from JetStream (:mod:`dev.outcomes`), read order state and stock from
Redis. Each helper call opens its own short NATS connection inside
``asyncio.run``, so tests stay synchronous and no connection outlives a call.

A module of its own (``tests`` is on the import path), not a conftest: the e2e
fixtures, the fault harness and single tests import it by name.
"""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import time
import urllib.request
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import nats
from nats.js import JetStreamContext
from nats.js.api import ConsumerInfo
from prometheus_client.parser import text_string_to_metric_families

from bridge import codec
from dev import outcomes, procs
from dev.outcomes import DeadLetter, OutcomeEvent
from dev.procs import bridge_command, child_env, worker_command
from dev.servers import NatsServer, RedisServer, free_port
from dev.stack import Child, Processes
from orders import names
from orders.adapters import redis_keys
from orders.adapters.order_state import OrderState, OrderView
from orders.adapters.redis_inventory import RedisInventory
from orders.bootstrap import redis_client
from orders.domain.model import RawOrder
from orders.settings import RedisConnection, load_settings

# Small timings so that failure paths finish within seconds, not minutes.
FAST_FAILURE_ENV = {
    "MAX_DELIVERIES": "3",
    "NAK_DELAY_MAX": "1",
    "TASK_MAX_RETRIES": "2",
    "TASK_RETRY_BACKOFF_MAX": "1",
    "DRAIN_TIMEOUT": "5",
}
MAX_DELIVERIES = int(FAST_FAILURE_ENV["MAX_DELIVERIES"])
DEFAULT_STOCK = 1000  # INVENTORY_DEFAULT_STOCK is left at its default

START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 30.0
OUTCOME_TIMEOUT_S = 60.0
LOG_TAIL_LINES = 60


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def wait_for(predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.1) -> Any:
    """Poll until ``predicate`` returns something truthy and return it."""
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() >= deadline:
            raise TimeoutError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(interval)


def log_tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    return procs.log_tail(path, lines)


# ---------------------------------------------------------------------------------
# Processes


def process_env(nats_url: str, redis_url: str, port: int, extra: dict[str, str]) -> dict:
    # FAST_FAILURE_ENV first: a test's own values win.
    return child_env(nats_url, redis_url, port, FAST_FAILURE_ENV, extra)


def named_worker_command(name: str) -> list[str]:
    return worker_command("--concurrency", "2", "--pool", "prefork", "--hostname", f"{name}@%h")


class Stack:
    """One ``orders-worker`` and one ``orders-bridge``, logging to files in ``log_dir``;
    both get the bridge's HTTP port as ``PORT``."""

    def __init__(
        self,
        nats_url: str,
        redis_url: str,
        log_dir: Path,
        extra_env: dict[str, str] | None = None,
    ) -> None:
        self.log_dir = log_dir
        self.port = free_port()
        # FAST_FAILURE_ENV first: a test's own values win.
        env = [FAST_FAILURE_ENV, extra_env or {}]
        self.processes = Processes(
            log_dir, nats_url=nats_url, redis_url=redis_url, env=env, start_timeout=START_TIMEOUT_S
        )
        self._bridge: Child | None = None
        self._worker: Child | None = None

    # The processes themselves, for a test to signal (SIGSTOP a bridge) or poll.
    @property
    def bridge(self) -> subprocess.Popen[bytes] | None:
        return None if self._bridge is None else self._bridge.popen

    @property
    def worker(self) -> subprocess.Popen[bytes] | None:
        return None if self._worker is None else self._worker.popen

    @property
    def workers_started(self) -> int:
        return len(self.processes.workers)

    @property
    def bridge_log(self) -> Path:
        return self.log_dir / "bridge.log"

    def worker_log(self, n: int | None = None) -> Path:
        return self.log_dir / f"worker-{self.workers_started if n is None else n}.log"

    def start(self) -> None:
        """The worker, then the bridge; each ready before the next starts."""
        self.start_worker()
        self.start_bridge()

    def start_bridge(self) -> None:
        """Start the bridge (again) and wait until it is ready."""
        self._bridge = self.processes.start("bridge", bridge_command, name="bridge", port=self.port)

    def stop_bridge(self) -> int | None:
        """SIGTERM (it drains into the workers), then SIGKILL if it hangs. Returns its
        exit code."""
        bridge, self._bridge = self._bridge, None
        return None if bridge is None else self.processes.stop(bridge, STOP_TIMEOUT_S)

    def start_worker(self, extra_env: dict[str, str] | None = None) -> None:
        """Start a worker (again) and wait until Celery reports it ready."""
        self._worker = self.processes.start(
            "worker", lambda: named_worker_command(unique("e2e")), extra_env, port=self.port
        )

    def stop_worker(self) -> int | None:
        """SIGTERM (warm shutdown), then SIGKILL the whole pool if it hangs."""
        worker, self._worker = self._worker, None
        return None if worker is None else self.processes.stop(worker, STOP_TIMEOUT_S)

    def stop(self) -> int | None:
        """Stop the bridge first (it drains into the workers), then the worker.
        Returns the bridge's exit code."""
        try:
            return self.stop_bridge()
        finally:
            self.stop_worker()

    def logs(self) -> str:
        return self.processes.logs(LOG_TAIL_LINES)


# ---------------------------------------------------------------------------------
# What a test sees


class Pipeline:
    """The running pipeline as an outside test sees it."""

    max_deliveries = MAX_DELIVERIES

    def __init__(self, stack: Stack, nats_url: str, redis_url: str) -> None:
        self.stack = stack
        self.nats_url = nats_url
        self.redis_url = redis_url
        settings = load_settings(RedisConnection, redis_url=redis_url)
        self._redis = redis_client(settings)
        self._state = OrderState(self._redis)
        self.inventory = RedisInventory(self._redis, DEFAULT_STOCK)

    def gateway_state(self, idempotency_key: str) -> str | None:
        """The simulated gateway's record for a charge key (its books, not ours)."""
        return self._redis.hget(redis_keys.gateway_charge(idempotency_key), "state")

    def close(self) -> None:
        self._redis.close()

    # --- NATS -------------------------------------------------------------------------

    def _nats(self, work: Callable[[JetStreamContext], Any]) -> Any:
        async def run() -> Any:
            nc = await nats.connect(self.nats_url, allow_reconnect=False)
            try:
                return await work(nc.jetstream(timeout=10))
            finally:
                await nc.close()

        return asyncio.run(run())

    def publish(self, message: RawOrder | bytes, msg_id: str) -> Any:
        """Publish to ``ORDER.created`` like a producer; returns the ``PubAck``."""
        data = message if isinstance(message, bytes) else codec.encode_order_created(message)
        return self._nats(
            lambda js: js.publish(
                names.SUBJECT_CREATED,
                data,
                headers={names.HDR_MSG_ID: msg_id},
                stream=names.ORDERS_STREAM,
            )
        )

    def all_outcomes(self) -> list[OutcomeEvent]:
        return self._nats(outcomes.stored_outcomes)

    def outcomes_by_order(self) -> dict[str, list[OutcomeEvent]]:
        grouped: dict[str, list[OutcomeEvent]] = defaultdict(list)
        for event in self.all_outcomes():
            grouped[event.order_id].append(event)
        return grouped

    def outcomes_for(self, order_id: str) -> list[OutcomeEvent]:
        """Every outcome event stored for ``order_id`` (to assert there is exactly one)."""
        return [e for e in self.all_outcomes() if e.order_id == order_id]

    def await_outcome(self, order_id: str, timeout: float = OUTCOME_TIMEOUT_S) -> OutcomeEvent:
        def first() -> OutcomeEvent | None:
            found = self.outcomes_for(order_id)
            return found[0] if found else None

        return wait_for(first, timeout, f"an outcome event for order {order_id}", interval=0.2)

    def dlq_messages(self) -> list[DeadLetter]:
        return self._nats(outcomes.stored_dead_letters)

    def await_dead_letter(self, original_seq: int, timeout: float) -> DeadLetter:
        def find() -> DeadLetter | None:
            for letter in self.dlq_messages():
                if letter.headers.get(names.HDR_DLQ_SEQUENCE) == str(original_seq):
                    return letter
            return None

        return wait_for(find, timeout, f"a dead letter of stream sequence {original_seq}", 0.3)

    def consumer_info(self) -> ConsumerInfo:
        return self._nats(lambda js: js.consumer_info(names.ORDERS_STREAM, names.DURABLE_CONSUMER))

    def await_idle(self, after_seq: int = 0, timeout: float = 30.0) -> ConsumerInfo:
        """Wait until the bridge's consumer has delivered everything up to ``after_seq``
        and holds no unacknowledged message."""

        def idle() -> ConsumerInfo | None:
            info = self.consumer_info()
            caught_up = info.delivered.stream_seq >= after_seq and info.num_pending == 0
            return info if caught_up and info.num_ack_pending == 0 else None

        return wait_for(idle, timeout, f"the bridge's consumer to be idle after {after_seq}")

    # --- Redis --------------------------------------------------------------------------

    def status(self, order_id: str) -> OrderView | None:
        return self._state.view(order_id)

    def redis_key_exists(self, key: str) -> bool:
        return bool(self._redis.exists(key))

    def set_stock(self, sku: str, quantity: int) -> None:
        self.inventory.set_stock(sku, quantity)

    def stock(self, sku: str) -> int:
        return self.inventory.available([sku])[sku]

    # --- the bridge's metrics ---------------------------------------------------------

    def batch_sizes(self) -> dict[str, float]:
        """``sum`` (orders) and ``count`` (canvases) of the bridge's batch histogram."""
        url = f"http://127.0.0.1:{self.stack.port}/metrics"
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        with opener.open(url, timeout=5) as response:
            text = response.read().decode()
        found: dict[str, float] = {}
        for family in text_string_to_metric_families(text):
            if family.name == "orders_bridge_workflow_batch_size":
                for sample in family.samples:
                    if sample.name.endswith("_sum"):
                        found["sum"] = sample.value
                    elif sample.name.endswith("_count"):
                        found["count"] = sample.value
        return found


@contextlib.contextmanager
def running_pipeline(
    nats_url: str, redis_url: str, log_dir: Path, extra_env: dict[str, str] | None = None
) -> Iterator[Pipeline]:
    stack = Stack(nats_url, redis_url, log_dir, extra_env or {})
    pipeline = Pipeline(stack, nats_url, redis_url)
    try:
        stack.start()
        yield pipeline
    except BaseException:
        stack.stop()
        raise
    finally:
        pipeline.close()
    code = stack.stop()
    assert code == 0, f"orders-bridge exited with {code} after SIGTERM\n{stack.logs()}"


@contextlib.contextmanager
def pipeline_of_its_own(log_dir: Path, extra_env: dict[str, str]) -> Iterator[Pipeline]:
    """A pipeline on servers of its own: for a test that restarts it or changes what
    every order sees (the gateway's failure rate), away from the shared servers."""
    with (
        NatsServer() as nats_server,
        RedisServer() as redis_server,
        running_pipeline(nats_server.url, redis_server.url, log_dir, extra_env) as running,
    ):
        yield running
