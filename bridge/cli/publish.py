"""``orders publish``: synthetic ``OrderCreated`` load, as a producer would send it."""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from decimal import ROUND_FLOOR, Decimal

import click
from nats.js import JetStreamContext
from nats.js.api import PubAck
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

from bridge.app import ensure_order_topology
from bridge.cli import _common
from bridge.codec import encode_order_created
from bridge.settings import CliSettings
from bridge.tracing import new_order_trace
from orders import names, telemetry
from orders.domain import money
from orders.domain.model import RawItem, RawOrder

SERVICE_NAME = "orders-cli"
CURRENCY = "USD"
SKUS = ("SKU-APPLE", "SKU-BREAD", "SKU-CHEESE", "SKU-DATES", "SKU-EGGS", "SKU-FLOUR")
# Publishes awaiting their PubAck; enough to keep a local server busy.
WINDOW = 512


@dataclass(frozen=True, slots=True)
class Summary:
    count: int
    duplicates: int
    first_order_id: str
    last_order_id: str
    elapsed_s: float

    def as_json(self) -> dict[str, object]:
        return {
            "count": self.count,
            "duplicates": self.duplicates,
            "first_order_id": self.first_order_id,
            "last_order_id": self.last_order_id,
            "elapsed_s": round(self.elapsed_s, 3),
            "rate": round(self.count / self.elapsed_s, 1) if self.elapsed_s else None,
        }


def synthetic_order(order_id: str, rng: random.Random, *, above_minor: int | None) -> RawOrder:
    """A valid order of 1-3 items priced in whole cents, so its total is exactly the
    sum of its items; with ``above_minor``, one item costing more than that."""
    if above_minor is not None:
        lines = [(rng.choice(SKUS), 1, above_minor + 1 + rng.randrange(100))]
    else:
        lines = [
            (sku, rng.randint(1, 3), rng.randint(100, 9_999))
            for sku in rng.sample(SKUS, rng.randint(1, 3))
        ]
    total_minor = sum(quantity * price for _, quantity, price in lines)
    return RawOrder(
        order_id=order_id,
        customer_id=f"cust-{rng.randrange(100_000):05d}",
        items=tuple(
            RawItem(
                product_id=sku,
                quantity=quantity,
                unit_price=money.to_major_units(price, CURRENCY),
            )
            for sku, quantity, price in lines
        ),
        total_amount=money.to_major_units(total_minor, CURRENCY),
        currency=CURRENCY,
    )


def _decline_floor_minor(limit: Decimal) -> int:
    """Minor units at or below ``limit``; one more is above it."""
    scaled = limit.scaleb(money.exponent(CURRENCY)).to_integral_value(rounding=ROUND_FLOOR)
    return int(scaled)


@click.command(short_help="Publish synthetic orders (load).")
@click.option("--count", "-n", type=click.IntRange(min=1), required=True, help="Orders to send.")
@click.option(
    "--rate", type=click.FloatRange(min=0, min_open=True), help="Orders per second (default: max)."
)
@click.option(
    "--decline-every",
    type=click.IntRange(min=1),
    metavar="K",
    help="Price every K-th order above PAYMENT_DECLINE_ABOVE, so its payment is declined.",
)
@click.option("--prefix", help="Order ids are PREFIX-1 ... PREFIX-N (default: ord-<random>).")
@click.option("--seed", type=int, help="Seed for reproducible orders.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON summary.")
def publish(
    count: int,
    rate: float | None,
    decline_every: int | None,
    prefix: str | None,
    seed: int | None,
    as_json: bool,
) -> None:
    """Publish synthetic orders to ORDER.created, each with Nats-Msg-Id = its order id.

    Creates the streams if missing. Every product starts with INVENTORY_DEFAULT_STOCK,
    so large runs end in OUT_OF_STOCK unless stock is raised with `orders inventory set`.
    """
    config = _common.settings()
    prefix = prefix or f"ord-{uuid.uuid4().hex[:8]}"
    if len(f"{prefix}-{count}") > config.max_id_length:
        raise click.BadParameter(f"order ids would exceed MAX_ID_LENGTH ({config.max_id_length})")
    above = _decline_floor_minor(config.payment_decline_above) if decline_every else None
    if above is not None and above + 100 > money.MAX_MINOR:
        raise click.BadParameter("PAYMENT_DECLINE_ABOVE is too large to price an order above it")
    orders = _synthetic_payloads(prefix, count, random.Random(seed), above, decline_every)
    telemetry.setup_tracing(SERVICE_NAME)  # each order's trace starts here
    try:
        summary = _publish_with_progress(config, orders, rate)
    finally:
        telemetry.shutdown_tracing()
    if as_json:
        _common.print_json(summary.as_json())
        return
    report = summary.as_json()
    click.echo(
        f"published {summary.count} orders ({summary.first_order_id} .. {summary.last_order_id})"
        f" in {report['elapsed_s']} s, {report['rate']} orders/s"
        + (f", {summary.duplicates} dropped as duplicates" if summary.duplicates else "")
    )


