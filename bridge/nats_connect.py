"""How every process connects to NATS: servers, credentials and TLS from the settings.

The bridge, the ``orders`` command line and ``orders run``'s demo all call
:func:`connect`, so they accept the same settings and authenticate the same way:

- ``NATS_URL`` with ``user:password@`` or ``token@`` (percent-encoded when the
  secret holds ``@``, ``:`` or ``/``); sent as nats-py's ``user``/``password``
  or ``token`` options, so servers a cluster announces get them too.
- ``NATS_CREDS``: a ``.creds`` file (user JWT and NKey seed, operator mode).
- ``NATS_NKEY``: an NKey seed file, for an ``nkey`` user in the server's config.
- ``NATS_TLS_CA`` / ``NATS_TLS_CERT`` / ``NATS_TLS_KEY``: the CA that signed the
  server's certificate (instead of the system's), and a client certificate
  (for servers with ``verify`` / ``verify_and_map``).
- ``NATS_INBOX_PREFIX``: replies to this client on subjects of its own, so
  that the server's permissions can keep them from other users.

A server that refuses the client (wrong credentials, a certificate that does
not verify) is not going to change its mind, yet nats-py retries such a first
connect as patiently as an unreachable server. :func:`connect` stops at the
first refusal and raises :class:`NatsRefused`, one line without secrets; a
server that does not answer is still retried as the caller's options say.

nats-py switches to TLS when the server's greeting asks for it, and does not
refuse a ``tls://`` server that does not: it would connect in the clear. So
when TLS is expected (a ``tls://`` URL or a ``NATS_TLS_*`` setting), a first
connection without it is refused too. That check comes after the greeting, so
it cannot keep a password from crossing an attacker's plain connection:
SECURITY.md says which credentials survive that (NKeys, JWTs, client certificates).
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import unquote, urlsplit

from nats.aio.client import Client as NATS
from nats.errors import AuthorizationError, UnexpectedEOF

from bridge.settings import NatsConnection
from orders.settings import redact_url

ErrorCallback = Callable[[Exception], Awaitable[None]]

# What nats-server says when it refuses a client's credentials (-ERR '...').
_REFUSALS = (
    "authorization violation",
    "authentication expired",
    "authentication revoked",
    "authentication timeout",
    "account authentication expired",
)


class NatsRefused(Exception):
    """The server refused this client; ``str()`` is one line naming the server, no secret."""


def servers(settings: NatsConnection) -> list[str]:
    return [server.strip() for server in settings.nats_url.split(",")]


def tls_context(settings: NatsConnection) -> ssl.SSLContext | None:
    """The client's TLS context, or ``None`` for nats-py's default (the system's CAs)."""
    if not (settings.nats_tls_ca or settings.nats_tls_cert):
        return None
    # Certificates and host names are always verified; settings validated the files.
    context = ssl.create_default_context(cafile=settings.nats_tls_ca)
    if settings.nats_tls_cert and settings.nats_tls_key:
        context.load_cert_chain(settings.nats_tls_cert, settings.nats_tls_key)
    return context


def auth_options(settings: NatsConnection) -> dict[str, Any]:
    """nats-py's credential, TLS and inbox options for the settings."""
    options: dict[str, Any] = {"inbox_prefix": settings.nats_inbox_prefix}
    for server in servers(settings):
        parts = urlsplit(server)
        if parts.username is None:
            continue
        # nats-py would send the URL's user part as written, percent-escapes and all.
        if parts.password is None:
            options["token"] = unquote(parts.username)
        else:
            options["user"] = unquote(parts.username)
            options["password"] = unquote(parts.password)
        break  # settings checked that every server carries the same credentials
    if settings.nats_creds:
        options["user_credentials"] = str(settings.nats_creds)
    elif settings.nats_nkey:
        options["nkeys_seed"] = str(settings.nats_nkey)
    context = tls_context(settings)
    if context is not None:
        options["tls"] = context
    return options


def refusal(error: BaseException) -> str | None:
    """What a server's refusal of this client was, or ``None`` for any other error."""
    if isinstance(error, AuthorizationError):
        return "authorization violation"
    if isinstance(error, ssl.SSLCertVerificationError):
        return f"TLS certificate verification failed ({_ssl_reason(error)})"
    if isinstance(error, ssl.SSLError):
        return f"TLS handshake failed ({_ssl_reason(error)})"
    text = str(error).lower()
    for known in _REFUSALS:
        if known in text:
            return known
    return None


def _ssl_reason(error: ssl.SSLError) -> str:
    # Set when the ssl module raised it; a bare instance has only its text.
    reason = getattr(error, "verify_message", None) or getattr(error, "reason", None)
    return str(reason or error)


async def connect(
    settings: NatsConnection,
    *,
    name: str,
    error_cb: ErrorCallback | None = None,
    **options: Any,
) -> NATS:
    """A connection made with the settings' servers, credentials and TLS.

    ``options`` are nats-py's (timeouts, reconnection, callbacks). Raises
    :class:`NatsRefused` as soon as a server refuses the credentials or the TLS
    handshake fails; other errors go to ``error_cb`` and are retried (or raised)
    as ``options`` say.
    """
    loop = asyncio.get_running_loop()
    refused: asyncio.Future[str] = loop.create_future()

    async def on_error(error: Exception) -> None:
        # Only the first connect stops at a refusal; once connected, a refusal
        # (rotated credentials on a reconnect) is the caller's to log like any error.
        what = None
        if not refused.done():
            what = _client_cert_refusal(nc, settings, error) or refusal(error)
        if what is not None:
            refused.set_result(what)
        elif error_cb is not None:
            await error_cb(error)

    connect_timeout = settings.nats_connect_timeout.total_seconds()
    nc = NATS()
    connecting = asyncio.ensure_future(
        nc.connect(
            servers(settings),
            name=name,
            connect_timeout=connect_timeout,  # type: ignore[arg-type]  # hinted int, used as a float timeout
            error_cb=on_error,
            **auth_options(settings),
            **options,
        )
    )
    racing: set[asyncio.Future[Any]] = {connecting, refused}
    try:
        await asyncio.wait(racing, return_when=asyncio.FIRST_COMPLETED)
    finally:
        if not connecting.done():
            connecting.cancel()
    if refused.done():
        await asyncio.wait({connecting})
        if not connecting.cancelled():
            connecting.exception()  # the refusal itself, reported below
        with contextlib.suppress(Exception):
            await nc.close()
        raise NatsRefused(f"NATS {refused.result()} at {redact_url(settings.nats_url)}")
    refused.cancel()
    await connecting  # raises what nats-py raised, if it gave up
    if _expects_tls(settings) and _uses_tls(nc) is False:
        await nc.close()
        raise NatsRefused(f"NATS server offered no TLS at {redact_url(settings.nats_url)}")
    return nc


def _client_cert_refusal(nc: NATS, settings: NatsConnection, error: Exception) -> str | None:
    """A refused or missing client certificate that nats-py reports as a lost connection.

    A server that verifies client certificates may reject one after a TLS 1.3
    handshake has completed on the client's side: the client then reads an
    alert, or (racing the server's close) only a reset connection. The server's
    greeting said it verifies (``tls_verify``), which tells that apart from a
    network fault. nats-py keeps the greeting in a private attribute.
    """
    info = getattr(nc, "_server_info", None) or {}
    if not info.get("tls_verify") or isinstance(error, ssl.SSLCertVerificationError):
        return None  # (the latter: this client refused the server's certificate)
    if settings.nats_tls_cert is None:
        return "server requires a TLS client certificate (NATS_TLS_CERT)"
    if isinstance(error, ConnectionError | asyncio.IncompleteReadError | UnexpectedEOF):
        return "server closed the connection after TLS (client certificate not accepted?)"
    return None


def _expects_tls(settings: NatsConnection) -> bool:
    schemes = {urlsplit(server).scheme for server in servers(settings)}
    return "tls" in schemes or bool(settings.nats_tls_ca or settings.nats_tls_cert)


def _uses_tls(nc: NATS) -> bool | None:
    """Whether the connection is encrypted; ``None`` where it cannot tell (websockets).

    nats-py exposes no such property: this reads its TCP transport's stream.
    """
    writer = getattr(getattr(nc, "_transport", None), "_io_writer", None)
    if not isinstance(writer, asyncio.StreamWriter):
        return None
    return writer.get_extra_info("ssl_object") is not None
