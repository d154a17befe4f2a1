"""The relay's processor and settler on one delivery: one delivery, one disposition.

The orders application (``bridge.app``) runs on the real ledger: its Lua scripts
on a real Redis (the session's server, under a key prefix of each test's own).
Every test asserts that the message ends in exactly one of ack, nak with a
positive delay, or term after its dead letter is stored (watermill's rule), and
the side effects around it, in order, from one shared event log:

- :class:`FakeMsg` records ``ack`` / ``nak`` / ``term``;
- :class:`FakeJetStream` records each publish (``publish <subject>``) and can fail;
- :class:`RecordingLedger` is the real ``AsyncLedger``, recording ``abandon`` and
  ``mark_published``; the workers' side is the real ``Ledger`` (``finish`` /
  ``report_error``, which wake the watcher as the stream entry would);
- :class:`FakeDispatcher` records the canvases sent (``send workflow`` /
  ``send compensation``); its ``on_workflow`` hook plays the workers.
"""

from __future__ import annotations

import asyncio
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any, cast

import nats.errors
import pytest
import redis
import redis.asyncio
from celery.canvas import Signature
from opentelemetry import propagate, trace
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from bridge import codec
from bridge.app import NAMES, OrderApplication, relay_limits
from bridge.settings import BridgeSettings
from orders import names
from orders.adapters.order_state import OrderView, order_view, outcome_record
from orders.bootstrap import limits
from orders.celery_app import create_app
from orders.domain.model import FailureReason, Outcome, OutcomeKind, RawItem, RawOrder
from orders.settings import load_settings
from orders.telemetry import ORDER_ID as ORDER_ID_ATTRIBUTE
from relay.batching import Batcher
from relay.consumer import Consumer
from relay.keys import LedgerKeys
from relay.ledger import DEAD_LETTERED, AsyncLedger, Begin, Entry, Ledger, Next
from relay.metrics import RelayMetrics
from relay.processor import Deps, Processor
from relay.redis_watch import ReplicasBehind
from relay.topology import SERVER_DELIVERY_GRACE

pytestmark = pytest.mark.integration

MAX_DELIVERIES = 3
SETTINGS = load_settings(
    BridgeSettings,
    max_deliveries=MAX_DELIVERIES,
    workflow_stall_timeout=timedelta(seconds=0.2),
    # A refused publish fails the delivery at once, unless a test widens the window.
    publish_retry_window=timedelta(seconds=0.001),
)
ORDER_ID = "order-1"
SEQ = 42  # the input message's stream sequence


@pytest.fixture(autouse=True)
def _redis(redis_url: str) -> Iterator[None]:
    global REDIS_URL
    REDIS_URL = redis_url
    yield


REDIS_URL = ""


# --- fakes at the ports ------------------------------------------------------------


class FakeMsg:
    """A JetStream delivery of ``ORDER.created``."""

    def __init__(
        self, data: bytes, events: list[str], *, delivered: int = 1, ack_fails: bool = False
    ) -> None:
        self.data = data
        self.ack_fails = ack_fails  # NATS went away just before the ack
        self.subject = names.SUBJECT_CREATED
        self.headers = {names.HDR_MSG_ID: ORDER_ID, names.HDR_TRACEPARENT: "00-abc-def-01"}
        self.metadata = SimpleNamespace(
            num_delivered=delivered,
            sequence=SimpleNamespace(stream=SEQ, consumer=7),
            timestamp=datetime.now(UTC),
        )
        self.calls: list[tuple[str, float | None]] = []
        self._events = events

    async def ack(self) -> None:
        self._record("ack")
        if self.ack_fails:
            raise nats.errors.ConnectionClosedError

    async def nak(self, delay: float | None = None) -> None:
        self._record("nak", delay)

    async def term(self) -> None:
        self._record("term")

    async def in_progress(self) -> None:
        self.calls.append(("in_progress", None))

    def _record(self, call: str, delay: float | None = None) -> None:
        self.calls.append((call, delay))
        self._events.append(call)

    def disposition(self) -> str:
        """The single ack / nak / term of this delivery; a nak must carry a delay."""
        final = [c for c in self.calls if c[0] != "in_progress"]
        assert len(final) == 1, f"expected exactly one disposition, got {final}"
        call, delay = final[0]
        if call == "nak":
            assert delay is not None and delay > 0, f"bare nak (delay={delay})"
        return call


@dataclass
class Published:
    subject: str
    payload: bytes
    headers: dict[str, str]
    stream: str | None


