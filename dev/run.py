"""``orders run`` (what ``make run`` executes): the whole system on one machine.

1. Embedded NATS (JetStream) and Redis on free loopback ports, their data in
   ``.run/`` of the current directory, unless ``NATS_URL`` / ``REDIS_URL`` point
   elsewhere.
2. The Procfile's processes under honcho, their output interleaved with its
   prefixes, each with its own free ``$PORT``.
3. Once the bridge is ready, a demo: one order per contract outcome is published
   to ``ORDER.created`` and the outcome read back from JetStream into a table
   (:mod:`dev.demo`).

Ctrl-C or SIGTERM stops the processes first, the bridge before the others so
that it can drain while the worker still runs (:mod:`dev.honcho_manager`), then
the servers, and exits 0.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import click

from bridge.settings import ALL_KINDS, BridgeSettings, CliSettings
from dev.demo import DemoContext, demo_main
from dev.servers import NatsServer, RedisServer, ServerStartError, ServerUnavailable, free_port
from orders.settings import ConfigError, load_settings, redact_url

if TYPE_CHECKING:
    from dev.honcho_manager import BridgeFirstManager

RUN_DIR = ".run"
# The Procfile at the root of the checkout dev/ is part of.
DEFAULT_PROCFILE = Path(__file__).resolve().parent.parent / "Procfile"

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

        from dev.honcho_manager import BridgeFirstManager
    except ImportError:
        _fail("honcho is not installed: pip install -e '.[embedded]' (or `make install`)")

    if procfile is None:
        # A checkout without one: the current directory's, then.
        procfile = DEFAULT_PROCFILE if DEFAULT_PROCFILE.is_file() else Path("Procfile")
    processes = parse_procfile(_read_procfile(procfile)).processes
    if not processes:
        _fail(f"no processes in {procfile}")
    try:
        for kind in ALL_KINDS:  # the processes would each stop on a bad value; say it once
            load_settings(kind)
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
            code = _run_processes(BridgeFirstManager, processes, nats_url, redis_url, demo)
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


# --- processes ---------------------------------------------------------------------


def _free_ports(count: int) -> list[int]:
    ports: set[int] = set()
    while len(ports) < count:
        ports.add(free_port())
    return sorted(ports)


def _run_processes(
    manager_class: type[BridgeFirstManager],
    processes: dict[str, str],
    nats_url: str,
    redis_url: str,
    demo: bool,
) -> int:
    """Run the Procfile under honcho until one process exits or a signal; its return code."""
    import honcho.manager

    settings = load_settings(CliSettings, nats_url=nats_url, redis_url=redis_url)
    password = secrets.token_urlsafe(12)
    base_env = _process_env(nats_url, redis_url, password)
    # Explicit ports rather than honcho's base port + 100 per type: each is free.
    ports = dict(zip(processes, _free_ports(len(processes)), strict=True))

    stop = threading.Event()
    manager: Any = None

    def say(text: str) -> None:
        # The demo starts once honcho has started the processes: manager is set.
        manager.print_line(DEMO_NAME, text)

    demo_context = DemoContext(
        settings=settings,
        bridge_port=ports.get(BRIDGE),
        web_port=ports.get("web"),
        flower_user=FLOWER_USER,
        flower_password=password,
        hint_env=_embedded_servers_env(nats_url, redis_url),
        run_dir=RUN_DIR,
        stop=stop,
        say=say,
    )
    demo_thread = threading.Thread(
        target=demo_main, args=(demo_context,), name="orders-demo", daemon=True
    )

    def start_demo() -> None:
        if demo:
            demo_thread.start()

    # The bridge may drain for up to DRAIN_TIMEOUT; honcho's default is 5 s.
    drain_timeout = load_settings(BridgeSettings).drain_timeout
    honcho.manager.KILL_WAIT = drain_timeout.total_seconds() + KILL_GRACE_S
    manager = manager_class(BRIDGE, on_started=start_demo, on_stopping=stop.set)
    for name, command in processes.items():
        manager.add_process(name, command, env={**base_env, "PORT": str(ports[name])})
    return _loop(manager, stop, demo_thread)


def _loop(manager: BridgeFirstManager, stop: threading.Event, demo_thread: threading.Thread) -> int:
    """honcho's loop until every process has stopped, then the demo; its return code."""
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
    code: int = manager.returncode or 0
    return code


def _process_env(nats_url: str, redis_url: str, flower_password: str) -> dict[str, str]:
    """The environment of every process of the Procfile, but for its ``PORT``."""
    # The console scripts live next to this interpreter, which need not be on PATH
    # (`make run` calls .venv/bin/orders directly).
    path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    return {
        **os.environ,
        "PATH": path,
        "NATS_URL": nats_url,
        "REDIS_URL": redis_url,
        "ORDERS_DEV_MODE": "1",
        # The demo's tasks appear in Flower even before Flower turns events on.
        "TASK_EVENTS": "1",
        "FLOWER_BASIC_AUTH": f"{FLOWER_USER}:{flower_password}",
        "PYTHONUNBUFFERED": "1",
    }


def _embedded_servers_env(nats_url: str, redis_url: str) -> str:
    """``NAME=url `` for each embedded server: they are on new ports each run, and
    another shell needs them."""
    return "".join(
        f"{name}={url} "
        for name, url in (("NATS_URL", nats_url), ("REDIS_URL", redis_url))
        if not os.environ.get(name)
    )
