"""The order application as the relay sees it: ``OrderCreated`` in, a chord per
order, ``ORDER.completed`` / ``ORDER.failed`` out (``shared/CONTRACT.md``).

Each hook is a line or two over the codec, the domain and the workflow; the
relay (:mod:`relay.processor`) does the rest.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, replace

from celery import Celery
from celery.canvas import Signature
from nats.js import JetStreamContext
from opentelemetry import propagate

from bridge import codec
from bridge.settings import BridgeSettings, Topology
from bridge.tracing import order_context
from orders import names
from orders.adapters import redis_keys
from orders.adapters.order_state import outcome_record
from orders.domain.model import FailureReason, Invalid, Order, Outcome, OutcomeKind, RawOrder
from orders.domain.settlement import failed_outcome
from orders.domain.validation import Limits, unusable_order_id, validate_order
from orders.workflow import BatchMember, batch_workflow, compensation, order_workflow
from relay import config
from relay.application import Decided, OutcomeMessage, Run
from relay.topology import ensure_topology

NAMES = config.Names(
    stream=names.ORDERS_STREAM,
    subjects=names.ORDERS_SUBJECTS,
    input_subject=names.SUBJECT_CREATED,
    consumer=names.DURABLE_CONSUMER,
    dlq_stream=names.DLQ_STREAM,
    dlq_subjects=names.DLQ_SUBJECTS,
    dlq_subject=names.SUBJECT_DLQ_CREATED,
    dlq_reason_header=names.HDR_DLQ_REASON,
    dlq_subject_header=names.HDR_DLQ_SUBJECT,
    dlq_sequence_header=names.HDR_DLQ_SEQUENCE,
    dlq_deliveries_header=names.HDR_DLQ_DELIVERIES,
    redis_prefix=redis_keys.LEDGER.prefix,
    entry_word=redis_keys.LEDGER.entry_word,
    span_prefix="orders",
    metrics_prefix="orders_bridge",
)


def topology_limits(settings: Topology) -> config.Limits:
    """What the relay's streams and consumer are made of; the rest at its defaults."""
    return config.Limits(
        max_deliveries=settings.max_deliveries,
        ack_wait_s=settings.ack_wait.total_seconds(),
        max_in_flight=settings.bridge_max_in_flight,
        max_age_s=settings.orders_max_age.total_seconds(),
        duplicate_window_s=settings.orders_duplicate_window.total_seconds(),
        stream_replicas=settings.stream_replicas,
    )


def relay_limits(settings: BridgeSettings) -> config.Limits:
    """The relay's timing from the bridge's settings (the README's table)."""
    return replace(
        topology_limits(settings),
        fetch_batch=settings.bridge_fetch_batch,
        max_message_bytes=settings.max_message_bytes,
        stall_timeout_s=settings.workflow_stall_timeout.total_seconds(),
        consumer_stall_timeout_s=settings.consumer_stall_timeout.total_seconds(),
        drain_timeout_s=settings.drain_timeout.total_seconds(),
        publish_retry_window_s=settings.publish_retry_window.total_seconds(),
        nak_delay_max_s=settings.nak_delay_max.total_seconds(),
        redis_wait_replicas=settings.redis_wait_replicas,
        redis_wait_timeout_ms=settings.redis_wait_timeout_ms,
        redis_wait_aof=settings.redis_wait_aof,
        workflow_batch_max=settings.workflow_batch_max,
        workflow_batch_linger_s=settings.workflow_batch_linger_ms / 1000,
        workflow_batches_in_flight=settings.workflow_batches_in_flight,
        workflow_batch_hold_s=settings.workflow_batch_hold_ms / 1000,
    )


@dataclass(frozen=True, slots=True)
class DecodedOrder:
    """An order as delivered (or as first stored), validated once, when parsed."""

    raw: RawOrder
    verdict: Order | Invalid


class OrderApplication:
    """:class:`relay.application.Application` for orders: the item is a
    :class:`DecodedOrder`, so each hook reads the one validation of it."""

    def __init__(self, celery: Celery, limits: Limits, max_message_bytes: int) -> None:
        self._celery = celery
        self._limits = limits
        self._max_bytes = max_message_bytes

    def decode(self, data: bytes) -> DecodedOrder:
        raw = codec.decode_order_created(data, max_bytes=self._max_bytes)
        if problem := unusable_order_id(raw.order_id, self._limits):
            raise codec.PoisonMessage(problem)
        return self._decoded(raw)

    def key(self, item: DecodedOrder) -> str:
        return item.raw.order_id

    def dump(self, item: DecodedOrder) -> str:
        return item.raw.model_dump_json()

    def load(self, stored: str) -> DecodedOrder:
        return self._decoded(RawOrder.model_validate_json(stored))

    def immediate_outcome(self, item: DecodedOrder) -> Decided | None:
        if not isinstance(item.verdict, Invalid):
            return None
        outcome = failed_outcome(
            item.raw.order_id, FailureReason.INVALID_ORDER, item.verdict.detail
        )
        return Decided(*outcome_record(outcome))

    def workflow(self, item: DecodedOrder, epoch: int, run: int) -> Signature:
        if not isinstance(item.verdict, Order):  # immediate_outcome answered it
            raise TypeError(f"order {item.raw.order_id} is invalid: {item.verdict.detail}")
        return order_workflow(self._celery, item.verdict, epoch, run)

    def workflow_batch(self, runs: Sequence[Run[DecodedOrder]]) -> Signature:
        return batch_workflow(self._celery, [_member(run) for run in runs])

    def compensation(self, item: DecodedOrder, epoch: int) -> Signature | None:
        if not isinstance(item.verdict, Order):
            return None  # never sent a workflow: nothing to undo
        return compensation(self._celery, item.verdict, epoch)

    def outcome_message(self, key: str, outcome: str) -> OutcomeMessage:
        decided = Outcome.model_validate_json(outcome)
        completed = decided.kind is OutcomeKind.COMPLETED
        return OutcomeMessage(
            subject=names.SUBJECT_COMPLETED if completed else names.SUBJECT_FAILED,
            data=codec.encode_outcome(decided),
            msg_id=names.outcome_msg_id(key, decided.kind),
            label=decided.kind.value,
            reason=decided.reason.value if decided.reason else "",
        )

    def scope(self, key: str) -> AbstractContextManager[None]:
        return order_context(key)

    def _decoded(self, raw: RawOrder) -> DecodedOrder:
        return DecodedOrder(raw, validate_order(raw, self._limits))


def _member(run: Run[DecodedOrder]) -> BatchMember:
    """One order of a batch; its trace taken in its own context (the batch is sent
    outside every order's)."""
    order = run.item.verdict
    if not isinstance(order, Order):  # immediate_outcome answered it
        raise TypeError(f"order {run.key} is invalid: {order.detail}")
    trace: dict[str, str] = {}
    run.context.run(propagate.inject, trace)
    return BatchMember(
        order_id=run.key,
        epoch=run.epoch,
        run=run.run,
        order=order.model_dump(mode="json"),
        trace=trace,
    )


async def ensure_order_topology(js: JetStreamContext, settings: Topology) -> None:
    """The contract's streams and the bridge's durable consumer, created if missing."""
    await ensure_topology(js, NAMES, topology_limits(settings))
