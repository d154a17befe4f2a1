"""``orders bench``: the command line of the benchmark (``make bench``)."""

from __future__ import annotations

import shutil
import signal
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NoReturn

import click
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

from bridge.cli import _common
from bridge.cli._common import EXIT_CONFIG, CommandError
from bridge.settings import BridgeSettings
from dev.bench import load, procfs, report
from dev.bench.plan import PHASES, Plan
from dev.bench.plot import PlotUnavailable, plot, require_matplotlib
from dev.bench.profile import ProfilerUnavailable, find_py_spy
from dev.bench.runner import Runner
from dev.bench.stack import PhaseFailed, ProcessFailed
from dev.servers import ServerStartError, ServerUnavailable


class _RichDisplay:
    """A bar per phase while it runs, a line per result; lines only when not a terminal."""

    def __init__(self, console: Console) -> None:
        self._console = console
        self._progress = Progress(
            "[progress.description]{task.description}",
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=console,
            disable=not console.is_terminal,
        )

    def __enter__(self) -> _RichDisplay:
        self._progress.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._progress.stop()

    @contextmanager
    def phase(self, description: str, total: int) -> Iterator[load.Progress]:
        task = self._progress.add_task(description, total=total)
        started = time.monotonic()
        try:
            yield lambda done: self._progress.update(task, completed=min(done, total))
        finally:
            self._progress.update(task, visible=False)
        self.note(f"{description}: done in {time.monotonic() - started:.1f} s", style="dim")

    def note(self, text: str, style: str = "") -> None:
        self._progress.console.print(text, style=style, highlight=False)


@click.command("bench", short_help="Measure the pipeline against its parts on this machine.")
@click.option(
    "--orders",
    "-n",
    type=click.IntRange(min=10),
    help="Burst size of the naive baseline, the pipeline and each scaling point [2000].",
)
@click.option(
    "--js-messages",
    type=click.IntRange(min=100),
    help="Messages for the JetStream ceiling [20000].",
)
@click.option(
    "--latency-seconds",
    type=click.FloatRange(min=1),
    help="How long orders are offered at a fixed rate [20].",
)
@click.option(
    "--latency-rate",
    type=click.FloatRange(min=0, min_open=True),
    help="Offered rate, orders/s [70% of the measured peak].",
)
@click.option(
    "--burst",
    type=click.IntRange(min=10),
    help="Orders published at once for memory and CPU [10000].",
)
@click.option(
    "--concurrency",
    type=click.IntRange(min=1),
    help="Prefork processes of the worker for every phase but scaling [2].",
)
@click.option("--quick", is_flag=True, help="Tiny sizes: a smoke run of every phase.")
@click.option(
    "--skip", type=click.Choice(PHASES), multiple=True, help="Leave a phase out (repeatable)."
)
@click.option(
    "--json",
    "json_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=Path("bench-results.json"),
    show_default=True,
    help="Where to write every figure.",
)
@click.option(
    "--plot",
    "plot_path",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Draw latency, scaling and memory to this PNG (needs the bench extra).",
)
@click.option(
    "--profile",
    "profile_dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Profile the bridge and worker with py-spy during the pipeline phase (slows it).",
)
@click.option(
    "--bridge-setting",
    "bridge_settings",
    multiple=True,
    metavar="NAME=VALUE",
    callback=lambda ctx, param, values: _bridge_settings(values),
    help="A bridge setting for every phase, e.g. WORKFLOW_BATCH_MAX=16 (repeatable): "
    "to measure a setting against its default.",
)
@click.option(
    "--log-dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Keep the servers' and processes' logs here [a temporary directory, removed on success].",
)
def bench(
    orders: int | None,
    js_messages: int | None,
    latency_seconds: float | None,
    latency_rate: float | None,
    burst: int | None,
    concurrency: int | None,
    quick: bool,
    skip: tuple[str, ...],
    json_path: Path,
    plot_path: Path | None,
    profile_dir: Path | None,
    bridge_settings: tuple[tuple[str, str], ...],
    log_dir: Path | None,
) -> None:  # fmt: skip
    """Benchmark the pipeline on this machine, with servers and processes of its own.

    Starts embedded NATS and Redis on free ports, then measures: the JetStream
    ceiling (consume + ack, no work); a naive Celery chord with trivial tasks;
    the pipeline's orders/s at saturation and its latency at 70% of that; scaling
    with worker processes and a second bridge; memory and CPU with a burst in
    flight; with a Redis replica attached, throughput and latency of bridges that
    do not wait for it (REDIS_WAIT_REPLICAS=0) and that do (auto). Prints a table
    and writes everything to --json.
    """
    _require_tools(plot_path, profile_dir)
    plan = (Plan.quick() if quick else Plan()).sized(
        orders=orders,
        js_messages=js_messages,
        latency_seconds=latency_seconds,
        latency_rate=latency_rate,
        burst=burst,
        concurrency=concurrency,
        skip=frozenset(skip),
        profile_dir=profile_dir,
        bridge_env=bridge_settings or None,
    )
    console = Console(stderr=True)
    keep_logs = log_dir is not None
    logs = log_dir or Path(tempfile.mkdtemp(prefix="orders-bench-"))
    # SIGTERM unwinds like Ctrl-C, so the servers and processes are stopped.
    signal.signal(signal.SIGTERM, _interrupt)
    started = time.monotonic()
    try:
        with _RichDisplay(console) as display:
            results = Runner(plan, logs, display).run()
    except (ServerUnavailable, ServerStartError, ProcessFailed, PhaseFailed, TimeoutError) as error:
        raise CommandError(f"benchmark failed: {error}; logs kept in {logs}") from None
    parameters = {**plan.parameters(), "duration_s": round(time.monotonic() - started, 1)}
    _report(report.document(results, parameters, procfs.machine()), json_path, plot_path)
    if not keep_logs:
        shutil.rmtree(logs, ignore_errors=True)


def _bridge_settings(values: tuple[str, ...]) -> tuple[tuple[str, str], ...]:
    """``NAME=VALUE`` pairs, each a setting the bridge reads (a typo would otherwise
    measure the default and say it measured the setting)."""
    known = {name.upper() for name in BridgeSettings.model_fields}
    pairs = []
    for value in values:
        name, sep, setting = value.partition("=")
        if not sep or name.upper() not in known:
            raise click.BadParameter(f"{value!r} is not NAME=VALUE with a bridge setting's name")
        pairs.append((name.upper(), setting))
    return tuple(pairs)


def _require_tools(plot_path: Path | None, profile_dir: Path | None) -> None:
    """Missing tools are reported before the run, not after ten minutes of it."""
    try:
        if plot_path is not None:
            require_matplotlib()
        if profile_dir is not None:
            find_py_spy()
    except (PlotUnavailable, ProfilerUnavailable) as error:
        raise CommandError(str(error), EXIT_CONFIG) from None


def _report(doc: dict[str, Any], json_path: Path, plot_path: Path | None) -> None:
    report.write_json(doc, json_path)
    report.print_summary(_common.console(), doc)
    click.echo(f"results written to {json_path}")
    if plot_path is not None:
        plot(doc, plot_path)
        click.echo(f"plot written to {plot_path}")


def _interrupt(signum: int, frame: object) -> NoReturn:
    raise KeyboardInterrupt
