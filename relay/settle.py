"""Applying a delivery's :data:`~relay.disposition.Disposition` to its message: the
one place that acks, naks and terminates.

A dead letter that cannot be stored becomes a nak (the message comes back and
is dead-lettered then); a nak the server does not hear is harmless (the message
returns after ``ack_wait``).
"""

from __future__ import annotations

import asyncio
import logging
import time

from nats.aio.msg import Msg
from nats.js import JetStreamContext

from relay import tracing
from relay.backoff import nak_delay
from relay.config import Limits, Names
from relay.dead_letter import dead_letter
from relay.disposition import Ack, Disposition, Nak, Term
from relay.metrics import RelayMetrics

log = logging.getLogger(__name__)

NATS_REQUEST_TIMEOUT_S = 5.0


class Settler:
    def __init__(
        self, js: JetStreamContext, names: Names, limits: Limits, metrics: RelayMetrics
    ) -> None:
        self._js = js
        self._names = names
        self._patience_s = limits.publish_retry_window_s
        self._nak_delay_max_s = limits.nak_delay_max_s
        self._metrics = metrics

    async def settle(self, msg: Msg, disposition: Disposition) -> None:
        """Apply ``disposition``; never raises but on cancellation."""
        match disposition:
            case Ack():
                await self._ack(msg)
            case Nak(delay_s=delay, why=why):
                await self._nak(msg, delay, why)
            case Term(reason=reason, cause=cause):
                await self._term(msg, reason, cause)

    async def _ack(self, msg: Msg) -> None:
        try:
            await msg.ack()
        except Exception as exc:
            # NATS is unreachable. The outcome is stored and marked published, so the
            # redelivery after ack_wait is only acked.
            log.warning("ack failed (%s); the message returns after ack_wait", exc)
            return
        self._record("ack")
        self._metrics.acked.inc()
        self._observe_end_to_end(msg)

    async def _term(self, msg: Msg, reason: str, cause: str) -> None:
        try:
            await dead_letter(
                self._js,
                msg,
                reason,
                self._names,
                timeout=NATS_REQUEST_TIMEOUT_S,
                patience=self._patience_s,
            )
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.warning("dead-lettering failed (%s); will be redelivered", exc)
            delay = nak_delay(msg.metadata.num_delivered, self._nak_delay_max_s)
            await self._nak(msg, delay, f"dead-lettering failed: {exc}")
            return
        log.warning("dead-lettered stream sequence %d: %s", msg.metadata.sequence.stream, reason)
        self._record("term", reason)
        self._metrics.dead_lettered.labels(cause).inc()
        self._observe_end_to_end(msg)

    async def _nak(self, msg: Msg, delay_s: float, why: str) -> None:
        self._record("nak", why)
        try:
            await msg.nak(delay=delay_s)
            self._metrics.nakd.inc()
        except Exception as exc:
            # NATS is unreachable: the server redelivers after ack_wait anyway.
            log.warning("nak failed (%s); the message returns after ack_wait", exc)

    def _record(self, disposition: str, error: str | None = None) -> None:
        tracing.record_disposition(self._names.span_prefix, disposition, error)

    def _observe_end_to_end(self, msg: Msg) -> None:
        # From the moment JetStream stored the input (its timestamp) to its last ack.
        stored_at = msg.metadata.timestamp.timestamp()
        self._metrics.end_to_end.observe(max(0.0, time.time() - stored_at))
