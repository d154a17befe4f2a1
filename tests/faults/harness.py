"""Fault injection against the whole pipeline: real servers, bridges and workers that
a test kills and restarts while a few thousand orders flow, then one check that
every order ended exactly once.

- :class:`FaultStack`: a NATS and a Redis server of its own (so a test may kill
  them), any number of ``orders-bridge`` and ``orders-worker`` processes, each
  with its own log file; ``kill()`` is SIGKILL of the whole process group.
- :class:`Workload`: mixed orders (valid, low stock, declined, invalid, duplicate
  publishes, poison) with ids unique to the test, published from a background
  thread at a set rate by a producer that retries like a real one would.
- :func:`check_invariants`: waits until the consumer is idle and every order has
  ended, then compares JetStream (outcome events, dead letters), Redis (order
  state, charges, stock) and the simulated gateway's books with the plan.

Process spawning, the outcome and dead-letter readers (:mod:`pipeline_stack`) and
the order builder (:mod:`orders_builder`) are those of the e2e suite.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import signal
import subprocess
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nats
import pipeline_stack as e2e
from orders_builder import encode_order_created_by_hand as encode_by_hand
from orders_builder import order as build_order
from prometheus_client.parser import text_string_to_metric_families

from bridge import codec
from dev.procs import bridge_command, spawn
from dev.servers import NatsServer, RedisServer, free_port, wait_until
from orders import names
from orders.domain.model import OutcomeKind, RawOrder
from orders.worker import FAILED_STOP_DEADLINE_S

# The e2e suite's fast failure paths, plus timings that let a lost bridge or worker
# be noticed within seconds: a message unacked for ACK_WAIT is redelivered, a
# workflow without progress for WORKFLOW_STALL_TIMEOUT is sent again.
#
# A workflow waiting in a Celery queue shows no progress either, so the orders in
# flight must drain well within the stall timeout even on a busy machine (two
# loaded cores finish ~10 orders/s). Otherwise every queued workflow is sent
# again, which lengthens the queue, and throughput collapses: the bridge cannot
# tell a queued workflow from a lost one. Two bridges holding 32 orders each keep
# the queue wait at a few seconds.
FAULT_ENV = {
    **e2e.FAST_FAILURE_ENV,
    "MAX_DELIVERIES": "5",
    "ACK_WAIT": "10",
    "WORKFLOW_STALL_TIMEOUT": "10",
    "BRIDGE_MAX_IN_FLIGHT": "32",
}
START_TIMEOUT_S = 60.0
SETTLE_TIMEOUT_S = 180.0
COMPENSATION_GRACE_S = 30.0
PUBLISH_RETRY_S = 90.0
CLOSE_TIMEOUT_S = 15.0

COMPLETED = "completed"
DEAD_LETTERED = "DEAD_LETTERED"
_NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))


# ---------------------------------------------------------------------------------
# Processes


@dataclass
class Proc:
    """One bridge or worker; ``restart`` spawns it again under the same name and port."""

    role: str  # "bridge" | "worker"
    name: str
    port: int
    env: dict[str, str]
    log: Path
    popen: subprocess.Popen[bytes] | None = None
    spawned: int = 0
    args: tuple[str, ...] = ()  # extra command-line arguments (a worker's --queues)

    @property
    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    @property
    def pid(self) -> int:
        assert self.popen is not None, f"{self.name} was never started"
        return self.popen.pid

    def __str__(self) -> str:
        return f"{self.name} (pid {self.popen.pid if self.popen else '-'})"


class FaultStack:
    """Servers and processes of one fault test; use as a context manager."""

    def __init__(self, log_dir: Path, extra_env: dict[str, str] | None = None) -> None:
        self.log_dir = log_dir
        self.extra_env = {**FAULT_ENV, **(extra_env or {})}
        # Data directories under log_dir: they are kept for a failed test's post-mortem.
        self.nats = NatsServer(store_dir=log_dir / "nats")
        self.redis = RedisServer(data_dir=log_dir / "redis", appendfsync="always")
        self.procs: list[Proc] = []
        self.workloads: list[Workload] = []
        self._pipeline: Any = None

    # --- life cycle ---------------------------------------------------------------

    def __enter__(self) -> FaultStack:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        try:
            self.nats.start()
            self.redis.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop publishing, SIGTERM every process at once, SIGKILL what is left, then
        stop the servers."""
        for workload in self.workloads:
            workload.stop()
        running = [p for p in self.procs if p.alive]
        for proc in running:
            with contextlib.suppress(ProcessLookupError):
                proc.popen.send_signal(signal.SIGTERM)  # type: ignore[union-attr]
        deadline = time.monotonic() + CLOSE_TIMEOUT_S
        for proc in running:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.popen.wait(max(0.1, deadline - time.monotonic()))  # type: ignore[union-attr]
        for proc in self.procs:
            if proc.popen is not None:
                # Pool children that outlived their parent too.
                _kill_group(proc.popen)
        if self._pipeline is not None:
            self._pipeline.close()
            self._pipeline = None
        self.redis.stop()
        self.nats.stop()

    @property
    def pipeline(self) -> Any:
        """The e2e suite's :class:`Pipeline`: outcomes, dead letters, state, stock."""
        if self._pipeline is None:
            self._pipeline = e2e.Pipeline(self, self.nats.url, self.redis.url)
        return self._pipeline

    # --- processes ----------------------------------------------------------------

    @property
    def bridges(self) -> list[Proc]:
        return [p for p in self.procs if p.role == "bridge"]

    @property
    def workers(self) -> list[Proc]:
        return [p for p in self.procs if p.role == "worker"]

    def add_bridge(self, env_overrides: dict[str, str] | None = None) -> Proc:
        """Start a bridge on a port of its own and wait until ``/ready`` says 200."""
        n = len(self.bridges) + 1
        proc = Proc("bridge", f"bridge-{n}", free_port(), dict(env_overrides or {}), Path())
        self.procs.append(proc)
        self._spawn(proc)
        return proc

    def add_worker(
        self, env_overrides: dict[str, str] | None = None, args: tuple[str, ...] = ()
    ) -> Proc:
        """Start a worker (prefork, concurrency 2, every queue, unless ``args`` say
        otherwise: Celery takes an option's last value) and wait until it is ready."""
        n = len(self.workers) + 1
        proc = Proc("worker", f"worker-{n}", free_port(), dict(env_overrides or {}), Path())
        proc.args = args
        self.procs.append(proc)
        self._spawn(proc)
        return proc

    def kill(self, proc: Proc) -> None:
        """SIGKILL the process and everything in its group (a worker's pool children)."""
        assert proc.popen is not None
        _kill_group(proc.popen)

    def stop(self, proc: Proc) -> int | None:
        """SIGTERM (a bridge drains, a worker shuts down warm), SIGKILL if it hangs."""
        return e2e.stop_process(proc.popen, kill_group=True)

    def restart(self, proc: Proc) -> Proc:
        """Kill the process if it still runs, then start it again (same name, same port)."""
        if proc.alive:
            self.kill(proc)
        self._spawn(proc)
        return proc

    def pool_children(self, worker: Proc) -> list[int]:
        return _children(worker.pid)

    @staticmethod
    def group_alive(proc: Proc) -> bool:
        """Whether any process of ``proc``'s group (a worker's pool) still runs."""
        return bool(_processes(lambda stat: stat[2] == proc.pid))

    def kill_pool_child(self, worker: Proc) -> int:
        """SIGKILL one prefork child of ``worker``; the parent replaces it. Returns its pid."""
        children = self.pool_children(worker)
        assert children, f"{worker} has no pool children"
        pid = random.choice(children)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        return pid

    def logs(self, lines: int = 40) -> str:
        tails = [e2e.log_tail(p.log, lines) for p in self.procs]
        tails += [e2e.log_tail(s.log_path, 15) for s in (self.nats, self.redis)]
        return "\n".join(tails)

    def _spawn(self, proc: Proc) -> None:
        proc.spawned += 1
        suffix = "" if proc.spawned == 1 else f".{proc.spawned}"
        proc.log = self.log_dir / f"{proc.name}{suffix}.log"
        if proc.role == "bridge":
            command = bridge_command()
        else:
            command = [*e2e.named_worker_command(f"{proc.name}-{uuid.uuid4().hex[:6]}"), *proc.args]
        env = e2e.process_env(self.nats.url, self.redis.url, proc.port, {})
        env.update(self.extra_env)
        env.update(proc.env)
        proc.popen = spawn(command, env, proc.log)
        ready = _bridge_ready if proc.role == "bridge" else _worker_ready
        wait_until(lambda: ready(proc), START_TIMEOUT_S, 0.2, f"{proc.name} to be ready")


