"""The contract's outcome table, end to end: real ``orders-bridge`` and
``orders-worker`` processes against real NATS and Redis servers.

Every test uses its own order ids and products, so tests sharing the module's
pipeline cannot see each other's stock or orders. Nothing sleeps: every wait
polls a condition with a deadline.
"""

from __future__ import annotations

import asyncio
import random
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

import nats
import pytest
from orders_builder import encode_order_created_by_hand, order
from pipeline_stack import Pipeline

from bridge import codec
from dev.servers import wait_until
from orders import names
from orders.domain.model import OutcomeKind, RawOrder

pytestmark = pytest.mark.e2e


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def _new_order_id() -> str:
    return unique("order")


def _new_sku() -> str:
    return unique("sku")


def _assert_no_effects(pipeline: Pipeline, order_id: str, sku: str, stock: int) -> None:
    view = pipeline.status(order_id)
    assert view is not None
    assert pipeline.stock(sku) == stock
    assert (view.charges, view.refunds) == (0, 0)


# --- one order, one outcome ----------------------------------------------------------


def test_valid_order_completes_with_one_charge_and_one_decrement(pipeline: Pipeline) -> None:
    order_id, sku = _new_order_id(), _new_sku()
    pipeline.set_stock(sku, 10)

    pipeline.publish(order(order_id, [(sku, 3, 19.99)]), msg_id=order_id)
    event = pipeline.await_outcome(order_id)

    assert event.kind is OutcomeKind.COMPLETED
    assert event.msg_id == f"{order_id}:completed"
    assert event.fields["total_amount"] == 59.97
    assert event.fields["currency"] == "USD"
    view = pipeline.status(order_id)
    assert view is not None
    assert event.fields["payment_id"] and event.fields["payment_id"] == view.outcome.payment_id
    assert (view.status, view.charges, view.refunds) == ("COMPLETED", 1, 0)
    assert pipeline.stock(sku) == 7
    pipeline.await_idle()
    assert len(pipeline.outcomes_for(order_id)) == 1


def test_order_without_enough_stock_fails_and_any_charge_is_refunded(pipeline: Pipeline) -> None:
    order_id, sku = _new_order_id(), _new_sku()
    pipeline.set_stock(sku, 1)

    pipeline.publish(order(order_id, [(sku, 2, 5.00)]), msg_id=order_id)
    event = pipeline.await_outcome(order_id)

    assert event.kind is OutcomeKind.FAILED
    assert event.msg_id == f"{order_id}:failed"
    assert event.fields["reason"] == "OUT_OF_STOCK"
    assert sku in str(event.fields["detail"])
    assert pipeline.stock(sku) == 1
    view = pipeline.status(order_id)
    assert view is not None
    assert (view.status, view.reason) == ("FAILED", "OUT_OF_STOCK")
    assert view.charges - view.refunds == 0, f"charges {view.charges}, refunds {view.refunds}"


def test_order_above_the_decline_limit_fails_and_releases_its_stock(pipeline: Pipeline) -> None:
    order_id, sku = _new_order_id(), _new_sku()
    pipeline.set_stock(sku, 10)

    pipeline.publish(order(order_id, [(sku, 2, 5000.01)]), msg_id=order_id)
    event = pipeline.await_outcome(order_id)

    assert event.kind is OutcomeKind.FAILED
    assert event.fields["reason"] == "PAYMENT_DECLINED"
    assert pipeline.stock(sku) == 10
    view = pipeline.status(order_id)
    assert view is not None
    assert (view.status, view.reason, view.charges) == ("FAILED", "PAYMENT_DECLINED", 0)


@pytest.mark.parametrize(
    ("make", "problem"),
    [
        pytest.param(lambda oid, sku: order(oid, []), "no items", id="no-items"),
        pytest.param(lambda oid, sku: order(oid, [(sku, 0, 1.0)]), "quantity is 0", id="qty-0"),
        pytest.param(
            lambda oid, sku: order(oid, [("", 1, 1.0)]), "product_id is empty", id="no-product"
        ),
        pytest.param(
            lambda oid, sku: order(oid, [(sku, 1, 1.0)], customer_id=""),
            "customer_id is empty",
            id="no-customer",
        ),
        pytest.param(
            lambda oid, sku: order(oid, [(sku, 2, 1.5)], total=4.0),
            "does not match",
            id="total-mismatch",
        ),
        pytest.param(
            lambda oid, sku: order(oid, [(sku, 1, 1.0)], currency="ZZZ"),
            "ZZZ",
            id="unknown-currency",
        ),
        pytest.param(
            lambda oid, sku: order(oid, [(sku, 1, float("nan"))], total=1.0),
            "NaN",
            id="nan-price",
        ),
    ],
)
def test_invalid_order_fails_as_invalid_without_effects(
    pipeline: Pipeline, make: Callable[[str, str], RawOrder], problem: str
) -> None:
    order_id, sku = _new_order_id(), _new_sku()
    pipeline.set_stock(sku, 50)

    pipeline.publish(make(order_id, sku), msg_id=order_id)
    event = pipeline.await_outcome(order_id)

    assert event.kind is OutcomeKind.FAILED
    assert event.fields["reason"] == "INVALID_ORDER"
    assert problem in str(event.fields["detail"])
    view = pipeline.status(order_id)
    assert view is not None
    assert (view.status, view.reason) == ("FAILED", "INVALID_ORDER")
    _assert_no_effects(pipeline, order_id, sku, 50)


