"""Hostile but decodable input, end to end: a batch of nasty orders published at
once ends, each, as an ``INVALID_ORDER`` outcome naming the problem or as a dead
letter with a reason; the bridge stays ready throughout, and no worker ever sees
one of them (a valid order in the same batch shows that the worker checks can see).

Messages above ``MAX_MESSAGE_BYTES`` need a limit below NATS's own max_payload
(1 MiB, the same as the default limit), so they run against a stack of their own
with a lower ``MAX_MESSAGE_BYTES``.
"""

from __future__ import annotations

import asyncio
import math
import struct
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import nats
import pipeline_stack as e2e
import pytest
from orders_builder import items_total
from pipeline_stack import Pipeline

from bridge import codec
from bridge.pb.orders.v1 import orders_pb2
from dev.servers import NatsServer, RedisServer, wait_until
from orders import names
from orders.domain.model import OutcomeKind

pytestmark = pytest.mark.e2e

INT32_MIN, INT32_MAX = -(2**31), 2**31 - 1
MAX_ITEMS, MAX_QUANTITY, MAX_ID_LENGTH = 1000, 1_000_000, 128  # the stack's defaults
NATS_MAX_PAYLOAD = 1_048_576  # nats-server's default
OWN_MAX_MESSAGE_BYTES = 512 * 1024
_NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


# --- the batch ------------------------------------------------------------------------


@dataclass
class Case:
    label: str
    order_id: str
    data: bytes
    expect: str  # "invalid", "dlq" or "completed"
    words: tuple[str, ...] = ()
    seq: int = 0  # stream sequence, once published
    extra: dict[str, Any] = field(default_factory=dict)


def created(
    order_id: str,
    items: list[tuple[str, int, float]],
    *,
    total: float | None = None,
    customer_id: str = "customer-1",
    currency: str = "USD",
) -> bytes:
    """An ``OrderCreated`` built with the generated code, so any value can be set."""
    return orders_pb2.OrderCreated(
        order_id=order_id,
        customer_id=customer_id,
        items=[orders_pb2.OrderItem(product_id=p, quantity=q, unit_price=u) for p, q, u in items],
        total_amount=items_total(items) if total is None else total,
        currency=currency,
    ).SerializeToString()