def _kill_group(popen: subprocess.Popen[bytes]) -> None:
    # Signalled before the wait: the unreaped leader keeps its pid, so the group
    # id cannot have been reused by an unrelated process.
    with contextlib.suppress(ProcessLookupError):
        os.killpg(popen.pid, signal.SIGKILL)
    popen.wait()


def _children(pid: int) -> list[int]:
    return _processes(lambda stat: stat[1] == pid)


def _processes(match: Callable[[tuple[str, int, int]], bool]) -> list[int]:
    """Pids of live (not zombie) processes whose ``(state, ppid, pgid)`` match."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # "pid (comm) state ppid pgrp ...": comm may hold spaces and parentheses.
        state, ppid, pgrp = stat.rsplit(")", 1)[1].split()[:3]
        if state != "Z" and match((state, int(ppid), int(pgrp))):
            found.append(int(entry.name))
    return found


def _check_alive(proc: Proc) -> None:
    assert proc.popen is not None
    if (code := proc.popen.poll()) is not None:
        raise RuntimeError(f"{proc.name} exited with {code}\n{e2e.log_tail(proc.log)}")


def _worker_ready(proc: Proc) -> bool:
    _check_alive(proc)
    return " ready." in proc.log.read_text(errors="replace")


def _bridge_ready(proc: Proc) -> bool:
    _check_alive(proc)
    return ready_status(proc) == 200


def endpoint_status(bridge: Proc, path: str) -> int | None:
    """HTTP status of one of the bridge's endpoints, ``None`` when it does not answer."""
    try:
        with _NO_PROXY.open(f"http://127.0.0.1:{bridge.port}{path}", timeout=3) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        exc.close()
        return exc.code
    except OSError:
        return None