# --- poison ----------------------------------------------------------------------------

GARBAGE = b"\x0a\xff\xff\xff\xff\x0f not a protobuf"  # field 1, length beyond the data


@pytest.mark.parametrize(
    "payload",
    [
        pytest.param(GARBAGE, id="garbage"),
        pytest.param(
            codec.encode_order_created(order("", [("sku", 1, 1.0)])),
            id="no-order-id",
        ),
    ],
)
def test_poison_message_is_dead_lettered_unchanged_without_outcome(
    pipeline: Pipeline, payload: bytes
) -> None:
    with pytest.raises(codec.PoisonMessage):  # the premise: the bridge cannot use it
        codec.decode_order_created(payload, max_bytes=1 << 20)
    pipeline.await_idle()
    outcomes_before = len(pipeline.all_outcomes())

    ack = pipeline.publish(payload, msg_id=unique("poison"))
    letter = pipeline.await_dead_letter(ack.seq, timeout=30)

    assert letter.subject == names.SUBJECT_DLQ_CREATED
    assert letter.data == payload
    assert letter.headers[names.HDR_DLQ_REASON].strip()
    assert letter.headers[names.HDR_DLQ_SUBJECT] == names.SUBJECT_CREATED
    assert letter.headers[names.HDR_DLQ_SEQUENCE] == str(ack.seq)
    assert int(letter.headers[names.HDR_DLQ_DELIVERIES]) >= 1
    assert letter.headers[names.HDR_MSG_ID] == f"dlq:{ack.seq}"
    pipeline.await_idle(after_seq=ack.seq)
    assert len(pipeline.all_outcomes()) == outcomes_before
    copies = [d for d in pipeline.dlq_messages() if d.headers[names.HDR_MSG_ID] == f"dlq:{ack.seq}"]
    assert len(copies) == 1


# --- the same order again ----------------------------------------------------------------


def test_duplicate_publishes_give_one_outcome_one_charge_one_decrement(
    pipeline: Pipeline,
) -> None:
    order_id, sku = _new_order_id(), _new_sku()
    pipeline.set_stock(sku, 10)
    created = order(order_id, [(sku, 2, 3.50)])

    first = pipeline.publish(created, msg_id=order_id)
    again = pipeline.publish(created, msg_id=order_id)
    other_id = pipeline.publish(created, msg_id=f"{order_id}-resent")

    assert not first.duplicate
    assert again.duplicate and again.seq == first.seq, "the duplicate window must drop it"
    assert not other_id.duplicate
    pipeline.await_outcome(order_id)
    pipeline.await_idle(after_seq=other_id.seq)
    outcomes = pipeline.outcomes_for(order_id)
    assert [e.kind for e in outcomes] == [OutcomeKind.COMPLETED], outcomes
    view = pipeline.status(order_id)
    assert view is not None
    assert (view.status, view.charges, view.refunds) == ("COMPLETED", 1, 0)
    assert pipeline.stock(sku) == 8


def test_order_published_again_after_completion_is_acked_without_effects(
    pipeline: Pipeline,
) -> None:
    order_id, sku = _new_order_id(), _new_sku()
    pipeline.set_stock(sku, 10)
    created = order(order_id, [(sku, 1, 7.25)])
    pipeline.publish(created, msg_id=order_id)
    completed = pipeline.await_outcome(order_id)
    assert completed.kind is OutcomeKind.COMPLETED

    replay = pipeline.publish(created, msg_id=f"{order_id}-replay")
    info = pipeline.await_idle(after_seq=replay.seq, timeout=30)

    assert info.num_ack_pending == 0
    assert info.ack_floor.stream_seq >= replay.seq
    assert pipeline.outcomes_for(order_id) == [completed]
    view = pipeline.status(order_id)
    assert view is not None
    assert (view.status, view.charges, view.refunds) == ("COMPLETED", 1, 0)
    assert pipeline.stock(sku) == 9


# --- many orders from an outside producer -------------------------------------------------
#
# A producer in another language knows only the .proto, so this one encodes
# OrderCreated by hand from the wire format instead of using generated code.