def _nasty_batch(sku: str) -> list[Case]:
    cases: list[Case] = []

    def invalid(label: str, *words: str, **kw: Any) -> None:
        oid = unique(f"bad-{label}")
        items = kw.pop("items", [(sku, 1, 2.50)])
        cases.append(Case(label, oid, created(oid, items, **kw), "invalid", words))

    def dead(label: str, order_id: str, data: bytes | None, *words: str) -> None:
        payload = data if data is not None else created(order_id, [(sku, 1, 2.50)])
        cases.append(Case(label, order_id, payload, "dlq", words))

    # ids with control characters, blank or too long
    for n, cid in enumerate(["cust\x00omer", "\x1b[31mred\x1b[0m", "zero\u200bwidth", "a\nb"]):
        invalid(f"customer-control-{n}", "customer_id", "control", customer_id=cid)
    invalid("customer-empty", "customer_id", "empty", customer_id="")
    invalid("customer-blank", "customer_id", "empty", customer_id=" \t ")
    invalid("customer-long", "customer_id", str(MAX_ID_LENGTH), customer_id="c" * 129)
    invalid("product-control", "items[0].product_id", "control", items=[("sku\x07", 1, 1.0)])
    invalid("product-empty", "items[1].product_id", "empty", items=[(sku, 1, 1.0), ("", 1, 1.0)])
    # money that is not money
    invalid("price-nan", "NaN", items=[(sku, 1, math.nan)], total=1.0)
    invalid("price-neg-nan", "NaN", items=[(sku, 1, -math.nan)], total=1.0)
    invalid("price-inf", "infinite", items=[(sku, 1, math.inf)], total=1.0)
    invalid("price-neg-inf", "infinite", items=[(sku, 1, -math.inf)], total=1.0)
    invalid("total-nan", "NaN", total=math.nan)
    invalid("total-inf", "infinite", total=math.inf)
    invalid("price-negative", "negative", items=[(sku, 2, -1.5)], total=3.0)
    invalid("total-negative", "negative", total=-2.5)
    invalid("price-huge", "too large", items=[(sku, 1, 1e300)], total=1.0)
    invalid("price-2^53", "too large", items=[(sku, 1, 2.0**53)], total=1.0)
    invalid("price-off-grid", "not a whole number", items=[(sku, 1, 19.995)], total=19.99)
    invalid("price-tiny", "not a whole number", items=[(sku, 1, 5e-7)], total=0.0)
    invalid("jpy-fraction", "not a whole number", items=[(sku, 1, 1.5)], total=1.5, currency="JPY")
    # quantities
    for q, words in [
        (INT32_MAX, ("items[0].quantity", "above the limit")),
        (MAX_QUANTITY + 1, ("items[0].quantity", "above the limit")),
        (INT32_MIN, ("items[0].quantity", "at least 1")),
        (-1, ("items[0].quantity", "at least 1")),
        (0, ("items[0].quantity is 0",)),
    ]:
        invalid(f"quantity-{q}", *words, items=[(sku, q, 0.01)])
    # item counts
    invalid("items-5000", "5000 items", items=[(sku, 1, 0.01)] * 5000)
    invalid("items-1001", "1001 items", items=[(f"{sku}-{n}", 1, 0.01) for n in range(1001)])
    invalid("items-none", "no items", items=[], total=0.0)
    # totals that do not match
    for n, total in enumerate([2.51, 2.49, 0.0, 5.0, 1e9]):
        invalid(f"total-mismatch-{n}", "does not match", total=total)
    # currencies
    for n, currency in enumerate(["usd", "XAU", "BGN", "ZZZ", "EURO", "\x00\x00\x00", "€"]):
        invalid(f"currency-{n}", "currency", currency=currency)
    # unusable order ids and undecodable bytes: dead letters, no outcome
    for label, oid, words in [
        ("order-id-control", unique("ord") + "\x00", ("order_id", "control")),
        ("order-id-escape", "\x1b[2J" + unique("ord"), ("order_id", "control")),
        ("order-id-long", "o" * (MAX_ID_LENGTH + 1), ("order_id", str(MAX_ID_LENGTH))),
        ("order-id-blank", "   ", ("order_id", "empty")),
    ]:
        dead(label, oid, None, *words)
    dead("order-id-missing", "", created("", [(sku, 1, 1.0)]), "order_id")
    wrong_type = b"\x08\x07" + created("", [(sku, 1, 1.0)])  # field 1 as a varint
    dead("order-id-varint", "", wrong_type, "order_id")
    whole = created(unique("cut"), [(sku, 1, 1.0)])
    dead("truncated", "", whole[:-3], "undecodable")
    dead("bad-utf8", "", b"\x0a\x02\xff\xfe" + whole, "undecodable")
    dead("double-as-garbage", "", b"\x0a\x01x\x21" + struct.pack("<d", math.nan)[:5], "undecodable")
    return cases


# --- watching the bridge's readiness ---------------------------------------------------------


class ReadyProbe:
    """Polls ``GET /ready`` in a thread and remembers every answer that was not 200."""

    def __init__(self, port: int, interval: float = 0.1) -> None:
        self._url = f"http://127.0.0.1:{port}/ready"
        self._interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.probes = 0
        self.failures: list[str] = []

    def __enter__(self) -> ReadyProbe:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                with _NO_PROXY.open(self._url, timeout=3) as response:
                    status = response.status
            except urllib.error.HTTPError as exc:
                status = exc.code
            except (urllib.error.URLError, OSError) as exc:
                status = -1
                self.failures.append(f"{time.strftime('%X')}: {exc}")
            self.probes += 1
            if status != 200 and status != -1:
                self.failures.append(f"{time.strftime('%X')}: HTTP {status}")
            self._stop.wait(self._interval)


async def _publish_all(nats_url: str, cases: list[Case]) -> None:
    nc = await nats.connect(nats_url, name="nasty-producer")
    try:
        js = nc.jetstream(timeout=30)
        acks = await asyncio.gather(
            *(
                js.publish(
                    names.SUBJECT_CREATED,
                    c.data,
                    headers={names.HDR_MSG_ID: unique("nasty")},
                    stream=names.ORDERS_STREAM,
                )
                for c in cases
            )
        )
    finally:
        await nc.close()
    for case, ack in zip(cases, acks, strict=True):
        assert not ack.duplicate
        case.seq = ack.seq


def _worker_logs(pipeline: Pipeline) -> str:
    stack = pipeline.stack
    return "\n".join(
        stack.worker_log(n).read_text(errors="replace") for n in range(1, stack.workers_started + 1)
    )