def ready_status(bridge: Proc) -> int | None:
    """HTTP status of the bridge's ``GET /ready``, ``None`` when it does not answer."""
    return endpoint_status(bridge, "/ready")


def bridge_metric(bridge: Proc, sample: str, **labels: str) -> float:
    """One sample of the bridge's ``/metrics`` (a counter's name ends in ``_total``),
    0 when the bridge does not answer or has no such sample."""
    try:
        with _NO_PROXY.open(f"http://127.0.0.1:{bridge.port}/metrics", timeout=3) as response:
            text = response.read().decode()
    except OSError:
        return 0.0
    for family in text_string_to_metric_families(text):
        for found in family.samples:
            if found.name == sample and found.labels == labels:
                return found.value
    return 0.0


def bridge_in_flight(bridge: Proc) -> int:
    """Messages the bridge is processing right now (its ``orders_bridge_in_flight`` gauge)."""
    return int(bridge_metric(bridge, "orders_bridge_in_flight"))


def wait_bridge_in_flight(bridge: Proc, count: int, timeout: float = 20.0) -> None:
    """Until ``bridge`` itself holds at least ``count`` messages: a fault aimed at one
    bridge of several must catch it holding some."""
    wait_until(
        lambda: bridge_in_flight(bridge) >= count,
        timeout,
        0.01,
        f"{bridge.name} to hold {count} messages",
    )


def wait_in_flight(stack: Any, count: int, timeout: float = 20.0) -> None:
    """Until the bridges of ``stack`` hold at least ``count`` unacknowledged orders
    between them, so that a fault hits mid-flow. On an idle machine the pipeline
    keeps up with a moderate rate and few orders are in flight at any moment: ask
    for more than one only where the test's rate builds a backlog."""
    wait_until(
        lambda: stack.pipeline.consumer_info().num_ack_pending >= count,
        timeout,
        0.01,
        f"{count} orders in flight",
    )


