"""``orders inventory``: set and show available stock per product (SKU)."""

from __future__ import annotations

import click
from rich.markup import escape
from rich.table import Column, Table

from bridge.cli import _common
from orders.adapters.redis_inventory import RedisInventory


@click.group()
def inventory() -> None:
    """Set or show available stock."""


# A negative QTY is a value to reject, not an unknown option.
@inventory.command("set", context_settings={"ignore_unknown_options": True})
@click.argument("sku")
@click.argument("qty", type=click.IntRange(min=0))
def set_stock(sku: str, qty: int) -> None:
    """Set the available stock of SKU to QTY."""
    config = _common.settings()
    with _common.redis_session(config) as client:
        RedisInventory(client, config.inventory_default_stock).set_stock(sku, qty)
    click.echo(f"{sku}: {qty}")


@inventory.command("show")
@click.argument("skus", metavar="SKU...", nargs=-1, required=True)
@click.option("--json", "as_json", is_flag=True, help='Print {"SKU": available, ...}.')
def show_stock(skus: tuple[str, ...], as_json: bool) -> None:
    """Show the available stock of each SKU (never-set products have the default)."""
    config = _common.settings()
    with _common.redis_session(config) as client:
        available = RedisInventory(client, config.inventory_default_stock).available(list(skus))
    if as_json:
        _common.print_json(available)
        return
    table = Table("SKU", Column("available", justify="right"))
    for sku, quantity in available.items():
        table.add_row(escape(sku), str(quantity))
    _common.console().print(table)
