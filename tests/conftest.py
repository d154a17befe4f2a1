"""Servers shared by the whole test session, started only if a test asks for them.

``nats_server`` and ``redis_server`` are started once per session on free
loopback ports with temporary data directories. Tests share them, so each test
uses its own stream, subject, queue and key names. A test that kills,
restarts or reconfigures a server starts its own ``NatsServer`` or
``RedisServer`` instead of touching the shared ones.
"""

from collections.abc import Iterator

import pytest

from dev.servers import NatsServer, RedisServer


@pytest.fixture(scope="session")
def nats_server() -> Iterator[NatsServer]:
    """A started ``nats-server -js`` with a file store, shared by the session."""
    with NatsServer() as server:
        yield server


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """A started Redis (or Valkey) with the AOF on, shared by the session."""
    with RedisServer() as server:
        yield server


@pytest.fixture
def nats_url(nats_server: NatsServer) -> str:
    """``nats://127.0.0.1:PORT`` of the shared NATS server."""
    return nats_server.url


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    """``redis://127.0.0.1:PORT/0`` of the shared Redis server."""
    return redis_server.url
