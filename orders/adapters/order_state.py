"""The order's side of its ledger hash (``relay.ledger``): outcomes, payments, views.

The relay's ledger keeps one hash per order (epoch, run, the order as first
stored, the outcome, published); this adapter adds what the order application
keeps in the same hash: the outcome as an :class:`Outcome` (stored as JSON, the
ledger's opaque outcome text) with its status and reason beside it for
``orders status``, and the charges and refunds counted once per payment.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import redis

from orders.adapters import redis_keys as keys
from orders.domain.model import OrderStatus, Outcome
from relay.ledger import Entry, Ledger, Record

# Counts each payment once, for one order or each of a batch's.
# KEYS: per payment: order, ledger   ARGV: 'charges' | 'refunds', per payment: ledger entry
_COUNT_PAYMENT = """
for i = 2, #ARGV do
  if redis.call('HSETNX', KEYS[2 * i - 2], ARGV[i], '1') == 1 then
    redis.call('HINCRBY', KEYS[2 * i - 3], ARGV[1], 1)
  end
end
return 0
"""


# A split mark outlives any re-send of the run it marks (the stall timeout is minutes).
SPLIT_TTL_S = 24 * 3600


def outcome_record(outcome: Outcome) -> tuple[str, dict[str, str]]:
    """The outcome as the ledger stores it: its text, and the fields set beside it
    (what ``orders status`` shows)."""
    return outcome.model_dump_json(), {
        "status": outcome.status.value,
        "reason": outcome.reason.value if outcome.reason else "",
        "detail": outcome.detail,
    }


@dataclass(frozen=True, slots=True)
class OrderView:
    """What ``orders status`` shows."""

    order_id: str
    status: str
    reason: str
    detail: str
    charges: int
    refunds: int
    epoch: int
    run: int
    outcome: Outcome | None
    published: bool
    dead: bool
    order_json: str  # the order as first stored

    def as_json(self) -> dict[str, Any]:
        return {
            "order_id": self.order_id,
            "status": self.status,
            "reason": self.reason or None,
            "charges": self.charges,
            "refunds": self.refunds,
        }


def order_view(entry: Entry | None) -> OrderView | None:
    if entry is None:
        return None
    fields = entry.fields
    return OrderView(
        order_id=entry.key,
        status=fields.get("status", OrderStatus.RECEIVED.value),
        reason=fields.get("reason", ""),
        detail=fields.get("detail", ""),
        charges=int(fields.get("charges") or 0),
        refunds=int(fields.get("refunds") or 0),
        epoch=entry.epoch,
        run=entry.run,
        outcome=Outcome.model_validate_json(entry.outcome) if entry.outcome else None,
        published=entry.published,
        dead=entry.dead,
        order_json=entry.input,
    )


class OrderState:
    """Order state for workflow steps and the CLI (sync). Every method is idempotent."""

    def __init__(self, client: redis.Redis) -> None:
        """``client`` must be created with ``decode_responses=True``."""
        self.ledger = Ledger(client, keys.LEDGER)
        self._client = client
        self._count_payment = client.register_script(_COUNT_PAYMENT)

    def start_task(self, order_id: str, epoch: int, task_id: str) -> int:
        return self.ledger.start_task(order_id, epoch, task_id)

    def finalize(self, epoch: int, outcome: Outcome) -> bool:
        """Record the outcome once per epoch and announce it; ``False`` if already decided."""
        [recorded] = self.finalize_many([(epoch, outcome)])
        return recorded

    def finalize_many(self, outcomes: Sequence[tuple[int, Outcome]]) -> list[bool]:
        """:meth:`finalize` for the orders of a batch, in one script call."""
        return self.ledger.finalize_many(
            [Record(o.order_id, epoch, *outcome_record(o)) for epoch, o in outcomes]
        )

    def record_error(self, order_id: str, epoch: int, detail: str) -> bool:
        return self.ledger.record_error(order_id, epoch, detail)

    def count_charge(self, order_id: str, payment_id: str) -> None:
        self.count_charges([(order_id, payment_id)])

    def count_charges(self, payments: Sequence[tuple[str, str]]) -> None:
        """Count each (order id, payment id) charge once, in one script call."""
        self._count("charges", "charge", payments)

    def count_refund(self, order_id: str, payment_id: str) -> None:
        self._count("refunds", "refund", [(order_id, payment_id)])

    def _count(self, field: str, kind: str, payments: Sequence[tuple[str, str]]) -> None:
        if payments:
            self._count_payment(
                keys=[k for o, _ in payments for k in (keys.order(o), keys.ledger(o))],
                args=[field, *(f"{kind}:{payment_id}" for _, payment_id in payments)],
            )

    def mark_split(self, order_id: str, epoch: int, run: int) -> None:
        """The order's run went on as a workflow of its own, out of its batch (what
        an operator, or a test, looks for)."""
        self._client.set(keys.split(order_id, epoch, run), "1", ex=SPLIT_TTL_S)

    def view(self, order_id: str) -> OrderView | None:
        return order_view(self.ledger.entry(order_id))
