"""Dead-lettering: the message, unchanged, to the application's dead-letter
subject with the reason, origin and deliveries in headers, stored before the
original is terminated."""

from __future__ import annotations

from nats.aio.msg import Msg
from nats.js import JetStreamContext

from relay.config import Names
from relay.store import store
from relay.tracing import MSG_ID_HEADER, publish_span

# Header values are one line; a reason is cut to a size a human reads whole.
_MAX_REASON = 500


def dlq_msg_id(stream_sequence: int) -> str:
    """``Nats-Msg-Id`` of a dead letter, so dead-lettering twice stores one copy."""
    return f"dlq:{stream_sequence}"


def dlq_headers(msg: Msg, reason: str, names: Names) -> dict[str, str]:
    meta = msg.metadata
    headers = {k: v for k, v in (msg.headers or {}).items() if k != MSG_ID_HEADER}
    headers.update(
        {
            MSG_ID_HEADER: dlq_msg_id(meta.sequence.stream),
            names.dlq_reason_header: one_line(reason)[:_MAX_REASON],
            names.dlq_subject_header: msg.subject,
            names.dlq_sequence_header: str(meta.sequence.stream),
            names.dlq_deliveries_header: str(meta.num_delivered),
        }
    )
    return headers


def one_line(text: str) -> str:
    """Control characters would break a NATS header line."""
    return "".join(ch if ch.isprintable() else " " for ch in text)


async def dead_letter(
    js: JetStreamContext,
    msg: Msg,
    reason: str,
    names: Names,
    *,
    timeout: float,
    patience: float,
) -> None:
    """Store the dead letter, then terminate the original. Raises if the store failed
    (after :func:`~relay.store.store`'s retries), in which case the original is left
    for redelivery."""
    headers = dlq_headers(msg, reason, names)
    # The dead letter keeps its producer's traceparent (the message is stored
    # unchanged): a replay continues the original trace.
    with publish_span(names.dlq_subject, headers, inject=False):
        await store(
            js,
            names.dlq_subject,
            msg.data,
            headers=headers,
            stream=names.dlq_stream,
            request_timeout=timeout,
            patience=patience,
        )
    await msg.term()