@dataclass(frozen=True)
class Planned:
    order: RawOrder
    expect: frozenset[str]  # "completed" or a failure reason


COMPLETED = "completed"


def _plan_mixed_orders(rng: random.Random, skus: list[str], low_sku: str) -> list[Planned]:
    plans: list[Planned] = []
    prices = [0.99, 5.00, 12.49, 19.99, 100.10]
    for _ in range(215):
        items = [(sku, rng.randint(1, 3), rng.choice(prices)) for sku in rng.sample(skus, 2)]
        items = items[: rng.randint(1, 2)]
        plans.append(Planned(order(_new_order_id(), items), frozenset({COMPLETED})))
    for _ in range(20):  # more orders than stock: each either gets one unit or none
        plans.append(
            Planned(
                order(_new_order_id(), [(low_sku, 1, 2.50)]),
                frozenset({COMPLETED, "OUT_OF_STOCK"}),
            )
        )
    for _ in range(35):
        items = [(rng.choice(skus), 1, 10000.01)]
        plans.append(Planned(order(_new_order_id(), items), frozenset({"PAYMENT_DECLINED"})))
    invalid = [
        lambda oid: order(oid, [(skus[0], 0, 1.0)]),
        lambda oid: order(oid, [(skus[1], 2, 1.5)], total=4.0),
        lambda oid: order(oid, [(skus[2], 1, 1.0)], customer_id=""),
        lambda oid: order(oid, [(skus[0], 1, 1.0)], currency="ZZZ"),
        lambda oid: order(oid, []),
    ]
    for n in range(30):
        plans.append(
            Planned(invalid[n % len(invalid)](_new_order_id()), frozenset({"INVALID_ORDER"}))
        )
    rng.shuffle(plans)
    return plans


async def _produce(nats_url: str, payloads: list[tuple[str, bytes]]) -> None:
    nc = await nats.connect(nats_url, name="outside-producer")
    try:
        js = nc.jetstream(timeout=30)
        acks = await asyncio.gather(
            *(
                js.publish(names.SUBJECT_CREATED, data, headers={names.HDR_MSG_ID: oid})
                for oid, data in payloads
            )
        )
        assert not any(a.duplicate for a in acks)
    finally:
        await nc.close()


def test_hundreds_of_mixed_orders_from_an_outside_producer(pipeline: Pipeline) -> None:
    rng = random.Random(20240601)
    skus = [_new_sku() for _ in range(3)]
    low_sku, low_stock = _new_sku(), 5
    initial = dict.fromkeys(skus, 100_000) | {low_sku: low_stock}
    for sku, quantity in initial.items():
        pipeline.set_stock(sku, quantity)
    plans = _plan_mixed_orders(rng, skus, low_sku)
    by_id = {p.order.order_id: p for p in plans}
    payloads = [(oid, encode_order_created_by_hand(p.order)) for oid, p in by_id.items()]
    # The hand encoder is checked against the real decoder, so a failure below is the
    # pipeline's, not the producer's.
    for oid, data in payloads[:25]:
        assert codec.decode_order_created(data, max_bytes=1 << 20) == by_id[oid].order

    asyncio.run(_produce(pipeline.nats_url, payloads))

    def every_order_has_an_outcome() -> bool:
        grouped = pipeline.outcomes_by_order()
        return all(oid in grouped for oid in by_id)

    try:
        wait_until(every_order_has_an_outcome, 240, interval=1.0, what="every order's outcome")
    except TimeoutError:
        grouped = pipeline.outcomes_by_order()
        missing = [oid for oid in by_id if oid not in grouped]
        pytest.fail(f"{len(missing)} of {len(by_id)} orders have no outcome, e.g. {missing[:5]}")
    pipeline.await_idle(timeout=60)
    grouped = pipeline.outcomes_by_order()

    counts = Counter()
    problems: list[str] = []
    completed_qty: Counter[str] = Counter()
    for oid, plan in by_id.items():
        events = grouped[oid]
        if len(events) != 1:
            problems.append(f"{oid}: {len(events)} outcome events")
            continue
        event = events[0]
        got = COMPLETED if event.kind is OutcomeKind.COMPLETED else str(event.fields["reason"])
        counts[got] += 1
        if got not in plan.expect:
            problems.append(f"{oid}: {got}, expected one of {sorted(plan.expect)}")
        view = pipeline.status(oid)
        expected_status = "COMPLETED" if got == COMPLETED else "FAILED"
        net_charges = 1 if got == COMPLETED else 0
        if view is None or view.status != expected_status:
            problems.append(f"{oid}: status {view and view.status}, outcome {got}")
        elif view.charges - view.refunds != net_charges:
            problems.append(f"{oid}: {got} with {view.charges} charges, {view.refunds} refunds")
        if got == COMPLETED:
            for item in plan.order.items:
                completed_qty[item.product_id] += item.quantity

    summary = f"outcomes {dict(counts)} of {len(by_id)} orders"
    assert not problems, f"{len(problems)} problems ({summary}): {problems[:10]}"
    stock = {sku: pipeline.stock(sku) for sku in initial}
    expected_stock = {sku: initial[sku] - completed_qty[sku] for sku in initial}
    assert stock == expected_stock, summary
    assert completed_qty[low_sku] == low_stock, summary
    assert counts["OUT_OF_STOCK"] == 20 - low_stock, summary


