"""Storing a message in JetStream when what it says is already decided.

JetStream refuses a publish for seconds at a time in normal operation: while a
replicated stream elects a new leader (no response, or 503), while a server
restarts, while an earlier publish with the same ``Nats-Msg-Id`` is still being
replicated (409 "duplicate message id is in process"). Each failure handed back
to the server as a nak would spend one of the order's deliveries on a fault that
says nothing about the order; enough of them in one election and an order whose
outcome is decided (charged, stock taken) would run out of deliveries. So these
publishes are retried here, within a bounded patience, while the consumer's
``in_progress`` heartbeats keep the input message ours. ``Nats-Msg-Id`` makes a
retry of a publish that was in fact stored a no-op.
"""

from __future__ import annotations

import asyncio
import logging
import time

import nats.errors
from nats.js import JetStreamContext
from nats.js.api import PubAck
from nats.js.errors import BadRequestError

from relay.backoff import Backoff

log = logging.getLogger(__name__)

_FIRST_PAUSE_S = 0.2
_MAX_PAUSE_S = 3.0

# The server refused the message itself: another try gets the same answer.
_PERMANENT = (BadRequestError, nats.errors.MaxPayloadError)


async def store(
    js: JetStreamContext,
    subject: str,
    data: bytes,
    *,
    headers: dict[str, str],
    stream: str,
    request_timeout: float,
    patience: float,
) -> PubAck:
    """Publish and wait for the stream's ack, retrying transient refusals for up to
    ``patience`` seconds. Raises the last error once patience runs out."""
    deadline = time.monotonic() + patience
    backoff = Backoff(_FIRST_PAUSE_S, _MAX_PAUSE_S, jitter=True)
    attempt = 1
    while True:
        try:
            ack = await js.publish(
                subject, data, headers=headers, timeout=request_timeout, stream=stream
            )
        except _PERMANENT:
            raise
        except Exception as exc:
            pause = backoff.pause()
            if time.monotonic() + pause >= deadline:
                raise
            # The first failure is news; the retries that follow are not.
            level = logging.WARNING if attempt == 1 else logging.DEBUG
            log.log(
                level, "storing to %s failed (%s: %s); retrying", stream, type(exc).__name__, exc
            )
            await asyncio.sleep(pause)
            attempt += 1
            continue
        if attempt > 1:
            log.info("stored to %s after %d attempts", stream, attempt)
        return ack
