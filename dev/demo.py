"""The demo of ``orders run``: once the bridge is ready, one order per contract
outcome is published to ``ORDER.created`` and the outcome read back from
JetStream into a table (:mod:`dev.demo_cases`, :mod:`dev.demo_outcomes`).

It runs on a thread of its own beside honcho's loop and says everything through
:attr:`DemoContext.say`; it never takes the system down: a failure is one line.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from bridge.nats_connect import connect as nats_connect
from bridge.settings import CliSettings
from bridge.tracing import new_order_trace
from dev.demo_cases import DEMO_STOCK, Case, Observed, build_cases, judge, render_table
from dev.demo_outcomes import observe
from dev.servers import LOOPBACK
from orders import names
from orders.adapters.order_state import OrderState
from orders.adapters.redis_inventory import RedisInventory
from orders.bootstrap import redis_client

READY_TIMEOUT_S = 90.0


@dataclass
class DemoContext:
    settings: CliSettings
    bridge_port: int | None
    web_port: int | None
    flower_user: str
    flower_password: str
    hint_env: str
    run_dir: str  # where embedded servers keep their data, relative to the current directory
    stop: threading.Event
    say: Callable[[str], None]

    def raise_if_stopped(self) -> None:
        if self.stop.is_set():
            raise DemoStopped


class DemoStopped(Exception):
    """``orders run`` is shutting down."""


def demo_main(ctx: DemoContext) -> None:
    try:
        _demo(ctx)
    except DemoStopped:
        pass
    except Exception as error:  # the demo must never take the system down
        ctx.say(f"demo failed: {type(error).__name__}: {error}")


def _demo(ctx: DemoContext) -> None:
    if ctx.bridge_port is None:
        ctx.say("no `bridge` process in the Procfile; demo skipped")
        return
    bridge = f"http://{LOOPBACK}:{ctx.bridge_port}"
    ctx.say(f"waiting for the bridge to be ready at {bridge}/ready ...")
    if not _wait_ready(f"{bridge}/ready", ctx):
        return
    run_id = f"demo-{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(2)}"
    cases = build_cases(run_id, ctx.settings)
    client = redis_client(ctx.settings)
    try:
        inventory = RedisInventory(client, ctx.settings.inventory_default_stock)
        for sku, quantity in DEMO_STOCK.items():
            inventory.set_stock(sku, quantity)
        ctx.say("stock set: " + ", ".join(f"{s}={q}" for s, q in DEMO_STOCK.items()))
        observed = asyncio.run(_publish_and_observe(cases, ctx))
        completed = next(c for c in cases if c.label == "completes")
        view = OrderState(client).view(completed.order_id)
        charges = view.charges if view else 0
    finally:
        client.close()
    judge(cases, observed, charges)
    ctx.say(render_table(cases))
    matched = sum(case.actual == case.expected for case in cases)
    ctx.say(f"demo: {matched}/{len(cases)} outcomes as expected")
    ctx.say(_where(ctx, completed.order_id))


def _wait_ready(url: str, ctx: DemoContext) -> bool:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    deadline = time.monotonic() + READY_TIMEOUT_S
    last = "no answer"
    while time.monotonic() < deadline:
        try:
            with opener.open(url, timeout=2) as response:
                if response.status == 200:
                    return True
        except urllib.error.HTTPError as error:
            last = f"{error.code} {error.read(300).decode(errors='replace')}"
            error.close()
        except OSError as error:
            last = str(error)
        if ctx.stop.wait(0.5):
            raise DemoStopped
    ctx.say(
        f"the bridge was not ready within {READY_TIMEOUT_S:g}s (last answer: {last}); "
        "demo skipped, the processes keep running (see their output above)"
    )
    return False


async def _publish_and_observe(cases: list[Case], ctx: DemoContext) -> Observed:
    nc = await nats_connect(
        ctx.settings, name="orders-demo", allow_reconnect=False, error_cb=_ignore_error
    )
    try:
        js = nc.jetstream(timeout=5)
        dlq_start = (await js.stream_info(names.DLQ_STREAM)).state.last_seq + 1
        for case in cases:
            ctx.raise_if_stopped()
            headers = {names.HDR_MSG_ID: case.msg_id}
            with new_order_trace(names.SUBJECT_CREATED, case.msg_id, headers):
                ack = await js.publish(names.SUBJECT_CREATED, case.data, headers=headers)
            case.seq = ack.seq
        ctx.say(f"published {len(cases)} messages to {names.SUBJECT_CREATED}; waiting for outcomes")
        return await observe(js, cases, dlq_start, ctx.raise_if_stopped)
    finally:
        await nc.close()


async def _ignore_error(error: Exception) -> None:
    # nats-py logs each connection error with a traceback otherwise; the demo
    # reports what it failed to do instead.
    return None


def _where(ctx: DemoContext, order_id: str) -> str:
    lines = []
    if ctx.web_port is not None:
        lines.append(
            f"Flower:  http://{LOOPBACK}:{ctx.web_port}/  "
            f"(user {ctx.flower_user}, password {ctx.flower_password})"
        )
    bridge = f"http://{LOOPBACK}:{ctx.bridge_port}"
    lines.append(f"bridge:  {bridge}/health  {bridge}/ready  {bridge}/metrics")
    lines.append(f"try:     {ctx.hint_env}{_orders_script()} status {order_id} --json")
    kept = f"; data stays in {ctx.run_dir}/ for the next run" if ctx.hint_env else ""
    lines.append(f"Ctrl-C stops everything{kept}")
    return "\n".join(lines)


def _orders_script() -> str:
    """How to call ``orders`` from this directory: the venv's bin need not be on PATH."""
    script = Path(sys.executable).parent / "orders"
    if not script.exists():
        return "orders"
    with contextlib.suppress(ValueError):
        return str(script.relative_to(Path.cwd()))
    return str(script)
