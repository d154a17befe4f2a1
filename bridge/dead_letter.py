"""Dead-lettering: the message, unchanged, to ``DLQ.ORDER.created`` with the
contract's headers, stored before the original is terminated."""

from __future__ import annotations

from nats.aio.msg import Msg
from nats.js import JetStreamContext

from bridge.store import store
from bridge.tracing import publish_span
from orders import names

# Header values are one line; a reason is cut to a size a human reads whole.
_MAX_REASON = 500


def dlq_headers(msg: Msg, reason: str) -> dict[str, str]:
    meta = msg.metadata
    headers = {k: v for k, v in (msg.headers or {}).items() if k != names.HDR_MSG_ID}
    headers.update(
        {
            names.HDR_MSG_ID: names.dlq_msg_id(meta.sequence.stream),
            names.HDR_DLQ_REASON: one_line(reason)[:_MAX_REASON],
            names.HDR_DLQ_SUBJECT: msg.subject,
            names.HDR_DLQ_SEQUENCE: str(meta.sequence.stream),
            names.HDR_DLQ_DELIVERIES: str(meta.num_delivered),
        }
    )
    return headers


def one_line(text: str) -> str:
    """Control characters would break a NATS header line."""
    return "".join(ch if ch.isprintable() else " " for ch in text)


async def dead_letter(
    js: JetStreamContext, msg: Msg, reason: str, *, timeout: float, patience: float
) -> None:
    """Store the dead letter, then terminate the original. Raises if the store failed
    (after :func:`~bridge.store.store`'s retries), in which case the original is left
    for redelivery."""
    headers = dlq_headers(msg, reason)
    # The dead letter keeps its producer's traceparent (the message is stored
    # unchanged): a replay continues the original trace.
    with publish_span(names.SUBJECT_DLQ_CREATED, headers, inject=False):
        await store(
            js,
            names.SUBJECT_DLQ_CREATED,
            msg.data,
            headers=headers,
            stream=names.DLQ_STREAM,
            request_timeout=timeout,
            patience=patience,
        )
    await msg.term()
