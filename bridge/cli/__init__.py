"""The ``orders`` command line (``shared/CONTRACT.md``, "Command line").

Every failure an operator can cause or meet (a bad setting, a server that does
not answer, an error a server returns) ends the command with one line on
stderr and an exit code: 1 for a failed command, 2 for usage or configuration,
3 for an unreachable server. A traceback means a bug in this package.
"""

from __future__ import annotations

from typing import Any

import click
import nats.errors
import redis

from bridge.cli import dlq, inventory, publish, status
from bridge.cli._common import EXIT_CONFIG, CommandError, describe
from bridge.cli._dev_commands import DevCommand
from orders.settings import ConfigError


class _OneLineErrors(click.Group):
    """Turns the errors commands let through into :class:`CommandError`, which click
    prints as one line; done here rather than in :func:`main` so that a test
    invoking :data:`cli` sees exactly what an operator sees."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except ConfigError as error:
            raise CommandError(str(error), EXIT_CONFIG) from None
        except nats.errors.Error as error:
            raise CommandError(f"NATS error: {describe(error)}") from None
        except redis.RedisError as error:
            raise CommandError(f"Redis error: {describe(error)}") from None


@click.group(cls=_OneLineErrors, context_settings={"help_option_names": ["-h", "--help"]})
def cli() -> None:
    """Operate the order pipeline: order status, inventory, synthetic load, dead letters.

    Reads the same environment as the processes (NATS_URL, REDIS_URL, ...).
    """


cli.add_command(status.status)
cli.add_command(inventory.inventory)
cli.add_command(publish.publish)
cli.add_command(dlq.dlq)
# Development commands, run from a source checkout (`make run`, `make bench`): their
# code is in dev/, imported when invoked; the summaries repeat the real commands'.
cli.add_command(
    DevCommand(
        "run",
        "dev.run:run_command",
        make_target="make run",
        help="Start NATS, Redis, the bridge, a worker and Flower, then publish demo orders.",
    )
)
cli.add_command(
    DevCommand(
        "bench",
        "dev.bench.cli:bench",
        make_target="make bench",
        short_help="Measure the pipeline against its parts on this machine.",
    )
)


def main() -> None:
    """Console-script entry point."""
    cli.main(prog_name="orders")
