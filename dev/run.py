"""``orders run`` (what ``make run`` executes): the whole system on one machine.

1. Embedded NATS (JetStream) and Redis on free loopback ports, their data in
   ``.run/`` of the current directory, unless ``NATS_URL`` / ``REDIS_URL`` point
   elsewhere.
2. The Procfile's processes under honcho, their output interleaved with its
   prefixes, each with its own free ``$PORT``.
3. Once the bridge is ready, a demo: one order per contract outcome is published
   to ``ORDER.created`` and the outcome read back from JetStream into a table.

Ctrl-C or SIGTERM stops the processes first, the bridge before the others so
that it can drain while the worker still runs, then the servers, and exits 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import io
import os
import secrets
import shutil
import signal
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

import click
import nats.errors
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from bridge.codec import PoisonMessage, decode_outcome, encode_order_created
from bridge.nats_connect import connect as nats_connect
from bridge.tracing import new_order_trace
from dev.servers import (
    LOOPBACK,
    NatsServer,
    RedisServer,
    ServerStartError,
    ServerUnavailable,
    free_port,
)
from orders import names
from orders.adapters.order_state import OrderState
from orders.adapters.redis_inventory import RedisInventory
from orders.bootstrap import redis_client
from orders.domain.model import OutcomeKind, RawItem, RawOrder
from orders.settings import ConfigError, Settings, load_settings, redact_url

RUN_DIR = ".run"
# The Procfile at the root of the checkout dev/ is part of.
DEFAULT_PROCFILE = Path(__file__).resolve().parent.parent / "Procfile"

READY_TIMEOUT_S = 90.0
OUTCOME_TIMEOUT_S = 60.0
# Beyond the bridge's drain timeout, before honcho SIGKILLs what is still running.
KILL_GRACE_S = 10.0

BRIDGE = "bridge"  # the Procfile's process type that must stop first
DEMO_NAME = "demo"
FLOWER_USER = "admin"

EXIT_FAILURE = 1
EXIT_CONFIG = 2
# honcho's return code after the SIGINT / SIGTERM it handled.
_SIGNALLED = {130, 143}


# --- the command ------------------------------------------------------------------


@click.command("run")
@click.option(
    "--procfile",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="Procfile to run (default: the one at the root of this checkout).",
)
@click.option("--demo/--no-demo", default=True, show_default=True, help="Publish demo orders.")
def run_command(procfile: Path | None, demo: bool) -> None:
    """Start NATS, Redis, the bridge, a worker and Flower, then publish demo orders.

    NATS and Redis are embedded (data in .run/) unless NATS_URL / REDIS_URL are
    set. Ctrl-C stops everything.
    """
    try:
        from honcho.environ import parse_procfile
        from honcho.manager import Manager
    except ImportError:
        _fail("honcho is not installed: pip install -e '.[embedded]' (or `make install`)")

    if procfile is None:
        # A checkout without one: the current directory's, then.
        procfile = DEFAULT_PROCFILE if DEFAULT_PROCFILE.is_file() else Path("Procfile")
    processes = parse_procfile(_read_procfile(procfile)).processes
    if not processes:
        _fail(f"no processes in {procfile}")
    try:
        load_settings()  # the processes would each stop on a bad value; say it once
    except ConfigError as error:
        _fail(str(error), EXIT_CONFIG)

    # Until honcho installs its own handlers, SIGTERM and SIGHUP (the terminal
    # closed) unwind like Ctrl-C, so the servers, in sessions of their own and
    # out of the terminal's reach, are stopped.
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGHUP, _interrupt)
    try:
        with contextlib.ExitStack() as servers:
            try:
                nats_url, redis_url = _start_servers(servers)
            except (ServerUnavailable, ServerStartError) as error:
                _fail(str(error))
            code = _run_processes(Manager, processes, nats_url, redis_url, demo)
            click.echo("processes stopped; stopping the servers")
    except KeyboardInterrupt:
        # Before honcho took over the signals: nothing but the servers to stop.
        click.echo("interrupted; servers stopped")
        return
    click.echo("stopped")
    if code not in _SIGNALLED and code:
        click.echo(f"a process exited with code {code}; everything was stopped", err=True)
        sys.exit(code)


def _fail(message: str, code: int = EXIT_FAILURE) -> NoReturn:
    click.echo(f"orders run: {message}", err=True)
    sys.exit(code)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _read_procfile(path: Path) -> str:
    try:
        return path.read_text()
    except OSError as error:
        _fail(f"cannot read the Procfile: {error}")


# --- servers ----------------------------------------------------------------------


def _start_servers(stack: contextlib.ExitStack) -> tuple[str, str]:
    """NATS and Redis URLs: from the environment, else embedded servers started here."""
    run_dir = Path.cwd() / RUN_DIR
    nats_url = os.environ.get("NATS_URL")
    if nats_url:
        click.echo(f"NATS:  {redact_url(nats_url)} (from NATS_URL)")
    else:
        server = NatsServer(store_dir=run_dir / "nats")
        stack.callback(server.stop)
        server.start()
        nats_url = server.url
        click.echo(
            f"NATS:  {nats_url} (embedded, monitoring {server.monitor_url}, "
            f"data and log in {server.store_dir})"
        )
    redis_url = os.environ.get("REDIS_URL")
    if redis_url:
        click.echo(f"Redis: {redact_url(redis_url)} (from REDIS_URL)")
    else:
        redis_server = RedisServer(data_dir=run_dir / "redis")
        stack.callback(redis_server.stop)
        redis_server.start()
        redis_url = redis_server.url
        click.echo(f"Redis: {redis_url} (embedded, data and log in {redis_server.data_dir})")
    return nats_url, redis_url


# --- processes --------------------------------------------------------------------


def _free_ports(count: int) -> list[int]:
    ports: set[int] = set()
    while len(ports) < count:
        ports.add(free_port())
    return sorted(ports)


def _run_processes(
    manager_class: type,
    processes: dict[str, str],
    nats_url: str,
    redis_url: str,
    demo: bool,
) -> int:
    """Run the Procfile under honcho until one process exits or a signal; its return code."""
    import honcho.manager
    from honcho.printer import Message

    settings = load_settings(nats_url=nats_url, redis_url=redis_url)
    password = secrets.token_urlsafe(12)
    # The console scripts live next to this interpreter, which need not be on PATH
    # (`make run` calls .venv/bin/orders directly).
    path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    base_env = {
        **os.environ,
        "PATH": path,
        "NATS_URL": nats_url,
        "REDIS_URL": redis_url,
        "ORDERS_DEV_MODE": "1",
        # The demo's tasks appear in Flower even before Flower turns events on.
        "TASK_EVENTS": "1",
        "FLOWER_BASIC_AUTH": f"{FLOWER_USER}:{password}",
        "PYTHONUNBUFFERED": "1",
    }
    # Explicit ports rather than honcho's base port + 100 per type: each is free.
    ports = dict(zip(processes, _free_ports(len(processes)), strict=True))

    stop = threading.Event()
    manager: Any = None

    def say(text: str) -> None:
        # Through honcho's queue, so demo lines are prefixed and never cut into
        # a process's line.
        manager.events.put(
            Message(
                type="line", data=text, time=datetime.datetime.now(), name=DEMO_NAME, colour=None
            )
        )

    demo_thread = threading.Thread(
        target=_demo_main,
        args=(
            DemoContext(
                settings=settings,
                bridge_port=ports.get(BRIDGE),
                web_port=ports.get("web"),
                flower_password=password,
                # Embedded servers are on new ports each run: another shell needs them.
                hint_env="".join(
                    f"{name}={url} "
                    for name, url in (("NATS_URL", nats_url), ("REDIS_URL", redis_url))
                    if not os.environ.get(name)
                ),
                stop=stop,
                say=say,
            ),
        ),
        name="orders-demo",
        daemon=True,
    )

    def start_demo() -> None:
        if demo:
            demo_thread.start()

    # The bridge may drain for up to DRAIN_TIMEOUT; honcho's default is 5 s.
    honcho.manager.KILL_WAIT = settings.drain_timeout.total_seconds() + KILL_GRACE_S
    manager = _dev_manager(manager_class, on_started=start_demo, on_stopping=stop.set)
    for name, command in processes.items():
        manager.add_process(name, command, env={**base_env, "PORT": str(ports[name])})
    try:
        manager.loop()
    except BaseException:
        # The loop itself failed (e.g. stdout gone with the terminal): the
        # processes are in sessions of their own and would outlive us.
        manager.kill_started()
        raise
    finally:
        stop.set()
        if demo_thread.is_alive():
            demo_thread.join(timeout=5)
    return manager.returncode or 0


def _dev_manager(
    manager_class: type, on_started: Callable[[], None], on_stopping: Callable[[], None]
) -> Any:
    """A honcho ``Manager`` that stops the bridge before the rest.

    honcho SIGTERMs every process at once; the bridge would then wait its whole
    DRAIN_TIMEOUT for orders that a worker already shutting down will not
    finish. So the first Ctrl-C stops the bridge alone, and honcho's loop, seeing
    it stopped, terminates the others; a second Ctrl-C terminates everything at
    once, a third kills. When a process exits by itself, honcho's own rule
    applies: everything is terminated at once. This relies on honcho 2's
    internals (``_start``, ``_killall``, ``_all_started``, ``_processes``,
    ``_procmgr``); the dependency is pinned below 3.
    """

    class DevManager(manager_class):
        _signals = 0
        _bridge_first = False

        def _start(self) -> None:
            # loop() has just installed its signal handlers: count signals on top.
            for signum in (signal.SIGINT, signal.SIGTERM):
                signal.signal(signum, self._counting(signal.getsignal(signum)))
            # honcho ignores SIGHUP, which would leave every process running.
            on_term = signal.getsignal(signal.SIGTERM)
            assert callable(on_term)  # _counting's, installed just above
            signal.signal(signal.SIGHUP, lambda _, frame: on_term(signal.SIGTERM, frame))
            # honcho forks one helper per process here; threads start only
            # afterwards, so no fork copies a lock some thread holds.
            super()._start()
            on_started()

        def _counting(self, handler: Any) -> Callable[[int, Any], None]:
            def on_signal(signum: int, frame: Any) -> None:
                self._signals += 1
                handler(signum, frame)  # honcho's: sets the return code, calls terminate()

            return on_signal

        def terminate(self) -> None:
            on_stopping()
            if self._signals >= 3:
                self.kill()
                return
            bridge = self._processes.get(BRIDGE)
            if (
                self._signals == 1
                and not self._bridge_first
                and bridge is not None
                and "pid" in bridge
                and not self._any_stopped()
            ):
                self._bridge_first = True
                self._system_print(
                    "stopping the bridge first (it finishes in-flight orders); "
                    "Ctrl-C again to stop everything now\n"
                )
                self._procmgr.terminate(bridge["pid"])
                return
            super().terminate()

        # honcho learns a process's pid from a message its helper sends after
        # starting it, and its _killall fails on a process whose pid it has not
        # seen yet: a signal in that window is acted on once every pid is known.
        _deferred_force: bool | None = None

        def _killall(self, force: bool = False) -> None:
            if not super()._all_started():
                self._deferred_force = force or bool(self._deferred_force)
                return
            super()._killall(force)

        def _all_started(self) -> bool:
            started: bool = super()._all_started()
            if started and self._deferred_force is not None:
                force, self._deferred_force = self._deferred_force, None
                super()._killall(force)
            return started

        def kill_started(self) -> None:
            """SIGKILL every process whose pid is known, outside the loop."""
            for process in self._processes.values():
                if "pid" in process and "returncode" not in process:
                    self._procmgr.kill(process["pid"])

    return DevManager()


# --- the demo ---------------------------------------------------------------------


@dataclass
class DemoContext:
    settings: Settings
    bridge_port: int | None
    web_port: int | None
    flower_password: str
    hint_env: str
    stop: threading.Event
    say: Callable[[str], None]


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
    outcomes: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    dead_letters: dict[int, str] = field(default_factory=dict)  # original seq -> reason
    duplicate_acked: bool = False


class DemoStopped(Exception):
    """``orders run`` is shutting down."""


def _demo_main(ctx: DemoContext) -> None:
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
    cases = _cases(run_id, ctx.settings)
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
    _judge(cases, observed, charges)
    ctx.say(_render_table(cases))
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


def _cases(run_id: str, settings: Settings) -> list[Case]:
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


async def _publish_and_observe(cases: list[Case], ctx: DemoContext) -> Observed:
    nc = await nats_connect(
        ctx.settings, name="orders-demo", allow_reconnect=False, error_cb=_ignore_error
    )
    try:
        js = nc.jetstream(timeout=5)
        dlq_start = (await js.stream_info(names.DLQ_STREAM)).state.last_seq + 1
        for case in cases:
            if ctx.stop.is_set():
                raise DemoStopped
            headers = {names.HDR_MSG_ID: case.msg_id}
            with new_order_trace(names.SUBJECT_CREATED, case.msg_id, headers):
                ack = await js.publish(names.SUBJECT_CREATED, case.data, headers=headers)
            case.seq = ack.seq
        ctx.say(f"published {len(cases)} messages to {names.SUBJECT_CREATED}; waiting for outcomes")
        return await _observe(js, cases, dlq_start, ctx)
    finally:
        await nc.close()


async def _ignore_error(error: Exception) -> None:
    # nats-py logs each connection error with a traceback otherwise; the demo
    # reports what it failed to do instead.
    return None


async def _observe(
    js: JetStreamContext, cases: list[Case], dlq_start: int, ctx: DemoContext
) -> Observed:
    """Read outcome events and dead letters from JetStream until every case has its
    answer (and the duplicate is acked) or :data:`OUTCOME_TIMEOUT_S` passes."""
    observed = Observed()
    outcomes = await js.pull_subscribe(
        names.SUBJECT_COMPLETED,
        stream=names.ORDERS_STREAM,
        config=ConsumerConfig(
            filter_subjects=[names.SUBJECT_COMPLETED, names.SUBJECT_FAILED],
            deliver_policy=DeliverPolicy.BY_START_SEQUENCE,
            opt_start_seq=min(case.seq for case in cases),
            ack_policy=AckPolicy.EXPLICIT,
            inactive_threshold=60.0,
        ),
    )
    dead = await js.pull_subscribe(
        names.SUBJECT_DLQ_CREATED,
        stream=names.DLQ_STREAM,
        config=ConsumerConfig(
            deliver_policy=DeliverPolicy.BY_START_SEQUENCE,
            opt_start_seq=dlq_start,
            ack_policy=AckPolicy.EXPLICIT,
            inactive_threshold=60.0,
        ),
    )
    waiting_for = {case.order_id for case in cases if case.expected != "DLQ"}
    poison_seqs = {case.seq for case in cases if case.expected == "DLQ"}
    last_seq = max(case.seq for case in cases)
    deadline = time.monotonic() + OUTCOME_TIMEOUT_S
    try:
        while True:
            for msg in await _fetch(outcomes):
                kind = OutcomeKind(msg.subject.rsplit(".", 1)[1])
                with contextlib.suppress(PoisonMessage):
                    fields = {"kind": kind, **decode_outcome(kind, msg.data)}
                    observed.outcomes.setdefault(str(fields["order_id"]), []).append(fields)
                await msg.ack()
            for msg in await _fetch(dead):
                headers = msg.headers or {}
                with contextlib.suppress(KeyError, ValueError):
                    sequence = int(headers[names.HDR_DLQ_SEQUENCE])
                    observed.dead_letters[sequence] = headers.get(names.HDR_DLQ_REASON, "")
                await msg.ack()
            if not observed.duplicate_acked:
                # The duplicate gets no event to wait for: it is handled once the
                # bridge's consumer has acked past it.
                info = await js.consumer_info(names.ORDERS_STREAM, names.DURABLE_CONSUMER)
                observed.duplicate_acked = bool(
                    info.ack_floor and info.ack_floor.stream_seq >= last_seq
                )
                # Any second outcome would be stored before that ack: one more read.
                if observed.duplicate_acked:
                    continue
            answered = (
                waiting_for <= observed.outcomes.keys()
                and poison_seqs <= observed.dead_letters.keys()
            )
            if (answered and observed.duplicate_acked) or time.monotonic() > deadline:
                return observed
            if ctx.stop.is_set():
                raise DemoStopped
    finally:
        for sub in (outcomes, dead):
            with contextlib.suppress(nats.errors.Error, TimeoutError):
                await sub.unsubscribe()


async def _fetch(sub: JetStreamContext.PullSubscription) -> list[Any]:
    try:
        return await sub.fetch(batch=64, timeout=0.5)
    except TimeoutError:
        # Not only nats.errors.TimeoutError: nats-py's batch fetch also raises a
        # bare asyncio.TimeoutError when its deadline runs out between requests.
        return []


def _judge(cases: list[Case], observed: Observed, charges: int) -> None:
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


def _render_table(cases: list[Case]) -> str:
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


def _where(ctx: DemoContext, order_id: str) -> str:
    lines = []
    if ctx.web_port is not None:
        lines.append(
            f"Flower:  http://{LOOPBACK}:{ctx.web_port}/  "
            f"(user {FLOWER_USER}, password {ctx.flower_password})"
        )
    bridge = f"http://{LOOPBACK}:{ctx.bridge_port}"
    lines.append(f"bridge:  {bridge}/health  {bridge}/ready  {bridge}/metrics")
    lines.append(f"try:     {ctx.hint_env}{_orders_script()} status {order_id} --json")
    kept = f"; data stays in {RUN_DIR}/ for the next run" if ctx.hint_env else ""
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