def wait_ready(stack: FaultStack, timeout: float = 60.0) -> None:
    """Every running bridge's ``/ready`` answers 200 (again)."""
    for bridge in stack.bridges:
        if bridge.alive:
            wait_until(
                lambda b=bridge: _bridge_ready(b), timeout, 0.3, f"{bridge.name}'s /ready = 200"
            )


def restart_workers_kombu_crashed(stack: FaultStack, workers: list[Proc]) -> list[Proc]:
    """Restart, as a supervisor would, the workers that died of a lost Redis connection.

    kombu's Redis transport can ack a finished task on a channel that lost its
    connection and stop the worker with "Unrecoverable error: AttributeError ...
    'hostname'" (kombu#582, a long-standing race). Such a worker must exit by itself
    within its bounded stop, for the supervisor to see it (Celery's warm stop after
    that error can hang); a worker dead for any other reason fails the test.
    Returns the workers restarted."""
    crashed = [w for w in workers if "Unrecoverable error" in w.log.read_text(errors="replace")]
    wait_until(
        lambda: not any(w.alive for w in crashed),
        FAILED_STOP_DEADLINE_S + 20,
        0.5,
        "workers that hit an unrecoverable error to exit",
    )
    for worker in workers:
        if not worker.alive:
            assert worker in crashed, f"{worker} died for another reason"
            stack.restart(worker)
    return crashed


def unfinished_tasks(log: Path) -> set[str]:
    """Task ids a worker's log shows as received but never finished: what it was
    doing when it died."""
    received: set[str] = set()
    finished: set[str] = set()
    for line in log.read_text(errors="replace").splitlines():
        # "<time> INFO MainProcess <logger> [order=.. trace=..]: Task <name>[<id>] received",
        # "... succeeded in ...": the id is in the first brackets after "Task ".
        if "Task " not in line or not any(mark in line for mark in _TASK_EVENTS):
            continue
        task_id = line.split("Task ", 1)[1].split("[", 1)[-1].split("]", 1)[0]
        (received if "] received" in line else finished).add(task_id)
    return received - finished


_TASK_EVENTS = ("] received", " succeeded in ", "] retry:", "] raised ")


# ---------------------------------------------------------------------------------
# The workload

VALID, LOW_STOCK, DECLINED, INVALID, POISON = "valid", "low-stock", "declined", "invalid", "poison"
_PRICES = (0.99, 5.00, 12.49, 19.99, 100.10)


@dataclass(frozen=True)
class Planned:
    """One order (or poison message) of the plan and what may end it."""

    key: str  # the order id; for poison, a name of our own
    kind: str
    payload: bytes
    expect: frozenset[str]  # COMPLETED or failure reasons
    quantities: tuple[tuple[str, int], ...] = ()


@dataclass
class Publication:
    planned: Planned
    msg_id: str
    seq: int | None = None
    duplicate: bool | None = None
    attempts: int = 0


