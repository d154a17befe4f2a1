"""What the bridge does with one ``ORDER.created`` message.

Every delivery ends in exactly one of:

- **ack**: the outcome event is stored in JetStream (now or earlier);
- **nak with a delay**: an infrastructure fault; the next delivery tries again;
- **term** after the message is stored in the dead-letter stream: poison, or
  transient faults that outlasted ``MAX_DELIVERIES`` (after compensation).

Order of effects, so that a crash between any two lines loses nothing and
repeats nothing: outcome recorded in Redis -> the Redis replicas acknowledge it
(``bridge.redis_watch``: a failover cannot lose it) -> outcome event stored in
JetStream (``Nats-Msg-Id`` dedups a re-publish) -> ``published`` recorded -> ack.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass

from celery import Celery
from nats.aio.msg import Msg
from nats.js import JetStreamContext

from bridge import backoff, codec, tracing
from bridge.completions import CompletionWatcher
from bridge.dead_letter import dead_letter
from bridge.dispatch import Dispatcher
from bridge.metrics import BridgeMetrics
from bridge.redis_watch import OutcomeBarrier, RedisWatch, ReplicasBehind
from bridge.store import store
from bridge.topology import SERVER_DELIVERY_GRACE
from orders import names
from orders.adapters.order_state import AsyncOrderState, Begin, Next, OrderView
from orders.domain.model import FailureReason, Invalid, Order, Outcome, OutcomeKind, RawOrder
from orders.domain.settlement import failed_outcome
from orders.domain.validation import Limits, unusable_order_id, validate_order
from orders.settings import Settings
from orders.workflow import compensation, order_workflow

log = logging.getLogger(__name__)

NATS_REQUEST_TIMEOUT_S = 5.0
_NAK_DELAY_FIRST_S = 0.5
_REPLICA_PAUSE_FIRST_S = 0.2
_REPLICA_PAUSE_MAX_S = 3.0


class WorkflowFailed(Exception):
    """The workflow reported a failure after its retries (or the order was dead-lettered
    by another bridge meanwhile)."""


class OutcomeLost(Exception):
    """Redis no longer holds the outcome it reported (a failover to a replica that had
    not received it): the next delivery finds out what the new server has."""


@dataclass(frozen=True, slots=True)
class Deps:
    js: JetStreamContext
    state: AsyncOrderState
    watch: RedisWatch
    barrier: OutcomeBarrier
    watcher: CompletionWatcher
    dispatcher: Dispatcher
    celery: Celery
    settings: Settings
    limits: Limits
    metrics: BridgeMetrics


class OrderProcessor:
    def __init__(self, deps: Deps) -> None:
        self._d = deps
        self._stall_s = deps.settings.workflow_stall_timeout.total_seconds()
        self._poll_s = min(5.0, self._stall_s / 3)
        self._publish_patience_s = deps.settings.publish_retry_window.total_seconds()

    async def handle(self, msg: Msg) -> None:
        """Process one delivery to its single disposition. Never raises except on
        cancellation (shutdown), where the caller naks."""
        started = time.monotonic()
        try:
            with tracing.process_span(msg):
                await self._handle(msg)
        finally:
            self._d.metrics.latency.observe(time.monotonic() - started)

    async def _handle(self, msg: Msg) -> None:
        deliveries = msg.metadata.num_delivered
        try:
            raw = self._decode(msg)
        except codec.PoisonMessage as exc:
            await self._dead_letter(msg, exc.reason, cause="poison")
            return
        with tracing.order_context(raw.order_id):
            try:
                earlier = None
                if deliveries > self._d.settings.max_deliveries:
                    earlier = await self._given_up_reason(raw.order_id)
                if earlier is not None:
                    # An earlier delivery gave up but its dead-lettering did not complete.
                    await self._give_up(msg, raw, deliveries, earlier, already_reasoned=True)
                else:
                    await self._process(msg, raw)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # every infrastructure fault ends the same way
                detail = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
                log.warning("delivery %d failed: %s", deliveries, detail)
                if self._should_give_up(exc, deliveries):
                    await self._give_up(msg, raw, deliveries, detail)
                else:
                    await self._nak(msg, deliveries, detail)

    def _should_give_up(self, exc: Exception, deliveries: int) -> bool:
        """Only a workflow that failed after its retries spends the delivery budget.

        A fault of the bridge's own reach (Redis or NATS unreachable) says nothing
        about the order, and giving up then could dead-letter an order whose
        workflow completes once the fault heals: keep naking it until the server's
        last delivery.
        """
        max_deliveries = self._d.settings.max_deliveries
        if isinstance(exc, WorkflowFailed):
            return deliveries >= max_deliveries
        return deliveries >= max_deliveries + SERVER_DELIVERY_GRACE

    def _decode(self, msg: Msg) -> RawOrder:
        raw = codec.decode_order_created(msg.data, max_bytes=self._d.settings.max_message_bytes)
        if problem := unusable_order_id(raw.order_id, self._d.limits):
            raise codec.PoisonMessage(problem)
        return raw

    async def _process(self, msg: Msg, delivered: RawOrder) -> None:
        d = self._d
        delivered_json = delivered.model_dump_json()
        begin = await d.state.begin(
            delivered.order_id, self._stall_s, order_json=delivered_json, server=d.watch.identity
        )
        # The order as first stored: what every send of its workflow must carry. Usually
        # the one just delivered, which need not be parsed back from its own JSON.
        stored_json = begin.order_json or delivered_json
        raw = (
            delivered
            if stored_json == delivered_json
            else RawOrder.model_validate_json(stored_json)
        )
        verdict = validate_order(raw, d.limits)
        if begin.next is Next.DONE:
            d.metrics.duplicates.inc()
            await self._ack(msg)
            return
        if begin.next in (Next.START, Next.ATTACH):
            if isinstance(verdict, Invalid):
                outcome = failed_outcome(raw.order_id, FailureReason.INVALID_ORDER, verdict.detail)
                await d.state.finalize(begin.epoch, outcome)
            elif await self._run_workflow(verdict, begin, stored_json):
                d.metrics.duplicates.inc()
                await self._ack(msg)
                return
        outcome = await self._replicated_outcome(raw.order_id)
        await self._publish_outcome(outcome)
        await d.state.mark_published(raw.order_id, outcome.kind)
        await self._ack(msg)

    async def _run_workflow(self, order: Order, begin: Begin, order_json: str) -> bool:
        """Send (or re-attach to) the workflow and wait for its outcome to be recorded.
        Returns ``True`` when another bridge already published the outcome.

        ``order_json`` is the order as stored, to restore a state that a Redis
        failover lost."""
        d = self._d
        order_id = order.order_id
        event = d.watcher.expect(order_id)
        try:
            if begin.next is Next.START:
                await self._send(order, begin.epoch, begin.run, begin.cause or "new")
            known = (begin.epoch, begin.run)
            while True:
                await _woken_or_timeout(event, self._poll_s)
                server = d.watch.identity
                poll = await d.state.begin(
                    order_id, self._stall_s, poll=True, server=server, known=known
                )
                if poll.next is Next.LOST:
                    log.warning("order %s: Redis lost its state (a failover?); restoring", order_id)
                    # Restored as sent through the server Redis is now, not the old one.
                    server = await d.watch.current_identity()
                    poll = await d.state.begin(
                        order_id, self._stall_s, order_json=order_json, server=server, known=known
                    )
                if poll.next is Next.PUBLISH:
                    return False
                if poll.next is Next.DONE:
                    return True
                if poll.next is Next.ERRORED:
                    raise WorkflowFailed(poll.error)
                if poll.next is Next.START:
                    log.warning(
                        "order %s: workflow %s, sending run %d", order_id, poll.cause, poll.run
                    )
                    await self._send(order, poll.epoch, poll.run, poll.cause or "stalled")
                    known = (poll.epoch, poll.run)
        finally:
            d.watcher.forget(order_id, event)

    async def _replicated_outcome(self, order_id: str) -> Outcome:
        view = await self._replicated(order_id)
        if view is None or view.outcome is None:
            raise OutcomeLost("the order's outcome is no longer in Redis")
        return view.outcome

    async def _replicated(self, order_id: str) -> OrderView | None:
        """The order's state, once the Redis replicas hold every write it rests on.

        Replicas that lag are waited for in place (the input kept alive by
        ``in_progress()``) for up to ``PUBLISH_RETRY_WINDOW``: a nak would spend a
        delivery on a fault that says nothing about the order."""
        deadline = time.monotonic() + self._publish_patience_s
        pauses = backoff.Backoff(_REPLICA_PAUSE_FIRST_S, _REPLICA_PAUSE_MAX_S, jitter=True)
        while True:
            try:
                return await self._d.barrier.confirm(order_id)
            except ReplicasBehind as exc:
                pause = pauses.pause()
                if time.monotonic() + pause >= deadline:
                    raise
                log.debug("order %s: %s; waiting", order_id, exc)
                await asyncio.sleep(pause)

    async def _send(self, order: Order, epoch: int, run: int, cause: str) -> None:
        d = self._d
        try:
            await d.dispatcher.send(order_workflow(d.celery, order, epoch, run))
        except Exception:
            with contextlib.suppress(Exception):  # best effort; else the stall timeout
                await d.state.mark_unsent(order.order_id)
            raise
        d.metrics.workflows_sent.labels(cause).inc()

    async def _publish_outcome(self, outcome: Outcome) -> None:
        subject = (
            names.SUBJECT_COMPLETED
            if outcome.kind is OutcomeKind.COMPLETED
            else names.SUBJECT_FAILED
        )
        headers = {names.HDR_MSG_ID: names.outcome_msg_id(outcome.order_id, outcome.kind)}
        with tracing.publish_span(subject, headers) as span:
            span.set_attribute("orders.outcome", outcome.kind.value)
            if outcome.reason:
                span.set_attribute("orders.reason", outcome.reason.value)
            ack = await store(
                self._d.js,
                subject,
                codec.encode_outcome(outcome),
                headers=headers,
                stream=names.ORDERS_STREAM,
                request_timeout=NATS_REQUEST_TIMEOUT_S,
                patience=self._publish_patience_s,
            )
        if not ack.duplicate:
            reason = outcome.reason.value if outcome.reason else ""
            self._d.metrics.outcomes.labels(outcome.kind.value, reason).inc()

    async def _given_up_reason(self, order_id: str) -> str | None:
        view = await self._d.state.view(order_id)
        if view is not None and view.dead and view.outcome is None:
            return view.detail
        return None

    async def _give_up(
        self,
        msg: Msg,
        raw: RawOrder,
        deliveries: int,
        detail: str,
        *,
        already_reasoned: bool = False,
    ) -> None:
        """Transient faults outlasted every delivery: compensate, then dead-letter."""
        last_chance = deliveries >= self._d.settings.max_deliveries + SERVER_DELIVERY_GRACE
        reason = (
            detail
            if already_reasoned
            else f"transient failures outlasted {deliveries} deliveries: {detail}"
        )
        try:
            finished = await self._abandon(raw, reason)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.warning("order %s: could not start compensation (%s)", raw.order_id, exc)
            if not last_chance:
                await self._nak(msg, deliveries, f"compensation not started: {exc}")
                return
            # The server will not deliver this message again: keep it in the DLQ.
            reason += f"; compensation not started: {type(exc).__name__}"
            finished = False
        if not finished:
            await self._dead_letter(msg, reason, cause="retries_exhausted")
            return
        try:  # the workflow finished after all: its outcome, not a dead letter
            await self._process(msg, raw)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.warning("order %s: publishing a late outcome failed (%s)", raw.order_id, exc)
            if not last_chance:
                await self._nak(msg, deliveries, f"late outcome not published: {exc}")
                return
            # The server will not deliver it again. A replay of the dead letter
            # publishes the outcome Redis holds.
            await self._dead_letter(
                msg,
                f"outcome could not be published after {deliveries} deliveries: "
                f"{type(exc).__name__}: {exc}",
                cause="retries_exhausted",
            )

    async def _abandon(self, raw: RawOrder, reason: str) -> bool:
        """Mark the order dead-lettered, then send its compensation (not waited for:
        compensation tasks retry until they succeed). Returns ``True`` if the order
        has an outcome after all."""
        d = self._d
        view = await d.state.view(raw.order_id)
        if view is None:
            return False  # never started: nothing to compensate
        if view.outcome is not None:
            return True
        stored = RawOrder.model_validate_json(view.order_json) if view.order_json else raw
        order = validate_order(stored, d.limits)
        if not isinstance(order, Order):
            return False
        if not await d.state.abandon(raw.order_id, view.epoch, reason):
            return True
        await d.dispatcher.send(compensation(d.celery, order, view.epoch))
        d.metrics.workflows_sent.labels("compensation").inc()
        # The dead mark and the compensation's messages reach the replicas before
        # the dead letter is stored: a failover must not forget what it owes.
        await self._replicated(raw.order_id)
        return False

    async def _dead_letter(self, msg: Msg, reason: str, cause: str) -> None:
        try:
            await dead_letter(
                self._d.js,
                msg,
                reason,
                timeout=NATS_REQUEST_TIMEOUT_S,
                patience=self._publish_patience_s,
            )
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.warning("dead-lettering failed (%s); will be redelivered", exc)
            await self._nak(msg, msg.metadata.num_delivered, f"dead-lettering failed: {exc}")
            return
        log.warning("dead-lettered stream sequence %d: %s", msg.metadata.sequence.stream, reason)
        tracing.record_disposition("term", reason)
        self._d.metrics.dead_lettered.labels(cause).inc()
        self._observe_end_to_end(msg)

    async def _ack(self, msg: Msg) -> None:
        await msg.ack()
        tracing.record_disposition("ack")
        self._d.metrics.acked.inc()
        self._observe_end_to_end(msg)

    def _observe_end_to_end(self, msg: Msg) -> None:
        # From the moment JetStream stored the input (its timestamp) to its last ack.
        stored_at = msg.metadata.timestamp.timestamp()
        self._d.metrics.end_to_end.observe(max(0.0, time.time() - stored_at))

    async def _nak(self, msg: Msg, deliveries: int, why: str) -> None:
        # Never a bare nak: it redelivers at once and burns the delivery budget.
        cap = self._d.settings.nak_delay_max.total_seconds()
        delay = backoff.for_attempt(deliveries, _NAK_DELAY_FIRST_S, cap)
        tracing.record_disposition("nak", why)
        try:
            await msg.nak(delay=delay)
            self._d.metrics.nakd.inc()
        except Exception as exc:
            # NATS is unreachable: the server redelivers after ack_wait anyway.
            log.warning("nak failed (%s); the message returns after ack_wait", exc)


async def _woken_or_timeout(event: asyncio.Event, timeout: float) -> None:
    """Wait for a completion event or the poll interval, whichever comes first."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(event.wait(), timeout=timeout)
    event.clear()
