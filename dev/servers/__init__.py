"""Embedded NATS and Redis servers for ``make run``, the test suite and benchmarks.

Each server is a child process on free loopback ports with its own temporary
data directory, so it never touches a NATS or Redis already running on the
machine. ``restart()`` keeps the ports and the data directory: that is what
fault tests need to check that acknowledged data survives a crash.

- :mod:`dev.servers.process`: the lifecycle they share (and why each runs in a
  session of its own), free ports, waiting;
- :mod:`dev.servers.binaries`: finding ``nats-server`` and ``redis-server``;
- :mod:`dev.servers.nats_server`, :mod:`dev.servers.redis_server`: the servers.

Callers import everything from here.
"""

from dev.servers.binaries import find_nats_server, find_redis_server
from dev.servers.nats_server import NatsServer
from dev.servers.process import (
    LOOPBACK,
    ServerStartError,
    ServerUnavailable,
    free_port,
    wait_until,
)
from dev.servers.redis_server import RedisServer, RedisTls

__all__ = [
    "LOOPBACK",
    "NatsServer",
    "RedisServer",
    "RedisTls",
    "ServerStartError",
    "ServerUnavailable",
    "find_nats_server",
    "find_redis_server",
    "free_port",
    "wait_until",
]
