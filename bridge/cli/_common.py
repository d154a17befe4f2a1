"""What every command needs: settings, clients that fail fast, one-line errors, output.

A command-line tool talks to servers for a moment and exits, so its clients are
tuned the other way round from the bridge's: a server that does not answer is
reported at once, in one line, instead of being waited for.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Coroutine, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import Any, TypeVar

import click
import nats.errors
import redis
from nats.js import JetStreamContext
from rich.console import Console

from bridge.nats_connect import NatsRefused, connect
from bridge.settings import CliSettings
from orders.adapters.redis_client import redis_refusal
from orders.bootstrap import redis_client
from orders.settings import ConfigError, load_settings, redact_url

EXIT_FAILURE = 1
EXIT_CONFIG = 2
EXIT_UNREACHABLE = 3

# Each NATS server is tried twice (nats-py treats 0 as "retry forever").
_NATS_CONNECT_ATTEMPTS = 1
_NATS_RETRY_WAIT_S = 0.2

# Wide enough for any table row of ours; tables take only the width they need.
_PIPED_WIDTH = 240

T = TypeVar("T")


class CommandError(click.ClickException):
    """A failure shown as one line on stderr, with its exit code."""

    def __init__(self, message: str, exit_code: int = EXIT_FAILURE) -> None:
        super().__init__(one_line(message))
        self.exit_code = exit_code  # type: ignore[misc]  # a ClassVar to click's hints; click reads e.exit_code


class Refused(CommandError):
    """A server that refused our credentials or certificate: a setting to fix (exit 2)."""

    def __init__(self, message: str) -> None:
        super().__init__(message, EXIT_CONFIG)


class Unreachable(CommandError):
    """A server that could not be reached; the URL is shown without its password."""

    def __init__(self, service: str, url: str, error: BaseException) -> None:
        super().__init__(
            f"cannot reach {service} at {redact_url(url)}: {describe(error)}", EXIT_UNREACHABLE
        )


def one_line(text: str) -> str:
    return " ".join(text.split())


def describe(error: BaseException) -> str:
    return one_line(str(error)) or type(error).__name__


def settings() -> CliSettings:
    """The environment's settings; an invalid one is a :class:`CommandError` (exit 2)."""
    try:
        return load_settings(CliSettings)
    except ConfigError as error:
        raise CommandError(str(error), EXIT_CONFIG) from None


def run(coroutine: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coroutine)


@contextmanager
def redis_session(config: CliSettings) -> Iterator[redis.Redis]:
    """A Redis client; connection failures inside the block become :class:`Unreachable`."""
    client = redis_client(config)
    try:
        yield client
    except (redis.ConnectionError, redis.TimeoutError, redis.ResponseError) as error:
        what = redis_refusal(error)
        if what is not None:
            raise Refused(f"Redis {what} at {redact_url(config.redis_url)}") from None
        if isinstance(error, redis.ResponseError):
            raise
        raise Unreachable("Redis", config.redis_url, error) from None
    finally:
        client.close()


@asynccontextmanager
async def jetstream(config: CliSettings) -> AsyncIterator[JetStreamContext]:
    """A JetStream context on a connection that fails fast and never reconnects.

    Connection failures and timeouts inside the block become :class:`Unreachable`,
    credentials or a certificate the server refuses :class:`Refused`; the
    connection is closed on the way out.
    """
    errors: list[BaseException] = []

    async def remember(error: Exception) -> None:
        # nats-py logs every failed attempt with a traceback unless told otherwise.
        errors.append(error)

    timeout = config.nats_connect_timeout.total_seconds()
    try:
        nc = await connect(
            config,
            name="orders-cli",
            allow_reconnect=False,
            max_reconnect_attempts=_NATS_CONNECT_ATTEMPTS,
            reconnect_time_wait=_NATS_RETRY_WAIT_S,
            error_cb=remember,
        )
    except NatsRefused as error:
        raise Refused(str(error)) from None
    except (OSError, nats.errors.Error) as error:
        raise Unreachable("NATS", config.nats_url, errors[-1] if errors else error) from None
    try:
        yield nc.jetstream(timeout=timeout)
    except (
        OSError,  # includes TimeoutError and nats.errors.TimeoutError
        nats.errors.ConnectionClosedError,
        nats.errors.NoServersError,
        nats.errors.StaleConnectionError,
    ) as error:
        raise Unreachable("NATS", config.nats_url, error) from None
    finally:
        await nc.close()


def print_json(value: object) -> None:
    click.echo(json.dumps(value))


def console() -> Console:
    """Rich output to stdout; plain text (no colour codes) when stdout is not a terminal."""
    out = Console(highlight=False)
    if not out.is_terminal:
        # Piped into grep or a file: rows whole on one line, not folded at 80 columns.
        out = Console(highlight=False, width=_PIPED_WIDTH)
    return out