# --- the tests ----------------------------------------------------------------------------


def test_nasty_orders_end_invalid_or_dead_lettered_and_never_reach_a_worker(
    pipeline: Pipeline,
) -> None:
    sku = unique("sku")
    pipeline.set_stock(sku, 100)
    cases = _nasty_batch(sku)
    control_id = unique("good")
    cases.append(Case("control", control_id, created(control_id, [(sku, 2, 3.25)]), "completed"))
    assert len(cases) >= 50
    for case in cases:  # the premise: each is decodable or poison as labelled
        try:
            codec.decode_order_created(case.data, max_bytes=NATS_MAX_PAYLOAD)
        except codec.PoisonMessage:
            assert case.expect == "dlq", case.label
    pipeline.await_idle(timeout=60)

    with ReadyProbe(pipeline.stack.port) as probe:
        asyncio.run(_publish_all(pipeline.nats_url, cases))
        decided = [c for c in cases if c.expect != "dlq"]
        dead = [c for c in cases if c.expect == "dlq"]

        def all_ended() -> bool:
            outcomes = pipeline.outcomes_by_order()
            letters = {d.headers.get(names.HDR_DLQ_SEQUENCE) for d in pipeline.dlq_messages()}
            return all(c.order_id in outcomes for c in decided) and all(
                str(c.seq) in letters for c in dead
            )

        wait_until(all_ended, 120, interval=0.5, what="every nasty order to end")
        pipeline.await_idle(after_seq=max(c.seq for c in cases), timeout=60)
    assert probe.probes >= 3, "the probe must have watched the whole batch"
    assert not probe.failures, f"/ready was not 200 {len(probe.failures)} times: {probe.failures}"

    outcomes = pipeline.outcomes_by_order()
    letters = {d.headers.get(names.HDR_DLQ_SEQUENCE): d for d in pipeline.dlq_messages()}
    worker_log = _worker_logs(pipeline)
    problems: list[str] = []
    for case in cases:
        events = outcomes.get(case.order_id, []) if case.order_id else []
        if case.expect == "dlq":
            letter = letters.get(str(case.seq))
            reason = letter.headers.get(names.HDR_DLQ_REASON, "") if letter else ""
            if letter is None or letter.data != case.data:
                problems.append(f"{case.label}: no unchanged dead letter")
            elif not all(w in reason for w in case.words):
                problems.append(f"{case.label}: reason {reason!r} lacks {case.words}")
            if events:
                problems.append(f"{case.label}: dead-lettered but has outcomes {events}")
            continue
        if len(events) != 1:
            problems.append(f"{case.label}: {len(events)} outcome events")
            continue
        event = events[0]
        view = pipeline.status(case.order_id)
        if case.expect == "completed":
            if event.kind is not OutcomeKind.COMPLETED:
                problems.append(f"{case.label}: {event.fields}")
            continue
        detail = str(event.fields.get("detail", ""))
        if event.kind is not OutcomeKind.FAILED or event.fields["reason"] != "INVALID_ORDER":
            problems.append(f"{case.label}: {event.kind} {event.fields.get('reason')}")
        elif not all(w in detail for w in case.words):
            problems.append(f"{case.label}: detail {detail!r} lacks {case.words}")
        if view is None or (view.status, view.charges, view.refunds) != ("FAILED", 0, 0):
            problems.append(f"{case.label}: state {view}")
        if pipeline.gateway_state(f"{case.order_id}:1") is not None:
            problems.append(f"{case.label}: the payment gateway saw it")
        if case.order_id in worker_log:
            problems.append(f"{case.label}: a worker received a task for it")
    assert not problems, f"{len(problems)} problems: {problems}"
    # The checks above can see a worker's work: the valid order reached it.
    assert f"{control_id}:1:1:" in worker_log or control_id in worker_log
    assert pipeline.status(control_id).charges == 1  # type: ignore[union-attr]
    assert pipeline.stock(sku) == 98, "only the valid order may take stock"
    bridge_log = pipeline.stack.bridge_log.read_text(errors="replace")
    assert "Traceback" not in bridge_log and "handler crashed" not in bridge_log


# --- a stack of its own, with a lower MAX_MESSAGE_BYTES ------------------------------------


