"""Exponential backoff, the one way the relay waits before trying again.

Every retry loop of the relay (fetching, the completion stream, storing an
outcome, waiting for the Redis replicas, the nak delay of a failed delivery)
doubles its pause up to a cap. With jitter each pause is a random 50-100 % of
its nominal value, so that many orders failing together do not retry in step.
"""

from __future__ import annotations

import random


class Backoff:
    """Pauses of ``first``, then twice as long each time, up to ``cap`` seconds."""

    def __init__(self, first: float, cap: float, *, jitter: bool = False) -> None:
        self._first = first
        self._cap = cap
        self._jitter = jitter
        self._nominal = first

    def pause(self) -> float:
        """The next pause (jittered when asked); the one after is twice as long."""
        nominal, self._nominal = self._nominal, min(self._nominal * 2, self._cap)
        return jittered(nominal) if self._jitter else nominal

    def reset(self) -> None:
        """The next pause is ``first`` again (the thing retried worked)."""
        self._nominal = self._first


def for_attempt(attempt: int, first: float, cap: float) -> float:
    """The jittered pause before try ``attempt + 1``, without state: ``first`` after the
    first attempt, doubling up to ``cap`` (a nak's delay, from the delivery count)."""
    return jittered(min(cap, first * 2 ** max(attempt - 1, 0)))


def jittered(seconds: float) -> float:
    return seconds * random.uniform(0.5, 1.0)


# The first nak of a message waits this long; each later delivery twice as long.
NAK_DELAY_FIRST_S = 0.5


def nak_delay(deliveries: int, cap: float) -> float:
    """The delay of a nak after delivery number ``deliveries``: never zero, since a
    bare nak redelivers at once and burns the delivery budget."""
    return for_attempt(deliveries, NAK_DELAY_FIRST_S, cap)
