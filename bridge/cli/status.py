"""``orders status ORDER_ID``: what the pipeline knows about one order."""

from __future__ import annotations

import click
from rich.markup import escape
from rich.table import Table

from bridge.cli import _common
from orders.adapters.order_state import OrderState, OrderView
from orders.domain import money

UNKNOWN = "UNKNOWN"

_STYLES = {"COMPLETED": "green", "FAILED": "red", "PROCESSING": "yellow", "RECEIVED": "cyan"}


@click.command(short_help="Show what is known about one order.")
@click.argument("order_id")
@click.option("--json", "as_json", is_flag=True, help="Print the contract's JSON object.")
def status(order_id: str, as_json: bool) -> None:
    """Show the status of ORDER_ID; exit 1 if the order was never seen."""
    config = _common.settings()
    with _common.redis_session(config) as client:
        view = OrderState(client).view(order_id)
    if as_json:
        _common.print_json(view.as_json() if view else _unknown(order_id))
    else:
        _render(order_id, view)
    if view is None:
        raise click.exceptions.Exit(_common.EXIT_FAILURE)


def _unknown(order_id: str) -> dict[str, object]:
    return {"order_id": order_id, "status": UNKNOWN, "reason": None, "charges": 0, "refunds": 0}


def _render(order_id: str, view: OrderView | None) -> None:
    out = _common.console()
    if view is None:
        out.print(f"order [bold]{escape(order_id)}[/]: [dim]{UNKNOWN}[/] (never seen)")
        return
    table = Table.grid(padding=(0, 2))
    table.add_row("order", f"[bold]{escape(view.order_id)}[/]")
    table.add_row("status", f"[{_STYLES.get(view.status, 'white')}]{view.status}[/]")
    if view.reason:
        table.add_row("reason", view.reason)
    if view.detail:
        table.add_row("detail", escape(view.detail))
    table.add_row("charges", str(view.charges))
    table.add_row("refunds", str(view.refunds))
    if view.outcome and view.outcome.payment_id:
        table.add_row("payment", escape(view.outcome.payment_id))
    if view.outcome and view.outcome.currency:
        table.add_row("total", money.format_money(view.outcome.total_minor, view.outcome.currency))
    table.add_row("attempt", f"epoch {view.epoch}, run {view.run}")
    table.add_row("event stored", "yes" if view.published else "no")
    out.print(table)
