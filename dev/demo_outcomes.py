"""The demo's outcomes read back from JetStream: outcome events from ``ORDERS``,
dead letters from ``ORDERS_DLQ``, and the bridge's consumer's ack floor for the
duplicate, which gets no event of its own."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from typing import Any

import nats.errors
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from bridge.codec import PoisonMessage, decode_outcome
from dev.demo_cases import Case, Observed
from orders import names
from orders.domain.model import OutcomeKind

OUTCOME_TIMEOUT_S = 60.0


async def observe(
    js: JetStreamContext,
    cases: list[Case],
    dlq_start: int,
    raise_if_stopped: Callable[[], None],
) -> Observed:
    """Read outcome events and dead letters from JetStream until every case has its
    answer (and the duplicate is acked) or :data:`OUTCOME_TIMEOUT_S` passes;
    ``raise_if_stopped`` is called between reads."""
    observed = Observed()
    outcomes, dead = await _subscribe(js, min(case.seq for case in cases), dlq_start)
    waiting_for = {case.order_id for case in cases if case.expected != "DLQ"}
    poison_seqs = {case.seq for case in cases if case.expected == "DLQ"}
    last_seq = max(case.seq for case in cases)
    deadline = time.monotonic() + OUTCOME_TIMEOUT_S
    try:
        while True:
            await _read_outcomes(outcomes, observed)
            await _read_dead_letters(dead, observed)
            if not observed.duplicate_acked:
                # The duplicate gets no event to wait for: it is handled once the
                # bridge's consumer has acked past it.
                observed.duplicate_acked = await _acked_past(js, last_seq)
                # Any second outcome would be stored before that ack: one more read.
                if observed.duplicate_acked:
                    continue
            answered = (
                waiting_for <= observed.outcomes.keys()
                and poison_seqs <= observed.dead_letters.keys()
            )
            if (answered and observed.duplicate_acked) or time.monotonic() > deadline:
                return observed
            raise_if_stopped()
    finally:
        for sub in (outcomes, dead):
            with contextlib.suppress(nats.errors.Error, TimeoutError):
                await sub.unsubscribe()


async def _subscribe(
    js: JetStreamContext, first_seq: int, dlq_start: int
) -> tuple[JetStreamContext.PullSubscription, JetStreamContext.PullSubscription]:
    """Ephemeral consumers of the outcome events from ``first_seq`` on and of the
    dead letters from ``dlq_start`` on."""
    outcomes = await js.pull_subscribe(
        names.SUBJECT_COMPLETED,
        stream=names.ORDERS_STREAM,
        config=ConsumerConfig(
            filter_subjects=[names.SUBJECT_COMPLETED, names.SUBJECT_FAILED],
            deliver_policy=DeliverPolicy.BY_START_SEQUENCE,
            opt_start_seq=first_seq,
            ack_policy=AckPolicy.EXPLICIT,
            inactive_threshold=60.0,
        ),
    )
    dead = await js.pull_subscribe(
        names.SUBJECT_DLQ_CREATED,
        stream=names.DLQ_STREAM,
        config=ConsumerConfig(
            deliver_policy=DeliverPolicy.BY_START_SEQUENCE,
            opt_start_seq=dlq_start,
            ack_policy=AckPolicy.EXPLICIT,
            inactive_threshold=60.0,
        ),
    )
    return outcomes, dead


async def _read_outcomes(sub: JetStreamContext.PullSubscription, observed: Observed) -> None:
    for msg in await _fetch(sub):
        kind = OutcomeKind(msg.subject.rsplit(".", 1)[1])
        with contextlib.suppress(PoisonMessage):
            fields = {"kind": kind, **decode_outcome(kind, msg.data)}
            observed.outcomes.setdefault(str(fields["order_id"]), []).append(fields)
        await msg.ack()


async def _read_dead_letters(sub: JetStreamContext.PullSubscription, observed: Observed) -> None:
    for msg in await _fetch(sub):
        headers = msg.headers or {}
        with contextlib.suppress(KeyError, ValueError):
            sequence = int(headers[names.HDR_DLQ_SEQUENCE])
            observed.dead_letters[sequence] = headers.get(names.HDR_DLQ_REASON, "")
        await msg.ack()


async def _acked_past(js: JetStreamContext, last_seq: int) -> bool:
    """Whether the bridge's consumer has acked every message up to ``last_seq``."""
    info = await js.consumer_info(names.ORDERS_STREAM, names.DURABLE_CONSUMER)
    return bool(info.ack_floor and info.ack_floor.stream_seq >= last_seq)


async def _fetch(sub: JetStreamContext.PullSubscription) -> list[Any]:
    try:
        return await sub.fetch(batch=64, timeout=0.5)
    except TimeoutError:
        # Not only nats.errors.TimeoutError: nats-py's batch fetch also raises a
        # bare asyncio.TimeoutError when its deadline runs out between requests.
        return []