@pytest.fixture(scope="module")
def small_limit_pipeline(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pipeline]:
    log_dir = tmp_path_factory.mktemp("e2e-small-limit")
    with (
        NatsServer() as nats_server,
        RedisServer() as redis_server,
        e2e.running_pipeline(
            nats_server.url,
            redis_server.url,
            log_dir,
            {"MAX_MESSAGE_BYTES": str(OWN_MAX_MESSAGE_BYTES)},
        ) as running,
    ):
        yield running


def _padded(order_id: str, sku: str, size: int) -> bytes:
    """A valid order padded with an unknown field (ignored by the decoder) to ``size`` bytes."""
    base = created(order_id, [(sku, 1, 4.00)])
    pad = size - len(base) - 4  # tag (1 byte) + length varint (3 bytes)
    data = (
        base + b"\x32" + bytes([pad & 0x7F | 0x80, pad >> 7 & 0x7F | 0x80, pad >> 14]) + b"p" * pad
    )
    assert len(data) == size and pad >> 21 == 0
    return data


def test_a_message_above_max_message_bytes_is_dead_lettered_and_one_at_it_is_processed(
    small_limit_pipeline: Pipeline,
) -> None:
    pipeline = small_limit_pipeline
    sku = unique("sku")
    pipeline.set_stock(sku, 10)
    at_limit, above = unique("at-limit"), unique("above-limit")

    with ReadyProbe(pipeline.stack.port) as probe:
        ok = pipeline.publish(_padded(at_limit, sku, OWN_MAX_MESSAGE_BYTES), msg_id=at_limit)
        big = pipeline.publish(_padded(above, sku, OWN_MAX_MESSAGE_BYTES + 1), msg_id=above)
        letter = pipeline.await_dead_letter(big.seq, timeout=60)
        event = pipeline.await_outcome(at_limit)
        pipeline.await_idle(after_seq=max(ok.seq, big.seq), timeout=60)
    assert not probe.failures, probe.failures

    reason = letter.headers[names.HDR_DLQ_REASON]
    assert str(OWN_MAX_MESSAGE_BYTES) in reason and "bytes" in reason, reason
    assert len(letter.data) == OWN_MAX_MESSAGE_BYTES + 1
    assert pipeline.outcomes_for(above) == []
    assert pipeline.status(above) is None, "an oversized message must not touch order state"
    assert above not in _worker_logs(pipeline)
    assert event.kind is OutcomeKind.COMPLETED
    assert pipeline.stock(sku) == 9


def test_an_invalid_order_whose_detail_outgrows_max_payload_still_ends(
    small_limit_pipeline: Pipeline,
) -> None:
    """Regression for a bug this test found (fixed in 123f393). The currency code was
    echoed into the ``INVALID_ORDER`` detail unbounded and through ``repr`` (``\\x00``
    becomes four characters), so a 300 kB message gave a 1.2 MB ``OrderFailed`` event
    that NATS refuses (max_payload 1 MiB). The bridge naked, failed the same publish on
    every delivery, and after the server's last delivery the order had neither an
    outcome event nor a dead letter."""
    pipeline = small_limit_pipeline
    order_id, sku = unique("huge-detail"), unique("sku")
    data = created(order_id, [(sku, 1, 1.0)], total=1.0, currency="\x00" * 300_000)
    assert len(data) < OWN_MAX_MESSAGE_BYTES

    ack = pipeline.publish(data, msg_id=order_id)

    def ended() -> str | None:
        if pipeline.outcomes_for(order_id):
            return "outcome"
        letters = pipeline.dlq_messages()
        if any(d.headers.get(names.HDR_DLQ_SEQUENCE) == str(ack.seq) for d in letters):
            return "dead letter"
        return None

    try:
        wait_until(lambda: ended() is not None, 45, interval=0.5, what=f"order {order_id} to end")
    except TimeoutError:
        info = pipeline.consumer_info()
        view = pipeline.status(order_id)
        log = pipeline.stack.bridge_log.read_text(errors="replace")
        failures = [line[:200] for line in log.splitlines() if order_id in line]
        pytest.fail(
            f"no outcome and no dead letter after 45 s; order state "
            f"{view and (view.status, view.reason, len(view.detail))}; consumer "
            f"redelivered={info.num_redelivered} ack_pending={info.num_ack_pending}; "
            f"bridge log: {failures[-3:]}"
        )
    if ended() == "outcome":
        event = pipeline.outcomes_for(order_id)[0]
        assert event.fields["reason"] == "INVALID_ORDER"
        assert "currency" in str(event.fields["detail"])
