"""The demo's outcomes read back from JetStream as they arrive (:class:`dev.outcomes.Following`):
outcome events from ``ORDERS``, dead letters from ``ORDERS_DLQ``, and the bridge's
consumer's ack floor for the duplicate, which gets no event of its own."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable

from nats.js import JetStreamContext

from dev.demo_cases import Case, Observed
from dev.outcomes import Following
from orders import names

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
    waiting_for = {case.order_id for case in cases if case.expected != "DLQ"}
    poison_seqs = {case.seq for case in cases if case.expected == "DLQ"}
    last_seq = max(case.seq for case in cases)
    deadline = time.monotonic() + OUTCOME_TIMEOUT_S
    async with Following(js, min(case.seq for case in cases), dlq_start) as following:
        while True:
            await _read(following, observed)
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


async def _read(following: Following, observed: Observed) -> None:
    for event in await following.outcomes():
        fields = {"kind": event.kind, **event.fields}
        observed.outcomes.setdefault(event.order_id, []).append(fields)
    for letter in await following.dead_letters():
        with contextlib.suppress(KeyError, ValueError):
            sequence = int(letter.headers[names.HDR_DLQ_SEQUENCE])
            observed.dead_letters[sequence] = letter.headers.get(names.HDR_DLQ_REASON, "")


async def _acked_past(js: JetStreamContext, last_seq: int) -> bool:
    """Whether the bridge's consumer has acked every message up to ``last_seq``."""
    info = await js.consumer_info(names.ORDERS_STREAM, names.DURABLE_CONSUMER)
    return bool(info.ack_floor and info.ack_floor.stream_seq >= last_seq)
