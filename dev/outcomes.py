"""What the pipeline reports, read back from JetStream: outcome events
(``ORDER.completed``, ``ORDER.failed`` in ``ORDERS``) and dead letters
(``ORDERS_DLQ``), for the tests, the demo of ``orders run`` and the benchmark.

Two ways to read, one decoding:

- once, everything stored now (:func:`stored_outcomes`,
  :func:`stored_dead_letters`): a test compares the whole stream with its plan;
- live, from a sequence on (:class:`Following`): the demo waits for its answers
  as they arrive, without reading the stream again at every poll.

Counting and timing what is stored (:func:`count_stored_outcomes`,
:func:`stored_at`) asks the server without decoding anything.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import nats.errors
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from bridge.codec import PoisonMessage, decode_outcome
from orders import names
from orders.domain.model import OutcomeKind

OUTCOME_SUBJECTS = (names.SUBJECT_COMPLETED, names.SUBJECT_FAILED)
READ_TIMEOUT_S = 10.0
# A live consumer nobody reads from for this long is removed by the server.
FOLLOW_INACTIVE_S = 60.0


@dataclass(frozen=True)
class OutcomeEvent:
    kind: OutcomeKind
    order_id: str
    msg_id: str
    seq: int
    fields: dict[str, Any]
    stored_at: float = 0.0  # JetStream's timestamp, seconds since the epoch


@dataclass(frozen=True)
class DeadLetter:
    seq: int
    subject: str
    headers: dict[str, str]
    data: bytes


def outcome_event(msg: Msg) -> OutcomeEvent:
    """An outcome event as stored; raises ``PoisonMessage`` if it does not decode."""
    kind = OutcomeKind(msg.subject.rsplit(".", 1)[1])
    fields = decode_outcome(kind, msg.data)
    return OutcomeEvent(
        kind=kind,
        order_id=str(fields["order_id"]),
        msg_id=(msg.headers or {}).get(names.HDR_MSG_ID, ""),
        seq=msg.metadata.sequence.stream,
        fields=fields,
        stored_at=msg.metadata.timestamp.timestamp(),
    )


def dead_letter(msg: Msg) -> DeadLetter:
    return DeadLetter(
        seq=msg.metadata.sequence.stream,
        subject=msg.subject,
        headers=dict(msg.headers or {}),
        data=msg.data,
    )


# ---------------------------------------------------------------------------------
# Once: everything stored now


async def stored_outcomes(js: JetStreamContext) -> list[OutcomeEvent]:
    """Every outcome event in ``ORDERS``, in stream order."""
    msgs = await read_stored(js, names.ORDERS_STREAM, list(OUTCOME_SUBJECTS))
    return [outcome_event(msg) for msg in msgs]


async def stored_dead_letters(js: JetStreamContext) -> list[DeadLetter]:
    """Every dead letter in ``ORDERS_DLQ``, in stream order."""
    msgs = await read_stored(js, names.DLQ_STREAM, list(names.DLQ_SUBJECTS))
    return [dead_letter(msg) for msg in msgs]


async def read_stored(js: JetStreamContext, stream: str, subjects: list[str]) -> list[Msg]:
    """Every message stored in ``stream`` on ``subjects`` right now, in stream order."""
    info = await js.stream_info(stream, subjects_filter=">")
    stored = info.state.subjects or {}
    count = sum(n for subject, n in stored.items() if any(_matches(p, subject) for p in subjects))
    if count == 0:
        return []
    sub = await js.subscribe(
        subjects[0],
        stream=stream,
        ordered_consumer=True,
        config=ConsumerConfig(filter_subjects=subjects),
    )
    try:
        return [await sub.next_msg(timeout=READ_TIMEOUT_S) for _ in range(count)]
    finally:
        await sub.unsubscribe()


def _matches(pattern: str, subject: str) -> bool:
    p, s = pattern.split("."), subject.split(".")
    for i, token in enumerate(p):
        if token == ">":
            return len(s) > i
        if i >= len(s) or (token != "*" and token != s[i]):
            return False
    return len(p) == len(s)


async def count_stored_outcomes(js: JetStreamContext) -> int:
    """Outcome events in ``ORDERS`` now, as the server counts them (nothing is read)."""
    info = await js.stream_info(names.ORDERS_STREAM, subjects_filter="ORDER.*")
    subjects = info.state.subjects or {}
    return sum(subjects.get(subject, 0) for subject in OUTCOME_SUBJECTS)


async def stored_at(
    js: JetStreamContext, subjects: Sequence[str], first_seq: int, keys: set[str]
) -> dict[str, float]:
    """JetStream's own timestamps (Unix seconds) of the messages of ``ORDERS`` on
    ``subjects`` from stream sequence ``first_seq`` on, keyed by ``Nats-Msg-Id`` up to
    its first ``:`` (the order id, for an input and for its outcome); returns once
    every key of ``keys`` is found. Headers only: the payloads are not needed."""
    sub = await js.subscribe(
        subjects[0],
        stream=names.ORDERS_STREAM,
        ordered_consumer=True,
        config=ConsumerConfig(
            filter_subjects=list(subjects),
            deliver_policy=DeliverPolicy.BY_START_SEQUENCE,
            opt_start_seq=first_seq,
            headers_only=True,
        ),
    )
    found: dict[str, float] = {}
    try:
        while len(found) < len(keys):
            msg = await sub.next_msg(timeout=READ_TIMEOUT_S)
            key = (msg.headers or {}).get(names.HDR_MSG_ID, "").split(":", 1)[0]
            if key in keys:
                found[key] = msg.metadata.timestamp.timestamp()
    finally:
        await sub.unsubscribe()
    return found


# ---------------------------------------------------------------------------------
# Live: what arrives from a sequence on


class Following:
    """Ephemeral pull consumers of the outcome events from ``first_seq`` on and of
    the dead letters from ``dlq_start`` on; each read returns what arrived since
    the last one (at most a batch). Use as an async context manager."""

    def __init__(self, js: JetStreamContext, first_seq: int, dlq_start: int) -> None:
        self._js = js
        self._first_seq, self._dlq_start = first_seq, dlq_start
        self._outcomes: JetStreamContext.PullSubscription | None = None
        self._dead: JetStreamContext.PullSubscription | None = None

    async def __aenter__(self) -> Following:
        self._outcomes = await self._js.pull_subscribe(
            names.SUBJECT_COMPLETED,
            stream=names.ORDERS_STREAM,
            config=_from(self._first_seq, filter_subjects=list(OUTCOME_SUBJECTS)),
        )
        self._dead = await self._js.pull_subscribe(
            names.SUBJECT_DLQ_CREATED, stream=names.DLQ_STREAM, config=_from(self._dlq_start)
        )
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        for sub in (self._outcomes, self._dead):
            if sub is not None:
                with contextlib.suppress(nats.errors.Error, TimeoutError):
                    await sub.unsubscribe()

    async def outcomes(self) -> list[OutcomeEvent]:
        """The outcome events that arrived; one that does not decode is skipped: a
        live reader must not stop at it (a test reading the stream once sees it)."""
        assert self._outcomes is not None, "use Following as an async context manager"
        events = []
        for msg in await _fetch(self._outcomes):
            with contextlib.suppress(PoisonMessage):
                events.append(outcome_event(msg))
            await msg.ack()
        return events

    async def dead_letters(self) -> list[DeadLetter]:
        assert self._dead is not None, "use Following as an async context manager"
        letters = []
        for msg in await _fetch(self._dead):
            letters.append(dead_letter(msg))
            await msg.ack()
        return letters


def _from(start_seq: int, **config: Any) -> ConsumerConfig:
    return ConsumerConfig(
        deliver_policy=DeliverPolicy.BY_START_SEQUENCE,
        opt_start_seq=start_seq,
        ack_policy=AckPolicy.EXPLICIT,
        inactive_threshold=FOLLOW_INACTIVE_S,
        **config,
    )


async def _fetch(sub: JetStreamContext.PullSubscription) -> list[Msg]:
    try:
        return await sub.fetch(batch=64, timeout=0.5)
    except TimeoutError:
        # Not only nats.errors.TimeoutError: nats-py's batch fetch also raises a
        # bare asyncio.TimeoutError when its deadline runs out between requests.
        return []