class FakeJetStream:
    """``publish`` stores and acks (``duplicate`` by ``Nats-Msg-Id``), or times out
    for the subjects in ``failing`` and for the next ``refusals[subject]`` publishes
    to a subject (as while a stream elects its leader)."""

    def __init__(self, events: list[str]) -> None:
        self.published: list[Published] = []
        self.failing: set[str] = set()
        self.refusals: dict[str, int] = {}
        self._events = events

    async def publish(
        self,
        subject: str,
        payload: bytes = b"",
        timeout: float | None = None,
        stream: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> Any:
        if subject in self.failing or self.refusals.get(subject, 0) > 0:
            self.refusals[subject] = self.refusals.get(subject, 0) - 1
            self._events.append(f"publish {subject} (failed)")
            raise nats.errors.TimeoutError
        headers = dict(headers or {})
        msg_id = headers.get(names.HDR_MSG_ID)
        duplicate = any(p.headers.get(names.HDR_MSG_ID) == msg_id for p in self.published)
        self.published.append(Published(subject, payload, headers, stream))
        self._events.append(f"publish {subject}")
        return SimpleNamespace(stream=stream, seq=len(self.published), duplicate=duplicate)


class FakeWatcher:
    """``CompletionWatcher`` without reading the stream: ``wake`` is an entry read."""

    def __init__(self) -> None:
        self.waiters: dict[str, set[asyncio.Event]] = defaultdict(set)

    def expect(self, order_id: str) -> asyncio.Event:
        event = asyncio.Event()
        self.waiters[order_id].add(event)
        return event

    def forget(self, order_id: str, event: asyncio.Event) -> None:
        waiters = self.waiters.get(order_id)
        if waiters is not None:
            waiters.discard(event)
            if not waiters:
                del self.waiters[order_id]

    def wake(self, order_id: str) -> None:
        for event in self.waiters.get(order_id, ()):
            event.set()


class RecordingLedger(AsyncLedger):
    """The real ledger, recording the calls the event log shows; ``before_abandon``
    stages a race with the workers."""

    def __init__(self, client: redis.asyncio.Redis, keys: LedgerKeys, world: World) -> None:
        super().__init__(client, keys)
        self._world = world

    async def abandon(self, key: str, epoch: int, detail: str) -> bool:
        if self._world.before_abandon is not None:
            self._world.before_abandon()
        abandoned = await super().abandon(key, epoch, detail)
        if abandoned:
            self._world.events.append("abandon")
            self._world.watcher.wake(key)
        return abandoned

    async def mark_published(self, key: str, label: str) -> None:
        await super().mark_published(key, label)
        self._world.events.append("mark_published")


class FakeWatch:
    """``RedisWatch``: the identity of the Redis server the bridge talks to."""

    def __init__(self) -> None:
        self.identity = "server-a"

    async def current_identity(self) -> str:
        return self.identity


class FakeBarrier:
    """``OutcomeBarrier`` over the real ledger: the replicas acknowledge at once,
    unless ``behind`` says for how many more calls they do not (``-1``: never)."""

    def __init__(self, world: World) -> None:
        self.behind = 0
        self._world = world

    async def confirm(self, key: str) -> Entry | None:
        if self.behind:
            self.behind -= 1 if self.behind > 0 else 0
            self._world.events.append("replicas behind")
            raise ReplicasBehind("0 of 1 Redis replicas acknowledged within 1000 ms")
        self._world.events.append("replicated")
        ledger = self._world.ledger
        assert ledger is not None
        confirmed = await ledger.confirm([key], replicas=0, aof=False, timeout_ms=1000)
        return confirmed.entries[0]


@dataclass(frozen=True)
class Sent:
    kind: str  # "workflow" | "batch" | "compensation"
    epoch: int
    run: int = 0
    keys: tuple[str, ...] = field(default=(), compare=False)  # the orders it carries


class FakeDispatcher:
    """Records what is sent; ``on_workflow(sent)`` plays the workers for a workflow."""

    def __init__(self, events: list[str]) -> None:
        self.sent: list[Sent] = []
        self.on_workflow: Callable[[Sent], None] = lambda sent: None
        self.on_batch: Callable[[Sent], None] = lambda sent: None
        self._events = events

    async def send(self, canvas: Signature) -> None:
        first = canvas.tasks[0]
        if first.task == names.TASK_RESERVE:
            assert canvas.body.task == names.TASK_SETTLE  # chord([reserve, charge], settle)
            order_id, epoch, run, _step = first.id.rsplit(":", 3)
            sent = Sent("workflow", int(epoch), int(run), (order_id,))
        elif first.task == names.TASK_RESERVE_BATCH:
            assert canvas.body.task == names.TASK_SETTLE_BATCH
            members = first.kwargs["members"]
            keys = tuple(m["order_id"] for m in members)
            sent = Sent("batch", members[0]["epoch"], members[0]["run"], keys)
        else:
            assert {t.task for t in canvas.tasks} == {names.TASK_RELEASE, names.TASK_REFUND}
            sent = Sent("compensation", first.kwargs["epoch"])
        self.sent.append(sent)
        self._events.append(f"send {sent.kind}")
        if sent.kind == "workflow":
            self.on_workflow(sent)
        elif sent.kind == "batch":
            self.on_batch(sent)

    def of_kind(self, kind: str) -> list[Sent]:
        return [s for s in self.sent if s.kind == kind]


# --- builders ----------------------------------------------------------------------


@dataclass
class World:
    """One bridge's processor and consumer over fakes at NATS and Celery, and the
    real ledger under a key prefix of its own."""

    events: list[str] = field(default_factory=list)
    settings: BridgeSettings = SETTINGS
    batch_max: int = 1  # above 1: new workflows go through a batcher (group commit)

    def __post_init__(self) -> None:
        self.keys = LedgerKeys(f"test-{uuid.uuid4().hex[:12]}:", "order")
        self.redis = redis.Redis.from_url(REDIS_URL, decode_responses=True)
        self.worker = Ledger(self.redis, self.keys)  # the workers' side
        self.js = FakeJetStream(self.events)
        self.watcher = FakeWatcher()
        self.watch = FakeWatch()
        self.barrier = FakeBarrier(self)
        self.dispatcher = FakeDispatcher(self.events)
        self.metrics = RelayMetrics(NAMES.metrics_prefix)
        self.before_abandon: Callable[[], None] | None = None
        self.ledger: RecordingLedger | None = None  # for the delivery being handled
        self.batcher: Batcher[Any] | None = None  # the last run's
        self.app = OrderApplication(
            create_app(self.settings), limits(self.settings), self.settings.max_message_bytes
        )

    def deliver(self, data: bytes, delivered: int = 1, *, ack_fails: bool = False) -> FakeMsg:
        """One delivery handled to its end; the event log starts afresh."""
        self.events.clear()
        msg = FakeMsg(data, self.events, delivered=delivered, ack_fails=ack_fails)
        self.run(lambda consumer, _processor: consumer.deliver(cast(Any, msg)))
        return msg

    def run(self, job: Callable[[Consumer, Processor[Any]], Any]) -> Any:
        """``job(consumer, processor)`` in an event loop of its own, as one bridge."""

        async def main() -> Any:
            client = redis.asyncio.Redis.from_url(REDIS_URL, decode_responses=True)
            self.ledger = RecordingLedger(client, self.keys, self)
            limits = relay_limits(self.settings)
            self.batcher = self._batcher()
            processor: Processor[Any] = Processor(
                Deps(
                    app=self.app,
                    names=NAMES,
                    limits=limits,
                    js=cast(Any, self.js),
                    ledger=self.ledger,
                    watch=cast(Any, self.watch),
                    barrier=cast(Any, self.barrier),
                    watcher=cast(Any, self.watcher),
                    dispatcher=cast(Any, self.dispatcher),
                    metrics=self.metrics,
                    batcher=self.batcher,
                )
            )
            consumer = Consumer(
                cast(Any, self.js), processor, NAMES, limits, self.metrics, lambda: True
            )
            try:
                return await job(consumer, processor)
            finally:
                await client.aclose()

        return asyncio.run(main())

    def _batcher(self) -> Batcher[Any] | None:
        if self.batch_max < 2:
            return None
        return Batcher(
            cast(Any, self.dispatcher),
            lambda run: self.app.workflow(run.item, run.epoch, run.run),
            self.app.workflow_batch,
            max_size=self.batch_max,
            linger_s=0.05,
            span_prefix=NAMES.span_prefix,
        )

    def deliver_together(self, *orders: bytes) -> list[FakeMsg]:
        """Deliveries of one fetch, handled concurrently (so that they may share a batch)."""
        self.events.clear()
        msgs = [FakeMsg(data, self.events) for data in orders]

        async def job(consumer: Consumer, _processor: Processor[Any]) -> None:
            await asyncio.gather(*(consumer.deliver(cast(Any, msg)) for msg in msgs))

        self.run(job)
        return msgs

    def begin(self, stall_timeout_s: float = 90, **kwargs: Any) -> Begin:
        """The ledger's ``begin`` for :data:`ORDER_ID`, as a bridge that then died."""
        return cast(
            Begin,
            self.run(lambda *_: self._ledger().begin(ORDER_ID, stall_timeout_s, **kwargs)),
        )

    def abandon(self, epoch: int, detail: str) -> bool:
        return cast(bool, self.run(lambda *_: self._ledger().abandon(ORDER_ID, epoch, detail)))

    def _ledger(self) -> RecordingLedger:
        assert self.ledger is not None
        return self.ledger

    def view(self) -> OrderView:
        view = order_view(self.worker.entry(ORDER_ID))
        assert view is not None
        return view

    def hash(self) -> dict[str, str]:
        return cast(dict[str, str], self.redis.hgetall(self.keys.entry(ORDER_ID)))

    def dead_lettered(self, cause: str) -> float | None:
        return self.metrics.registry.get_sample_value(
            "orders_bridge_messages_dead_lettered_total", {"cause": cause}
        )

    # -- the workers' behaviour -------------------------------------------------------

    def finish(self, epoch: int, outcome: Outcome) -> bool:
        """The workflow's last step (``finalize.lua``), and the wake-up its stream
        entry would bring."""
        recorded = self.worker.finalize(outcome.order_id, epoch, *outcome_record(outcome))
        self.watcher.wake(outcome.order_id)
        return recorded

    def report_error(self, epoch: int, detail: str) -> bool:
        """A step gave up on a transient fault (``record_error.lua``)."""
        recorded = self.worker.record_error(ORDER_ID, epoch, detail)
        self.watcher.wake(ORDER_ID)
        return recorded

    def workers_complete(self) -> None:
        self.dispatcher.on_workflow = lambda sent: self.finish(sent.epoch, COMPLETED) and None

    def workers_fail(self, detail: str = "payments: gateway timed out") -> None:
        self.dispatcher.on_workflow = lambda sent: self.report_error(sent.epoch, detail) and None


def order_bytes(order_id: str = ORDER_ID, **changes: Any) -> bytes:
    fields: dict[str, Any] = {
        "order_id": order_id,
        "customer_id": "customer-1",
        "items": (RawItem(product_id="sku-1", quantity=2, unit_price=5.0),),
        "total_amount": 10.0,
        "currency": "USD",
    }
    return codec.encode_order_created(RawOrder(**{**fields, **changes}))


COMPLETED = Outcome(
    order_id=ORDER_ID,
    kind=OutcomeKind.COMPLETED,
    payment_id="pay-1",
    total_minor=1000,
    currency="USD",
)
DLQ_HEADERS = {
    names.HDR_DLQ_SUBJECT: names.SUBJECT_CREATED,
    names.HDR_DLQ_SEQUENCE: str(SEQ),
    names.HDR_MSG_ID: names.dlq_msg_id(SEQ),
}


def the_dead_letter(w: World, deliveries: int) -> Published:
    [letter] = [p for p in w.js.published if p.subject == names.SUBJECT_DLQ_CREATED]
    assert letter.stream == names.DLQ_STREAM
    assert letter.headers.items() >= DLQ_HEADERS.items()
    assert letter.headers[names.HDR_DLQ_DELIVERIES] == str(deliveries)
    assert letter.headers[names.HDR_TRACEPARENT] == "00-abc-def-01"  # kept unchanged
    return letter


def the_outcome(w: World, kind: OutcomeKind) -> dict[str, str | float]:
    subject = names.SUBJECT_COMPLETED if kind is OutcomeKind.COMPLETED else names.SUBJECT_FAILED
    [event] = [p for p in w.js.published if p.subject == subject]
    assert event.stream == names.ORDERS_STREAM
    assert event.headers[names.HDR_MSG_ID] == names.outcome_msg_id(ORDER_ID, kind)
    # W3C context: the outcome continues the order's trace.
    assert set(event.headers) <= {names.HDR_MSG_ID, "traceparent", "baggage"}
    return codec.decode_outcome(kind, event.payload)


# --- poison: dead-lettered at once -------------------------------------------------


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"\xff\xff\xff", "undecodable OrderCreated"),
        (order_bytes("order\x07-1"), "order_id contains control characters"),
    ],
    ids=["undecodable bytes", "order id with control characters"],
)
def test_poison_is_dead_lettered_unchanged_then_terminated(data: bytes, reason: str) -> None:
    w = World()
    msg = w.deliver(data)

    assert msg.disposition() == "term"
    assert w.events == [f"publish {names.SUBJECT_DLQ_CREATED}", "term"]
    letter = the_dead_letter(w, deliveries=1)
    assert letter.payload == data
    assert reason in letter.headers[names.HDR_DLQ_REASON]
    assert w.dispatcher.sent == [] and w.hash() == {}
    assert w.dead_lettered("poison") == 1


