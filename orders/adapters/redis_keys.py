"""Redis key layout, in one place. Every key starts with ``orders:``.

Scripts touch several keys of one order at once; they are not written for
Redis Cluster (keys are not hash-tagged), which the README states.
"""

from relay.keys import LedgerKeys

PREFIX = "orders:"
# The relay's ledger: one hash per order (orders:order:<id>), the completion stream
# (orders:completions) and task start counts (orders:task-starts:<task id>).
LEDGER = LedgerKeys(PREFIX, "order")


def order(order_id: str) -> str:
    return LEDGER.entry(order_id)


def ledger(order_id: str) -> str:
    """Payment ids already counted as charged or refunded for the order."""
    return f"{PREFIX}order:{order_id}:ledger"


def stock(sku: str) -> str:
    return f"{PREFIX}stock:{sku}"


def reservation(order_id: str, epoch: int) -> str:
    return f"{PREFIX}reservation:{order_id}:{epoch}"


def gateway_charge(idempotency_key: str) -> str:
    return f"{PREFIX}gateway:{idempotency_key}"


def split(order_id: str, epoch: int, run: int) -> str:
    """Set when an order of a batch went on as a workflow of its own (batch steps)."""
    return f"{PREFIX}split:{order_id}:{epoch}:{run}"


def task_starts(task_id: str) -> str:
    return LEDGER.task_starts(task_id)
