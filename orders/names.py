"""Every name shared between processes, defined once.

Streams, subjects and the durable consumer are part of the external contract
(``shared/CONTRACT.md``); queue and task names are part of the deployment
contract (workers subscribe to queues by name, Flower shows task names).
Redis keys live with the adapter that owns them.
"""

from typing import Final

# JetStream (contract)
ORDERS_STREAM: Final = "ORDERS"
ORDERS_SUBJECTS: Final = ("ORDER.*",)
DLQ_STREAM: Final = "ORDERS_DLQ"
DLQ_SUBJECTS: Final = ("DLQ.>",)

SUBJECT_CREATED: Final = "ORDER.created"
SUBJECT_COMPLETED: Final = "ORDER.completed"
SUBJECT_FAILED: Final = "ORDER.failed"
SUBJECT_DLQ_CREATED: Final = "DLQ.ORDER.created"

DURABLE_CONSUMER: Final = "order-bridge"

# Headers (contract)
HDR_MSG_ID: Final = "Nats-Msg-Id"
HDR_TRACEPARENT: Final = "traceparent"
HDR_DLQ_REASON: Final = "Orders-Dlq-Reason"
HDR_DLQ_SUBJECT: Final = "Orders-Original-Subject"
HDR_DLQ_SEQUENCE: Final = "Orders-Original-Sequence"
HDR_DLQ_DELIVERIES: Final = "Orders-Deliveries"


def outcome_msg_id(order_id: str, outcome: str) -> str:
    """``Nats-Msg-Id`` of an outcome event: ``<order_id>:<completed|failed>``."""
    return f"{order_id}:{outcome}"


def dlq_msg_id(stream_sequence: int) -> str:
    """``Nats-Msg-Id`` of a dead letter, so dead-lettering twice stores one copy."""
    return f"dlq:{stream_sequence}"


def replay_msg_id(dlq_sequence: int, now_ms: int) -> str:
    """``Nats-Msg-Id`` of a replayed dead letter: one no earlier publish used, so the
    duplicate window keeps the replay."""
    return f"replay:{dlq_sequence}:{now_ms}"


# Celery queues: one per step so each can be scaled on its own.
QUEUE_ORDERS: Final = "orders"
QUEUE_INVENTORY: Final = "inventory"
QUEUE_PAYMENTS: Final = "payments"
ALL_QUEUES: Final = (QUEUE_ORDERS, QUEUE_INVENTORY, QUEUE_PAYMENTS)

# Celery task names, namespaced by step; routed by their prefix.
TASK_SETTLE: Final = "orders.settle_order"
TASK_FINALIZE: Final = "orders.finalize_order"
TASK_RESERVE: Final = "inventory.reserve_stock"
TASK_RELEASE: Final = "inventory.release_stock"
TASK_CHARGE: Final = "payments.charge_payment"
TASK_REFUND: Final = "payments.refund_payment"
# The same steps for a batch of orders (group commit: docs/design/batching.md).
TASK_RESERVE_BATCH: Final = "inventory.reserve_batch"
TASK_CHARGE_BATCH: Final = "payments.charge_batch"
TASK_SETTLE_BATCH: Final = "orders.settle_batch"

ALL_TASKS: Final = (
    TASK_SETTLE,
    TASK_FINALIZE,
    TASK_RESERVE,
    TASK_RELEASE,
    TASK_CHARGE,
    TASK_REFUND,
    TASK_RESERVE_BATCH,
    TASK_CHARGE_BATCH,
    TASK_SETTLE_BATCH,
)
# Steps whose retries are capped (``TASK_MAX_RETRIES``); compensations never give up.
CAPPED_RETRY_TASKS: Final = (
    TASK_SETTLE,
    TASK_FINALIZE,
    TASK_RESERVE,
    TASK_CHARGE,
    TASK_RESERVE_BATCH,
    TASK_CHARGE_BATCH,
    TASK_SETTLE_BATCH,
)

TASK_ROUTES: Final = {
    "orders.*": {"queue": QUEUE_ORDERS},
    "inventory.*": {"queue": QUEUE_INVENTORY},
    "payments.*": {"queue": QUEUE_PAYMENTS},
}