def test_a_message_above_the_size_limit_is_dead_lettered_unread() -> None:
    """The relay's own bound, whatever the application's decode would accept."""
    w = World(settings=SETTINGS.model_copy(update={"max_message_bytes": 64}))
    w.app = OrderApplication(create_app(w.settings), limits(w.settings), 1 << 20)
    w.workers_complete()  # were it processed, it would complete
    data = order_bytes(customer_id="c" * 100)
    msg = w.deliver(data)

    assert msg.disposition() == "term"
    letter = the_dead_letter(w, deliveries=1)
    assert letter.payload == data
    reason = f"message is {len(data)} bytes, above the 64-byte limit"
    assert letter.headers[names.HDR_DLQ_REASON] == reason
    assert w.hash() == {} and w.dead_lettered("poison") == 1


def test_a_dead_letter_that_cannot_be_stored_is_nakd_not_terminated() -> None:
    w = World()
    w.js.failing.add(names.SUBJECT_DLQ_CREATED)
    msg = w.deliver(b"\xff\xff\xff")

    assert msg.disposition() == "nak"
    assert w.js.published == []


# --- outcomes ----------------------------------------------------------------------


def test_invalid_order_fails_at_once_without_a_workflow() -> None:
    w = World()
    msg = w.deliver(order_bytes(items=()))

    assert msg.disposition() == "ack"
    assert w.events == ["replicated", f"publish {names.SUBJECT_FAILED}", "mark_published", "ack"]
    failed = the_outcome(w, OutcomeKind.FAILED)
    assert failed["reason"] == FailureReason.INVALID_ORDER.value
    assert failed["detail"] == "order has no items"
    assert w.dispatcher.sent == []
    assert w.view().published


