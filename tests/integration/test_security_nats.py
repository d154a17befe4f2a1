"""NATS authentication and TLS, against real ``nats-server`` processes configured for each.

Every form of credentials the settings accept connects the way the bridge, the
``orders`` command line and the demo connect (``bridge.nats_connect.connect``):
a user and password or a token in ``NATS_URL``, an NKey seed (``NATS_NKEY``),
a ``.creds`` file with a user JWT signed by an account trusted through an
operator (``NATS_CREDS``), and TLS with a private CA and a client certificate
mapped to a user (``verify_and_map``). Each wrong credential is refused at once,
in one line that names the server and not the secret, though the connection
options say "retry forever".
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

import natsauth
import pytest
from pki import TestCA

from bridge.nats_connect import NatsRefused, connect
from bridge.settings import CliSettings
from dev.servers import LOOPBACK, NatsServer
from orders.settings import ConfigError, load_settings, redact_url

pytestmark = pytest.mark.integration

BIN = Path(sys.executable).parent
# A refusal must be reported at once; an unreachable server would be retried.
REFUSAL_WITHIN_S = 5.0

# Characters that need percent-encoding in a URL, in a password that is real.
PASSWORD = 'p@ss:w/rd%"1'
TOKEN = "s3cr3t-t0ken-for-tests"


def _conf_string(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


@dataclass
class Case:
    """Settings that must connect, and settings that must be refused."""

    good: dict[str, str]
    wrong: dict[str, str]
    secrets: list[str] = field(default_factory=list)


@dataclass
class Servers:
    cases: dict[str, Case]
    tls_host: str
    ca: TestCA


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Servers]:
    directory = tmp_path_factory.mktemp("nats-auth")
    nkey_user, stranger = natsauth.user_key(), natsauth.user_key()
    (directory / "user.nk").write_text(nkey_user.seed.decode() + "\n")
    (directory / "stranger.nk").write_text(stranger.seed.decode() + "\n")

    operator = natsauth.operator_mode(directory)
    creds_user = natsauth.user_key()
    creds = natsauth.creds_file(
        directory / "bridge.creds",
        natsauth.user_jwt(operator.account, creds_user, "orders-bridge"),
        creds_user,
    )
    # A well-formed .creds file from an account the server does not trust.
    rogue_user = natsauth.user_key()
    rogue = natsauth.creds_file(
        directory / "rogue.creds",
        natsauth.user_jwt(natsauth.account_key(), rogue_user, "rogue"),
        rogue_user,
    )

    ca = TestCA(directory / "pki")
    other_ca = TestCA(directory / "other-pki", "other CA")
    server_cert = ca.server()
    client = ca.client("orders-bridge")
    unmapped = ca.client("somebody-else")
    forged = other_ca.client("orders-bridge")

    users = f"""
authorization {{
  users = [
    {{ user: alice, password: {_conf_string(PASSWORD)} }}
    {{ nkey: {nkey_user.public} }}
  ]
}}
"""
    tls = f"""
