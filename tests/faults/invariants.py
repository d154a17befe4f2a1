"""The contract a fault test checks once the faults are over: every order of the
:class:`~workload.Workload` ended exactly once, and JetStream (outcome events,
dead letters), Redis (order state, charges, stock) and the simulated gateway's
books agree with the plan and with each other.
"""

from __future__ import annotations

import contextlib
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from workload import COMPLETED, INVALID, Planned, Workload

from bridge import codec
from orders import names
from orders.domain.model import OutcomeKind

if TYPE_CHECKING:
    from harness import FaultStack

SETTLE_TIMEOUT_S = 180.0
COMPENSATION_GRACE_S = 30.0
DEAD_LETTERED = "DEAD_LETTERED"


@dataclass
class Report:
    """What happened to every order, and every way it differs from the contract."""

    orders: int = 0
    stats: Counter[str] = field(default_factory=Counter)
    problems: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))
    stock: dict[str, tuple[int, int]] = field(default_factory=dict)  # sku: (expected, actual)
    consumer: str = ""
    redeliveries: int = 0  # deliveries of ORDER.created beyond one per stored message
    waited_s: float = 0.0

    @property
    def ok(self) -> bool:
        return not any(self.problems.values())

    def problem(self, kind: str, detail: str) -> None:
        self.problems[kind].append(detail)

    def summary(self) -> str:
        lines = [
            f"{self.orders} orders; outcomes {dict(sorted(self.stats.items()))}",
            f"consumer: {self.consumer}, {self.redeliveries} redeliveries; "
            f"checked after {self.waited_s:.0f}s",
            "problems: "
            + (", ".join(f"{k}={len(v)}" for k, v in self.problems.items() if v) or "none"),
        ]
        for kind, details in self.problems.items():
            for detail in details[:5]:
                lines.append(f"  {kind}: {detail}")
        lines.append("stock (expected, actual): " + str(self.stock))
        return "\n".join(lines)


def check_invariants(
    stack: FaultStack,
    workload: Workload,
    *,
    dead_letter_ok: bool = False,
    timeout: float = SETTLE_TIMEOUT_S,
) -> Report:
    """Wait (bounded) until every order has ended, then compare everything with the plan.

    ``dead_letter_ok``: an order that reaches the workers may end in the DLQ instead
    of an outcome (transient faults outlasted every delivery); it must then be fully
    compensated. Invalid orders never reach a worker, so never qualify.

    Compensation runs after the dead letter is stored, and stock or charges may
    still be moving when the consumer is idle, so a report with problems is
    computed again until it is clean or the time is up.
    """
    workload.join()
    started = time.monotonic()
    deadline = started + timeout
    while True:
        info = _consumer_info(stack)
        idle = info is not None and info.num_pending == 0 and info.num_ack_pending == 0
        if idle or time.monotonic() >= deadline:
            report = _report(stack, workload, dead_letter_ok)
            report.consumer = _describe(info)
            if info is not None and info.num_pending == 0:
                report.redeliveries = info.delivered.consumer_seq - _stored_inputs(stack)
            report.waited_s = time.monotonic() - started
            if report.ok or time.monotonic() >= deadline:
                return report
            if idle:  # only compensations may still move: give them a little longer
                deadline = min(deadline, time.monotonic() + COMPENSATION_GRACE_S)
        time.sleep(2.0)


def _consumer_info(stack: FaultStack) -> Any:
    try:
        return stack.pipeline.consumer_info()
    except Exception:  # a server being restarted
        return None


def _stored_inputs(stack: FaultStack) -> int:
    async def count(js: Any) -> int:
        info = await js.stream_info(names.ORDERS_STREAM, subjects_filter=names.SUBJECT_CREATED)
        return (info.state.subjects or {}).get(names.SUBJECT_CREATED, 0)

    return stack.pipeline._nats(count)


def _describe(info: Any) -> str:
    if info is None:
        return "no answer"
    return (
        f"pending {info.num_pending}, ack pending {info.num_ack_pending}, "
        f"redelivered {info.num_redelivered}"
    )