class Workload:
    """A few thousand mixed orders, unique to one test, published in the background.

    About 65% valid on well-stocked SKUs, 5% on one low-stock SKU (half of them
    cannot get stock), 10% declined (total above 10000), 10% invalid, 5%
    published a second time (half under the same ``Nats-Msg-Id``, half under
    another one) and a few poison messages (garbage, no ``order_id``).
    """

    def __init__(self, stack: FaultStack, count: int = 2000, *, seed: int | None = None) -> None:
        self.stack = stack
        stack.workloads.append(self)
        self.seed = random.randrange(1 << 30) if seed is None else seed
        rng = random.Random(self.seed)
        self.tag = f"f{uuid.uuid4().hex[:8]}"
        self.skus = [f"{self.tag}-sku-{n}" for n in range(4)]
        self.low_sku = f"{self.tag}-low"
        n_poison = max(4, count // 250)
        n_dup = count // 20
        base = count - n_poison - n_dup
        n_low, n_declined, n_invalid = base * 5 // 100, base // 10, base // 10
        n_valid = base - n_low - n_declined - n_invalid
        self.low_stock = n_low // 2
        self.initial_stock = dict.fromkeys(self.skus, 1_000_000) | {self.low_sku: self.low_stock}

        plans: list[Planned] = []
        ids = iter(range(1_000_000))

        def new_id() -> str:
            return f"{self.tag}-{next(ids):05d}"

        for _ in range(n_valid):
            items = [(s, rng.randint(1, 3), rng.choice(_PRICES)) for s in rng.sample(self.skus, 3)]
            plans.append(self._plan(new_id(), VALID, items[: rng.randint(1, 3)], {COMPLETED}))
        for _ in range(n_low):
            items = [(self.low_sku, 1, 2.50)]
            if rng.random() < 0.5:
                items.append((rng.choice(self.skus), 1, 5.00))
            plans.append(self._plan(new_id(), LOW_STOCK, items, {COMPLETED, "OUT_OF_STOCK"}))
        for _ in range(n_declined):
            items = [(rng.choice(self.skus), rng.randint(1, 2), 10000.01)]
            plans.append(self._plan(new_id(), DECLINED, items, {"PAYMENT_DECLINED"}))
        for n in range(n_invalid):
            oid = new_id()
            payload = encode_by_hand(self._invalid(n, oid))
            plans.append(Planned(oid, INVALID, payload, frozenset({"INVALID_ORDER"})))
        for n in range(n_poison):
            if n % 2:
                payload = b"\x0a\xff\xff\xff\xff\x0f not a protobuf " + f"{self.tag}-{n}".encode()
            else:  # decodable, but no order_id: nothing to report an outcome for
                raw = build_order("", [(self.skus[0], 1, 1.0)], customer_id=f"{self.tag}-{n}")
                payload = encode_by_hand(raw)
            plans.append(Planned(f"{self.tag}-poison-{n}", POISON, payload, frozenset()))
        rng.shuffle(plans)

        self.plans = {p.key: p for p in plans}
        self.publications = [Publication(p, msg_id=p.key) for p in plans]
        orders = [p for p in plans if p.kind != POISON]
        for n, original in enumerate(rng.sample(orders, n_dup)):
            # Again, later: under the same msg id (the duplicate window drops it) or
            # under another one (the bridge must recognise the order).
            at = plans.index(original) + 1
            position = rng.randint(at, len(self.publications))
            msg_id = original.key if n % 2 else f"{original.key}:again"
            self.publications.insert(position, Publication(original, msg_id=msg_id))

        self.published = 0
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.started_at = self.finished_at = 0.0

    @staticmethod
    def _plan(
        oid: str, kind: str, items: list[tuple[str, int, float]], expect: set[str]
    ) -> Planned:
        quantities: Counter[str] = Counter()
        for sku, qty, _ in items:
            quantities[sku] += qty
        return Planned(
            oid,
            kind,
            encode_by_hand(build_order(oid, items)),
            frozenset(expect),
            tuple(sorted(quantities.items())),
        )

    def _invalid(self, n: int, oid: str) -> RawOrder:
        sku = self.skus[n % len(self.skus)]
        variants = [
            lambda: build_order(oid, [(sku, 0, 1.0)]),
            lambda: build_order(oid, [(sku, 2, 1.5)], total=4.0),
            lambda: build_order(oid, [(sku, 1, 1.0)], customer_id=""),
            lambda: build_order(oid, [(sku, 1, 1.0)], currency="ZZZ"),
            lambda: build_order(oid, []),
            lambda: build_order(oid, [("", 1, 1.0)]),
        ]
        return variants[n % len(variants)]()

    @property
    def orders(self) -> list[Planned]:
        return [p for p in self.plans.values() if p.kind != POISON]

    @property
    def poison(self) -> list[Planned]:
        return [p for p in self.plans.values() if p.kind == POISON]

    def counts(self) -> Counter[str]:
        return Counter(p.kind for p in self.plans.values()) + Counter(
            duplicates=len(self.publications) - len(self.plans)
        )

    # --- publishing ---------------------------------------------------------------

    def set_stock(self) -> None:
        for sku, quantity in self.initial_stock.items():
            self.stack.pipeline.set_stock(sku, quantity)

    def start(self, rate: float = 100.0) -> None:
        """Set the stock, then publish everything at ``rate`` messages/s in the background."""
        self.set_stock()
        self.started_at = time.monotonic()
        self._thread = threading.Thread(
            target=lambda: asyncio.run(self._produce(rate)), name="producer", daemon=True
        )
        self._thread.start()

    def wait_published(self, count: int, timeout: float = 120.0) -> None:
        """Until at least ``count`` publishes are acknowledged."""
        wait_until(
            lambda: self.published >= count or self._dead(),
            timeout,
            0.1,
            f"{count} publishes",
        )
        assert not self.failures, self.failures[:5]

    def join(self, timeout: float = 180.0) -> None:
        """Until every publish is acknowledged; fails if some could not be."""
        assert self._thread is not None, "start() first"
        self._thread.join(timeout)
        assert not self._thread.is_alive(), f"producer still publishing after {timeout}s"
        assert not self.failures, f"{len(self.failures)} publishes failed: {self.failures[:5]}"

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(30)

    def _dead(self) -> bool:
        return self._thread is not None and not self._thread.is_alive()

    async def _produce(self, rate: float) -> None:
        nc = await nats.connect(
            self.stack.nats.url,
            name="fault-producer",
            max_reconnect_attempts=-1,
            reconnect_time_wait=0.5,
        )
        try:
            js = nc.jetstream(timeout=5)
            loop = asyncio.get_running_loop()
            start = loop.time()
            in_flight = asyncio.Semaphore(64)
            tasks = []
            for n, publication in enumerate(self.publications):
                if self._stop.is_set():
                    break
                if (delay := start + n / rate - loop.time()) > 0:
                    await asyncio.sleep(delay)
                await in_flight.acquire()
                tasks.append(asyncio.create_task(self._publish(js, publication, in_flight)))
            await asyncio.gather(*tasks)
        except Exception as exc:
            self.failures.append(f"producer crashed: {exc!r}")
        finally:
            self.finished_at = time.monotonic()
            with contextlib.suppress(Exception):
                await nc.close()

    async def _publish(self, js: Any, publication: Publication, slot: asyncio.Semaphore) -> None:
        """Publish until JetStream acknowledges. A retry after a lost ack is harmless:
        the ``Nats-Msg-Id`` makes the server drop the second copy."""
        deadline = time.monotonic() + PUBLISH_RETRY_S
        try:
            while not self._stop.is_set():
                publication.attempts += 1
                try:
                    ack = await js.publish(
                        names.SUBJECT_CREATED,
                        publication.planned.payload,
                        headers={names.HDR_MSG_ID: publication.msg_id},
                        stream=names.ORDERS_STREAM,
                    )
                except Exception as exc:  # timeouts, no responders, reconnecting
                    if time.monotonic() > deadline:
                        self.failures.append(f"{publication.msg_id}: {exc!r}")
                        return
                    await asyncio.sleep(0.25)
                    continue
                publication.seq, publication.duplicate = ack.seq, ack.duplicate
                self.published += 1
                return
        finally:
            slot.release()


# ---------------------------------------------------------------------------------
# The invariants


@dataclass
class Report:
    """What happened to every order, and every way it differs from the contract."""

    orders: int = 0
    stats: Counter[str] = field(default_factory=Counter)
    problems: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))
    stock: dict[str, tuple[int, int]] = field(default_factory=dict)  # sku: (expected, actual)
    consumer: str = ""
    redeliveries: int = 0  # deliveries of ORDER.created beyond one per stored message
    waited_s: float = 0.0

    @property
    def ok(self) -> bool:
        return not any(self.problems.values())

    def problem(self, kind: str, detail: str) -> None:
        self.problems[kind].append(detail)

    def summary(self) -> str:
        lines = [
            f"{self.orders} orders; outcomes {dict(sorted(self.stats.items()))}",
            f"consumer: {self.consumer}, {self.redeliveries} redeliveries; "
            f"checked after {self.waited_s:.0f}s",
            "problems: "
            + (", ".join(f"{k}={len(v)}" for k, v in self.problems.items() if v) or "none"),
        ]
        for kind, details in self.problems.items():
            for detail in details[:5]:
                lines.append(f"  {kind}: {detail}")
        lines.append("stock (expected, actual): " + str(self.stock))
        return "\n".join(lines)