tls {{
  cert_file: "{server_cert.cert}"
  key_file: "{server_cert.key}"
  ca_file: "{ca.cert_file}"
  verify_and_map: true
  timeout: 2
}}
authorization {{ users = [ {{ user: "CN=orders-bridge" }} ] }}
"""
    with (
        NatsServer(config=users) as users_server,
        NatsServer(config=f"authorization {{ token: {_conf_string(TOKEN)} }}") as token_server,
        NatsServer(config=operator.config) as operator_server,
        NatsServer(config=tls) as tls_server,
    ):
        host = f"{LOOPBACK}:{users_server.port}"
        token_host = f"{LOOPBACK}:{token_server.port}"
        tls_host = f"{LOOPBACK}:{tls_server.port}"
        mtls = {"NATS_URL": f"tls://{tls_host}", "NATS_TLS_CA": str(ca.cert_file)}
        yield Servers(
            ca=ca,
            tls_host=tls_host,
            cases={
                "user-password": Case(
                    good={"NATS_URL": f"nats://alice:{quote(PASSWORD, safe='')}@{host}"},
                    wrong={"NATS_URL": f"nats://alice:not-{quote(PASSWORD, safe='')}@{host}"},
                    secrets=[PASSWORD, quote(PASSWORD, safe="")],
                ),
                "no-credentials": Case(good={}, wrong={"NATS_URL": f"nats://{host}"}),
                "token": Case(
                    good={"NATS_URL": f"nats://{TOKEN}@{token_host}"},
                    wrong={"NATS_URL": f"nats://not-{TOKEN}@{token_host}"},
                    secrets=[TOKEN],
                ),
                "nkey": Case(
                    good={"NATS_URL": f"nats://{host}", "NATS_NKEY": str(directory / "user.nk")},
                    wrong={
                        "NATS_URL": f"nats://{host}",
                        "NATS_NKEY": str(directory / "stranger.nk"),
                    },
                    secrets=[nkey_user.seed.decode(), stranger.seed.decode()],
                ),
                "creds-jwt": Case(
                    good={"NATS_URL": operator_server.url, "NATS_CREDS": str(creds)},
                    wrong={"NATS_URL": operator_server.url, "NATS_CREDS": str(rogue)},
                    secrets=[creds_user.seed.decode(), rogue_user.seed.decode()],
                ),
                "mtls": Case(
                    good={
                        **mtls,
                        "NATS_TLS_CERT": str(client.cert),
                        "NATS_TLS_KEY": str(client.key),
                    },
                    # Signed by the right CA, but mapped to no user.
                    wrong={
                        **mtls,
                        "NATS_TLS_CERT": str(unmapped.cert),
                        "NATS_TLS_KEY": str(unmapped.key),
                    },
                ),
                "mtls-no-client-cert": Case(good={}, wrong=mtls),
                "mtls-forged-client-cert": Case(
                    good={},
                    wrong={
                        **mtls,
                        "NATS_TLS_CERT": str(forged.cert),
                        "NATS_TLS_KEY": str(forged.key),
                    },
                ),
                # nats-py would talk in the clear to a tls:// server that offers no TLS.
                "tls-url-plain-server": Case(
                    good={},
                    wrong={"NATS_URL": f"tls://alice:{quote(PASSWORD, safe='')}@{host}"},
                    secrets=[PASSWORD, quote(PASSWORD, safe="")],
                ),
                "tls-unknown-server-ca": Case(
                    good={},
                    wrong={"NATS_URL": f"tls://{tls_host}"},  # the system's CAs only
                ),
            },
        )


def _settings(env: dict[str, str]) -> CliSettings:
    return load_settings(CliSettings, **{name.lower(): value for name, value in env.items()})


async def _connect_and_use(env: dict[str, str]) -> int:
    """Connect as the bridge does (reconnecting forever) and call the JetStream API."""
    nc = await connect(
        _settings(env),
        name="orders-test",
        allow_reconnect=True,
        max_reconnect_attempts=-1,
        reconnect_time_wait=1,
    )
    try:
        return (await nc.jetstream(timeout=5).account_info()).streams
    finally:
        await nc.close()


GOOD = ["user-password", "token", "nkey", "creds-jwt", "mtls"]
WRONG = [
    ("user-password", "authorization violation"),
    ("no-credentials", "authorization violation"),
    ("token", "authorization violation"),
    ("nkey", "authorization violation"),
    ("creds-jwt", "authorization violation"),
    ("mtls", "authorization violation"),
    ("mtls-no-client-cert", "server requires a TLS client certificate"),
    # TLS 1.3: the server's alert, or only its close when that wins the race.
    ("mtls-forged-client-cert", ("TLS handshake failed", "server closed the connection after TLS")),
    ("tls-unknown-server-ca", "TLS certificate verification failed"),
    ("tls-url-plain-server", "server offered no TLS"),
]


@pytest.mark.parametrize("form", GOOD)
def test_each_credential_form_connects_and_reaches_jetstream(servers: Servers, form: str) -> None:
    assert asyncio.run(_connect_and_use(servers.cases[form].good)) >= 0


@pytest.mark.parametrize(("form", "reason"), WRONG)
def test_a_refused_credential_stops_at_once_in_one_line(
    servers: Servers, form: str, reason: str | tuple[str, ...]
) -> None:
    case = servers.cases[form]
    started = time.monotonic()
    with pytest.raises(NatsRefused) as refused:
        asyncio.run(_connect_and_use(case.wrong))

    assert time.monotonic() - started < REFUSAL_WITHIN_S
    message = str(refused.value)
    reasons = (reason,) if isinstance(reason, str) else reason
    assert message.startswith(tuple(f"NATS {r}" for r in reasons)), message
    assert "\n" not in message
    assert message.endswith(f"at {_redacted(case.wrong['NATS_URL'])}"), message
    for secret in case.secrets:
        assert secret not in message


def _redacted(url: str) -> str:
    return redact_url(url)


def test_a_client_certificate_reaches_a_server_by_name(servers: Servers) -> None:
    env = dict(servers.cases["mtls"].good)
    env["NATS_URL"] = env["NATS_URL"].replace(LOOPBACK, "localhost")
    assert asyncio.run(_connect_and_use(env)) >= 0


def test_a_tls_server_upgrades_a_nats_url(servers: Servers) -> None:
    # nats:// to a server that requires TLS: the client upgrades, with the same checks.
    env = dict(servers.cases["mtls"].good)
    env["NATS_URL"] = f"nats://{servers.tls_host}"
    assert asyncio.run(_connect_and_use(env)) >= 0


# --- the processes an operator runs -----------------------------------------------------


def _run(command: list[str], env: dict[str, str], timeout: float = 60) -> tuple[int, str, float]:
    base = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("NATS_", "REDIS_", "OTEL_", "FLOWER_"))
    }
    started = time.monotonic()
    result = subprocess.run(
        command,
        # Redis nobody listens on: the NATS refusal must come first, and alone.
        env={**base, "REDIS_URL": f"redis://{LOOPBACK}:9/0", "PORT": "0", **env},
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    return result.returncode, result.stdout + result.stderr, time.monotonic() - started


@pytest.mark.parametrize("form", ["user-password", "token", "creds-jwt", "mtls"])
def test_orders_bridge_with_a_wrong_credential_exits_with_one_line(
    servers: Servers, form: str
) -> None:
    case = servers.cases[form]
    code, output, elapsed = _run([str(BIN / "orders-bridge")], case.wrong)

    assert code != 0
    assert elapsed < 30, "refused credentials must not be retried"
    expected = (
        f"orders-bridge: cannot start: NATS authorization violation at "
        f"{_redacted(case.wrong['NATS_URL'])}"
    )
    lines = output.strip().splitlines()
    # One line of the bridge's log said where it connects; the error is the other one.
    assert lines[-1] == expected, output
    assert [line for line in lines if "orders-bridge:" in line] == [expected]
    assert "Traceback" not in output
    for secret in case.secrets:
        assert secret not in output


@pytest.mark.parametrize("command", [["dlq", "list"], ["dlq", "list", "--json"]])
@pytest.mark.parametrize("form", ["user-password", "nkey", "mtls-no-client-cert"])
def test_orders_cli_with_a_wrong_credential_exits_2_with_one_line(
    servers: Servers, form: str, command: list[str]
) -> None:
    case = servers.cases[form]
    code, output, _ = _run([str(BIN / "orders"), *command], case.wrong)

    assert code == 2, output  # a setting to fix, not a server to wait for (exit 3)
    lines = output.strip().splitlines()
    assert len(lines) == 1, output
    assert lines[0].startswith("Error: NATS ") and _redacted(case.wrong["NATS_URL"]) in lines[0]
    for secret in case.secrets:
        assert secret not in output


@pytest.mark.parametrize("form", ["user-password", "creds-jwt", "mtls"])
def test_orders_cli_connects_with_each_form(servers: Servers, form: str) -> None:
    code, output, _ = _run([str(BIN / "orders"), "dlq", "list", "--json"], servers.cases[form].good)
    assert code == 0, output


# --- settings checked at start -----------------------------------------------------------


@pytest.mark.parametrize(
    ("env", "variable"),
    [
        ({"NATS_CREDS": "/nonexistent/user.creds"}, "NATS_CREDS"),
        ({"NATS_TLS_CERT": "{cert}"}, "NATS_TLS_KEY"),
        ({"NATS_TLS_KEY": "{key}"}, "NATS_TLS_CERT"),
        ({"NATS_TLS_CA": "{key}"}, "NATS_TLS_CA"),
    ],
)
def test_orders_bridge_checks_security_files_at_start(
    servers: Servers, env: dict[str, str], variable: str
) -> None:
    client = servers.ca.client("orders-bridge")
    env = {k: v.format(cert=client.cert, key=client.key) for k, v in env.items()}
    code, output, _ = _run([str(BIN / "orders-bridge")], {"NATS_URL": "nats://127.0.0.1:9", **env})

    assert code != 0
    assert output.strip().splitlines() == [output.strip()], output
    assert output.startswith(f"orders-bridge: invalid setting {variable}: "), output
    with pytest.raises(ConfigError, match=f"^invalid setting {variable}: "):
        _settings(env)