def _report(stack: FaultStack, workload: Workload, dead_letter_ok: bool) -> Report:
    pipeline = stack.pipeline
    report = Report(orders=len(workload.orders))
    outcomes: dict[str, list[Any]] = defaultdict(list)
    for event in pipeline.all_outcomes():
        outcomes[event.order_id].append(event)
    letters_by_order: dict[str, list[Any]] = defaultdict(list)
    letters_by_payload: dict[bytes, list[Any]] = defaultdict(list)
    for letter in pipeline.dlq_messages():
        letters_by_payload[letter.data].append(letter)
        with contextlib.suppress(codec.PoisonMessage):
            raw = codec.decode_order_created(letter.data, max_bytes=1 << 20)
            letters_by_order[raw.order_id].append(letter)

    completed_qty: Counter[str] = Counter()
    for plan in workload.orders:
        events, letters = outcomes.get(plan.key, []), letters_by_order.get(plan.key, [])
        view = pipeline.status(plan.key)
        if view is not None and view.run > 1:
            report.stats["workflow re-sent"] += 1  # stalled or failed: sent again
        if letters:
            report.stats["dead-lettered"] += 1
            if not (dead_letter_ok and plan.kind != INVALID):
                detail = f"{plan.key} ({plan.kind}): {_reason(letters)}"
                report.problem("unexpected dead letter", detail)
        if len(events) > 1:
            kinds = [e.fields.get("reason") or e.kind.value for e in events]
            report.problem("duplicated outcome", f"{plan.key}: {kinds}")
        if not events:
            if not letters:
                report.problem("missing", f"{plan.key} ({plan.kind}): state {_state(view)}")
            else:
                _check_compensated(report, pipeline, plan, view)
            continue
        event = events[0]
        got = COMPLETED if event.kind is OutcomeKind.COMPLETED else str(event.fields["reason"])
        report.stats[got] += 1
        if got not in plan.expect:
            report.problem("wrong outcome", f"{plan.key} ({plan.kind}): {got}")
        if event.msg_id != names.outcome_msg_id(plan.key, event.kind.value):
            report.problem("wrong msg id", f"{plan.key}: {event.msg_id!r}")
        if got == COMPLETED:
            completed_qty.update(dict(plan.quantities))
        _check_state(report, pipeline, plan, view, got)

    _check_poison(report, workload, outcomes, letters_by_payload)
    # Another workload of the same test (a baseline run first) is not a stray.
    planned = set().union(*(w.plans for w in stack.workloads))
    strays = sorted(set(outcomes) - planned)
    for order_id in strays:
        report.problem("outcome for no planned order", repr(order_id))

    for sku, initial in workload.initial_stock.items():
        expected, actual = initial - completed_qty[sku], pipeline.stock(sku)
        report.stock[sku.removeprefix(workload.tag + "-")] = (expected, actual)
        if expected != actual:
            report.problem("stock not conserved", f"{sku}: expected {expected}, actual {actual}")
    return report


def _state(view: Any) -> str:
    if view is None:
        return "none"
    return f"{view.status}/{view.reason or '-'} epoch {view.epoch} run {view.run}"


def _reason(letters: list[Any]) -> str:
    return letters[0].headers.get(names.HDR_DLQ_REASON, "")[:120]


def _check_state(report: Report, pipeline: Any, plan: Planned, view: Any, got: str) -> None:
    """Redis agrees with the outcome event, and money moved once or not at all."""
    status = "COMPLETED" if got == COMPLETED else "FAILED"
    if view is None or view.status != status or (got != COMPLETED and view.reason != got):
        report.problem("state disagrees", f"{plan.key}: outcome {got}, state {_state(view)}")
        return
    net = 1 if got == COMPLETED else 0
    if view.charges - view.refunds != net:
        report.problem(
            "charge anomaly",
            f"{plan.key}: {got} with {view.charges} charges, {view.refunds} refunds",
        )
    if plan.kind == INVALID and view.charges:
        report.problem("charge anomaly", f"{plan.key}: invalid order charged {view.charges}x")
    _check_gateway(report, pipeline, plan, view, completed_epoch=view.epoch if net else None)


def _check_compensated(report: Report, pipeline: Any, plan: Planned, view: Any) -> None:
    """A dead-lettered order holds no money and no stock (stock: checked per SKU)."""
    if view is None or (view.status, view.reason) != ("FAILED", DEAD_LETTERED):
        report.problem("state disagrees", f"{plan.key}: dead-lettered, state {_state(view)}")
        return
    if view.charges != view.refunds:
        report.problem(
            "charge anomaly",
            f"{plan.key}: dead-lettered with {view.charges} charges, {view.refunds} refunds",
        )
    _check_gateway(report, pipeline, plan, view, completed_epoch=None)


def _check_gateway(
    report: Report, pipeline: Any, plan: Planned, view: Any, completed_epoch: int | None
) -> None:
    """The gateway's own books: an approved charge only for the epoch that completed."""
    for epoch in range(1, view.epoch + 1):
        state = pipeline.gateway_state(f"{plan.key}:{epoch}")
        holds_money = state == "approved"
        if holds_money != (epoch == completed_epoch):
            report.problem("gateway books", f"{plan.key} epoch {epoch}: charge {state}")


def _check_poison(
    report: Report,
    workload: Workload,
    outcomes: dict[str, list[Any]],
    letters_by_payload: dict[bytes, list[Any]],
) -> None:
    for plan in workload.poison:
        letters = letters_by_payload.get(plan.payload, [])
        report.stats["poison dead-lettered"] += bool(letters)
        if len(letters) != 1:
            report.problem("poison", f"{plan.key}: {len(letters)} dead letters")
            continue
        headers = letters[0].headers
        if not headers.get(names.HDR_DLQ_REASON, "").strip():
            report.problem("poison", f"{plan.key}: dead letter without a reason")
        if headers.get(names.HDR_DLQ_SUBJECT) != names.SUBJECT_CREATED:
            report.problem("poison", f"{plan.key}: original subject {headers}")
    if "" in outcomes:
        report.problem("poison", f"{len(outcomes[''])} outcome events without an order id")
