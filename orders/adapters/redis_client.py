"""Redis clients for state and stock, configured once for both sync and asyncio use.

TLS (a ``rediss://`` URL) always verifies the server's certificate, against
``REDIS_TLS_CA`` when set, and presents ``REDIS_TLS_CERT`` / ``REDIS_TLS_KEY``
when set; :func:`tls_options` is the one place that says so, for these clients
and for Celery's broker and result backend alike.

These clients decode replies and speak RESP2 (redis-py's default), as the relay's
typed reply views (``relay.redis_replies``) expect.
"""

from __future__ import annotations

import ssl
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

import redis
import redis.asyncio
import redis.exceptions

from orders.settings import RedisConnection

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


class RedisRefused(Exception):
    """Redis refused this client; ``str()`` is one line naming the server, no secret."""


def tls_options(settings: RedisConnection) -> dict[str, Any]:
    """redis-py's (and kombu's) TLS options for a ``rediss://`` URL, else empty."""
    if urlsplit(settings.redis_url).scheme != "rediss":
        return {}
    options: dict[str, Any] = {"ssl_cert_reqs": ssl.CERT_REQUIRED}
    if settings.redis_tls_ca:
        options["ssl_ca_certs"] = str(settings.redis_tls_ca)
    if settings.redis_tls_cert and settings.redis_tls_key:
        options["ssl_certfile"] = str(settings.redis_tls_cert)
        options["ssl_keyfile"] = str(settings.redis_tls_key)
    return options


def redis_refusal(error: BaseException) -> str | None:
    """What a server's refusal of this client was (credentials, TLS), or ``None``
    for any other error, such as a server that does not answer."""
    if isinstance(error, redis.AuthenticationError | redis.exceptions.AuthorizationError):
        return "authentication failed"
    if isinstance(error, redis.ResponseError) and str(error).startswith(("NOAUTH", "WRONGPASS")):
        return "authentication failed"
    # redis-py wraps a failed handshake into a ConnectionError; the cause says why.
    cause: BaseException | None = error
    while cause is not None:
        if isinstance(cause, ssl.SSLCertVerificationError):
            return f"TLS certificate verification failed ({_ssl_reason(cause)})"
        if isinstance(cause, ssl.SSLError):
            return f"TLS handshake failed ({_ssl_reason(cause)})"
        cause = cause.__cause__ or cause.__context__
    return None


def _ssl_reason(error: ssl.SSLError) -> str:
    # Set when the ssl module raised it; a bare instance has only its text.
    reason = getattr(error, "verify_message", None) or getattr(error, "reason", None)
    return str(reason or error)


def sync_client(url: str, tls: Mapping[str, Any] | None = None) -> redis.Redis:
    return redis.Redis.from_url(url, **_options(), **(tls or {}))


def async_client(url: str, tls: Mapping[str, Any] | None = None) -> redis.asyncio.Redis:
    return redis.asyncio.Redis.from_url(url, **_options(), **(tls or {}))