def test_valid_order_runs_its_workflow_once_and_acks_after_the_outcome_is_stored() -> None:
    w = World()
    w.workers_complete()
    msg = w.deliver(order_bytes())

    assert msg.disposition() == "ack"
    assert w.events == [
        "send workflow",
        "replicated",
        f"publish {names.SUBJECT_COMPLETED}",
        "mark_published",
        "ack",
    ]
    assert w.dispatcher.sent == [Sent("workflow", epoch=1, run=1)]
    completed = the_outcome(w, OutcomeKind.COMPLETED)
    assert completed["payment_id"] == "pay-1" and completed["total_amount"] == 10.0
    assert w.view().published
    assert w.watcher.waiters == {}


def test_a_stalled_workflow_is_sent_again_as_a_new_run() -> None:
    w = World()
    runs = iter([lambda sent: None, lambda sent: w.finish(sent.epoch, COMPLETED)])
    w.dispatcher.on_workflow = lambda sent: next(runs)(sent)
    msg = w.deliver(order_bytes())

    assert msg.disposition() == "ack"
    assert w.dispatcher.sent == [Sent("workflow", 1, 1), Sent("workflow", 1, 2)]
    assert the_outcome(w, OutcomeKind.COMPLETED)["order_id"] == ORDER_ID


def test_already_published_order_is_only_acked() -> None:
    w = World()
    w.workers_complete()
    w.deliver(order_bytes())
    w.js.published.clear()

    msg = w.deliver(order_bytes(), delivered=2)

    assert msg.disposition() == "ack"
    assert w.events == ["ack"]
    assert w.js.published == [] and len(w.dispatcher.sent) == 1


