"""The demo's cases: what each publishes to ``ORDER.created``, what the contract
says comes out of it, and how what came out compares, as a table.

One order per contract outcome (completed; failed for payment, stock and
validity; dead-lettered as poison) and the first one published again under
another message id, which must bring no second outcome and no second charge.
"""

from __future__ import annotations

import io
import shutil
import sys
from dataclasses import dataclass, field
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from bridge.codec import encode_order_created
from orders import names
from orders.domain.model import OutcomeKind, RawItem, RawOrder
from orders.settings import Simulation


@dataclass
class Case:
    """One demo publish: what goes in and what the contract says comes out."""

    label: str
    order_id: str
    data: bytes
    msg_id: str
    expected: str
    seq: int = 0
    actual: str = "(nothing yet)"
    detail: str = ""


@dataclass
class Observed:
    """What the demo read back: outcome events by order id, dead letters by the
    sequence of the message they replace, and whether the duplicate was acked."""

    outcomes: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    dead_letters: dict[int, str] = field(default_factory=dict)  # original seq -> reason
    duplicate_acked: bool = False


# Stock the demo resets on each run (data persists in .run/ between runs).
WIDGET = "demo-widget"
GADGET = "demo-gadget"
DEMO_STOCK = {WIDGET: 100, GADGET: 5}

# Bytes protobuf cannot parse: 0xff is field 31 with wire type 7, which does not exist.
POISON = b"\xff\xff not an OrderCreated"


def _order(order_id: str, items: list[tuple[str, int, float]], total: float) -> bytes:
    return encode_order_created(
        RawOrder(
            order_id=order_id,
            customer_id="demo-customer",
            items=tuple(RawItem(product_id=p, quantity=q, unit_price=u) for p, q, u in items),
            total_amount=total,
            currency="USD",
        )
    )


def build_cases(run_id: str, settings: Simulation) -> list[Case]:
    above_limit = float(int(settings.payment_decline_above) + 1)
    ok = f"{run_id}-ok"
    ok_data = _order(ok, [(WIDGET, 2, 19.99), (GADGET, 1, 5.00)], 44.98)
    specs = [
        ("completes", ok, ok_data, "COMPLETED"),
        (
            "declined",
            f"{run_id}-declined",
            _order(f"{run_id}-declined", [(WIDGET, 1, above_limit)], above_limit),
            "FAILED PAYMENT_DECLINED",
        ),
        (
            "out of stock",
            f"{run_id}-out-of-stock",
            _order(f"{run_id}-out-of-stock", [(GADGET, DEMO_STOCK[GADGET] + 1, 5.00)], 30.00),
            "FAILED OUT_OF_STOCK",
        ),
        (
            "invalid",
            f"{run_id}-invalid",
            _order(f"{run_id}-invalid", [(WIDGET, 1, 19.99)], 29.99),
            "FAILED INVALID_ORDER",
        ),
        ("poison", f"{run_id}-poison", POISON, "DLQ"),
    ]
    cases = [
        Case(label, order_id, data, order_id, expected) for label, order_id, data, expected in specs
    ]
    cases.append(Case("duplicate", ok, ok_data, f"{ok}:again", "no second outcome, 1 charge"))
    return cases


def judge(cases: list[Case], observed: Observed, charges: int) -> None:
    for case in cases:
        events = observed.outcomes.get(case.order_id, [])
        if case.label == "duplicate":
            if observed.duplicate_acked:
                s = "" if len(events) == 1 else "s"
                case.actual = (
                    "no second outcome, 1 charge"
                    if len(events) == 1 and charges == 1
                    else f"{len(events)} outcome event{s}, {charges} charge(s)"
                )
            case.detail = f"published again with {names.HDR_MSG_ID} {case.msg_id}"
        elif case.expected == "DLQ":
            if case.seq in observed.dead_letters:
                case.actual = "DLQ"
                case.detail = observed.dead_letters[case.seq]
        elif events:
            first = events[0]
            if first["kind"] is OutcomeKind.COMPLETED:
                case.actual = "COMPLETED"
                total = f"{first['total_amount']:.2f} {first['currency']}"
                case.detail = f"payment {first['payment_id']}, {total}"
            else:
                case.actual = f"FAILED {first['reason']}"
                case.detail = str(first["detail"])
            if len(events) > 1:
                case.actual += f" (x{len(events)})"


def render_table(cases: list[Case]) -> str:
    table = Table(title="demo orders", title_justify="left")
    table.add_column("order", overflow="fold")
    table.add_column("case")
    table.add_column("expected")
    table.add_column("actual")
    table.add_column("", justify="center")
    table.add_column("detail", overflow="fold")
    for case in cases:
        ok = case.actual == case.expected
        table.add_row(
            escape(case.order_id),
            case.label,
            case.expected,
            f"[{'green' if ok else 'red'}]{escape(case.actual)}[/]",
            "[green]ok[/]" if ok else "[red]MISMATCH[/]",
            escape(case.detail),
        )
    colour = sys.stdout.isatty()
    # honcho's prefix ("12:00:00 demo   | ") takes about 20 columns.
    width = shutil.get_terminal_size((160, 24)).columns - 20 if colour else 160
    buffer = io.StringIO()
    Console(
        file=buffer,
        width=max(width, 80),
        force_terminal=colour,
        color_system="standard" if colour else None,
        highlight=False,
    ).print(table)
    return "\n".join(line.rstrip() for line in buffer.getvalue().splitlines())