def check_invariants(
    stack: FaultStack,
    workload: Workload,
    *,
    dead_letter_ok: bool = False,
    timeout: float = SETTLE_TIMEOUT_S,
) -> Report:
    """Wait (bounded) until every order has ended, then compare everything with the plan.

    ``dead_letter_ok``: an order that reaches the workers may end in the DLQ instead
    of an outcome (transient faults outlasted every delivery); it must then be fully
    compensated. Invalid orders never reach a worker, so never qualify.

    Compensation runs after the dead letter is stored, and stock or charges may
    still be moving when the consumer is idle, so a report with problems is
    computed again until it is clean or the time is up.
    """
    workload.join()
    started = time.monotonic()
    deadline = started + timeout
    while True:
        info = _consumer_info(stack)
        idle = info is not None and info.num_pending == 0 and info.num_ack_pending == 0
        if idle or time.monotonic() >= deadline:
            report = _report(stack, workload, dead_letter_ok)
            report.consumer = _describe(info)
            if info is not None and info.num_pending == 0:
                report.redeliveries = info.delivered.consumer_seq - _stored_inputs(stack)
            report.waited_s = time.monotonic() - started
            if report.ok or time.monotonic() >= deadline:
                return report
            if idle:  # only compensations may still move: give them a little longer
                deadline = min(deadline, time.monotonic() + COMPENSATION_GRACE_S)
        time.sleep(2.0)


