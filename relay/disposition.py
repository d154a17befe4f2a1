"""How one delivery ends: exactly one of these, returned by the processor and
applied by the consumer in one place (:mod:`relay.settle`)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Ack:
    """The outcome message is stored in JetStream (now or earlier)."""


@dataclass(frozen=True, slots=True)
class Nak:
    """An infrastructure fault: the next delivery, ``delay_s`` from now, tries again.
    Never a bare nak: it would redeliver at once and burn the delivery budget."""

    delay_s: float
    why: str

    def __post_init__(self) -> None:
        if self.delay_s <= 0:
            raise ValueError("a nak needs a positive delay")


@dataclass(frozen=True, slots=True)
class Term:
    """Store the message, unchanged, in the dead-letter stream with ``reason``, then
    terminate it. ``cause`` labels the metric: ``poison`` or ``retries_exhausted``."""

    reason: str
    cause: str


Disposition = Ack | Nak | Term
