"""The whole pipeline as separate processes: ``orders-bridge`` and ``orders-worker``
against real NATS and Redis servers, driven from outside like a producer and an
operator would.

:class:`Stack` starts and stops the two processes; :class:`Pipeline` is what a
test talks to (publish, read outcome events and dead letters from JetStream
with :mod:`dev.outcomes`, read order state and stock from Redis). Each helper
call opens its own short NATS connection inside ``asyncio.run``, so tests stay
synchronous and no connection outlives a call.

A module of its own (``tests`` is on the import path), not a conftest: the e2e
fixtures, the fault harness and single tests import it by name.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nats
from nats.js import JetStreamContext
from nats.js.api import ConsumerInfo

from bridge import codec
from dev import outcomes, procs
from dev.outcomes import DeadLetter, OutcomeEvent
from dev.procs import bridge_command, child_env, spawn, worker_command
from dev.servers import free_port
from orders import names
from orders.adapters import redis_keys
from orders.adapters.order_state import OrderState, OrderView
from orders.adapters.redis_inventory import RedisInventory
from orders.bootstrap import redis_client
from orders.domain.model import RawOrder
from orders.settings import load_settings

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

_NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))


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


@dataclass
class Stack:
    """One ``orders-worker`` and one ``orders-bridge``, logging to files in ``log_dir``."""

    nats_url: str
    redis_url: str
    log_dir: Path
    extra_env: dict[str, str] = field(default_factory=dict)
    port: int = field(default_factory=free_port)
    worker: subprocess.Popen[bytes] | None = None
    bridge: subprocess.Popen[bytes] | None = None
    workers_started: int = 0

    @property
    def bridge_log(self) -> Path:
        return self.log_dir / "bridge.log"

    def worker_log(self, n: int | None = None) -> Path:
        return self.log_dir / f"worker-{self.workers_started if n is None else n}.log"

    def start(self) -> None:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.start_worker()
        self.bridge = self._spawn(bridge_command(), self.bridge_log, self.extra_env)
        wait_for(self._ready, START_TIMEOUT_S, "the bridge's GET /ready to answer 200")

    def start_worker(self, extra_env: dict[str, str] | None = None) -> None:
        """Start a worker (again) and wait until Celery reports it ready."""
        self.workers_started += 1
        env = {**self.extra_env, **(extra_env or {})}
        log = self.worker_log()
        self.worker = self._spawn(named_worker_command(unique("e2e")), log, env)
        worker = self.worker

        def worker_ready() -> bool:
            self._check_alive(worker, log)
            return " ready." in log.read_text(errors="replace")

        wait_for(worker_ready, START_TIMEOUT_S, "the worker to report ready", interval=0.2)

    def stop_worker(self) -> int | None:
        """SIGTERM (warm shutdown), then SIGKILL the whole pool if it hangs."""
        worker, self.worker = self.worker, None
        return stop_process(worker, kill_group=True)

    def stop(self) -> int | None:
        """Stop the bridge first (it drains into the workers), then the worker.
        Returns the bridge's exit code."""
        bridge, self.bridge = self.bridge, None
        try:
            code = stop_process(bridge, kill_group=False)
        finally:
            self.stop_worker()
        return code

    def logs(self) -> str:
        workers = [self.worker_log(n) for n in range(1, self.workers_started + 1)]
        return "\n".join(log_tail(p) for p in [self.bridge_log, *workers])

    def _spawn(self, command: list[str], log: Path, extra: dict[str, str]) -> subprocess.Popen:
        env = process_env(self.nats_url, self.redis_url, self.port, extra)
        return spawn(command, env, log)

    def _ready(self) -> bool:
        assert self.bridge is not None
        self._check_alive(self.bridge, self.bridge_log)
        try:
            with _NO_PROXY.open(f"http://127.0.0.1:{self.port}/ready", timeout=3) as response:
                return response.status == 200
        except (urllib.error.URLError, OSError):
            return False

    @staticmethod
    def _check_alive(process: subprocess.Popen[bytes], log: Path) -> None:
        code = process.poll()
        if code is not None:
            raise RuntimeError(f"{process.args[0]} exited with {code} at start\n{log_tail(log)}")


def stop_process(process: subprocess.Popen[bytes] | None, *, kill_group: bool) -> int | None:
    if process is None:
        return None
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    if kill_group:  # pool children that outlived their parent
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
    return process.returncode


# ---------------------------------------------------------------------------------
# What a test sees


class Pipeline:
    """The running pipeline as an outside test sees it."""

    max_deliveries = MAX_DELIVERIES

    def __init__(self, stack: Stack, nats_url: str, redis_url: str) -> None:
        self.stack = stack
        self.nats_url = nats_url
        self.redis_url = redis_url
        settings = load_settings(nats_url=nats_url, redis_url=redis_url)
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

    def set_stock(self, sku: str, quantity: int) -> None:
        self.inventory.set_stock(sku, quantity)

    def stock(self, sku: str) -> int:
        return self.inventory.available([sku])[sku]


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