def _consumer_info(stack: FaultStack) -> Any:
    try:
        return stack.pipeline.consumer_info()
    except Exception:  # a server being restarted
        return None


def _stored_inputs(stack: FaultStack) -> int:
    async def count(js: Any) -> int:
        info = await js.stream_info(names.ORDERS_STREAM, subjects_filter=names.SUBJECT_CREATED)
        return (info.state.subjects or {}).get(names.SUBJECT_CREATED, 0)

    return stack.pipeline._nats(count)


def _describe(info: Any) -> str:
    if info is None:
        return "no answer"
    return (
        f"pending {info.num_pending}, ack pending {info.num_ack_pending}, "
        f"redelivered {info.num_redelivered}"
    )


def _report(stack: FaultStack, workload: Workload, dead_letter_ok: bool) -> Report:
    pipeline = stack.pipeline
    report = Report(orders=len(workload.orders))
    outcomes: dict[str, list[Any]] = defaultdict(list)
    for event in pipeline.all_outcomes():
        outcomes[event.order_id].append(event)
    letters_by_order: dict[str, list[Any]] = defaultdict(list)
    letters_by_payload: dict[bytes, list[Any]] = defaultdict(list)
    for letter in pipeline.dlq_messages():
        letters_by_payload[letter.data].append(letter)
        with contextlib.suppress(codec.PoisonMessage):
            raw = codec.decode_order_created(letter.data, max_bytes=1 << 20)
            letters_by_order[raw.order_id].append(letter)

    completed_qty: Counter[str] = Counter()
    for plan in workload.orders:
        events, letters = outcomes.get(plan.key, []), letters_by_order.get(plan.key, [])
        view = pipeline.status(plan.key)
        if view is not None and view.run > 1:
            report.stats["workflow re-sent"] += 1  # stalled or failed: sent again
        if letters:
            report.stats["dead-lettered"] += 1
            if not (dead_letter_ok and plan.kind != INVALID):
                detail = f"{plan.key} ({plan.kind}): {_reason(letters)}"
                report.problem("unexpected dead letter", detail)
        if len(events) > 1:
            kinds = [e.fields.get("reason") or e.kind.value for e in events]
            report.problem("duplicated outcome", f"{plan.key}: {kinds}")
        if not events:
            if not letters:
                report.problem("missing", f"{plan.key} ({plan.kind}): state {_state(view)}")
            else:
                _check_compensated(report, pipeline, plan, view)
            continue
        event = events[0]
        got = COMPLETED if event.kind is OutcomeKind.COMPLETED else str(event.fields["reason"])
        report.stats[got] += 1
        if got not in plan.expect:
            report.problem("wrong outcome", f"{plan.key} ({plan.kind}): {got}")
        if event.msg_id != names.outcome_msg_id(plan.key, event.kind.value):
            report.problem("wrong msg id", f"{plan.key}: {event.msg_id!r}")
        if got == COMPLETED:
            completed_qty.update(dict(plan.quantities))
        _check_state(report, pipeline, plan, view, got)

    _check_poison(report, workload, outcomes, letters_by_payload)
    # Another workload of the same test (a baseline run first) is not a stray.
    planned = set().union(*(w.plans for w in stack.workloads))
    strays = sorted(set(outcomes) - planned)
    for order_id in strays:
        report.problem("outcome for no planned order", repr(order_id))

    for sku, initial in workload.initial_stock.items():
        expected, actual = initial - completed_qty[sku], pipeline.stock(sku)
        report.stock[sku.removeprefix(workload.tag + "-")] = (expected, actual)
        if expected != actual:
            report.problem("stock not conserved", f"{sku}: expected {expected}, actual {actual}")
    return report