# --- transient failures outlast every retry ----------------------------------------------
#
# One order against a gateway that always fails transiently (charges and refunds
# alike). Every fact the contract names is collected first and compared at once,
# so a failure shows all the differences, not only the first.


def _dead_letter_facts(pipeline: Pipeline, order_id: str, sku: str, seq: int) -> dict:
    letter = pipeline.await_dead_letter(seq, timeout=180)
    pipeline.await_idle(after_seq=seq)
    view = pipeline.status(order_id)
    assert view is not None
    reason = letter.headers[names.HDR_DLQ_REASON]
    return {
        "reason names the transient failures": "transient failures" in reason
        and "payment" in reason,
        "deliveries": letter.headers[names.HDR_DLQ_DELIVERIES],
        "outcome events": len(pipeline.outcomes_for(order_id)),
        "stock": pipeline.stock(sku),
        "charges == refunds": view.charges == view.refunds,
        "status": (view.status, view.reason),
    }


@pytest.mark.slow
def test_transient_failures_outlasting_every_delivery_dead_letter_after_compensation(
    failing_gateway_pipeline: Pipeline,
) -> None:
    pipeline = failing_gateway_pipeline
    order_id, sku = _new_order_id(), _new_sku()
    pipeline.set_stock(sku, 10)
    created = order(order_id, [(sku, 2, 4.00)])

    ack = pipeline.publish(created, msg_id=order_id)
    facts = _dead_letter_facts(pipeline, order_id, sku, ack.seq)

    assert pipeline.dlq_messages()[-1].data == codec.encode_order_created(created)
    assert facts == {
        "reason names the transient failures": True,
        "deliveries": str(pipeline.max_deliveries),
        "outcome events": 0,
        "stock": 10,
        "charges == refunds": True,
        "status": ("FAILED", "DEAD_LETTERED"),
    }, pipeline.dlq_messages()[-1].headers


@pytest.mark.slow
def test_gateway_recovering_during_compensation_never_completes_an_order_without_stock(
    failing_gateway_pipeline: Pipeline,
) -> None:
    """The gateway fails through every delivery and through the refund of the
    compensation, then recovers. The order was marked dead-lettered before its
    compensation started, so no late step can complete it: it stays dead-lettered,
    and the refund, retried until the gateway answers, leaves nothing charged."""
    pipeline = failing_gateway_pipeline
    order_id, sku = _new_order_id(), _new_sku()
    pipeline.set_stock(sku, 10)
    failing_worker_log = pipeline.stack.worker_log()

    ack = pipeline.publish(order(order_id, [(sku, 2, 4.00)]), msg_id=order_id)
    # The worker's log is the only outside sign that the compensation's refund is
    # being retried while the gateway is down.
    wait_until(
        lambda: (
            f"refund_payment[{order_id}:1:compensate:refund] retry"
            in (failing_worker_log.read_text())
        ),
        120,
        interval=0.2,
        what="the compensation's refund to be retried",
    )
    pipeline.stack.stop_worker()
    pipeline.stack.start_worker({"PAYMENT_TRANSIENT_FAILURE_RATE": "0"})

    def compensated() -> bool:
        # Refunded if a charge went through (its response may have been lost),
        # voided if none did: either way the gateway holds no money for the order.
        settled = pipeline.gateway_state(f"{order_id}:1") in ("refunded", "voided")
        return settled and pipeline.stock(sku) == 10

    wait_until(compensated, 120, interval=0.5, what="the refund to go through")
    pipeline.await_idle()
    view = pipeline.status(order_id)
    assert view is not None
    facts = {
        "outcome events": len(pipeline.outcomes_for(order_id)),
        "dead letters": sum(
            d.headers.get(names.HDR_MSG_ID) == f"dlq:{ack.seq}" for d in pipeline.dlq_messages()
        ),
        "stock": pipeline.stock(sku),
        "net charges": view.charges - view.refunds,
        "status": (view.status, view.reason),
    }
    assert facts == {
        "outcome events": 0,
        "dead letters": 1,
        "stock": 10,
        "net charges": 0,
        "status": ("FAILED", "DEAD_LETTERED"),
    }
