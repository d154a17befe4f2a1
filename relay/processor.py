"""What the relay does with one delivery: decide its :data:`Disposition`.

Every delivery ends in exactly one of:

- :class:`Ack`: the outcome message is stored in JetStream (now or earlier);
- :class:`Nak` with a delay: an infrastructure fault; the next delivery tries again;
- :class:`Term`: poison, or transient faults that outlasted ``max_deliveries``
  (after compensation); the consumer stores the dead letter, then terminates.

Order of effects, so that a crash between any two lines loses nothing and
repeats nothing: outcome recorded in Redis -> the Redis replicas acknowledge it
(:mod:`relay.redis_watch`: a failover cannot lose it) -> outcome message stored
in JetStream (``Nats-Msg-Id`` dedups a re-publish) -> ``published`` recorded ->
ack.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import time
from dataclasses import dataclass
from enum import Enum, auto
from typing import Generic

from nats.aio.msg import Msg
from nats.js import JetStreamContext

from relay import backoff
from relay.application import Application, ItemT, Poison, Run
from relay.batching import Batcher, Sent
from relay.completions import CompletionWatcher
from relay.config import Limits, Names
from relay.dispatch import Dispatcher
from relay.disposition import Ack, Disposition, Nak, Term
from relay.ledger import AsyncLedger, Begin, Entry, Next
from relay.metrics import RelayMetrics
from relay.redis_watch import OutcomeBarrier, RedisWatch, ReplicasBehind
from relay.store import store
from relay.topology import SERVER_DELIVERY_GRACE
from relay.tracing import MSG_ID_HEADER, publish_span

log = logging.getLogger(__name__)

NATS_REQUEST_TIMEOUT_S = 5.0
_REPLICA_PAUSE_FIRST_S = 0.2
_REPLICA_PAUSE_MAX_S = 3.0


class WorkflowFailed(Exception):
    """The workflow reported a failure after its retries (or the input was
    dead-lettered by another bridge meanwhile)."""


class OutcomeLost(Exception):
    """Redis no longer holds the outcome it reported (a failover to a replica that had
    not received it): the next delivery finds out what the new server has."""


class Waited(Enum):
    """How waiting for a workflow ended (a failure raises :class:`WorkflowFailed`)."""

    OUTCOME = auto()  # recorded: publish it
    PUBLISHED = auto()  # another bridge published it meanwhile: only ack


class Abandoned(Enum):
    """What giving up on an input found."""

    DEAD = auto()  # marked dead (compensation sent), or never started: dead-letter it
    HAS_OUTCOME = auto()  # an outcome was recorded after all: publish it instead


@dataclass(frozen=True, slots=True)
class Deps(Generic[ItemT]):
    app: Application[ItemT]
    names: Names
    limits: Limits
    js: JetStreamContext
    ledger: AsyncLedger
    watch: RedisWatch
    barrier: OutcomeBarrier
    watcher: CompletionWatcher
    dispatcher: Dispatcher
    metrics: RelayMetrics
    # New workflows go through it when the application batches (else None).
    batcher: Batcher[ItemT] | None = None


class Processor(Generic[ItemT]):
    def __init__(self, deps: Deps[ItemT]) -> None:
        self._d = deps
        self._app = deps.app
        self._limits = deps.limits
        self._stall_s = deps.limits.stall_timeout_s
        self._poll_s = min(5.0, self._stall_s / 3)

    async def handle(self, msg: Msg) -> Disposition:
        """Process one delivery to its disposition. Never raises except on
        cancellation (shutdown), where the caller hands the message back."""
        deliveries = msg.metadata.num_delivered
        if len(msg.data) > self._limits.max_message_bytes:
            # Before the application parses it: a huge message costs no parsing.
            size, limit = len(msg.data), self._limits.max_message_bytes
            return Term(f"message is {size} bytes, above the {limit}-byte limit", cause="poison")
        try:
            item = self._app.decode(msg.data)
        except Poison as exc:
            return Term(str(exc), cause="poison")
        with self._app.scope(self._app.key(item)):
            try:
                return await self._process_delivery(item, deliveries)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # every infrastructure fault ends the same way
                detail = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
                log.warning("delivery %d failed: %s", deliveries, detail)
                if self._should_give_up(exc, deliveries):
                    reason = f"transient failures outlasted {deliveries} deliveries: {detail}"
                    return await self._give_up(item, deliveries, reason)
                return self._nak(deliveries, detail)

    async def _process_delivery(self, item: ItemT, deliveries: int) -> Disposition:
        if deliveries > self._limits.max_deliveries:
            entry = await self._d.ledger.entry(self._app.key(item))
            if entry is not None and entry.dead and entry.outcome is None:
                # An earlier delivery gave up but its dead-lettering did not complete.
                return await self._give_up(item, deliveries, entry.detail)
        return await self._process(item)

    def _should_give_up(self, exc: Exception, deliveries: int) -> bool:
        """Only a workflow that failed after its retries spends the delivery budget.

        A fault of the relay's own reach (Redis or NATS unreachable) says nothing
        about the input, and giving up then could dead-letter one whose workflow
        completes once the fault heals: keep naking it until the server's last
        delivery.
        """
        max_deliveries = self._limits.max_deliveries
        if isinstance(exc, WorkflowFailed):
            return deliveries >= max_deliveries
        return deliveries >= max_deliveries + SERVER_DELIVERY_GRACE

    async def _process(self, delivered: ItemT) -> Disposition:
        d, app = self._d, self._app
        key, delivered_text = app.key(delivered), app.dump(delivered)
        begin = await d.ledger.begin(
            key, self._stall_s, input=delivered_text, server=d.watch.identity
        )
        if begin.next is Next.DONE:
            d.metrics.duplicates.inc()
            return Ack()
        # The input as first stored: what every send of its workflow must carry.
        # Usually the one just delivered, which need not be parsed back.
        stored = begin.input or delivered_text
        item = delivered if stored == delivered_text else app.load(stored)
        if begin.next in (Next.START, Next.ATTACH):
            decided = app.immediate_outcome(item)
            if decided is not None:
                await d.ledger.finalize(key, begin.epoch, decided.outcome, decided.fields)
            elif await self._run_workflow(key, item, begin, stored) is Waited.PUBLISHED:
                d.metrics.duplicates.inc()
                return Ack()
        await self._publish(key)
        return Ack()

    async def _run_workflow(self, key: str, item: ItemT, begin: Begin, stored: str) -> Waited:
        """Send (or re-attach to) the workflow and wait for its outcome to be recorded.

        ``stored`` is the input as stored, to restore an entry that a Redis
        failover lost."""
        d = self._d
        event = d.watcher.expect(key)
        batch: Sent | None = None  # the batcher's canvas it went in, while at work
        try:
            if begin.next is Next.START:
                cause = begin.cause or "new"
                batch = await self._send(key, item, begin.epoch, begin.run, cause, first=True)
            known = (begin.epoch, begin.run)
            while True:
                await _woken_or_timeout(event, self._poll_s)
                batched = batch is not None and batch.size > 1
                poll = await self._poll(key, stored, known, resend=batched)
                if batch is not None and poll.next is not Next.ATTACH:
                    # Its batch is over. If it failed as a whole (a task that killed
                    # its worker, retries spent), that says nothing about this input,
                    # so it is sent alone now (START) without spending a delivery;
                    # from then on a failure is its own.
                    batch.finish()
                    batch = None
                if poll.next is Next.PUBLISH:
                    return Waited.OUTCOME
                if poll.next is Next.DONE:
                    return Waited.PUBLISHED
                if poll.next is Next.ERRORED:
                    raise WorkflowFailed(poll.error)
                if poll.next is Next.START:
                    log.warning("%s: workflow %s, sending run %d", key, poll.cause, poll.run)
                    await self._send(key, item, poll.epoch, poll.run, poll.cause or "stalled")
                    known = (poll.epoch, poll.run)
        finally:
            if batch is not None:
                batch.finish()
            d.watcher.forget(key, event)

    async def _poll(
        self, key: str, stored: str, known: tuple[int, int], *, resend: bool = False
    ) -> Begin:
        """``resend``: a failed run is sent again (``START``) rather than reported."""
        d = self._d
        poll = await d.ledger.begin(
            key, self._stall_s, poll=True, resend=resend, server=d.watch.identity, known=known
        )
        if poll.next is not Next.LOST:
            return poll
        log.warning("%s: Redis lost its entry (a failover?); restoring", key)
        # Restored as sent through the server Redis is now, not the old one.
        server = await d.watch.current_identity()
        return await d.ledger.begin(key, self._stall_s, input=stored, server=server, known=known)

    async def _send(
        self, key: str, item: ItemT, epoch: int, run: int, cause: str, *, first: bool = False
    ) -> Sent | None:
        """Send the run's workflow; the canvas it went in when it went through the
        batcher (alone or with others), to be finished when the run's wait ends.
        Only a delivery's ``first`` send of a new run may go through the batcher (a
        restored entry can answer cause ``new`` too, to a waiter that holds no
        ticket for it)."""
        d = self._d
        sent: Sent | None = None
        try:
            if d.batcher is not None and first and cause == "new":
                run_of = Run(key, item, epoch, run, contextvars.copy_context())
                sent = await d.batcher.send(run_of)
            else:
                # Re-sends go alone: an input that broke its batch is isolated.
                await d.dispatcher.send(self._app.workflow(item, epoch, run))
        except Exception:
            with contextlib.suppress(Exception):  # best effort; else the stall timeout
                await d.ledger.mark_unsent(key)
            raise
        d.metrics.workflows_sent.labels(cause).inc()
        return sent

    async def _publish(self, key: str) -> None:
        """Publish the recorded outcome once the replicas hold it, then mark it."""
        entry = await self._replicated(key)
        if entry is None or entry.outcome is None:
            raise OutcomeLost("the outcome is no longer in Redis")
        message = self._app.outcome_message(key, entry.outcome)
        headers = {MSG_ID_HEADER: message.msg_id}
        prefix = self._d.names.span_prefix
        with publish_span(message.subject, headers) as span:
            span.set_attribute(f"{prefix}.outcome", message.label)
            if message.reason:
                span.set_attribute(f"{prefix}.reason", message.reason)
            ack = await store(
                self._d.js,
                message.subject,
                message.data,
                headers=headers,
                stream=self._d.names.stream,
                request_timeout=NATS_REQUEST_TIMEOUT_S,
                patience=self._limits.publish_retry_window_s,
            )
        if not ack.duplicate:
            self._d.metrics.outcomes.labels(message.label, message.reason).inc()
        await self._d.ledger.mark_published(key, message.label)

    async def _replicated(self, key: str) -> Entry | None:
        """The entry, once the Redis replicas hold every write it rests on.

        Replicas that lag are waited for in place (the input kept alive by
        ``in_progress()``) for up to ``publish_retry_window_s``: a nak would spend
        a delivery on a fault that says nothing about the input."""
        deadline = time.monotonic() + self._limits.publish_retry_window_s
        pauses = backoff.Backoff(_REPLICA_PAUSE_FIRST_S, _REPLICA_PAUSE_MAX_S, jitter=True)
        while True:
            try:
                return await self._d.barrier.confirm(key)
            except ReplicasBehind as exc:
                pause = pauses.pause()
                if time.monotonic() + pause >= deadline:
                    raise
                log.debug("%s: %s; waiting", key, exc)
                await asyncio.sleep(pause)

    async def _give_up(self, item: ItemT, deliveries: int, reason: str) -> Disposition:
        """Transient faults outlasted every delivery: compensate, then dead-letter."""
        last_chance = deliveries >= self._limits.max_deliveries + SERVER_DELIVERY_GRACE
        try:
            abandoned = await self._abandon(item, reason)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.warning("%s: could not start compensation (%s)", self._app.key(item), exc)
            if not last_chance:
                return self._nak(deliveries, f"compensation not started: {exc}")
            # The server will not deliver this message again: keep it in the DLQ.
            reason += f"; compensation not started: {type(exc).__name__}"
            abandoned = Abandoned.DEAD
        if abandoned is Abandoned.DEAD:
            return Term(reason, cause="retries_exhausted")
        try:  # the workflow finished after all: its outcome, not a dead letter
            return await self._process(item)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.warning("%s: publishing a late outcome failed (%s)", self._app.key(item), exc)
            if not last_chance:
                return self._nak(deliveries, f"late outcome not published: {exc}")
            # The server will not deliver it again. A replay of the dead letter
            # publishes the outcome Redis holds.
            return Term(
                f"outcome could not be published after {deliveries} deliveries: "
                f"{type(exc).__name__}: {exc}",
                cause="retries_exhausted",
            )

    async def _abandon(self, delivered: ItemT, reason: str) -> Abandoned:
        """Mark the input dead-lettered, then send its compensation (not waited for:
        compensation tasks retry until they succeed)."""
        d, app = self._d, self._app
        key = app.key(delivered)
        entry = await d.ledger.entry(key)
        if entry is None:
            return Abandoned.DEAD  # never started: nothing to compensate
        if entry.outcome is not None:
            return Abandoned.HAS_OUTCOME
        if not await d.ledger.abandon(key, entry.epoch, reason):
            return Abandoned.HAS_OUTCOME
        item = app.load(entry.input) if entry.input else delivered
        compensation = app.compensation(item, entry.epoch)
        if compensation is not None:
            await d.dispatcher.send(compensation)
            d.metrics.workflows_sent.labels("compensation").inc()
        # The dead mark and the compensation's messages reach the replicas before
        # the dead letter is stored: a failover must not forget what it owes.
        await self._replicated(key)
        return Abandoned.DEAD

    def _nak(self, deliveries: int, why: str) -> Nak:
        return Nak(backoff.nak_delay(deliveries, self._limits.nak_delay_max_s), why)


async def _woken_or_timeout(event: asyncio.Event, timeout: float) -> None:
    """Wait for a completion event or the poll interval, whichever comes first."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(event.wait(), timeout=timeout)
    event.clear()