def _state(view: Any) -> str:
    if view is None:
        return "none"
    return f"{view.status}/{view.reason or '-'} epoch {view.epoch} run {view.run}"


def _reason(letters: list[Any]) -> str:
    return letters[0].headers.get(names.HDR_DLQ_REASON, "")[:120]


def _check_state(report: Report, pipeline: Any, plan: Planned, view: Any, got: str) -> None:
    """Redis agrees with the outcome event, and money moved once or not at all."""
    status = "COMPLETED" if got == COMPLETED else "FAILED"
    if view is None or view.status != status or (got != COMPLETED and view.reason != got):
        report.problem("state disagrees", f"{plan.key}: outcome {got}, state {_state(view)}")
        return
    net = 1 if got == COMPLETED else 0
    if view.charges - view.refunds != net:
        report.problem(
            "charge anomaly",
            f"{plan.key}: {got} with {view.charges} charges, {view.refunds} refunds",
        )
    if plan.kind == INVALID and view.charges:
        report.problem("charge anomaly", f"{plan.key}: invalid order charged {view.charges}x")
    _check_gateway(report, pipeline, plan, view, completed_epoch=view.epoch if net else None)


def _check_compensated(report: Report, pipeline: Any, plan: Planned, view: Any) -> None:
    """A dead-lettered order holds no money and no stock (stock: checked per SKU)."""
    if view is None or (view.status, view.reason) != ("FAILED", DEAD_LETTERED):
        report.problem("state disagrees", f"{plan.key}: dead-lettered, state {_state(view)}")
        return
    if view.charges != view.refunds:
        report.problem(
            "charge anomaly",
            f"{plan.key}: dead-lettered with {view.charges} charges, {view.refunds} refunds",
        )
    _check_gateway(report, pipeline, plan, view, completed_epoch=None)


def _check_gateway(
    report: Report, pipeline: Any, plan: Planned, view: Any, completed_epoch: int | None
) -> None:
    """The gateway's own books: an approved charge only for the epoch that completed."""
    for epoch in range(1, view.epoch + 1):
        state = pipeline.gateway_state(f"{plan.key}:{epoch}")
        holds_money = state == "approved"
        if holds_money != (epoch == completed_epoch):
            report.problem("gateway books", f"{plan.key} epoch {epoch}: charge {state}")


def _check_poison(
    report: Report,
    workload: Workload,
    outcomes: dict[str, list[Any]],
    letters_by_payload: dict[bytes, list[Any]],
) -> None:
    for plan in workload.poison:
        letters = letters_by_payload.get(plan.payload, [])
        report.stats["poison dead-lettered"] += bool(letters)
        if len(letters) != 1:
            report.problem("poison", f"{plan.key}: {len(letters)} dead letters")
            continue
        headers = letters[0].headers
        if not headers.get(names.HDR_DLQ_REASON, "").strip():
            report.problem("poison", f"{plan.key}: dead letter without a reason")
        if headers.get(names.HDR_DLQ_SUBJECT) != names.SUBJECT_CREATED:
            report.problem("poison", f"{plan.key}: original subject {headers}")
    if "" in outcomes:
        report.problem("poison", f"{len(outcomes[''])} outcome events without an order id")