def _synthetic_payloads(
    prefix: str, count: int, rng: random.Random, above: int | None, decline_every: int | None
) -> list[tuple[str, bytes]]:
    """``PREFIX-1`` .. ``PREFIX-count`` encoded; every ``decline_every``-th one priced
    above ``above`` minor units."""
    orders = []
    for n in range(1, count + 1):
        declined = decline_every is not None and n % decline_every == 0
        order = synthetic_order(f"{prefix}-{n}", rng, above_minor=above if declined else None)
        orders.append((order.order_id, encode_order_created(order)))
    return orders


def _publish_with_progress(
    config: CliSettings, orders: list[tuple[str, bytes]], rate: float | None
) -> Summary:
    progress_console = Console(stderr=True)
    with Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=progress_console,
        # Outside a terminal a live bar is noise in a log; the summary says it all.
        disable=not progress_console.is_terminal,
    ) as progress:
        task = progress.add_task("publishing", total=len(orders))
        return _common.run(_publish_all(config, orders, rate, lambda: progress.advance(task)))


async def _publish_all(
    config: CliSettings,
    orders: list[tuple[str, bytes]],
    rate: float | None,
    on_ack: Callable[[], None],
) -> Summary:
    timeout = config.nats_connect_timeout.total_seconds()
    duplicates = 0

    def acked(future: asyncio.Future[PubAck]) -> None:
        # Counted as the acks arrive, so the bar moves even while a slow --rate
        # keeps the window from filling.
        nonlocal duplicates
        if not future.cancelled() and future.exception() is None:
            duplicates += bool(future.result().duplicate)
            on_ack()

    async def settle(future: asyncio.Future[PubAck]) -> None:
        await asyncio.wait_for(future, timeout)  # raises the publish's error, if any

    async with _common.jetstream(config) as js:
        await ensure_order_topology(js, config)
        pending: deque[asyncio.Future[PubAck]] = deque()
        start = time.monotonic()
        for n, (order_id, payload) in enumerate(orders):
            if rate:
                # Each send is due at start + n/rate: a late send does not push back
                # the ones after it, so the average rate does not drift.
                delay = start + n / rate - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
            future = await _send(js, order_id, payload)
            future.add_done_callback(acked)
            pending.append(future)
            if len(pending) >= WINDOW:
                await settle(pending.popleft())
        while pending:
            await settle(pending.popleft())
        elapsed = time.monotonic() - start
    return Summary(
        count=len(orders),
        duplicates=duplicates,
        first_order_id=orders[0][0],
        last_order_id=orders[-1][0],
        elapsed_s=elapsed,
    )


async def _send(js: JetStreamContext, order_id: str, payload: bytes) -> asyncio.Future[PubAck]:
    headers = {names.HDR_MSG_ID: order_id}
    with new_order_trace(names.SUBJECT_CREATED, order_id, headers):
        return await js.publish_async(
            names.SUBJECT_CREATED, payload, headers=headers, stream=names.ORDERS_STREAM
        )
