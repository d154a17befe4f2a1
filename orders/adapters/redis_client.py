"""Redis clients for state and stock, configured once for both sync and asyncio use."""

from __future__ import annotations

from typing import Any

import redis
import redis.asyncio

# A Redis call that hangs on a half-open connection fails within this long, so a
# task is retried and the bridge naks instead of freezing.
REDIS_SOCKET_TIMEOUT_S = 15


def _options() -> dict[str, Any]:
    return {
        # Scripts and views work with text; every adapter relies on this.
        "decode_responses": True,
        "socket_timeout": REDIS_SOCKET_TIMEOUT_S,
        "socket_connect_timeout": REDIS_SOCKET_TIMEOUT_S,
        "socket_keepalive": True,
        "health_check_interval": 10,
    }


def sync_client(url: str) -> redis.Redis:
    return redis.Redis.from_url(url, **_options())


def async_client(url: str) -> redis.asyncio.Redis:
    return redis.asyncio.Redis.from_url(url, **_options())