def test_an_ack_that_fails_is_logged_and_the_redelivery_is_only_acked(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The ack is the last effect: when NATS is gone by then, the message returns
    after ``ack_wait`` and finds its outcome published."""
    w = World()
    w.workers_complete()
    w.deliver(order_bytes(), ack_fails=True)  # does not raise out of the consumer

    assert "ack failed" in caplog.text
    assert w.metrics.registry.get_sample_value("orders_bridge_messages_acked_total") == 0
    msg = w.deliver(order_bytes(), delivered=2)

    assert msg.disposition() == "ack"
    assert w.events == ["ack"]
    assert [p.subject for p in w.js.published] == [names.SUBJECT_COMPLETED]
    assert len(w.dispatcher.sent) == 1


def test_outcome_decided_but_not_published_is_published_without_a_workflow() -> None:
    w = World()
    w.begin(90)
    w.finish(1, COMPLETED)  # then the bridge crashed before publishing

    msg = w.deliver(order_bytes(), delivered=2)

    assert msg.disposition() == "ack"
    assert w.events == ["replicated", f"publish {names.SUBJECT_COMPLETED}", "mark_published", "ack"]
    assert w.dispatcher.sent == []


def test_outcome_that_jetstream_does_not_store_is_nakd_then_published_on_redelivery() -> None:
    w = World()
    w.workers_complete()
    w.js.failing.add(names.SUBJECT_COMPLETED)
    msg = w.deliver(order_bytes())

    assert msg.disposition() == "nak"
    assert "ack" not in w.events and not w.view().published

    w.js.failing.clear()
    msg = w.deliver(order_bytes(), delivered=2)

    assert msg.disposition() == "ack"
    assert w.events == ["replicated", f"publish {names.SUBJECT_COMPLETED}", "mark_published", "ack"]
    assert len(w.dispatcher.sent) == 1  # the decided outcome, not a second workflow


def test_outcome_refused_for_a_while_is_retried_in_place_without_spending_a_delivery() -> None:
    """A stream electing its leader refuses publishes for seconds: retried within
    ``PUBLISH_RETRY_WINDOW``, not nak'd (each nak spends a delivery)."""
    w = World(settings=SETTINGS.model_copy(update={"publish_retry_window": timedelta(seconds=5)}))
    w.workers_complete()
    w.js.refusals[names.SUBJECT_COMPLETED] = 2
    msg = w.deliver(order_bytes())

    assert msg.disposition() == "ack"
    assert w.events == [
        "send workflow",
        "replicated",
        f"publish {names.SUBJECT_COMPLETED} (failed)",
        f"publish {names.SUBJECT_COMPLETED} (failed)",
        f"publish {names.SUBJECT_COMPLETED}",
        "mark_published",
        "ack",
    ]


def test_dead_letter_refused_for_a_while_is_retried_in_place() -> None:
    w = World(settings=SETTINGS.model_copy(update={"publish_retry_window": timedelta(seconds=5)}))
    w.js.refusals[names.SUBJECT_DLQ_CREATED] = 1
    msg = w.deliver(b"\xff\xff\xff")

    assert msg.disposition() == "term"
    the_dead_letter(w, deliveries=1)


# --- Redis replicas and failover -----------------------------------------------------


def test_outcome_waits_in_place_for_lagging_replicas_and_is_published_once_they_confirm() -> None:
    w = World(settings=SETTINGS.model_copy(update={"publish_retry_window": timedelta(seconds=5)}))
    w.workers_complete()
    w.barrier.behind = 2
    msg = w.deliver(order_bytes())

    assert msg.disposition() == "ack"
    assert w.events == [
        "send workflow",
        "replicas behind",
        "replicas behind",
        "replicated",
        f"publish {names.SUBJECT_COMPLETED}",
        "mark_published",
        "ack",
    ]


def test_outcome_the_replicas_never_confirm_is_not_published_and_the_delivery_is_nakd() -> None:
    w = World()
    w.workers_complete()
    w.barrier.behind = -1
    msg = w.deliver(order_bytes())

    assert msg.disposition() == "nak"
    assert w.js.published == [] and not w.view().published
    assert w.view().outcome == COMPLETED  # decided, held back until the replicas have it

    w.barrier.behind = 0
    msg = w.deliver(order_bytes(), delivered=2)
    assert msg.disposition() == "ack"
    assert len(w.dispatcher.sent) == 1
    the_outcome(w, OutcomeKind.COMPLETED)


def test_a_redis_failover_re_sends_the_workflow_at_once_not_after_the_stall_timeout() -> None:
    """The broker messages of a run sent through the old primary may be gone."""
    w = World(settings=SETTINGS.model_copy(update={"workflow_stall_timeout": timedelta(hours=1)}))

    def workers(sent: Sent) -> None:
        if sent.run == 1:  # its messages die with the primary; the bridge notices
            w.watch.identity = "server-b"
            asyncio.get_running_loop().call_soon(w.watcher.wake, ORDER_ID)
        else:
            w.finish(sent.epoch, COMPLETED)

    w.dispatcher.on_workflow = workers
    msg = w.deliver(order_bytes())

    assert msg.disposition() == "ack"
    assert w.dispatcher.sent == [Sent("workflow", 1, 1), Sent("workflow", 1, 2)]
    assert (
        w.metrics.registry.get_sample_value(
            "orders_bridge_workflows_sent_total", {"cause": "failover"}
        )
        == 1
    )
    the_outcome(w, OutcomeKind.COMPLETED)


def test_a_redelivery_after_a_failover_re_sends_a_run_sent_through_the_old_server() -> None:
    w = World(settings=SETTINGS.model_copy(update={"workflow_stall_timeout": timedelta(hours=1)}))
    w.begin(3600, server=w.watch.identity)  # then the bridge died
    w.watch.identity = "server-b"
    w.workers_complete()

    msg = w.deliver(order_bytes(), delivered=2)

    assert msg.disposition() == "ack"
    assert w.dispatcher.sent == [Sent("workflow", 1, 2)]


def test_state_a_failover_lost_is_restored_with_a_new_run_and_the_order_completes() -> None:
    w = World(settings=SETTINGS.model_copy(update={"workflow_stall_timeout": timedelta(hours=1)}))

    def workers(sent: Sent) -> None:
        if sent.run == 1:  # the new primary never heard of the order
            w.redis.delete(w.keys.entry(ORDER_ID))
            asyncio.get_running_loop().call_soon(w.watcher.wake, ORDER_ID)
        else:
            w.finish(sent.epoch, COMPLETED)

    w.dispatcher.on_workflow = workers
    msg = w.deliver(order_bytes())

    assert msg.disposition() == "ack"
    assert w.dispatcher.sent == [Sent("workflow", 1, 1), Sent("workflow", 1, 2)]
    assert w.view().order_json  # restored with the order's content
    the_outcome(w, OutcomeKind.COMPLETED)


def test_a_lost_entry_that_returns_dead_lettered_is_sent_again_alone() -> None:
    """A failover lost the entry (LOST), and before the bridge restores it the entry is
    back, dead-lettered (a replay of its dead letter got there first): the restore
    starts a new epoch, cause ``new``. That re-send goes alone, never through the
    batcher, whose ticket nobody would finish (its canvas would count as at work
    for ever, holding every later send)."""
    w = World(
        settings=SETTINGS.model_copy(update={"workflow_stall_timeout": timedelta(hours=1)}),
        batch_max=8,
    )

    def workers(sent: Sent) -> None:
        if sent.epoch == 1:  # the new primary never heard of the order
            w.redis.delete(w.keys.entry(ORDER_ID))
            asyncio.get_running_loop().call_soon(w.watcher.wake, ORDER_ID)
        else:
            w.finish(sent.epoch, COMPLETED)

    async def back_dead_lettered() -> str:
        w.redis.hset(w.keys.entry(ORDER_ID), mapping={"epoch": 1, "run": 1, "dead": "1"})
        return w.watch.identity

    w.dispatcher.on_workflow = workers
    w.watch.current_identity = back_dead_lettered  # type: ignore[method-assign]
    msg = w.deliver(order_bytes())

    assert msg.disposition() == "ack"
    assert w.dispatcher.sent == [Sent("workflow", 1, 1), Sent("workflow", 2, 1)]
    assert w.batcher is not None and w.batcher.in_flight == 0
    the_outcome(w, OutcomeKind.COMPLETED)


def test_an_outcome_gone_before_it_is_replicated_is_not_published() -> None:
    w = World()
    w.workers_complete()
    original = w.barrier.confirm

    async def failed_over(order_id: str) -> Entry | None:
        w.redis.hdel(w.keys.entry(order_id), "outcome")  # the new primary had not received it
        return await original(order_id)

    w.barrier.confirm = failed_over  # type: ignore[method-assign]
    msg = w.deliver(order_bytes())

    assert msg.disposition() == "nak"
    assert w.js.published == []


# --- transient failures: nak, then give up -----------------------------------------


def test_a_batch_that_fails_as_a_whole_sends_each_order_alone_without_a_nak() -> None:
    """A batch task that kills its worker (or spends its retries) fails every member:
    that says nothing about any one order, so each is sent alone at once, in the same
    delivery, and no delivery is spent; alone, each completes."""
    w = World(batch_max=8)

    def batch_lost(sent: Sent) -> None:
        for key in sent.keys:
            w.worker.record_error(key, sent.epoch, "inventory.reserve_batch lost its worker")
            w.watcher.wake(key)

    def completes(sent: Sent) -> None:
        [key] = sent.keys
        w.finish(sent.epoch, COMPLETED.model_copy(update={"order_id": key}))

    w.dispatcher.on_batch = batch_lost
    w.dispatcher.on_workflow = completes
    msgs = w.deliver_together(order_bytes("order-a"), order_bytes("order-b"))

    assert [m.disposition() for m in msgs] == ["ack", "ack"]
    [(kind, run, keys), *alone] = [(s.kind, s.run, s.keys) for s in w.dispatcher.sent]
    assert (kind, run, sorted(keys)) == ("batch", 1, ["order-a", "order-b"])
    assert sorted(alone) == [("workflow", 2, ("order-a",)), ("workflow", 2, ("order-b",))]
    assert w.batcher is not None and w.batcher.in_flight == 0  # its canvas is over
    assert {p.subject for p in w.js.published} == {names.SUBJECT_COMPLETED}
    assert len(w.js.published) == 2
    retried = w.metrics.registry.get_sample_value(
        "orders_bridge_workflows_sent_total", {"cause": "retry"}
    )
    assert retried == 2


def test_a_resend_poll_restarts_a_failed_run_but_never_a_dead_letter() -> None:
    w = World()
    first = w.begin(input="{}")
    assert (first.next, first.run) == (Next.START, 1)
    w.worker.record_error(ORDER_ID, first.epoch, "the batch failed")
    again = w.begin(poll=True, resend=True, known=(first.epoch, 1))
    assert (again.next, again.epoch, again.run, again.cause) == (Next.START, 1, 2, "retry")
    assert w.abandon(first.epoch, "given up")
    dead = w.begin(poll=True, resend=True, known=(first.epoch, 2))
    assert (dead.next, dead.epoch) == (Next.ERRORED, first.epoch)  # not a new epoch
    assert "dead-lettered" in dead.error


def test_an_order_sent_alone_through_the_batcher_fails_on_its_own() -> None:
    """A batch of one is the order's own workflow: its failure is a nak, as unbatched."""
    w = World(batch_max=8)
    w.workers_fail()
    msg = w.deliver(order_bytes())

    assert msg.disposition() == "nak"
    assert w.events == ["send workflow", "nak"]
    assert w.batcher is not None and w.batcher.in_flight == 0  # its canvas is over


def test_workflow_error_before_the_last_delivery_is_nakd() -> None:
    w = World()
    w.workers_fail()
    msg = w.deliver(order_bytes())

    assert msg.disposition() == "nak"
    assert w.events == ["send workflow", "nak"]
    assert w.js.published == []
    assert w.watcher.waiters == {}


def test_workflow_error_at_the_last_delivery_compensates_and_dead_letters() -> None:
    w = World()
    w.workers_fail("payments: gateway timed out")
    for delivered in range(1, MAX_DELIVERIES):
        assert w.deliver(order_bytes(), delivered).disposition() == "nak"

    msg = w.deliver(order_bytes(), MAX_DELIVERIES)

    assert msg.disposition() == "term"
    assert w.events == [
        "send workflow",
        "abandon",
        "send compensation",
        "replicated",
        f"publish {names.SUBJECT_DLQ_CREATED}",
        "term",
    ]
    assert w.dispatcher.sent[-1] == Sent("compensation", epoch=1)
    reason = the_dead_letter(w, MAX_DELIVERIES).headers[names.HDR_DLQ_REASON]
    assert f"outlasted {MAX_DELIVERIES} deliveries" in reason
    assert "payments: gateway timed out" in reason
    view = w.view()
    assert (view.status, view.reason, view.outcome) == ("FAILED", DEAD_LETTERED, None)
    assert w.dead_lettered("retries_exhausted") == 1


def test_a_delivery_past_the_last_finishes_an_earlier_give_up_without_a_new_workflow() -> None:
    w = World()
    w.workers_fail()
    w.deliver(order_bytes())
    # That give-up marked the order dead, then its dead letter was never stored.
    w.abandon(1, "transient failures outlasted 3 deliveries: x")
    w.events.clear()

    msg = w.deliver(order_bytes(), MAX_DELIVERIES + 1)

    assert msg.disposition() == "term"
    assert w.events == [
        "abandon",
        "send compensation",
        "replicated",
        f"publish {names.SUBJECT_DLQ_CREATED}",
        "term",
    ]
    assert len(w.dispatcher.of_kind("workflow")) == 1
    letter = the_dead_letter(w, MAX_DELIVERIES + 1)
    assert letter.headers[names.HDR_DLQ_REASON].endswith("outlasted 3 deliveries: x")


def test_a_delivery_past_the_last_of_a_healthy_workflow_completes_it() -> None:
    """A shutdown or crash can spend the last delivery; a healthy order still completes."""
    w = World()
    w.workers_complete()

    msg = w.deliver(order_bytes(), MAX_DELIVERIES + 1)

    assert msg.disposition() == "ack"
    assert w.dispatcher.of_kind("compensation") == []
    the_outcome(w, OutcomeKind.COMPLETED)


def test_giving_up_publishes_an_outcome_recorded_meanwhile_instead_of_dead_lettering() -> None:
    w = World()
    w.workers_fail()
    w.deliver(order_bytes())
    w.finish(1, COMPLETED)  # the workflow's last retry succeeded after all

    msg = w.deliver(order_bytes(), MAX_DELIVERIES + 1)

    assert msg.disposition() == "ack"
    assert w.events == ["replicated", f"publish {names.SUBJECT_COMPLETED}", "mark_published", "ack"]
    assert w.dispatcher.of_kind("compensation") == []


def test_an_outcome_that_wins_the_race_with_abandon_is_published() -> None:
    w = World()
    w.workers_fail()
    w.before_abandon = lambda: w.finish(1, COMPLETED) and None

    msg = w.deliver(order_bytes(), MAX_DELIVERIES)

    assert msg.disposition() == "ack"
    assert w.events == [
        "send workflow",
        "replicated",
        f"publish {names.SUBJECT_COMPLETED}",
        "mark_published",
        "ack",
    ]
    assert w.view().status == "COMPLETED"


def test_giving_up_when_the_dead_letter_cannot_be_stored_naks_then_finishes_later() -> None:
    w = World()
    w.workers_fail()
    w.js.failing.add(names.SUBJECT_DLQ_CREATED)
    msg = w.deliver(order_bytes(), MAX_DELIVERIES)

    assert msg.disposition() == "nak"
    assert "term" not in w.events
    assert w.view().reason == DEAD_LETTERED

    w.js.failing.clear()
    msg = w.deliver(order_bytes(), MAX_DELIVERIES + 1)

    assert msg.disposition() == "term"
    the_dead_letter(w, MAX_DELIVERIES + 1)


def test_last_delivery_the_server_makes_is_never_nakd_when_the_outcome_cannot_be_stored() -> None:
    """JetStream stops delivering at ``max_deliver`` (``MAX_DELIVERIES`` + grace): a nak
    there strands the message with neither an outcome event nor a dead letter."""
    w = World()
    w.workers_complete()
    w.js.failing.add(names.SUBJECT_COMPLETED)
    last = MAX_DELIVERIES + SERVER_DELIVERY_GRACE
    for delivered in range(1, last):
        assert w.deliver(order_bytes(), delivered).disposition() == "nak"

    msg = w.deliver(order_bytes(), last)

    assert msg.disposition() == "term", "the server will not deliver this message again"
    the_dead_letter(w, last)


# --- shutdown ----------------------------------------------------------------------


def test_cancellation_propagates_and_leaves_the_message_to_the_consumer() -> None:
    w = World()  # the workflow never reports
    msg = FakeMsg(order_bytes(), w.events)

    async def shut_down_while_waiting(consumer: Consumer, _processor: Any) -> None:
        task = asyncio.create_task(consumer.deliver(cast(Any, msg)))
        while not w.dispatcher.sent:
            await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    w.run(shut_down_while_waiting)

    assert msg.calls == []  # the consumer naks it on the way out
    assert w.watcher.waiters == {}


def test_a_later_message_with_other_content_follows_the_order_as_first_stored() -> None:
    """Two versions of one order id (a buggy producer) never race each other's effects:
    the first content is the order; an invalid second version cannot fail it."""
    w = World()
    w.workers_complete()
    first = RawOrder(
        order_id=ORDER_ID,
        customer_id="customer-1",
        items=(RawItem(product_id="sku-1", quantity=2, unit_price=5.0),),
        total_amount=10.0,
        currency="USD",
    )
    w.begin(60, input=first.model_dump_json())

    msg = w.deliver(order_bytes(total_amount=99.0))  # same id, a total that does not match

    assert msg.disposition() == "ack"
    the_outcome(w, OutcomeKind.COMPLETED)
    assert [p.subject for p in w.js.published] == [names.SUBJECT_COMPLETED]


# --- tracing -----------------------------------------------------------------------


def produced(data: bytes) -> tuple[dict[str, str], int]:
    """Headers of a message published under a producer's span, and that span's id."""
    headers = {names.HDR_MSG_ID: ORDER_ID}
    with trace.get_tracer("producer").start_as_current_span("publish ORDER.created") as span:
        propagate.inject(headers)
    return headers, span.get_span_context().span_id


def test_a_delivery_continues_the_producers_trace_to_its_outcome(
    spans: InMemorySpanExporter,
) -> None:
    w = World()
    w.workers_complete()
    msg = FakeMsg(order_bytes(), w.events)
    msg.headers, producer_span_id = produced(msg.data)
    w.run(lambda consumer, _processor: consumer.deliver(cast(Any, msg)))

    by_name = {s.name: s for s in spans.get_finished_spans()}
    process, publish = by_name["process ORDER.created"], by_name["publish ORDER.completed"]
    assert process.kind is SpanKind.CONSUMER and publish.kind is SpanKind.PRODUCER
    assert _parent(process) == producer_span_id
    assert _parent(publish) == process.context.span_id
    assert process.context.trace_id == publish.context.trace_id
    assert process.attributes is not None and publish.attributes is not None
    assert process.attributes["messaging.system"] == "nats"
    assert process.attributes["messaging.destination.name"] == names.SUBJECT_CREATED
    assert process.attributes["messaging.message.id"] == ORDER_ID
    assert process.attributes["orders.disposition"] == "ack"
    assert process.attributes[ORDER_ID_ATTRIBUTE] == ORDER_ID
    assert publish.attributes[ORDER_ID_ATTRIBUTE] == ORDER_ID
    # The outcome event hands the trace on to whoever consumes it.
    [outcome] = [p for p in w.js.published if p.subject == names.SUBJECT_COMPLETED]
    assert f"{publish.context.span_id:016x}" in outcome.headers["traceparent"]


def test_a_nakd_delivery_is_an_error_span_with_the_reason(spans: InMemorySpanExporter) -> None:
    w = World()
    w.workers_fail("payments: gateway timed out")
    w.deliver(order_bytes())

    [process] = [s for s in spans.get_finished_spans() if s.name.startswith("process")]
    assert process.attributes is not None
    assert process.attributes["orders.disposition"] == "nak"
    assert process.status.status_code is StatusCode.ERROR
    assert "gateway timed out" in (process.status.description or "")


def test_poison_has_a_term_span_and_keeps_its_traceparent(spans: InMemorySpanExporter) -> None:
    w = World()
    msg = w.deliver(b"\xff\xff\xff")

    assert msg.disposition() == "term"
    names_ = [s.name for s in spans.get_finished_spans()]
    assert names_ == [f"publish {names.SUBJECT_DLQ_CREATED}", f"process {names.SUBJECT_CREATED}"]
    the_dead_letter(w, deliveries=1)  # asserts the original traceparent is kept


def _parent(span: ReadableSpan) -> int | None:
    return span.parent.span_id if span.parent is not None else None
