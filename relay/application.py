"""What an application gives the relay: the hooks that turn one JetStream message
into Celery work and its outcome into a message.

The relay owns everything between: the durable consumer, the ledger (dedup,
epochs, runs, stalls, failovers), heartbeats, nak backoff, dead-lettering, and
giving up with compensation. An application owns its input's format and
meaning, its Celery canvas, and its outcome's format. Its workers record the
outcome with :meth:`relay.ledger.Ledger.finalize` (see :mod:`relay.worker`).
"""

from __future__ import annotations

import contextvars
from collections.abc import Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Generic, Protocol, TypeVar, runtime_checkable

from celery.canvas import Signature

ItemT = TypeVar("ItemT")


class Poison(Exception):
    """Input that no delivery can ever process: dead-lettered at once, with
    ``str(self)`` as the reason."""


@dataclass(frozen=True, slots=True)
class Decided:
    """An outcome the application decides without a worker (input that is well
    formed enough to answer, but not to work on): its text and the fields the
    ledger sets with it (see :meth:`relay.ledger.Ledger.finalize`)."""

    outcome: str
    fields: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class OutcomeMessage:
    """The message an outcome is published as, to the application's stream."""

    subject: str
    data: bytes
    msg_id: str  # Nats-Msg-Id: a re-publish of the same outcome is dropped by the stream
    label: str  # what kind of outcome (``completed``): metrics, spans, the ledger
    reason: str = ""  # why, for failures: metrics and spans


class Application(Protocol[ItemT]):
    """The hooks, all synchronous and quick (no I/O): the relay awaits everything else."""

    def decode(self, data: bytes) -> ItemT:
        """The input, parsed enough to have a key; raises :class:`Poison`. ``data`` is
        at most ``Limits.max_message_bytes`` long (the relay dead-letters longer)."""
        ...

    def key(self, item: ItemT) -> str:
        """What identifies the input across redeliveries and replays (an order id)."""
        ...

    def dump(self, item: ItemT) -> str:
        """The input as the ledger stores it (the first content seen for a key wins)."""
        ...

    def load(self, stored: str) -> ItemT:
        """The input back from what :meth:`dump` stored."""
        ...

    def immediate_outcome(self, item: ItemT) -> Decided | None:
        """An outcome for input that never needs a worker (invalid), else ``None``."""
        ...

    def workflow(self, item: ItemT, epoch: int, run: int) -> Signature:
        """The canvas for one run; task ids should derive from key, epoch and run. Its
        last step records the outcome in the ledger (or reports an error)."""
        ...

    def compensation(self, item: ItemT, epoch: int) -> Signature | None:
        """What undoes the epoch's effects when the relay gives up on the input
        (idempotent, retried until done), or ``None`` when there is nothing to undo."""
        ...

    def outcome_message(self, key: str, outcome: str) -> OutcomeMessage:
        """The message for an outcome the ledger holds."""
        ...

    def scope(self, key: str) -> AbstractContextManager[None]:
        """Entered around everything done for one input: e.g. names the key in the
        trace context, so spans, Celery sends and log lines carry it."""
        ...


@dataclass(frozen=True, slots=True)
class Run(Generic[ItemT]):
    """One run of one input's workflow, as a batch carries it (:mod:`relay.batching`)."""

    key: str
    item: ItemT
    epoch: int
    run: int
    # The input's own context (its trace, its scope): the batch is built outside it,
    # so per-input fields such as a ``traceparent`` are taken with ``context.run``.
    context: contextvars.Context


@runtime_checkable
class BatchingApplication(Application[ItemT], Protocol):
    """An application whose new workflows may go to Celery several at once."""

    def workflow_batch(self, runs: Sequence[Run[ItemT]]) -> Signature:
        """One canvas for every run of ``runs`` (two or more, each a first run of a new
        input); each input's outcome is still recorded on its own. Task ids should
        derive from the runs' keys, epochs and runs, so that a repeated batch is
        recognisable; a re-send never comes here (it goes alone, by :meth:`workflow`),
        so one input that breaks its batch is isolated on its next run."""
        ...
